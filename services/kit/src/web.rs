//! The browser UI beside the RPCs on the one port: GET and HEAD requests that are not gRPC
//! are answered from the built UI's directory (`web/dist`), and any other path falls back
//! to `index.html` so the UI's own routes survive a reload. Everything else keeps tonic's
//! answer for an unknown method (UNIMPLEMENTED).

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use axum::body::Body;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tower::ServiceExt;
use tower_http::compression::CompressionLayer;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

/// Where the UI comes from: a directory of built files, or nothing (a page that says how
/// to build it).
#[derive(Debug, Clone)]
pub enum WebUi {
    Dir(PathBuf),
    /// No built UI was found; `/` explains how to build one.
    Missing,
    /// `server.web_dir = "none"`: the port carries RPCs only.
    Disabled,
}

impl WebUi {
    /// Resolves `server.web_dir`: a path, `"none"`, or empty for the first of `./web/dist`,
    /// `<binary's dir>/web` and the source tree's `web/dist` that holds an `index.html`.
    pub fn resolve(setting: &str) -> WebUi {
        match setting.trim() {
            "none" => WebUi::Disabled,
            "" => {
                let mut candidates = vec![PathBuf::from("web/dist")];
                if let Some(dir) = std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(Path::to_path_buf))
                {
                    candidates.push(dir.join("web"));
                }
                candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dist"));
                candidates
                    .into_iter()
                    .find(|dir| dir.join("index.html").is_file())
                    .map(WebUi::Dir)
                    .unwrap_or(WebUi::Missing)
            }
            path => WebUi::Dir(PathBuf::from(path)),
        }
    }
}

/// What the page may load and run: only this origin's scripts, no plugins, no framing, no
/// inline script. A model reply that smuggled markup past the renderer still cannot run.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>llmesh</title>\
<h1>llmesh is running</h1><p>The web UI has not been built. From the repository, run \
<code>npm install &amp;&amp; npm run build</code> and reload, or start with \
<code>bash scripts/start</code>, which does both. The gRPC and grpc-web APIs are \
available on this port already.</p>";

/// Adds the UI to `router` as its fallback, keeping tonic's UNIMPLEMENTED for anything
/// that is not a plain GET or HEAD.
pub fn mount(router: axum::Router, ui: &WebUi) -> axum::Router {
    let files = match ui {
        WebUi::Disabled => return router,
        WebUi::Dir(dir) => Some(
            ServeDir::new(dir)
                .append_index_html_on_directories(true)
                .fallback(ServeFile::new(dir.join("index.html"))),
        ),
        WebUi::Missing => None,
    };
    let service = tower::service_fn(move |req: Request<Body>| {
        let files = files.clone();
        async move {
            let is_page_request =
                (req.method() == Method::GET || req.method() == Method::HEAD) && !is_grpc(&req);
            if !is_page_request {
                return Ok::<_, Infallible>(tonic::Status::unimplemented("").into_http());
            }
            let Some(files) = files else {
                let mut resp = Response::new(Body::from(NOT_BUILT));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                return Ok(resp);
            };
            let immutable = req.uri().path().starts_with("/assets/");
            let mut resp = match files.oneshot(req).await {
                Ok(resp) => resp.map(Body::new),
                Err(never) => match never {},
            };
            let cache = if immutable && resp.status() == StatusCode::OK {
                // Vite names these files by content hash.
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            Ok(resp)
        }
    });
    let service = tower::ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(CompressionLayer::new())
        .service(service)
        .map_response(|resp| resp.map(Body::new));
    router.fallback_service(service)
}

fn is_grpc(req: &Request<Body>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

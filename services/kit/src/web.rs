//! The browser UI beside the RPCs on the one port: GET and HEAD requests that are not gRPC
//! are answered from the built UI's directory (`web/dist`), and any other path falls back
//! to `index.html` so the UI's own routes survive a reload. Everything else (every RPC,
//! grpc-web or not) goes on to the gRPC stack unchanged.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tower::ServiceExt;
use tower_http::compression::CompressionLayer;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::metrics::Metrics;

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
    /// A directory without an `index.html` counts as missing.
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
            path if Path::new(path).join("index.html").is_file() => WebUi::Dir(PathBuf::from(path)),
            _ => WebUi::Missing,
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

type StaticService = tower::util::BoxCloneSyncService<
    Request<tonic::body::Body>,
    Response<tonic::body::Body>,
    Infallible,
>;

/// Answers page requests (GET or HEAD, not gRPC) from the UI and passes everything else
/// on. It sits in front of the grpc-web layer, which refuses plain HTTP/1.1 requests.
#[derive(Clone)]
pub struct UiLayer {
    files: Option<StaticService>,
    /// `GET /metrics`, answered ahead of the UI's fallback when served on this port.
    metrics: Option<Arc<Metrics>>,
}

impl UiLayer {
    pub fn new(ui: &WebUi, metrics: Option<Arc<Metrics>>) -> UiLayer {
        let files = match ui {
            WebUi::Disabled => None,
            WebUi::Dir(dir) => Some(static_files(Some(dir))),
            WebUi::Missing => Some(static_files(None)),
        };
        UiLayer { files, metrics }
    }
}

/// The Prometheus text format of `metrics`, as a response.
pub fn metrics_response(metrics: &Metrics) -> Response<tonic::body::Body> {
    let mut resp = Response::new(tonic::body::Body::new(http_body_util::Full::new(
        bytes::Bytes::from(metrics.render()),
    )));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl<S> tower::Layer<S> for UiLayer {
    type Service = UiService<S>;

    fn layer(&self, inner: S) -> UiService<S> {
        UiService {
            inner,
            files: self.files.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct UiService<S> {
    inner: S,
    files: Option<StaticService>,
    metrics: Option<Arc<Metrics>>,
}

impl<S, RB> tower::Service<Request<tonic::body::Body>> for UiService<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let page_request = (req.method() == Method::GET || req.method() == Method::HEAD)
            && !is_grpc(req.headers());
        if page_request
            && req.uri().path() == "/metrics"
            && let Some(metrics) = &self.metrics
        {
            let resp = metrics_response(metrics);
            return Box::pin(async move { Ok(resp) });
        }
        if let (true, Some(files)) = (page_request, self.files.clone()) {
            return Box::pin(async move {
                match files.oneshot(req).await {
                    Ok(resp) => Ok(resp),
                    Err(never) => match never {},
                }
            });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let resp = inner.call(req).await?;
            Ok(resp.map(tonic::body::Body::new))
        })
    }
}

/// The built files, with `index.html` for any other path; or, with no directory, a page
/// that says how to build the UI.
fn static_files(dir: Option<&Path>) -> StaticService {
    let files = dir.map(|dir| {
        ServeDir::new(dir)
            .append_index_html_on_directories(true)
            .fallback(ServeFile::new(dir.join("index.html")))
    });
    let service = tower::service_fn(move |req: Request<tonic::body::Body>| {
        let files = files.clone();
        async move {
            let Some(files) = files else {
                let mut resp = Response::new(tonic::body::Body::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(NOT_BUILT.as_bytes()),
                )));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                return Ok::<_, Infallible>(resp);
            };
            let immutable = req.uri().path().starts_with("/assets/");
            let mut resp = match files.oneshot(req).await {
                Ok(resp) => resp.map(tonic::body::Body::new),
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
        .map_response(|resp| resp.map(tonic::body::Body::new));
    tower::util::BoxCloneSyncService::new(service)
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Answers an HTTP request served beside the RPCs (the OpenAI-compatible door).
pub type HttpHandler = Arc<
    dyn Fn(
            Request<tonic::body::Body>,
        ) -> futures::future::BoxFuture<'static, Response<tonic::body::Body>>
        + Send
        + Sync
        + 'static,
>;

/// An HTTP endpoint on the server's port: requests under `prefix` that are not gRPC go to
/// `handler`, ahead of the UI's `index.html` fallback. The handler reaches the services
/// through their gRPC routes (and so through the authentication layer), like any client.
#[derive(Clone)]
pub struct HttpRoute {
    pub prefix: &'static str,
    pub handler: HttpHandler,
}

/// Puts [`HttpRoute`]s in front of the UI and the RPCs.
#[derive(Clone)]
pub struct HttpRoutesLayer(pub Arc<Vec<HttpRoute>>);

impl<S> tower::Layer<S> for HttpRoutesLayer {
    type Service = HttpRoutesService<S>;

    fn layer(&self, inner: S) -> HttpRoutesService<S> {
        HttpRoutesService {
            inner,
            routes: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HttpRoutesService<S> {
    inner: S,
    routes: Arc<Vec<HttpRoute>>,
}

impl<S> tower::Service<Request<tonic::body::Body>> for HttpRoutesService<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        if !is_grpc(req.headers())
            && let Some(route) = self
                .routes
                .iter()
                .find(|r| req.uri().path().starts_with(r.prefix))
        {
            let handler = route.handler.clone();
            return Box::pin(async move { Ok(handler(req).await) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

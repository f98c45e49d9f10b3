//! `serve()`: one port carrying gRPC (HTTP/2) and grpc-web (HTTP/1.1), with the standard
//! health service, server reflection, the authentication layer, message-size and deadline
//! limits, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::authn::{API_KEY_HEADER, AuthLayer, Authenticator, SERVICE_TOKEN_HEADER};
use crate::config::ServerConfig;
use crate::principal::AccessTable;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: the port is already in use (pick another with --bind or server.bind)"
    )]
    AddrInUse { addr: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server.bind {0:?} is not an address like 127.0.0.1:7700")]
    BadAddr(String),
    #[error("reflection setup failed: {0}")]
    Reflection(String),
}

/// Binds the configured address. Port 0 picks a free port; the listener knows which.
pub async fn bind(config: &ServerConfig) -> Result<TcpListener, ServeError> {
    let addr: SocketAddr = config
        .bind
        .parse()
        .map_err(|_| ServeError::BadAddr(config.bind.clone()))?;
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::AddrInUse {
                addr: config.bind.clone(),
            }
        } else {
            ServeError::Bind {
                addr: config.bind.clone(),
                source,
            }
        }
    })
}

/// What every service mounted in one process shares.
#[derive(Clone)]
pub struct Process {
    pub db: sea_orm::DatabaseConnection,
    pub clock: Arc<dyn crate::Clock>,
    /// Signals between processes (stops, registry changes).
    pub signals: Arc<crate::signal::Signals>,
    /// The credential services present to each other (`peers.service_token`).
    pub service_token: String,
    /// The currency amounts are in (`billing.currency`).
    pub currency: String,
    /// The process's metrics, which services add theirs to.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The services one process runs, as each registers itself: their routes, names (for
/// health and reflection) and access tables (for the authentication layer).
pub struct ServiceSet {
    routes: tonic::service::RoutesBuilder,
    names: Vec<&'static str>,
    tables: Vec<AccessTable>,
    max_message_bytes: usize,
    /// What each service waits for before health reports it SERVING.
    pub readiness: crate::health::Readiness,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ServiceSet {
    pub fn new(max_message_bytes: usize, metrics: Arc<crate::metrics::Metrics>) -> Self {
        ServiceSet {
            routes: tonic::service::RoutesBuilder::default(),
            names: Vec::new(),
            tables: Vec::new(),
            max_message_bytes,
            readiness: crate::health::Readiness::default(),
            metrics,
        }
    }

    /// The largest message a service may decode or encode (`server.max_message_bytes`).
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Adds a generated server (already given its message limits) with its access table.
    pub fn add<S>(&mut self, table: AccessTable, service: S)
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.tables.push(table);
        self.routes.add_service(service);
    }

    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The routes as peers in this process call them (see [`crate::peer::LocalRoutes`]):
    /// measured and authenticated as remote calls are.
    pub fn local_transport(services: &Services) -> crate::peer::Transport {
        let svc = tower::ServiceBuilder::new()
            .layer(crate::metrics::MetricsLayer(services.metrics.clone()))
            .layer(AuthLayer::new(services.authenticator.clone()))
            .service(services.routes.clone());
        tower::util::BoxCloneSyncService::new(
            tower::ServiceExt::<http::Request<tonic::body::Body>>::map_err(
                svc,
                |e: std::convert::Infallible| -> crate::peer::TransportError { match e {} },
            ),
        )
    }

    /// Finishes the set: the routes, names and the authenticator built from the tables.
    pub fn into_services(
        self,
        authenticator: impl FnOnce(&[AccessTable]) -> Arc<Authenticator>,
    ) -> Services {
        let authenticator = authenticator(&self.tables);
        Services {
            routes: self.routes.routes(),
            names: self.names,
            authenticator,
            readiness: self.readiness,
            metrics: self.metrics,
            reflect: Vec::new(),
            http: Vec::new(),
        }
    }
}

/// What the composed services hand to [`serve`].
pub struct Services {
    /// The gRPC routes of every registered service.
    pub routes: Routes,
    /// Fully-qualified names of the registered services, for health and reflection.
    pub names: Vec<&'static str>,
    pub authenticator: Arc<Authenticator>,
    /// When health reports each of them SERVING.
    pub readiness: crate::health::Readiness,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The services reflection lists, when not just `names` (a process behind an edge
    /// that answers reflection for the whole mesh).
    pub reflect: Vec<&'static str>,
    /// HTTP endpoints beside the RPCs (the OpenAI-compatible door), ahead of the UI.
    pub http: Vec<crate::web::HttpRoute>,
}

/// A running server: its bound address and the means to stop it.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    /// Where the browser UI is served from (resolved once, at start).
    pub web: crate::web::WebUi,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Asks the server to stop and waits until it has drained.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits for the server to end (after a shutdown signal).
    pub async fn wait(&mut self) -> Result<(), tonic::transport::Error> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(error = %join, "server task failed");
                Ok(())
            }
        }
    }
}

/// Serves `services` on `listener` until `signal` completes or [`RunningServer::shutdown`]
/// is called; then reports NOT_SERVING, stops accepting, and gives in-flight calls up to
/// `shutdown_grace_secs` to finish.
pub fn serve(
    listener: TcpListener,
    config: &ServerConfig,
    services: Services,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, ServeError> {
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.bind.clone(),
        source,
    })?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflected = if services.reflect.is_empty() {
        &services.names
    } else {
        &services.reflect
    };
    let reflection_v1 = reflection(reflected)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection(reflected)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let draining_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readiness = services.readiness;
    let ready_names = services.names.clone();
    let reporter = health_reporter.clone();
    let ready_flag = draining_flag.clone();
    // Every service is known to the health service (NOT_SERVING) before the first
    // connection is accepted: a probe that comes early reads "not yet", never NOT_FOUND.
    let status_ready = async move {
        for name in &ready_names {
            reporter
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        readiness.spawn(reporter, ready_names, ready_flag)
    };

    let routes = services
        .routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let ui = crate::web::WebUi::resolve(&config.web_dir);
    match &ui {
        crate::web::WebUi::Dir(dir) => tracing::info!(dir = %dir.display(), "serving the web UI"),
        crate::web::WebUi::Missing => tracing::warn!(
            "the web UI is not built (no web/dist): run `npm install && npm run build`, or set server.web_dir"
        ),
        crate::web::WebUi::Disabled => {}
    }

    let metrics_here = match config.metrics_bind.trim() {
        "" => Some(services.metrics.clone()),
        "none" => None,
        addr => {
            spawn_metrics_listener(addr, services.metrics.clone())?;
            None
        }
    };
    let cors = cors_layer(&config.cors_allowed_origins);
    let layers = tower::ServiceBuilder::new()
        .layer(cors)
        .layer(crate::web::HttpRoutesLayer(Arc::new(services.http.clone())))
        .layer(crate::web::UiLayer::new(&ui, metrics_here))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(crate::metrics::MetricsLayer(services.metrics.clone()))
        .layer(AuthLayer::new(services.authenticator))
        .into_inner();

    let (tx, rx) = oneshot::channel::<()>();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let names = services.names;
    let draining = Arc::new(tokio::sync::Notify::new());
    let draining_tx = draining.clone();
    let stop = async move {
        tokio::select! {
            _ = signal => {},
            _ = rx => {},
        }
        tracing::info!("shutting down: draining in-flight requests");
        draining_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        draining_tx.notify_one();
        for name in &names {
            health_reporter
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        health_reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    };
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .timeout(Duration::from_secs(config.request_timeout_secs))
        .layer(layers)
        .add_routes(routes)
        // No Nagle: streamed tokens and small replies must not wait for delayed ACKs.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            stop,
        );
    let task = tokio::spawn(async move {
        status_ready.await;
        let mut server = Box::pin(server);
        tokio::select! {
            result = &mut server => result,
            // The shutdown future resolved but connections linger past the grace period.
            _ = linger_guard(&draining, grace) => {
                tracing::warn!("shutdown grace period over: closing remaining connections");
                Ok(())
            }
        }
    });
    Ok(RunningServer {
        local_addr,
        web: ui,
        shutdown: Some(tx),
        task,
    })
}

/// Serves `GET /metrics` (and nothing else) on a port of its own.
fn spawn_metrics_listener(
    addr: &str,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<(), ServeError> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| ServeError::BadAddr(addr.to_owned()))?;
    let std_listener = std::net::TcpListener::bind(parsed).map_err(|source| ServeError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| ServeError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let listener = TcpListener::from_std(std_listener).map_err(|source| ServeError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    tracing::info!(addr, "serving /metrics on its own port");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let metrics = metrics.clone();
                        async move {
                            let resp =
                                if req.method() == Method::GET && req.uri().path() == "/metrics" {
                                    crate::web::metrics_response(&metrics)
                                } else {
                                    let mut r = http::Response::new(tonic::body::Body::empty());
                                    *r.status_mut() = http::StatusCode::NOT_FOUND;
                                    r
                                };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(())
}

/// Resolves `grace` after shutdown began. Until then it never resolves, so it only cuts
/// the drain short.
async fn linger_guard(draining: &tokio::sync::Notify, grace: Duration) {
    draining.notified().await;
    tokio::time::sleep(grace).await;
}

/// Reflection that lists only what this process serves, not every contract llmesh defines.
fn reflection(names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(llmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false);
    for name in names.iter().copied().chain([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]) {
        builder = builder.with_service_name(name);
    }
    builder
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    let headers = [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        crate::request_id::HEADER,
        API_KEY_HEADER,
        SERVICE_TOKEN_HEADER,
    ];
    let exposed = [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "retry-after",
        "retry-after-ms",
        crate::request_id::HEADER,
    ];
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(headers.map(HeaderName::from_static))
        .expose_headers(exposed.map(HeaderName::from_static))
        .max_age(Duration::from_secs(3600))
}

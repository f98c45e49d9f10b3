//! What calls travel through: a boxed, cloneable tower service from HTTP requests to HTTP
//! responses, so a generated client is the same whether it talks to a channel, a channel
//! with the SDK's layers, or (inside llmesh) the routes of the very process.

use tonic::body::Body;
use tower::util::BoxCloneSyncService;

/// Why a [`Transport`] could not carry a call (the server never answered).
///
/// A concrete type rather than a boxed `dyn Error`: with the latter, the compiler cannot
/// prove client futures `Send` inside `async_trait` methods (a higher-ranked lifetime gap).
#[derive(Debug)]
pub struct TransportError(Box<dyn std::error::Error + Send + Sync>);

impl TransportError {
    /// Wraps the error of whatever carried the call.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> TransportError {
        TransportError(e.into())
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The service every generated client of this crate is built on
/// (`AuthServiceClient::new(transport)`).
pub type Transport = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, TransportError>;

/// Boxes a tonic channel (or anything shaped like one) into a [`Transport`].
pub fn boxed<S>(service: S) -> Transport
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    use tower::ServiceExt;
    BoxCloneSyncService::new(service.map_err(TransportError::new))
}

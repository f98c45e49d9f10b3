//! Calls from one llmesh service to another (a "peer") over gRPC: one lazily connected
//! channel per peer that reconnects by itself when the peer restarts, requests that carry
//! what is left of the caller's deadline, its request id and its trace context, retries of
//! UNAVAILABLE with jittered backoff only for methods proto/ marks safe to retry, and a
//! peer that cannot be reached reported as UNAVAILABLE naming it, never INTERNAL.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llmesh_client::{RetryLayer, RetryPolicy};
use tonic::body::Body;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

/// What a generated client sends its calls through: a channel to another process, or the
/// routes of this very process (behind the same authentication layer), so a service's
/// client code is the same whether its peer runs here or elsewhere. The SDK's type: a
/// program built on `llmesh-client` composes its clients the same way.
pub use llmesh_client::transport::{Transport, TransportError};

use crate::config::{ConfigError, invalid};
use crate::request_id;

/// How long a unary call to a peer may take when the caller set no deadline.
pub const DEFAULT_UNARY_TIMEOUT: Duration = Duration::from_secs(30);
/// How a call to a peer in another process is retried: the SDK's policy and layer
/// (retry-safe unary methods only, after UNAVAILABLE, within the call's deadline).
const RETRY: RetryPolicy = RetryPolicy {
    attempts: 4,
    base: Duration::from_millis(50),
    max: Duration::from_secs(2),
};

/// The routes of this process, for peers that run in it. Filled once the server has
/// assembled them; calls made before that are UNAVAILABLE.
#[derive(Clone, Default)]
pub struct LocalRoutes(Arc<OnceLock<Transport>>);

impl LocalRoutes {
    /// Installs the assembled routes (with their middleware). Later calls are ignored.
    pub fn set(&self, routes: Transport) {
        let _ = self.0.set(routes);
    }

    fn transport(&self) -> Transport {
        let routes = self.clone();
        BoxCloneSyncService::new(tower::service_fn(move |req: http::Request<Body>| {
            let routes = routes.0.get().cloned();
            async move {
                match routes {
                    Some(svc) => svc.oneshot(req).await,
                    None => Ok(Status::unavailable("this process is still starting").into_http()),
                }
            }
        }))
    }
}

/// A peer service: its name (for messages), where it runs and a transport to it.
#[derive(Clone)]
pub struct Peer {
    name: &'static str,
    /// The URL, or None when the peer runs in this process.
    url: Option<String>,
    transport: Transport,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish()
    }
}

impl Peer {
    /// A peer in another process at `url`; nothing connects until the first call, and a
    /// broken connection is re-established by the next one. `key` is the config key the
    /// URL came from, named when it is not a URL.
    pub fn remote(name: &'static str, key: &str, url: &str) -> Result<Peer, ConfigError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|_| invalid(key, format!("{url:?} is not a URL like http://host:7700")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        Ok(Peer {
            name,
            url: Some(url.to_owned()),
            transport: llmesh_client::transport::boxed(RetryLayer::new(RETRY).layer(channel)),
        })
    }

    /// A peer that runs in this process: calls go through `routes` in memory, past the
    /// same authentication layer a remote call meets.
    pub fn local(name: &'static str, routes: &LocalRoutes) -> Peer {
        Peer {
            name,
            url: None,
            transport: routes.transport(),
        }
    }

    /// Whether the peer runs in this process.
    pub fn is_local(&self) -> bool {
        self.url.is_none()
    }

    /// Where the peer runs, for messages and health reports.
    pub fn location(&self) -> &str {
        self.url.as_deref().unwrap_or("this process")
    }

    /// The transport, for a generated client (`XServiceClient::new(peer.transport())`).
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Wraps a message for a unary call to this peer: the caller's remaining deadline (or
    /// [`DEFAULT_UNARY_TIMEOUT`]), its request id (so one id follows a request through
    /// every service) and trace context.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        outgoing(message, Some(DEFAULT_UNARY_TIMEOUT))
    }

    /// The same for a streaming call, which gets no deadline unless the caller had one.
    pub fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        outgoing(message, None)
    }

    /// Turns a failed call into the status the caller's client should see: a transport
    /// failure (refused, reset, a peer killed mid-stream) becomes UNAVAILABLE naming the
    /// peer; what the peer itself answered passes through.
    pub fn error(&self, status: Status) -> Status {
        if is_transport_failure(&status) {
            Status::unavailable(format!(
                "the {} service at {} is unavailable ({}); retry shortly, or check that it runs",
                self.name,
                self.location(),
                status.message()
            ))
        } else {
            status
        }
    }

    /// Makes a unary call through `attempt`. A method marked retry-safe in proto/ is
    /// retried on UNAVAILABLE by the transport (with jittered backoff, while the deadline
    /// allows); what still fails is reported as [`Peer::error`] says.
    pub async fn unary<T, F, Fut>(&self, method: &str, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match attempt().await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                tracing::debug!(peer = self.name, method, code = ?status.code(), "peer call failed");
                Err(self.error(status))
            }
        }
    }
}

/// A request to another service carrying the current request's deadline (or `default`
/// when it has none), request id and trace context.
pub fn outgoing<T>(message: T, default: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    let left = match crate::deadline::current() {
        // A passed deadline still sends a tiny one, so the peer refuses at once.
        Some(deadline) => Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ),
        None => default,
    };
    if let Some(left) = left {
        req.set_timeout(left);
    }
    if let Ok(value) = request_id::current().parse() {
        req.metadata_mut().insert(request_id::HEADER, value);
    }
    crate::trace::inject(req.metadata_mut());
    req
}

/// Whether a status came from the transport (the peer never answered) rather than from
/// the peer's own handler. tonic attaches the underlying error to the former only.
fn is_transport_failure(status: &Status) -> bool {
    use std::error::Error;
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => status.source().is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_peer_is_unavailable_by_name() {
        // Nothing listens on port 9 of loopback in a test sandbox.
        let peer = Peer::remote("billing", "peers.billing_url", "http://127.0.0.1:9").expect("url");
        let client = tonic_health::pb::health_client::HealthClient::new(peer.transport());
        let err = peer
            .unary("/grpc.health.v1.Health/Check", || {
                let mut client = client.clone();
                let req = peer.request(tonic_health::pb::HealthCheckRequest::default());
                async move { client.check(req).await }
            })
            .await
            .expect_err("nothing listens there");
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message()
                .contains("billing service at http://127.0.0.1:9"),
            "{}",
            err.message()
        );
        assert!(Peer::remote("auth", "peers.auth_url", "not a url").is_err());
    }

    #[test]
    fn retry_safety_comes_from_the_contracts() {
        assert!(llmesh_proto::retry_safe(
            "/llmesh.billing.v1.BillingService/Settle"
        ));
        assert!(llmesh_proto::retry_safe(
            "/llmesh.llm.v1.LlmService/ListModels"
        ));
        assert!(!llmesh_proto::retry_safe(
            "/llmesh.llm.v1.LlmService/Generate"
        ));
        assert!(!llmesh_proto::retry_safe(
            "/llmesh.auth.v1.AuthService/Login"
        ));
    }
}

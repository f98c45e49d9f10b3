//! Retries as a tower layer: a unary call whose method proto/ marks safe to repeat
//! (`idempotency_level` NO_SIDE_EFFECTS or IDEMPOTENT) is tried again after UNAVAILABLE,
//! with jittered exponential backoff, while its deadline allows. Nothing else is retried:
//! not other methods (a second Register could create a second account), and never a
//! stream (its first message may already have been seen).

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tonic::body::Body;
use tower::ServiceExt;

use crate::deadline;

/// How many times, and how patiently, a retry-safe call is tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included; 1 turns retries off.
    pub attempts: u32,
    /// The cap of the first wait; each later cap doubles.
    pub base: Duration,
    /// The largest cap.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// Four tries, waits drawn below 50 ms, 100 ms, 200 ms.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// One try, no retries.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry `n` (1-based): uniform in [0, min(max, base · 2^(n-1))], so
    /// clients that failed together do not come back together.
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(self.max);
        cap.mul_f64(rand::random::<f64>())
    }
}

/// Whether a method may be retried after UNAVAILABLE: marked safe in proto/ and answered
/// with a single message.
pub fn retryable(path: &str) -> bool {
    llmesh_proto::retry_safe(path) && !llmesh_proto::streaming(path)
}

/// Wraps a service so retry-safe unary calls are retried by `policy`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// A layer that retries by `policy`.
    pub fn new(policy: RetryPolicy) -> RetryLayer {
        RetryLayer { policy }
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: self.policy,
        }
    }
}

/// The service [`RetryLayer`] makes.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S> tower::Service<http::Request<Body>> for Retry<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if self.policy.attempts <= 1 || !retryable(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The ready service takes this call; a fresh clone waits for the next one.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(retrying(inner, self.policy, req))
    }
}

async fn retrying<S>(
    mut inner: S,
    policy: RetryPolicy,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, S::Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    let (parts, body) = req.into_parts();
    // A unary request is one small message: keep it to send again.
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(status) => return Ok(status.into_http()),
    };
    let deadline = parts
        .headers
        .get(deadline::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(deadline::parse)
        .map(|d| Instant::now() + d);
    let mut tries = 0;
    loop {
        tries += 1;
        let mut req = http::Request::from_parts(parts.clone(), Body::new(Full::new(bytes.clone())));
        if let Some(deadline) = deadline
            && tries > 1
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(value) = deadline::encode(left).parse() {
                req.headers_mut().insert(deadline::HEADER, value);
            }
        }
        let result = inner.ready().await?.call(req).await;
        let again = match &result {
            Err(_) => true,
            Ok(resp) => unavailable(resp),
        };
        if !again || tries >= policy.attempts {
            return result;
        }
        let wait = policy.backoff(tries);
        if deadline.is_some_and(|d| Instant::now() + wait >= d) {
            return result;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Whether an answer says UNAVAILABLE before any message: a gRPC status in the headers
/// (a trailers-only answer), or a proxy's 502/503/504 for a backend that is down.
fn unavailable(resp: &http::Response<Body>) -> bool {
    if matches!(resp.status().as_u16(), 502..=504) {
        return true;
    }
    resp.headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"14")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    #[test]
    fn backoff_stays_under_its_cap() {
        let policy = RetryPolicy::default();
        for n in 1..=8 {
            for _ in 0..50 {
                let cap = (policy.base * (1 << (n - 1))).min(policy.max);
                assert!(policy.backoff(n) <= cap);
            }
        }
    }

    /// Calls `path` through a retry layer over a service that answers UNAVAILABLE
    /// `failures` times, then OK; returns the final gRPC status and how many calls came.
    async fn call_through(path: &str, failures: usize) -> (String, usize) {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let inner = tower::service_fn(move |req: http::Request<Body>| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // Every try carries the whole request body.
                let body = req.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(&body[..], b"request");
                let status = if n < failures {
                    tonic::Status::unavailable("restarting")
                } else {
                    tonic::Status::ok("")
                };
                Ok::<_, std::convert::Infallible>(status.into_http())
            }
        });
        let policy = RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let mut service = RetryLayer::new(policy).layer(inner);
        let req = http::Request::builder()
            .uri(format!("http://x{path}"))
            .header(deadline::HEADER, "5S")
            .body(Body::new(Full::new(Bytes::from_static(b"request"))))
            .expect("request");
        let resp = service
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("answer");
        let status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        (status, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_safe_call_is_retried_until_it_succeeds() {
        let (status, calls) = call_through("/llmesh.auth.v1.AuthService/GetMe", 2).await;
        assert_eq!((status.as_str(), calls), ("0", 3));
    }

    #[tokio::test]
    async fn retries_stop_after_the_last_attempt() {
        let (status, calls) = call_through("/llmesh.auth.v1.AuthService/GetMe", 10).await;
        assert_eq!((status.as_str(), calls), ("14", 4));
    }

    #[tokio::test]
    async fn an_unsafe_call_is_tried_once() {
        let (status, calls) = call_through("/llmesh.auth.v1.AuthService/Register", 1).await;
        assert_eq!((status.as_str(), calls), ("14", 1));
        let (_, calls) = call_through("/llmesh.llm.v1.LlmService/Generate", 1).await;
        assert_eq!(calls, 1);
    }

    #[test]
    fn only_safe_unary_methods_are_retried() {
        assert!(retryable("/llmesh.billing.v1.BillingService/Settle"));
        assert!(retryable("/llmesh.llm.v1.LlmService/ListModels"));
        assert!(!retryable("/llmesh.llm.v1.LlmService/Generate"));
        assert!(!retryable("/llmesh.auth.v1.AuthService/Login"));
        // Marked NO_SIDE_EFFECTS, but a stream.
        assert!(!retryable(
            "/llmesh.chat.v1.ChatArchiveService/ExportConversations"
        ));
    }
}

//! Deadlines: every call carries a `grpc-timeout` (a default unless the caller set one),
//! the server stops work when it passes, and so does this side, on the answer's headers
//! and on every later frame of a stream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;

/// The header gRPC carries a call's deadline in.
pub const HEADER: &str = "grpc-timeout";

/// Encodes a duration as a `grpc-timeout` value (at most 8 digits and a unit), rounding up
/// so a deadline is never shortened.
pub fn encode(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    if ms <= MAX {
        return format!("{ms}m");
    }
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if u128::from(secs) <= MAX {
        return format!("{secs}S");
    }
    let hours = secs.div_ceil(3600).min(MAX as u64);
    format!("{hours}H")
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Gives every call a deadline unless it has one: `unary` for calls answered with one
/// message, `stream` (none when unset) for calls answered with a stream. Enforces the
/// deadline on this side too: a stream whose server stalls ends with DEADLINE_EXCEEDED.
#[derive(Clone, Debug)]
pub struct DeadlineLayer {
    unary: Duration,
    stream: Option<Duration>,
}

impl DeadlineLayer {
    /// A layer giving unary calls `unary` and streamed calls `stream` (none when `None`).
    pub fn new(unary: Duration, stream: Option<Duration>) -> DeadlineLayer {
        DeadlineLayer { unary, stream }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = WithDeadline<S>;

    fn layer(&self, inner: S) -> WithDeadline<S> {
        WithDeadline {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Clone, Debug)]
pub struct WithDeadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S> tower::Service<http::Request<Body>> for WithDeadline<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let given = req
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse);
        let timeout = given.or(if llmesh_proto::streaming(req.uri().path()) {
            self.layer.stream
        } else {
            Some(self.layer.unary)
        });
        if given.is_none()
            && let Some(t) = timeout
            && let Ok(value) = encode(t).parse()
        {
            req.headers_mut().insert(HEADER, value);
        }
        let response = self.inner.call(req);
        let Some(timeout) = timeout else {
            return Box::pin(response);
        };
        let deadline = tokio::time::Instant::now() + timeout;
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, response).await {
                Ok(Ok(resp)) => Ok(resp.map(|body| {
                    Body::new(DeadlineBody {
                        inner: body,
                        timer: Box::pin(tokio::time::sleep_until(deadline)),
                        expired: false,
                    })
                })),
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "no answer within the call's deadline of {} ms",
                    timeout.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

/// A response body that fails with DEADLINE_EXCEEDED once its deadline passes.
struct DeadlineBody {
    inner: Body,
    timer: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.expired = true;
                Poll::Ready(Some(Err(Status::deadline_exceeded(
                    "the stream ran past the call's deadline",
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_parses_back_without_shortening() {
        for d in [
            Duration::from_micros(10),
            Duration::from_millis(700),
            Duration::from_secs(30),
            Duration::from_secs(200_000),
            Duration::from_secs(400_000_000),
        ] {
            let back = parse(&encode(d)).expect("valid");
            assert!(back >= d, "{d:?} came back as {back:?}");
        }
        assert_eq!(encode(Duration::from_secs(30)), "30000m");
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("5"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("123456789S"), None);
    }
}

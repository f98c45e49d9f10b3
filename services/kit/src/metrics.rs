//! Prometheus metrics of one process: a registry every service adds its own metrics to,
//! the RPC metrics every call passes through (count and latency per service, method and
//! status code, streams measured to their last message), and the text format served at
//! `GET /metrics`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{Request, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use tonic::body::Body;

/// Latency buckets for RPCs, in seconds: 1 ms to 10 minutes (streams of long replies).
const RPC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// The metrics of one process.
pub struct Metrics {
    registry: Registry,
    rpc_requests: IntCounterVec,
    rpc_duration: HistogramVec,
    rpc_in_flight: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let rpc_requests = IntCounterVec::new(
            Opts::new(
                "llmesh_rpc_requests_total",
                "RPCs answered, by service, method and gRPC status code.",
            ),
            &["service", "method", "code"],
        )
        .expect("valid metric");
        let rpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "llmesh_rpc_duration_seconds",
                "Time from an RPC's arrival to its last message, by service, method and code.",
            )
            .buckets(RPC_BUCKETS.to_vec()),
            &["service", "method", "code"],
        )
        .expect("valid metric");
        let rpc_in_flight = IntGaugeVec::new(
            Opts::new(
                "llmesh_rpc_in_flight",
                "RPCs being answered now (streams until their last message), by service.",
            ),
            &["service"],
        )
        .expect("valid metric");
        for m in [
            Box::new(rpc_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rpc_duration.clone()),
            Box::new(rpc_in_flight.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Arc::new(Metrics {
            registry,
            rpc_requests,
            rpc_duration,
            rpc_in_flight,
        })
    }

    /// Adds a service's metrics. Registering the same name twice is a programming error
    /// and is logged, not fatal.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::error!(error = %e, "registering metrics failed");
        }
    }

    /// Every metric in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn finish(&self, call: &Call, code: &str) {
        let labels = [call.service.as_str(), call.method.as_str(), code];
        self.rpc_requests.with_label_values(&labels).inc();
        self.rpc_duration
            .with_label_values(&labels)
            .observe(call.started.elapsed().as_secs_f64());
        self.rpc_in_flight
            .with_label_values(&[call.service.as_str()])
            .dec();
    }
}

/// One RPC being measured.
struct Call {
    metrics: Arc<Metrics>,
    service: String,
    method: String,
    started: Instant,
    /// A status code the response headers carried (trailers-only answers).
    header_code: Option<String>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: &str) {
        if !self.done {
            self.done = true;
            self.metrics.finish(self, code);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The body was dropped before its end: the client went away.
        let code = self
            .header_code
            .clone()
            .unwrap_or_else(|| "Cancelled".into());
        self.finish(&code);
    }
}

/// The name Prometheus labels carry for a `grpc-status` value.
fn code_name(value: Option<&http::HeaderValue>) -> Option<String> {
    let n: i32 = value?.to_str().ok()?.parse().ok()?;
    Some(format!("{:?}", tonic::Code::from_i32(n)))
}

/// Tower layer that measures every gRPC call (grpc-web included, once converted).
#[derive(Clone)]
pub struct MetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<Request<B>> for MetricsService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        let path = req.uri().path().to_owned();
        let target = grpc
            .then(|| {
                let (service, method) = path.trim_start_matches('/').split_once('/')?;
                Some((service.to_owned(), method.to_owned()))
            })
            .flatten();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let Some((service, method)) = target else {
                return inner.call(req).await;
            };
            metrics
                .rpc_in_flight
                .with_label_values(&[service.as_str()])
                .inc();
            let mut call = Call {
                metrics,
                service,
                method,
                started: Instant::now(),
                header_code: None,
                done: false,
            };
            let response = match inner.call(req).await {
                Ok(r) => r,
                Err(e) => {
                    call.finish("Unknown");
                    return Err(e);
                }
            };
            call.header_code = code_name(response.headers().get("grpc-status"));
            let (parts, body) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                Body::new(ObservedBody { inner: body, call }),
            ))
        })
    }
}

/// A response body that records its call when its trailers (or its end) pass.
struct ObservedBody {
    inner: Body,
    call: Call,
}

impl http_body::Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code =
                        code_name(trailers.get("grpc-status")).unwrap_or_else(|| "Unknown".into());
                    this.call.finish(&code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish("Unknown"),
            Poll::Ready(None) => {
                let code = this.call.header_code.clone().unwrap_or_else(|| "Ok".into());
                this.call.finish(&code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_rpc_metrics() {
        let m = Metrics::new();
        m.rpc_in_flight.with_label_values(&["s"]).inc();
        let call = Call {
            metrics: m.clone(),
            service: "s".into(),
            method: "M".into(),
            started: Instant::now(),
            header_code: Some("NotFound".into()),
            done: false,
        };
        drop(call);
        let text = m.render();
        assert!(
            text.contains(r#"llmesh_rpc_requests_total{code="NotFound",method="M",service="s"} 1"#),
            "{text}"
        );
        assert!(text.contains("# TYPE llmesh_rpc_duration_seconds histogram"));
        assert!(text.contains(r#"llmesh_rpc_in_flight{service="s"} 0"#));
    }
}

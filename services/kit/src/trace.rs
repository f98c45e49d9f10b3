//! W3C trace context across services: the `traceparent` of an incoming request becomes
//! the parent of its RPC span, and every call to another service carries the current
//! span's context, so one chat message is one trace across chat → llm → billing.
//! Spans reach an OTLP collector when `[telemetry] otlp_endpoint` is set (see
//! [`crate::telemetry`]); without the OpenTelemetry layer installed these do nothing.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Makes the trace context of `headers` (if any) the parent of `span`.
pub fn continue_from(headers: &http::HeaderMap, span: &tracing::Span) {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Adds the current span's trace context to an outgoing request.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Metadata(metadata));
    }
}

/// The trace id of `span`, when it belongs to a sampled trace.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Records a finished piece of work that ran elsewhere (the engine's queue wait, prefill
/// and decode) as a child of `parent`, with its real start and end.
pub fn record_child(
    parent: &tracing::Span,
    name: &'static str,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
    attributes: Vec<opentelemetry::KeyValue>,
) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    let cx = parent.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer("llmesh");
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &cx);
    span.end_with_timestamp(end);
}

//! Logging and tracing setup: human-readable logs on a terminal or JSON lines for
//! machines (each with the request id and trace id of the RPC it belongs to), and
//! OpenTelemetry spans for every RPC, exported over OTLP/gRPC when
//! `[telemetry] otlp_endpoint` is set. Trace context is kept (and passed on to other
//! services) either way; without an endpoint nothing leaves the process.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, TelemetryConfig};

/// Keeps the tracer provider; [`Telemetry::shutdown`] flushes spans not yet exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered (call before the process exits).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber once; later calls (as in tests) change nothing.
/// `service` names this process in exported spans when the config names none.
pub fn init(config: &LogConfig, telemetry: &TelemetryConfig, service: &str) -> Telemetry {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let provider = tracer_provider(telemetry, service);
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("llmesh"));
    let json = (config.format == "json").then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let pretty = (config.format != "json").then(|| {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .compact()
            .with_writer(std::io::stderr)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(pretty)
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        opentelemetry::global::set_tracer_provider(provider.clone());
        Telemetry {
            provider: Some(provider),
        }
    } else {
        Telemetry { provider: None }
    }
}

/// A provider that samples as configured and exports over OTLP/gRPC when an endpoint is
/// set (from a batch, off the request path).
fn tracer_provider(telemetry: &TelemetryConfig, service: &str) -> SdkTracerProvider {
    let name = if telemetry.service_name.is_empty() {
        service.to_owned()
    } else {
        telemetry.service_name.clone()
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            telemetry.sample_ratio,
        ))));
    if !telemetry.otlp_endpoint.is_empty() {
        use opentelemetry_otlp::WithExportConfig;
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(telemetry.otlp_endpoint.clone())
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => eprintln!(
                "telemetry.otlp_endpoint {:?}: cannot export traces: {e}",
                telemetry.otlp_endpoint
            ),
        }
    }
    builder.build()
}

//! The llmesh sandbox service: untrusted code as WASI modules in wasmtime, with fuel,
//! memory, wall-clock and output limits, against a private copy of the caller's
//! workspace (kept in the database, so every copy of the service sees it).

pub mod config;
pub mod error;
pub mod meter;
pub mod metrics;
pub mod python;
pub mod runner;
pub mod runtimes;
pub mod service;
pub mod workspace;

pub use config::SandboxConfig;
pub mod grpc;

pub use grpc::{ACCESS, GrpcSandboxAdapter, SERVICE_NAME};
pub use service::SandboxService;

use std::sync::Arc;

use llmesh_kit::fetch::Progress;
use llmesh_kit::peer::Peer;
use llmesh_kit::serve::{Process, ServiceSet};
use llmesh_proto::sandbox::v1::sandbox_service_server::SandboxServiceServer;

/// Starts the sandbox in this process: its runtimes, the workspaces in the process's
/// database, and its RPCs. Returns the service and its preparation (the Python runtime
/// fetched, progress to `on_progress`, and compiled, and the pool of interpreters started,
/// when `prepare_at_start`), which the caller runs once the server answers health checks:
/// the sandbox reports NOT_SERVING until then. Runs are charged through `billing` where
/// it runs (then required for readiness), free where it does not.
pub fn mount<'a>(
    set: &mut ServiceSet,
    process: &Process,
    config: SandboxConfig,
    billing: Option<Peer>,
    on_progress: &'a (dyn Fn(&str, &Progress) + Sync),
) -> error::Result<(
    Arc<SandboxService>,
    impl std::future::Future<Output = error::Result<()>> + 'a,
)> {
    let meter: Arc<dyn meter::Meter> = match billing {
        Some(peer) => {
            set.readiness
                .require(SERVICE_NAME, &peer, "llmesh.billing.v1.BillingService");
            Arc::new(meter::BillingMeter::new(
                peer,
                process.service_token.clone(),
            ))
        }
        None => Arc::new(meter::NoMeter),
    };
    let runtimes = runtimes::Runtimes::new(config.clone())?;
    let prepare_at_start = config.prepare_at_start;
    let service = Arc::new(SandboxService::new(
        config,
        runtimes,
        workspace::Workspaces::new(process.db.clone()),
        process.clock.clone(),
        meter,
    ));
    for collector in service.metrics.collectors() {
        process.metrics.register(collector);
    }
    let max = set.max_message_bytes();
    set.add(
        ACCESS,
        SandboxServiceServer::from_arc(Arc::new(GrpcSandboxAdapter::new(
            service.clone(),
            process.currency.clone(),
        )))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    let gate = set
        .readiness
        .gate(SERVICE_NAME, "fetching and compiling the python runtime");
    let prepared = service.clone();
    let preparation = async move {
        if !prepare_at_start {
            gate.open();
            return Ok(());
        }
        match prepared.prepare_showing(on_progress).await {
            Ok(()) => {
                gate.open();
                Ok(())
            }
            Err(e) => {
                gate.close(format!("preparing the python runtime failed: {e}"));
                Err(e)
            }
        }
    };
    Ok((service, preparation))
}

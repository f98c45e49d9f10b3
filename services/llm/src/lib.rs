//! The llmesh llm service: a registry of models pulled from sources, loaded within a
//! memory budget, and served through the engine: streamed generation (the one place that
//! spends), embeddings and token counts.

pub mod catalog;
pub mod config;
pub mod error;
pub mod fleet;
pub mod gateway;
pub mod generate;
pub mod grpc;
pub mod metrics;
pub mod openai;
pub mod providers;
/// Model sources and fetching (shared with the sandbox's runtimes, in the kit).
pub use llmesh_kit::fetch as pull;
pub mod registry;
pub mod service;
pub mod spend;
pub mod tools;

pub use config::LlmConfig;
pub use grpc::{ACCESS, GrpcLlmAdapter, SERVICE_NAME};
pub use service::LlmService;

use std::sync::Arc;

use llmesh_kit::peer::Peer;
use llmesh_kit::serve::{Process, ServiceSet};
use llmesh_proto::llm::v1::llm_service_server::LlmServiceServer;

/// Starts llm in this process: the service spending through billing (`billing`: where it
/// runs, and then required for readiness; free, logged once, when it runs nowhere) and its
/// RPCs. Returns the service and its preparation (the default models pulled, progress to
/// `on_progress`, and loaded), which the caller runs once the server answers health
/// checks: llm reports NOT_SERVING until it is done.
pub fn mount<'a>(
    set: &mut ServiceSet,
    process: &Process,
    config: LlmConfig,
    billing: Option<Peer>,
    on_progress: &'a (dyn Fn(&str, &pull::Progress) + Sync),
) -> error::Result<(
    Arc<LlmService>,
    impl std::future::Future<Output = error::Result<()>> + 'a,
)> {
    let spend: Arc<dyn spend::SpendHook> = match billing {
        Some(peer) => {
            set.readiness
                .require(SERVICE_NAME, &peer, "llmesh.billing.v1.BillingService");
            Arc::new(spend::BillingPeer::new(
                peer,
                process.service_token.clone(),
                process.currency.clone(),
            ))
        }
        None => Arc::new(spend::NoBilling),
    };
    let providers = providers::Providers::new(process.db.clone(), config.clone())?;
    let service = Arc::new(
        LlmService::new(config, spend)?
            .with_signals(process.signals.clone())
            .with_catalog(catalog::Catalog::new(process.db.clone()))
            .with_providers(providers),
    );
    for collector in service.metrics.collectors() {
        process.metrics.register(collector);
    }
    process
        .metrics
        .register(Box::new(metrics::ModelStateCollector::new(Arc::downgrade(
            &service,
        ))));
    let max = set.max_message_bytes();
    set.add(
        ACCESS,
        LlmServiceServer::from_arc(Arc::new(GrpcLlmAdapter::new(service.clone())))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    let gate = set
        .readiness
        .gate(SERVICE_NAME, "pulling and loading the default models");
    let prepared = service.clone();
    let preparation = async move {
        // Secrets sealed with a previous key file are resealed with the current one; a
        // failure here leaves hosted models to report it and never blocks local ones.
        if let Ok(p) = prepared.providers()
            && let Err(e) = p.reseal().await
        {
            tracing::warn!(error = %e, "resealing provider secrets failed");
        }
        match prepared.prepare(on_progress).await {
            Ok(()) => {
                prepared.spawn_reconciler();
                gate.open();
                Ok(())
            }
            Err(e) => {
                gate.close(format!("preparing the models failed: {e}"));
                Err(e)
            }
        }
    };
    Ok((service, preparation))
}

//! The llmesh llm service: a registry of models pulled from sources, loaded within a
//! memory budget, and served through the engine: streamed generation (the one place that
//! spends), embeddings and token counts.

pub mod catalog;
pub mod config;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod pull;
pub mod registry;
pub mod service;
pub mod spend;

pub use config::LlmConfig;
pub use grpc::{ACCESS, GrpcLlmAdapter, SERVICE_NAME};
pub use service::LlmService;

use std::sync::Arc;

use llmesh_kit::peer::Peer;
use llmesh_kit::serve::{Process, ServiceSet};
use llmesh_proto::llm::v1::llm_service_server::LlmServiceServer;

/// Starts llm in this process: the service spending through billing (`billing`: where it
/// runs; free, logged once, when it runs nowhere), its default models pulled (progress to
/// `on_progress`) and loaded, and its RPCs.
pub async fn mount(
    set: &mut ServiceSet,
    process: &Process,
    config: LlmConfig,
    billing: Option<Peer>,
    on_progress: &(dyn Fn(&str, &pull::Progress) + Sync),
) -> error::Result<Arc<LlmService>> {
    let spend: Arc<dyn spend::SpendHook> = match billing {
        Some(peer) => Arc::new(spend::BillingPeer::new(
            peer,
            process.service_token.clone(),
            process.currency.clone(),
        )),
        None => Arc::new(spend::NoBilling),
    };
    let service = Arc::new(
        LlmService::new(config, spend)?
            .with_signals(process.signals.clone())
            .with_catalog(catalog::Catalog::new(process.db.clone())),
    );
    service.prepare(on_progress).await?;
    service.spawn_reconciler();
    let max = set.max_message_bytes();
    set.add(
        ACCESS,
        LlmServiceServer::from_arc(Arc::new(GrpcLlmAdapter::new(service.clone())))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    Ok(service)
}

//! The llmesh chat service: folders, conversations whose messages form a tree (edits and
//! regenerations branch), replies streamed from the llm service (which bills them),
//! assistants and prompt templates.

pub mod archive;
pub mod archive_grpc;
pub mod config;
pub mod error;
pub mod grpc;
pub mod import;
pub mod knowledge;
pub mod library;
pub mod llm_client;
pub mod service;
pub mod store;
pub mod template_vars;

pub use archive_grpc::{ARCHIVE_ACCESS, ARCHIVE_SERVICE_NAME, GrpcChatArchiveAdapter};
pub use config::ChatConfig;
pub use grpc::{ACCESS, GrpcChatAdapter, SERVICE_NAME};
pub use knowledge::grpc::{KNOWLEDGE_ACCESS, KNOWLEDGE_SERVICE_NAME};
pub use service::ChatService;

use std::sync::Arc;

use llmesh_kit::peer::Peer;
use llmesh_kit::serve::{Process, ServiceSet};
use llmesh_proto::chat::v1::chat_archive_service_server::ChatArchiveServiceServer;
use llmesh_proto::chat::v1::chat_service_server::ChatServiceServer;
use llmesh_proto::chat::v1::knowledge_service_server::KnowledgeServiceServer;

/// Starts chat in this process: the service reaching llm through `llm` (with the service
/// credential), StopReply reaching other chat processes by signal, and both of its RPC
/// services.
pub fn mount(
    set: &mut ServiceSet,
    process: &Process,
    config: ChatConfig,
    llm: Peer,
) -> Arc<ChatService> {
    set.readiness
        .require(SERVICE_NAME, &llm, "llmesh.llm.v1.LlmService");
    let llm_client: Arc<dyn llm_client::LlmClient> =
        Arc::new(llm_client::LlmPeer::new(llm, process.service_token.clone()));
    let chat_store = store::ChatStore::new(process.db.clone());
    let knowledge = Arc::new(knowledge::Knowledge::new(
        chat_store.clone(),
        llm_client.clone(),
        process.clock.clone(),
        config.knowledge.clone(),
    ));
    let service = Arc::new(
        ChatService::new(chat_store, llm_client, config, process.clock.clone())
            .with_signals(process.signals.clone())
            .with_knowledge(knowledge.clone()),
    );
    let max = set.max_message_bytes();
    set.add(
        ACCESS,
        ChatServiceServer::from_arc(Arc::new(GrpcChatAdapter::new(
            service.clone(),
            process.currency.clone(),
        )))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    set.add(
        ARCHIVE_ACCESS,
        ChatArchiveServiceServer::from_arc(Arc::new(GrpcChatArchiveAdapter::new(service.clone())))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    set.add(
        KNOWLEDGE_ACCESS,
        KnowledgeServiceServer::from_arc(Arc::new(knowledge::grpc::GrpcKnowledgeAdapter::new(
            knowledge,
        )))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    service
}

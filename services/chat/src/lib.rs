//! The llmesh chat service: folders, conversations whose messages form a tree (edits and
//! regenerations branch), replies streamed from the llm service (which bills them),
//! assistants and prompt templates.

pub mod archive;
pub mod archive_grpc;
pub mod config;
pub mod error;
pub mod grpc;
pub mod import;
pub mod library;
pub mod llm_client;
pub mod service;
pub mod store;
pub mod template_vars;

pub use archive_grpc::{ARCHIVE_ACCESS, ARCHIVE_SERVICE_NAME, GrpcChatArchiveAdapter};
pub use config::ChatConfig;
pub use grpc::{ACCESS, GrpcChatAdapter, SERVICE_NAME};
pub use service::ChatService;

use std::sync::Arc;

use llmesh_kit::Clock;
use llmesh_kit::peer::Peer;
use llmesh_kit::serve::ServiceSet;
use llmesh_proto::chat::v1::chat_archive_service_server::ChatArchiveServiceServer;
use llmesh_proto::chat::v1::chat_service_server::ChatServiceServer;
use sea_orm::DatabaseConnection;

/// Starts chat in this process: the service reaching llm through `llm` (with the service
/// credential), amounts shown in `currency`, and both of its RPC services.
pub fn mount(
    set: &mut ServiceSet,
    db: DatabaseConnection,
    config: ChatConfig,
    clock: Arc<dyn Clock>,
    llm: Peer,
    service_token: &str,
    currency: String,
) -> Arc<ChatService> {
    let service = Arc::new(ChatService::new(
        store::ChatStore::new(db),
        Arc::new(llm_client::LlmPeer::new(llm, service_token.to_owned())),
        config,
        clock,
    ));
    let max = set.max_message_bytes();
    set.add(
        ACCESS,
        ChatServiceServer::from_arc(Arc::new(GrpcChatAdapter::new(service.clone(), currency)))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    set.add(
        ARCHIVE_ACCESS,
        ChatArchiveServiceServer::from_arc(Arc::new(GrpcChatArchiveAdapter::new(service.clone())))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    service
}

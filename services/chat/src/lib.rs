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

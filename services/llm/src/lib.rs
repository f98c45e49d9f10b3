//! The llmesh llm service: a registry of models pulled from sources, loaded within a
//! memory budget, and served through the engine: streamed generation (the one place that
//! spends), embeddings and token counts.

pub mod config;
pub mod error;
pub mod grpc;
pub mod pull;
pub mod registry;
pub mod service;
pub mod spend;

pub use config::LlmConfig;
pub use grpc::{ACCESS, GrpcLlmAdapter, SERVICE_NAME};
pub use service::LlmService;

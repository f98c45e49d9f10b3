//! llmesh's inference engine: GGUF chat models (llama and Gemma 3) on llmesh's own forward
//! pass and quantized kernels, which batch sequences of any length; a tokenizer and chat
//! template from the GGUF metadata, sampling, UTF-8-safe streaming with stop sequences,
//! and a scheduler actor on its own thread that runs continuous batching.

pub mod attend;
pub mod embed;
pub mod error;
pub mod gguf;
pub mod llama;
pub mod model;
pub mod qmatmul;
pub mod sampler;
pub mod scheduler;
pub mod stream;
pub mod template;
pub mod tokenizer;
pub mod vmath;

pub use error::{EngineError, Result};
pub use model::{ChatModel, ModelInfo};

//! The real model files tests run against, fetched once into a cache shared by test runs.

use std::path::PathBuf;

/// Path of the SmolLM2-135M-Instruct Q4_1 GGUF file.
pub fn chat_model_path() -> PathBuf {
    if let Ok(p) = std::env::var("LLMESH_TEST_CHAT_MODEL") {
        return PathBuf::from(p);
    }
    panic!("set LLMESH_TEST_CHAT_MODEL")
}

//! Chat's configuration section (`[chat]`).

use llmesh_kit::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// The model new conversations use when they name none.
    pub default_model: String,
    /// Longest message, in characters.
    pub max_message_chars: usize,
    /// Longest system prompt, in characters.
    pub max_system_prompt_chars: usize,
    /// Tokens kept free for the reply when the history is trimmed to fit the context.
    pub reply_reserve_tokens: u32,
    /// Generate a short title after the first exchange.
    pub auto_title: bool,
    /// Largest upload (an import file), in bytes.
    pub max_upload_bytes: u64,
    /// Largest chunk of an upload, in bytes; keep it below server.max_message_bytes.
    pub max_chunk_bytes: u32,
    /// Search ranks relevance within this many of the newest matches: a common word
    /// answers from recent messages instead of ranking every one. Rare words rank all.
    pub search_candidates: u64,
    /// Most conversations one batch call (archive, delete, tag, move, export) may name.
    pub max_batch: usize,
    /// Knowledge bases (`[chat.knowledge]`).
    pub knowledge: crate::knowledge::KnowledgeConfig,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            default_model: "smollm2-135m-instruct".into(),
            max_message_chars: 100_000,
            max_system_prompt_chars: 20_000,
            reply_reserve_tokens: 512,
            auto_title: true,
            max_upload_bytes: 256 * 1024 * 1024,
            max_chunk_bytes: 1024 * 1024,
            search_candidates: 2000,
            max_batch: 500,
            knowledge: Default::default(),
        }
    }
}

impl ChatConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_chunk_bytes < 1024 || self.max_upload_bytes == 0 {
            return Err(invalid(
                "chat.max_chunk_bytes",
                "chunks must be at least 1024 bytes and uploads positive",
            ));
        }
        if self.max_message_chars == 0 || self.max_system_prompt_chars == 0 {
            return Err(invalid("chat.max_message_chars", "limits must be positive"));
        }
        if self.search_candidates == 0 || self.search_candidates > 1_000_000 {
            return Err(invalid(
                "chat.search_candidates",
                "must be between 1 and 1000000",
            ));
        }
        if self.max_batch == 0 || self.max_batch > 10_000 {
            return Err(invalid("chat.max_batch", "must be between 1 and 10000"));
        }
        self.knowledge.validate()
    }
}

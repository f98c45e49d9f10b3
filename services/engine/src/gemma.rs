//! Gemma-family GGUF models through candle's quantized Gemma 3 implementation. That model
//! keeps its KV cache inside its layers, so every sequence runs on its own copy of the
//! model (the weights are shared; only the caches are per sequence) and the sequences of a
//! step run one after another rather than as one batch.

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_gemma3::ModelWeights;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// A loaded Gemma model.
pub struct Gemma {
    base: ModelWeights,
    pub context_length: usize,
    /// KV cache bytes per position (all layers, keys and values, f32).
    kv_bytes_per_token: usize,
    device: Device,
}

/// One sequence's copy of the model and how far it has read.
#[derive(Clone)]
pub struct GemmaState {
    model: ModelWeights,
    pub len: usize,
}

impl Gemma {
    pub fn load(file: GgufFile, device: &Device) -> Result<Self> {
        let arch = file.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let context_length = file.u32(&key("context_length"))? as usize;
        let layers = file.u32(&key("block_count"))? as usize;
        let kv_heads = file.u32(&key("attention.head_count_kv"))? as usize;
        let head_dim = file.u32(&key("attention.key_length"))? as usize;
        let GgufFile {
            content,
            mut reader,
        } = file;
        let base = ModelWeights::from_gguf(content, &mut reader, device)
            .map_err(|e| EngineError::Load(format!("loading the Gemma weights: {e}")))?;
        Ok(Gemma {
            base,
            context_length,
            kv_bytes_per_token: layers * 2 * kv_heads * head_dim * 4,
            device: device.clone(),
        })
    }

    /// A fresh sequence: the shared weights with empty caches.
    pub fn new_state(&self) -> GemmaState {
        GemmaState {
            model: self.base.clone(),
            len: 0,
        }
    }

    /// Feeds tokens to one sequence; returns the logits after the last one.
    pub fn forward(&self, state: &mut GemmaState, tokens: &[u32]) -> Result<Vec<f32>> {
        if state.len + tokens.len() > self.context_length {
            return Err(EngineError::Invalid("the context window is full".into()));
        }
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = state.model.forward(&input, state.len)?;
        state.len += tokens.len();
        Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// Bytes the caches of a sequence hold.
    pub fn state_bytes(&self, state: &GemmaState) -> usize {
        state.len * self.kv_bytes_per_token
    }
}

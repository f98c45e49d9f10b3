//! Sentence embeddings with a BERT model directory (safetensors + config.json +
//! tokenizer.json + 1_Pooling/config.json): mean pooling over tokens, then L2 norm.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};

/// A loaded embedding model.
pub struct EmbeddingModel {
    model: BertModel,
    /// Without padding or truncation (see [`EmbeddingModel::load`]).
    tokenizer: Tokenizer,
    device: Device,
    pub dimension: usize,
    /// Inputs longer than this many tokens are truncated, as sentence-transformers does.
    pub max_tokens: usize,
}

/// The files an embedding model directory must hold.
pub const REQUIRED_FILES: &[&str] = &["model.safetensors", "config.json", "tokenizer.json"];

impl EmbeddingModel {
    /// Loads a model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        for file in REQUIRED_FILES {
            if !dir.join(file).is_file() {
                return Err(EngineError::Load(format!(
                    "{} lacks {file}: an embedding model is a directory with {}",
                    dir.display(),
                    REQUIRED_FILES.join(", ")
                )));
            }
        }
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| EngineError::Load(format!("reading {name}: {e}")))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| EngineError::Load(format!("config.json: {e}")))?;
        if let Ok(pooling) = read("1_Pooling/config.json") {
            let pooling: serde_json::Value = serde_json::from_slice(&pooling)
                .map_err(|e| EngineError::Load(format!("1_Pooling/config.json: {e}")))?;
            if pooling["pooling_mode_mean_tokens"] != serde_json::Value::Bool(true) {
                return Err(EngineError::Load(
                    "only mean pooling is supported (1_Pooling/config.json)".into(),
                ));
            }
        }
        let max_tokens = read("sentence_bert_config.json")
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map(|v| v as usize)
            .unwrap_or(config.max_position_embeddings);
        let device = Device::Cpu;
        let weights = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let model = BertModel::load(vb, &config)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| EngineError::Load(format!("tokenizer.json: {e}")))?;
        // tokenizer.json may pad and truncate every input (all-MiniLM-L6-v2's pads to 128).
        // sentence-transformers does neither for one text: padding would enter the mean, and
        // inputs are cut at max_seq_length below. So the tokenizer used has both off.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EngineError::Load(format!("tokenizer.json: {e}")))?;
        Ok(EmbeddingModel {
            model,
            tokenizer,
            device,
            dimension: config.hidden_size,
            max_tokens,
        })
    }

    /// The tokens of `text`, without the special tokens added around every input.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::Invalid(format!("cannot tokenize the input: {e}")))?;
        Ok(encoding.get_ids().len())
    }

    /// Embeds each text; returns unit vectors and the number of tokens read.
    pub fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize)> {
        let mut out = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        for text in texts {
            let encoding = self
                .tokenizer
                .encode(text.as_str(), true)
                .map_err(|e| EngineError::Invalid(format!("cannot tokenize the input: {e}")))?;
            let mut ids = encoding.get_ids().to_vec();
            if ids.len() > self.max_tokens {
                // Keep the closing [SEP] as the model saw in training.
                let last = ids[ids.len() - 1];
                ids.truncate(self.max_tokens);
                if let Some(end) = ids.last_mut() {
                    *end = last;
                }
            }
            tokens += ids.len();
            let n = ids.len();
            let input = Tensor::from_vec(ids, (1, n), &self.device)?;
            let types = input.zeros_like()?;
            let hidden = self.model.forward(&input, &types, None)?;
            // Every token counts equally: mean over the sequence, then unit length.
            let mean = (hidden.sum(1)? / n as f64)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
            let unit = mean.broadcast_div(&norm)?;
            out.push(unit.squeeze(0)?.to_vec1::<f32>()?);
        }
        Ok((out, tokens))
    }
}

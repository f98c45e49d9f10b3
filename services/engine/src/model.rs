//! A loaded chat model: weights behind a scheduler, its tokenizer and its chat template.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::llama::Llama;
use crate::scheduler::{Request, Scheduler, SchedulerConfig};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::GgufTokenizer;

/// What a GGUF file says about the model in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub architecture: String,
    pub context_length: u32,
    pub quantization: String,
    /// The Jinja chat template in the file, if any.
    pub chat_template: Option<String>,
}

impl ModelInfo {
    /// Reads the metadata of a GGUF file without loading its weights.
    pub fn inspect(path: &Path) -> Result<ModelInfo> {
        let file = GgufFile::open(path)?;
        Ok(ModelInfo {
            architecture: file.architecture()?,
            context_length: file.context_length()?,
            quantization: file.quantization(),
            chat_template: file.opt_string("tokenizer.chat_template"),
        })
    }
}

/// The compute device: CUDA when built with the `cuda` feature and a GPU is present.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

/// A chat model ready to generate.
pub struct ChatModel {
    pub info: ModelInfo,
    pub tokenizer: Arc<GgufTokenizer>,
    template: ChatTemplate,
    scheduler: Scheduler,
}

impl ChatModel {
    /// Loads a GGUF chat model and starts its scheduler thread.
    pub fn load(name: &str, path: &Path, config: SchedulerConfig) -> Result<ChatModel> {
        let mut file = GgufFile::open(path)?;
        let info = ModelInfo {
            architecture: file.architecture()?,
            context_length: file.context_length()?,
            quantization: file.quantization(),
            chat_template: file.opt_string("tokenizer.chat_template"),
        };
        let tokenizer = Arc::new(GgufTokenizer::from_gguf(&file)?);
        let text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or_default()
                .to_owned()
        };
        let template = ChatTemplate::new(
            info.chat_template.clone(),
            text(tokenizer.bos_id),
            text(tokenizer.eos_id),
        )?;
        let backend = Llama::load(&mut file, &device())?;
        let scheduler = Scheduler::start(name, Arc::new(backend), tokenizer.clone(), config)?;
        Ok(ChatModel {
            info,
            tokenizer,
            template,
            scheduler,
        })
    }

    /// Renders messages with the chat template and tokenizes the result.
    pub fn chat_tokens(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let prompt = self.template.render(messages)?;
        self.with_bos(self.tokenizer.encode(&prompt)?)
    }

    /// Tokenizes a raw prompt (no template), with BOS when the model asks for one.
    pub fn text_tokens(&self, text: &str) -> Result<Vec<u32>> {
        self.with_bos(self.tokenizer.encode(text)?)
    }

    /// Puts BOS first for models whose metadata says so (`tokenizer.ggml.add_bos_token`),
    /// unless the template already wrote it.
    fn with_bos(&self, mut ids: Vec<u32>) -> Result<Vec<u32>> {
        if let (true, Some(bos)) = (self.tokenizer.add_bos, self.tokenizer.bos_id)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Queues a generation; events arrive on the request's channel.
    pub fn generate(&self, request: Request) -> Result<()> {
        self.scheduler.submit(request)
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }
}

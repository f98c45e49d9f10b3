//! Reading GGUF files: metadata accessors and a summary of what a file holds.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{EngineError, Result};

/// An opened GGUF file: its metadata and tensor index (tensors are read on demand).
pub struct GgufFile {
    pub content: Content,
    pub reader: BufReader<File>,
}

impl GgufFile {
    /// Opens and indexes a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| EngineError::Load(format!("cannot open {}: {e}", path.display())))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            EngineError::Load(format!("{} is not a GGUF file: {e}", path.display()))
        })?;
        Ok(GgufFile { content, reader })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Returns a metadata value or a load error naming the key.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| EngineError::Load(format!("GGUF metadata lacks `{key}`")))
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        value_u32(self.get(key)?).ok_or_else(|| bad(key))
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.get(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            other => value_u32(other).map(|v| v as f32).ok_or_else(|| bad(key)),
        }
    }

    pub fn string(&self, key: &str) -> Result<String> {
        self.get(key)?.to_string().cloned().map_err(|_| bad(key))
    }

    pub fn opt_string(&self, key: &str) -> Option<String> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok().cloned())
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        let items = self.get(key)?.to_vec().map_err(|_| bad(key))?;
        items
            .iter()
            .map(|v| v.to_string().cloned().map_err(|_| bad(key)))
            .collect()
    }

    pub fn u32s(&self, key: &str) -> Result<Vec<u32>> {
        let items = self.get(key)?.to_vec().map_err(|_| bad(key))?;
        items
            .iter()
            .map(|v| value_u32(v).ok_or_else(|| bad(key)))
            .collect()
    }

    /// The `general.architecture`, e.g. "llama" or "gemma3".
    pub fn architecture(&self) -> Result<String> {
        self.string("general.architecture")
    }

    /// The context length the model was trained for.
    pub fn context_length(&self) -> Result<u32> {
        let arch = self.architecture()?;
        self.u32(&format!("{arch}.context_length"))
    }

    /// The file's quantization as llama.cpp names it (from `general.file_type`), or else
    /// the type most weight matrices use.
    pub fn quantization(&self) -> String {
        let named = match self.u32("general.file_type") {
            Ok(0) => Some("F32"),
            Ok(1) => Some("F16"),
            Ok(2) => Some("Q4_0"),
            Ok(3) => Some("Q4_1"),
            Ok(7) => Some("Q8_0"),
            Ok(8) => Some("Q5_0"),
            Ok(9) => Some("Q5_1"),
            Ok(10) => Some("Q2_K"),
            Ok(11) => Some("Q3_K_S"),
            Ok(12) => Some("Q3_K_M"),
            Ok(13) => Some("Q3_K_L"),
            Ok(14) => Some("Q4_K_S"),
            Ok(15) => Some("Q4_K_M"),
            Ok(16) => Some("Q5_K_S"),
            Ok(17) => Some("Q5_K_M"),
            Ok(18) => Some("Q6_K"),
            Ok(32) => Some("BF16"),
            _ => None,
        };
        if let Some(name) = named {
            return name.to_owned();
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for info in self.content.tensor_infos.values() {
            if info.shape.rank() == 2 {
                *counts.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .max_by_key(|(name, n)| (*n, name.clone()))
            .map(|(name, _)| name)
            .unwrap_or_else(|| "unknown".into())
    }
}

fn value_u32(v: &Value) -> Option<u32> {
    match v {
        Value::U8(v) => Some(u32::from(*v)),
        Value::I8(v) => u32::try_from(*v).ok(),
        Value::U16(v) => Some(u32::from(*v)),
        Value::I16(v) => u32::try_from(*v).ok(),
        Value::U32(v) => Some(*v),
        Value::I32(v) => u32::try_from(*v).ok(),
        Value::U64(v) => u32::try_from(*v).ok(),
        Value::I64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

fn bad(key: &str) -> EngineError {
    EngineError::Load(format!("GGUF metadata `{key}` has an unexpected type"))
}

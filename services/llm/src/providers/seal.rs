//! Sealing provider secrets at rest: XChaCha20-Poly1305 with a random nonce per seal and
//! the provider id as associated data (a sealed value moved to another row does not open).
//!
//! The keys form a ring: the current key seals, every key in the ring opens. Keys come from
//! `llm.provider_key_file` (created with a new random key when the file is missing, as the
//! token-signing key is when absent) plus `llm.provider_previous_key_files`, or, with no
//! file configured, from the `llm_provider_keys` table that every llm process shares.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use llmesh_kit::db::{all, exec, micros};
use rand::RngCore;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sha2::{Digest, Sha256};

use crate::config::LlmConfig;
use crate::error::{LlmError, Result};

const NONCE_BYTES: usize = 24;

/// One key of the ring, named by a digest of itself (never the key).
#[derive(Clone)]
pub struct SealKey {
    pub id: String,
    key: [u8; 32],
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.id)
    }
}

impl SealKey {
    pub fn new(key: [u8; 32]) -> SealKey {
        let mut h = Sha256::new();
        h.update(b"llmesh provider key\0");
        h.update(key);
        SealKey {
            id: hex::encode(&h.finalize()[..8]),
            key,
        }
    }

    pub fn random() -> SealKey {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SealKey::new(key)
    }

    /// The key as stored: base64 text.
    pub fn encoded(&self) -> String {
        B64.encode(self.key)
    }

    /// Reads a key written as base64 or hex text, or as 32 raw bytes.
    pub fn decode(raw: &[u8], what: &str) -> Result<SealKey> {
        if raw.len() == 32 {
            let mut key = [0u8; 32];
            key.copy_from_slice(raw);
            return Ok(SealKey::new(key));
        }
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            B64.decode(text).ok()
        };
        match bytes {
            Some(b) if b.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&b);
                Ok(SealKey::new(key))
            }
            _ => Err(LlmError::Precondition(format!(
                "{what} must hold a 32-byte key as base64 or hex text (e.g. `head -c 32 /dev/urandom | base64`)"
            ))),
        }
    }
}

/// Where the ring's keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Files,
    Database,
}

/// The keys that seal and open provider secrets.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: SealKey,
    others: Vec<SealKey>,
    pub source: KeySource,
}

impl KeyRing {
    pub fn from_keys(current: SealKey, others: Vec<SealKey>, source: KeySource) -> KeyRing {
        KeyRing {
            current,
            others,
            source,
        }
    }

    /// The ring as the configuration says: files when `llm.provider_key_file` is set,
    /// otherwise the database (a key is made and stored on first use).
    pub async fn load(config: &LlmConfig, db: &DatabaseConnection) -> Result<KeyRing> {
        match &config.provider_key_file {
            Some(path) => {
                let current = read_or_create(path)?;
                let mut others = Vec::new();
                for p in &config.provider_previous_key_files {
                    let raw = std::fs::read(p).map_err(|e| {
                        LlmError::Precondition(format!(
                            "cannot read llm.provider_previous_key_files entry {p}: {e}"
                        ))
                    })?;
                    others.push(SealKey::decode(
                        &raw,
                        &format!("llm.provider_previous_key_files entry {p}"),
                    )?);
                }
                Ok(KeyRing::from_keys(current, others, KeySource::Files))
            }
            None => {
                let mut keys = stored_keys(db).await?;
                if keys.is_empty() {
                    let key = SealKey::random();
                    store_key(db, &key).await?;
                    keys = stored_keys(db).await?;
                }
                let mut keys = keys.into_iter();
                let current = keys
                    .next()
                    .ok_or_else(|| LlmError::Internal("no provider key was stored".into()))?;
                Ok(KeyRing::from_keys(
                    current,
                    keys.collect(),
                    KeySource::Database,
                ))
            }
        }
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plain` for the row `aad`; returns the key id and the sealed text.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<(String, String)> {
        let cipher = XChaCha20Poly1305::new((&self.current.key).into());
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| LlmError::Internal("sealing a provider secret failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok((self.current.id.clone(), B64.encode(out)))
    }

    /// Opens what [`KeyRing::seal`] sealed for the row `aad` with key `key_id`.
    pub fn open(&self, key_id: &str, aad: &str, sealed: &str) -> Result<Vec<u8>> {
        let key = std::iter::once(&self.current)
            .chain(&self.others)
            .find(|k| k.id == key_id)
            .ok_or_else(|| {
                LlmError::Precondition(format!(
                    "the secret of provider {aad} is sealed with key {key_id}, which this process does not have: \
                     list the old key file in llm.provider_previous_key_files, or set the provider's api_key again"
                ))
            })?;
        let raw = B64
            .decode(sealed)
            .map_err(|_| LlmError::Internal(format!("provider {aad}: sealed secret is damaged")))?;
        if raw.len() < NONCE_BYTES {
            return Err(LlmError::Internal(format!(
                "provider {aad}: sealed secret is damaged"
            )));
        }
        let (nonce, body) = raw.split_at(NONCE_BYTES);
        let mut fixed = [0u8; NONCE_BYTES];
        fixed.copy_from_slice(nonce);
        XChaCha20Poly1305::new((&key.key).into())
            .decrypt(
                &XNonce::from(fixed),
                Payload {
                    msg: body,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                LlmError::Precondition(format!(
                    "the secret of provider {aad} does not open with key {key_id}: it was altered or sealed for another provider; set its api_key again"
                ))
            })
    }
}

/// Reads the key file, or writes a new random key there (readable by its owner only)
/// when it does not exist. Two processes racing on one disk end with the same key.
fn read_or_create(path: &str) -> Result<SealKey> {
    let what = format!("llm.provider_key_file {path}");
    match std::fs::read(path) {
        Ok(raw) => SealKey::decode(&raw, &what),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SealKey::random();
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    LlmError::Precondition(format!("cannot create the directory of {what}: {e}"))
                })?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    use std::io::Write;
                    file.write_all(format!("{}\n", key.encoded()).as_bytes())
                        .map_err(|e| LlmError::Precondition(format!("cannot write {what}: {e}")))?;
                    tracing::info!(path = %path, key = %key.id, "generated a new provider key");
                    Ok(key)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let raw = std::fs::read(path)
                        .map_err(|e| LlmError::Precondition(format!("cannot read {what}: {e}")))?;
                    SealKey::decode(&raw, &what)
                }
                Err(e) => Err(LlmError::Precondition(format!("cannot create {what}: {e}"))),
            }
        }
        Err(e) => Err(LlmError::Precondition(format!("cannot read {what}: {e}"))),
    }
}

/// The keys kept in the database, newest first.
pub async fn stored_keys<C: ConnectionTrait>(db: &C) -> Result<Vec<SealKey>> {
    let rows = all(
        db,
        "SELECT id, key_material FROM llm_provider_keys ORDER BY created_at DESC, id",
        vec![],
    )
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let material: String = r.try_get("", "key_material").map_err(db_err)?;
            SealKey::decode(material.as_bytes(), "a key in llm_provider_keys")
        })
        .collect()
}

pub async fn store_key<C: ConnectionTrait>(db: &C, key: &SealKey) -> Result<()> {
    exec(
        db,
        "INSERT INTO llm_provider_keys (id, key_material, created_at) VALUES (?, ?, ?)",
        vec![
            key.id.clone().into(),
            key.encoded().into(),
            micros(chrono::Utc::now()).into(),
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(crate) fn db_err(e: sea_orm::DbErr) -> LlmError {
    LlmError::Internal(format!("provider store: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_for_their_row_and_key() {
        let ring = KeyRing::from_keys(SealKey::random(), vec![], KeySource::Files);
        let (id, sealed) = ring.seal("openai", b"sk-secret").expect("seal");
        assert!(!sealed.contains("sk-secret"));
        assert_eq!(
            ring.open(&id, "openai", &sealed).expect("open"),
            b"sk-secret"
        );
        assert!(ring.open(&id, "other", &sealed).is_err());
        let stranger = KeyRing::from_keys(SealKey::random(), vec![], KeySource::Files);
        assert!(stranger.open(&id, "openai", &sealed).is_err());
        // A ring that keeps the old key as a previous one still opens it.
        let rotated = KeyRing::from_keys(
            SealKey::random(),
            vec![ring.current.clone()],
            KeySource::Files,
        );
        assert_eq!(
            rotated.open(&id, "openai", &sealed).expect("open"),
            b"sk-secret"
        );
        let mut damaged = B64.decode(&sealed).expect("b64");
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(ring.open(&id, "openai", &B64.encode(damaged)).is_err());
    }

    #[test]
    fn key_files_in_three_spellings() {
        let key = SealKey::random();
        let b64 = SealKey::decode(key.encoded().as_bytes(), "x").expect("base64");
        let hex = SealKey::decode(hex::encode(key.key).as_bytes(), "x").expect("hex");
        let raw = SealKey::decode(&key.key, "x").expect("raw");
        assert_eq!(
            (b64.id.as_str(), hex.id.as_str()),
            (key.id.as_str(), key.id.as_str())
        );
        assert_eq!(raw.id, key.id);
        assert!(SealKey::decode(b"short", "x").is_err());
    }

    #[test]
    fn a_missing_key_file_is_created_once() {
        let dir = std::env::temp_dir().join(format!("llmesh-seal-{}", uuid::Uuid::new_v4()));
        let path = dir.join("provider.key");
        let path = path.to_str().expect("utf-8");
        let first = read_or_create(path).expect("create");
        let second = read_or_create(path).expect("read");
        assert_eq!(first.id, second.id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "only its owner may read the key file");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

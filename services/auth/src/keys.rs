//! The keyring: Ed25519 signing keys kept in the database, the current one used to sign
//! access tokens, retired ones still trusted until tokens they signed have expired.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use llmesh_kit::jwt::{Claims, KeySet, KeySource, VerifyingKey};
use llmesh_kit::{ApiError, Clock};
use sha2::{Digest, Sha256};

use crate::error::{AuthError, Result};
use crate::store::{AuthStore, signing_key};

/// RFC 8410 PKCS#8 v1 header of an Ed25519 private key; the 32-byte seed follows it.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

struct Current {
    key_id: String,
    encoding: EncodingKey,
}

struct State {
    current: Current,
    set: Arc<KeySet>,
}

/// Signs access tokens and serves the public keys that verify them.
pub struct Keyring {
    store: AuthStore,
    clock: Arc<dyn Clock>,
    issuer: String,
    access_ttl: Duration,
    state: RwLock<State>,
    last_reload: RwLock<DateTime<Utc>>,
}

impl Keyring {
    /// Loads the keys from the database. With `configured_seed` that key becomes current;
    /// otherwise the stored current key is used, or one is generated and stored.
    pub async fn load(
        store: AuthStore,
        clock: Arc<dyn Clock>,
        issuer: String,
        access_ttl: Duration,
        configured_seed: Option<[u8; 32]>,
    ) -> Result<Self> {
        let now = clock.now();
        let stored = store.signing_keys().await?;
        let current_stored = stored.iter().rev().find(|k| k.retire_at.is_none()).cloned();
        match (configured_seed, current_stored) {
            (Some(seed), current) => {
                let model = key_model(seed, now);
                if current.as_ref().map(|c| &c.id) != Some(&model.id) {
                    store.install_signing_key(model, now + access_ttl).await?;
                }
            }
            (None, Some(_)) => {}
            (None, None) => {
                let seed: [u8; 32] = rand::random();
                store
                    .install_signing_key(key_model(seed, now), now + access_ttl)
                    .await?;
                tracing::info!("generated a new token signing key");
            }
        }
        let state = build_state(&store.signing_keys().await?, &issuer)?;
        Ok(Keyring {
            store,
            clock,
            issuer,
            access_ttl,
            state: RwLock::new(state),
            last_reload: RwLock::new(now),
        })
    }

    /// Makes a fresh key current. The previous key keeps verifying until the tokens it
    /// signed have expired.
    pub async fn rotate(&self) -> Result<String> {
        let now = self.clock.now();
        let seed: [u8; 32] = rand::random();
        let model = key_model(seed, now);
        let id = model.id.clone();
        self.store
            .install_signing_key(model, now + self.access_ttl)
            .await?;
        self.reload().await?;
        tracing::info!(key_id = %id, "rotated the token signing key");
        Ok(id)
    }

    async fn reload(&self) -> Result<()> {
        let state = build_state(&self.store.signing_keys().await?, &self.issuer)?;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        *self.last_reload.write().unwrap_or_else(|e| e.into_inner()) = self.clock.now();
        Ok(())
    }

    /// Signs an access token for the given claims with the current key.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(state.current.key_id.clone());
        jsonwebtoken::encode(&header, claims, &state.current.encoding)
            .map_err(|e| AuthError::Internal(format!("signing an access token: {e}")))
    }

    /// Returns the keys that still verify tokens at this moment.
    pub fn key_set(&self) -> Arc<KeySet> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .set
            .clone()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

#[async_trait::async_trait]
impl KeySource for Keyring {
    async fn key_set(&self, refresh: bool) -> std::result::Result<Arc<KeySet>, ApiError> {
        // Another auth replica may have rotated; look at the database at most every 5 s.
        let stale = {
            let last = *self.last_reload.read().unwrap_or_else(|e| e.into_inner());
            self.clock.now() - last > Duration::seconds(5)
        };
        if refresh && stale {
            self.reload().await.map_err(ApiError::from)?;
        }
        Ok(Keyring::key_set(self))
    }
}

fn key_model(seed: [u8; 32], now: DateTime<Utc>) -> signing_key::Model {
    let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    signing_key::Model {
        id: key_id(&public),
        seed: seed.to_vec(),
        public_key: public.to_vec(),
        created_at: now,
        retire_at: None,
    }
}

/// Names a key by the first 8 bytes of the SHA-256 of its public half.
fn key_id(public: &[u8; 32]) -> String {
    let digest = Sha256::digest(public);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..8])
}

fn build_state(keys: &[signing_key::Model], issuer: &str) -> Result<State> {
    let mut set = KeySet {
        issuer: issuer.to_owned(),
        keys: HashMap::new(),
    };
    let mut current = None;
    for key in keys {
        let public: [u8; 32] = key.public_key.as_slice().try_into().map_err(|_| {
            AuthError::Internal(format!("signing key {} has a bad public key", key.id))
        })?;
        set.keys.insert(
            key.id.clone(),
            VerifyingKey {
                key_id: key.id.clone(),
                public_key: public,
                retire_at: key.retire_at,
            },
        );
        if key.retire_at.is_none() {
            let seed: [u8; 32] = key.seed.as_slice().try_into().map_err(|_| {
                AuthError::Internal(format!("signing key {} has a bad seed", key.id))
            })?;
            let mut der = PKCS8_ED25519_PREFIX.to_vec();
            der.extend_from_slice(&seed);
            current = Some(Current {
                key_id: key.id.clone(),
                encoding: EncodingKey::from_ed_der(&der),
            });
        }
    }
    let current =
        current.ok_or_else(|| AuthError::Internal("no current signing key stored".into()))?;
    Ok(State {
        current,
        set: Arc::new(set),
    })
}

/// Reads an Ed25519 private key from a PKCS#8 PEM file (as `openssl genpkey -algorithm
/// ed25519` writes) and returns its seed.
pub fn read_seed_file(path: &str) -> std::result::Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read auth.signing_key_file {path}: {e}"))?;
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| format!("auth.signing_key_file {path} is not a PEM file"))?;
    match der.strip_prefix(&PKCS8_ED25519_PREFIX[..]) {
        Some(seed) if seed.len() == 32 => {
            let mut out = [0u8; 32];
            out.copy_from_slice(seed);
            Ok(out)
        }
        _ => Err(format!(
            "auth.signing_key_file {path} is not an Ed25519 PKCS#8 private key"
        )),
    }
}

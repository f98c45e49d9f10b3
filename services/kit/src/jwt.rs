//! Access tokens: Ed25519-signed JWTs under a key id. Auth signs them; every service verifies
//! them itself against the public keys auth publishes.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::principal::{CredentialKind, Principal, Role};
use crate::{ApiError, Clock};

/// How far a token's issue time may lie in the future (clock skew between replicas).
const LEEWAY_SECS: i64 = 30;

/// The claims llmesh puts in an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    /// The user id.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    /// The role at issue time.
    pub role: String,
    /// The login session (refresh-token family) the token belongs to.
    pub sid: String,
    /// A unique id per token, so two tokens issued in the same second still differ.
    #[serde(default)]
    pub jti: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// One public key that verifies tokens carrying its key id.
#[derive(Clone)]
pub struct VerifyingKey {
    pub key_id: String,
    pub public_key: [u8; 32],
    /// Tokens under this key are refused after this time; `None` for the current key.
    pub retire_at: Option<DateTime<Utc>>,
}

/// The set of keys a verifier trusts, by key id.
#[derive(Clone, Default)]
pub struct KeySet {
    pub issuer: String,
    pub keys: HashMap<String, VerifyingKey>,
}

/// Supplies the current key set: straight from auth's keyring in one process, or fetched
/// from auth's GetPublicKeys and cached in another.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    /// Returns the keys to verify with; `refresh` asks for a fresh copy because a token
    /// named an unknown key id.
    async fn key_set(&self, refresh: bool) -> Result<Arc<KeySet>, ApiError>;
}

/// Verifies access tokens against a key source and an injected clock.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<dyn KeySource>,
    clock: Arc<dyn Clock>,
}

impl TokenVerifier {
    pub fn new(keys: Arc<dyn KeySource>, clock: Arc<dyn Clock>) -> Self {
        TokenVerifier { keys, clock }
    }

    /// Checks signature, issuer, expiry and shape, and returns the principal the token
    /// speaks for. Every failure is UNAUTHENTICATED with a short reason.
    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthenticated("malformed access token"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(ApiError::unauthenticated("unsupported token algorithm"));
        }
        let kid = header
            .kid
            .ok_or_else(|| ApiError::unauthenticated("access token has no key id"))?;
        let mut set = self.keys.key_set(false).await?;
        if !set.keys.contains_key(&kid) {
            set = self.keys.key_set(true).await?;
        }
        let key = set
            .keys
            .get(&kid)
            .ok_or_else(|| ApiError::unauthenticated("access token signed by an unknown key"))?;
        let now = self.clock.now();
        if key.retire_at.is_some_and(|t| t <= now) {
            return Err(ApiError::unauthenticated(
                "access token signed by a retired key",
            ));
        }

        let mut validation = Validation::new(Algorithm::EdDSA);
        // Expiry is checked below against the injected clock, not the system time.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[&set.issuer]);
        let decoding = DecodingKey::from_ed_der(&key.public_key);
        let data = jsonwebtoken::decode::<Claims>(token, &decoding, &validation)
            .map_err(|_| ApiError::unauthenticated("invalid access token"))?;
        let claims = data.claims;
        let now = now.timestamp();
        if claims.exp <= now {
            return Err(ApiError::unauthenticated(
                "access token expired: call Refresh or sign in again",
            ));
        }
        if claims.iat > now + LEEWAY_SECS {
            return Err(ApiError::unauthenticated(
                "access token issued in the future",
            ));
        }
        let role = Role::parse(&claims.role)
            .ok_or_else(|| ApiError::unauthenticated("access token has an unknown role"))?;
        Ok(Principal {
            user_id: claims.sub,
            role,
            scopes: claims.scopes,
            credential: CredentialKind::AccessToken {
                session_id: claims.sid,
            },
            via_service: false,
        })
    }
}

//! How services in another process trust auth: its public keys fetched over gRPC and
//! cached, and API keys resolved through its internal RPC with a cache of a few seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmesh_kit::authn::{ApiKeyResolver, SERVICE_TOKEN_HEADER};
use llmesh_kit::convert::from_timestamp;
use llmesh_kit::jwt::{KeySet, KeySource, VerifyingKey};
use llmesh_kit::peer::{Peer, Transport};
use llmesh_kit::principal::CredentialKind;
use llmesh_kit::{ApiError, Principal, Role};
use llmesh_proto::auth::v1 as pb;
use llmesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use sha2::{Digest, Sha256};

/// The longest an API key answer may be reused; revocations reach other processes within it.
pub const MAX_API_KEY_CACHE: Duration = Duration::from_secs(5);
/// The least time between two key-set fetches prompted by unknown key ids.
const KEY_REFETCH_GAP: Duration = Duration::from_secs(5);

/// Fetches auth's public keys and keeps them until a token names a key it lacks.
pub struct RemoteKeySource {
    peer: Peer,
    client: AuthServiceClient<Transport>,
    cached: Mutex<Option<(Arc<KeySet>, Instant)>>,
}

impl RemoteKeySource {
    pub fn new(peer: Peer) -> Self {
        RemoteKeySource {
            client: AuthServiceClient::new(peer.transport()),
            peer,
            cached: Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Result<Arc<KeySet>, ApiError> {
        let reply = self
            .peer
            .unary("/llmesh.auth.v1.AuthService/GetPublicKeys", || {
                let mut client = self.client.clone();
                let req = self.peer.request(pb::GetPublicKeysRequest {});
                async move { client.get_public_keys(req).await }
            })
            .await
            .map_err(|s| ApiError::unavailable(s.message().to_owned()))?;
        let mut set = KeySet {
            issuer: reply.issuer,
            keys: HashMap::new(),
        };
        for key in reply.keys {
            let Ok(public_key) = <[u8; 32]>::try_from(key.public_key.as_slice()) else {
                tracing::warn!(key_id = %key.key_id, "ignoring a malformed public key from auth");
                continue;
            };
            let retire_at = key
                .retire_at
                .as_ref()
                .map(|t| from_timestamp("retire_at", t))
                .transpose()?;
            set.keys.insert(
                key.key_id.clone(),
                VerifyingKey {
                    key_id: key.key_id,
                    public_key,
                    retire_at,
                },
            );
        }
        Ok(Arc::new(set))
    }
}

#[async_trait::async_trait]
impl KeySource for RemoteKeySource {
    async fn key_set(&self, refresh: bool) -> Result<Arc<KeySet>, ApiError> {
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((set, at)) = &cached
            && (!refresh || at.elapsed() < KEY_REFETCH_GAP)
        {
            return Ok(set.clone());
        }
        let set = self.fetch().await?;
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((set.clone(), Instant::now()));
        Ok(set)
    }
}

/// Resolves API keys through auth's ResolveApiKey, caching answers briefly.
pub struct RemoteApiKeyResolver {
    peer: Peer,
    client: AuthServiceClient<Transport>,
    service_token: String,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

impl RemoteApiKeyResolver {
    /// `ttl` is capped at [`MAX_API_KEY_CACHE`].
    pub fn new(peer: Peer, service_token: String, ttl: Duration) -> Self {
        RemoteApiKeyResolver {
            client: AuthServiceClient::new(peer.transport()),
            peer,
            service_token,
            ttl: ttl.min(MAX_API_KEY_CACHE),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait::async_trait]
impl ApiKeyResolver for RemoteApiKeyResolver {
    async fn resolve(&self, secret: &str) -> Result<Principal, ApiError> {
        let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if let Some((p, _)) = cache.get(&key) {
                return Ok(p.clone());
            }
        }
        let token: tonic::metadata::MetadataValue<_> = self
            .service_token
            .parse()
            .map_err(|_| ApiError::internal("service token is not valid metadata"))?;
        let reply = self
            .peer
            .unary("/llmesh.auth.v1.AuthService/ResolveApiKey", || {
                let mut req = self.peer.request(pb::ResolveApiKeyRequest {
                    secret: secret.to_owned(),
                });
                req.metadata_mut()
                    .insert(SERVICE_TOKEN_HEADER, token.clone());
                let mut client = self.client.clone();
                async move { client.resolve_api_key(req).await }
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unauthenticated => ApiError::unauthenticated(s.message().to_owned()),
                _ => ApiError::unavailable(s.message().to_owned()),
            })?;
        let role = Role::from_proto(reply.role)
            .ok_or_else(|| ApiError::internal("auth returned an unknown role"))?;
        let principal = Principal {
            user_id: reply.user_id,
            role,
            scopes: reply.scopes,
            credential: CredentialKind::ApiKey {
                key_id: reply.api_key_id,
            },
            via_service: false,
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (principal.clone(), Instant::now()));
        Ok(principal)
    }
}

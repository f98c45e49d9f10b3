//! The llmesh auth service: users and roles, password sign-in, Ed25519-signed access
//! tokens with rotating refresh tokens, API keys and the registration policy.

pub mod config;
pub mod error;
pub mod grpc;
pub mod keys;
pub mod remote;
pub mod service;
pub mod store;
pub mod throttle;

use std::sync::Arc;

use chrono::Duration;
use llmesh_kit::Clock;
use sea_orm::DatabaseConnection;

pub use config::AuthConfig;
pub use grpc::{ACCESS, GrpcAuthAdapter, SERVICE_NAME};
pub use service::{AuthService, UserListener};

/// Builds the auth service over a migrated database: loads (or creates) the signing keys.
pub async fn build(
    db: DatabaseConnection,
    config: AuthConfig,
    clock: Arc<dyn Clock>,
    listeners: Vec<Arc<dyn UserListener>>,
) -> Result<Arc<AuthService>, error::AuthError> {
    let store = store::AuthStore::new(db);
    let seed = match &config.signing_key_file {
        Some(path) => Some(keys::read_seed_file(path).map_err(error::AuthError::Internal)?),
        None => None,
    };
    let keyring = keys::Keyring::load(
        store.clone(),
        clock.clone(),
        config.issuer.clone(),
        Duration::seconds(config.access_token_ttl_secs as i64),
        seed,
    )
    .await?;
    Ok(Arc::new(
        AuthService::new(store, Arc::new(keyring), config, clock)?.with_listeners(listeners),
    ))
}

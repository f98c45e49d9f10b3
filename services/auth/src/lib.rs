//! The llmesh auth service: users and roles, password sign-in, Ed25519-signed access
//! tokens with rotating refresh tokens, API keys and the registration policy.

pub mod config;
pub mod error;
pub mod grpc;
pub mod keys;
pub mod notices;
pub mod remote;
pub mod service;
pub mod store;
pub mod throttle;

use std::sync::Arc;

use chrono::Duration;
use llmesh_kit::Clock;
use llmesh_kit::outbox::{Deliver, Outbox};
use llmesh_kit::peer::Peer;
use llmesh_kit::serve::{Process, ServiceSet};
use llmesh_proto::auth::v1::auth_service_server::AuthServiceServer;
use sea_orm::DatabaseConnection;

pub use config::AuthConfig;
pub use grpc::{ACCESS, GrpcAuthAdapter, SERVICE_NAME};
pub use service::AuthService;

/// Builds the auth service over a migrated database: loads (or creates) the signing keys.
/// `outbox` (if any) is woken when an account change leaves a notice for another service.
pub async fn build(
    db: DatabaseConnection,
    config: AuthConfig,
    clock: Arc<dyn Clock>,
    outbox: Option<Arc<Outbox>>,
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
        AuthService::new(store, Arc::new(keyring), config, clock)?.with_outbox(outbox),
    ))
}

/// Starts auth in this process: the service, the delivery of its notices to billing
/// (`billing`: where billing runs; without it notices wait in the outbox), and its RPCs.
pub async fn mount(
    set: &mut ServiceSet,
    process: &Process,
    config: AuthConfig,
    billing: Option<Peer>,
) -> Result<Arc<AuthService>, error::AuthError> {
    let mut sinks: std::collections::HashMap<&'static str, Arc<dyn Deliver>> =
        std::collections::HashMap::new();
    match billing {
        Some(peer) => {
            sinks.insert(
                service::USER_DELETED,
                Arc::new(notices::UserDeletedToBilling::new(
                    peer,
                    process.service_token.clone(),
                )),
            );
        }
        None => tracing::warn!(
            "billing runs in no known process (set peers.billing_url): deleted-user notices wait in the outbox"
        ),
    }
    let outbox = Outbox::new(process.db.clone(), process.clock.clone(), sinks);
    outbox.spawn();
    let service = build(
        process.db.clone(),
        config,
        process.clock.clone(),
        Some(outbox),
    )
    .await?;
    let max = set.max_message_bytes();
    set.add(
        ACCESS,
        AuthServiceServer::from_arc(Arc::new(GrpcAuthAdapter::new(service.clone())))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    Ok(service)
}

//! Runs are paid for like generations: before a run, billing holds what its fuel ceiling
//! would cost at the runtime's price ("sandbox/python", "sandbox/wasm"; per billion fuel
//! units); after it, billing settles the fuel it used. A run that billing refuses never
//! starts. Through billing's contract, with the service credential, acting for the user.

use std::sync::Once;
use std::time::Duration;

use llmesh_kit::Principal;
use llmesh_kit::authn::forward;
use llmesh_kit::peer::{Peer, Transport};
use llmesh_proto::billing::v1 as pb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;

use crate::error::{Result, SandboxError};

/// What billing holds for one run.
#[derive(Debug, Clone)]
pub struct Hold {
    pub id: String,
    pub principal: Principal,
    /// What is held, and the price per billion fuel units it was taken at.
    pub held_micros: i64,
    pub micros_per_gfuel: i64,
}

impl Hold {
    /// What settling `fuel_used` charges: billing's own rule at the hold's price, so the
    /// run's exit can carry its cost before Settle answers.
    pub fn cost(&self, fuel_used: u64) -> i64 {
        llmesh_kit::money::fuel_cost(self.micros_per_gfuel, fuel_used).min(self.held_micros)
    }
}

#[async_trait::async_trait]
pub trait Meter: Send + Sync {
    /// Holds what `fuel` would cost on `runtime`, or refuses (balance, quota, rate).
    async fn reserve(&self, principal: &Principal, runtime: &str, fuel: u64) -> Result<Hold>;
    /// Charges the fuel used and releases the rest; returns the charge in micro-units.
    async fn settle(&self, hold: &Hold, fuel_used: u64) -> Result<i64>;
}

/// Free runs: no billing runs anywhere (logged once).
pub struct NoMeter;

static FREE: Once = Once::new();

#[async_trait::async_trait]
impl Meter for NoMeter {
    async fn reserve(&self, principal: &Principal, _runtime: &str, _fuel: u64) -> Result<Hold> {
        FREE.call_once(|| tracing::info!("billing is not running: sandbox runs are not charged"));
        Ok(Hold {
            id: uuid::Uuid::now_v7().to_string(),
            principal: principal.clone(),
            held_micros: 0,
            micros_per_gfuel: 0,
        })
    }

    async fn settle(&self, _hold: &Hold, _fuel_used: u64) -> Result<i64> {
        Ok(0)
    }
}

/// Billing's Reserve and Settle with the fuel meter.
pub struct BillingMeter {
    peer: Peer,
    client: BillingServiceClient<Transport>,
    service_token: String,
}

impl BillingMeter {
    pub fn new(peer: Peer, service_token: String) -> Self {
        BillingMeter {
            client: BillingServiceClient::new(peer.transport()),
            peer,
            service_token,
        }
    }

    fn forwarded<T>(&self, message: T, principal: &Principal) -> Result<tonic::Request<T>> {
        let mut req = self.peer.request(message);
        forward(&mut req, &self.service_token, principal)
            .map_err(|e| SandboxError::Internal(e.to_string()))?;
        Ok(req)
    }
}

fn from_status(s: tonic::Status) -> SandboxError {
    let message = s.message().to_owned();
    match s.code() {
        tonic::Code::FailedPrecondition => SandboxError::Precondition(message),
        tonic::Code::InvalidArgument => SandboxError::Invalid(message),
        tonic::Code::ResourceExhausted => SandboxError::Exhausted(
            message,
            llmesh_kit::error::retry_after(&s, Duration::from_secs(5)),
        ),
        tonic::Code::Unavailable => SandboxError::Unavailable(message),
        _ => SandboxError::Internal(format!("billing: {message}")),
    }
}

#[async_trait::async_trait]
impl Meter for BillingMeter {
    async fn reserve(&self, principal: &Principal, runtime: &str, fuel: u64) -> Result<Hold> {
        let message = pb::ReserveRequest {
            model: format!("sandbox/{runtime}"),
            fuel,
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            api_key_id: principal.api_key_id().unwrap_or_default().to_owned(),
            ..Default::default()
        };
        let reply = self
            .peer
            .unary("/llmesh.billing.v1.BillingService/Reserve", || {
                let req = self.forwarded(message.clone(), principal);
                let mut client = self.client.clone();
                async move {
                    let req = req.map_err(|e| tonic::Status::internal(e.to_string()))?;
                    client.reserve(req).await
                }
            })
            .await
            .map_err(from_status)?;
        Ok(Hold {
            id: reply.reservation_id,
            principal: principal.clone(),
            held_micros: reply.held.map_or(0, |m| m.micros),
            micros_per_gfuel: reply.micros_per_billion_fuel,
        })
    }

    async fn settle(&self, hold: &Hold, fuel_used: u64) -> Result<i64> {
        let message = pb::SettleRequest {
            reservation_id: hold.id.clone(),
            idempotency_key: format!("settle:{}", hold.id),
            fuel_used,
            ..Default::default()
        };
        let reply = self
            .peer
            .unary("/llmesh.billing.v1.BillingService/Settle", || {
                let req = self.forwarded(message.clone(), &hold.principal);
                let mut client = self.client.clone();
                async move {
                    let req = req.map_err(|e| tonic::Status::internal(e.to_string()))?;
                    client.settle(req).await
                }
            })
            .await
            .map_err(from_status)?;
        Ok(reply.charged.map_or(0, |m| m.micros))
    }
}

//! The one place generation spends money: a reservation before work starts and a
//! settlement after, on every path. [`BillingPeer`] does it through billing's contract
//! (in memory when billing runs in this process, over the network otherwise);
//! [`NoBilling`] makes generation free when no billing runs anywhere, and says so once.

use std::sync::Once;
use std::time::Duration;

use llmesh_kit::Principal;
use llmesh_kit::authn::forward;
use llmesh_kit::peer::{Peer, Transport};
use llmesh_proto::billing::v1 as pb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_proto::common::v1::TokenUsage;

use crate::error::{LlmError, Result};

/// What a generation may cost at most, held before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: String,
    pub held_micros: i64,
    /// Who it is held for; settling acts for them too.
    pub principal: Principal,
}

/// The tokens a generation really used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What the spend hook needs to hold money for one generation.
#[derive(Debug, Clone)]
pub struct SpendRequest<'a> {
    pub principal: &'a Principal,
    pub model: &'a str,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    pub context_length: u32,
    pub idempotency_key: String,
}

/// Reserves and settles spend around a generation.
#[async_trait::async_trait]
pub trait SpendHook: Send + Sync {
    /// Holds the most the generation can cost, or refuses (insufficient balance, quota).
    async fn reserve(&self, request: SpendRequest<'_>) -> Result<Reservation>;
    /// Charges what was used and releases the rest; returns the charge in micro-units.
    async fn settle(&self, reservation: &Reservation, usage: Usage) -> Result<i64>;
    /// ISO 4217 code of the currency amounts are in.
    fn currency(&self) -> String;
}

/// Free generation: the billing service is not part of this build yet.
pub struct NoBilling;

static NOTICE: Once = Once::new();

#[async_trait::async_trait]
impl SpendHook for NoBilling {
    async fn reserve(&self, request: SpendRequest<'_>) -> Result<Reservation> {
        NOTICE.call_once(|| {
            tracing::info!("billing is not running: generations are not charged");
        });
        Ok(Reservation {
            id: request.idempotency_key,
            held_micros: 0,
            principal: request.principal.clone(),
        })
    }

    async fn settle(&self, _reservation: &Reservation, _usage: Usage) -> Result<i64> {
        Ok(0)
    }

    fn currency(&self) -> String {
        "USD".into()
    }
}

/// Reserves and settles with the billing service through its contract, acting for the
/// generation's user with the service credential.
pub struct BillingPeer {
    peer: Peer,
    client: BillingServiceClient<Transport>,
    service_token: String,
    currency: String,
}

impl BillingPeer {
    pub fn new(peer: Peer, service_token: String, currency: String) -> Self {
        BillingPeer {
            client: BillingServiceClient::new(peer.transport()),
            peer,
            service_token,
            currency,
        }
    }

    fn forwarded<T>(&self, message: T, principal: &Principal) -> Result<tonic::Request<T>> {
        let mut req = self.peer.request(message);
        forward(&mut req, &self.service_token, principal)
            .map_err(|e| LlmError::Internal(e.to_string()))?;
        Ok(req)
    }
}

/// What a billing answer means for a generation request.
fn from_status(s: tonic::Status) -> LlmError {
    let message = s.message().to_owned();
    match s.code() {
        tonic::Code::FailedPrecondition => LlmError::Precondition(message),
        tonic::Code::InvalidArgument => LlmError::Invalid(message),
        tonic::Code::ResourceExhausted => LlmError::Exhausted(
            message,
            llmesh_kit::error::retry_after(&s, Duration::from_secs(5)),
        ),
        tonic::Code::Unavailable => LlmError::Unavailable(message),
        _ => LlmError::Internal(format!("billing: {message}")),
    }
}

#[async_trait::async_trait]
impl SpendHook for BillingPeer {
    async fn reserve(&self, r: SpendRequest<'_>) -> Result<Reservation> {
        let message = pb::ReserveRequest {
            model: r.model.to_owned(),
            prompt_tokens: r.prompt_tokens,
            max_tokens: Some(r.max_tokens),
            context_length: r.context_length,
            idempotency_key: r.idempotency_key.clone(),
            api_key_id: r.principal.api_key_id().unwrap_or_default().to_owned(),
            fuel: 0,
        };
        let reply = self
            .peer
            .unary("/llmesh.billing.v1.BillingService/Reserve", || {
                let req = self.forwarded(message.clone(), r.principal);
                let mut client = self.client.clone();
                async move {
                    let req = req.map_err(|e| tonic::Status::internal(e.to_string()))?;
                    client.reserve(req).await
                }
            })
            .await
            .map_err(from_status)?;
        Ok(Reservation {
            id: reply.reservation_id,
            held_micros: reply.held.map_or(0, |m| m.micros),
            principal: r.principal.clone(),
        })
    }

    async fn settle(&self, reservation: &Reservation, usage: Usage) -> Result<i64> {
        let message = pb::SettleRequest {
            reservation_id: reservation.id.clone(),
            usage: Some(TokenUsage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            }),
            idempotency_key: format!("settle:{}", reservation.id),
            fuel_used: 0,
        };
        let reply = self
            .peer
            .unary("/llmesh.billing.v1.BillingService/Settle", || {
                let req = self.forwarded(message.clone(), &reservation.principal);
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

    fn currency(&self) -> String {
        self.currency.clone()
    }
}

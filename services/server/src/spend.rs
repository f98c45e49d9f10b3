//! Generation spend through the billing service: the llm service's [`SpendHook`] client
//! trait, answered in memory when billing runs in this process, or over gRPC with the
//! service credential and the forwarded user when it runs in another.

use std::sync::Arc;

use llmesh_billing::BillingService;
use llmesh_billing::error::BillingError;
use llmesh_billing::service::{ReserveRequest, Usage as BillingUsage};
use llmesh_kit::authn::forward;
use llmesh_llm::error::LlmError;
use llmesh_llm::spend::{Reservation, SpendHook, SpendRequest, Usage};
use llmesh_proto::billing::v1 as pb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_proto::common::v1::TokenUsage;
use tonic::transport::Channel;

/// Reserves and settles with the in-process billing service.
pub struct InProcessBilling(pub Arc<BillingService>);

fn to_llm(e: BillingError) -> LlmError {
    match e {
        BillingError::Invalid(m) => LlmError::Invalid(m),
        BillingError::Precondition(m) => LlmError::Precondition(m),
        BillingError::Exhausted(m, retry) => LlmError::Exhausted(m, retry),
        BillingError::NotFound(what) => LlmError::Internal(format!("billing: {what} not found")),
        BillingError::Db(e) => LlmError::Internal(format!("billing: {e}")),
    }
}

#[async_trait::async_trait]
impl SpendHook for InProcessBilling {
    async fn reserve(&self, r: SpendRequest<'_>) -> llmesh_llm::error::Result<Reservation> {
        let reservation = self
            .0
            .reserve(
                r.principal,
                ReserveRequest {
                    model: r.model.to_owned(),
                    prompt_tokens: r.prompt_tokens,
                    max_tokens: Some(r.max_tokens),
                    context_length: r.context_length,
                    idempotency_key: r.idempotency_key,
                },
            )
            .await
            .map_err(to_llm)?;
        Ok(Reservation {
            id: reservation.id,
            held_micros: reservation.held_micros,
            principal: r.principal.clone(),
        })
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        usage: Usage,
    ) -> llmesh_llm::error::Result<i64> {
        let settled = self
            .0
            .settle(
                None,
                &reservation.id,
                BillingUsage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                },
            )
            .await
            .map_err(to_llm)?;
        Ok(settled.charged)
    }

    fn currency(&self) -> String {
        self.0.currency().to_owned()
    }
}

/// Reserves and settles with a billing service in another process.
pub struct RemoteBilling {
    client: BillingServiceClient<Channel>,
    service_token: String,
    currency: String,
}

impl RemoteBilling {
    pub fn new(channel: Channel, service_token: String, currency: String) -> Self {
        RemoteBilling {
            client: BillingServiceClient::new(channel),
            service_token,
            currency,
        }
    }
}

fn status_to_llm(s: tonic::Status) -> LlmError {
    let message = s.message().to_owned();
    match s.code() {
        tonic::Code::FailedPrecondition => LlmError::Precondition(message),
        tonic::Code::InvalidArgument => LlmError::Invalid(message),
        tonic::Code::ResourceExhausted => {
            let secs = s
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(5);
            LlmError::Exhausted(message, std::time::Duration::from_secs(secs))
        }
        _ => LlmError::Unavailable(format!("billing service: {message}")),
    }
}

#[async_trait::async_trait]
impl SpendHook for RemoteBilling {
    async fn reserve(&self, r: SpendRequest<'_>) -> llmesh_llm::error::Result<Reservation> {
        let mut req = tonic::Request::new(pb::ReserveRequest {
            model: r.model.to_owned(),
            prompt_tokens: r.prompt_tokens,
            max_tokens: Some(r.max_tokens),
            context_length: r.context_length,
            idempotency_key: r.idempotency_key.clone(),
            api_key_id: r.principal.api_key_id().unwrap_or_default().to_owned(),
        });
        forward(&mut req, &self.service_token, r.principal)
            .map_err(|e| LlmError::Internal(e.to_string()))?;
        let reply = self
            .client
            .clone()
            .reserve(req)
            .await
            .map_err(status_to_llm)?
            .into_inner();
        Ok(Reservation {
            id: reply.reservation_id,
            held_micros: reply.held.map_or(0, |m| m.micros),
            principal: r.principal.clone(),
        })
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        usage: Usage,
    ) -> llmesh_llm::error::Result<i64> {
        let mut req = tonic::Request::new(pb::SettleRequest {
            reservation_id: reservation.id.clone(),
            usage: Some(TokenUsage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            }),
            idempotency_key: format!("settle:{}", reservation.id),
        });
        forward(&mut req, &self.service_token, &reservation.principal)
            .map_err(|e| LlmError::Internal(e.to_string()))?;
        let reply = self
            .client
            .clone()
            .settle(req)
            .await
            .map_err(status_to_llm)?
            .into_inner();
        Ok(reply.charged.map_or(0, |m| m.micros))
    }

    fn currency(&self) -> String {
        self.currency.clone()
    }
}

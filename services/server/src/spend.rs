//! Generation spend through the billing service running in this process: the llm
//! service's [`SpendHook`] client trait, answered in memory.

use std::sync::Arc;

use llmesh_billing::BillingService;
use llmesh_billing::error::BillingError;
use llmesh_billing::service::{ReserveRequest, Usage as BillingUsage};
use llmesh_llm::error::LlmError;
use llmesh_llm::spend::{Reservation, SpendHook, SpendRequest, Usage};

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

//! The one place generation spends money: a reservation before work starts and a
//! settlement after, on every path. The billing service will implement [`SpendHook`]; until
//! it exists, [`NoBilling`] makes generation free and says so in the logs once.

use std::sync::Once;

use llmesh_kit::Principal;

use crate::error::Result;

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

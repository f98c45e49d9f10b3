//! Billing's configuration section (`[billing]`).

use llmesh_kit::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingConfig {
    /// ISO 4217 code every amount is in (micro-units of it).
    pub currency: String,
    /// Credit a new account starts with, in micro-units.
    pub starting_credit_micros: i64,
    /// "free": a model without a price costs nothing; "deny": it cannot be used.
    pub unpriced: String,
    /// max_tokens a hold assumes when a request names none (capped by the context left).
    pub default_max_tokens: u32,
    /// How long an unsettled reservation lives before the sweeper releases it, in seconds.
    pub reservation_ttl_secs: u64,
    /// How often the sweeper looks for expired reservations, in seconds.
    pub sweep_interval_secs: u64,
    /// Per-principal limits when no quota row says otherwise; 0 means unlimited.
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            currency: "USD".into(),
            starting_credit_micros: 0,
            unpriced: "free".into(),
            default_max_tokens: 512,
            reservation_ttl_secs: 15 * 60,
            sweep_interval_secs: 30,
            requests_per_minute: 0,
            tokens_per_minute: 0,
        }
    }
}

impl BillingConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid(
                "billing.currency",
                "must be a three-letter ISO 4217 code such as \"USD\"",
            ));
        }
        if self.starting_credit_micros < 0 {
            return Err(invalid(
                "billing.starting_credit_micros",
                "must not be negative",
            ));
        }
        if !matches!(self.unpriced.as_str(), "free" | "deny") {
            return Err(invalid("billing.unpriced", "must be \"free\" or \"deny\""));
        }
        if self.reservation_ttl_secs < 10 || self.sweep_interval_secs == 0 {
            return Err(invalid(
                "billing.reservation_ttl_secs",
                "reservations must live at least 10 s and the sweep interval must be positive",
            ));
        }
        Ok(())
    }
}

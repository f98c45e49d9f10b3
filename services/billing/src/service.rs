//! The billing domain: prices, accounts, the ledger, reservations around generations,
//! quotas, rate limits, usage reports and reconciliation.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota as RateQuota, RateLimiter};
use llmesh_kit::csv::{self, Cell};
use llmesh_kit::{Clock, Principal};

use crate::config::BillingConfig;
use crate::error::{BillingError, Result};
use crate::store::{self, BillingStore, Entry, NewEntry, Price, Quota, Reservation};

/// Most a price may be, per million tokens (a million currency units).
const MAX_PRICE: i64 = 1_000_000_000_000;

/// What a generation wants to hold money for.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub model: String,
    pub prompt_tokens: u32,
    pub max_tokens: Option<u32>,
    pub context_length: u32,
    pub idempotency_key: String,
    /// The fuel meter (a sandbox run): the most fuel it may use; tokens are then 0.
    pub fuel: u64,
}

/// Token counts of a finished generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Fuel a sandbox run used (with a fuel reservation).
    pub fuel: u64,
}

/// The outcome of a settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub charged: i64,
    pub released: i64,
}

/// How a usage report groups rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Day,
    Model,
    ApiKey,
}

/// One row of a usage report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub key: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub spend: i64,
    pub fuel: u64,
    /// Reported usage beyond what holds and balances covered.
    pub overage: i64,
}

/// A stored balance that disagrees with its ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub user_id: String,
    pub stored: i64,
    pub ledger: i64,
}

pub struct BillingService {
    store: BillingStore,
    config: BillingConfig,
    clock: Arc<dyn Clock>,
    limiters: Mutex<HashMap<String, (u32, Arc<DefaultDirectRateLimiter>)>>,
    /// Reservations by outcome, for Prometheus.
    pub reservations: prometheus::IntCounterVec,
}

/// Cost of tokens at a price, rounded up to a whole micro-unit.
pub fn cost(price: &Price, prompt: u64, completion: u64) -> i64 {
    let total = prompt as i128 * price.input_micros_per_mtok as i128
        + completion as i128 * price.output_micros_per_mtok as i128;
    let micros = (total + 999_999) / 1_000_000;
    micros.min(i64::MAX as i128) as i64
}

/// Cost of fuel at a price per billion units, rounded up to a whole micro-unit.
pub fn fuel_cost(price: &Price, fuel: u64) -> i64 {
    llmesh_kit::money::fuel_cost(price.micros_per_gfuel, fuel)
}

/// The calendar month (UTC) that `t` falls in, as [start, end).
pub fn month_of(t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = Utc
        .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(t);
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    let end = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(t);
    (start, end)
}

impl BillingService {
    pub fn new(store: BillingStore, config: BillingConfig, clock: Arc<dyn Clock>) -> Self {
        BillingService {
            store,
            config,
            clock,
            limiters: Mutex::new(HashMap::new()),
            reservations: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "llmesh_billing_reservations_total",
                    "Spend reservations by outcome: held, refused_balance, refused_limit, settled, released, expired.",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
        }
    }

    pub fn currency(&self) -> &str {
        &self.config.currency
    }

    pub async fn set_price(
        &self,
        model: &str,
        input: i64,
        output: i64,
        per_gfuel: i64,
    ) -> Result<Price> {
        // Hosted models are "provider-id/model": up to 32 + 1 + 128 characters.
        if model.trim().is_empty() || model.len() > 200 {
            return Err(BillingError::Invalid(
                "model must be 1 to 200 characters".into(),
            ));
        }
        for (name, v) in [
            ("input_micros_per_mtok", input),
            ("output_micros_per_mtok", output),
            ("micros_per_billion_fuel", per_gfuel),
        ] {
            if !(0..=MAX_PRICE).contains(&v) {
                return Err(BillingError::Invalid(format!(
                    "{name} must be between 0 and {MAX_PRICE} (got {v})"
                )));
            }
        }
        let price = Price {
            model: model.to_owned(),
            input_micros_per_mtok: input,
            output_micros_per_mtok: output,
            micros_per_gfuel: per_gfuel,
            updated_at: self.clock.now(),
        };
        self.store.upsert_price(&price).await?;
        tracing::info!(model, input, output, per_gfuel, "price set");
        Ok(price)
    }

    pub async fn prices(&self) -> Result<Vec<Price>> {
        Ok(self.store.prices().await?)
    }

    pub async fn delete_price(&self, model: &str) -> Result<()> {
        if !self.store.delete_price(model).await? {
            return Err(BillingError::NotFound("price"));
        }
        Ok(())
    }

    async fn account(&self, user_id: &str) -> Result<(i64, i64)> {
        self.store
            .ensure_account(
                user_id,
                self.config.starting_credit_micros,
                self.clock.now(),
            )
            .await?;
        self.store
            .balance(user_id)
            .await?
            .ok_or(BillingError::NotFound("account"))
    }

    /// Returns (available balance, reserved) of a user, opening the account if needed.
    pub async fn balance(&self, user_id: &str) -> Result<(i64, i64)> {
        self.account(user_id).await
    }

    /// Credits (positive) or debits (negative) an account; idempotent by key.
    pub async fn adjust(&self, user_id: &str, amount: i64, reason: &str, key: &str) -> Result<i64> {
        if amount == 0 {
            return Err(BillingError::Invalid(
                "amount_micros must not be zero".into(),
            ));
        }
        if reason.trim().is_empty() || reason.len() > 500 {
            return Err(BillingError::Invalid(
                "reason must be 1 to 500 characters".into(),
            ));
        }
        if key.is_empty() || key.len() > 128 {
            return Err(BillingError::Invalid(
                "idempotency_key must be 1 to 128 characters".into(),
            ));
        }
        self.account(user_id).await?;
        let now = self.clock.now();
        let txn = self.store.begin().await?;
        let changed = store::exec(
            &txn,
            "UPDATE accounts SET balance_micros = balance_micros + ?, updated_at = ? WHERE user_id = ? AND balance_micros + ? >= 0",
            vec![amount.into(), store::micros(now).into(), user_id.into(), amount.into()],
        )
        .await?;
        if changed != 1 {
            txn.rollback().await?;
            let (balance, _) = self.account(user_id).await?;
            return Err(BillingError::Precondition(format!(
                "insufficient balance: a debit of {} micro-units exceeds the balance of {balance}",
                -amount
            )));
        }
        let kind = if amount > 0 { "credit" } else { "adjustment" };
        let entry = NewEntry {
            user_id,
            kind,
            amount_micros: amount,
            idempotency_key: &format!("adjust:{key}"),
            reason: Some(reason),
            ..Default::default()
        };
        if let Err(e) = store::insert_entry(&txn, &entry, now).await {
            txn.rollback().await?;
            if llmesh_kit::db::is_unique_violation(&e) {
                // Already applied under this key.
                return Ok(self.account(user_id).await?.0);
            }
            return Err(e.into());
        }
        txn.commit().await?;
        tracing::info!(user_id, amount, reason, "balance adjusted");
        Ok(self.account(user_id).await?.0)
    }

    /// Holds the most a generation can cost for the principal.
    pub async fn reserve(&self, principal: &Principal, r: ReserveRequest) -> Result<Reservation> {
        let result = self.reserve_inner(principal, r).await;
        let outcome = match &result {
            Ok(_) => Some("held"),
            Err(BillingError::Precondition(_)) => Some("refused_balance"),
            Err(BillingError::Exhausted(..)) => Some("refused_limit"),
            Err(_) => None,
        };
        if let Some(outcome) = outcome {
            self.reservations.with_label_values(&[outcome]).inc();
        }
        result
    }

    async fn reserve_inner(&self, principal: &Principal, r: ReserveRequest) -> Result<Reservation> {
        if r.idempotency_key.is_empty() || r.idempotency_key.len() > 128 {
            return Err(BillingError::Invalid(
                "idempotency_key must be 1 to 128 characters".into(),
            ));
        }
        if let Some(existing) = self.store.reservation_by_key(&r.idempotency_key).await? {
            if existing.user_id != principal.user_id {
                return Err(BillingError::Invalid(
                    "idempotency_key belongs to another reservation".into(),
                ));
            }
            return Ok(existing);
        }
        if r.prompt_tokens >= r.context_length.max(1) && r.context_length > 0 {
            return Err(BillingError::Invalid(format!(
                "prompt of {} tokens leaves no room in a context of {}",
                r.prompt_tokens, r.context_length
            )));
        }
        let max_tokens = if r.fuel > 0 {
            0
        } else {
            r.max_tokens.unwrap_or_else(|| {
                self.config
                    .default_max_tokens
                    .min(r.context_length.saturating_sub(r.prompt_tokens))
            })
        };
        let price = self.store.price(&r.model).await?;
        let micros_per_gfuel = match &price {
            Some(p) if r.fuel > 0 => p.micros_per_gfuel,
            _ => 0,
        };
        let held = match price {
            Some(price) if r.fuel > 0 => fuel_cost(&price, r.fuel),
            Some(price) => cost(&price, r.prompt_tokens.into(), max_tokens.into()),
            None if self.config.unpriced == "deny" => {
                return Err(BillingError::Precondition(format!(
                    "model {} has no price and billing.unpriced is \"deny\"; an admin can SetPrice",
                    r.model
                )));
            }
            None => 0,
        };
        let tokens = u64::from(r.prompt_tokens) + u64::from(max_tokens);
        self.check_limits(principal, held, tokens).await?;

        let now = self.clock.now();
        let reservation = Reservation {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: principal.user_id.clone(),
            api_key_id: principal.api_key_id().map(str::to_owned),
            model: r.model.clone(),
            held_micros: held,
            prompt_tokens: r.prompt_tokens.into(),
            max_tokens: max_tokens.into(),
            status: "open".into(),
            idempotency_key: r.idempotency_key.clone(),
            charged_micros: 0,
            expires_at: now + chrono::Duration::seconds(self.config.reservation_ttl_secs as i64),
            fuel: r.fuel.min(i64::MAX as u64) as i64,
            micros_per_gfuel,
        };
        // The write comes first: it takes the lock, and the condition keeps the balance
        // from ever going below zero however many reservations race. An account that does
        // not exist yet is opened (with its starting credit) and the hold tried once more.
        let mut opened = false;
        let txn = loop {
            let txn = self.store.begin().await?;
            let taken = store::exec(
                &txn,
                "UPDATE accounts SET balance_micros = balance_micros - ?, reserved_micros = reserved_micros + ?, updated_at = ? \
                 WHERE user_id = ? AND balance_micros >= ?",
                vec![held.into(), held.into(), store::micros(now).into(), principal.user_id.clone().into(), held.into()],
            )
            .await?;
            if taken == 1 {
                break txn;
            }
            txn.rollback().await?;
            let (balance, _) = self.account(&principal.user_id).await?;
            if !opened && balance >= held {
                opened = true;
                continue;
            }
            return Err(BillingError::Precondition(format!(
                "insufficient balance: this request may cost up to {held} micro-units {cur} and the balance is {balance}",
                cur = self.config.currency
            )));
        };
        let inserted = store::exec(
            &txn,
            "INSERT INTO reservations (id, user_id, api_key_id, model, held_micros, prompt_tokens, max_tokens, status, \
             idempotency_key, charged_micros, created_at, expires_at, fuel, micros_per_gfuel) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, 0, ?, ?, ?, ?)",
            vec![
                reservation.id.clone().into(),
                reservation.user_id.clone().into(),
                reservation.api_key_id.clone().into(),
                reservation.model.clone().into(),
                held.into(),
                reservation.prompt_tokens.into(),
                reservation.max_tokens.into(),
                reservation.idempotency_key.clone().into(),
                store::micros(now).into(),
                store::micros(reservation.expires_at).into(),
                reservation.fuel.into(),
                reservation.micros_per_gfuel.into(),
            ],
        )
        .await;
        let entry = NewEntry {
            user_id: &principal.user_id,
            kind: "hold",
            amount_micros: -held,
            model: Some(&r.model),
            api_key_id: principal.api_key_id(),
            reservation_id: Some(&reservation.id),
            idempotency_key: &format!("hold:{}", r.idempotency_key),
            ..Default::default()
        };
        let result = match inserted {
            Ok(_) => store::insert_entry(&txn, &entry, now).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            txn.rollback().await?;
            if llmesh_kit::db::is_unique_violation(&e)
                && let Some(existing) = self.store.reservation_by_key(&r.idempotency_key).await?
            {
                return Ok(existing);
            }
            return Err(e.into());
        }
        txn.commit().await?;
        Ok(reservation)
    }

    async fn limit_for(&self, subject: &str) -> Result<Quota> {
        Ok(self.store.quota(subject).await?.unwrap_or(Quota {
            monthly_spend_micros: 0,
            monthly_tokens: 0,
            requests_per_minute: self.config.requests_per_minute as i32,
            tokens_per_minute: self.config.tokens_per_minute as i32,
        }))
    }

    /// Monthly caps (per user and per key) and per-minute rates (per principal).
    async fn check_limits(&self, principal: &Principal, held: i64, tokens: u64) -> Result<()> {
        let now = self.clock.now();
        let (start, end) = month_of(now);
        let until_next_month = (end - now).to_std().unwrap_or(Duration::from_secs(60));
        let mut subjects = vec![(
            "user_id",
            principal.user_id.clone(),
            format!("user:{}", principal.user_id),
        )];
        if let Some(key) = principal.api_key_id() {
            subjects.push(("api_key_id", key.to_owned(), format!("key:{key}")));
        }
        let mut last = None;
        for (column, id, subject) in &subjects {
            let quota = self.limit_for(subject).await?;
            // A key's own per-minute rates replace its user's; a key without them is
            // held to its user's (a key never lifts its user's limit).
            if last.is_none() || quota.requests_per_minute > 0 || quota.tokens_per_minute > 0 {
                last = Some((subject.clone(), quota));
            }
            if quota.monthly_spend_micros > 0 || quota.monthly_tokens > 0 {
                let (spent, used) = self.store.settled(column, id, start, end).await?;
                let (open_held, open_tokens) = self.store.open_held(column, id).await?;
                if quota.monthly_spend_micros > 0
                    && spent + open_held + held > quota.monthly_spend_micros
                {
                    return Err(BillingError::Exhausted(
                        format!(
                            "monthly spend cap of {} micro-units reached ({} spent, {} held)",
                            quota.monthly_spend_micros, spent, open_held
                        ),
                        until_next_month,
                    ));
                }
                if quota.monthly_tokens > 0
                    && used + open_tokens + tokens as i64 > quota.monthly_tokens
                {
                    return Err(BillingError::Exhausted(
                        format!(
                            "monthly token cap of {} reached ({used} used)",
                            quota.monthly_tokens
                        ),
                        until_next_month,
                    ));
                }
            }
        }
        // The per-minute rates are the principal's own: its key's, else its user's.
        let Some((subject, quota)) = last else {
            return Ok(());
        };
        if quota.requests_per_minute > 0 {
            self.take(
                &format!("rpm:{subject}"),
                quota.requests_per_minute as u32,
                1,
                "requests per minute",
            )?;
        }
        if quota.tokens_per_minute > 0 {
            let n = u32::try_from(tokens).unwrap_or(u32::MAX);
            self.take(
                &format!("tpm:{subject}"),
                quota.tokens_per_minute as u32,
                n,
                "tokens per minute",
            )?;
        }
        Ok(())
    }

    /// Takes `n` from an in-process token bucket of `per_minute` capacity.
    fn take(&self, key: &str, per_minute: u32, n: u32, what: &str) -> Result<()> {
        let Some(rate) = NonZeroU32::new(per_minute) else {
            return Ok(());
        };
        let limiter = {
            let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map.entry(key.to_owned()).or_insert_with(|| {
                (
                    per_minute,
                    Arc::new(RateLimiter::direct(RateQuota::per_minute(rate))),
                )
            });
            if entry.0 != per_minute {
                *entry = (
                    per_minute,
                    Arc::new(RateLimiter::direct(RateQuota::per_minute(rate))),
                );
            }
            entry.1.clone()
        };
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(BillingError::Exhausted(
                format!("rate limit of {per_minute} {what} reached"),
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            Err(_) => Err(BillingError::Exhausted(
                format!("this request alone exceeds the limit of {per_minute} {what}"),
                Duration::from_secs(60),
            )),
        }
    }

    /// Charges the real usage of a reservation and releases the rest; idempotent.
    pub async fn settle(
        &self,
        principal_user: Option<&str>,
        reservation_id: &str,
        usage: Usage,
    ) -> Result<Settlement> {
        let r = self
            .owned_reservation(principal_user, reservation_id)
            .await?;
        match r.status.as_str() {
            "settled" => {
                return Ok(Settlement {
                    charged: r.charged_micros,
                    released: r.held_micros - r.charged_micros,
                });
            }
            "open" => {}
            other => {
                return Err(BillingError::Precondition(format!(
                    "reservation is already {other}"
                )));
            }
        }
        // Fuel is charged at the price the hold was taken at (the sandbox reports that cost
        // to its caller before this settles); tokens at today's price.
        let cost = if r.fuel > 0 {
            llmesh_kit::money::fuel_cost(r.micros_per_gfuel, usage.fuel)
        } else {
            match self.store.price(&r.model).await? {
                Some(price) => cost(
                    &price,
                    usage.prompt_tokens.into(),
                    usage.completion_tokens.into(),
                ),
                None => 0,
            }
        };
        let charged = cost.min(r.held_micros);
        let released = r.held_micros - charged;
        let now = self.clock.now();
        let txn = self.store.begin().await?;
        let closed = store::exec(
            &txn,
            "UPDATE reservations SET status = 'settled', charged_micros = ?, closed_at = ? WHERE id = ? AND status = 'open'",
            vec![charged.into(), store::micros(now).into(), r.id.clone().into()],
        )
        .await?;
        if closed != 1 {
            txn.rollback().await?;
            // Settled or released concurrently: answer from what was stored.
            return Box::pin(self.settle(principal_user, reservation_id, usage)).await;
        }
        store::exec(
            &txn,
            "UPDATE accounts SET balance_micros = balance_micros + ?, reserved_micros = reserved_micros - ?, updated_at = ? WHERE user_id = ?",
            vec![released.into(), r.held_micros.into(), store::micros(now).into(), r.user_id.clone().into()],
        )
        .await?;
        // A provider may report more usage than the hold assumed (its tokenizer counted the
        // prompt higher than the estimate): the excess is charged as far as the balance
        // goes, never below zero, and the rest is recorded as an overage admins can see.
        let excess = cost - charged;
        let mut extra = 0;
        if excess > 0 {
            let balance = store::one(
                &txn,
                "SELECT balance_micros FROM accounts WHERE user_id = ?",
                vec![r.user_id.clone().into()],
            )
            .await?
            .map(|row| row.try_get::<i64>("", "balance_micros"))
            .transpose()?
            .unwrap_or(0);
            let want = excess.min(balance.max(0));
            if want > 0 {
                let taken = store::exec(
                    &txn,
                    "UPDATE accounts SET balance_micros = balance_micros - ?, updated_at = ? WHERE user_id = ? AND balance_micros >= ?",
                    vec![want.into(), store::micros(now).into(), r.user_id.clone().into(), want.into()],
                )
                .await?;
                if taken == 1 {
                    extra = want;
                }
            }
        }
        let overage = excess.max(0) - extra;
        let charged = charged + extra;
        if overage > 0 {
            tracing::warn!(reservation = %r.id, user = %r.user_id, overage_micros = overage, "reported usage exceeded the hold and the balance");
        }
        if excess > 0 {
            store::exec(
                &txn,
                "UPDATE reservations SET charged_micros = ?, overage_micros = ? WHERE id = ?",
                vec![charged.into(), overage.into(), r.id.clone().into()],
            )
            .await?;
        }
        store::insert_entry(
            &txn,
            &NewEntry {
                user_id: &r.user_id,
                kind: "settle",
                amount_micros: released - extra,
                charged_micros: charged,
                model: Some(&r.model),
                api_key_id: r.api_key_id.as_deref(),
                prompt_tokens: usage.prompt_tokens.into(),
                completion_tokens: usage.completion_tokens.into(),
                reservation_id: Some(&r.id),
                idempotency_key: &format!("settle:{}", r.id),
                reason: None,
                fuel: usage.fuel.min(i64::MAX as u64) as i64,
                overage_micros: overage,
            },
            now,
        )
        .await?;
        txn.commit().await?;
        self.reservations.with_label_values(&["settled"]).inc();
        Ok(Settlement {
            charged,
            released: released - extra,
        })
    }

    /// Releases a reservation without charging; idempotent.
    pub async fn release(&self, principal_user: Option<&str>, reservation_id: &str) -> Result<i64> {
        let r = self
            .owned_reservation(principal_user, reservation_id)
            .await?;
        self.close(&r, "released").await
    }

    async fn close(&self, r: &Reservation, status: &str) -> Result<i64> {
        if r.status != "open" {
            return if r.status == "settled" {
                Err(BillingError::Precondition(
                    "reservation is already settled".into(),
                ))
            } else {
                Ok(r.held_micros)
            };
        }
        let now = self.clock.now();
        let txn = self.store.begin().await?;
        let closed = store::exec(
            &txn,
            "UPDATE reservations SET status = ?, closed_at = ? WHERE id = ? AND status = 'open'",
            vec![
                status.into(),
                store::micros(now).into(),
                r.id.clone().into(),
            ],
        )
        .await?;
        if closed != 1 {
            txn.rollback().await?;
            return Ok(r.held_micros);
        }
        store::exec(
            &txn,
            "UPDATE accounts SET balance_micros = balance_micros + ?, reserved_micros = reserved_micros - ?, updated_at = ? WHERE user_id = ?",
            vec![r.held_micros.into(), r.held_micros.into(), store::micros(now).into(), r.user_id.clone().into()],
        )
        .await?;
        store::insert_entry(
            &txn,
            &NewEntry {
                user_id: &r.user_id,
                kind: "release",
                amount_micros: r.held_micros,
                model: Some(&r.model),
                api_key_id: r.api_key_id.as_deref(),
                reservation_id: Some(&r.id),
                idempotency_key: &format!("release:{}", r.id),
                reason: Some(status),
                ..Default::default()
            },
            now,
        )
        .await?;
        txn.commit().await?;
        self.reservations.with_label_values(&[status]).inc();
        Ok(r.held_micros)
    }

    async fn owned_reservation(&self, user: Option<&str>, id: &str) -> Result<Reservation> {
        let r = self
            .store
            .reservation(id)
            .await?
            .ok_or(BillingError::NotFound("reservation"))?;
        if user.is_some_and(|u| u != r.user_id) {
            return Err(BillingError::NotFound("reservation"));
        }
        Ok(r)
    }

    /// Releases every reservation whose time is up; returns how many.
    pub async fn sweep(&self) -> Result<usize> {
        let expired = self.store.expired(self.clock.now()).await?;
        for r in &expired {
            self.close(r, "expired").await?;
            tracing::info!(reservation = %r.id, user_id = %r.user_id, "expired reservation released");
        }
        Ok(expired.len())
    }

    /// Runs the sweeper until the process ends.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let this = self.clone();
        let every = Duration::from_secs(self.config.sweep_interval_secs);
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.sweep().await {
                    tracing::warn!(error = %e, "reservation sweep failed");
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    pub async fn set_quota(&self, subject: &str, q: Quota) -> Result<Quota> {
        if q.monthly_spend_micros < 0
            || q.monthly_tokens < 0
            || q.requests_per_minute < 0
            || q.tokens_per_minute < 0
        {
            return Err(BillingError::Invalid(
                "quota values must not be negative".into(),
            ));
        }
        self.store.set_quota(subject, &q, self.clock.now()).await?;
        Ok(q)
    }

    /// The caps of a subject and this month's use: (quota, spend, tokens).
    pub async fn quota(&self, column: &str, id: &str, subject: &str) -> Result<(Quota, i64, i64)> {
        let quota = self.store.quota(subject).await?.unwrap_or_default();
        let (start, end) = month_of(self.clock.now());
        let (spend, tokens) = self.store.settled(column, id, start, end).await?;
        Ok((quota, spend, tokens))
    }

    /// Usage grouped over [start, end), for one user or all.
    pub async fn usage(
        &self,
        user: Option<&str>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        group: Grouping,
    ) -> Result<(Vec<UsageRow>, i64)> {
        if end <= start {
            return Err(BillingError::Invalid("end must be after start".into()));
        }
        let entries = self.store.entries(user, &["settle"], start, end).await?;
        let mut rows: Vec<UsageRow> = Vec::new();
        let mut total = 0;
        for e in entries {
            let key = match group {
                Grouping::Day => e.created_at.format("%Y-%m-%d").to_string(),
                Grouping::Model => e.model.clone().unwrap_or_default(),
                Grouping::ApiKey => e.api_key_id.clone().unwrap_or_default(),
            };
            let row = match rows.iter_mut().find(|r| r.key == key) {
                Some(r) => r,
                None => {
                    rows.push(UsageRow {
                        key,
                        ..Default::default()
                    });
                    rows.last_mut().ok_or(BillingError::NotFound("row"))?
                }
            };
            row.requests += 1;
            row.prompt_tokens += e.prompt_tokens as u64;
            row.completion_tokens += e.completion_tokens as u64;
            row.fuel += e.fuel.max(0) as u64;
            row.spend += e.charged_micros;
            row.overage += e.overage_micros;
            total += e.charged_micros;
        }
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((rows, total))
    }

    /// Settled entries as CSV lines (the first is the header).
    pub async fn usage_csv(
        &self,
        user: Option<&str>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        if end <= start {
            return Err(BillingError::Invalid("end must be after start".into()));
        }
        let entries = self.store.entries(user, &["settle"], start, end).await?;
        let header = [
            "time",
            "user_id",
            "model",
            "api_key_id",
            "prompt_tokens",
            "completion_tokens",
            "charged_micros",
            "currency",
            "fuel",
        ]
        .map(Cell::Text);
        let mut lines = vec![String::from_utf8_lossy(&csv::record(&header)).into_owned()];
        lines.extend(entries.iter().map(|e| csv_line(e, &self.config.currency)));
        Ok(lines)
    }

    /// Compares every stored balance with the sum of its ledger.
    pub async fn reconcile(&self) -> Result<(usize, Vec<Mismatch>)> {
        let sums: HashMap<String, i64> = self.store.ledger_sums().await?.into_iter().collect();
        let accounts = self.store.accounts().await?;
        let mismatches = accounts
            .iter()
            .filter_map(|(user, balance, _)| {
                let ledger = sums.get(user).copied().unwrap_or(0);
                (ledger != *balance).then(|| Mismatch {
                    user_id: user.clone(),
                    stored: *balance,
                    ledger,
                })
            })
            .collect();
        Ok((accounts.len(), mismatches))
    }

    /// Marks an account as belonging to a deleted user; its ledger stays.
    pub async fn user_deleted(&self, user_id: &str) -> Result<()> {
        Ok(self.store.mark_deleted(user_id).await?)
    }
}

/// One settled entry as a CSV record, through the kit's spreadsheet-safe writer.
fn csv_line(e: &Entry, currency: &str) -> String {
    let time = e.created_at.to_rfc3339();
    let record = csv::record(&[
        Cell::Text(&time),
        Cell::Text(&e.user_id),
        Cell::Text(e.model.as_deref().unwrap_or("")),
        Cell::Text(e.api_key_id.as_deref().unwrap_or("")),
        Cell::Int(e.prompt_tokens),
        Cell::Int(e.completion_tokens),
        Cell::Int(e.charged_micros),
        Cell::Text(currency),
        Cell::Int(e.fuel),
    ]);
    String::from_utf8_lossy(&record).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_round_up_to_a_micro_unit() {
        let p = Price {
            model: "m".into(),
            input_micros_per_mtok: 1_000_000,
            output_micros_per_mtok: 3_000_000,
            micros_per_gfuel: 2_000,
            updated_at: Utc::now(),
        };
        assert_eq!(cost(&p, 1, 0), 1);
        // 2,000 per billion fuel: a 247 M-fuel Python run costs 494 micro-units.
        assert_eq!(fuel_cost(&p, 247_000_000), 494);
        assert_eq!(
            fuel_cost(&p, 1),
            1,
            "any fuel costs at least one micro-unit"
        );
        assert_eq!(fuel_cost(&p, 0), 0);
        assert_eq!(cost(&p, 10, 10), 40);
        assert_eq!(cost(&p, 0, 0), 0);
        let cheap = Price {
            input_micros_per_mtok: 1,
            ..p
        };
        assert_eq!(
            cost(&cheap, 1, 0),
            1,
            "any use costs at least one micro-unit"
        );
    }

    #[test]
    fn months_are_calendar_months_in_utc() {
        let t = Utc
            .with_ymd_and_hms(2026, 12, 31, 23, 59, 59)
            .single()
            .expect("time");
        let (s, e) = month_of(t);
        assert_eq!(
            s,
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
                .single()
                .expect("time")
        );
        assert_eq!(
            e,
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
                .single()
                .expect("time")
        );
    }
}

//! Billing persistence in plain SQL over sea-orm connections, identical on SQLite and
//! Postgres. Every write transaction starts with its write, so on SQLite it holds the
//! write lock from its first statement and waits (busy timeout) instead of failing when
//! another writer is active.

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, QueryResult, TransactionTrait,
    Value,
};

pub use llmesh_kit::db::{all, exec, from_micros, micros, one};

/// A price row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub model: String,
    pub input_micros_per_mtok: i64,
    pub output_micros_per_mtok: i64,
    /// Micro-units per billion fuel units (sandbox runtimes).
    pub micros_per_gfuel: i64,
    pub updated_at: DateTime<Utc>,
}

/// A reservation row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: String,
    pub user_id: String,
    pub api_key_id: Option<String>,
    pub model: String,
    pub held_micros: i64,
    pub prompt_tokens: i64,
    pub max_tokens: i64,
    pub status: String,
    pub idempotency_key: String,
    pub charged_micros: i64,
    pub expires_at: DateTime<Utc>,
    /// The fuel held for (a sandbox run); 0 for a generation.
    pub fuel: i64,
    /// A fuel reservation's price when it was taken: Settle charges at this price.
    pub micros_per_gfuel: i64,
}

impl Reservation {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Reservation {
            id: r.try_get("", "id")?,
            user_id: r.try_get("", "user_id")?,
            api_key_id: r.try_get("", "api_key_id")?,
            model: r.try_get("", "model")?,
            held_micros: r.try_get("", "held_micros")?,
            prompt_tokens: r.try_get("", "prompt_tokens")?,
            max_tokens: r.try_get("", "max_tokens")?,
            status: r.try_get("", "status")?,
            idempotency_key: r.try_get("", "idempotency_key")?,
            charged_micros: r.try_get("", "charged_micros")?,
            expires_at: from_micros(r.try_get("", "expires_at")?),
            fuel: r.try_get("", "fuel")?,
            micros_per_gfuel: r.try_get("", "micros_per_gfuel")?,
        })
    }
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    pub amount_micros: i64,
    pub charged_micros: i64,
    pub model: Option<String>,
    pub api_key_id: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub reservation_id: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub fuel: i64,
    /// What a provider's reported usage cost beyond the hold and the balance: owed, not
    /// charged.
    pub overage_micros: i64,
}

impl Entry {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Entry {
            id: r.try_get("", "id")?,
            user_id: r.try_get("", "user_id")?,
            kind: r.try_get("", "kind")?,
            amount_micros: r.try_get("", "amount_micros")?,
            charged_micros: r.try_get("", "charged_micros")?,
            model: r.try_get("", "model")?,
            api_key_id: r.try_get("", "api_key_id")?,
            prompt_tokens: r.try_get("", "prompt_tokens")?,
            completion_tokens: r.try_get("", "completion_tokens")?,
            reservation_id: r.try_get("", "reservation_id")?,
            reason: r.try_get("", "reason")?,
            created_at: from_micros(r.try_get("", "created_at")?),
            fuel: r.try_get("", "fuel")?,
            overage_micros: r.try_get("", "overage_micros")?,
        })
    }
}

/// A new ledger entry.
#[derive(Debug, Clone, Default)]
pub struct NewEntry<'a> {
    pub user_id: &'a str,
    pub kind: &'a str,
    pub amount_micros: i64,
    pub charged_micros: i64,
    pub model: Option<&'a str>,
    pub api_key_id: Option<&'a str>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub reservation_id: Option<&'a str>,
    pub idempotency_key: &'a str,
    pub reason: Option<&'a str>,
    pub fuel: i64,
    pub overage_micros: i64,
}

/// Quota caps of one subject ("user:ID" or "key:ID").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub monthly_spend_micros: i64,
    pub monthly_tokens: i64,
    pub requests_per_minute: i32,
    pub tokens_per_minute: i32,
}

#[derive(Clone)]
pub struct BillingStore {
    pub db: DatabaseConnection,
}

impl BillingStore {
    pub fn new(db: DatabaseConnection) -> Self {
        BillingStore { db }
    }

    pub async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.db.begin().await
    }

    pub async fn upsert_price(&self, p: &Price) -> Result<(), DbErr> {
        exec(
            &self.db,
            "INSERT INTO prices (model, input_micros_per_mtok, output_micros_per_mtok, micros_per_gfuel, updated_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (model) DO UPDATE SET input_micros_per_mtok = excluded.input_micros_per_mtok, \
             output_micros_per_mtok = excluded.output_micros_per_mtok, micros_per_gfuel = excluded.micros_per_gfuel, \
             updated_at = excluded.updated_at",
            vec![
                p.model.clone().into(),
                p.input_micros_per_mtok.into(),
                p.output_micros_per_mtok.into(),
                p.micros_per_gfuel.into(),
                micros(p.updated_at).into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn prices(&self) -> Result<Vec<Price>, DbErr> {
        let rows = all(&self.db, "SELECT model, input_micros_per_mtok, output_micros_per_mtok, micros_per_gfuel, updated_at FROM prices ORDER BY model", vec![]).await?;
        rows.iter()
            .map(|r| {
                Ok(Price {
                    model: r.try_get("", "model")?,
                    input_micros_per_mtok: r.try_get("", "input_micros_per_mtok")?,
                    output_micros_per_mtok: r.try_get("", "output_micros_per_mtok")?,
                    micros_per_gfuel: r.try_get("", "micros_per_gfuel")?,
                    updated_at: from_micros(r.try_get("", "updated_at")?),
                })
            })
            .collect()
    }

    pub async fn price(&self, model: &str) -> Result<Option<Price>, DbErr> {
        Ok(self.prices().await?.into_iter().find(|p| p.model == model))
    }

    pub async fn delete_price(&self, model: &str) -> Result<bool, DbErr> {
        Ok(exec(
            &self.db,
            "DELETE FROM prices WHERE model = ?",
            vec![model.into()],
        )
        .await?
            == 1)
    }

    /// Creates the account with its starting credit unless it exists.
    pub async fn ensure_account(
        &self,
        user_id: &str,
        credit: i64,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let txn = self.begin().await?;
        let created = exec(
            &txn,
            "INSERT INTO accounts (user_id, balance_micros, reserved_micros, user_deleted, created_at, updated_at) \
             VALUES (?, ?, 0, ?, ?, ?) ON CONFLICT (user_id) DO NOTHING",
            vec![user_id.into(), credit.into(), false.into(), micros(now).into(), micros(now).into()],
        )
        .await?;
        if created == 1 && credit > 0 {
            insert_entry(
                &txn,
                &NewEntry {
                    user_id,
                    kind: "credit",
                    amount_micros: credit,
                    idempotency_key: &format!("start:{user_id}"),
                    reason: Some("starting credit"),
                    ..Default::default()
                },
                now,
            )
            .await?;
        }
        txn.commit().await
    }

    /// Returns (available balance, reserved) of an account.
    pub async fn balance(&self, user_id: &str) -> Result<Option<(i64, i64)>, DbErr> {
        let row = one(
            &self.db,
            "SELECT balance_micros, reserved_micros FROM accounts WHERE user_id = ?",
            vec![user_id.into()],
        )
        .await?;
        row.map(|r| {
            Ok((
                r.try_get("", "balance_micros")?,
                r.try_get("", "reserved_micros")?,
            ))
        })
        .transpose()
    }

    pub async fn accounts(&self) -> Result<Vec<(String, i64, i64)>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT user_id, balance_micros, reserved_micros FROM accounts ORDER BY user_id",
            vec![],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("", "user_id")?,
                    r.try_get("", "balance_micros")?,
                    r.try_get("", "reserved_micros")?,
                ))
            })
            .collect()
    }

    pub async fn mark_deleted(&self, user_id: &str) -> Result<(), DbErr> {
        exec(
            &self.db,
            "UPDATE accounts SET user_deleted = ? WHERE user_id = ?",
            vec![true.into(), user_id.into()],
        )
        .await?;
        Ok(())
    }

    pub async fn ledger_sums(&self) -> Result<Vec<(String, i64)>, DbErr> {
        let rows = all(&self.db, "SELECT user_id, CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) AS total FROM ledger GROUP BY user_id", vec![]).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "user_id")?, r.try_get::<i64>("", "total")?)))
            .collect()
    }

    pub async fn reservation_by_key(&self, key: &str) -> Result<Option<Reservation>, DbErr> {
        one(
            &self.db,
            "SELECT * FROM reservations WHERE idempotency_key = ?",
            vec![key.into()],
        )
        .await?
        .map(|r| Reservation::from_row(&r))
        .transpose()
    }

    pub async fn reservation(&self, id: &str) -> Result<Option<Reservation>, DbErr> {
        one(
            &self.db,
            "SELECT * FROM reservations WHERE id = ?",
            vec![id.into()],
        )
        .await?
        .map(|r| Reservation::from_row(&r))
        .transpose()
    }

    /// Open reservations whose time is up.
    pub async fn expired(&self, now: DateTime<Utc>) -> Result<Vec<Reservation>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT * FROM reservations WHERE status = 'open' AND expires_at <= ?",
            vec![micros(now).into()],
        )
        .await?;
        rows.iter().map(Reservation::from_row).collect()
    }

    /// Ledger entries of kinds in `kinds`, in a time range, for one user or all.
    pub async fn entries(
        &self,
        user_id: Option<&str>,
        kinds: &[&str],
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<Entry>, DbErr> {
        let mut sql = String::from("SELECT * FROM ledger WHERE created_at >= ? AND created_at < ?");
        let mut values: Vec<Value> = vec![micros(start).into(), micros(end).into()];
        if let Some(u) = user_id {
            sql.push_str(" AND user_id = ?");
            values.push(u.into());
        }
        if !kinds.is_empty() {
            sql.push_str(&format!(
                " AND kind IN ({})",
                vec!["?"; kinds.len()].join(", ")
            ));
            values.extend(kinds.iter().map(|k| Value::from(*k)));
        }
        sql.push_str(" ORDER BY created_at, id");
        let rows = all(&self.db, &sql, values).await?;
        rows.iter().map(Entry::from_row).collect()
    }

    /// Open holds of a user or key since `start` (for quota checks).
    pub async fn open_held(&self, column: &str, subject: &str) -> Result<(i64, i64), DbErr> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(held_micros), 0) AS BIGINT) AS held, CAST(COALESCE(SUM(prompt_tokens + max_tokens), 0) AS BIGINT) AS tokens \
             FROM reservations WHERE status = 'open' AND {column} = ?"
        );
        let row = one(&self.db, &sql, vec![subject.into()]).await?;
        Ok(match row {
            Some(r) => (r.try_get("", "held")?, r.try_get("", "tokens")?),
            None => (0, 0),
        })
    }

    /// Settled spend and tokens of a user or key in [start, end).
    pub async fn settled(
        &self,
        column: &str,
        subject: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<(i64, i64), DbErr> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(charged_micros), 0) AS BIGINT) AS spend, CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS tokens \
             FROM ledger WHERE kind = 'settle' AND {column} = ? AND created_at >= ? AND created_at < ?"
        );
        let row = one(
            &self.db,
            &sql,
            vec![subject.into(), micros(start).into(), micros(end).into()],
        )
        .await?;
        Ok(match row {
            Some(r) => (r.try_get("", "spend")?, r.try_get("", "tokens")?),
            None => (0, 0),
        })
    }

    pub async fn set_quota(
        &self,
        subject: &str,
        q: &Quota,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        exec(
            &self.db,
            "INSERT INTO quotas (subject, monthly_spend_micros, monthly_tokens, requests_per_minute, tokens_per_minute, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (subject) DO UPDATE SET monthly_spend_micros = excluded.monthly_spend_micros, \
             monthly_tokens = excluded.monthly_tokens, requests_per_minute = excluded.requests_per_minute, \
             tokens_per_minute = excluded.tokens_per_minute, updated_at = excluded.updated_at",
            vec![
                subject.into(),
                q.monthly_spend_micros.into(),
                q.monthly_tokens.into(),
                q.requests_per_minute.into(),
                q.tokens_per_minute.into(),
                micros(now).into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn quota(&self, subject: &str) -> Result<Option<Quota>, DbErr> {
        let row = one(
            &self.db,
            "SELECT * FROM quotas WHERE subject = ?",
            vec![subject.into()],
        )
        .await?;
        row.map(|r| {
            Ok(Quota {
                monthly_spend_micros: r.try_get("", "monthly_spend_micros")?,
                monthly_tokens: r.try_get("", "monthly_tokens")?,
                requests_per_minute: r.try_get("", "requests_per_minute")?,
                tokens_per_minute: r.try_get("", "tokens_per_minute")?,
            })
        })
        .transpose()
    }
}

/// Appends a ledger entry inside a transaction.
pub async fn insert_entry<C: ConnectionTrait>(
    db: &C,
    e: &NewEntry<'_>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    exec(
        db,
        "INSERT INTO ledger (id, user_id, kind, amount_micros, charged_micros, model, api_key_id, prompt_tokens, \
         completion_tokens, reservation_id, idempotency_key, reason, created_at, fuel, overage_micros) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            uuid::Uuid::now_v7().to_string().into(),
            e.user_id.into(),
            e.kind.into(),
            e.amount_micros.into(),
            e.charged_micros.into(),
            e.model.map(str::to_owned).into(),
            e.api_key_id.map(str::to_owned).into(),
            e.prompt_tokens.into(),
            e.completion_tokens.into(),
            e.reservation_id.map(str::to_owned).into(),
            e.idempotency_key.into(),
            e.reason.map(str::to_owned).into(),
            micros(now).into(),
            e.fuel.into(),
            e.overage_micros.into(),
        ],
    )
    .await?;
    Ok(())
}

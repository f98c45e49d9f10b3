//! A durable outbox: notices one service owes another (auth → billing: a user was
//! deleted) are written in the sender's database, in the same transaction as the change
//! they announce, and delivered by a background task until the receiver acknowledges them.
//! A receiver that is down only delays them; receivers must be idempotent, since a notice
//! whose acknowledgement was lost is delivered again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use tokio::sync::Notify;

use crate::Clock;
use crate::db::{all, exec, micros};

/// How long a sender owns a notice it is delivering before another process may retry it.
const LEASE: chrono::Duration = chrono::Duration::seconds(60);
/// The longest wait between two attempts of one notice.
const MAX_BACKOFF_SECS: i64 = 300;
/// How often the delivery task looks for due notices when nothing wakes it.
const POLL: Duration = Duration::from_secs(2);

/// Delivers the notices of one topic to their receiver.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync {
    /// Sends one notice; an error (with a readable reason) means "try again later".
    async fn deliver(&self, payload: &str) -> Result<(), String>;
}

/// The outbox of one process.
pub struct Outbox {
    db: DatabaseConnection,
    clock: Arc<dyn Clock>,
    wake: Notify,
    sinks: HashMap<&'static str, Arc<dyn Deliver>>,
}

impl Outbox {
    /// An outbox that delivers each topic through its sink.
    pub fn new(
        db: DatabaseConnection,
        clock: Arc<dyn Clock>,
        sinks: HashMap<&'static str, Arc<dyn Deliver>>,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            db,
            clock,
            wake: Notify::new(),
            sinks,
        })
    }

    /// Writes a notice with `conn`, which should be the transaction of the change it
    /// announces, so both happen or neither does.
    pub async fn add<C: ConnectionTrait>(
        conn: &C,
        topic: &str,
        payload: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), DbErr> {
        exec(
            conn,
            "INSERT INTO outbox (id, topic, payload, created_at, attempts, next_attempt_at) VALUES (?, ?, ?, ?, 0, ?)",
            vec![
                uuid::Uuid::now_v7().to_string().into(),
                topic.into(),
                payload.into(),
                micros(now).into(),
                micros(now).into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Asks the delivery task to look now (after a notice was added).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Notices not yet acknowledged.
    pub async fn pending(&self) -> Result<usize, DbErr> {
        let rows = all(&self.db, "SELECT id FROM outbox", vec![]).await?;
        Ok(rows.len())
    }

    /// Delivers the notices that are due, once each; returns how many were acknowledged.
    pub async fn deliver_due(&self) -> Result<usize, DbErr> {
        let now = self.clock.now();
        let rows = all(
            &self.db,
            "SELECT id, topic, payload, attempts, next_attempt_at FROM outbox WHERE next_attempt_at <= ? ORDER BY next_attempt_at LIMIT 100",
            vec![micros(now).into()],
        )
        .await?;
        let mut delivered = 0;
        for row in rows {
            let id: String = row.try_get("", "id")?;
            let topic: String = row.try_get("", "topic")?;
            let payload: String = row.try_get("", "payload")?;
            let attempts: i32 = row.try_get("", "attempts")?;
            let due: i64 = row.try_get("", "next_attempt_at")?;
            // Claim it: another process delivering the same notice finds it moved.
            let claimed = exec(
                &self.db,
                "UPDATE outbox SET next_attempt_at = ? WHERE id = ? AND next_attempt_at = ?",
                vec![micros(now + LEASE).into(), id.clone().into(), due.into()],
            )
            .await?;
            if claimed != 1 {
                continue;
            }
            let outcome = match self.sinks.get(topic.as_str()) {
                Some(sink) => sink.deliver(&payload).await,
                None => Err(format!("no receiver for topic {topic} in this process")),
            };
            match outcome {
                Ok(()) => {
                    exec(&self.db, "DELETE FROM outbox WHERE id = ?", vec![id.into()]).await?;
                    delivered += 1;
                }
                Err(reason) => {
                    let attempts = attempts.saturating_add(1);
                    let wait = 1i64
                        .checked_shl(attempts.clamp(0, 20) as u32)
                        .unwrap_or(MAX_BACKOFF_SECS)
                        .min(MAX_BACKOFF_SECS);
                    tracing::warn!(topic = %topic, attempts, retry_in_secs = wait, error = %reason, "an outbox notice was not delivered; will retry");
                    exec(
                        &self.db,
                        "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                        vec![
                            attempts.into(),
                            micros(self.clock.now() + chrono::Duration::seconds(wait)).into(),
                            reason.into(),
                            id.into(),
                        ],
                    )
                    .await?;
                }
            }
        }
        Ok(delivered)
    }

    /// Delivers in the background for as long as the process runs.
    pub fn spawn(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.deliver_due().await {
                    tracing::warn!(error = %e, "reading the outbox failed; will retry");
                }
                tokio::select! {
                    _ = this.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
    }
}

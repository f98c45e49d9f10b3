//! Signals between the processes of one deployment: "stop this reply", "the model registry
//! changed". A signal is a key; whoever waits on the key in any process sharing the
//! database hears it. On Postgres they travel by LISTEN/NOTIFY; on SQLite (one process)
//! they stay in memory. Signals are prompt but not durable: a process that was down (or
//! reconnecting to Postgres) when one was sent does not hear it, so what must not be lost
//! is also kept in tables that a periodic pass reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection};
use tokio::sync::mpsc;

/// The Postgres channel every signal travels on (the key is the payload).
const CHANNEL: &str = "llmesh_signals";
/// The longest key NOTIFY carries comfortably (its payload limit is 8000 bytes).
const MAX_KEY: usize = 1000;

type Waiters = HashMap<String, Vec<(u64, mpsc::UnboundedSender<()>)>>;

/// The signals of one process.
pub struct Signals {
    db: Option<DatabaseConnection>,
    waiters: Arc<Mutex<Waiters>>,
    next: AtomicU64,
}

impl Signals {
    /// Signals that cross processes through `db` when it is Postgres (a listener task is
    /// started), and stay in this process otherwise.
    pub async fn new(db: &DatabaseConnection) -> Arc<Signals> {
        let postgres = db.get_database_backend() == DatabaseBackend::Postgres;
        let signals = Arc::new(Signals {
            db: postgres.then(|| db.clone()),
            waiters: Arc::default(),
            next: AtomicU64::new(0),
        });
        if postgres {
            let pool = db.get_postgres_connection_pool().clone();
            let waiters = signals.waiters.clone();
            tokio::spawn(listen(pool, waiters));
        }
        signals
    }

    /// Signals that never leave this process.
    pub fn local() -> Arc<Signals> {
        Arc::new(Signals {
            db: None,
            waiters: Arc::default(),
            next: AtomicU64::new(0),
        })
    }

    /// Starts waiting for `key`; every later [`Signals::send`] of it, from any process,
    /// reaches the subscription until it is dropped.
    pub fn subscribe(&self, key: &str) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.waiters)
            .entry(key.to_owned())
            .or_default()
            .push((id, tx));
        Subscription {
            key: key.to_owned(),
            id,
            rx,
            waiters: self.waiters.clone(),
        }
    }

    /// Sends `key` to its subscribers here and, on Postgres, in every other process.
    /// Returns how many subscriptions in this process heard it.
    pub async fn send(&self, key: &str) -> usize {
        let heard = fire(&self.waiters, key);
        if let Some(db) = &self.db
            && key.len() <= MAX_KEY
        {
            let sent = db
                .execute_raw(sea_orm::Statement::from_sql_and_values(
                    DatabaseBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [CHANNEL.into(), key.into()],
                ))
                .await;
            if let Err(e) = sent {
                tracing::warn!(key, error = %e, "sending a signal to other processes failed");
            }
        }
        heard
    }
}

/// A wait on one key; dropping it stops the wait.
pub struct Subscription {
    key: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<()>,
    waiters: Arc<Mutex<Waiters>>,
}

impl Subscription {
    /// Resolves when the key is sent (again).
    pub async fn recv(&mut self) {
        if self.rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut waiters = lock(&self.waiters);
        if let Some(list) = waiters.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                waiters.remove(&self.key);
            }
        }
    }
}

fn fire(waiters: &Mutex<Waiters>, key: &str) -> usize {
    lock(waiters).get(key).map_or(0, |list| {
        list.iter().filter(|(_, tx)| tx.send(()).is_ok()).count()
    })
}

/// Hears the other processes' signals for as long as the process runs, reconnecting after
/// a lost connection (what was sent meanwhile is not heard).
async fn listen(pool: sea_orm::sqlx::PgPool, waiters: Arc<Mutex<Waiters>>) {
    use sea_orm::sqlx::postgres::PgListener;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for signals from other processes; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            continue;
        }
        loop {
            match listener.recv().await {
                // Our own sends come back too; firing twice is harmless (waiters tolerate
                // a repeated signal), and local subscribers already heard them.
                Ok(n) => {
                    fire(&waiters, n.payload());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the signal listener lost Postgres; reconnecting");
                    break;
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_signals_reach_their_subscribers_only() {
        let s = Signals::local();
        let mut a = s.subscribe("stop:1");
        let b = s.subscribe("stop:2");
        assert_eq!(s.send("stop:1").await, 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), a.recv())
            .await
            .expect("heard");
        drop(b);
        assert_eq!(
            s.send("stop:2").await,
            0,
            "a dropped subscription hears nothing"
        );
    }
}

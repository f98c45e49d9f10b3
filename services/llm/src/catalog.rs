//! The catalog: which models the deployment has, in the database every llm process
//! shares. PullModel, LoadModel, UnloadModel and DeleteModel change it; each llm process
//! then reconciles its own disk and memory with it (see `LlmService::reconcile`) and
//! reports, per model, where it stands, so ListModels can say what is ready where.

use chrono::{DateTime, Utc};
use llmesh_kit::db::{all, exec, from_micros, micros, one};
use sea_orm::{DatabaseConnection, DbErr, QueryResult};

use crate::registry::Manifest;

/// The signal that tells every llm process to reconcile now.
pub const CHANGED: &str = "llm.catalog";
/// A replica not heard from for this long is left out of ListModels.
pub const REPLICA_TIMEOUT: chrono::Duration = chrono::Duration::seconds(90);

/// One model of the catalog.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub source: String,
    /// What the model must hash to (given by the admin, or found by the first pull).
    pub sha256: Option<String>,
    /// Set once a first pull has verified and described the model.
    pub manifest: Option<Manifest>,
    /// Every replica keeps it loaded (LoadModel); false after UnloadModel.
    pub keep_loaded: bool,
    /// When UnloadModel last asked every replica to unload it.
    pub unloaded_at: Option<DateTime<Utc>>,
}

/// What one llm process reports about one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    pub replica: String,
    pub model: String,
    /// "pulling", "available", "loading", "loaded" or "failed".
    pub state: String,
    /// Progress while pulling, the reason when failed.
    pub detail: String,
    pub memory_bytes: u64,
    pub updated_at: DateTime<Utc>,
}

/// The catalog tables.
#[derive(Clone)]
pub struct Catalog {
    db: DatabaseConnection,
}

impl Catalog {
    pub fn new(db: DatabaseConnection) -> Self {
        Catalog { db }
    }

    /// Every live model (not deleted), by id.
    pub async fn entries(&self) -> Result<Vec<Entry>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT id, source, sha256, manifest, keep_loaded, unloaded_at FROM llm_models WHERE deleted_at IS NULL ORDER BY id",
            vec![],
        )
        .await?;
        rows.iter().map(entry).collect()
    }

    /// One live model.
    pub async fn entry(&self, id: &str) -> Result<Option<Entry>, DbErr> {
        let row = one(
            &self.db,
            "SELECT id, source, sha256, manifest, keep_loaded, unloaded_at FROM llm_models WHERE id = ? AND deleted_at IS NULL",
            vec![id.into()],
        )
        .await?;
        row.as_ref().map(entry).transpose()
    }

    /// Ids deleted from the catalog, which a process must not bring back from its disk.
    pub async fn deleted(&self) -> Result<Vec<String>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT id FROM llm_models WHERE deleted_at IS NOT NULL",
            vec![],
        )
        .await?;
        rows.iter().map(|r| r.try_get("", "id")).collect()
    }

    /// Claims `id` for a first pull; false when a live model has it already. A deleted
    /// model's id can be claimed again.
    pub async fn claim(
        &self,
        id: &str,
        source: &str,
        sha256: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        let inserted = exec(
            &self.db,
            "INSERT INTO llm_models (id, source, sha256, keep_loaded, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            vec![id.into(), source.into(), sha256.map(str::to_owned).into(), false.into(), micros(now).into(), micros(now).into()],
        )
        .await?;
        if inserted == 1 {
            return Ok(true);
        }
        let revived = exec(
            &self.db,
            "UPDATE llm_models SET source = ?, sha256 = ?, manifest = NULL, keep_loaded = ?, unloaded_at = NULL, deleted_at = NULL, created_at = ?, updated_at = ? WHERE id = ? AND deleted_at IS NOT NULL",
            vec![source.into(), sha256.map(str::to_owned).into(), false.into(), micros(now).into(), micros(now).into(), id.into()],
        )
        .await?;
        Ok(revived == 1)
    }

    /// Publishes what the first pull found: other processes pull the same bytes.
    pub async fn publish(&self, manifest: &Manifest, now: DateTime<Utc>) -> Result<(), DbErr> {
        let json = serde_json::to_string(manifest).map_err(|e| DbErr::Custom(e.to_string()))?;
        exec(
            &self.db,
            "UPDATE llm_models SET sha256 = ?, manifest = ?, updated_at = ? WHERE id = ?",
            vec![
                manifest.sha256.clone().into(),
                json.into(),
                micros(now).into(),
                manifest.id.clone().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Adds a model this process has on disk but the catalog lacks (a data directory from
    /// before the catalog), unless it was deleted meanwhile; with `revive` (the default
    /// models) a deleted entry, or one whose first pull never finished, is restored too.
    pub async fn adopt(
        &self,
        manifest: &Manifest,
        now: DateTime<Utc>,
        revive: bool,
    ) -> Result<(), DbErr> {
        let json = serde_json::to_string(manifest).map_err(|e| DbErr::Custom(e.to_string()))?;
        let sql = if revive {
            "INSERT INTO llm_models (id, source, sha256, manifest, keep_loaded, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET source = excluded.source, sha256 = excluded.sha256, manifest = excluded.manifest, \
             deleted_at = NULL, updated_at = excluded.updated_at \
             WHERE llm_models.deleted_at IS NOT NULL OR llm_models.manifest IS NULL"
        } else {
            "INSERT INTO llm_models (id, source, sha256, manifest, keep_loaded, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
        };
        exec(
            &self.db,
            sql,
            vec![
                manifest.id.clone().into(),
                manifest.source.clone().into(),
                manifest.sha256.clone().into(),
                json.into(),
                false.into(),
                micros(manifest.created_at).into(),
                micros(now).into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Gives up a claim whose first pull failed (only while nothing was published).
    pub async fn release_claim(&self, id: &str) -> Result<(), DbErr> {
        exec(
            &self.db,
            "DELETE FROM llm_models WHERE id = ? AND manifest IS NULL",
            vec![id.into()],
        )
        .await?;
        Ok(())
    }

    /// Marks a model deleted: every process removes its copy.
    pub async fn delete(&self, id: &str, now: DateTime<Utc>) -> Result<(), DbErr> {
        exec(
            &self.db,
            "UPDATE llm_models SET deleted_at = ?, keep_loaded = ?, updated_at = ? WHERE id = ?",
            vec![
                micros(now).into(),
                false.into(),
                micros(now).into(),
                id.into(),
            ],
        )
        .await?;
        exec(
            &self.db,
            "DELETE FROM llm_replica_models WHERE model_id = ?",
            vec![id.into()],
        )
        .await?;
        Ok(())
    }

    /// Asks every process to keep a model loaded, or (false) to unload it.
    pub async fn set_keep_loaded(
        &self,
        id: &str,
        keep: bool,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let (sql, values): (&str, Vec<sea_orm::Value>) = if keep {
            (
                "UPDATE llm_models SET keep_loaded = ?, updated_at = ? WHERE id = ?",
                vec![true.into(), micros(now).into(), id.into()],
            )
        } else {
            (
                "UPDATE llm_models SET keep_loaded = ?, unloaded_at = ?, updated_at = ? WHERE id = ?",
                vec![
                    false.into(),
                    micros(now).into(),
                    micros(now).into(),
                    id.into(),
                ],
            )
        };
        exec(&self.db, sql, values).await?;
        Ok(())
    }

    /// Records that `replica` is alive.
    pub async fn heartbeat(
        &self,
        replica: &str,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        exec(
            &self.db,
            "INSERT INTO llm_replicas (replica_id, started_at, seen_at) VALUES (?, ?, ?) ON CONFLICT (replica_id) DO UPDATE SET seen_at = excluded.seen_at",
            vec![replica.into(), micros(started).into(), micros(now).into()],
        )
        .await?;
        Ok(())
    }

    /// Replaces what `replica` reports about its models.
    pub async fn report(&self, replica: &str, reports: &[ReplicaReport]) -> Result<(), DbErr> {
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        exec(
            &txn,
            "DELETE FROM llm_replica_models WHERE replica_id = ?",
            vec![replica.into()],
        )
        .await?;
        for r in reports {
            exec(
                &txn,
                "INSERT INTO llm_replica_models (replica_id, model_id, state, detail, memory_bytes, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                vec![
                    replica.into(),
                    r.model.clone().into(),
                    r.state.clone().into(),
                    r.detail.clone().into(),
                    (r.memory_bytes as i64).into(),
                    micros(r.updated_at).into(),
                ],
            )
            .await?;
        }
        txn.commit().await
    }

    /// What every replica seen since `since` reports, by model.
    pub async fn reports(&self, since: DateTime<Utc>) -> Result<Vec<ReplicaReport>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT m.replica_id, m.model_id, m.state, m.detail, m.memory_bytes, m.updated_at \
             FROM llm_replica_models m JOIN llm_replicas r ON r.replica_id = m.replica_id \
             WHERE r.seen_at >= ? ORDER BY m.model_id, m.replica_id",
            vec![micros(since).into()],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReplicaReport {
                    replica: r.try_get("", "replica_id")?,
                    model: r.try_get("", "model_id")?,
                    state: r.try_get("", "state")?,
                    detail: r.try_get("", "detail")?,
                    memory_bytes: r.try_get::<i64>("", "memory_bytes")?.max(0) as u64,
                    updated_at: from_micros(r.try_get("", "updated_at")?),
                })
            })
            .collect()
    }

    /// Forgets replicas not seen for a day, with their reports.
    pub async fn sweep_replicas(&self, now: DateTime<Utc>) -> Result<(), DbErr> {
        let cutoff = micros(now - chrono::Duration::days(1));
        exec(
            &self.db,
            "DELETE FROM llm_replica_models WHERE replica_id IN (SELECT replica_id FROM llm_replicas WHERE seen_at < ?)",
            vec![cutoff.into()],
        )
        .await?;
        exec(
            &self.db,
            "DELETE FROM llm_replicas WHERE seen_at < ?",
            vec![cutoff.into()],
        )
        .await?;
        Ok(())
    }
}

fn entry(r: &QueryResult) -> Result<Entry, DbErr> {
    let manifest: Option<String> = r.try_get("", "manifest")?;
    let manifest = manifest
        .map(|m| serde_json::from_str(&m))
        .transpose()
        .map_err(|e| DbErr::Custom(format!("a catalog manifest is not valid: {e}")))?;
    Ok(Entry {
        id: r.try_get("", "id")?,
        source: r.try_get("", "source")?,
        sha256: r.try_get("", "sha256")?,
        manifest,
        keep_loaded: r.try_get("", "keep_loaded")?,
        unloaded_at: r
            .try_get::<Option<i64>>("", "unloaded_at")?
            .map(from_micros),
    })
}

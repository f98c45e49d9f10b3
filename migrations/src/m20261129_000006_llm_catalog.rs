//! The llm catalog: which models a deployment has (every llm process reconciles its own
//! disk and memory with it), and what each llm process reports about them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE llm_models (
                id TEXT PRIMARY KEY,
                source TEXT NOT NULL,
                sha256 TEXT,
                manifest TEXT,
                keep_loaded BOOLEAN NOT NULL,
                unloaded_at BIGINT,
                deleted_at BIGINT,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TABLE llm_replicas (
                replica_id TEXT PRIMARY KEY,
                started_at BIGINT NOT NULL,
                seen_at BIGINT NOT NULL
            )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TABLE llm_replica_models (
                replica_id TEXT NOT NULL,
                model_id TEXT NOT NULL,
                state TEXT NOT NULL,
                detail TEXT NOT NULL,
                memory_bytes BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (replica_id, model_id)
            )",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE llm_replica_models")
            .await?;
        db.execute_unprepared("DROP TABLE llm_replicas").await?;
        db.execute_unprepared("DROP TABLE llm_models").await?;
        Ok(())
    }
}

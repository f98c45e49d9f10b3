//! Results of running a message's code blocks in the sandbox, kept with the message: one
//! row per (message, block), replaced when the block runs again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let bytes = match manager.get_database_backend() {
            DatabaseBackend::Postgres => "BYTEA",
            _ => "BLOB",
        };
        db.execute_unprepared(&format!(
            "CREATE TABLE message_code_runs (
                message_id TEXT NOT NULL,
                block BIGINT NOT NULL,
                conversation_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                language TEXT NOT NULL,
                code TEXT NOT NULL,
                stdout {bytes} NOT NULL,
                stderr {bytes} NOT NULL,
                truncated BOOLEAN NOT NULL,
                status TEXT NOT NULL,
                exit_code BIGINT NOT NULL,
                exit_message TEXT NOT NULL,
                fuel_used BIGINT NOT NULL,
                duration_ms BIGINT NOT NULL,
                peak_memory_bytes BIGINT NOT NULL,
                cost_micros BIGINT NOT NULL,
                ran_at BIGINT NOT NULL,
                PRIMARY KEY (message_id, block)
            )"
        ))
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_message_code_runs_conversation ON message_code_runs (conversation_id)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE message_code_runs")
            .await?;
        Ok(())
    }
}

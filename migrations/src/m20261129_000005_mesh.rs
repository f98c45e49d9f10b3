//! What several processes of one service share through the database: the outbox of
//! notices between services, chunked uploads (so any chat copy can take any chunk), and
//! which chat copy streams which reply (so StopReply reaches it).

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
        db.execute_unprepared(
            "CREATE TABLE outbox (
                id TEXT PRIMARY KEY,
                topic TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                attempts INTEGER NOT NULL,
                next_attempt_at BIGINT NOT NULL,
                last_error TEXT
            )",
        )
        .await?;
        db.execute_unprepared("CREATE INDEX idx_outbox_due ON outbox (next_attempt_at)")
            .await?;
        db.execute_unprepared(&format!(
            "CREATE TABLE upload_chunks (
                upload_id TEXT NOT NULL,
                offset_bytes BIGINT NOT NULL,
                data {bytes} NOT NULL,
                PRIMARY KEY (upload_id, offset_bytes)
            )"
        ))
        .await?;
        db.execute_unprepared(
            "CREATE TABLE chat_running_replies (
                conversation_id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                reply_id TEXT NOT NULL,
                started_at BIGINT NOT NULL
            )",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE chat_running_replies")
            .await?;
        db.execute_unprepared("DROP TABLE upload_chunks").await?;
        db.execute_unprepared("DROP TABLE outbox").await?;
        Ok(())
    }
}

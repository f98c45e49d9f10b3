//! Sandbox workspaces: every user's files, and uploads in progress (chunked, so a new
//! version replaces the old one only when its last chunk arrives).

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
            "CREATE TABLE sandbox_files (
                user_id TEXT NOT NULL,
                path TEXT NOT NULL,
                data {bytes} NOT NULL,
                size_bytes BIGINT NOT NULL,
                modified_at BIGINT NOT NULL,
                PRIMARY KEY (user_id, path)
            )"
        ))
        .await?;
        db.execute_unprepared(&format!(
            "CREATE TABLE sandbox_uploads (
                user_id TEXT NOT NULL,
                path TEXT NOT NULL,
                data {bytes} NOT NULL,
                received_bytes BIGINT NOT NULL,
                started_at BIGINT NOT NULL,
                PRIMARY KEY (user_id, path)
            )"
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE sandbox_uploads").await?;
        db.execute_unprepared("DROP TABLE sandbox_files").await?;
        Ok(())
    }
}

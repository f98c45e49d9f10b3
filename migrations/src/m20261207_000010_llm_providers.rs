//! Hosted model providers beside the local models: the providers an admin registered
//! (their API key and extra headers sealed with an AEAD, never in the clear), the keys
//! that seal them when no `llm.provider_key_file` is configured, and billing's record of
//! usage a provider reported beyond what a reservation held (the overage).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE llm_providers (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                base_url TEXT NOT NULL,
                header_names TEXT NOT NULL,
                has_api_key BOOLEAN NOT NULL,
                sealed TEXT,
                sealed_key_id TEXT,
                timeout_seconds BIGINT NOT NULL,
                models TEXT NOT NULL,
                enabled BOOLEAN NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TABLE llm_provider_keys (
                id TEXT PRIMARY KEY,
                key_material TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )",
        )
        .await?;
        for sql in [
            "ALTER TABLE reservations ADD COLUMN overage_micros BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE ledger ADD COLUMN overage_micros BIGINT NOT NULL DEFAULT 0",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in [
            "ALTER TABLE ledger DROP COLUMN overage_micros",
            "ALTER TABLE reservations DROP COLUMN overage_micros",
        ] {
            db.execute_unprepared(sql).await?;
        }
        db.execute_unprepared("DROP TABLE llm_provider_keys")
            .await?;
        db.execute_unprepared("DROP TABLE llm_providers").await?;
        Ok(())
    }
}

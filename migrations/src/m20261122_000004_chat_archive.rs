//! The chat search index (SQLite FTS5 or a Postgres tsvector with a GIN index) and the
//! table of chunked uploads.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                db.execute_unprepared(
                    "CREATE TABLE chat_search (
                        doc_id TEXT PRIMARY KEY,
                        user_id TEXT NOT NULL,
                        conversation_id TEXT NOT NULL,
                        message_id TEXT,
                        body TEXT NOT NULL,
                        tsv TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED
                    )",
                )
                .await?;
                db.execute_unprepared(
                    "CREATE INDEX idx_chat_search_tsv ON chat_search USING GIN (tsv)",
                )
                .await?;
                db.execute_unprepared("CREATE INDEX idx_chat_search_user ON chat_search (user_id)")
                    .await?;
                db.execute_unprepared(
                    "CREATE INDEX idx_chat_search_conversation ON chat_search (conversation_id)",
                )
                .await?;
            }
            _ => {
                db.execute_unprepared(
                    "CREATE VIRTUAL TABLE chat_search USING fts5(
                        doc_id UNINDEXED, user_id UNINDEXED, conversation_id UNINDEXED, message_id UNINDEXED,
                        body, tokenize = 'unicode61 remove_diacritics 2'
                    )",
                )
                .await?;
            }
        }
        db.execute_unprepared(
            "CREATE TABLE uploads (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                file_name TEXT NOT NULL,
                size_bytes BIGINT NOT NULL,
                sha256 TEXT NOT NULL,
                received_bytes BIGINT NOT NULL,
                finished BOOLEAN NOT NULL,
                created_at BIGINT NOT NULL
            )",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE uploads").await?;
        db.execute_unprepared("DROP TABLE chat_search").await?;
        Ok(())
    }
}

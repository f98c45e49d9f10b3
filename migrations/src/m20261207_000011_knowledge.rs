//! Knowledge bases: collections, who they are shared with, documents, and their chunks
//! with each chunk's embedding (float32 and an int8 copy with its scale), and their
//! full-text index `kb_chunks_fts` (SQLite FTS5, or a Postgres table with a generated
//! tsvector and a GIN index): the same table and columns on both, so backups move
//! between them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let postgres = manager.get_database_backend() == DatabaseBackend::Postgres;
        let (bytes, real) = if postgres {
            ("BYTEA", "DOUBLE PRECISION")
        } else {
            ("BLOB", "REAL")
        };
        db.execute_unprepared(
            "CREATE TABLE kb_collections (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                name TEXT NOT NULL,
                description TEXT NOT NULL,
                everyone BOOLEAN NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )",
        )
        .await?;
        db.execute_unprepared("CREATE INDEX idx_kb_collections_user ON kb_collections (user_id)")
            .await?;
        db.execute_unprepared(
            "CREATE TABLE kb_shares (
                collection_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                PRIMARY KEY (collection_id, user_id)
            )",
        )
        .await?;
        db.execute_unprepared("CREATE INDEX idx_kb_shares_user ON kb_shares (user_id)")
            .await?;
        db.execute_unprepared(
            "CREATE TABLE kb_documents (
                id TEXT PRIMARY KEY,
                collection_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                name TEXT NOT NULL,
                format TEXT NOT NULL,
                size_bytes BIGINT NOT NULL,
                sha256 TEXT NOT NULL,
                pages BIGINT NOT NULL,
                chunks BIGINT NOT NULL,
                tokens BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                UNIQUE (collection_id, name)
            )",
        )
        .await?;
        db.execute_unprepared(&format!(
            "CREATE TABLE kb_chunks (
                id TEXT PRIMARY KEY,
                document_id TEXT NOT NULL,
                collection_id TEXT NOT NULL,
                position BIGINT NOT NULL,
                page BIGINT NOT NULL,
                headings TEXT NOT NULL,
                body TEXT NOT NULL,
                tokens BIGINT NOT NULL,
                embedding {bytes} NOT NULL,
                quantised {bytes} NOT NULL,
                scale {real} NOT NULL
            )"
        ))
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_kb_chunks_document ON kb_chunks (document_id, position)",
        )
        .await?;
        db.execute_unprepared("CREATE INDEX idx_kb_chunks_collection ON kb_chunks (collection_id)")
            .await?;
        if postgres {
            db.execute_unprepared(
                "CREATE TABLE kb_chunks_fts (
                    chunk_id TEXT PRIMARY KEY,
                    collection_id TEXT NOT NULL,
                    body TEXT NOT NULL,
                    tsv TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED
                )",
            )
            .await?;
            db.execute_unprepared(
                "CREATE INDEX idx_kb_chunks_fts_tsv ON kb_chunks_fts USING GIN (tsv)",
            )
            .await?;
            db.execute_unprepared(
                "CREATE INDEX idx_kb_chunks_fts_collection ON kb_chunks_fts (collection_id)",
            )
            .await?;
        } else {
            db.execute_unprepared(
                "CREATE VIRTUAL TABLE kb_chunks_fts USING fts5(
                    chunk_id UNINDEXED, collection_id UNINDEXED, body,
                    tokenize = 'unicode61 remove_diacritics 2'
                )",
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in [
            "kb_chunks_fts",
            "kb_chunks",
            "kb_documents",
            "kb_shares",
            "kb_collections",
        ] {
            db.execute_unprepared(&format!("DROP TABLE {table}"))
                .await?;
        }
        Ok(())
    }
}

//! Knowledge in chat: the collections a conversation or an assistant draws on, and the
//! citations stored with each reply.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE conversations ADD COLUMN collection_ids TEXT NOT NULL DEFAULT '[]'",
        )
        .await?;
        db.execute_unprepared(
            "ALTER TABLE assistants ADD COLUMN collection_ids TEXT NOT NULL DEFAULT '[]'",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TABLE message_citations (
                message_id TEXT NOT NULL,
                position BIGINT NOT NULL,
                cited_as BIGINT NOT NULL,
                conversation_id TEXT NOT NULL,
                chunk_id TEXT NOT NULL,
                document_id TEXT NOT NULL,
                document_name TEXT NOT NULL,
                collection_id TEXT NOT NULL,
                page BIGINT NOT NULL,
                headings TEXT NOT NULL,
                score DOUBLE PRECISION NOT NULL,
                quote TEXT NOT NULL,
                PRIMARY KEY (message_id, position)
            )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_message_citations_conversation ON message_citations (conversation_id)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE message_citations")
            .await?;
        db.execute_unprepared("ALTER TABLE assistants DROP COLUMN collection_ids")
            .await?;
        db.execute_unprepared("ALTER TABLE conversations DROP COLUMN collection_ids")
            .await?;
        Ok(())
    }
}

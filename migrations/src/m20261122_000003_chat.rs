//! Chat tables: folders, conversations, message trees, assistants and prompt templates.
//! Times are microseconds since the Unix epoch (UTC).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Folders::Table)
                    .col(string(Folders::Id).primary_key())
                    .col(string(Folders::UserId))
                    .col(string(Folders::Name))
                    .col(string_null(Folders::ParentId))
                    .col(big_integer(Folders::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_folders_user")
                    .table(Folders::Table)
                    .col(Folders::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Conversations::Table)
                    .col(string(Conversations::Id).primary_key())
                    .col(string(Conversations::UserId))
                    .col(string(Conversations::Title))
                    .col(string(Conversations::Model))
                    .col(text(Conversations::Sampling))
                    .col(text(Conversations::SystemPrompt))
                    .col(string_null(Conversations::AssistantId))
                    .col(string_null(Conversations::FolderId))
                    .col(text(Conversations::Tags))
                    .col(boolean(Conversations::Pinned).default(false))
                    .col(boolean(Conversations::Archived).default(false))
                    .col(string_null(Conversations::ActiveLeafId))
                    .col(boolean(Conversations::Titled).default(false))
                    .col(big_integer(Conversations::CreatedAt))
                    .col(big_integer(Conversations::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_conversations_user_updated")
                    .table(Conversations::Table)
                    .col(Conversations::UserId)
                    .col(Conversations::UpdatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .col(string(Messages::Id).primary_key())
                    .col(string(Messages::ConversationId))
                    .col(string(Messages::UserId))
                    .col(string_null(Messages::ParentId))
                    .col(string(Messages::Role))
                    .col(text(Messages::Content))
                    .col(string(Messages::Model))
                    .col(string(Messages::State))
                    .col(big_integer(Messages::PromptTokens).default(0))
                    .col(big_integer(Messages::CompletionTokens).default(0))
                    .col(big_integer(Messages::CostMicros).default(0))
                    .col(big_integer(Messages::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Messages::Table, Messages::ConversationId)
                            .to(Conversations::Table, Conversations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_conversation")
                    .table(Messages::Table)
                    .col(Messages::ConversationId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Assistants::Table)
                    .col(string(Assistants::Id).primary_key())
                    .col(string(Assistants::OwnerId))
                    .col(boolean(Assistants::Global).default(false))
                    .col(string(Assistants::Name))
                    .col(text(Assistants::Description))
                    .col(string(Assistants::Icon))
                    .col(text(Assistants::SystemPrompt))
                    .col(string(Assistants::Model))
                    .col(text(Assistants::Sampling))
                    .col(big_integer(Assistants::CreatedAt))
                    .col(big_integer(Assistants::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Templates::Table)
                    .col(string(Templates::Id).primary_key())
                    .col(string(Templates::OwnerId))
                    .col(boolean(Templates::Global).default(false))
                    .col(string(Templates::Name))
                    .col(string(Templates::Category))
                    .col(text(Templates::Body))
                    .col(big_integer(Templates::CreatedAt))
                    .col(big_integer(Templates::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Templates::Table.into_iden(),
            Assistants::Table.into_iden(),
            Messages::Table.into_iden(),
            Conversations::Table.into_iden(),
            Folders::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Folders {
    Table,
    Id,
    UserId,
    Name,
    ParentId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    UserId,
    Title,
    Model,
    Sampling,
    SystemPrompt,
    AssistantId,
    FolderId,
    Tags,
    Pinned,
    Archived,
    ActiveLeafId,
    Titled,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    ConversationId,
    UserId,
    ParentId,
    Role,
    Content,
    Model,
    State,
    PromptTokens,
    CompletionTokens,
    CostMicros,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Assistants {
    Table,
    Id,
    OwnerId,
    Global,
    Name,
    Description,
    Icon,
    SystemPrompt,
    Model,
    Sampling,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Templates {
    Table,
    Id,
    OwnerId,
    Global,
    Name,
    Category,
    Body,
    CreatedAt,
    UpdatedAt,
}

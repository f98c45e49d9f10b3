//! Billing tables: prices, accounts with a running balance, the append-only ledger,
//! reservations and quotas. Times are microseconds since the Unix epoch (UTC) so that
//! range queries compare numbers on every backend.

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
                    .table(Prices::Table)
                    .col(string(Prices::Model).primary_key())
                    .col(big_integer(Prices::InputMicrosPerMtok))
                    .col(big_integer(Prices::OutputMicrosPerMtok))
                    .col(big_integer(Prices::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // The stored balance is what is available now (holds already taken off); the
        // CHECK makes going below zero impossible whatever the code does.
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .col(string(Accounts::UserId).primary_key())
                    .col(
                        big_integer(Accounts::BalanceMicros)
                            .check(Expr::col(Accounts::BalanceMicros).gte(0)),
                    )
                    .col(big_integer(Accounts::ReservedMicros))
                    .col(boolean(Accounts::UserDeleted).default(false))
                    .col(big_integer(Accounts::CreatedAt))
                    .col(big_integer(Accounts::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Ledger::Table)
                    .col(string(Ledger::Id).primary_key())
                    .col(string(Ledger::UserId))
                    .col(string(Ledger::Kind))
                    .col(big_integer(Ledger::AmountMicros))
                    .col(big_integer(Ledger::ChargedMicros).default(0))
                    .col(string_null(Ledger::Model))
                    .col(string_null(Ledger::ApiKeyId))
                    .col(big_integer(Ledger::PromptTokens).default(0))
                    .col(big_integer(Ledger::CompletionTokens).default(0))
                    .col(string_null(Ledger::ReservationId))
                    .col(string_uniq(Ledger::IdempotencyKey))
                    .col(string_null(Ledger::Reason))
                    .col(big_integer(Ledger::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_ledger_user_time")
                    .table(Ledger::Table)
                    .col(Ledger::UserId)
                    .col(Ledger::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Reservations::Table)
                    .col(string(Reservations::Id).primary_key())
                    .col(string(Reservations::UserId))
                    .col(string_null(Reservations::ApiKeyId))
                    .col(string(Reservations::Model))
                    .col(big_integer(Reservations::HeldMicros))
                    .col(big_integer(Reservations::PromptTokens))
                    .col(big_integer(Reservations::MaxTokens))
                    .col(string(Reservations::Status))
                    .col(string_uniq(Reservations::IdempotencyKey))
                    .col(big_integer(Reservations::ChargedMicros).default(0))
                    .col(big_integer(Reservations::CreatedAt))
                    .col(big_integer(Reservations::ExpiresAt))
                    .col(big_integer_null(Reservations::ClosedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_reservations_open")
                    .table(Reservations::Table)
                    .col(Reservations::Status)
                    .col(Reservations::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Quotas::Table)
                    .col(string(Quotas::Subject).primary_key())
                    .col(big_integer(Quotas::MonthlySpendMicros))
                    .col(big_integer(Quotas::MonthlyTokens))
                    .col(integer(Quotas::RequestsPerMinute))
                    .col(integer(Quotas::TokensPerMinute))
                    .col(big_integer(Quotas::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Quotas::Table.into_iden(),
            Reservations::Table.into_iden(),
            Ledger::Table.into_iden(),
            Accounts::Table.into_iden(),
            Prices::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Prices {
    Table,
    Model,
    InputMicrosPerMtok,
    OutputMicrosPerMtok,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    UserId,
    BalanceMicros,
    ReservedMicros,
    UserDeleted,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Ledger {
    Table,
    Id,
    UserId,
    Kind,
    AmountMicros,
    ChargedMicros,
    Model,
    ApiKeyId,
    PromptTokens,
    CompletionTokens,
    ReservationId,
    IdempotencyKey,
    Reason,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    Id,
    UserId,
    ApiKeyId,
    Model,
    HeldMicros,
    PromptTokens,
    MaxTokens,
    Status,
    IdempotencyKey,
    ChargedMicros,
    CreatedAt,
    ExpiresAt,
    ClosedAt,
}

#[derive(DeriveIden)]
enum Quotas {
    Table,
    Subject,
    MonthlySpendMicros,
    MonthlyTokens,
    RequestsPerMinute,
    TokensPerMinute,
    UpdatedAt,
}

//! Billing's second meter: fuel (the sandbox's instructions) beside tokens. Prices per
//! billion fuel units, the fuel a reservation holds for (and the price it was taken at),
//! and the fuel a settlement used.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in [
            "ALTER TABLE prices ADD COLUMN micros_per_gfuel BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE reservations ADD COLUMN fuel BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE reservations ADD COLUMN micros_per_gfuel BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE ledger ADD COLUMN fuel BIGINT NOT NULL DEFAULT 0",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in [
            "ALTER TABLE ledger DROP COLUMN fuel",
            "ALTER TABLE reservations DROP COLUMN micros_per_gfuel",
            "ALTER TABLE reservations DROP COLUMN fuel",
            "ALTER TABLE prices DROP COLUMN micros_per_gfuel",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}

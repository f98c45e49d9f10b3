//! Database migrations for llmesh. They run at server start (`llmesh serve`) and on their
//! own with `llmesh migrate`; every migration works on SQLite and Postgres.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_auth;
mod m20261122_000002_billing;
mod m20261122_000003_chat;
mod m20261122_000004_chat_archive;
mod m20261129_000005_mesh;
mod m20261129_000006_llm_catalog;
mod m20261129_000007_sandbox;
mod m20261129_000008_billing_fuel;
mod m20261129_000009_chat_code_runs;
mod m20261207_000010_llm_providers;
mod m20261207_000011_knowledge;
mod m20261207_000012_chat_knowledge;

/// Runs the llmesh migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_auth::Migration),
            Box::new(m20261122_000002_billing::Migration),
            Box::new(m20261122_000003_chat::Migration),
            Box::new(m20261122_000004_chat_archive::Migration),
            Box::new(m20261129_000005_mesh::Migration),
            Box::new(m20261129_000006_llm_catalog::Migration),
            Box::new(m20261129_000007_sandbox::Migration),
            Box::new(m20261129_000008_billing_fuel::Migration),
            Box::new(m20261129_000009_chat_code_runs::Migration),
            Box::new(m20261207_000010_llm_providers::Migration),
            Box::new(m20261207_000011_knowledge::Migration),
            Box::new(m20261207_000012_chat_knowledge::Migration),
        ]
    }
}

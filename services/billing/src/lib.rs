//! The llmesh billing service: prices per model, balances backed by an append-only ledger,
//! reservations held before generation and settled to what it used, quotas, rate limits,
//! usage reports and reconciliation.

pub mod config;
pub mod error;
pub mod grpc;
pub mod service;
pub mod store;

pub use config::BillingConfig;
pub use grpc::{ACCESS, GrpcBillingAdapter, SERVICE_NAME};
pub use service::BillingService;

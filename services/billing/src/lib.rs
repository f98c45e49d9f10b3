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

use std::sync::Arc;

use llmesh_kit::serve::{Process, ServiceSet};
use llmesh_proto::billing::v1::billing_service_server::BillingServiceServer;

/// Starts billing in this process: the service, its sweeper of expired reservations (which
/// also releases what a previous run left open), and its RPCs.
pub fn mount(
    set: &mut ServiceSet,
    process: &Process,
    config: BillingConfig,
) -> Arc<BillingService> {
    let service = Arc::new(BillingService::new(
        store::BillingStore::new(process.db.clone()),
        config,
        process.clock.clone(),
    ));
    service.spawn_sweeper();
    process
        .metrics
        .register(Box::new(service.reservations.clone()));
    let max = set.max_message_bytes();
    set.add(
        ACCESS,
        BillingServiceServer::from_arc(Arc::new(GrpcBillingAdapter::new(service.clone())))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    service
}

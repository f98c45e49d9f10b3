//! What every llmesh service shares: error codes mapped to gRPC status in one place, the
//! authentication layer and principals, configuration loading, the database connection,
//! logging, and `serve()` with health, reflection, grpc-web and graceful shutdown.

pub mod authn;
pub mod clock;
pub mod config;
pub mod convert;
pub mod csv;
pub mod db;
pub mod deadline;
pub mod error;
pub mod fetch;
pub mod health;
pub mod jwt;
pub mod metrics;
pub mod money;
pub mod outbox;
pub mod package_index;
pub mod peer;
pub mod principal;
pub mod request_id;
pub mod serve;
pub mod signal;
pub mod telemetry;
pub mod trace;
pub mod validate;
pub mod web;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ApiError, ErrorCode};
pub use principal::{Access, CredentialKind, Principal, Role};

//! The llmesh sandbox service: untrusted code as WASI modules in wasmtime, with fuel,
//! memory, wall-clock and output limits, against a private copy of the caller's
//! workspace (kept in the database, so every copy of the service sees it).

pub mod config;
pub mod error;
pub mod runner;
pub mod runtimes;

pub use config::SandboxConfig;

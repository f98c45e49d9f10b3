//! The sandbox's failures, each mapped to one error code.

use std::time::Duration;

use llmesh_kit::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Exhausted(String, Duration),
    #[error("{0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("{0}")]
    Internal(String),
}

impl From<SandboxError> for ApiError {
    fn from(err: SandboxError) -> ApiError {
        let message = err.to_string();
        match err {
            SandboxError::Invalid(_) => ApiError::invalid(message),
            SandboxError::NotFound(_) => ApiError::not_found(message),
            SandboxError::Precondition(_) => ApiError::failed_precondition(message),
            SandboxError::PermissionDenied(_) => ApiError::permission_denied(message),
            SandboxError::Exhausted(_, retry) => ApiError::exhausted(message, retry),
            SandboxError::Unavailable(_) => ApiError::unavailable(message),
            SandboxError::Db(e) => ApiError::internal(e),
            SandboxError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<SandboxError> for tonic::Status {
    fn from(err: SandboxError) -> tonic::Status {
        ApiError::from(err).into_status()
    }
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

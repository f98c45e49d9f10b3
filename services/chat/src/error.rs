//! Chat's failures, each mapped to one error code.

use std::time::Duration;

use llmesh_kit::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    Invalid(String),
    /// Also what another user's objects look like: existence is not leaked.
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

impl From<ChatError> for ApiError {
    fn from(err: ChatError) -> ApiError {
        let message = err.to_string();
        match err {
            ChatError::Invalid(_) => ApiError::invalid(message),
            ChatError::NotFound(_) => ApiError::not_found(message),
            ChatError::Precondition(_) => ApiError::failed_precondition(message),
            ChatError::PermissionDenied(_) => ApiError::permission_denied(message),
            ChatError::Exhausted(_, retry) => ApiError::exhausted(message, retry),
            ChatError::Unavailable(_) => ApiError::unavailable(message),
            ChatError::Db(e) => ApiError::internal(e),
            ChatError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<ChatError> for tonic::Status {
    fn from(err: ChatError) -> tonic::Status {
        ApiError::from(err).into_status()
    }
}

pub type Result<T, E = ChatError> = std::result::Result<T, E>;

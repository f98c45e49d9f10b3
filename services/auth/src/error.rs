//! Auth's failures, each mapped to one error code.

use std::time::Duration;

use llmesh_kit::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Invalid(String),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("wrong email or password")]
    BadCredentials,
    #[error("too many failed sign-ins for this email; try again later")]
    Throttled(Duration),
    #[error("registration is closed: ask an admin to create your account")]
    RegistrationClosed,
    #[error("{0}")]
    BadToken(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this would leave no enabled admin")]
    LastAdmin,
    #[error("current password is wrong")]
    WrongPassword,
    #[error("{0}")]
    Forbidden(String),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("{0}")]
    Internal(String),
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        let message = err.to_string();
        match err {
            AuthError::Invalid(_) => ApiError::invalid(message),
            AuthError::EmailTaken => ApiError::already_exists(message),
            AuthError::BadCredentials | AuthError::BadToken(_) | AuthError::WrongPassword => {
                ApiError::unauthenticated(message)
            }
            AuthError::Throttled(retry) => ApiError::exhausted(message, retry),
            AuthError::RegistrationClosed | AuthError::Forbidden(_) => {
                ApiError::permission_denied(message)
            }
            AuthError::NotFound(_) => ApiError::not_found(message),
            AuthError::LastAdmin => ApiError::failed_precondition(message),
            AuthError::Db(db) => ApiError::internal(db),
            AuthError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> tonic::Status {
        ApiError::from(err).into_status()
    }
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

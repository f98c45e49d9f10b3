//! Billing's failures, each mapped to one error code.

use std::time::Duration;

use llmesh_kit::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Exhausted(String, Duration),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

impl From<BillingError> for ApiError {
    fn from(err: BillingError) -> ApiError {
        let message = err.to_string();
        match err {
            BillingError::Invalid(_) => ApiError::invalid(message),
            BillingError::NotFound(_) => ApiError::not_found(message),
            BillingError::Precondition(_) => ApiError::failed_precondition(message),
            BillingError::Exhausted(_, retry) => ApiError::exhausted(message, retry),
            BillingError::Db(e) => ApiError::internal(e),
        }
    }
}

impl From<BillingError> for tonic::Status {
    fn from(err: BillingError) -> tonic::Status {
        ApiError::from(err).into_status()
    }
}

pub type Result<T, E = BillingError> = std::result::Result<T, E>;

//! The llm service's failures, each mapped to one error code.

use std::time::Duration;

use llmesh_engine::EngineError;
use llmesh_kit::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{0}")]
    Invalid(String),
    #[error("model {0:?} not found")]
    ModelNotFound(String),
    /// Something other than a model is missing; the message names it.
    #[error("{0}")]
    NotFound(String),
    #[error("a model with id {0:?} already exists")]
    AlreadyExists(String),
    #[error("a provider with id {0:?} already exists")]
    ProviderExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Exhausted(String, Duration),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<LlmError> for ApiError {
    fn from(err: LlmError) -> ApiError {
        let message = err.to_string();
        match err {
            LlmError::Invalid(_) => ApiError::invalid(message),
            LlmError::ModelNotFound(_) | LlmError::NotFound(_) => ApiError::not_found(message),
            LlmError::AlreadyExists(_) | LlmError::ProviderExists(_) => {
                ApiError::already_exists(message)
            }
            LlmError::Precondition(_) => ApiError::failed_precondition(message),
            LlmError::Exhausted(_, retry) => ApiError::exhausted(message, retry),
            LlmError::Unavailable(_) => ApiError::unavailable(message),
            LlmError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl From<LlmError> for tonic::Status {
    fn from(err: LlmError) -> tonic::Status {
        ApiError::from(err).into_status()
    }
}

impl From<llmesh_kit::fetch::FetchError> for LlmError {
    fn from(err: llmesh_kit::fetch::FetchError) -> LlmError {
        use llmesh_kit::fetch::FetchError;
        match err {
            FetchError::Invalid(m) => LlmError::Invalid(m),
            FetchError::Unavailable(m) => LlmError::Unavailable(m),
            FetchError::Internal(m) => LlmError::Internal(m),
        }
    }
}

impl From<EngineError> for LlmError {
    fn from(err: EngineError) -> LlmError {
        match err {
            EngineError::Invalid(m) => LlmError::Invalid(m),
            EngineError::QueueFull(n) => LlmError::Exhausted(
                format!("the inference queue is full ({n} waiting); retry shortly"),
                Duration::from_secs(2),
            ),
            EngineError::Load(m) => {
                LlmError::Precondition(format!("the model cannot be loaded: {m}"))
            }
            EngineError::Stopped => LlmError::Unavailable("the model was unloaded; retry".into()),
            EngineError::Compute(m) => LlmError::Internal(m),
        }
    }
}

pub type Result<T, E = LlmError> = std::result::Result<T, E>;

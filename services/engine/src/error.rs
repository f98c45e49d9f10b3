//! Engine failures.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file or directory could not be loaded.
    #[error("{0}")]
    Load(String),
    /// The request cannot be served as asked (too long, bad template, bad input).
    #[error("{0}")]
    Invalid(String),
    /// The queue is full; retry later.
    #[error("the inference queue is full ({0} waiting)")]
    QueueFull(usize),
    /// The engine stopped (shutdown or a fatal error).
    #[error("the inference engine is not running")]
    Stopped,
    /// A tensor operation failed.
    #[error("inference failed: {0}")]
    Compute(String),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Compute(e.to_string())
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

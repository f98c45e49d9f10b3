//! The one place where llmesh errors become gRPC status codes.

use std::time::Duration;

use tonic::{Code, Status};

use crate::request_id;

/// The small set of outcomes a service reports to its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    OutOfRange,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// Returns the gRPC code for this outcome; no other function maps codes.
    pub fn grpc_code(self) -> Code {
        match self {
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ErrorCode::FailedPrecondition => Code::FailedPrecondition,
            ErrorCode::OutOfRange => Code::OutOfRange,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Internal => Code::Internal,
        }
    }
}

/// An error on its way to a client: a code, a message safe to show, an optional retry hint,
/// and for internal errors the real cause, which is logged and never sent.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<Duration>,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    /// Builds an error with a client-facing message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }

    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AlreadyExists, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// Builds RESOURCE_EXHAUSTED with a hint of when to retry.
    pub fn exhausted(message: impl Into<String>, retry_after: Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::ResourceExhausted, message)
        }
    }

    /// Wraps a failure the client cannot act on; only "internal error" and a request id leave
    /// the server.
    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError {
            source: Some(source.into()),
            ..Self::new(ErrorCode::Internal, "internal error")
        }
    }

    /// Converts to a tonic status, logging internal causes with the request id.
    pub fn into_status(self) -> Status {
        let request_id = request_id::current();
        match self.code {
            ErrorCode::Internal => {
                let chain = self
                    .source
                    .as_deref()
                    .map(|e| error_chain(e))
                    .unwrap_or_else(|| self.message.clone());
                tracing::error!(request_id = %request_id, error = %chain, "internal error");
                Status::internal(format!("internal error (request id {request_id})"))
            }
            code => {
                let mut status = Status::new(code.grpc_code(), self.message);
                if let Some(retry) = self.retry_after {
                    // Whole seconds, rounded up, as in HTTP's Retry-After.
                    let secs = retry.as_millis().div_ceil(1000).max(1);
                    if let Ok(value) = secs.to_string().parse() {
                        status.metadata_mut().insert("retry-after", value);
                    }
                    if let Ok(value) = retry.as_millis().to_string().parse() {
                        status.metadata_mut().insert("retry-after-ms", value);
                    }
                }
                status
            }
        }
    }
}

/// How long a peer's RESOURCE_EXHAUSTED asks to wait (its `retry-after-ms`, as written
/// above), or `default` when it names none.
pub fn retry_after(status: &Status, default: std::time::Duration) -> std::time::Duration {
    status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map_or(default, std::time::Duration::from_millis)
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.message, error_chain(source.as_ref())),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        err.into_status()
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        ApiError::internal(err)
    }
}

/// Joins an error and its sources into one line for logs.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let status = ApiError::internal(std::io::Error::other("disk on fire")).into_status();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("internal error (request id "));
        assert!(!status.message().contains("disk"));
    }

    #[test]
    fn exhausted_carries_a_retry_hint() {
        let status = ApiError::exhausted("slow down", Duration::from_millis(1500)).into_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
    }
}

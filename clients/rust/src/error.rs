//! One error type for everything the SDK does: a status the server answered, a server that
//! could not be reached, or a local file that could not be read.

use std::fmt;
use std::time::Duration;

pub use tonic::Code;

/// The response header that carries the id the server logged the request under.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What went wrong with a call, as the server (or the SDK) saw it.
///
/// Prints as one sentence: the code, the server's message and the request id to quote when
/// asking an operator, e.g. `not found: no conversation 0190… (NOT_FOUND, request id 7f3a…)`.
#[derive(Debug, Clone)]
pub struct Error {
    code: Code,
    message: String,
    request_id: Option<String>,
    retry_after: Option<Duration>,
}

impl Error {
    /// An error the SDK raises itself (a bad URL, an unreadable file), with no request id.
    pub fn local(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            request_id: None,
            retry_after: None,
        }
    }

    /// The gRPC status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The server's message (lowercase, no trailing period), or the SDK's own.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The id the server logged this request under (from `x-request-id`), when it answered.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// How long the server asked the caller to wait before trying again (RESOURCE_EXHAUSTED
    /// from a full queue or a rate limit).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the caller's credentials were refused: sign in again or use another API key.
    pub fn is_unauthenticated(&self) -> bool {
        self.code == Code::Unauthenticated
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        let metadata = status.metadata();
        let text = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = text("retry-after-ms")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(Duration::from_millis)
            .or_else(|| {
                text("retry-after")
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Duration::from_secs)
            });
        let message = match status.message() {
            "" => default_message(status.code()).to_owned(),
            m => m.to_owned(),
        };
        Error {
            code: status.code(),
            message,
            request_id: text(REQUEST_ID_HEADER),
            retry_after,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        tonic::Status::new(e.code, e.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.message, code_name(self.code))?;
        if let Some(id) = &self.request_id {
            write!(f, ", request id {id}")?;
        }
        if let Some(wait) = self.retry_after {
            write!(f, ", retry after {} ms", wait.as_millis())?;
        }
        write!(f, ")")
    }
}

impl std::error::Error for Error {}

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The code as the gRPC specification spells it (`NOT_FOUND`), which is what server logs,
/// grpcurl and the other SDKs print.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What to say when a status came without a message (a proxy's, usually).
fn default_message(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "the server cannot be reached; check the URL and that llmesh runs",
        Code::DeadlineExceeded => "the call ran past its deadline",
        Code::Unauthenticated => "sign in again: the credentials were refused",
        Code::Unimplemented => {
            "the server does not offer this call (an older llmesh, or a proxy that does not route it)"
        }
        _ => "the call failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_one_sentence_with_the_request_id() {
        let mut status = tonic::Status::not_found("no conversation abc");
        status
            .metadata_mut()
            .insert(REQUEST_ID_HEADER, "7f3a".parse().expect("ascii"));
        status
            .metadata_mut()
            .insert("retry-after-ms", "1500".parse().expect("ascii"));
        let e = Error::from(status);
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.request_id(), Some("7f3a"));
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        assert_eq!(
            e.to_string(),
            "no conversation abc (NOT_FOUND, request id 7f3a, retry after 1500 ms)"
        );
    }

    #[test]
    fn an_empty_message_gets_a_readable_one() {
        let e = Error::from(tonic::Status::new(Code::Unavailable, ""));
        assert!(e.to_string().starts_with("the server cannot be reached"));
    }
}

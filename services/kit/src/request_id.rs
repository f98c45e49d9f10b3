//! A request id per RPC, visible to the code that turns errors into statuses.

use std::future::Future;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Returns the id of the request being served, or a fresh one outside any request
/// (for example in a stream polled after its handler returned).
pub fn current() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| new_id())
}

/// The header that carries a request id, in both directions.
pub const HEADER: &str = "x-request-id";

/// Returns the request id a client or an edge sent, when it is a plausible one (1-64
/// characters of letters, digits, '-', '_', '.'); anything else is replaced by a fresh id.
pub fn from_headers(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(HEADER)?.to_str().ok()?;
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| value.to_owned())
}

/// Makes a new request id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Runs `fut` with `id` as the current request id.
pub async fn scope<F: Future>(id: String, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

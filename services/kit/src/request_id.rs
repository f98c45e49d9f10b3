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

/// Makes a new request id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Runs `fut` with `id` as the current request id.
pub async fn scope<F: Future>(id: String, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

//! How chat reaches the llm service. In one process the call stays in memory; the server
//! composes an implementation over the llm service, the same trait a gRPC client would
//! implement in a split deployment.

use llmesh_kit::Principal;
use tokio::sync::{mpsc, oneshot};

use crate::error::Result;
use crate::store::Sampling;

/// One message of the context sent to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    Cancelled,
    Error,
}

/// The end of a reply, with what llm settled for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyDone {
    pub finish: Finish,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cost_micros: i64,
    pub error: Option<String>,
}

/// A piece of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyPiece {
    Delta(String),
    Done(ReplyDone),
}

#[async_trait::async_trait]
pub trait LlmClient: Send + Sync {
    /// Starts a generation billed to `principal`. Firing `stop` ends it early; the stream
    /// still ends with [`ReplyPiece::Done`] carrying the settled cost.
    async fn generate(
        &self,
        principal: &Principal,
        model: &str,
        turns: Vec<Turn>,
        sampling: &Sampling,
        stop: oneshot::Receiver<()>,
    ) -> Result<mpsc::Receiver<ReplyPiece>>;

    /// Counts the tokens of `turns` with the model's template; returns (tokens, context).
    async fn count_tokens(
        &self,
        principal: &Principal,
        model: &str,
        turns: Vec<Turn>,
    ) -> Result<(u32, u32)>;
}

//! Chat's [`LlmClient`] answered in memory by the llm service of this process.

use std::sync::Arc;

use llmesh_chat::error::ChatError;
use llmesh_chat::llm_client::{Finish, LlmClient, ReplyDone, ReplyPiece, Turn};
use llmesh_chat::store::Sampling;
use llmesh_engine::scheduler::FinishReason;
use llmesh_engine::template::Message;
use llmesh_kit::Principal;
use llmesh_llm::LlmService;
use llmesh_llm::error::LlmError;
use llmesh_llm::service::{GenEvent, Generation, Input};
use tokio::sync::{mpsc, oneshot};

pub struct InProcessLlm(pub Arc<LlmService>);

fn to_chat(e: LlmError) -> ChatError {
    match e {
        LlmError::Invalid(m) => ChatError::Invalid(m),
        LlmError::ModelNotFound(id) => ChatError::Invalid(format!(
            "model {id:?} does not exist; pick one from ListModels"
        )),
        LlmError::AlreadyExists(m) => ChatError::Invalid(m),
        LlmError::Precondition(m) => ChatError::Precondition(m),
        LlmError::Exhausted(m, retry) => ChatError::Exhausted(m, retry),
        LlmError::Unavailable(m) => ChatError::Unavailable(m),
        LlmError::Internal(m) => ChatError::Internal(m),
    }
}

fn messages(turns: Vec<Turn>) -> Vec<Message> {
    turns
        .into_iter()
        .map(|t| Message {
            role: t.role,
            content: t.content,
        })
        .collect()
}

#[async_trait::async_trait]
impl LlmClient for InProcessLlm {
    async fn generate(
        &self,
        principal: &Principal,
        model: &str,
        turns: Vec<Turn>,
        sampling: &Sampling,
        stop: oneshot::Receiver<()>,
    ) -> Result<mpsc::Receiver<ReplyPiece>, ChatError> {
        let pb = llmesh_chat::grpc::sampling_pb(sampling);
        let (params, max_tokens, stops) =
            llmesh_llm::grpc::sampling_params(&pb).map_err(|e| ChatError::Invalid(e.message))?;
        let mut rx = self
            .0
            .generate(
                principal,
                Generation {
                    model: model.to_owned(),
                    input: Input::Chat(messages(turns)),
                    sampling: params,
                    max_tokens,
                    stop: stops,
                    deadline: None,
                    stop_signal: Some(stop),
                },
            )
            .await
            .map_err(to_chat)?;
        let (tx, out) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let piece = match event {
                    GenEvent::Delta(d) => ReplyPiece::Delta(d),
                    GenEvent::Done(done) => ReplyPiece::Done(ReplyDone {
                        finish: match done.finish {
                            FinishReason::Stop => Finish::Stop,
                            FinishReason::Length => Finish::Length,
                            FinishReason::Cancelled => Finish::Cancelled,
                            FinishReason::Error => Finish::Error,
                        },
                        prompt_tokens: done.usage.prompt_tokens,
                        completion_tokens: done.usage.completion_tokens,
                        cost_micros: done.cost_micros,
                        error: done.error,
                    }),
                    GenEvent::DeadlineExceeded { completion_tokens } => {
                        ReplyPiece::Done(ReplyDone {
                            finish: Finish::Cancelled,
                            prompt_tokens: 0,
                            completion_tokens,
                            cost_micros: 0,
                            error: None,
                        })
                    }
                };
                // Keep draining even if chat stopped listening: the final message settles.
                let _ = tx.send(piece).await;
            }
        });
        Ok(out)
    }

    async fn count_tokens(
        &self,
        _principal: &Principal,
        model: &str,
        turns: Vec<Turn>,
    ) -> Result<(u32, u32), ChatError> {
        self.0
            .count_tokens(model, Input::Chat(messages(turns)))
            .await
            .map_err(to_chat)
    }
}

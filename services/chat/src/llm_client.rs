//! How chat reaches the llm service: through llm's contract and its generated client, in
//! memory when llm runs in this process and over the network when it runs elsewhere (the
//! [`Peer`] decides), with the same code either way.

use std::time::Duration;

use llmesh_kit::Principal;
use llmesh_kit::authn::forward;
use llmesh_kit::peer::{Peer, Transport};
use llmesh_proto::llm::v1 as pb;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

use crate::error::{ChatError, Result};
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

    /// Counts each text's tokens with `model`; returns the counts and, for an embedding
    /// model, the tokens one input may hold.
    async fn count_texts(
        &self,
        principal: &Principal,
        model: &str,
        texts: Vec<String>,
    ) -> Result<(Vec<u32>, u32)>;

    /// Embeds texts with `model` (billed to `principal`); returns unit vectors and the
    /// input tokens.
    async fn embed(
        &self,
        principal: &Principal,
        model: &str,
        texts: Vec<String>,
    ) -> Result<(Vec<Vec<f32>>, u32)>;
}

/// Chat's [`LlmClient`]: llm's contract through its generated client, over a [`Peer`]
/// transport, so the same code runs whether llm is in this process (in memory, past the
/// same authentication layer) or in another one. The user is forwarded with the service
/// credential and gains no rights on the way.
pub struct LlmPeer {
    peer: Peer,
    client: LlmServiceClient<Transport>,
    service_token: String,
}

impl LlmPeer {
    pub fn new(peer: Peer, service_token: String) -> Self {
        LlmPeer {
            client: LlmServiceClient::new(peer.transport()),
            peer,
            service_token,
        }
    }

    fn forwarded<T>(&self, mut req: tonic::Request<T>, p: &Principal) -> Result<tonic::Request<T>> {
        forward(&mut req, &self.service_token, p).map_err(|e| ChatError::Internal(e.message))?;
        Ok(req)
    }

    /// Asks llm to stop generation `id` (wherever it runs); its stream then ends with the
    /// final message. Failures are logged: the stream still ends when llm does.
    async fn stop(&self, p: &Principal, id: String) {
        let result = self
            .peer
            .unary(STOP_GENERATION, || {
                let req = self.forwarded(
                    self.peer.request(pb::StopGenerationRequest {
                        generation_id: id.clone(),
                    }),
                    p,
                );
                let mut client = self.client.clone();
                async move {
                    let req = req.map_err(|e| tonic::Status::internal(e.to_string()))?;
                    client.stop_generation(req).await
                }
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(generation = %id, error = %e.message(), "asking llm to stop a reply failed");
        }
    }
}

const STOP_GENERATION: &str = "/llmesh.llm.v1.LlmService/StopGeneration";
const COUNT_TOKENS: &str = "/llmesh.llm.v1.LlmService/CountTokens";
const EMBED: &str = "/llmesh.llm.v1.LlmService/Embed";

fn chat_input(turns: Vec<Turn>) -> pb::ChatInput {
    pb::ChatInput {
        messages: turns
            .into_iter()
            .map(|t| pb::ChatMessage {
                role: match t.role.as_str() {
                    "system" => pb::ChatRole::System,
                    "assistant" => pb::ChatRole::Assistant,
                    _ => pb::ChatRole::User,
                } as i32,
                content: t.content,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// What an llm answer means for a chat request.
fn from_status(s: tonic::Status) -> ChatError {
    let message = s.message().to_owned();
    match s.code() {
        Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange => {
            ChatError::Invalid(message)
        }
        Code::NotFound => ChatError::Invalid(format!("{message}; pick a model from ListModels")),
        Code::FailedPrecondition => ChatError::Precondition(message),
        Code::PermissionDenied => ChatError::PermissionDenied(message),
        Code::ResourceExhausted => {
            let ms = s
                .metadata()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            ChatError::Exhausted(message, Duration::from_millis(ms))
        }
        // A credential the peer refuses is a deployment mistake, not the user's.
        Code::Unauthenticated => ChatError::Internal(format!(
            "the llm service refused chat's service credential ({message}): peers.service_token must be the same in every process"
        )),
        Code::Internal => ChatError::Internal(format!("the llm service failed: {message}")),
        Code::DeadlineExceeded => {
            ChatError::Unavailable("the llm service did not answer in time".into())
        }
        _ => ChatError::Unavailable(message),
    }
}

fn finish(reason: i32) -> Finish {
    match pb::FinishReason::try_from(reason) {
        Ok(pb::FinishReason::Stop | pb::FinishReason::ToolCalls) => Finish::Stop,
        Ok(pb::FinishReason::Length) => Finish::Length,
        Ok(pb::FinishReason::Cancelled) => Finish::Cancelled,
        _ => Finish::Error,
    }
}

fn failed(error: String) -> ReplyPiece {
    ReplyPiece::Done(ReplyDone {
        finish: Finish::Error,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_micros: 0,
        error: Some(error),
    })
}

/// The end of a reply whose llm stream broke: stopped when text had streamed, else failed.
fn lost(streamed: bool, error: String) -> ReplyPiece {
    tracing::warn!(error = %error, streamed, "the llm stream of a reply broke");
    if streamed {
        ReplyPiece::Done(ReplyDone {
            finish: Finish::Cancelled,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_micros: 0,
            error: Some(error),
        })
    } else {
        failed(error)
    }
}

#[async_trait::async_trait]
impl LlmClient for LlmPeer {
    async fn generate(
        &self,
        principal: &Principal,
        model: &str,
        turns: Vec<Turn>,
        sampling: &Sampling,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<mpsc::Receiver<ReplyPiece>> {
        let generation_id = uuid::Uuid::new_v4().simple().to_string();
        let req = self.forwarded(
            self.peer.stream_request(pb::GenerateRequest {
                model: model.to_owned(),
                input: Some(pb::generate_request::Input::Chat(chat_input(turns))),
                sampling: Some(crate::grpc::sampling_pb(sampling)),
                generation_id: generation_id.clone(),
            }),
            principal,
        )?;
        let mut stream = self
            .client
            .clone()
            .generate(req)
            .await
            .map_err(|s| from_status(self.peer.error(s)))?
            .into_inner();
        let (tx, out) = mpsc::channel(64);
        let this = LlmPeer {
            peer: self.peer.clone(),
            client: self.client.clone(),
            service_token: self.service_token.clone(),
        };
        let principal = principal.clone();
        tokio::spawn(async move {
            let mut stopping = false;
            let mut streamed = false;
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    fired = &mut stop, if !stopping => {
                        stopping = true;
                        // A dropped sender is not a stop request.
                        if fired.is_ok() {
                            this.stop(&principal, generation_id.clone()).await;
                        }
                        continue;
                    }
                };
                let piece = match message {
                    Ok(Some(m)) => match m.event {
                        Some(pb::generate_response::Event::Delta(d)) => {
                            streamed = true;
                            ReplyPiece::Delta(d)
                        }
                        Some(pb::generate_response::Event::Done(d)) => {
                            let usage = d.usage.unwrap_or_default();
                            ReplyPiece::Done(ReplyDone {
                                finish: finish(d.finish_reason),
                                prompt_tokens: usage.prompt_tokens,
                                completion_tokens: usage.completion_tokens,
                                cost_micros: d.cost.map_or(0, |c| c.micros),
                                error: (!d.error.is_empty()).then_some(d.error),
                            })
                        }
                        // Chat offers no tools, so no calls come back.
                        Some(pb::generate_response::Event::ToolCall(_)) | None => continue,
                    },
                    // llm went away mid-reply (its hold is released by billing's sweeper):
                    // what streamed is kept as a stopped reply; before any text, it failed.
                    Ok(None) => lost(
                        streamed,
                        "the llm service ended the reply without a final message".into(),
                    ),
                    Err(s) => lost(streamed, this.peer.error(s).message().to_owned()),
                };
                let last = matches!(piece, ReplyPiece::Done(_));
                // Keep reading even if chat stopped listening: the final message settles.
                let _ = tx.send(piece).await;
                if last {
                    break;
                }
            }
        });
        Ok(out)
    }

    async fn count_tokens(
        &self,
        principal: &Principal,
        model: &str,
        turns: Vec<Turn>,
    ) -> Result<(u32, u32)> {
        let input = chat_input(turns);
        let reply = self
            .peer
            .unary(COUNT_TOKENS, || {
                let req = self.forwarded(
                    self.peer.request(pb::CountTokensRequest {
                        model: model.to_owned(),
                        input: Some(pb::count_tokens_request::Input::Chat(input.clone())),
                    }),
                    principal,
                );
                let mut client = self.client.clone();
                async move {
                    let req = req.map_err(|e| tonic::Status::internal(e.to_string()))?;
                    client.count_tokens(req).await
                }
            })
            .await
            .map_err(from_status)?;
        Ok((reply.tokens, reply.context_length))
    }

    async fn count_texts(
        &self,
        principal: &Principal,
        model: &str,
        texts: Vec<String>,
    ) -> Result<(Vec<u32>, u32)> {
        let n = texts.len();
        let list = pb::TextList { texts };
        let reply = self
            .peer
            .unary(COUNT_TOKENS, || {
                let req = self.forwarded(
                    self.peer.request(pb::CountTokensRequest {
                        model: model.to_owned(),
                        input: Some(pb::count_tokens_request::Input::Texts(list.clone())),
                    }),
                    principal,
                );
                let mut client = self.client.clone();
                async move {
                    let req = req.map_err(|e| tonic::Status::internal(e.to_string()))?;
                    client.count_tokens(req).await
                }
            })
            .await
            .map_err(from_status)?;
        if reply.counts.len() != n {
            return Err(ChatError::Unavailable(format!(
                "llm counted {} of {n} texts; is it older than this chat?",
                reply.counts.len()
            )));
        }
        Ok((reply.counts, reply.context_length))
    }

    async fn embed(
        &self,
        principal: &Principal,
        model: &str,
        texts: Vec<String>,
    ) -> Result<(Vec<Vec<f32>>, u32)> {
        let n = texts.len();
        let reply = self
            .peer
            .unary(EMBED, || {
                let req = self.forwarded(
                    self.peer.request(pb::EmbedRequest {
                        model: model.to_owned(),
                        texts: texts.clone(),
                    }),
                    principal,
                );
                let mut client = self.client.clone();
                async move {
                    let req = req.map_err(|e| tonic::Status::internal(e.to_string()))?;
                    client.embed(req).await
                }
            })
            .await
            .map_err(from_status)?;
        if reply.embeddings.len() != n {
            return Err(ChatError::Unavailable(format!(
                "llm embedded {} of {n} texts",
                reply.embeddings.len()
            )));
        }
        Ok((
            reply.embeddings.into_iter().map(|e| e.values).collect(),
            reply.prompt_tokens,
        ))
    }
}

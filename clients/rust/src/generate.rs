//! Generation straight from a model, without a stored conversation: text deltas, then the
//! finish reason, usage, cost and timings.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use llmesh_proto::llm::v1 as pb;
use pb::generate_response::Event;

use crate::Client;
use crate::error::{Code, Error, Result};

/// A system message.
pub fn system(content: impl Into<String>) -> pb::ChatMessage {
    message(pb::ChatRole::System, content)
}

/// A user message.
pub fn user(content: impl Into<String>) -> pb::ChatMessage {
    message(pb::ChatRole::User, content)
}

/// An assistant message (an earlier turn).
pub fn assistant(content: impl Into<String>) -> pb::ChatMessage {
    message(pb::ChatRole::Assistant, content)
}

fn message(role: pb::ChatRole, content: impl Into<String>) -> pb::ChatMessage {
    pb::ChatMessage {
        role: role as i32,
        content: content.into(),
        ..Default::default()
    }
}

/// A generation under way: a `Stream` of text deltas (or [`Generation::next_delta`]), then
/// [`Generation::done`]. Dropping it hangs up, which stops the generation; only the tokens
/// produced are charged.
pub struct Generation {
    stream: tonic::Streaming<pb::GenerateResponse>,
    client: Client,
    generation_id: String,
    done: Option<pb::GenerateDone>,
    text: String,
    tool_calls: Vec<pb::ToolCall>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("generation_id", &self.generation_id)
            .field("text", &self.text)
            .field("tool_calls", &self.tool_calls)
            .field("done", &self.done)
            .finish()
    }
}

impl Generation {
    /// The next piece of text; `None` at the end (then [`Generation::done`] is set).
    pub async fn next_delta(&mut self) -> Option<Result<String>> {
        futures::StreamExt::next(self).await
    }

    /// Reads to the end and returns the final report. A generation that failed on the
    /// server (FINISH_REASON_ERROR) is an error with the server's words.
    pub async fn finish(mut self) -> Result<pb::GenerateDone> {
        while let Some(delta) = self.next_delta().await {
            delta?;
        }
        let done = self.done.ok_or_else(|| {
            Error::local(Code::Internal, "the generation ended without its report")
        })?;
        if done.finish_reason == pb::FinishReason::Error as i32 {
            return Err(Error::local(Code::Internal, done.error));
        }
        Ok(done)
    }

    /// Stops the generation from another call (also through proxies that do not pass a
    /// hang-up on). The stream then ends with FINISH_REASON_CANCELLED and what was
    /// charged.
    pub async fn stop(&self) -> Result<()> {
        self.client
            .llm()
            .stop_generation(pb::StopGenerationRequest {
                generation_id: self.generation_id.clone(),
            })
            .await?;
        Ok(())
    }

    /// The finish reason, usage, cost and timings, once the stream has ended.
    pub fn done(&self) -> Option<&pb::GenerateDone> {
        self.done.as_ref()
    }

    /// The text received so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The tool calls received so far, their pieces joined (hosted models given
    /// `ChatInput.tools`; the reply then ends with FINISH_REASON_TOOL_CALLS).
    pub fn tool_calls(&self) -> &[pb::ToolCall] {
        &self.tool_calls
    }

    /// The id [`Generation::stop`] names the generation by.
    pub fn generation_id(&self) -> &str {
        &self.generation_id
    }
}

impl Stream for Generation {
    type Item = Result<String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<String>>> {
        loop {
            let response = match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(status.into()))),
                Poll::Ready(Some(Ok(response))) => response,
            };
            match response.event {
                Some(Event::Delta(text)) => {
                    self.text.push_str(&text);
                    return Poll::Ready(Some(Ok(text)));
                }
                Some(Event::Done(done)) => self.done = Some(done),
                // llm numbers calls from 0 and sends at most 64 of them.
                Some(Event::ToolCall(piece)) if piece.index < 64 => {
                    let index = piece.index as usize;
                    if self.tool_calls.len() <= index {
                        self.tool_calls.resize_with(index + 1, Default::default);
                    }
                    let call = &mut self.tool_calls[index];
                    if !piece.id.is_empty() {
                        call.id = piece.id;
                    }
                    if !piece.name.is_empty() {
                        call.name = piece.name;
                    }
                    call.arguments_json.push_str(&piece.arguments);
                }
                Some(Event::ToolCall(_)) => {}
                None => {}
            }
        }
    }
}

/// A random generation id: 32 hexadecimal characters.
fn generation_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Client {
    /// Generates a reply to `messages` with `model` and its default sampling.
    pub async fn generate(
        &self,
        model: &str,
        messages: impl IntoIterator<Item = pb::ChatMessage>,
    ) -> Result<Generation> {
        self.generate_with(pb::GenerateRequest {
            model: model.to_owned(),
            input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
                messages: messages.into_iter().collect(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
    }

    /// Like [`Client::generate`], with every field of the request (a raw prompt, sampling).
    /// A generation id is chosen when the request has none, so [`Generation::stop`] works.
    pub async fn generate_with(&self, mut request: pb::GenerateRequest) -> Result<Generation> {
        if request.generation_id.is_empty() {
            request.generation_id = generation_id();
        }
        let generation_id = request.generation_id.clone();
        let stream = self.llm().generate(request).await?.into_inner();
        Ok(Generation {
            stream,
            client: self.clone(),
            generation_id,
            done: None,
            text: String::new(),
            tool_calls: Vec::new(),
        })
    }
}

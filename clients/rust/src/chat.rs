//! Conversations and replies: a reply streams as text deltas and ends with the stored
//! assistant message, which carries the usage and the cost.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use llmesh_proto::chat::v1 as pb;
use pb::reply_event::Event;

use crate::Client;
use crate::error::{Code, Error, Result};

type Events = Pin<Box<dyn Stream<Item = Result<pb::ReplyEvent>> + Send>>;

/// A reply being generated: iterate its text with [`Reply::next_delta`] (or as a
/// `Stream` of deltas), then read the stored message with [`Reply::message`]. Dropping it
/// before the end hangs up, which stops the reply; the server keeps what was produced
/// and charges only for that.
pub struct Reply {
    events: Events,
    client: Client,
    conversation_id: String,
    user: Option<pb::Message>,
    assistant: Option<pb::Message>,
    text: String,
    citations: Vec<pb::Citation>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("conversation_id", &self.conversation_id)
            .field("text", &self.text)
            .field("ended", &self.assistant.is_some())
            .finish()
    }
}

impl Reply {
    fn new<T, F>(
        client: &Client,
        conversation_id: String,
        stream: tonic::Streaming<T>,
        event: F,
    ) -> Reply
    where
        T: Send + 'static,
        F: Fn(T) -> Option<pb::ReplyEvent> + Send + 'static,
    {
        let events = stream.filter_map(move |item| {
            let mapped = match item {
                Ok(message) => event(message).map(Ok),
                Err(status) => Some(Err(Error::from(status))),
            };
            futures::future::ready(mapped)
        });
        Reply {
            events: Box::pin(events),
            client: client.clone(),
            conversation_id,
            user: None,
            citations: Vec::new(),
            assistant: None,
            text: String::new(),
        }
    }

    /// The next piece of the reply's text; `None` once the reply has ended (then
    /// [`Reply::message`] holds it).
    pub async fn next_delta(&mut self) -> Option<Result<String>> {
        self.next().await
    }

    /// Reads the reply to its end and returns the stored assistant message.
    pub async fn finish(mut self) -> Result<pb::Message> {
        while let Some(delta) = self.next().await {
            delta?;
        }
        self.assistant
            .ok_or_else(|| Error::local(Code::Internal, "the reply ended without its message"))
    }

    /// Asks the server to stop this reply (from any connection; the stream then ends with
    /// the message as stopped, its text what was produced). Returns whether a reply was
    /// still being generated.
    pub async fn stop(&self) -> Result<bool> {
        let answer = self
            .client
            .chat()
            .stop_reply(pb::StopReplyRequest {
                conversation_id: self.conversation_id.clone(),
            })
            .await?;
        Ok(answer.into_inner().stopped)
    }

    /// The stored user message (for SendMessage and EditMessage), once the server sent it.
    pub fn user_message(&self) -> Option<&pb::Message> {
        self.user.as_ref()
    }

    /// The stored assistant message, with usage and cost, once the reply has ended.
    pub fn message(&self) -> Option<&pb::Message> {
        self.assistant.as_ref()
    }

    /// The text received so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The knowledge sources the reply was given (empty without knowledge collections).
    pub fn citations(&self) -> &[pb::Citation] {
        &self.citations
    }

    /// The conversation the reply belongs to.
    pub fn conversation_id(&self) -> &str {
        &self.conversation_id
    }
}

impl Stream for Reply {
    type Item = Result<String>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<String>>> {
        use std::task::Poll;
        loop {
            let event = match self.events.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(event))) => event,
            };
            match event.event {
                Some(Event::Delta(text)) => {
                    self.text.push_str(&text);
                    return Poll::Ready(Some(Ok(text)));
                }
                Some(Event::UserMessage(m)) => self.user = Some(m),
                Some(Event::Citations(list)) => self.citations = list.citations,
                Some(Event::AssistantMessage(m)) => {
                    // The stored text is the whole reply, whatever the deltas said.
                    self.text = m.content.clone();
                    self.assistant = Some(m);
                }
                None => {}
            }
        }
    }
}

impl Client {
    /// Starts a conversation with the server's default model and settings.
    pub async fn create_conversation(&self, title: &str) -> Result<pb::Conversation> {
        self.create_conversation_with(pb::CreateConversationRequest {
            title: title.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// Starts a conversation with the given model, assistant, system prompt or sampling.
    pub async fn create_conversation_with(
        &self,
        request: pb::CreateConversationRequest,
    ) -> Result<pb::Conversation> {
        self.chat()
            .create_conversation(request)
            .await?
            .into_inner()
            .conversation
            .ok_or_else(|| Error::local(Code::Internal, "the server sent no conversation"))
    }

    /// Adds a user message after the conversation's active message and streams the reply.
    pub async fn send_message(&self, conversation_id: &str, content: &str) -> Result<Reply> {
        self.send(pb::SendMessageRequest {
            conversation_id: conversation_id.to_owned(),
            content: content.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// Like [`Client::send_message`], with every field of the request (parent, model,
    /// sampling).
    pub async fn send(&self, request: pb::SendMessageRequest) -> Result<Reply> {
        let conversation_id = request.conversation_id.clone();
        let stream = self.chat().send_message(request).await?.into_inner();
        Ok(Reply::new(self, conversation_id, stream, |m| m.event))
    }

    /// Generates another reply to the user message before `message_id` (a new branch).
    pub async fn regenerate(&self, conversation_id: &str, message_id: &str) -> Result<Reply> {
        let stream = self
            .chat()
            .regenerate(pb::RegenerateRequest {
                message_id: message_id.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(Reply::new(self, conversation_id.to_owned(), stream, |m| {
            m.event
        }))
    }

    /// Replaces a user message with `content` (a new branch) and streams the new reply.
    pub async fn edit_message(
        &self,
        conversation_id: &str,
        message_id: &str,
        content: &str,
    ) -> Result<Reply> {
        let stream = self
            .chat()
            .edit_message(pb::EditMessageRequest {
                message_id: message_id.to_owned(),
                content: content.to_owned(),
            })
            .await?
            .into_inner();
        Ok(Reply::new(self, conversation_id.to_owned(), stream, |m| {
            m.event
        }))
    }
}

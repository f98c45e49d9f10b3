//! What every provider adapter shares: the call llmesh makes, the events it reads back,
//! sending a request with the provider's timeout, and turning a provider's refusal into
//! the error code a llmesh client acts on.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use llmesh_engine::scheduler::FinishReason;

use super::sse::{self, SseError, SseEvent};
use super::{Provider, ProviderKind, Secret, Target};
use crate::error::{LlmError, Result};
use crate::generate::Input;
use crate::tools::{Role, ToolCall};

/// One generation as sent to a provider.
#[derive(Debug, Clone)]
pub struct ChatCall {
    /// The provider's own model name.
    pub model: String,
    pub input: Input,
    /// Always sent: providers differ in their defaults and the hold assumes this bound.
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// What a provider streams back.
#[derive(Debug, Clone, PartialEq)]
pub enum WireEvent {
    Delta(String),
    /// A piece of tool call `index`: its id and name on the first piece, then pieces of
    /// the arguments' JSON.
    ToolCall {
        index: u32,
        call: ToolCall,
    },
    /// Usage as the provider reports it; a later report replaces an earlier one field by
    /// field.
    Usage {
        prompt: Option<u32>,
        completion: Option<u32>,
    },
    Finish(FinishReason),
}

pub type WireStream = Pin<Box<dyn Stream<Item = Result<WireEvent>> + Send>>;

/// Starts a streamed generation; the stream ends after the provider's last event. Dropping
/// it closes the connection, which stops the provider's work.
pub async fn start_chat(
    http: &reqwest::Client,
    target: &Target,
    call: ChatCall,
) -> Result<WireStream> {
    match target.provider.kind {
        ProviderKind::OpenAiCompatible => super::openai::chat(http, target, call).await,
        ProviderKind::Anthropic => super::anthropic::chat(http, target, call).await,
        ProviderKind::Gemini => super::gemini::chat(http, target, call).await,
    }
}

/// Embeds texts with a provider's embedding model; vectors come back L2-normalised with
/// the provider's count of input tokens.
pub async fn embed(
    http: &reqwest::Client,
    target: &Target,
    texts: &[String],
) -> Result<(Vec<Vec<f32>>, u32)> {
    match target.provider.kind {
        ProviderKind::OpenAiCompatible => super::openai::embed(http, target, texts).await,
        other => Err(LlmError::Invalid(format!(
            "{} providers have no embeddings in llmesh; use an openai-compatible provider or a local model",
            other.as_str()
        ))),
    }
}

/// The names of the models a provider lists.
pub async fn list_models(
    http: &reqwest::Client,
    provider: &Provider,
    secret: &Secret,
) -> Result<Vec<String>> {
    match provider.kind {
        ProviderKind::OpenAiCompatible => super::openai::list(http, provider, secret).await,
        ProviderKind::Anthropic => super::anthropic::list(http, provider, secret).await,
        ProviderKind::Gemini => super::gemini::list(http, provider, secret).await,
    }
}

/// `base` joined with `path`, without doubling a version segment the admin already put in
/// the base URL ("https://api.anthropic.com/v1" + "v1/messages").
pub fn endpoint(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if let Some((version, rest)) = path.split_once('/')
        && base.ends_with(&format!("/{version}"))
    {
        return format!("{base}/{rest}");
    }
    format!("{base}/{path}")
}

/// Adds the admin's extra headers.
pub fn with_headers(mut req: reqwest::RequestBuilder, secret: &Secret) -> reqwest::RequestBuilder {
    for (name, value) in &secret.headers {
        req = req.header(name, value);
    }
    req
}

/// Sends a request, waiting at most the provider's timeout for the response head; a
/// status other than 2xx becomes the matching error.
pub async fn send(provider: &Provider, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
    let sent = tokio::time::timeout(provider.timeout, req.send()).await;
    let response = match sent {
        Err(_) => {
            return Err(LlmError::Unavailable(format!(
                "provider {} did not answer within {} s; retry, or raise its timeout_seconds",
                provider.id,
                provider.timeout.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(unreachable(provider, &e)),
        Ok(Ok(r)) => r,
    };
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let retry = retry_after(response.headers());
    let body = tokio::time::timeout(Duration::from_secs(5), response.text())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    Err(refusal(&provider.id, status.as_u16(), retry, &body))
}

fn unreachable(provider: &Provider, e: &reqwest::Error) -> LlmError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot be reached"
    } else {
        "failed"
    };
    // The error text can carry the URL, never a key: keys travel in headers.
    LlmError::Unavailable(format!(
        "provider {} {what} at {}: {}",
        provider.id,
        provider.base_url,
        error_chain(e)
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Seconds from a Retry-After header (or the providers' own reset headers).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    ["retry-after", "retry-after-ms"].iter().find_map(|name| {
        let v = headers
            .get(*name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?;
        let secs = if *name == "retry-after-ms" {
            v / 1000.0
        } else {
            v
        };
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.clamp(1.0, 3600.0)))
    })
}

/// The message inside a provider's error body: `{"error": {"message": …}}` (OpenAI,
/// Anthropic, Gemini, llama.cpp) or `{"error": "…"}` (Ollama), else the body's start.
pub fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        let e = v.get("error").unwrap_or(v);
        e.get("message")
            .and_then(|m| m.as_str())
            .or_else(|| e.as_str())
            .or_else(|| v.get("message").and_then(|m| m.as_str()))
            .map(str::to_owned)
    });
    let text = message.unwrap_or_else(|| body.trim().to_owned());
    let mut out: String = text.chars().take(300).collect();
    if out.is_empty() {
        out = "no details".into();
    }
    out
}

/// What a provider's HTTP refusal means for the llmesh client.
pub fn refusal(provider: &str, status: u16, retry: Option<Duration>, body: &str) -> LlmError {
    let message = error_message(body);
    match status {
        401 | 403 => LlmError::Precondition(format!(
            "provider {provider} refused llmesh's credentials ({status}: {message}); an admin can set a new api_key with UpdateProvider"
        )),
        402 => LlmError::Precondition(format!(
            "provider {provider} refused for billing reasons on its side ({status}: {message})"
        )),
        404 => LlmError::Precondition(format!(
            "provider {provider} does not offer this model ({status}: {message}); TestProvider lists what it offers"
        )),
        429 => LlmError::Exhausted(
            format!("provider {provider} is rate limiting llmesh ({message}); retry later"),
            retry.unwrap_or(Duration::from_secs(5)),
        ),
        400 | 413 | 422 => LlmError::Invalid(format!(
            "provider {provider} refused the request ({status}): {message}"
        )),
        _ => LlmError::Unavailable(format!(
            "provider {provider} failed ({status}: {message}); retry shortly"
        )),
    }
}

/// The SSE events of a streamed response, errors mapped for the provider.
pub fn sse_events(
    provider: &Provider,
    response: reqwest::Response,
) -> impl Stream<Item = Result<SseEvent>> + Send + use<> {
    let id = provider.id.clone();
    let body = response
        .bytes_stream()
        .map(|c| c.map_err(|e| error_chain(&e)));
    sse::events(body, provider.timeout).map(move |e| {
        e.map_err(|e| match e {
            SseError::Idle(d) => LlmError::Unavailable(format!(
                "provider {id} sent nothing for {} s in the middle of a stream",
                d.as_secs()
            )),
            SseError::Body(m) => {
                LlmError::Unavailable(format!("provider {id}'s stream broke: {m}"))
            }
            SseError::TooLarge => {
                LlmError::Unavailable(format!("provider {id} sent an event larger than 4 MiB"))
            }
        })
    })
}

/// A JSON body of a streamed event, or an error naming the provider.
pub fn parse_json(provider: &str, data: &str) -> Result<serde_json::Value> {
    serde_json::from_str(data).map_err(|e| {
        LlmError::Unavailable(format!(
            "provider {provider} streamed an event that is not JSON ({e})"
        ))
    })
}

/// A streamed error event, mapped by its type where the provider names one.
pub fn stream_error(provider: &str, value: &serde_json::Value) -> LlmError {
    let e = value.get("error").unwrap_or(value);
    let message = error_message(&value.to_string());
    let kind = e
        .get("type")
        .or_else(|| e.get("status"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let code = e.get("code").and_then(|c| c.as_u64()).unwrap_or(0);
    match (kind, code) {
        ("rate_limit_error" | "RESOURCE_EXHAUSTED", _) | (_, 429) => LlmError::Exhausted(
            format!("provider {provider} is rate limiting llmesh ({message}); retry later"),
            Duration::from_secs(5),
        ),
        (
            "authentication_error" | "permission_error" | "PERMISSION_DENIED" | "UNAUTHENTICATED",
            _,
        )
        | (_, 401 | 403) => refusal(provider, 401, None, &value.to_string()),
        ("invalid_request_error" | "INVALID_ARGUMENT", _) | (_, 400) => {
            refusal(provider, 400, None, &value.to_string())
        }
        _ => LlmError::Unavailable(format!(
            "provider {provider} failed in the middle of the stream: {message}"
        )),
    }
}

/// A piece of a turn, for providers whose messages hold typed blocks.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    /// A call the assistant made.
    Call(ToolCall),
    /// A tool's result: the call's id, its function's name (where the chat knows it) and
    /// the result text.
    Result {
        id: String,
        name: String,
        content: String,
    },
}

/// A turn of a provider that takes the system prompt on its own and alternating user
/// and assistant turns: tool results travel in user turns.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// "user" or "assistant".
    pub role: &'static str,
    pub parts: Vec<Part>,
}

/// The messages of a chat call split into a system text and alternating turns, for
/// providers that take the system prompt on its own; consecutive turns of one role are
/// joined (texts with a blank line between them) and a chat that would open with the
/// assistant opens with a short user turn.
pub fn split_system(input: &Input) -> (String, Vec<Block>) {
    let chat = match input {
        Input::Prompt(text) => {
            return (
                String::new(),
                vec![Block {
                    role: "user",
                    parts: vec![Part::Text(text.clone())],
                }],
            );
        }
        Input::Chat(chat) => chat,
    };
    let mut system = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    for t in &chat.turns {
        let (role, mut parts) = match t.role {
            Role::System => {
                system.push(t.content.clone());
                continue;
            }
            Role::User => ("user", vec![Part::Text(t.content.clone())]),
            Role::Assistant => {
                let mut parts = Vec::new();
                if !t.content.is_empty() || t.tool_calls.is_empty() {
                    parts.push(Part::Text(t.content.clone()));
                }
                parts.extend(t.tool_calls.iter().cloned().map(Part::Call));
                ("assistant", parts)
            }
            Role::Tool => (
                "user",
                vec![Part::Result {
                    id: t.tool_call_id.clone(),
                    name: chat
                        .call_name(&t.tool_call_id)
                        .unwrap_or_default()
                        .to_owned(),
                    content: t.content.clone(),
                }],
            ),
        };
        match blocks.last_mut() {
            Some(last) if last.role == role => {
                // Two texts in a row read as one, as a person would have written them.
                if let (Some(Part::Text(prev)), Some(Part::Text(next))) =
                    (last.parts.last_mut(), parts.first())
                {
                    prev.push_str("\n\n");
                    prev.push_str(next);
                    parts.remove(0);
                }
                last.parts.append(&mut parts);
            }
            _ => blocks.push(Block { role, parts }),
        }
    }
    if blocks.first().is_none_or(|b| b.role == "assistant") {
        blocks.insert(
            0,
            Block {
                role: "user",
                parts: vec![Part::Text("Continue.".into())],
            },
        );
    }
    (system.join("\n\n"), blocks)
}

/// Arguments JSON text as a JSON object (what Anthropic and Gemini take): an empty text
/// is no arguments; text that is not an object is kept under "value".
pub fn arguments_object(text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return serde_json::json!({});
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v.is_object() => v,
        Ok(v) => serde_json::json!({ "value": v }),
        Err(_) => serde_json::json!({ "value": text }),
    }
}

/// Scales a vector to unit length (the contract's promise for every embedding).
pub fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_do_not_double_the_version() {
        assert_eq!(
            endpoint("https://api.anthropic.com", "v1/messages"),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            endpoint("https://api.anthropic.com/v1/", "v1/messages"),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            endpoint("http://h:8080/v1", "chat/completions"),
            "http://h:8080/v1/chat/completions"
        );
    }

    #[test]
    fn refusals_map_to_the_codes_clients_act_on() {
        let body =
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#;
        match refusal("openai", 401, None, body) {
            LlmError::Precondition(m) => {
                assert!(
                    m.contains("provider openai") && m.contains("Incorrect API key"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        match refusal("openai", 429, Some(Duration::from_secs(7)), "{}") {
            LlmError::Exhausted(_, retry) => assert_eq!(retry, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refusal("x", 503, None, "busy"),
            LlmError::Unavailable(_)
        ));
        assert!(matches!(
            refusal("x", 400, None, "{}"),
            LlmError::Invalid(_)
        ));
        assert_eq!(
            error_message(r#"{"error":"model not found"}"#),
            "model not found"
        );
    }

    #[test]
    fn system_prompts_split_and_turns_alternate() {
        use crate::tools::{Chat, Turn};
        let (system, turns) = split_system(&Input::Chat(Chat::plain(vec![
            Turn::new(Role::System, "Be brief."),
            Turn::new(Role::Assistant, "Hi"),
            Turn::new(Role::User, "a"),
            Turn::new(Role::User, "b"),
        ])));
        assert_eq!(system, "Be brief.");
        assert_eq!(turns[0].role, "user");
        assert_eq!(turns[1].parts, vec![Part::Text("Hi".into())]);
        assert_eq!(turns[2].parts, vec![Part::Text("a\n\nb".into())]);
    }

    #[test]
    fn tool_results_travel_in_user_turns_after_the_call() {
        use crate::tools::{Chat, Turn};
        let call = ToolCall {
            id: "c1".into(),
            name: "lookup".into(),
            arguments: r#"{"q":"x"}"#.into(),
        };
        let mut asked = Turn::new(Role::Assistant, "");
        asked.tool_calls = vec![call.clone()];
        let mut result = Turn::new(Role::Tool, "42");
        result.tool_call_id = "c1".into();
        let (_, turns) = split_system(&Input::Chat(Chat::plain(vec![
            Turn::new(Role::User, "q"),
            asked,
            result,
            Turn::new(Role::User, "and?"),
        ])));
        assert_eq!(turns.len(), 3);
        assert_eq!(turns[1].parts, vec![Part::Call(call)]);
        assert_eq!(
            turns[2].parts,
            vec![
                Part::Result {
                    id: "c1".into(),
                    name: "lookup".into(),
                    content: "42".into()
                },
                Part::Text("and?".into())
            ]
        );
        assert_eq!(arguments_object(""), serde_json::json!({}));
        assert_eq!(arguments_object("[1]"), serde_json::json!({"value": [1]}));
    }
}

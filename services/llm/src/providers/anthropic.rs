//! The `anthropic` adapter: the Messages API streamed (message_start with the input
//! tokens, content_block_delta text, tool_use blocks with their input_json_delta pieces,
//! message_delta with the stop reason and output tokens, error events mid-stream) and
//! /v1/models.

use futures::StreamExt;
use llmesh_engine::scheduler::FinishReason;
use serde_json::{Value, json};

use super::sse::SseEvent;
use super::wire::{self, Block, ChatCall, Part, WireEvent, WireStream};
use super::{Provider, Secret, Target};
use crate::error::{LlmError, Result};
use crate::generate::Input;
use crate::tools::{ToolCall, ToolChoice};

/// The API version llmesh speaks.
pub const VERSION: &str = "2023-06-01";

fn authorised(req: reqwest::RequestBuilder, secret: &Secret) -> reqwest::RequestBuilder {
    let req = wire::with_headers(req, secret).header("anthropic-version", VERSION);
    if secret.api_key.is_empty() {
        req
    } else {
        req.header("x-api-key", &secret.api_key)
    }
}

/// The request body of a call.
pub fn body(call: &ChatCall) -> Value {
    let (system, turns) = wire::split_system(&call.input);
    let mut body = json!({
        "model": call.model,
        "max_tokens": call.max_tokens,
        "stream": true,
        "messages": turns.iter().map(message).collect::<Vec<_>>(),
    });
    if let Input::Chat(chat) = &call.input
        && !chat.tools.is_empty()
    {
        body["tools"] = chat
            .tools
            .iter()
            .map(|t| {
                let mut tool = json!({"name": t.name, "input_schema": t.parameters});
                if !t.description.is_empty() {
                    tool["description"] = json!(t.description);
                }
                tool
            })
            .collect();
        body["tool_choice"] = match &chat.choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Named(name) => json!({"type": "tool", "name": name}),
        };
    }
    if !system.is_empty() {
        body["system"] = json!(system);
    }
    // Anthropic's newer models take temperature or top_p, not both; its range is [0, 1].
    if call.top_p < 1.0 {
        body["top_p"] = json!(call.top_p);
    } else {
        body["temperature"] = json!(call.temperature.clamp(0.0, 1.0));
    }
    if call.top_k > 0 {
        body["top_k"] = json!(call.top_k);
    }
    if !call.stop.is_empty() {
        body["stop_sequences"] = json!(call.stop);
    }
    body
}

/// A turn as a Messages API message: a plain text stays a string, anything else becomes
/// content blocks (tool results first, as the API wants them).
fn message(turn: &Block) -> Value {
    if let [Part::Text(text)] = turn.parts.as_slice() {
        return json!({"role": turn.role, "content": text});
    }
    let blocks: Vec<Value> = turn
        .parts
        .iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
        .map(|p| match p {
            Part::Text(text) => json!({"type": "text", "text": text}),
            Part::Call(c) => json!({
                "type": "tool_use",
                "id": c.id,
                "name": c.name,
                "input": wire::arguments_object(&c.arguments),
            }),
            Part::Result { id, content, .. } => {
                json!({"type": "tool_result", "tool_use_id": id, "content": content})
            }
        })
        .collect();
    json!({"role": turn.role, "content": blocks})
}

pub async fn chat(http: &reqwest::Client, target: &Target, call: ChatCall) -> Result<WireStream> {
    let provider = &target.provider;
    let req = authorised(
        http.post(wire::endpoint(&provider.base_url, "v1/messages")),
        &target.secret,
    )
    .header("accept", "text/event-stream")
    .json(&body(&call));
    let response = wire::send(provider, req).await?;
    let id = provider.id.clone();
    let events = wire::sse_events(provider, response)
        .take_while(|e| std::future::ready(!matches!(e, Ok(ev) if ev.event == "message_stop")))
        .scan(Reader::default(), move |reader, event| {
            std::future::ready(Some(reader.read(&id, event)))
        })
        .flat_map(futures::stream::iter);
    Ok(Box::pin(events))
}

fn tokens(v: &Value) -> Option<u32> {
    v.as_u64().map(|n| n.min(u64::from(u32::MAX)) as u32)
}

/// Reads a stream's events in order; it remembers which content blocks are tool calls.
#[derive(Default)]
pub struct Reader {
    /// The content-block index of each tool call so far, in call order.
    tool_blocks: Vec<u64>,
}

impl Reader {
    /// What one streamed event says.
    pub fn read(&mut self, provider: &str, event: Result<SseEvent>) -> Vec<Result<WireEvent>> {
        let event = match event {
            Ok(e) => e,
            Err(e) => return vec![Err(e)],
        };
        let value = match wire::parse_json(provider, &event.data) {
            Ok(v) => v,
            Err(e) => return vec![Err(e)],
        };
        let kind = value["type"]
            .as_str()
            .unwrap_or(event.event.as_str())
            .to_owned();
        match kind.as_str() {
            "message_start" => {
                let usage = &value["message"]["usage"];
                // Cached input is billed as input too.
                let input = [
                    "input_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                ]
                .iter()
                .filter_map(|k| tokens(&usage[*k]))
                .fold(None, |acc: Option<u32>, n| {
                    Some(acc.unwrap_or(0).saturating_add(n))
                });
                vec![Ok(WireEvent::Usage {
                    prompt: input,
                    completion: tokens(&usage["output_tokens"]),
                })]
            }
            "content_block_start" if value["content_block"]["type"] == "tool_use" => {
                let block = &value["content_block"];
                self.tool_blocks
                    .push(value["index"].as_u64().unwrap_or(u64::MAX));
                let index = (self.tool_blocks.len() - 1) as u32;
                // The input arrives as input_json_delta pieces; a non-empty input here is
                // a whole one (some proxies send it so).
                let arguments = match &block["input"] {
                    Value::Object(m) if !m.is_empty() => block["input"].to_string(),
                    _ => String::new(),
                };
                vec![Ok(WireEvent::ToolCall {
                    index,
                    call: ToolCall {
                        id: block["id"].as_str().unwrap_or_default().to_owned(),
                        name: block["name"].as_str().unwrap_or_default().to_owned(),
                        arguments,
                    },
                })]
            }
            "content_block_delta" => {
                let delta = &value["delta"];
                if let Some(piece) = delta["partial_json"].as_str() {
                    let block = value["index"].as_u64().unwrap_or(u64::MAX);
                    return match self.tool_blocks.iter().position(|b| *b == block) {
                        Some(index) if !piece.is_empty() => vec![Ok(WireEvent::ToolCall {
                            index: index as u32,
                            call: ToolCall {
                                id: String::new(),
                                name: String::new(),
                                arguments: piece.to_owned(),
                            },
                        })],
                        _ => Vec::new(),
                    };
                }
                match delta["text"].as_str() {
                    Some(t) if !t.is_empty() => vec![Ok(WireEvent::Delta(t.to_owned()))],
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                let mut out = Vec::new();
                if let Some(reason) = value["delta"]["stop_reason"].as_str() {
                    out.push(Ok(WireEvent::Finish(match reason {
                        "max_tokens" => FinishReason::Length,
                        "tool_use" => FinishReason::ToolCalls,
                        _ => FinishReason::Stop,
                    })));
                }
                let input = tokens(&value["usage"]["input_tokens"]);
                if let Some(n) = tokens(&value["usage"]["output_tokens"]) {
                    out.push(Ok(WireEvent::Usage {
                        prompt: input,
                        completion: Some(n),
                    }));
                }
                out
            }
            "error" => vec![Err(wire::stream_error(provider, &value))],
            _ => Vec::new(),
        }
    }
}

pub async fn list(
    http: &reqwest::Client,
    provider: &Provider,
    secret: &Secret,
) -> Result<Vec<String>> {
    let req = authorised(
        http.get(wire::endpoint(&provider.base_url, "v1/models?limit=1000")),
        secret,
    );
    let response = wire::send(provider, req).await?;
    let value: Value = tokio::time::timeout(provider.timeout, response.json())
        .await
        .map_err(|_| LlmError::Unavailable(format!("provider {} stopped answering", provider.id)))?
        .map_err(|e| {
            LlmError::Unavailable(format!(
                "provider {} listed models that are not JSON: {e}",
                provider.id
            ))
        })?;
    let mut names: Vec<String> = value["data"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

//! The `anthropic` adapter: the Messages API streamed (message_start with the input
//! tokens, content_block_delta text, message_delta with the stop reason and output tokens,
//! error events mid-stream) and /v1/models.

use futures::StreamExt;
use llmesh_engine::scheduler::FinishReason;
use serde_json::{Value, json};

use super::sse::SseEvent;
use super::wire::{self, ChatCall, WireEvent, WireStream};
use super::{Provider, Secret, Target};
use crate::error::{LlmError, Result};

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
        "messages": turns
            .iter()
            .map(|(role, text)| json!({"role": role, "content": text}))
            .collect::<Vec<_>>(),
    });
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
        .flat_map(move |event| futures::stream::iter(events_of(&id, event)));
    Ok(Box::pin(events))
}

fn tokens(v: &Value) -> Option<u32> {
    v.as_u64().map(|n| n.min(u64::from(u32::MAX)) as u32)
}

/// What one streamed event says.
pub fn events_of(provider: &str, event: Result<SseEvent>) -> Vec<Result<WireEvent>> {
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
        "content_block_delta" => match value["delta"]["text"].as_str() {
            Some(t) if !t.is_empty() => vec![Ok(WireEvent::Delta(t.to_owned()))],
            _ => Vec::new(),
        },
        "message_delta" => {
            let mut out = Vec::new();
            if let Some(reason) = value["delta"]["stop_reason"].as_str() {
                out.push(Ok(WireEvent::Finish(match reason {
                    "max_tokens" => FinishReason::Length,
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

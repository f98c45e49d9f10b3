//! The `gemini` adapter: Google's Gemini API, streamGenerateContent as server-sent events
//! (candidates with text parts, finishReason, usageMetadata) and the model list.

use futures::StreamExt;
use llmesh_engine::scheduler::FinishReason;
use serde_json::{Value, json};

use super::sse::SseEvent;
use super::wire::{self, ChatCall, WireEvent, WireStream};
use super::{Provider, Secret, Target};
use crate::error::{LlmError, Result};

fn authorised(req: reqwest::RequestBuilder, secret: &Secret) -> reqwest::RequestBuilder {
    let req = wire::with_headers(req, secret);
    if secret.api_key.is_empty() {
        req
    } else {
        req.header("x-goog-api-key", &secret.api_key)
    }
}

/// The request body of a call.
pub fn body(call: &ChatCall) -> Value {
    let (system, turns) = wire::split_system(&call.input);
    let contents: Vec<Value> = turns
        .iter()
        .map(|(role, text)| {
            let role = if role == "assistant" { "model" } else { "user" };
            json!({"role": role, "parts": [{"text": text}]})
        })
        .collect();
    let mut config = json!({
        "maxOutputTokens": call.max_tokens,
        "temperature": call.temperature,
        "topP": call.top_p,
    });
    if call.top_k > 0 {
        config["topK"] = json!(call.top_k);
    }
    if let Some(seed) = call.seed {
        // Gemini's seed is a 32-bit integer.
        config["seed"] = json!(seed as u32 as i32);
    }
    if !call.stop.is_empty() {
        config["stopSequences"] = json!(call.stop);
    }
    let mut body = json!({"contents": contents, "generationConfig": config});
    if !system.is_empty() {
        body["systemInstruction"] = json!({"parts": [{"text": system}]});
    }
    body
}

fn model_path(name: &str) -> String {
    let name = name.strip_prefix("models/").unwrap_or(name);
    format!("v1beta/models/{name}:streamGenerateContent?alt=sse")
}

pub async fn chat(http: &reqwest::Client, target: &Target, call: ChatCall) -> Result<WireStream> {
    let provider = &target.provider;
    let url = wire::endpoint(&provider.base_url, &model_path(&call.model));
    let req = authorised(http.post(url), &target.secret)
        .header("accept", "text/event-stream")
        .json(&body(&call));
    let response = wire::send(provider, req).await?;
    let id = provider.id.clone();
    let events = wire::sse_events(provider, response)
        .flat_map(move |event| futures::stream::iter(events_of(&id, event)));
    Ok(Box::pin(events))
}

fn tokens(v: &Value) -> Option<u32> {
    v.as_u64().map(|n| n.min(u64::from(u32::MAX)) as u32)
}

/// What one streamed chunk says.
pub fn events_of(provider: &str, event: Result<SseEvent>) -> Vec<Result<WireEvent>> {
    let event = match event {
        Ok(e) => e,
        Err(e) => return vec![Err(e)],
    };
    let value = match wire::parse_json(provider, &event.data) {
        Ok(v) => v,
        Err(e) => return vec![Err(e)],
    };
    if value.get("error").is_some() {
        return vec![Err(wire::stream_error(provider, &value))];
    }
    let mut out = Vec::new();
    if let Some(candidate) = value["candidates"].as_array().and_then(|c| c.first()) {
        let text: String = candidate["content"]["parts"]
            .as_array()
            .map(|parts| {
                parts
                    .iter()
                    // Thought summaries are not part of the answer.
                    .filter(|p| p["thought"].as_bool() != Some(true))
                    .filter_map(|p| p["text"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if !text.is_empty() {
            out.push(Ok(WireEvent::Delta(text)));
        }
        if let Some(reason) = candidate["finishReason"].as_str() {
            out.push(Ok(WireEvent::Finish(match reason {
                "MAX_TOKENS" => FinishReason::Length,
                _ => FinishReason::Stop,
            })));
        }
    }
    let usage = &value["usageMetadata"];
    if usage.is_object() {
        // Thinking tokens are billed as output.
        let completion = match (
            tokens(&usage["candidatesTokenCount"]),
            tokens(&usage["thoughtsTokenCount"]),
        ) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        out.push(Ok(WireEvent::Usage {
            prompt: tokens(&usage["promptTokenCount"]),
            completion,
        }));
    }
    out
}

pub async fn list(
    http: &reqwest::Client,
    provider: &Provider,
    secret: &Secret,
) -> Result<Vec<String>> {
    let req = authorised(
        http.get(wire::endpoint(
            &provider.base_url,
            "v1beta/models?pageSize=1000",
        )),
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
    let mut names: Vec<String> = value["models"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|m| m["name"].as_str())
                .map(|n| n.strip_prefix("models/").unwrap_or(n).to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

//! The `openai-compatible` adapter: /chat/completions and /completions streamed with
//! `stream_options.include_usage`, /embeddings and /models, as OpenAI defines them and
//! DeepSeek, Mistral, xAI, Groq, OpenRouter, Together, vLLM, llama.cpp's server, Ollama's
//! /v1 and LM Studio follow.

use futures::StreamExt;
use llmesh_engine::scheduler::FinishReason;
use serde_json::{Value, json};

use super::wire::{self, ChatCall, WireEvent, WireStream};
use super::{Provider, Secret, Target};
use crate::error::{LlmError, Result};
use crate::generate::Input;
use crate::tools::{Role, ToolCall, ToolChoice, Turn};

fn authorised(req: reqwest::RequestBuilder, secret: &Secret) -> reqwest::RequestBuilder {
    let req = wire::with_headers(req, secret);
    if secret.api_key.is_empty() {
        req
    } else {
        req.bearer_auth(&secret.api_key)
    }
}

/// The request body of a call (public for the wire tests).
pub fn body(provider: &Provider, call: &ChatCall) -> (String, Value) {
    let mut body = json!({
        "model": call.model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": call.temperature,
        "top_p": call.top_p,
    });
    // OpenAI itself takes max_completion_tokens (its reasoning models refuse max_tokens);
    // the compatible servers read max_tokens.
    let limit_field = if provider.base_url.contains("api.openai.com") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    body[limit_field] = json!(call.max_tokens);
    if let Some(seed) = call.seed {
        body["seed"] = json!(seed);
    }
    if !call.stop.is_empty() {
        body["stop"] = json!(call.stop);
    }
    let path = match &call.input {
        Input::Chat(chat) => {
            body["messages"] = chat.turns.iter().map(message).collect();
            if !chat.tools.is_empty() {
                body["tools"] = chat
                    .tools
                    .iter()
                    .map(|t| {
                        let mut f = json!({"name": t.name, "parameters": t.parameters});
                        if !t.description.is_empty() {
                            f["description"] = json!(t.description);
                        }
                        json!({"type": "function", "function": f})
                    })
                    .collect();
                body["tool_choice"] = match &chat.choice {
                    ToolChoice::Auto => json!("auto"),
                    ToolChoice::None => json!("none"),
                    ToolChoice::Required => json!("required"),
                    ToolChoice::Named(name) => {
                        json!({"type": "function", "function": {"name": name}})
                    }
                };
            }
            "chat/completions"
        }
        Input::Prompt(text) => {
            body["prompt"] = json!(text);
            "completions"
        }
    };
    (wire::endpoint(&provider.base_url, path), body)
}

/// A chat message in OpenAI's shape.
fn message(t: &Turn) -> Value {
    match t.role {
        Role::Tool => json!({"role": "tool", "tool_call_id": t.tool_call_id, "content": t.content}),
        Role::Assistant if !t.tool_calls.is_empty() => {
            let calls: Vec<Value> = t
                .tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    })
                })
                .collect();
            let content = if t.content.is_empty() {
                Value::Null
            } else {
                json!(t.content)
            };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        role => json!({"role": role.as_str(), "content": t.content}),
    }
}

pub async fn chat(http: &reqwest::Client, target: &Target, call: ChatCall) -> Result<WireStream> {
    let provider = &target.provider;
    let chat = matches!(call.input, Input::Chat(_));
    let (url, body) = body(provider, &call);
    let req = authorised(http.post(url), &target.secret)
        .header("accept", "text/event-stream")
        .json(&body);
    let response = wire::send(provider, req).await?;
    let id = provider.id.clone();
    let events = wire::sse_events(provider, response)
        .take_while(|e| std::future::ready(!matches!(e, Ok(ev) if ev.data.trim() == "[DONE]")))
        .flat_map(move |event| futures::stream::iter(events_of(&id, chat, event)));
    Ok(Box::pin(events))
}

/// What one streamed chunk says.
fn events_of(
    provider: &str,
    chat: bool,
    event: Result<super::sse::SseEvent>,
) -> Vec<Result<WireEvent>> {
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
    if let Some(choice) = value["choices"].as_array().and_then(|c| c.first()) {
        let text = if chat {
            choice["delta"]["content"].as_str()
        } else {
            choice["text"].as_str()
        };
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            out.push(Ok(WireEvent::Delta(t.to_owned())));
        }
        if let Some(calls) = choice["delta"]["tool_calls"].as_array().filter(|_| chat) {
            for (position, c) in calls.iter().enumerate() {
                let index = c["index"].as_u64().map_or(position as u32, clamp);
                let piece = ToolCall {
                    id: c["id"].as_str().unwrap_or_default().to_owned(),
                    name: c["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: arguments_text(&c["function"]["arguments"]),
                };
                if !(piece.id.is_empty() && piece.name.is_empty() && piece.arguments.is_empty()) {
                    out.push(Ok(WireEvent::ToolCall { index, call: piece }));
                }
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            out.push(Ok(WireEvent::Finish(finish(reason))));
        }
    }
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        out.push(Ok(WireEvent::Usage {
            prompt: usage["prompt_tokens"].as_u64().map(clamp),
            completion: usage["completion_tokens"].as_u64().map(clamp),
        }));
    }
    out
}

fn clamp(n: u64) -> u32 {
    n.min(u64::from(u32::MAX)) as u32
}

/// Arguments as streamed: a piece of JSON text (OpenAI), or, from some servers, the
/// arguments as a JSON value.
fn arguments_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn finish(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

pub async fn embed(
    http: &reqwest::Client,
    target: &Target,
    texts: &[String],
) -> Result<(Vec<Vec<f32>>, u32)> {
    let provider = &target.provider;
    let req = authorised(
        http.post(wire::endpoint(&provider.base_url, "embeddings")),
        &target.secret,
    )
    .json(&json!({"model": target.model.name, "input": texts, "encoding_format": "float"}));
    let response = wire::send(provider, req).await?;
    let value: Value = tokio::time::timeout(provider.timeout, response.json())
        .await
        .map_err(|_| LlmError::Unavailable(format!("provider {} stopped answering", provider.id)))?
        .map_err(|e| {
            LlmError::Unavailable(format!(
                "provider {} answered embeddings that are not JSON: {e}",
                provider.id
            ))
        })?;
    let mut rows: Vec<(u64, Vec<f32>)> = value["data"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .enumerate()
                .map(|(i, row)| {
                    let index = row["index"].as_u64().unwrap_or(i as u64);
                    let vector = row["embedding"]
                        .as_array()
                        .map(|v| {
                            v.iter()
                                .filter_map(|x| x.as_f64())
                                .map(|x| x as f32)
                                .collect()
                        })
                        .unwrap_or_default();
                    (index, vector)
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by_key(|(i, _)| *i);
    if rows.len() != texts.len() || rows.iter().any(|(_, v)| v.is_empty()) {
        return Err(LlmError::Unavailable(format!(
            "provider {} answered {} embeddings for {} texts",
            provider.id,
            rows.len(),
            texts.len()
        )));
    }
    let tokens = value["usage"]["prompt_tokens"].as_u64().map(clamp);
    let vectors: Vec<Vec<f32>> = rows.into_iter().map(|(_, v)| wire::normalise(v)).collect();
    let tokens =
        tokens.unwrap_or_else(|| texts.iter().map(|t| crate::gateway::estimate_text(t)).sum());
    Ok((vectors, tokens))
}

pub async fn list(
    http: &reqwest::Client,
    provider: &Provider,
    secret: &Secret,
) -> Result<Vec<String>> {
    let req = authorised(
        http.get(wire::endpoint(&provider.base_url, "models")),
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
        .or_else(|| value["models"].as_array())
        .map(|rows| {
            rows.iter()
                .filter_map(|m| {
                    m["id"]
                        .as_str()
                        .or_else(|| m["name"].as_str())
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_deltas_finish_and_usage() {
        let oks = |v: Vec<Result<WireEvent>>| {
            v.into_iter().map(|e| e.expect("event")).collect::<Vec<_>>()
        };
        let ev = |data: &str| {
            Ok(super::super::sse::SseEvent {
                event: String::new(),
                data: data.into(),
            })
        };
        let got = events_of(
            "p",
            true,
            ev(r#"{"choices":[{"delta":{"content":"Hel"},"finish_reason":null}]}"#),
        );
        assert_eq!(oks(got), vec![WireEvent::Delta("Hel".into())]);
        let got = events_of(
            "p",
            true,
            ev(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#),
        );
        assert_eq!(oks(got), vec![WireEvent::Finish(FinishReason::Length)]);
        let got = events_of(
            "p",
            true,
            ev(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}"#),
        );
        assert_eq!(
            oks(got),
            vec![WireEvent::Usage {
                prompt: Some(9),
                completion: Some(3)
            }]
        );
        let got = events_of(
            "p",
            false,
            ev(r#"{"choices":[{"text":"x","finish_reason":"stop"}]}"#),
        );
        assert_eq!(got.len(), 2);
        assert!(events_of("p", true, ev(r#"{"error":{"message":"boom"}}"#))[0].is_err());
        let got = events_of(
            "p",
            true,
            ev(
                r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_9","type":"function","function":{"name":"lookup","arguments":"{\"q\""}}]},"finish_reason":null}]}"#,
            ),
        );
        assert_eq!(
            oks(got),
            vec![WireEvent::ToolCall {
                index: 1,
                call: ToolCall {
                    id: "call_9".into(),
                    name: "lookup".into(),
                    arguments: "{\"q\"".into()
                }
            }]
        );
        let got = events_of(
            "p",
            true,
            ev(r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#),
        );
        assert_eq!(oks(got), vec![WireEvent::Finish(FinishReason::ToolCalls)]);
    }
}

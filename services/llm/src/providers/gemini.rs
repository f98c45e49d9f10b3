//! The `gemini` adapter: Google's Gemini API, streamGenerateContent as server-sent events
//! (candidates with text and functionCall parts, finishReason, usageMetadata), function
//! declarations and responses, and the model list.

use futures::StreamExt;
use llmesh_engine::scheduler::FinishReason;
use serde_json::{Value, json};

use super::sse::SseEvent;
use super::wire::{self, ChatCall, Part, WireEvent, WireStream};
use super::{Provider, Secret, Target};
use crate::error::{LlmError, Result};
use crate::generate::Input;
use crate::tools::{ToolCall, ToolChoice};

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
        .map(|turn| {
            let role = if turn.role == "assistant" {
                "model"
            } else {
                "user"
            };
            let several = turn.parts.len() > 1;
            let parts: Vec<Value> = turn
                .parts
                .iter()
                .filter(|p| !(several && matches!(p, Part::Text(t) if t.is_empty())))
                .map(part)
                .collect();
            json!({"role": role, "parts": parts})
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
    if let Input::Chat(chat) = &call.input
        && !chat.tools.is_empty()
    {
        let declarations: Vec<Value> = chat
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "parametersJsonSchema": t.parameters});
                if !t.description.is_empty() {
                    d["description"] = json!(t.description);
                }
                d
            })
            .collect();
        body["tools"] = json!([{ "functionDeclarations": declarations }]);
        let mut config = match &chat.choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Named(_) => json!({"mode": "ANY"}),
        };
        if let ToolChoice::Named(name) = &chat.choice {
            config["allowedFunctionNames"] = json!([name]);
        }
        body["toolConfig"] = json!({ "functionCallingConfig": config });
    }
    if !system.is_empty() {
        body["systemInstruction"] = json!({"parts": [{"text": system}]});
    }
    body
}

/// A part of a Gemini content: text, a function call, or a function's response (an
/// object: a result that is not a JSON object travels under "result").
fn part(p: &Part) -> Value {
    match p {
        Part::Text(text) => json!({"text": text}),
        Part::Call(c) => json!({"functionCall": {
            "name": c.name,
            "args": wire::arguments_object(&c.arguments),
        }}),
        Part::Result { name, content, .. } => {
            let response = match serde_json::from_str::<Value>(content) {
                Ok(v) if v.is_object() => v,
                _ => json!({ "result": content }),
            };
            json!({"functionResponse": {"name": name, "response": response}})
        }
    }
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
        .scan(Reader::default(), move |reader, event| {
            std::future::ready(Some(reader.read(&id, event)))
        })
        .flat_map(futures::stream::iter);
    Ok(Box::pin(events))
}

fn tokens(v: &Value) -> Option<u32> {
    v.as_u64().map(|n| n.min(u64::from(u32::MAX)) as u32)
}

/// Reads a stream's chunks in order, numbering the function calls it makes.
#[derive(Default)]
pub struct Reader {
    calls: u32,
}

impl Reader {
    /// What one streamed chunk says.
    pub fn read(&mut self, provider: &str, event: Result<SseEvent>) -> Vec<Result<WireEvent>> {
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
            let parts = candidate["content"]["parts"].as_array();
            // Thought summaries are not part of the answer.
            let answer = parts
                .into_iter()
                .flatten()
                .filter(|p| p["thought"].as_bool() != Some(true));
            let mut text = String::new();
            for p in answer {
                if let Some(t) = p["text"].as_str() {
                    text.push_str(t);
                }
                if let Some(call) = p["functionCall"].as_object() {
                    if !text.is_empty() {
                        out.push(Ok(WireEvent::Delta(std::mem::take(&mut text))));
                    }
                    // Gemini sends each call whole; older models give it no id.
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("call_{}", uuid::Uuid::new_v4().simple()));
                    out.push(Ok(WireEvent::ToolCall {
                        index: self.calls,
                        call: ToolCall {
                            id,
                            name: call
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            arguments: call
                                .get("args")
                                .map_or_else(|| "{}".into(), Value::to_string),
                        },
                    }));
                    self.calls += 1;
                }
            }
            if !text.is_empty() {
                out.push(Ok(WireEvent::Delta(text)));
            }
            if let Some(reason) = candidate["finishReason"].as_str() {
                out.push(Ok(WireEvent::Finish(match reason {
                    "MAX_TOKENS" => FinishReason::Length,
                    // Gemini ends a turn of calls with STOP.
                    _ if self.calls > 0 => FinishReason::ToolCalls,
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

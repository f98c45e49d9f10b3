//! The OpenAI-compatible HTTP door: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `POST /v1/embeddings`, `GET /v1/models` and `GET /v1/models/{id}`, on the server's own
//! port. Each request becomes a call of llm's gRPC API (Generate, Embed, ListModels,
//! GetModel) through the same routes and authentication layer a gRPC client meets, with
//! the caller's bearer credential: the same keys, roles, billing, rate limits and quotas,
//! and no second implementation. Errors come back in OpenAI's JSON shape with the HTTP
//! status OpenAI's clients expect.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use llmesh_kit::peer::Peer;
use llmesh_proto::llm::v1 as pb;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::body::Body;
use tonic::{Code, Status};

/// The path prefix the door answers.
pub const PREFIX: &str = "/v1/";

/// Largest request body the door reads, in bytes.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// `max_tokens` of a legacy completion that names none (OpenAI's own default).
const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// A refusal before any work: the response to send (boxed: responses are large).
type Refused = Box<Response<Body>>;

/// The door, calling llm through `peer` (this process's own routes, or llm elsewhere).
#[derive(Clone)]
pub struct Door {
    peer: Peer,
}

impl Door {
    pub fn new(peer: Peer) -> Door {
        Door { peer }
    }

    /// The door as the server's HTTP route under [`PREFIX`].
    pub fn route(self) -> llmesh_kit::web::HttpRoute {
        llmesh_kit::web::HttpRoute {
            prefix: PREFIX,
            handler: self.handler(),
        }
    }

    fn handler(self) -> llmesh_kit::web::HttpHandler {
        let door = Arc::new(self);
        Arc::new(move |req| {
            let door = door.clone();
            Box::pin(async move { door.handle(req).await })
        })
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let credentials = Credentials::from_headers(req.headers());
        match (method, path.as_str()) {
            (Method::GET, "/v1/models") => self.models(&credentials).await,
            (Method::GET, p) if p.starts_with("/v1/models/") => {
                let id = percent_decode(&p["/v1/models/".len()..]);
                self.model(&credentials, &id).await
            }
            (Method::POST, "/v1/chat/completions") => match read_json(req).await {
                Ok(body) => self.chat(&credentials, body).await,
                Err(resp) => *resp,
            },
            (Method::POST, "/v1/completions") => match read_json(req).await {
                Ok(body) => self.completions(&credentials, body).await,
                Err(resp) => *resp,
            },
            (Method::POST, "/v1/embeddings") => match read_json(req).await {
                Ok(body) => self.embeddings(&credentials, body).await,
                Err(resp) => *resp,
            },
            (Method::OPTIONS, _) => Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Body::empty())
                .unwrap_or_default(),
            (_, p) if KNOWN.contains(&p) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                None,
                &format!("{p} does not take this method"),
            ),
            (_, p) => error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("unknown_url"),
                &format!(
                    "{p} is not part of llmesh's OpenAI-compatible API: it serves /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models"
                ),
            ),
        }
    }

    fn client(&self) -> LlmServiceClient<llmesh_kit::peer::Transport> {
        LlmServiceClient::new(self.peer.transport())
    }

    async fn models(&self, credentials: &Credentials) -> Response<Body> {
        let req = credentials.request(pb::ListModelsRequest {});
        match self.client().list_models(req).await {
            Ok(resp) => {
                let data: Vec<Value> = resp.into_inner().models.iter().map(model_json).collect();
                json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
            }
            Err(status) => status_error(&self.peer.error(status)),
        }
    }

    async fn model(&self, credentials: &Credentials, id: &str) -> Response<Body> {
        let req = credentials.request(pb::GetModelRequest { id: id.to_owned() });
        match self.client().get_model(req).await {
            Ok(resp) => match resp.into_inner().model {
                Some(m) => json_response(StatusCode::OK, &model_json(&m)),
                None => status_error(&Status::not_found(format!("model {id} not found"))),
            },
            Err(status) => status_error(&self.peer.error(status)),
        }
    }

    async fn chat(&self, credentials: &Credentials, body: Value) -> Response<Body> {
        let parsed: ChatRequest = match parse(body) {
            Ok(p) => p,
            Err(resp) => return *resp,
        };
        if let Err(resp) = check_n(parsed.n) {
            return *resp;
        }
        let mut messages = Vec::with_capacity(parsed.messages.len());
        for (i, m) in parsed.messages.iter().enumerate() {
            match chat_message(i, m) {
                Ok(msg) => messages.push(msg),
                Err(resp) => return *resp,
            }
        }
        let (tools, tool_choice) =
            match tools_of(parsed.tools.as_deref(), parsed.tool_choice.as_ref()) {
                Ok(t) => t,
                Err(resp) => return *resp,
            };
        let sampling = match sampling(&parsed.common, parsed.max_completion_tokens, None) {
            Ok(s) => s,
            Err(resp) => return *resp,
        };
        let req = pb::GenerateRequest {
            model: parsed.model.clone(),
            input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
                messages,
                tools,
                tool_choice,
            })),
            sampling: Some(sampling),
            generation_id: String::new(),
        };
        let shape = Shape::Chat;
        self.generate(credentials, req, shape, &parsed.model, &parsed.common)
            .await
    }

    async fn completions(&self, credentials: &Credentials, body: Value) -> Response<Body> {
        let parsed: CompletionRequest = match parse(body) {
            Ok(p) => p,
            Err(resp) => return *resp,
        };
        if let Err(resp) = check_n(parsed.n) {
            return *resp;
        }
        if parsed.echo == Some(true) {
            return invalid("echo", "echo is not supported");
        }
        let prompt = match &parsed.prompt {
            Value::String(s) => s.clone(),
            Value::Array(items) if items.len() == 1 && items[0].is_string() => {
                items[0].as_str().unwrap_or_default().to_owned()
            }
            Value::Array(_) => {
                return invalid(
                    "prompt",
                    "one prompt per request: a string, or a list holding one string",
                );
            }
            _ => return invalid("prompt", "prompt must be a string"),
        };
        let sampling = match sampling(&parsed.common, None, Some(COMPLETIONS_DEFAULT_MAX_TOKENS)) {
            Ok(s) => s,
            Err(resp) => return *resp,
        };
        let req = pb::GenerateRequest {
            model: parsed.model.clone(),
            input: Some(pb::generate_request::Input::Prompt(prompt)),
            sampling: Some(sampling),
            generation_id: String::new(),
        };
        self.generate(
            credentials,
            req,
            Shape::Completion,
            &parsed.model,
            &parsed.common,
        )
        .await
    }

    async fn generate(
        &self,
        credentials: &Credentials,
        req: pb::GenerateRequest,
        shape: Shape,
        model: &str,
        common: &Common,
    ) -> Response<Body> {
        let stream = match self
            .client()
            .generate(credentials.stream_request(req))
            .await
        {
            Ok(resp) => resp.into_inner(),
            Err(status) => return status_error(&self.peer.error(status)),
        };
        let id = format!("{}-{}", shape.id_prefix(), uuid::Uuid::new_v4().simple());
        let created = now_secs();
        if common.stream == Some(true) {
            let include_usage = common
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false);
            return sse(stream_events(
                stream,
                shape,
                id,
                created,
                model.to_owned(),
                include_usage,
                self.peer.clone(),
            ));
        }
        // Whole reply: read the stream to its end.
        let mut stream = stream;
        let mut text = String::new();
        let mut calls: Vec<pb::ToolCallDelta> = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(msg)) => match msg.event {
                    Some(pb::generate_response::Event::Delta(d)) => text.push_str(&d),
                    Some(pb::generate_response::Event::ToolCall(piece)) => {
                        join_call(&mut calls, piece)
                    }
                    Some(pb::generate_response::Event::Done(done)) => {
                        if done.finish_reason == pb::FinishReason::Error as i32 {
                            return error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "server_error",
                                None,
                                &done.error,
                            );
                        }
                        let usage = usage_json(done.usage.as_ref());
                        let finish = finish_reason(done.finish_reason);
                        let choice = match shape {
                            Shape::Chat => {
                                let mut message = json!({"role": "assistant", "content": text});
                                if !calls.is_empty() {
                                    if text.is_empty() {
                                        message["content"] = Value::Null;
                                    }
                                    message["tool_calls"] = calls
                                        .iter()
                                        .map(|c| {
                                            json!({
                                                "id": c.id,
                                                "type": "function",
                                                "function": {"name": c.name, "arguments": c.arguments},
                                            })
                                        })
                                        .collect();
                                }
                                json!({
                                    "index": 0,
                                    "message": message,
                                    "logprobs": null,
                                    "finish_reason": finish,
                                })
                            }
                            Shape::Completion => json!({
                                "index": 0,
                                "text": text,
                                "logprobs": null,
                                "finish_reason": finish,
                            }),
                        };
                        return json_response(
                            StatusCode::OK,
                            &json!({
                                "id": id,
                                "object": shape.object(),
                                "created": created,
                                "model": model,
                                "choices": [choice],
                                "usage": usage,
                            }),
                        );
                    }
                    None => {}
                },
                Ok(None) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "server_error",
                        None,
                        "the generation ended without its final report",
                    );
                }
                Err(status) => return status_error(&self.peer.error(status)),
            }
        }
    }

    async fn embeddings(&self, credentials: &Credentials, body: Value) -> Response<Body> {
        let parsed: EmbeddingRequest = match parse(body) {
            Ok(p) => p,
            Err(resp) => return *resp,
        };
        let texts = match &parsed.input {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => items
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect(),
            Value::Array(items) if items.is_empty() => {
                return invalid("input", "input must hold at least one text");
            }
            _ => {
                return invalid(
                    "input",
                    "input must be a string or a list of strings (token arrays are not supported)",
                );
            }
        };
        let base64 = match parsed.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return invalid(
                    "encoding_format",
                    &format!("encoding_format {other:?} is not supported: use float or base64"),
                );
            }
        };
        let req = credentials.request(pb::EmbedRequest {
            model: parsed.model.clone(),
            texts,
        });
        let resp = match self.client().embed(req).await {
            Ok(r) => r.into_inner(),
            Err(status) => return status_error(&self.peer.error(status)),
        };
        if let Some(d) = parsed.dimensions
            && d != u64::from(resp.dimension)
        {
            return invalid(
                "dimensions",
                &format!(
                    "{} gives vectors of {} dimensions; it cannot give {d}",
                    parsed.model, resp.dimension
                ),
            );
        }
        let data: Vec<Value> = resp
            .embeddings
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    Value::from(e.values.clone())
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "object": "list",
                "data": data,
                "model": parsed.model,
                "usage": {"prompt_tokens": resp.prompt_tokens, "total_tokens": resp.prompt_tokens},
            }),
        )
    }
}

const KNOWN: &[&str] = &[
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
];

/// The caller's credential, passed on to llm as gRPC metadata.
struct Credentials {
    authorization: Option<HeaderValue>,
    api_key: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
}

impl Credentials {
    fn from_headers(headers: &http::HeaderMap) -> Credentials {
        Credentials {
            authorization: headers.get(header::AUTHORIZATION).cloned(),
            api_key: headers.get(llmesh_kit::authn::API_KEY_HEADER).cloned(),
            request_id: headers.get(llmesh_kit::request_id::HEADER).cloned(),
        }
    }

    fn with<T>(&self, mut req: tonic::Request<T>) -> tonic::Request<T> {
        let md = req.metadata_mut();
        for (key, value) in [
            ("authorization", &self.authorization),
            (llmesh_kit::authn::API_KEY_HEADER, &self.api_key),
            (llmesh_kit::request_id::HEADER, &self.request_id),
        ] {
            if let Some(v) = value
                && let Ok(v) = tonic::metadata::MetadataValue::try_from(v.as_bytes())
            {
                md.insert(key, v);
            }
        }
        req
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.with(llmesh_kit::peer::outgoing(
            message,
            Some(llmesh_kit::peer::DEFAULT_UNARY_TIMEOUT),
        ))
    }

    fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        self.with(llmesh_kit::peer::outgoing(message, None))
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Chat,
    Completion,
}

impl Shape {
    fn object(self) -> &'static str {
        match self {
            Shape::Chat => "chat.completion",
            Shape::Completion => "text_completion",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Shape::Chat => "chat.completion.chunk",
            Shape::Completion => "text_completion",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Shape::Chat => "chatcmpl",
            Shape::Completion => "cmpl",
        }
    }
}

// ---- request bodies (unknown fields are ignored, as OpenAI's clients send many) ----

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// What chat and legacy completions share.
#[derive(Deserialize)]
struct Common {
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Value>,
    logit_bias: Option<HashMap<String, f64>>,
    /// vLLM's extension: keep generating through end-of-sequence tokens (fixed-length
    /// benchmarks).
    ignore_eos: Option<bool>,
}

#[derive(Deserialize)]
struct ChatMessageIn {
    role: String,
    content: Option<Value>,
    tool_calls: Option<Vec<Value>>,
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessageIn>,
    n: Option<u64>,
    max_completion_tokens: Option<u64>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: Value,
    n: Option<u64>,
    echo: Option<bool>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<u64>,
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes.
async fn read_json(req: Request<Body>) -> Result<Value, Refused> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                &format!("the request body is unreadable or larger than {MAX_BODY} bytes"),
            )));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            &format!("the request body is not valid JSON: {e}"),
        ))
    })
}

/// Parses a body into its request type; a missing or mistyped field is a 400 naming it.
fn parse<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, Refused> {
    serde_json::from_value(body).map_err(|e| {
        let msg = e.to_string();
        let param = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("missing field") || msg.contains("unknown field"))
            .map(str::to_owned);
        let mut resp = error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            &format!("the request does not fit this endpoint: {msg}"),
        );
        if let Some(param) = param {
            resp = error_with_param(
                StatusCode::BAD_REQUEST,
                &param,
                &format!("the request does not fit this endpoint: {msg}"),
            );
        }
        Box::new(resp)
    })
}

fn check_n(n: Option<u64>) -> Result<(), Refused> {
    match n {
        None | Some(1) => Ok(()),
        Some(_) => Err(Box::new(invalid("n", "only n = 1 is supported"))),
    }
}

/// A chat message of the request as llm's ChatMessage.
fn chat_message(i: usize, m: &ChatMessageIn) -> Result<pb::ChatMessage, Refused> {
    let role = match m.role.as_str() {
        "system" | "developer" => pb::ChatRole::System,
        "user" => pb::ChatRole::User,
        "assistant" => pb::ChatRole::Assistant,
        "tool" => pb::ChatRole::Tool,
        other => {
            return Err(Box::new(invalid(
                &format!("messages[{i}].role"),
                &format!(
                    "role {other:?} is not supported: use system, developer, user, assistant or tool"
                ),
            )));
        }
    };
    let content = text_of(m.content.as_ref())
        .map_err(|why| Box::new(invalid(&format!("messages[{i}].content"), &why)))?;
    let mut tool_calls = Vec::new();
    for (j, c) in m.tool_calls.iter().flatten().enumerate() {
        let field = format!("messages[{i}].tool_calls[{j}]");
        let function = &c["function"];
        let (Some(id), Some(name)) = (c["id"].as_str(), function["name"].as_str()) else {
            return Err(Box::new(invalid(
                &field,
                "a tool call needs an id and function.name",
            )));
        };
        let arguments = match &function["arguments"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        tool_calls.push(pb::ToolCall {
            id: id.to_owned(),
            name: name.to_owned(),
            arguments_json: arguments,
        });
    }
    Ok(pb::ChatMessage {
        role: role as i32,
        content,
        tool_calls,
        tool_call_id: m.tool_call_id.clone().unwrap_or_default(),
    })
}

/// The request's tools (`{"type": "function", "function": {…}}`) and tool choice as
/// llm's ChatInput takes them.
fn tools_of(
    tools: Option<&[Value]>,
    choice: Option<&Value>,
) -> Result<(Vec<pb::Tool>, String), Refused> {
    let mut out = Vec::new();
    for (i, t) in tools.unwrap_or_default().iter().enumerate() {
        let kind = t["type"].as_str().unwrap_or("function");
        if kind != "function" {
            return Err(Box::new(invalid(
                &format!("tools[{i}].type"),
                &format!("tools of type {kind:?} are not supported: use function"),
            )));
        }
        let f = &t["function"];
        let Some(name) = f["name"].as_str() else {
            return Err(Box::new(invalid(
                &format!("tools[{i}].function.name"),
                "is required",
            )));
        };
        let parameters = match &f["parameters"] {
            Value::Null => String::new(),
            v @ Value::Object(_) => v.to_string(),
            _ => {
                return Err(Box::new(invalid(
                    &format!("tools[{i}].function.parameters"),
                    "must be a JSON Schema object",
                )));
            }
        };
        out.push(pb::Tool {
            name: name.to_owned(),
            description: f["description"].as_str().unwrap_or_default().to_owned(),
            parameters_json: parameters,
        });
    }
    let choice = match choice {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "none" | "required") => s.clone(),
        Some(v) if v["function"]["name"].is_string() => v["function"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        Some(_) => {
            return Err(Box::new(invalid(
                "tool_choice",
                "must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": …}}",
            )));
        }
    };
    // "none" with no tools asks for nothing: a plain reply.
    let choice = if out.is_empty() && choice == "none" {
        String::new()
    } else {
        choice
    };
    Ok((out, choice))
}

/// The text of a message's content: a string, or text parts (`{"type": "text"}`).
fn text_of(content: Option<&Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        out.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    Some(other) => {
                        return Err(format!(
                            "content parts of type {other:?} are not supported (text only)"
                        ));
                    }
                    None => return Err("a content part has no type".into()),
                }
            }
            Ok(out)
        }
        Some(_) => Err("content must be a string or a list of text parts".into()),
    }
}

/// The sampling parameters; a value out of its range is a 400 naming the field.
fn sampling(
    c: &Common,
    max_completion_tokens: Option<u64>,
    default_max_tokens: Option<u32>,
) -> Result<pb::SamplingParams, Refused> {
    let max_tokens = match max_completion_tokens.or(c.max_tokens) {
        Some(0) => {
            return Err(Box::new(invalid(
                if max_completion_tokens.is_some() {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                },
                "must be at least 1",
            )));
        }
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        None => default_max_tokens,
    };
    if let Some(t) = c.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(Box::new(invalid("temperature", "must be between 0 and 2")));
    }
    if let Some(p) = c.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(Box::new(invalid("top_p", "must be above 0 and at most 1")));
    }
    let stop = match &c.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
        Some(_) => {
            return Err(Box::new(invalid(
                "stop",
                "must be a string or a list of strings",
            )));
        }
    };
    let mut logit_bias = HashMap::new();
    for (token, bias) in c.logit_bias.iter().flatten() {
        let Ok(id) = token.parse::<u32>() else {
            return Err(Box::new(invalid("logit_bias", "keys must be token ids")));
        };
        logit_bias.insert(id, *bias as f32);
    }
    Ok(pb::SamplingParams {
        temperature: c.temperature.map(|t| t as f32),
        top_p: c.top_p.map(|p| p as f32),
        // A negative seed (some clients send one) keeps its bits.
        seed: c.seed.map(|s| s as u64),
        max_tokens,
        stop,
        logit_bias,
        ignore_eos: c.ignore_eos,
        ..Default::default()
    })
}

// ---- responses ----

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn model_json(m: &pb::Model) -> Value {
    let kind = if m.kind == pb::ModelKind::Embedding as i32 {
        "embedding"
    } else {
        "chat"
    };
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created_at.as_ref().map(|t| t.seconds).unwrap_or_default(),
        "owned_by": "llmesh",
        "kind": kind,
        "context_length": m.context_length,
    })
}

fn usage_json(usage: Option<&llmesh_proto::common::v1::TokenUsage>) -> Value {
    let (p, c) = usage
        .map(|u| (u.prompt_tokens, u.completion_tokens))
        .unwrap_or_default();
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn finish_reason(reason: i32) -> &'static str {
    match pb::FinishReason::try_from(reason) {
        Ok(pb::FinishReason::Length) => "length",
        Ok(pb::FinishReason::ToolCalls) => "tool_calls",
        _ => "stop",
    }
}

/// Adds a streamed piece to the calls of a whole reply.
fn join_call(calls: &mut Vec<pb::ToolCallDelta>, piece: pb::ToolCallDelta) {
    match calls.iter_mut().find(|c| c.index == piece.index) {
        Some(c) => {
            if c.id.is_empty() {
                c.id = piece.id;
            }
            if c.name.is_empty() {
                c.name = piece.name;
            }
            c.arguments.push_str(&piece.arguments);
        }
        None => calls.push(piece),
    }
}

/// A streamed piece of a tool call as OpenAI's chunk delta shows it: id, type and name on
/// a call's first piece, argument text on every piece.
fn tool_call_delta(piece: &pb::ToolCallDelta) -> Value {
    let mut call = json!({"index": piece.index, "function": {"arguments": piece.arguments}});
    if !piece.id.is_empty() {
        call["id"] = json!(piece.id);
        call["type"] = json!("function");
    }
    if !piece.name.is_empty() {
        call["function"]["name"] = json!(piece.name);
    }
    json!({"tool_calls": [call]})
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::new(http_body_util::Full::new(Bytes::from(
        value.to_string(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

fn error_with_param(status: StatusCode, param: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}}),
    )
}

fn invalid(param: &str, message: &str) -> Response<Body> {
    error_with_param(
        StatusCode::BAD_REQUEST,
        param,
        &format!("{param}: {message}"),
    )
}

/// The HTTP form of a gRPC status from llm.
fn status_error(status: &Status) -> Response<Body> {
    let message = status.message();
    let (http, kind, code) = match status.code() {
        Code::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        Code::PermissionDenied => (
            StatusCode::FORBIDDEN,
            "permission_error",
            Some("permission_denied"),
        ),
        Code::InvalidArgument | Code::OutOfRange => {
            (StatusCode::BAD_REQUEST, "invalid_request_error", None)
        }
        Code::NotFound => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
        ),
        Code::ResourceExhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
        ),
        Code::FailedPrecondition if message.contains("balance") => (
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            Some("insufficient_quota"),
        ),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "server_error", None),
        Code::Cancelled => (
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "server_error",
            None,
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
    };
    let mut resp = error(http, kind, code, message);
    // The retry hint a rate limit or a full queue carries, as an HTTP header.
    if let Some(secs) = retry_after(status)
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if let Some(id) = status.metadata().get(llmesh_kit::request_id::HEADER)
        && let Ok(v) = HeaderValue::from_bytes(id.as_bytes())
    {
        resp.headers_mut().insert(llmesh_kit::request_id::HEADER, v);
    }
    resp
}

/// Seconds to wait before retrying, from the status's `retry-after` metadata.
fn retry_after(status: &Status) -> Option<u64> {
    let v = status.metadata().get("retry-after")?.to_str().ok()?;
    let n = v.trim().parse::<f64>().ok()?;
    Some(n.ceil().max(1.0) as u64)
}

/// A `text/event-stream` response of `events` (each already a JSON text or `[DONE]`).
fn sse(events: impl futures::Stream<Item = String> + Send + 'static) -> Response<Body> {
    let frames = events.map(|e| {
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(format!(
            "data: {e}\n\n"
        ))))
    });
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies (nginx) must pass each event on at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The stream's events: a first chunk with the role, one per delta, the last with the
/// finish reason, the usage chunk when asked for, then `[DONE]`. An error mid-stream is
/// an `{"error": …}` event. Dropping the response (the client went away) drops the gRPC
/// stream, which stops the generation; billing counts what was produced.
fn stream_events(
    stream: tonic::Streaming<pb::GenerateResponse>,
    shape: Shape,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    peer: Peer,
) -> impl futures::Stream<Item = String> + Send + 'static {
    let chunk = move |choice: Value, usage: Option<Value>| {
        let mut v = json!({
            "id": id,
            "object": shape.chunk_object(),
            "created": created,
            "model": model,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) },
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v.to_string()
    };
    let piece = move |text: &str, finish: Option<&str>| match shape {
        Shape::Chat => {
            let delta = if finish.is_some() {
                json!({})
            } else {
                json!({"content": text})
            };
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
        Shape::Completion => {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
        }
    };
    async_stream(stream, move |event| match event {
        Event::Start => match shape {
            Shape::Chat => vec![chunk(
                json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
                None,
            )],
            Shape::Completion => Vec::new(),
        },
        Event::Delta(d) => vec![chunk(piece(&d, None), None)],
        Event::ToolCall(call) => vec![chunk(
            json!({"index": 0, "delta": tool_call_delta(&call), "logprobs": null, "finish_reason": null}),
            None,
        )],
        Event::Done(done) => {
            if done.finish_reason == pb::FinishReason::Error as i32 {
                return vec![
                    json!({"error": {"message": done.error, "type": "server_error", "param": null, "code": null}})
                        .to_string(),
                ];
            }
            let mut out = vec![chunk(
                piece("", Some(finish_reason(done.finish_reason))),
                None,
            )];
            if include_usage {
                out.push(chunk(Value::Null, Some(usage_json(done.usage.as_ref()))));
            }
            out.push("[DONE]".into());
            out
        }
        Event::Failed(status) => {
            let status = peer.error(status);
            vec![
                json!({"error": {"message": status.message(), "type": "server_error", "param": null, "code": format!("{:?}", status.code())}})
                    .to_string(),
            ]
        }
    })
}

enum Event {
    Start,
    Delta(String),
    ToolCall(pb::ToolCallDelta),
    Done(pb::GenerateDone),
    Failed(Status),
}

/// Turns the gRPC stream into SSE event texts with `render`, ending after the final
/// report or an error.
fn async_stream(
    stream: tonic::Streaming<pb::GenerateResponse>,
    render: impl FnMut(Event) -> Vec<String> + Send + 'static,
) -> impl futures::Stream<Item = String> + Send + 'static {
    let state = (Some(stream), render, true);
    futures::stream::unfold(state, |(stream, mut render, first)| async move {
        let mut stream = stream?;
        if first {
            let out = render(Event::Start);
            return Some((out, (Some(stream), render, false)));
        }
        match stream.message().await {
            Ok(Some(msg)) => match msg.event {
                Some(pb::generate_response::Event::Delta(d)) => {
                    Some((render(Event::Delta(d)), (Some(stream), render, false)))
                }
                Some(pb::generate_response::Event::ToolCall(c)) => {
                    Some((render(Event::ToolCall(c)), (Some(stream), render, false)))
                }
                Some(pb::generate_response::Event::Done(done)) => {
                    Some((render(Event::Done(done)), (None, render, false)))
                }
                None => Some((Vec::new(), (Some(stream), render, false))),
            },
            Ok(None) => Some((
                render(Event::Failed(Status::internal(
                    "the generation ended without its final report",
                ))),
                (None, render, false),
            )),
            Err(status) => Some((render(Event::Failed(status)), (None, render, false))),
        }
    })
    .flat_map(futures::stream::iter)
}

/// Decodes `%XX` escapes in a path segment (model ids may hold `/` as `%2F`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len() + 1
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(h, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_parts_join_their_text() {
        let parts = json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
        assert_eq!(text_of(Some(&parts)).ok().as_deref(), Some("ab"));
        let image = json!([{"type": "image_url", "image_url": {"url": "x"}}]);
        assert!(text_of(Some(&image)).is_err());
    }

    #[test]
    fn sampling_names_the_field_out_of_range() {
        let common: Common = serde_json::from_value(json!({"temperature": 3})).expect("common");
        assert!(sampling(&common, None, None).is_err());
        let common: Common =
            serde_json::from_value(json!({"stop": "x", "max_tokens": 5, "seed": -1}))
                .expect("common");
        let s = sampling(&common, Some(7), None).expect("valid");
        assert_eq!(s.max_tokens, Some(7), "max_completion_tokens wins");
        assert_eq!(s.stop, vec!["x".to_owned()]);
        assert_eq!(s.seed, Some(u64::MAX));
    }

    #[test]
    fn statuses_map_to_openai_errors() {
        assert_eq!(
            status_error(&Status::unauthenticated("bad key")).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status_error(&Status::resource_exhausted("slow down")).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status_error(&Status::failed_precondition("insufficient balance")).status(),
            StatusCode::PAYMENT_REQUIRED
        );
        assert_eq!(percent_decode("org%2Fmodel"), "org/model");
    }
}

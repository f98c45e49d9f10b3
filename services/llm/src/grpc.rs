//! The gRPC adapter of the llm service, with the access rule of every RPC.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use llmesh_engine::sampler::SamplingParams;
use llmesh_engine::scheduler::FinishReason;
use llmesh_kit::authn::principal;
use llmesh_kit::convert::{opt_timestamp, timestamp};
use llmesh_kit::{Access, ApiError};
use llmesh_proto::common::v1::{Money, TokenUsage};
use llmesh_proto::llm::v1 as pb;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status};

use crate::providers::{
    NewProvider, Provider, ProviderChanges, ProviderKind, ProviderModel, Secret,
};
use crate::pull::Phase;
use crate::registry::Kind;
use crate::service::{GenEvent, Generation, Input, LlmService, ModelView, PullEvent, State};
use crate::tools::{self, Chat, Role, ToolCall, ToolDef, Turn};

pub const SERVICE_NAME: &str = "llmesh.llm.v1.LlmService";

/// Who may call each llm RPC.
pub const ACCESS: &[(&str, Access)] = &[
    ("/llmesh.llm.v1.LlmService/ListModels", Access::Viewer),
    ("/llmesh.llm.v1.LlmService/GetModel", Access::Viewer),
    ("/llmesh.llm.v1.LlmService/CountTokens", Access::Viewer),
    ("/llmesh.llm.v1.LlmService/Generate", Access::Member),
    ("/llmesh.llm.v1.LlmService/StopGeneration", Access::Member),
    ("/llmesh.llm.v1.LlmService/Embed", Access::Member),
    ("/llmesh.llm.v1.LlmService/PullModel", Access::Admin),
    ("/llmesh.llm.v1.LlmService/DeleteModel", Access::Admin),
    ("/llmesh.llm.v1.LlmService/LoadModel", Access::Admin),
    ("/llmesh.llm.v1.LlmService/UnloadModel", Access::Admin),
    ("/llmesh.llm.v1.LlmService/CreateProvider", Access::Admin),
    ("/llmesh.llm.v1.LlmService/UpdateProvider", Access::Admin),
    ("/llmesh.llm.v1.LlmService/DeleteProvider", Access::Admin),
    ("/llmesh.llm.v1.LlmService/ListProviders", Access::Admin),
    ("/llmesh.llm.v1.LlmService/TestProvider", Access::Admin),
];

/// Most chat messages in one request.
const MAX_MESSAGES: usize = 512;
/// Most stop sequences, and their longest length in bytes.
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 64;
/// Most logit_bias entries in one request.
const MAX_LOGIT_BIASES: usize = 1024;

pub struct GrpcLlmAdapter {
    service: Arc<LlmService>,
}

impl GrpcLlmAdapter {
    pub fn new(service: Arc<LlmService>) -> Self {
        GrpcLlmAdapter { service }
    }
}

type Reply<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::llm_service_server::LlmService for GrpcLlmAdapter {
    async fn list_models(
        &self,
        _req: Request<pb::ListModelsRequest>,
    ) -> Reply<pb::ListModelsResponse> {
        let models = self.service.list().await?;
        Ok(Response::new(pb::ListModelsResponse {
            models: models.iter().map(model_pb).collect(),
        }))
    }

    async fn get_model(&self, req: Request<pb::GetModelRequest>) -> Reply<pb::GetModelResponse> {
        let view = self.service.get(&req.into_inner().id).await?;
        Ok(Response::new(pb::GetModelResponse {
            model: Some(model_pb(&view)),
        }))
    }

    type PullModelStream = BoxStream<pb::PullModelResponse>;

    async fn pull_model(&self, req: Request<pb::PullModelRequest>) -> Reply<Self::PullModelStream> {
        let r = req.into_inner();
        let rx = self
            .service
            .pull(
                &r.source,
                Some(r.id).filter(|s| !s.is_empty()),
                Some(r.sha256).filter(|s| !s.is_empty()),
            )
            .await?;
        let stream = UnboundedReceiverStream::new(rx).map(|event| match event {
            Ok(PullEvent::Progress(p)) => Ok(pb::PullModelResponse {
                phase: phase_pb(p.phase) as i32,
                completed_bytes: p.completed,
                total_bytes: p.total,
                model: None,
            }),
            Ok(PullEvent::Done(manifest)) => Ok(pb::PullModelResponse {
                phase: pb::PullPhase::Done as i32,
                completed_bytes: manifest.size_bytes,
                total_bytes: manifest.size_bytes,
                model: Some(model_pb(&ModelView {
                    manifest: *manifest,
                    state: State::Available,
                    memory_bytes: 0,
                    last_used: None,
                    replicas: Vec::new(),
                    provider: None,
                })),
            }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delete_model(
        &self,
        req: Request<pb::DeleteModelRequest>,
    ) -> Reply<pb::DeleteModelResponse> {
        self.service.delete(&req.into_inner().id).await?;
        Ok(Response::new(pb::DeleteModelResponse {}))
    }

    async fn load_model(&self, req: Request<pb::LoadModelRequest>) -> Reply<pb::LoadModelResponse> {
        let id = req.into_inner().id;
        let evicted_ids = self.service.load_model(&id).await?;
        let view = self.service.get(&id).await?;
        Ok(Response::new(pb::LoadModelResponse {
            model: Some(model_pb(&view)),
            evicted_ids,
        }))
    }

    async fn unload_model(
        &self,
        req: Request<pb::UnloadModelRequest>,
    ) -> Reply<pb::UnloadModelResponse> {
        self.service.unload(&req.into_inner().id).await?;
        Ok(Response::new(pb::UnloadModelResponse {}))
    }

    type GenerateStream = BoxStream<pb::GenerateResponse>;

    async fn generate(&self, req: Request<pb::GenerateRequest>) -> Reply<Self::GenerateStream> {
        let p = principal(&req)?;
        let deadline = llmesh_kit::deadline::from_metadata(req.metadata());
        let r = req.into_inner();
        let input = input(
            r.input.map(|i| match i {
                pb::generate_request::Input::Chat(c) => InputPb::Chat(c),
                pb::generate_request::Input::Prompt(p) => InputPb::Text(p),
            }),
            self.service.config().max_prompt_bytes,
        )?;
        let sampling = r.sampling.unwrap_or_default();
        let (params, max_tokens, stop) = sampling_params(&sampling)?;
        let currency = self.service.spend_currency();
        let rx = self
            .service
            .generate(
                &p,
                Generation {
                    model: r.model,
                    input,
                    sampling: params,
                    max_tokens,
                    stop,
                    deadline,
                    id: (!r.generation_id.is_empty()).then_some(r.generation_id),
                },
            )
            .await?;
        let stream = ReceiverStream::new(rx).map(move |event| generate_event(event, &currency));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stop_generation(
        &self,
        req: Request<pb::StopGenerationRequest>,
    ) -> Reply<pb::StopGenerationResponse> {
        let p = principal(&req)?;
        let stopped = self
            .service
            .stop_generation(&p, &req.into_inner().generation_id)
            .await?;
        Ok(Response::new(pb::StopGenerationResponse { stopped }))
    }

    async fn embed(&self, req: Request<pb::EmbedRequest>) -> Reply<pb::EmbedResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let (vectors, tokens) = self.service.embed(&p, &r.model, r.texts).await?;
        let dimension = vectors.first().map_or(0, |v| v.len() as u32);
        Ok(Response::new(pb::EmbedResponse {
            embeddings: vectors
                .into_iter()
                .map(|values| pb::Embedding { values })
                .collect(),
            prompt_tokens: tokens,
            dimension,
        }))
    }

    async fn create_provider(
        &self,
        req: Request<pb::CreateProviderRequest>,
    ) -> Reply<pb::CreateProviderResponse> {
        let r = req.into_inner();
        let spec = r
            .provider
            .ok_or_else(|| ApiError::invalid("provider is required"))?;
        let kind = provider_kind(spec.kind, "provider.kind")?.ok_or_else(|| {
            ApiError::invalid("provider.kind is required: openai-compatible, anthropic or gemini")
        })?;
        let models = provider_models(spec.models, "provider.models")?;
        let created = self
            .service
            .providers()?
            .create(NewProvider {
                id: spec.id,
                kind: Some(kind),
                base_url: spec.base_url,
                timeout_seconds: (spec.timeout_seconds > 0).then_some(spec.timeout_seconds),
                models,
                enabled: spec.enabled,
                secret: Secret {
                    api_key: r.api_key,
                    headers: r.headers.into_iter().collect(),
                },
            })
            .await?;
        Ok(Response::new(pb::CreateProviderResponse {
            provider: Some(provider_pb(&created)),
        }))
    }

    async fn update_provider(
        &self,
        req: Request<pb::UpdateProviderRequest>,
    ) -> Reply<pb::UpdateProviderResponse> {
        let r = req.into_inner();
        let models = if r.replace_models {
            Some(provider_models(r.models, "models")?)
        } else if !r.models.is_empty() {
            return Err(ApiError::invalid(
                "models is set without replace_models: set replace_models to replace the list",
            )
            .into());
        } else {
            None
        };
        let headers = if r.replace_headers {
            Some(r.headers.into_iter().collect())
        } else if !r.headers.is_empty() {
            return Err(ApiError::invalid(
                "headers is set without replace_headers: set replace_headers to replace them",
            )
            .into());
        } else {
            None
        };
        let updated = self
            .service
            .providers()?
            .update(
                &r.id,
                ProviderChanges {
                    base_url: r.base_url,
                    timeout_seconds: r.timeout_seconds,
                    enabled: r.enabled,
                    models,
                    api_key: r.api_key,
                    headers,
                },
            )
            .await?;
        Ok(Response::new(pb::UpdateProviderResponse {
            provider: Some(provider_pb(&updated)),
        }))
    }

    async fn delete_provider(
        &self,
        req: Request<pb::DeleteProviderRequest>,
    ) -> Reply<pb::DeleteProviderResponse> {
        self.service
            .providers()?
            .delete(&req.into_inner().id)
            .await?;
        Ok(Response::new(pb::DeleteProviderResponse {}))
    }

    async fn list_providers(
        &self,
        _req: Request<pb::ListProvidersRequest>,
    ) -> Reply<pb::ListProvidersResponse> {
        let providers = self.service.providers()?.list().await?;
        Ok(Response::new(pb::ListProvidersResponse {
            providers: providers.iter().map(provider_pb).collect(),
        }))
    }

    async fn test_provider(
        &self,
        req: Request<pb::TestProviderRequest>,
    ) -> Reply<pb::TestProviderResponse> {
        let outcome = self.service.providers()?.test(&req.into_inner().id).await?;
        Ok(Response::new(pb::TestProviderResponse {
            ok: outcome.ok,
            error: outcome.error,
            latency_ms: outcome.latency.as_millis() as u64,
            models: outcome.models,
        }))
    }

    async fn count_tokens(
        &self,
        req: Request<pb::CountTokensRequest>,
    ) -> Reply<pb::CountTokensResponse> {
        let r = req.into_inner();
        let max_bytes = self.service.config().max_prompt_bytes;
        let given = match r.input {
            Some(pb::count_tokens_request::Input::Texts(list)) => {
                let total: usize = list.texts.iter().map(String::len).sum();
                if total > max_bytes {
                    return Err(ApiError::invalid(format!(
                        "texts hold {total} bytes; the limit is {max_bytes}"
                    ))
                    .into());
                }
                let (counts, context_length) =
                    self.service.count_texts(&r.model, list.texts).await?;
                return Ok(Response::new(pb::CountTokensResponse {
                    tokens: counts.iter().fold(0u32, |a, n| a.saturating_add(*n)),
                    context_length,
                    counts,
                }));
            }
            Some(pb::count_tokens_request::Input::Chat(c)) => Some(InputPb::Chat(c)),
            Some(pb::count_tokens_request::Input::Text(t)) => Some(InputPb::Text(t)),
            None => None,
        };
        let input = input(given, max_bytes)?;
        let (tokens, context_length) = self.service.count_tokens(&r.model, input).await?;
        Ok(Response::new(pb::CountTokensResponse {
            tokens,
            context_length,
            counts: Vec::new(),
        }))
    }
}

enum InputPb {
    Chat(pb::ChatInput),
    Text(String),
}

fn input(input: Option<InputPb>, max_bytes: usize) -> Result<Input, ApiError> {
    match input {
        None => Err(ApiError::invalid(
            "input is required: chat messages or a prompt",
        )),
        Some(InputPb::Text(text)) => {
            if text.is_empty() {
                return Err(ApiError::invalid("prompt must not be empty"));
            }
            if text.len() > max_bytes {
                return Err(ApiError::invalid(format!(
                    "prompt is {} bytes; the limit is {max_bytes}",
                    text.len()
                )));
            }
            Ok(Input::Prompt(text))
        }
        Some(InputPb::Chat(chat)) => {
            if chat.messages.is_empty() {
                return Err(ApiError::invalid("chat.messages must not be empty"));
            }
            if chat.messages.len() > MAX_MESSAGES {
                return Err(ApiError::invalid(format!(
                    "chat.messages has {} entries; the limit is {MAX_MESSAGES}",
                    chat.messages.len()
                )));
            }
            let total: usize = chat
                .messages
                .iter()
                .map(|m| {
                    m.content.len()
                        + m.tool_calls
                            .iter()
                            .map(|c| c.arguments_json.len())
                            .sum::<usize>()
                })
                .sum();
            if total > max_bytes {
                return Err(ApiError::invalid(format!(
                    "chat.messages hold {total} bytes; the limit is {max_bytes}"
                )));
            }
            let mut turns = Vec::with_capacity(chat.messages.len());
            for (i, m) in chat.messages.into_iter().enumerate() {
                let role = match pb::ChatRole::try_from(m.role) {
                    Ok(pb::ChatRole::System) => Role::System,
                    Ok(pb::ChatRole::User) => Role::User,
                    Ok(pb::ChatRole::Assistant) => Role::Assistant,
                    Ok(pb::ChatRole::Tool) => Role::Tool,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "chat.messages[{i}].role must be system, user, assistant or tool"
                        )));
                    }
                };
                turns.push(Turn {
                    role,
                    content: m.content,
                    tool_calls: m
                        .tool_calls
                        .into_iter()
                        .map(|c| ToolCall {
                            id: c.id,
                            name: c.name,
                            arguments: c.arguments_json,
                        })
                        .collect(),
                    tool_call_id: m.tool_call_id,
                });
            }
            let mut defs = Vec::with_capacity(chat.tools.len());
            for (i, t) in chat.tools.into_iter().enumerate() {
                let parameters = tools::parse_schema(
                    &format!("chat.tools[{i}].parameters_json"),
                    &t.parameters_json,
                )?;
                defs.push(ToolDef {
                    name: t.name,
                    description: t.description,
                    parameters,
                });
            }
            let choice = tools::parse_choice(&chat.tool_choice, &defs)?;
            let chat = Chat {
                turns,
                tools: defs,
                choice,
            };
            tools::check(&chat)?;
            Ok(Input::Chat(chat))
        }
    }
}

/// Validates sampling settings; returns them with max_tokens and the stop sequences.
pub fn sampling_params(
    s: &pb::SamplingParams,
) -> Result<(SamplingParams, Option<u32>, Vec<String>), ApiError> {
    let range = |name: &str, v: Option<f32>, lo: f32, hi: f32, lo_open: bool, default: f32| {
        let v = v.unwrap_or(default);
        let ok = v.is_finite() && (if lo_open { v > lo } else { v >= lo }) && v <= hi;
        if ok {
            Ok(v)
        } else {
            Err(ApiError::invalid(format!(
                "sampling.{name} must be in {}{lo}, {hi}] (got {v})",
                if lo_open { "(" } else { "[" }
            )))
        }
    };
    let temperature = range("temperature", s.temperature, 0.0, 2.0, false, 0.7)?;
    let top_p = range("top_p", s.top_p, 0.0, 1.0, true, 1.0)?;
    let min_p = range("min_p", s.min_p, 0.0, 1.0, false, 0.0)?;
    if min_p >= 1.0 {
        return Err(ApiError::invalid("sampling.min_p must be below 1"));
    }
    let repeat_penalty = range("repeat_penalty", s.repeat_penalty, 0.0, 2.0, true, 1.0)?;
    let top_k = s.top_k.unwrap_or(0);
    if top_k > 1000 {
        return Err(ApiError::invalid(format!(
            "sampling.top_k must be at most 1000 (got {top_k})"
        )));
    }
    let repeat_last_n = s.repeat_last_n.unwrap_or(64);
    if repeat_last_n > 4096 {
        return Err(ApiError::invalid(format!(
            "sampling.repeat_last_n must be at most 4096 (got {repeat_last_n})"
        )));
    }
    if s.max_tokens == Some(0) {
        return Err(ApiError::invalid("sampling.max_tokens must be at least 1"));
    }
    if s.stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(format!(
            "sampling.stop has {} sequences; the limit is {MAX_STOPS}",
            s.stop.len()
        )));
    }
    if let Some(bad) = s
        .stop
        .iter()
        .find(|x| x.is_empty() || x.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(format!(
            "sampling.stop entries must be 1 to {MAX_STOP_BYTES} bytes (got {} bytes)",
            bad.len()
        )));
    }
    if s.logit_bias.len() > MAX_LOGIT_BIASES {
        return Err(ApiError::invalid(format!(
            "sampling.logit_bias has {} entries; the limit is {MAX_LOGIT_BIASES}",
            s.logit_bias.len()
        )));
    }
    if let Some((id, bias)) = s
        .logit_bias
        .iter()
        .find(|(_, b)| !(b.is_finite() && (-100.0..=100.0).contains(*b)))
    {
        return Err(ApiError::invalid(format!(
            "sampling.logit_bias[{id}] must be in [-100, 100] (got {bias})"
        )));
    }
    let mut logit_bias: Vec<(u32, f32)> = s.logit_bias.iter().map(|(&i, &b)| (i, b)).collect();
    logit_bias.sort_unstable_by_key(|&(i, _)| i);
    let params = SamplingParams {
        temperature,
        top_p,
        top_k: top_k as usize,
        min_p,
        repeat_penalty,
        repeat_last_n: repeat_last_n as usize,
        seed: s.seed.unwrap_or_else(rand_seed),
        ignore_eos: s.ignore_eos.unwrap_or(false),
        logit_bias,
    };
    Ok((params, s.max_tokens, s.stop.clone()))
}

/// Turns one generation event into a stream item; a passed deadline ends the stream with
/// DEADLINE_EXCEEDED.
fn generate_event(event: GenEvent, currency: &str) -> Result<pb::GenerateResponse, Status> {
    let event = match event {
        GenEvent::Delta(text) => pb::generate_response::Event::Delta(text),
        GenEvent::ToolCall { index, call } => {
            pb::generate_response::Event::ToolCall(pb::ToolCallDelta {
                index,
                id: call.id,
                name: call.name,
                arguments: call.arguments,
            })
        }
        GenEvent::Done(done) => pb::generate_response::Event::Done(pb::GenerateDone {
            finish_reason: finish_pb(done.finish) as i32,
            usage: Some(TokenUsage {
                prompt_tokens: done.usage.prompt_tokens,
                completion_tokens: done.usage.completion_tokens,
            }),
            timings: Some(pb::GenerateTimings {
                queue_ms: done.timings.queue_ms,
                prefill_ms: done.timings.prefill_ms,
                prefill_tokens_per_second: done.timings.prefill_tokens_per_second,
                decode_tokens_per_second: done.timings.decode_tokens_per_second,
            }),
            cost: Some(Money {
                micros: done.cost_micros,
                currency: currency.to_owned(),
            }),
            error: done.error.unwrap_or_default(),
        }),
        GenEvent::DeadlineExceeded { completion_tokens } => {
            return Err(Status::deadline_exceeded(format!(
                "the deadline passed after {completion_tokens} generated tokens"
            )));
        }
    };
    Ok(pb::GenerateResponse { event: Some(event) })
}

fn rand_seed() -> u64 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

fn model_pb(v: &ModelView) -> pb::Model {
    let m = &v.manifest;
    let (state, failure_reason) = match &v.state {
        State::Pulling => (pb::ModelState::Pulling, String::new()),
        State::Available => (pb::ModelState::Available, String::new()),
        State::Loading => (pb::ModelState::Loading, String::new()),
        State::Loaded => (pb::ModelState::Loaded, String::new()),
        State::Failed(r) => (pb::ModelState::Failed, r.clone()),
    };
    pb::Model {
        id: m.id.clone(),
        kind: match m.kind {
            Kind::Chat => pb::ModelKind::Chat,
            Kind::Embedding => pb::ModelKind::Embedding,
        } as i32,
        format: m.format.clone(),
        architecture: m.architecture.clone(),
        quantization: m.quantization.clone(),
        context_length: m.context_length,
        size_bytes: m.size_bytes,
        sha256: m.sha256.clone(),
        source: m.source.clone(),
        state: state as i32,
        failure_reason,
        memory_bytes: v.memory_bytes,
        created_at: Some(timestamp(m.created_at)),
        last_used_at: opt_timestamp(v.last_used),
        chat_template: m.chat_template.clone().unwrap_or_default(),
        provider: v.provider.clone().unwrap_or_default(),
        replicas: v
            .replicas
            .iter()
            .map(|r| pb::ModelReplica {
                replica: r.replica.clone(),
                state: match r.state.as_str() {
                    "pulling" => pb::ModelState::Pulling,
                    "available" => pb::ModelState::Available,
                    "loading" => pb::ModelState::Loading,
                    "loaded" => pb::ModelState::Loaded,
                    "failed" => pb::ModelState::Failed,
                    _ => pb::ModelState::Unspecified,
                } as i32,
                detail: r.detail.clone(),
                memory_bytes: r.memory_bytes,
                updated_at: Some(timestamp(r.updated_at)),
            })
            .collect(),
    }
}

fn phase_pb(p: Phase) -> pb::PullPhase {
    match p {
        Phase::Resolving => pb::PullPhase::Resolving,
        Phase::Downloading => pb::PullPhase::Downloading,
        Phase::Extracting => pb::PullPhase::Extracting,
        Phase::Verifying => pb::PullPhase::Verifying,
        Phase::Done => pb::PullPhase::Done,
    }
}

fn finish_pb(f: FinishReason) -> pb::FinishReason {
    match f {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
        FinishReason::Error => pb::FinishReason::Error,
        FinishReason::ToolCalls => pb::FinishReason::ToolCalls,
    }
}

fn provider_kind(kind: i32, field: &str) -> Result<Option<ProviderKind>, ApiError> {
    match pb::ProviderKind::try_from(kind) {
        Ok(pb::ProviderKind::Unspecified) => Ok(None),
        Ok(pb::ProviderKind::OpenaiCompatible) => Ok(Some(ProviderKind::OpenAiCompatible)),
        Ok(pb::ProviderKind::Anthropic) => Ok(Some(ProviderKind::Anthropic)),
        Ok(pb::ProviderKind::Gemini) => Ok(Some(ProviderKind::Gemini)),
        Err(_) => Err(ApiError::invalid(format!(
            "{field} {kind} is not a provider kind"
        ))),
    }
}

fn provider_models(
    models: Vec<pb::ProviderModel>,
    field: &str,
) -> Result<Vec<ProviderModel>, ApiError> {
    models
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let kind = match pb::ModelKind::try_from(m.kind) {
                Ok(pb::ModelKind::Unspecified | pb::ModelKind::Chat) => Kind::Chat,
                Ok(pb::ModelKind::Embedding) => Kind::Embedding,
                Err(_) => {
                    return Err(ApiError::invalid(format!(
                        "{field}[{i}].kind must be CHAT or EMBEDDING"
                    )));
                }
            };
            Ok(ProviderModel {
                name: m.name,
                context_length: m.context_length,
                kind,
                fallback: (!m.fallback.is_empty()).then_some(m.fallback),
            })
        })
        .collect()
}

fn provider_pb(p: &Provider) -> pb::Provider {
    pb::Provider {
        id: p.id.clone(),
        kind: match p.kind {
            ProviderKind::OpenAiCompatible => pb::ProviderKind::OpenaiCompatible,
            ProviderKind::Anthropic => pb::ProviderKind::Anthropic,
            ProviderKind::Gemini => pb::ProviderKind::Gemini,
        } as i32,
        base_url: p.base_url.clone(),
        header_names: p.header_names.clone(),
        timeout_seconds: p.timeout.as_secs() as u32,
        models: p
            .models
            .iter()
            .map(|m| pb::ProviderModel {
                name: m.name.clone(),
                context_length: m.context_length,
                kind: match m.kind {
                    Kind::Chat => pb::ModelKind::Chat,
                    Kind::Embedding => pb::ModelKind::Embedding,
                } as i32,
                fallback: m.fallback.clone().unwrap_or_default(),
            })
            .collect(),
        enabled: p.enabled,
        has_api_key: p.has_api_key,
        created_at: Some(timestamp(p.created_at)),
        updated_at: Some(timestamp(p.updated_at)),
    }
}

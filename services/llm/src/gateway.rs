//! Hosted models through the same Generate, Embed, CountTokens and ListModels as local
//! ones: the prompt estimate behind holds and context checks, the hold before the call,
//! the provider's streamed events relayed, settlement with the provider's own usage (or
//! the tokens counted here when a stream ends before the provider says), cancellation
//! that closes the provider's connection, and the fallback model on UNAVAILABLE.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use llmesh_engine::scheduler::{FinishReason, Timings};
use llmesh_kit::Principal;
use llmesh_kit::signal::Subscription;
use tiktoken_rs::CoreBPE;
use tokio::sync::mpsc;

use crate::error::{LlmError, Result};
use crate::generate::{Finished, GenEvent, Generation, Input};
use crate::providers::wire::{self, ChatCall, WireEvent, WireStream};
use crate::providers::{Provider, Providers, Target};
use crate::registry::{Kind, Manifest};
use crate::service::{LlmService, ModelView, State};
use crate::spend::{SpendRequest, Usage};

/// A conservative count of the tokens of a text for a tokenizer llmesh does not have: one
/// token per two bytes of UTF-8 (byte-level BPEs average three to four bytes per token in
/// English and code; CJK text about three bytes per token), at least one.
pub fn estimate_text(text: &str) -> u32 {
    (text.len().div_ceil(2) as u64).clamp(1, u64::from(u32::MAX)) as u32
}

/// The tokenizer of a hosted model where llmesh has it: OpenAI's BPEs (o200k, cl100k and
/// the older ones) for OpenAI's model names, also behind a router's prefix
/// ("openai/gpt-4o").
pub fn known_tokenizer(model: &str) -> Option<&'static CoreBPE> {
    let name = model.rsplit('/').next().unwrap_or(model);
    let tokenizer = tiktoken_rs::tokenizer::get_tokenizer(name)?;
    tiktoken_rs::bpe_for_tokenizer(tokenizer).ok()
}

/// The tokens of a text: counted with the model's own tokenizer where llmesh has it, else
/// the byte bound of [`estimate_text`].
fn count_text(text: &str, bpe: Option<&CoreBPE>) -> u32 {
    match bpe {
        Some(bpe) => (bpe.count_ordinary(text) as u64).clamp(1, u64::from(u32::MAX)) as u32,
        None => estimate_text(text),
    }
}

/// The estimate of a whole input for the hosted model `model` (the provider's own name):
/// the texts (and tool definitions and calls, as JSON) plus a few tokens per message for
/// the role markers every chat format adds. Exact texts with a known tokenizer, a bound
/// without one. Loading a tokenizer the first time takes a moment: call this off the
/// async threads.
pub fn estimate(input: &Input, model: &str) -> u32 {
    let bpe = known_tokenizer(model);
    match input {
        Input::Prompt(text) => count_text(text, bpe),
        Input::Chat(chat) => {
            let mut tools = 0u32;
            for t in &chat.tools {
                let text = format!("{} {} {}", t.name, t.description, t.parameters);
                tools = tools
                    .saturating_add(count_text(&text, bpe))
                    .saturating_add(4);
            }
            for c in chat.turns.iter().flat_map(|t| &t.tool_calls) {
                let text = format!("{} {} {}", c.id, c.name, c.arguments);
                tools = tools
                    .saturating_add(count_text(&text, bpe))
                    .saturating_add(4);
            }
            chat.turns
                .iter()
                .map(|m| count_text(&m.content, bpe).saturating_add(4))
                .fold(3u32, u32::saturating_add)
                .saturating_add(tools)
        }
    }
}

/// [`estimate`] on a blocking thread.
pub async fn estimate_off_thread(input: &Input, model: &str) -> Result<u32> {
    let (input, model) = (input.clone(), model.to_owned());
    tokio::task::spawn_blocking(move || estimate(&input, &model))
        .await
        .map_err(|e| LlmError::Internal(format!("estimating task: {e}")))
}

/// The completion tokens of a stream that ended before the provider reported usage: the
/// pieces it sent (servers send about a token each) or the text's length at four bytes a
/// token, whichever is more.
fn counted_locally(pieces: u32, bytes: usize) -> u32 {
    pieces.max(bytes.div_ceil(4) as u32)
}

impl LlmService {
    /// Hosted providers, when llm keeps a database.
    pub fn providers(&self) -> Result<&Arc<Providers>> {
        self.providers.as_ref().ok_or_else(|| {
            LlmError::Precondition(
                "hosted providers need llm's database, which this process has not got".into(),
            )
        })
    }

    /// The hosted model `id`, when `id` names one ("provider-id/model").
    pub(crate) async fn hosted(&self, id: &str) -> Result<Option<Target>> {
        if !id.contains('/') {
            return Ok(None);
        }
        match &self.providers {
            Some(p) => p.resolve(id).await,
            None => Err(LlmError::ModelNotFound(id.to_owned())),
        }
    }

    /// Every model of every provider, as ListModels shows them.
    pub(crate) async fn hosted_views(&self) -> Result<Vec<ModelView>> {
        let Some(providers) = &self.providers else {
            return Ok(Vec::new());
        };
        let mut views = Vec::new();
        for p in providers.list().await? {
            for m in &p.models {
                views.push(hosted_view(&p, m));
            }
        }
        Ok(views)
    }

    pub(crate) async fn hosted_view(&self, id: &str) -> Result<Option<ModelView>> {
        let Some((provider_id, name)) = id.split_once('/') else {
            return Ok(None);
        };
        let providers = self
            .providers
            .as_ref()
            .ok_or_else(|| LlmError::ModelNotFound(id.to_owned()))?;
        let p = providers
            .get(provider_id)
            .await
            .map_err(|_| LlmError::ModelNotFound(id.to_owned()))?;
        let m = p
            .model(name)
            .ok_or_else(|| LlmError::ModelNotFound(id.to_owned()))?;
        Ok(Some(hosted_view(&p, m)))
    }

    /// Generates with a hosted model; the same contract as a local generation.
    pub(crate) async fn generate_hosted(
        &self,
        principal: &Principal,
        mut request: Generation,
        target: Target,
        stop_signal: Option<Subscription>,
        submitted_at: Instant,
        may_fall_back: bool,
    ) -> Result<mpsc::Receiver<GenEvent>> {
        let model_id = request.model.clone();
        if target.model.kind == Kind::Embedding {
            return Err(LlmError::Invalid(format!(
                "{model_id} is an embedding model; use Embed, or pick a chat model"
            )));
        }
        if !request.sampling.logit_bias.is_empty() {
            return Err(LlmError::Invalid(
                "sampling.logit_bias names local token ids and works with local models only".into(),
            ));
        }
        if request.sampling.ignore_eos {
            return Err(LlmError::Invalid(
                "sampling.ignore_eos works with local models only".into(),
            ));
        }
        let prompt_estimate = estimate_off_thread(&request.input, &target.model.name).await?;
        let context = target.model.context_length;
        let max_tokens = match request.max_tokens {
            Some(n) => {
                if prompt_estimate.saturating_add(n) > context {
                    return Err(LlmError::Invalid(format!(
                        "prompt of about {prompt_estimate} tokens plus max_tokens {n} exceeds {model_id}'s context of {context} tokens"
                    )));
                }
                n
            }
            None => {
                if prompt_estimate >= context {
                    return Err(LlmError::Invalid(format!(
                        "prompt of about {prompt_estimate} tokens leaves no room in {model_id}'s context of {context} tokens"
                    )));
                }
                self.config
                    .default_max_tokens
                    .min(context - prompt_estimate)
            }
        };
        let providers = self.providers()?.clone();
        let reservation = self
            .spend
            .reserve(SpendRequest {
                principal,
                model: &model_id,
                prompt_tokens: prompt_estimate,
                max_tokens,
                context_length: context,
                idempotency_key: uuid::Uuid::now_v7().to_string(),
            })
            .await?;
        let call = ChatCall {
            model: target.model.name.clone(),
            input: request.input.clone(),
            max_tokens,
            temperature: request.sampling.temperature,
            top_p: request.sampling.top_p,
            top_k: request.sampling.top_k,
            seed: Some(request.sampling.seed),
            stop: request.stop.clone(),
        };
        // Wait for the provider's first piece of output (or its refusal) before answering,
        // so a refusal reaches the client as its error code and can move to the fallback.
        let opened = async {
            let mut stream = wire::start_chat(&providers.http, &target, call).await?;
            let mut early = Vec::new();
            loop {
                match stream.next().await {
                    Some(Ok(event)) => {
                        let output = matches!(
                            event,
                            WireEvent::Delta(_) | WireEvent::ToolCall { .. } | WireEvent::Finish(_)
                        );
                        early.push(event);
                        if output {
                            break;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => break,
                }
            }
            Ok::<(WireStream, Vec<WireEvent>), LlmError>((stream, early))
        };
        let opened = match request.deadline {
            Some(at) => match tokio::time::timeout_at(at.into(), opened).await {
                Ok(r) => r,
                Err(_) => Err(LlmError::Unavailable(format!(
                    "provider {} did not start answering before the request's deadline",
                    target.provider.id
                ))),
            },
            None => opened.await,
        };
        let (stream, early) = match opened {
            Ok(s) => s,
            Err(e) => {
                let _ = self.spend.settle(&reservation, Usage::default()).await;
                self.metrics
                    .generations
                    .with_label_values(&[model_id.as_str(), "error"])
                    .inc();
                if let (LlmError::Unavailable(why), Some(fallback), true) =
                    (&e, &target.model.fallback, may_fall_back)
                {
                    tracing::warn!(model = %model_id, fallback = %fallback, error = %why, "moving to the fallback model");
                    request.model = fallback.clone();
                    return Box::pin(self.generate_routed(
                        principal,
                        request,
                        stop_signal,
                        submitted_at,
                        false,
                    ))
                    .await;
                }
                tracing::warn!(model = %model_id, error = %e, "hosted generation refused");
                return Err(e);
            }
        };

        let (client_tx, client_rx) = mpsc::channel(64);
        let spend = self.spend.clone();
        let metrics = self.metrics.clone();
        let deadline = request.deadline.map(tokio::time::Instant::from_std);
        let task_span = tracing::Span::current();
        let provider_id = target.provider.id.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let labels = [model_id.as_str()];
                let ttft = metrics.time_to_first_token.with_label_values(&labels);
                let itl = metrics.inter_token_latency.with_label_values(&labels);
                let mut stream = futures::stream::iter(early.into_iter().map(Ok)).chain(stream);
                let stop = async {
                    match stop_signal {
                        Some(mut s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(stop);
                let expiry = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(expiry);
                let (mut pieces, mut bytes) = (0u32, 0usize);
                let (mut reported_prompt, mut reported_completion) = (None, None);
                let mut finish: Option<FinishReason> = None;
                let mut error: Option<String> = None;
                let mut cancelled = false;
                let mut expired = false;
                let mut last: Option<Instant> = None;
                let mut first: Option<Instant> = None;
                loop {
                    tokio::select! {
                        _ = &mut expiry => { expired = true; break; }
                        _ = &mut stop => { cancelled = true; break; }
                        _ = client_tx.closed() => { cancelled = true; break; }
                        event = stream.next() => match event {
                            Some(Ok(WireEvent::Delta(text))) => {
                                let now = Instant::now();
                                match last {
                                    None => {
                                        ttft.observe((now - submitted_at).as_secs_f64());
                                        first = Some(now);
                                    }
                                    Some(at) => itl.observe((now - at).as_secs_f64()),
                                }
                                last = Some(now);
                                pieces += 1;
                                bytes += text.len();
                                if client_tx.send(GenEvent::Delta(text)).await.is_err() {
                                    cancelled = true;
                                    break;
                                }
                            }
                            Some(Ok(WireEvent::ToolCall { index, .. })) if index as usize >= crate::tools::MAX_CALLS => {
                                error = Some(format!(
                                    "provider {} sent more than {} tool calls in one reply",
                                    provider_id,
                                    crate::tools::MAX_CALLS
                                ));
                                break;
                            }
                            Some(Ok(WireEvent::ToolCall { index, call })) => {
                                let now = Instant::now();
                                if last.is_none() {
                                    ttft.observe((now - submitted_at).as_secs_f64());
                                    first = Some(now);
                                }
                                last = Some(now);
                                pieces += 1;
                                bytes += call.id.len() + call.name.len() + call.arguments.len();
                                if client_tx.send(GenEvent::ToolCall { index, call }).await.is_err() {
                                    cancelled = true;
                                    break;
                                }
                            }
                            Some(Ok(WireEvent::Usage { prompt, completion })) => {
                                reported_prompt = prompt.or(reported_prompt);
                                reported_completion = completion.or(reported_completion);
                            }
                            Some(Ok(WireEvent::Finish(reason))) => finish = Some(reason),
                            Some(Err(e)) => {
                                tracing::warn!(model = %model_id, error = %e, "hosted stream failed");
                                error = Some(e.to_string());
                                break;
                            }
                            None => break,
                        },
                    }
                }
                // Dropping the stream closes the provider's connection: it stops working.
                drop(stream);
                let local = counted_locally(pieces, bytes);
                let usage = Usage {
                    prompt_tokens: reported_prompt.unwrap_or(prompt_estimate),
                    completion_tokens: reported_completion.unwrap_or(local),
                };
                let finish = if error.is_some() {
                    FinishReason::Error
                } else if cancelled || expired {
                    FinishReason::Cancelled
                } else {
                    finish.unwrap_or(FinishReason::Stop)
                };
                metrics
                    .prompt_tokens
                    .with_label_values(&labels)
                    .inc_by(u64::from(usage.prompt_tokens));
                metrics
                    .generated_tokens
                    .with_label_values(&labels)
                    .inc_by(u64::from(usage.completion_tokens));
                let ended = match (expired, finish) {
                    (true, _) => "deadline",
                    (_, FinishReason::Stop) => "stop",
                    (_, FinishReason::Length) => "length",
                    (_, FinishReason::Cancelled) => "cancelled",
                    (_, FinishReason::Error) => "error",
                    (_, FinishReason::ToolCalls) => "tool_calls",
                };
                metrics
                    .generations
                    .with_label_values(&[model_id.as_str(), ended])
                    .inc();
                let cost = match spend.settle(&reservation, usage).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(reservation = %reservation.id, error = %e, "settling spend failed");
                        0
                    }
                };
                let decode_secs = match (first, last) {
                    (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
                    _ => 0.0,
                };
                let timings = Timings {
                    queue_ms: 0,
                    prefill_ms: first.map_or(0, |f| (f - submitted_at).as_millis() as u64),
                    prefill_tokens_per_second: 0.0,
                    decode_tokens_per_second: if decode_secs > 0.0 {
                        (usage.completion_tokens.saturating_sub(1) as f64 / decode_secs) as f32
                    } else {
                        0.0
                    },
                };
                let last_event = if expired {
                    GenEvent::DeadlineExceeded {
                        completion_tokens: usage.completion_tokens,
                    }
                } else {
                    GenEvent::Done(Finished {
                        finish,
                        usage,
                        timings,
                        cost_micros: cost,
                        error,
                    })
                };
                let _ = client_tx.send(last_event).await;
            },
            task_span,
        ));
        Ok(client_rx)
    }

    /// Embeds with a hosted embedding model.
    pub(crate) async fn embed_hosted(
        &self,
        target: &Target,
        texts: &[String],
    ) -> Result<(Vec<Vec<f32>>, u32)> {
        if target.model.kind != Kind::Embedding {
            return Err(LlmError::Invalid(format!(
                "{}/{} is a chat model; Embed needs an embedding model",
                target.provider.id, target.model.name
            )));
        }
        wire::embed(&self.providers()?.http, target, texts).await
    }
}

fn hosted_view(p: &Provider, m: &crate::providers::ProviderModel) -> ModelView {
    ModelView {
        manifest: Manifest {
            id: format!("{}/{}", p.id, m.name),
            kind: m.kind,
            format: "hosted".into(),
            file: String::new(),
            sha256: String::new(),
            size_bytes: 0,
            architecture: p.kind.as_str().into(),
            context_length: m.context_length,
            quantization: String::new(),
            source: p.base_url.clone(),
            chat_template: None,
            created_at: p.created_at,
        },
        state: if p.enabled {
            State::Available
        } else {
            State::Failed(format!("provider {} is disabled", p.id))
        },
        memory_bytes: 0,
        last_used: None,
        replicas: Vec::new(),
        provider: Some(p.id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_bound_real_token_counts() {
        // SmolLM2's tokenizer gives 9 tokens for this sentence; the estimate must not be lower.
        assert!(estimate_text("The quick brown fox jumps over the lazy dog.") >= 9);
        assert_eq!(estimate_text(""), 1);
        assert_eq!(counted_locally(3, 40), 10);
        assert_eq!(counted_locally(12, 8), 12);
    }

    #[test]
    fn openai_models_are_counted_with_their_own_tokenizer() {
        use crate::tools::{Chat, Role, Turn};
        // "Hello, world!" is four o200k tokens: Hello , world !
        let chat = Input::Chat(Chat::plain(vec![Turn::new(Role::User, "Hello, world!")]));
        assert_eq!(estimate(&chat, "gpt-4o-mini"), 3 + 4 + 4);
        assert_eq!(estimate(&chat, "openai/gpt-4o"), 3 + 4 + 4);
        // An unknown tokenizer falls back to the byte bound: 13 bytes → 7.
        assert_eq!(estimate(&chat, "claude-sonnet-4"), 3 + 7 + 4);
        assert!(known_tokenizer("gpt-3.5-turbo").is_some());
        assert!(known_tokenizer("mistral-large").is_none());
    }
}

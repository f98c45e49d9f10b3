//! Generation, embeddings and token counts on a loaded model: the one path that spends
//! (a hold before any work, settled on every path), streaming, stops from any process,
//! deadlines, and the metrics and trace spans of each generation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llmesh_engine::ChatModel;
use llmesh_engine::sampler::SamplingParams;
use llmesh_engine::scheduler::{Event, FinishReason, Request, Timings};
use llmesh_kit::Principal;
use tokio::sync::mpsc;

use crate::error::{LlmError, Result};
use crate::service::{LlmService, Runtime};
use crate::spend::{SpendRequest, Usage};
use crate::tools::{Chat, ToolCall};

/// Most texts one CountTokens call may count.
pub const MAX_COUNT_TEXTS: usize = 4096;

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Input {
    Chat(Chat),
    Prompt(String),
}

/// A validated generation request.
#[derive(Debug)]
pub struct Generation {
    pub model: String,
    pub input: Input,
    pub sampling: SamplingParams,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// When the client stops waiting.
    pub deadline: Option<Instant>,
    /// The caller's name for it, so [`LlmService::stop_generation`] can stop it and the
    /// stream still ends with the final message (with the settled cost).
    pub id: Option<String>,
}

/// The end of a generation as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub finish: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    pub cost_micros: i64,
    pub error: Option<String>,
}

/// What a generation streams.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Delta(String),
    /// A piece of a tool call (hosted models given tools).
    ToolCall {
        index: u32,
        /// The call's id and name on its first piece; empty on later ones.
        call: ToolCall,
    },
    Done(Finished),
    /// The request's deadline passed; the sequence was stopped and billed for what it made.
    DeadlineExceeded {
        completion_tokens: u32,
    },
}

impl LlmService {
    async fn tokens(
        &self,
        model_id: &str,
        model: &Arc<ChatModel>,
        input: Input,
    ) -> Result<Vec<u32>> {
        // A chat's messages as the template takes them, or the raw prompt.
        let work = match input {
            Input::Chat(chat) => Ok(chat.template_messages(model_id)?),
            Input::Prompt(text) => Err(text),
        };
        let model = model.clone();
        tokio::task::spawn_blocking(move || match work {
            Ok(messages) => model.chat_tokens(&messages),
            Err(text) => model.text_tokens(&text),
        })
        .await
        .map_err(|e| LlmError::Internal(format!("tokenizing task: {e}")))?
        .map_err(LlmError::from)
    }

    /// Counts tokens as Generate would see them; returns (tokens, context length).
    pub async fn count_tokens(&self, model: &str, input: Input) -> Result<(u32, u32)> {
        if let Some(target) = self.hosted(model).await? {
            // The same estimate the hold and the context check use.
            return Ok((
                crate::gateway::estimate_off_thread(&input, &target.model.name).await?,
                target.model.context_length,
            ));
        }
        let m = self.chat_model(model).await?;
        let tokens = self.tokens(model, &m, input).await?;
        Ok((tokens.len() as u32, m.info.context_length))
    }

    /// Counts each text's tokens with `model` (chat or embedding; hosted models by the
    /// estimate); returns the counts and the model's context (for embedding models, the
    /// tokens one input may hold).
    pub async fn count_texts(&self, model: &str, texts: Vec<String>) -> Result<(Vec<u32>, u32)> {
        if texts.len() > MAX_COUNT_TEXTS {
            return Err(LlmError::Invalid(format!(
                "texts holds {} entries; the limit is {MAX_COUNT_TEXTS}",
                texts.len()
            )));
        }
        if let Some(target) = self.hosted(model).await? {
            let name = target.model.name.clone();
            let counts = tokio::task::spawn_blocking(move || {
                texts
                    .iter()
                    .map(|t| crate::gateway::estimate(&Input::Prompt(t.clone()), &name))
                    .collect::<Vec<u32>>()
            })
            .await
            .map_err(|e| LlmError::Internal(format!("counting task: {e}")))?;
            return Ok((counts, target.model.context_length));
        }
        let clamp = |n: usize| n.min(u32::MAX as usize) as u32;
        match self.runtime(model).await? {
            Runtime::Embedding(m) => {
                let max = clamp(m.max_tokens);
                let counts = tokio::task::spawn_blocking(move || {
                    texts
                        .iter()
                        .map(|t| m.count_tokens(t).map(clamp))
                        .collect::<std::result::Result<Vec<u32>, _>>()
                })
                .await
                .map_err(|e| LlmError::Internal(format!("counting task: {e}")))??;
                Ok((counts, max))
            }
            Runtime::Chat(m) => {
                let context = m.info.context_length;
                let counts = tokio::task::spawn_blocking(move || {
                    texts
                        .iter()
                        .map(|t| m.text_tokens(t).map(|ids| clamp(ids.len())))
                        .collect::<std::result::Result<Vec<u32>, _>>()
                })
                .await
                .map_err(|e| LlmError::Internal(format!("counting task: {e}")))??;
                Ok((counts, context))
            }
        }
    }

    /// Stops every running generation `principal` started under `id`, in this process or
    /// any other sharing the signals; true when one ran here.
    pub async fn stop_generation(&self, principal: &Principal, id: &str) -> Result<bool> {
        check_generation_id(id)?;
        Ok(self.signals.send(&stop_key(principal, id)).await > 0)
    }

    /// Starts a generation. Spend is reserved before any work and settled on every path;
    /// the last event carries the settled cost.
    pub async fn generate(
        &self,
        principal: &Principal,
        request: Generation,
    ) -> Result<mpsc::Receiver<GenEvent>> {
        let submitted_at = Instant::now();
        // Subscribed before any work, so a stop sent from now on is heard.
        let stop_signal = match &request.id {
            Some(id) => {
                check_generation_id(id)?;
                Some(self.signals.subscribe(&stop_key(principal, id)))
            }
            None => None,
        };
        self.generate_routed(principal, request, stop_signal, submitted_at, true)
            .await
    }

    /// Runs a generation where its model lives: a provider for hosted models, the engine
    /// for local ones.
    pub(crate) async fn generate_routed(
        &self,
        principal: &Principal,
        request: Generation,
        stop_signal: Option<llmesh_kit::signal::Subscription>,
        submitted_at: Instant,
        may_fall_back: bool,
    ) -> Result<mpsc::Receiver<GenEvent>> {
        if let Some(target) = self.hosted(&request.model).await? {
            return self
                .generate_hosted(
                    principal,
                    request,
                    target,
                    stop_signal,
                    submitted_at,
                    may_fall_back,
                )
                .await;
        }
        let model = self.chat_model(&request.model).await?;
        let vocab = model.tokenizer.vocab_size();
        if let Some((id, _)) = request
            .sampling
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= vocab)
        {
            return Err(LlmError::Invalid(format!(
                "sampling.logit_bias names token {id}, outside {}'s vocabulary of {vocab} tokens",
                request.model
            )));
        }
        let prompt = self.tokens(&request.model, &model, request.input).await?;
        if prompt.is_empty() {
            return Err(LlmError::Invalid(
                "the input is empty after tokenizing".into(),
            ));
        }
        let context = model.info.context_length;
        let prompt_len = prompt.len() as u32;
        let max_tokens = match request.max_tokens {
            Some(n) => {
                if prompt_len.saturating_add(n) > context {
                    return Err(LlmError::Invalid(format!(
                        "prompt of {prompt_len} tokens plus max_tokens {n} exceeds the model's context of {context} tokens"
                    )));
                }
                n
            }
            None => {
                if prompt_len >= context {
                    return Err(LlmError::Invalid(format!(
                        "prompt of {prompt_len} tokens leaves no room in the model's context of {context} tokens"
                    )));
                }
                self.config.default_max_tokens.min(context - prompt_len)
            }
        };

        let reservation = self
            .spend
            .reserve(SpendRequest {
                principal,
                model: &request.model,
                prompt_tokens: prompt_len,
                max_tokens,
                context_length: context,
                idempotency_key: uuid::Uuid::now_v7().to_string(),
            })
            .await?;

        let (engine_tx, mut engine_rx) = mpsc::unbounded_channel();
        let submitted = model.generate(Request {
            prompt,
            sampling: request.sampling,
            max_tokens: max_tokens as usize,
            stop: request.stop,
            emit_tokens: true,
            events: engine_tx,
        });
        if let Err(e) = submitted {
            // Nothing ran: settle to zero so the hold is released.
            let _ = self.spend.settle(&reservation, Usage::default()).await;
            return Err(e.into());
        }

        let (client_tx, client_rx) = mpsc::channel(64);
        let spend = self.spend.clone();
        let deadline = request.deadline.map(tokio::time::Instant::from_std);
        let metrics = self.metrics.clone();
        let model_id = request.model.clone();
        // The engine's work, and the settlement, belong to the RPC that asked for them.
        let rpc_span = tracing::Span::current();
        let task_span = rpc_span.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let ttft = metrics
                    .time_to_first_token
                    .with_label_values(&[model_id.as_str()]);
                let itl = metrics
                    .inter_token_latency
                    .with_label_values(&[model_id.as_str()]);
                let mut last_token: Option<Instant> = None;
                let mut first_token: Option<Instant> = None;
                let stop = async {
                    match stop_signal {
                        Some(mut subscription) => subscription.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(stop);
                let mut produced = 0u32;
                let mut outcome: Option<llmesh_engine::scheduler::Done> = None;
                let mut expired = false;
                let expiry = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(expiry);
                loop {
                    tokio::select! {
                        _ = &mut expiry => {
                            expired = true;
                            break;
                        }
                        _ = &mut stop => break,
                        event = engine_rx.recv() => match event {
                            Some(Event::Token(_)) => {
                                produced += 1;
                                let now = Instant::now();
                                match last_token {
                                    None => {
                                        ttft.observe((now - submitted_at).as_secs_f64());
                                        first_token = Some(now);
                                    }
                                    Some(at) => itl.observe((now - at).as_secs_f64()),
                                }
                                last_token = Some(now);
                            }
                            Some(Event::Delta(text)) => {
                                if client_tx.send(GenEvent::Delta(text)).await.is_err() {
                                    break;
                                }
                            }
                            Some(Event::Done(done)) => {
                                outcome = Some(done);
                                break;
                            }
                            None => break,
                        },
                        _ = client_tx.closed() => break,
                    }
                }
                // Dropping the engine receiver makes the scheduler drop the sequence.
                drop(engine_rx);
                let (finish, usage, timings, error) = match outcome {
                    Some(done) => (
                        done.finish,
                        Usage {
                            prompt_tokens: done.prompt_tokens,
                            completion_tokens: done.completion_tokens,
                        },
                        done.timings,
                        // The engine's own text is for the logs.
                        done.error.map(|e| {
                            tracing::error!(model = %model_id, error = %e, "generation failed in the engine");
                            "generation failed inside the engine; try again".to_owned()
                        }),
                    ),
                    None => (
                        FinishReason::Cancelled,
                        Usage {
                            prompt_tokens: prompt_len,
                            completion_tokens: produced,
                        },
                        Timings::default(),
                        None,
                    ),
                };
                let labels = [model_id.as_str()];
                metrics
                    .prompt_tokens
                    .with_label_values(&labels)
                    .inc_by(u64::from(usage.prompt_tokens));
                metrics
                    .generated_tokens
                    .with_label_values(&labels)
                    .inc_by(u64::from(usage.completion_tokens));
                let ended = if expired {
                    "deadline"
                } else {
                    match finish {
                        FinishReason::Stop => "stop",
                        FinishReason::Length => "length",
                        FinishReason::Cancelled => "cancelled",
                        FinishReason::Error => "error",
                        FinishReason::ToolCalls => "tool_calls",
                    }
                };
                metrics
                    .generations
                    .with_label_values(&[model_id.as_str(), ended])
                    .inc();
                if let (Some(first), false) = (first_token, expired) {
                    engine_spans(&rpc_span, &model_id, first, &timings, usage);
                }
                let cost = match spend.settle(&reservation, usage).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(reservation = %reservation.id, error = %e, "settling spend failed");
                        0
                    }
                };
                let last = if expired {
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
                let _ = client_tx.send(last).await;
            },
            task_span,
        ));
        Ok(client_rx)
    }

    /// Embeds texts with an embedding model, local or hosted, billed per input token like
    /// prompts: a hold on an estimate first, settled to the real count.
    pub async fn embed(
        &self,
        principal: &Principal,
        model: &str,
        texts: Vec<String>,
    ) -> Result<(Vec<Vec<f32>>, u32)> {
        self.check_embed_inputs(&texts)?;
        let hosted = self.hosted(model).await?;
        if hosted.is_none() {
            // Refuse a wrong or missing model before holding anything.
            self.embedding_model(model).await?;
        }
        let estimate: u32 = texts
            .iter()
            .map(|t| crate::gateway::estimate_text(t))
            .fold(0, u32::saturating_add);
        let reservation = self
            .spend
            .reserve(SpendRequest {
                principal,
                model,
                prompt_tokens: estimate,
                max_tokens: 0,
                context_length: 0,
                idempotency_key: uuid::Uuid::now_v7().to_string(),
            })
            .await?;
        let result = match &hosted {
            Some(target) => self.embed_hosted(target, &texts).await,
            None => self.embed_local(model, texts).await,
        };
        let tokens = result.as_ref().map_or(0, |(_, t)| *t);
        if let Err(e) = self
            .spend
            .settle(
                &reservation,
                Usage {
                    prompt_tokens: tokens,
                    completion_tokens: 0,
                },
            )
            .await
        {
            tracing::error!(reservation = %reservation.id, error = %e, "settling embedding spend failed");
        }
        result
    }

    fn check_embed_inputs(&self, texts: &[String]) -> Result<()> {
        if texts.is_empty() {
            return Err(LlmError::Invalid("texts must not be empty".into()));
        }
        if texts.len() > self.config.max_embed_inputs {
            return Err(LlmError::Invalid(format!(
                "at most {} texts per call (got {})",
                self.config.max_embed_inputs,
                texts.len()
            )));
        }
        if let Some((i, t)) = texts
            .iter()
            .enumerate()
            .find(|(_, t)| t.chars().count() > self.config.max_embed_chars)
        {
            return Err(LlmError::Invalid(format!(
                "texts[{i}] has {} characters; the limit is {}",
                t.chars().count(),
                self.config.max_embed_chars
            )));
        }
        Ok(())
    }

    async fn embedding_model(
        &self,
        model: &str,
    ) -> Result<Arc<llmesh_engine::embed::EmbeddingModel>> {
        match self.runtime(model).await? {
            Runtime::Embedding(m) => Ok(m),
            Runtime::Chat(_) => Err(LlmError::Invalid(format!(
                "{model} is a chat model; Embed needs an embedding model such as {}",
                self.config.default_embedding_model
            ))),
        }
    }

    async fn embed_local(&self, model: &str, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, u32)> {
        let m = self.embedding_model(model).await?;
        let (vectors, tokens) = tokio::task::spawn_blocking(move || m.embed(&texts))
            .await
            .map_err(|e| LlmError::Internal(format!("embedding task: {e}")))??;
        Ok((vectors, tokens as u32))
    }
}

/// Records the engine's queue wait, prefill and decode of one generation as child spans
/// of its RPC, with their real times (the engine measured them on its own thread).
fn engine_spans(
    rpc: &tracing::Span,
    model: &str,
    first_token: Instant,
    timings: &Timings,
    usage: Usage,
) {
    use opentelemetry::KeyValue;
    let wall =
        |at: Instant| std::time::SystemTime::now() - Instant::now().saturating_duration_since(at);
    let decode_end = wall(Instant::now());
    let decode_start = wall(first_token);
    let admitted = decode_start - Duration::from_millis(timings.prefill_ms);
    let queued = admitted - Duration::from_millis(timings.queue_ms);
    let model = KeyValue::new("llm.model", model.to_owned());
    llmesh_kit::trace::record_child(rpc, "engine.queue", queued, admitted, vec![model.clone()]);
    llmesh_kit::trace::record_child(
        rpc,
        "engine.prefill",
        admitted,
        decode_start,
        vec![
            model.clone(),
            KeyValue::new("llm.prompt_tokens", i64::from(usage.prompt_tokens)),
        ],
    );
    llmesh_kit::trace::record_child(
        rpc,
        "engine.decode",
        decode_start,
        decode_end,
        vec![
            model,
            KeyValue::new("llm.completion_tokens", i64::from(usage.completion_tokens)),
        ],
    );
}

/// The signal that stops `principal`'s generations named `id`.
fn stop_key(principal: &Principal, id: &str) -> String {
    format!("llm.stop/{}/{id}", principal.user_id)
}

/// Generation ids are the caller's: 1-64 characters of letters, digits, '-' and '_'.
fn check_generation_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(LlmError::Invalid(
            "generation_id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '_'".into(),
        ))
    }
}

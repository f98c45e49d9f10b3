//! The scheduler: an actor on its own thread that owns a loaded model, admits requests
//! from a bounded queue, and runs continuous batching. Every step runs one forward pass
//! over all running sequences (prompt chunks and single decode tokens together); new
//! sequences join between steps; finished, failed and cancelled ones leave and free their
//! KV cache. A sequence whose receiver is gone (client cancelled, deadline passed) is
//! dropped before the next step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::error::{EngineError, Result};
use crate::llama::{KvCache, Llama, SeqInput};
use crate::sampler::{Sampler, SamplingParams};
use crate::stream::TextStream;
use crate::tokenizer::GgufTokenizer;

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Requests allowed to wait for a slot; beyond that, submissions are refused.
    pub queue_capacity: usize,
    /// Sequences decoding at once.
    pub max_running: usize,
    /// Prompt tokens processed per step across all sequences (decode rows come on top).
    pub prefill_chunk: usize,
    /// Finished sequences whose KV cache is kept so a later prompt that starts the same
    /// way (the next turn of a conversation) skips that prefix; 0 turns reuse off.
    pub prefix_cache_entries: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            queue_capacity: 64,
            max_running: 16,
            prefill_chunk: 256,
            prefix_cache_entries: 16,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
    Error,
    /// The model stopped to have tools called (hosted models; the engine never ends so).
    ToolCalls,
}

/// Timings of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub queue_ms: u64,
    pub prefill_ms: u64,
    pub prefill_tokens_per_second: f32,
    pub decode_tokens_per_second: f32,
}

/// The last event of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub finish: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub timings: Timings,
    pub error: Option<String>,
}

/// What a generation streams back.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text to show (whole characters, never part of a stop sequence).
    Delta(String),
    /// Generated token ids, for tests that compare against a reference engine.
    Token(u32),
    Done(Done),
}

/// One generation request.
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Also send [`Event::Token`] for every generated id.
    pub emit_tokens: bool,
    pub events: UnboundedSender<Event>,
}

/// Counters the scheduler keeps; tests and metrics read them.
#[derive(Debug, Default)]
pub struct Counters {
    pub queued: AtomicUsize,
    pub running: AtomicUsize,
    pub steps: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub kv_cache_bytes: AtomicUsize,
    /// The most sequences seen in one step.
    pub max_batch: AtomicUsize,
    /// Sequences in the latest step, and summed over every step (mean batch size =
    /// batched_rows / steps).
    pub last_batch: AtomicUsize,
    pub batched_rows: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Prompt tokens taken from the prefix cache instead of being computed.
    pub reused_prompt_tokens: AtomicU64,
    /// Bytes held by the prefix cache.
    pub prefix_cache_bytes: AtomicUsize,
}

/// KV caches of finished sequences with the tokens they hold, newest last.
#[derive(Default)]
struct PrefixCache {
    entries: Vec<(Vec<u32>, KvCache)>,
}

/// A shared prefix shorter than this is not worth a lookup hit.
const MIN_REUSE: usize = 16;
/// Most memory the kept caches may take together; the oldest go first.
const PREFIX_CACHE_MAX_BYTES: usize = 64 << 20;

impl PrefixCache {
    /// Takes the entry sharing the longest prefix with `prompt` (at least MIN_REUSE
    /// tokens), cut to that prefix; at least one prompt token is left to compute so the
    /// step yields logits.
    fn take(&mut self, prompt: &[u32]) -> Option<KvCache> {
        let limit = prompt.len().saturating_sub(1);
        let (best, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (tokens, _))| {
                let common = tokens
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, common.min(limit))
            })
            .max_by_key(|&(_, len)| len)?;
        if len < MIN_REUSE {
            return None;
        }
        let (_, mut cache) = self.entries.remove(best);
        cache.truncate(len);
        Some(cache)
    }

    fn put(&mut self, tokens: Vec<u32>, cache: KvCache, capacity: usize) {
        if capacity == 0 || cache.len() < MIN_REUSE {
            return;
        }
        // A newer cache covering an older one's tokens replaces it.
        self.entries.retain(|(t, _)| !tokens.starts_with(t));
        self.entries.push((tokens, cache));
        while self.entries.len() > capacity || self.bytes() > PREFIX_CACHE_MAX_BYTES {
            self.entries.remove(0);
        }
    }

    fn bytes(&self) -> usize {
        self.entries.iter().map(|(_, c)| c.bytes()).sum()
    }
}

struct Submitted {
    request: Request,
    at: Instant,
}

/// Handle to a running scheduler. Dropping every handle stops it once its work is done.
#[derive(Clone)]
pub struct Scheduler {
    tx: SyncSender<Submitted>,
    counters: Arc<Counters>,
    capacity: usize,
}

impl Scheduler {
    /// Starts the actor thread for `model`.
    pub fn start(
        name: &str,
        model: Arc<Llama>,
        tokenizer: Arc<GgufTokenizer>,
        config: SchedulerConfig,
    ) -> Result<Scheduler> {
        let capacity = config.queue_capacity.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            model,
            tokenizer,
            config,
            counters: counters.clone(),
            waiting: Vec::new(),
            running: Vec::new(),
            prefixes: PrefixCache::default(),
        };
        std::thread::Builder::new()
            .name(format!("llmesh-engine-{name}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::Load(format!("cannot start the engine thread: {e}")))?;
        Ok(Scheduler {
            tx,
            counters,
            capacity,
        })
    }

    /// Queues a request, or refuses it when the queue is full.
    pub fn submit(&self, request: Request) -> Result<()> {
        let queued = self.counters.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.capacity {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::QueueFull(queued));
        }
        match self.tx.try_send(Submitted {
            request,
            at: Instant::now(),
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                Err(EngineError::QueueFull(queued))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                Err(EngineError::Stopped)
            }
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// True while any request is queued or running.
    pub fn busy(&self) -> bool {
        self.counters.queued.load(Ordering::SeqCst) + self.counters.running.load(Ordering::SeqCst)
            > 0
    }
}

struct Sequence {
    request: Request,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    /// The sequence's KV cache.
    state: KvCache,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Every token so far (prompt and output), for the repeat penalty.
    history: Vec<u32>,
    generated: usize,
    sampler: Sampler,
    text: TextStream,
    /// The token to feed next once the prompt is done.
    next: Option<u32>,
}

struct Worker {
    model: Arc<Llama>,
    tokenizer: Arc<GgufTokenizer>,
    config: SchedulerConfig,
    counters: Arc<Counters>,
    waiting: Vec<Submitted>,
    running: Vec<Sequence>,
    prefixes: PrefixCache,
}

impl Worker {
    fn run(mut self, rx: Receiver<Submitted>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(s) => self.waiting.push(s),
                    Err(_) => break,
                }
            }
            while let Ok(s) = rx.try_recv() {
                self.waiting.push(s);
            }
            self.drop_cancelled();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
        }
        tracing::debug!("engine thread stopped");
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.request.events.is_closed());
        let gone = before - self.waiting.len();
        if gone > 0 {
            self.counters.queued.fetch_sub(gone, Ordering::SeqCst);
            self.counters
                .cancelled
                .fetch_add(gone as u64, Ordering::SeqCst);
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].request.events.is_closed() {
                let seq = self.running.swap_remove(i);
                self.counters.cancelled.fetch_add(1, Ordering::SeqCst);
                self.release(seq, true);
            } else {
                i += 1;
            }
        }
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_running && !self.waiting.is_empty() {
            let s = self.waiting.remove(0);
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            self.counters.running.fetch_add(1, Ordering::SeqCst);
            let history = s.request.prompt.clone();
            let sampler = Sampler::new(s.request.sampling.clone());
            let text = TextStream::new(s.request.stop.clone());
            let reused = self.prefixes.take(&s.request.prompt);
            let (state, prefilled) = match reused {
                Some(cache) => {
                    let len = cache.len();
                    self.counters
                        .reused_prompt_tokens
                        .fetch_add(len as u64, Ordering::Relaxed);
                    (cache, len)
                }
                None => (KvCache::default(), 0),
            };
            self.running.push(Sequence {
                request: s.request,
                submitted: s.at,
                admitted: Instant::now(),
                first_token: None,
                state,
                prefilled,
                history,
                generated: 0,
                sampler,
                text,
                next: None,
            });
        }
    }

    /// One forward pass over every running sequence, then sampling and streaming.
    fn step(&mut self) {
        let mut budget = self.config.prefill_chunk.max(1);
        // Which tokens each sequence feeds this step.
        let mut feeds: Vec<Vec<u32>> = Vec::with_capacity(self.running.len());
        for seq in &self.running {
            if let Some(next) = seq.next {
                feeds.push(vec![next]);
            } else if budget > 0 {
                let rest = &seq.request.prompt[seq.prefilled..];
                let take = rest.len().min(budget);
                budget -= take;
                feeds.push(rest[..take].to_vec());
            } else {
                feeds.push(Vec::new());
            }
        }
        let mut members = Vec::new();
        let mut inputs: Vec<SeqInput<'_>> = Vec::new();
        for (i, (seq, feed)) in self.running.iter_mut().zip(&feeds).enumerate() {
            if !feed.is_empty() {
                inputs.push(SeqInput {
                    tokens: feed,
                    cache: &mut seq.state,
                });
                members.push(i);
            }
        }
        self.counters
            .max_batch
            .fetch_max(members.len(), Ordering::SeqCst);
        self.counters
            .last_batch
            .store(members.len(), Ordering::Relaxed);
        self.counters
            .batched_rows
            .fetch_add(members.len() as u64, Ordering::Relaxed);
        // The step runs inside the compute pool, so the pool's threads are the only ones
        // computing (no third thread competing with them for two cores).
        let model = &self.model;
        let result = rayon::scope(|_| model.forward(&mut inputs));
        drop(inputs);
        self.counters.steps.fetch_add(1, Ordering::SeqCst);
        self.update_kv_bytes();
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed; failing the batch");
                for i in members.into_iter().rev() {
                    let seq = self.running.swap_remove(i);
                    self.finish(seq, FinishReason::Error, Some(e.to_string()));
                }
                return;
            }
        };

        let mut finished: Vec<(usize, FinishReason)> = Vec::new();
        for (mut row, &i) in logits.into_iter().zip(&members) {
            let seq = &mut self.running[i];
            if seq.next.is_none() {
                seq.prefilled += feeds[i].len();
                if seq.prefilled < seq.request.prompt.len() {
                    continue; // more prompt to go; these logits are not needed
                }
            }
            let token = seq.sampler.sample(&mut row, &seq.history);
            if seq.first_token.is_none() {
                seq.first_token = Some(Instant::now());
            }
            seq.history.push(token);
            seq.generated += 1;
            self.counters
                .generated_tokens
                .fetch_add(1, Ordering::Relaxed);
            if seq.request.emit_tokens {
                let _ = seq.request.events.send(Event::Token(token));
            }
            if !seq.request.sampling.ignore_eos && self.tokenizer.stop_ids.contains(&token) {
                finished.push((i, FinishReason::Stop));
                continue;
            }
            let piece = self.tokenizer.piece(token);
            let out = seq.text.push(piece);
            if !out.text.is_empty() {
                let _ = seq.request.events.send(Event::Delta(out.text));
            }
            if out.stopped {
                finished.push((i, FinishReason::Stop));
            } else if seq.generated >= seq.request.max_tokens
                || seq.state.len() + 1 > self.model.config.context_length
            {
                finished.push((i, FinishReason::Length));
            } else {
                seq.next = Some(token);
            }
        }
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let seq = self.running.swap_remove(i);
            self.finish(seq, reason, None);
        }
    }

    fn finish(&mut self, mut seq: Sequence, finish: FinishReason, error: Option<String>) {
        // Text held back as a possible stop sequence is released (after a matched stop
        // there is none); a character cut before its last byte is dropped.
        let rest = seq.text.finish();
        if !rest.is_empty() && finish != FinishReason::Cancelled {
            let _ = seq.request.events.send(Event::Delta(rest));
        }
        let now = Instant::now();
        let prompt_tokens = seq.request.prompt.len();
        let first = seq.first_token.unwrap_or(now);
        let prefill = first.duration_since(seq.admitted).as_secs_f32();
        let decode = now.duration_since(first).as_secs_f32();
        let timings = Timings {
            queue_ms: seq.admitted.duration_since(seq.submitted).as_millis() as u64,
            prefill_ms: (prefill * 1000.0) as u64,
            prefill_tokens_per_second: rate(prompt_tokens, prefill),
            decode_tokens_per_second: rate(seq.generated.saturating_sub(1), decode),
        };
        let done = Done {
            finish,
            prompt_tokens: prompt_tokens as u32,
            completion_tokens: seq.generated as u32,
            timings,
            error,
        };
        if finish == FinishReason::Error {
            self.counters.failed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.counters.completed.fetch_add(1, Ordering::SeqCst);
        }
        let _ = seq.request.events.send(Event::Done(done));
        self.release(seq, finish != FinishReason::Error);
    }

    /// Frees a sequence's slot; its cache is kept for reuse unless a failed step may have
    /// left it half-written.
    fn release(&mut self, seq: Sequence, keep_cache: bool) {
        // Keep what the cache holds (the prompt and every token fed back) for a later
        // prompt with the same start.
        if keep_cache {
            let cache = seq.state;
            let mut tokens = seq.history;
            tokens.truncate(cache.len());
            if tokens.len() == cache.len() {
                self.prefixes
                    .put(tokens, cache, self.config.prefix_cache_entries);
            }
        }
        self.counters.running.fetch_sub(1, Ordering::SeqCst);
        self.counters
            .prefix_cache_bytes
            .store(self.prefixes.bytes(), Ordering::SeqCst);
        self.update_kv_bytes();
    }

    fn update_kv_bytes(&self) {
        let bytes = self.running.iter().map(|s| s.state.bytes()).sum();
        self.counters.kv_cache_bytes.store(bytes, Ordering::SeqCst);
    }
}

fn rate(tokens: usize, secs: f32) -> f32 {
    if secs > 0.0 {
        tokens as f32 / secs
    } else {
        0.0
    }
}

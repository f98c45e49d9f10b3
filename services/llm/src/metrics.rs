//! The llm service's Prometheus metrics: tokens, time to first token and between tokens,
//! generations by how they ended (recorded as generations run), and per loaded model its
//! queue, running sequences, batch sizes and memory (read from the scheduler at scrape).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

use crate::service::LlmService;

/// Seconds until the first token: 5 ms to 2 minutes (a long queue).
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Seconds between two tokens of one stream: 1 ms to 2 s.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.0,
];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &["model"]).expect("valid metric")
}

/// Metrics recorded while generations run.
#[derive(Clone)]
pub struct GenerationMetrics {
    pub prompt_tokens: IntCounterVec,
    pub generated_tokens: IntCounterVec,
    pub generations: IntCounterVec,
    pub time_to_first_token: HistogramVec,
    pub inter_token_latency: HistogramVec,
}

impl Default for GenerationMetrics {
    fn default() -> Self {
        GenerationMetrics {
            prompt_tokens: counter(
                "llmesh_llm_prompt_tokens_total",
                "Prompt tokens of finished generations, by model.",
                &["model"],
            ),
            generated_tokens: counter(
                "llmesh_llm_generated_tokens_total",
                "Tokens generated, by model.",
                &["model"],
            ),
            generations: counter(
                "llmesh_llm_generations_total",
                "Generations ended, by model and finish reason (stop, length, cancelled, error, deadline).",
                &["model", "finish"],
            ),
            time_to_first_token: HistogramVec::new(
                HistogramOpts::new(
                    "llmesh_llm_time_to_first_token_seconds",
                    "From a generation's admission request to its first token (queue and prefill), by model.",
                )
                .buckets(TTFT_BUCKETS.to_vec()),
                &["model"],
            )
            .expect("valid metric"),
            inter_token_latency: HistogramVec::new(
                HistogramOpts::new(
                    "llmesh_llm_inter_token_latency_seconds",
                    "Time between two consecutive tokens of one generation, by model.",
                )
                .buckets(ITL_BUCKETS.to_vec()),
                &["model"],
            )
            .expect("valid metric"),
        }
    }
}

impl GenerationMetrics {
    /// Every collector, for registration.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.prompt_tokens.clone()),
            Box::new(self.generated_tokens.clone()),
            Box::new(self.generations.clone()),
            Box::new(self.time_to_first_token.clone()),
            Box::new(self.inter_token_latency.clone()),
        ]
    }
}

/// Reads the loaded models' scheduler state when Prometheus scrapes.
pub struct ModelStateCollector {
    service: Weak<LlmService>,
    queue_depth: IntGaugeVec,
    running: IntGaugeVec,
    last_batch: IntGaugeVec,
    memory: IntGaugeVec,
    kv_cache: IntGaugeVec,
    steps: IntCounterVec,
    batched_rows: IntCounterVec,
    /// Scheduler totals already added to the counters, per model.
    seen: Mutex<HashMap<String, (u64, u64)>>,
}

impl ModelStateCollector {
    pub fn new(service: Weak<LlmService>) -> Self {
        ModelStateCollector {
            service,
            queue_depth: gauge(
                "llmesh_llm_queue_depth",
                "Generations waiting for a place in the batch, by loaded model.",
            ),
            running: gauge(
                "llmesh_llm_running_sequences",
                "Sequences decoding together now, by loaded model.",
            ),
            last_batch: gauge(
                "llmesh_llm_batch_size",
                "Sequences in the latest forward step, by loaded model.",
            ),
            memory: gauge(
                "llmesh_llm_model_memory_bytes",
                "Resident memory of a loaded model (weights and KV caches), by model.",
            ),
            kv_cache: gauge(
                "llmesh_llm_kv_cache_bytes",
                "KV cache held by running sequences, by loaded model.",
            ),
            steps: counter(
                "llmesh_llm_forward_steps_total",
                "Forward steps run, by model (mean batch size: batched_sequences_total / forward_steps_total).",
                &["model"],
            ),
            batched_rows: counter(
                "llmesh_llm_batched_sequences_total",
                "Sequences summed over every forward step, by model.",
                &["model"],
            ),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn parts(&self) -> [&dyn Collector; 7] {
        [
            &self.queue_depth,
            &self.running,
            &self.last_batch,
            &self.memory,
            &self.kv_cache,
            &self.steps,
            &self.batched_rows,
        ]
    }
}

impl Collector for ModelStateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for g in [
            &self.queue_depth,
            &self.running,
            &self.last_batch,
            &self.memory,
            &self.kv_cache,
        ] {
            g.reset();
        }
        if let Some(service) = self.service.upgrade() {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            for (model, memory, counters) in service.loaded_models() {
                let labels = [model.as_str()];
                self.memory
                    .with_label_values(&labels)
                    .set(memory.min(i64::MAX as u64) as i64);
                let Some(c) = counters else {
                    continue;
                };
                self.queue_depth
                    .with_label_values(&labels)
                    .set(c.queued.load(Ordering::Relaxed) as i64);
                self.running
                    .with_label_values(&labels)
                    .set(c.running.load(Ordering::Relaxed) as i64);
                self.last_batch
                    .with_label_values(&labels)
                    .set(c.last_batch.load(Ordering::Relaxed) as i64);
                self.kv_cache
                    .with_label_values(&labels)
                    .set(c.kv_cache_bytes.load(Ordering::Relaxed) as i64);
                // A reloaded model starts its totals at zero again: count from there.
                let steps = c.steps.load(Ordering::Relaxed);
                let rows = c.batched_rows.load(Ordering::Relaxed);
                let (seen_steps, seen_rows) = seen.entry(model.clone()).or_default();
                if steps < *seen_steps || rows < *seen_rows {
                    (*seen_steps, *seen_rows) = (0, 0);
                }
                self.steps
                    .with_label_values(&labels)
                    .inc_by(steps - *seen_steps);
                self.batched_rows
                    .with_label_values(&labels)
                    .inc_by(rows - *seen_rows);
                (*seen_steps, *seen_rows) = (steps, rows);
            }
        }
        self.parts().into_iter().flat_map(|c| c.collect()).collect()
    }
}

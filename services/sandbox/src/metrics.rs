//! The sandbox's Prometheus metrics: runs by runtime and how they ended, their fuel, time
//! and peak memory, runs refused before starting, and the slots in use.

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};

use crate::runner::Status;

/// Seconds a run takes: 1 ms (a WASI hello) to 10 minutes (the admin ceiling).
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];
/// Peak guest memory: 64 KiB (one page) to 4 GiB.
const MEMORY_BUCKETS: &[f64] = &[
    65536.0,
    1048576.0,
    8388608.0,
    33554432.0,
    67108864.0,
    134217728.0,
    268435456.0,
    536870912.0,
    1073741824.0,
    4294967296.0,
];

/// The label a run's end gets.
pub fn status_label(s: Status) -> &'static str {
    match s {
        Status::Exited => "exited",
        Status::OutOfFuel => "out_of_fuel",
        Status::OutOfMemory => "out_of_memory",
        Status::TimedOut => "timed_out",
        Status::OutputLimit => "output_limit",
        Status::Trapped => "trapped",
        Status::Cancelled => "cancelled",
    }
}

#[derive(Clone)]
pub struct SandboxMetrics {
    pub runs: IntCounterVec,
    pub refused: IntCounterVec,
    pub fuel: IntCounterVec,
    pub duration: HistogramVec,
    pub peak_memory: HistogramVec,
    pub active: IntGauge,
    pub pool_idle: IntGauge,
    pub python_starts: IntCounterVec,
}

impl Default for SandboxMetrics {
    fn default() -> Self {
        SandboxMetrics {
            runs: IntCounterVec::new(
                Opts::new(
                    "llmesh_sandbox_runs_total",
                    "Sandbox runs ended, by runtime and status (exited, out_of_fuel, out_of_memory, timed_out, output_limit, trapped, cancelled).",
                ),
                &["runtime", "status"],
            )
            .expect("valid metric"),
            refused: IntCounterVec::new(
                Opts::new(
                    "llmesh_sandbox_runs_refused_total",
                    "Sandbox runs refused before starting, by runtime and reason (busy: no free slot; billing: balance, quota or rate).",
                ),
                &["runtime", "reason"],
            )
            .expect("valid metric"),
            fuel: IntCounterVec::new(
                Opts::new(
                    "llmesh_sandbox_fuel_used_total",
                    "Fuel (wasm instructions, roughly) guests used, by runtime.",
                ),
                &["runtime"],
            )
            .expect("valid metric"),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "llmesh_sandbox_run_duration_seconds",
                    "Wall-clock time of a run's guest, by runtime.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["runtime"],
            )
            .expect("valid metric"),
            peak_memory: HistogramVec::new(
                HistogramOpts::new(
                    "llmesh_sandbox_peak_memory_bytes",
                    "Most linear memory a run's guest held, by runtime.",
                )
                .buckets(MEMORY_BUCKETS.to_vec()),
                &["runtime"],
            )
            .expect("valid metric"),
            active: IntGauge::new(
                "llmesh_sandbox_runs_active",
                "Sandbox runs holding a slot now.",
            )
            .expect("valid metric"),
            pool_idle: IntGauge::new(
                "llmesh_sandbox_python_pool_idle",
                "Python interpreters started ahead of demand and waiting for a program.",
            )
            .expect("valid metric"),
            python_starts: IntCounterVec::new(
                Opts::new(
                    "llmesh_sandbox_python_interpreters_total",
                    "Python runs by where their interpreter came from (pool: started ahead of demand; fresh: started for the run).",
                ),
                &["source"],
            )
            .expect("valid metric"),
        }
    }
}

impl SandboxMetrics {
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.runs.clone()),
            Box::new(self.refused.clone()),
            Box::new(self.fuel.clone()),
            Box::new(self.duration.clone()),
            Box::new(self.peak_memory.clone()),
            Box::new(self.active.clone()),
            Box::new(self.pool_idle.clone()),
            Box::new(self.python_starts.clone()),
        ]
    }
}

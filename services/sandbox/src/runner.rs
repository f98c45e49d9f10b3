//! One run of a guest in wasmtime, on the calling (blocking) thread: fuel, a memory cap,
//! a wall-clock deadline (epoch interruption), an output cap, no network, no host
//! environment, and the caller's workspace as `/workspace` (a private copy on disk that
//! nothing outside it can be reached from). Output streams out as the guest writes it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use wasmtime::{Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// How often the engine's epoch ticks: the granularity of deadlines and cancellation.
pub const TICK: Duration = Duration::from_millis(10);

/// What a run streams back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Exited,
    OutOfFuel,
    OutOfMemory,
    TimedOut,
    OutputLimit,
    Trapped,
    Cancelled,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub status: Status,
    pub exit_code: i32,
    pub message: String,
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    pub wall: Duration,
}

/// Everything one run needs, resolved and within limits.
pub struct Job<'a> {
    pub module: &'a Module,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    /// The run's private copy of the workspace, mounted as /workspace.
    pub workspace: &'a Path,
    pub fuel: u64,
    pub memory_bytes: usize,
    pub timeout: Duration,
    pub output_bytes: u64,
    /// Set when the client hangs up; the guest stops at the next tick.
    pub cancelled: Arc<AtomicBool>,
    /// Set by a watcher when the workspace copy outgrows its limits.
    pub over_files: Arc<AtomicBool>,
}

/// Why the guest was stopped from outside (the epoch callback's verdict).
const STOP_NONE: usize = 0;
const STOP_TIMEOUT: usize = 1;
const STOP_CANCEL: usize = 2;
const STOP_FILES: usize = 3;

struct Guest {
    wasi: WasiP1Ctx,
    limits: PeakLimits,
}

/// StoreLimits that also remember the largest memory the guest asked for.
struct PeakLimits {
    inner: StoreLimits,
    peak: usize,
    refused: bool,
}

impl wasmtime::ResourceLimiter for PeakLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = self.inner.memory_growing(current, desired, maximum);
        match &grown {
            Ok(true) => self.peak = self.peak.max(desired),
            // Refused (a trap, with trap_on_grow_failure): the run ends out of memory.
            Ok(false) | Err(_) => self.refused = true,
        }
        grown
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// A guest's stdout or stderr: every write goes to the client at once, until the run's
/// output allowance (shared by both) is spent; then the guest traps.
#[derive(Clone)]
struct Sink {
    tx: mpsc::UnboundedSender<Output>,
    stderr: bool,
    written: Arc<AtomicU64>,
    limit: u64,
    over: Arc<AtomicBool>,
}

const OUTPUT_LIMIT: &str = "the run's output limit was reached";

impl Sink {
    fn send(&self, bytes: Bytes) -> StreamResult<()> {
        let before = self.written.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        let room = self.limit.saturating_sub(before);
        let (bytes, over) = if (bytes.len() as u64) > room {
            (bytes.slice(..room as usize), true)
        } else {
            (bytes, false)
        };
        if !bytes.is_empty() {
            let out = if self.stderr {
                Output::Stderr(bytes)
            } else {
                Output::Stdout(bytes)
            };
            // A client that left is handled by cancellation, not here.
            let _ = self.tx.send(out);
        }
        if over {
            self.over.store(true, Ordering::SeqCst);
            return Err(StreamError::trap(OUTPUT_LIMIT));
        }
        Ok(())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Sink {
    async fn ready(&mut self) {}
}

impl OutputStream for Sink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.send(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.over.load(Ordering::SeqCst) {
            return Err(StreamError::trap(OUTPUT_LIMIT));
        }
        Ok(64 * 1024)
    }
}

impl IsTerminal for Sink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Sink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncSink(self.clone()))
    }
}

/// The same sink for the (p3) async interface.
struct AsyncSink(Sink);

impl tokio::io::AsyncWrite for AsyncSink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(
            self.0
                .send(Bytes::copy_from_slice(buf))
                .map(|()| buf.len())
                .map_err(|_| std::io::Error::other(OUTPUT_LIMIT)),
        )
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A linker with WASI preview 1 and nothing else: a module that imports anything more
/// fails to instantiate with a message naming the import.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut GuestState| &mut s.0.wasi)?;
    Ok(linker)
}

/// The store data of a run (opaque outside this module).
pub struct GuestState(Guest);

/// Runs `job` to its end on this thread, streaming output to `tx`.
pub fn run(
    engine: &Engine,
    linker: &Linker<GuestState>,
    mut job: Job<'_>,
    tx: mpsc::UnboundedSender<Output>,
) -> Exit {
    let started = Instant::now();
    let over_output = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let sink = |stderr| Sink {
        tx: tx.clone(),
        stderr,
        written: written.clone(),
        limit: job.output_bytes,
        over: over_output.clone(),
    };
    let fail = |message: String| Exit {
        status: Status::Trapped,
        exit_code: -1,
        message,
        fuel_used: 0,
        peak_memory_bytes: 0,
        wall: started.elapsed(),
    };

    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&job.args)
        .stdin(MemoryInputPipe::new(std::mem::take(&mut job.stdin)))
        .stdout(sink(false))
        .stderr(sink(true));
    for (k, v) in &job.env {
        wasi.env(k, v);
    }
    if let Err(e) = wasi.preopened_dir(job.workspace, "/workspace", FsPerms::ReadWrite) {
        return fail(format!("cannot prepare the workspace: {e}"));
    }
    let limits = StoreLimitsBuilder::new()
        .memory_size(job.memory_bytes)
        .table_elements(1_000_000)
        .instances(1)
        .tables(10)
        .memories(1)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        engine,
        GuestState(Guest {
            wasi: wasi.build_p1(),
            limits: PeakLimits {
                inner: limits,
                peak: 0,
                refused: false,
            },
        }),
    );
    store.limiter(|s| &mut s.0.limits);
    if let Err(e) = store.set_fuel(job.fuel) {
        return fail(format!("cannot set fuel: {e}"));
    }

    // Every tick: stop for the deadline, a cancelled client, or an outgrown workspace.
    let stop = Arc::new(AtomicUsize::new(STOP_NONE));
    let deadline = started + job.timeout;
    let (verdict, cancelled, over_files) =
        (stop.clone(), job.cancelled.clone(), job.over_files.clone());
    store.epoch_deadline_callback(move |_| {
        let why = if cancelled.load(Ordering::SeqCst) {
            STOP_CANCEL
        } else if over_files.load(Ordering::SeqCst) {
            STOP_FILES
        } else if Instant::now() >= deadline {
            STOP_TIMEOUT
        } else {
            return Ok(wasmtime::UpdateDeadline::Continue(1));
        };
        verdict.store(why, Ordering::SeqCst);
        Err(wasmtime::format_err!("stopped from outside"))
    });
    store.set_epoch_deadline(1);

    let result = linker
        .instantiate(&mut store, job.module)
        .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "_start"))
        .and_then(|start| start.call(&mut store, ()));
    let fuel_left = store.get_fuel().unwrap_or(0);
    let fuel_used = job.fuel.saturating_sub(fuel_left);
    let limits = &store.data().0.limits;
    let peak = limits.peak as u64;
    let refused_memory = limits.refused;
    let (status, exit_code, message) = match result {
        Ok(()) => (Status::Exited, 0, "exited with code 0".to_owned()),
        Err(e) => classify(
            &e,
            stop.load(Ordering::SeqCst),
            &over_output,
            refused_memory,
            &job,
        ),
    };
    Exit {
        status,
        exit_code,
        message,
        fuel_used,
        peak_memory_bytes: peak,
        wall: started.elapsed(),
    }
}

/// Names how a run that did not return normally ended.
fn classify(
    e: &wasmtime::Error,
    stop: usize,
    over_output: &AtomicBool,
    refused_memory: bool,
    job: &Job<'_>,
) -> (Status, i32, String) {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return (
            Status::Exited,
            exit.0,
            format!("exited with code {}", exit.0),
        );
    }
    match stop {
        STOP_TIMEOUT => {
            return (
                Status::TimedOut,
                -1,
                format!(
                    "stopped after the time limit of {} ms",
                    job.timeout.as_millis()
                ),
            );
        }
        STOP_CANCEL => return (Status::Cancelled, -1, "cancelled by the client".into()),
        STOP_FILES => {
            return (
                Status::OutputLimit,
                -1,
                "stopped: the files it wrote went past the run's limits".into(),
            );
        }
        _ => {}
    }
    if over_output.load(Ordering::SeqCst) {
        return (Status::OutputLimit, -1, OUTPUT_LIMIT.into());
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => (
            Status::OutOfFuel,
            -1,
            format!("ran out of fuel ({} instructions)", job.fuel),
        ),
        Some(Trap::StackOverflow) => (Status::Trapped, -1, "stack overflow".into()),
        Some(trap) if refused_memory || *trap == Trap::AllocationTooLarge => (
            Status::OutOfMemory,
            -1,
            format!(
                "out of memory: the limit is {} MiB",
                job.memory_bytes / (1024 * 1024)
            ),
        ),
        Some(trap) => (Status::Trapped, -1, format!("trapped: {trap}")),
        None if refused_memory => (
            Status::OutOfMemory,
            -1,
            format!(
                "out of memory: the limit is {} MiB",
                job.memory_bytes / (1024 * 1024)
            ),
        ),
        // Instantiation failures (an import no runtime provides) read best as-is.
        None => (Status::Trapped, -1, first_line(&e.to_string())),
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    line.chars().take(500).collect()
}

//! One run of a guest in wasmtime, on the calling (blocking) thread: fuel, a memory cap,
//! a wall-clock deadline (epoch interruption), an output cap, no network, no host
//! environment, and the caller's workspace as `/workspace` (a private copy on disk that
//! nothing outside it can be reached from). Output streams out as the guest writes it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use wasmtime::{Caller, Engine, Linker, Module, Store, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};
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

/// What a run may use, fixed when its program is handed over: at once for a module, after
/// the interpreter's start-up for Python (so the start-up is never the caller's fuel,
/// time or output, whether the interpreter was started ahead of demand or just now).
pub struct Claim {
    pub fuel: u64,
    pub memory_bytes: usize,
    pub timeout: Duration,
    pub output_bytes: u64,
    pub tx: mpsc::UnboundedSender<Output>,
    /// Set when the client hangs up; the guest stops at the next tick.
    pub cancelled: Arc<AtomicBool>,
    /// Set by a watcher when the workspace copy outgrows its limits.
    pub over_files: Arc<AtomicBool>,
}

/// The state a running guest shares with whoever owns it.
pub struct Controls {
    claim: OnceLock<(Claim, Instant)>,
    /// The claim's fuel is in the store.
    applied: AtomicBool,
    /// A booting guest has read its program from stdin (see [`Feed::for_guest`]).
    arrived: Arc<AtomicBool>,
    memory_limit: AtomicUsize,
    memory_now: AtomicUsize,
    written: AtomicU64,
    over_output: AtomicBool,
    stop: AtomicUsize,
}

impl Controls {
    /// Controls for a guest that starts unclaimed, within `memory_bytes` until claimed.
    pub fn new(memory_bytes: usize) -> Arc<Controls> {
        Arc::new(Controls {
            claim: OnceLock::new(),
            applied: AtomicBool::new(false),
            arrived: Arc::new(AtomicBool::new(false)),
            memory_limit: AtomicUsize::new(memory_bytes),
            memory_now: AtomicUsize::new(0),
            written: AtomicU64::new(0),
            over_output: AtomicBool::new(false),
            stop: AtomicUsize::new(STOP_NONE),
        })
    }

    /// Hands the guest its limits. Refused (giving the claim back) when the guest already
    /// holds more memory than the claim allows, or was claimed before.
    pub fn claim(&self, claim: Claim) -> std::result::Result<(), (Claim, String)> {
        let now = self.memory_now.load(Ordering::SeqCst);
        if now > claim.memory_bytes {
            let message = format!(
                "out of memory: the interpreter alone holds {} MiB; the limit is {} MiB",
                now.div_ceil(1024 * 1024),
                claim.memory_bytes / (1024 * 1024)
            );
            return Err((claim, message));
        }
        self.memory_limit
            .store(claim.memory_bytes, Ordering::SeqCst);
        self.claim
            .set((claim, Instant::now()))
            .map_err(|(c, _)| (c, "the guest was claimed already".to_owned()))
    }

    fn claimed(&self) -> Option<&(Claim, Instant)> {
        self.claim.get()
    }
}

/// Why the guest was stopped from outside (the epoch callback's verdict).
const STOP_NONE: usize = 0;
const STOP_TIMEOUT: usize = 1;
const STOP_CANCEL: usize = 2;
const STOP_FILES: usize = 3;
const STOP_BOOT: usize = 4;

/// The most an unclaimed guest may run before it is given up (its start-up hung).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Fuel an unclaimed guest starts with: enough for CPython's start-up several times over.
const BOOT_FUEL: u64 = 20_000_000_000;

struct Guest {
    wasi: WasiP1Ctx,
    limits: PeakLimits,
}

/// Memory limits that can be lowered when a started guest is claimed, and that remember
/// the largest memory the guest asked for.
struct PeakLimits {
    controls: Arc<Controls>,
    peak: usize,
    refused: bool,
}

const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl wasmtime::ResourceLimiter for PeakLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.controls.memory_limit.load(Ordering::SeqCst) {
            // A trap, not a failed grow: the run ends out of memory.
            self.refused = true;
            return Err(wasmtime::format_err!("the run's memory limit was reached"));
        }
        self.peak = self.peak.max(desired);
        self.controls.memory_now.store(desired, Ordering::SeqCst);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::format_err!("the run's table limit was reached"));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        10
    }

    fn memories(&self) -> usize {
        1
    }
}

/// A guest's stdout or stderr: every write goes to the client at once, until the run's
/// output allowance (shared by both) is spent; then the guest traps. What an unclaimed
/// guest writes (nothing, normally) goes nowhere.
#[derive(Clone)]
struct Sink {
    controls: Arc<Controls>,
    stderr: bool,
}

const OUTPUT_LIMIT: &str = "the run's output limit was reached";

impl Sink {
    fn send(&self, bytes: Bytes) -> StreamResult<()> {
        let Some((claim, _)) = self.controls.claimed() else {
            return Ok(());
        };
        let before = self
            .controls
            .written
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        let room = claim.output_bytes.saturating_sub(before);
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
            let _ = claim.tx.send(out);
        }
        if over {
            self.controls.over_output.store(true, Ordering::SeqCst);
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
        if self.controls.over_output.load(Ordering::SeqCst) {
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

/// A guest's stdin fed while it runs: reads block until bytes are pushed or the feed is
/// closed (then end of file). A started interpreter waits on one for its program.
#[derive(Clone)]
pub struct Feed {
    state: Arc<Mutex<FeedState>>,
    /// Set once the guest has read anything (its program has arrived).
    arrived: Arc<AtomicBool>,
}

#[derive(Default)]
struct FeedState {
    chunks: VecDeque<Bytes>,
    closed: bool,
    waker: Option<Waker>,
    /// Whether the guest has asked for input (a started interpreter is then ready).
    asked: bool,
}

impl Feed {
    /// The stdin of the guest that `controls` control: the guest's first read of it
    /// marks its program as arrived.
    pub fn for_guest(controls: &Controls) -> Feed {
        Feed {
            state: Arc::default(),
            arrived: controls.arrived.clone(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, bytes: Bytes) {
        let mut s = self.state();
        if !bytes.is_empty() {
            s.chunks.push_back(bytes);
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Ends the input: the guest reads end of file once it has read what was pushed.
    pub fn close(&self) {
        let mut s = self.state();
        s.closed = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Whether the guest is waiting for input (or has read some).
    pub fn asked(&self) -> bool {
        self.state().asked
    }

    fn take(&self, size: usize) -> Option<Bytes> {
        let mut s = self.state();
        s.asked = true;
        let front = s.chunks.front_mut()?;
        self.arrived.store(true, Ordering::SeqCst);
        let n = size.min(front.len());
        let out = front.split_to(n);
        if front.is_empty() {
            s.chunks.pop_front();
        }
        Some(out)
    }

    fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut s = self.state();
        s.asked = true;
        if !s.chunks.is_empty() || s.closed {
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Feed {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }
}

impl InputStream for Feed {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        match self.take(size) {
            Some(bytes) => Ok(bytes),
            None if self.state().closed => Err(StreamError::Closed),
            None => Ok(Bytes::new()),
        }
    }
}

impl tokio::io::AsyncRead for Feed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                if let Some(bytes) = self.take(buf.remaining()) {
                    buf.put_slice(&bytes);
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl IsTerminal for Feed {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for Feed {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

/// WASI's errno for a buffer outside the guest's memory.
const ERRNO_FAULT: i32 = 21;

/// The linker guests are instantiated with: WASI preview 1 and nothing else (a module
/// that imports anything more fails to instantiate with a message naming the import),
/// with `random_get` implemented here: it is also where a started guest's claim takes
/// effect. The boot program asks for one random byte as soon as its program has arrived,
/// and the claim's fuel goes into the store then. (Fuel can only be replaced during a host
/// call: compiled code reloads its fuel counter after calls, not after the epoch
/// callback.)
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut GuestState| &mut s.0.wasi)?;
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "random_get",
        |mut caller: Caller<'_, GuestState>, buf: i32, len: i32| -> wasmtime::Result<i32> {
            let controls = caller.data().0.limits.controls.clone();
            if let Some((claim, _)) = controls.claimed()
                && controls.arrived.load(Ordering::SeqCst)
                && !controls.applied.swap(true, Ordering::SeqCst)
            {
                caller.set_fuel(claim.fuel)?;
            }
            let Some(memory) = caller
                .get_export("memory")
                .and_then(wasmtime::Extern::into_memory)
            else {
                return Ok(ERRNO_FAULT);
            };
            let start = buf as u32 as usize;
            let end = start.saturating_add(len as u32 as usize);
            match memory.data_mut(&mut caller).get_mut(start..end) {
                Some(out) => {
                    rand::fill(out);
                    Ok(0)
                }
                None => Ok(ERRNO_FAULT),
            }
        },
    )?;
    Ok(linker)
}

/// The store data of a run (opaque outside this module).
pub struct GuestState(Guest);

/// A guest to start: the module, its command line, environment and stdin, and the
/// directory it sees as /workspace.
pub struct Launch<'a, I> {
    pub module: &'a Module,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub stdin: I,
    pub workspace: &'a Path,
    /// The guest starts before its program arrives (an interpreter's boot program):
    /// metered from its claim's first `random_get`, even when the claim came first.
    pub boots: bool,
}

/// Runs a guest to its end on this thread, streaming its output to the claim's channel.
/// A guest claimed before it starts runs within the claim from its first instruction;
/// one claimed later runs within BOOT_FUEL and its memory until then, and within the
/// claim's fuel from its first `random_get` after its program arrived on stdin (the boot
/// program's, see [`linker`]); its time and output count from the claim.
pub fn run<I: StdinStream + 'static>(
    engine: &Engine,
    linker: &Linker<GuestState>,
    launch: Launch<'_, I>,
    controls: Arc<Controls>,
) -> Exit {
    let booted = Instant::now();
    let fail = |message: String| Exit {
        status: Status::Trapped,
        exit_code: -1,
        message,
        fuel_used: 0,
        peak_memory_bytes: 0,
        wall: booted.elapsed(),
    };
    let sink = |stderr| Sink {
        controls: controls.clone(),
        stderr,
    };
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(launch.args)
        .stdin(launch.stdin)
        .stdout(sink(false))
        .stderr(sink(true));
    for (k, v) in launch.env {
        wasi.env(k, v);
    }
    if let Err(e) = wasi.preopened_dir(launch.workspace, "/workspace", FsPerms::ReadWrite) {
        return fail(format!("cannot prepare the workspace: {e}"));
    }
    let mut store = Store::new(
        engine,
        GuestState(Guest {
            wasi: wasi.build_p1(),
            limits: PeakLimits {
                controls: controls.clone(),
                peak: 0,
                refused: false,
            },
        }),
    );
    store.limiter(|s| &mut s.0.limits);
    let fuel = match controls.claimed() {
        Some((claim, _)) if !launch.boots => {
            controls.applied.store(true, Ordering::SeqCst);
            claim.fuel
        }
        Some(_) | None if launch.boots => BOOT_FUEL,
        _ => return fail("a guest that does not boot must be claimed before it starts".into()),
    };
    if let Err(e) = store.set_fuel(fuel) {
        return fail(format!("cannot set fuel: {e}"));
    }

    // Every tick: stop for the deadline, a cancelled client, or
    // an outgrown workspace (or, unclaimed, a start-up that takes far too long).
    let watched = controls.clone();
    store.epoch_deadline_callback(move |_| {
        let c = &watched;
        let Some((claim, at)) = c.claimed() else {
            if booted.elapsed() > BOOT_TIMEOUT {
                c.stop.store(STOP_BOOT, Ordering::SeqCst);
                return Err(wasmtime::format_err!(
                    "the runtime's start-up took too long"
                ));
            }
            return Ok(wasmtime::UpdateDeadline::Continue(1));
        };
        let why = if claim.cancelled.load(Ordering::SeqCst) {
            STOP_CANCEL
        } else if claim.over_files.load(Ordering::SeqCst) {
            STOP_FILES
        } else if at.elapsed() >= claim.timeout {
            STOP_TIMEOUT
        } else {
            return Ok(wasmtime::UpdateDeadline::Continue(1));
        };
        c.stop.store(why, Ordering::SeqCst);
        Err(wasmtime::format_err!("stopped from outside"))
    });
    store.set_epoch_deadline(1);

    let result = linker
        .instantiate(&mut store, launch.module)
        .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "_start"))
        .and_then(|start| start.call(&mut store, ()));
    let fuel_left = store.get_fuel().unwrap_or(0);
    let limits = &store.data().0.limits;
    let peak = limits.peak as u64;
    let refused_memory = limits.refused;
    let Some((claim, at)) = controls.claimed() else {
        // Never claimed: the owner went away (stdin closed) or the start-up failed.
        let message = match result {
            Ok(()) => "the runtime ended before it was given a program".to_owned(),
            Err(e) => first_line(&format!("{e:#}")),
        };
        return fail(message);
    };
    let fuel_used = if controls.applied.load(Ordering::SeqCst) {
        claim.fuel.saturating_sub(fuel_left)
    } else {
        0
    };
    let (status, exit_code, message) = match result {
        Ok(()) => (Status::Exited, 0, "exited with code 0".to_owned()),
        Err(e) => classify(&e, &controls, claim, refused_memory),
    };
    Exit {
        status,
        exit_code,
        message,
        fuel_used,
        peak_memory_bytes: peak,
        wall: at.elapsed(),
    }
}

/// Names how a run that did not return normally ended.
fn classify(
    e: &wasmtime::Error,
    controls: &Controls,
    job: &Claim,
    refused_memory: bool,
) -> (Status, i32, String) {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return (
            Status::Exited,
            exit.0,
            format!("exited with code {}", exit.0),
        );
    }
    match controls.stop.load(Ordering::SeqCst) {
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
    if controls.over_output.load(Ordering::SeqCst) {
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

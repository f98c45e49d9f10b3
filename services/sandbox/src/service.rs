//! The sandbox domain: runs within the caller's limits and a bounded pool of slots, on
//! threads of their own; workspace files behind a quota.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use llmesh_kit::{Clock, Principal, Role};
use tokio::sync::{Semaphore, mpsc, oneshot};
use wasmtime::Module;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use crate::config::{Limits, SandboxConfig};
use crate::error::{Result, SandboxError};
use crate::meter::{Hold, Meter};
use crate::metrics::{SandboxMetrics, status_label};
use crate::python::{PythonPool, Running};
use crate::runner::{self, Claim, Controls, Exit, Launch, Output, Status};
use crate::runtimes::{RuntimeInfo, Runtimes};
use crate::workspace::{FileMeta, Quota, RunDir, Workspaces, check_path};

/// How often a run's workspace copy is measured against its write limits.
const WATCH: Duration = Duration::from_millis(100);

/// Limits as a request states them and a run gets them (memory in bytes; 0 asks for the
/// default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunLimits {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout_ms: u64,
    pub output_bytes: u64,
    pub files_written: u32,
    pub written_bytes: u64,
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub runtime: String,
    pub code: String,
    pub module_path: String,
    pub args: Vec<String>,
    pub stdin: Vec<u8>,
    /// Requested limits; 0 fields take the defaults.
    pub limits: RunLimits,
    pub persist: bool,
}

/// What a run runs, ready to start: Python with the workspace files its interpreter gets
/// when it is claimed; a module with its private copy of the workspace already on disk.
enum Program {
    Python {
        module: Module,
        code: String,
        args: Vec<String>,
        files: BTreeMap<String, Vec<u8>>,
    },
    Module {
        module: Module,
        argv: Vec<String>,
        dir: RunDir,
    },
}

/// What a run streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(RunResult),
}

/// The end of a run, with what happened to its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    pub exit: Exit,
    pub changed_paths: Vec<String>,
    pub persisted: bool,
    /// What billing charged, in micro-units of its currency.
    pub cost_micros: i64,
}

fn event_of(out: Output) -> RunEvent {
    match out {
        Output::Stdout(b) => RunEvent::Stdout(b),
        Output::Stderr(b) => RunEvent::Stderr(b),
    }
}

pub struct SandboxService {
    config: SandboxConfig,
    runtimes: Arc<Runtimes>,
    workspaces: Workspaces,
    clock: Arc<dyn Clock>,
    slots: Arc<Semaphore>,
    meter: Arc<dyn Meter>,
    pool: Arc<PythonPool>,
    pub metrics: SandboxMetrics,
}

/// A slot held by a run (counted in the active-runs gauge while held).
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    active: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active.dec();
    }
}

impl SandboxService {
    pub fn new(
        config: SandboxConfig,
        runtimes: Arc<Runtimes>,
        workspaces: Workspaces,
        clock: Arc<dyn Clock>,
        meter: Arc<dyn Meter>,
    ) -> Self {
        let metrics = SandboxMetrics::default();
        let most_memory = config
            .member_ceiling
            .memory_mib
            .max(config.admin_ceiling.memory_mib)
            * 1024
            * 1024;
        SandboxService {
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs)),
            pool: PythonPool::new(
                runtimes.clone(),
                config.python_pool,
                most_memory as usize,
                metrics.clone(),
            ),
            config,
            runtimes,
            workspaces,
            clock,
            meter,
            metrics,
        }
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub fn runtimes(&self) -> Vec<RuntimeInfo> {
        self.runtimes.list()
    }

    /// Fetches and compiles the Python runtime (at start, when configured).
    /// [`Self::prepare`], reporting the fetch's progress to `on_progress` as it goes.
    pub async fn prepare_showing(
        &self,
        on_progress: &(dyn Fn(&str, &llmesh_kit::fetch::Progress) + Sync),
    ) -> Result<()> {
        let work = self.prepare();
        tokio::pin!(work);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut shown = None;
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tick.tick() => {
                    let now = self.runtimes.fetch_progress();
                    if let Some(p) = now.filter(|_| now != shown) {
                        on_progress("python runtime", &p);
                        shown = now;
                    }
                }
            }
        }
    }

    /// Fetches and compiles the Python runtime, and starts the pool of interpreters.
    pub async fn prepare(&self) -> Result<()> {
        if self.config.runtimes.iter().any(|r| r == "python") {
            let module = self.runtimes.python().await?;
            self.pool.fill(&module);
        }
        Ok(())
    }

    fn quota(&self) -> Quota {
        Quota {
            bytes: self.config.workspace_quota_bytes,
            files: self.config.workspace_max_files,
            file_bytes: self.config.max_file_bytes,
        }
    }

    pub async fn list_files(&self, p: &Principal) -> Result<(Vec<FileMeta>, u64)> {
        let files = self.workspaces.list(&p.user_id).await?;
        let used = files.iter().map(|f| f.size_bytes).sum();
        Ok((files, used))
    }

    pub async fn read_file(&self, p: &Principal, path: &str) -> Result<Vec<u8>> {
        check_path("path", path)?;
        self.workspaces.read(&p.user_id, path).await
    }

    pub async fn delete_file(&self, p: &Principal, path: &str) -> Result<()> {
        check_path("path", path)?;
        if self.workspaces.delete(&p.user_id, path).await? {
            Ok(())
        } else {
            Err(SandboxError::NotFound("file"))
        }
    }

    pub async fn write_chunk(
        &self,
        p: &Principal,
        path: &str,
        offset: u64,
        data: &[u8],
        last: bool,
    ) -> Result<Option<FileMeta>> {
        check_path("path", path)?;
        if data.len() > self.config.max_chunk_bytes {
            return Err(SandboxError::Invalid(format!(
                "data is {} bytes; a chunk may hold at most {}",
                data.len(),
                self.config.max_chunk_bytes
            )));
        }
        self.workspaces
            .write_chunk(
                &p.user_id,
                path,
                offset,
                data,
                last,
                self.quota(),
                self.clock.now(),
            )
            .await
    }

    /// The limits a run gets: the request's, defaults for what it leaves at 0, refused
    /// (naming the field) above the caller's ceiling.
    fn limits(&self, p: &Principal, asked: RunLimits) -> Result<RunLimits> {
        let ceiling: Limits = if p.role == Role::Admin {
            self.config.admin_ceiling
        } else {
            self.config.member_ceiling
        };
        let d = self.config.defaults;
        let pick = |field: &str, asked: u64, default: u64, max: u64| -> Result<u64> {
            let v = if asked == 0 { default.min(max) } else { asked };
            if v > max {
                return Err(SandboxError::Invalid(format!(
                    "limits.{field} is {v}; your role may ask for at most {max}"
                )));
            }
            Ok(v)
        };
        const MIB: u64 = 1024 * 1024;
        Ok(RunLimits {
            fuel: pick("fuel", asked.fuel, d.fuel, ceiling.fuel)?,
            memory_bytes: pick(
                "memory_bytes",
                asked.memory_bytes,
                d.memory_mib * MIB,
                ceiling.memory_mib * MIB,
            )?,
            timeout_ms: pick(
                "timeout_ms",
                asked.timeout_ms,
                d.timeout_ms,
                ceiling.timeout_ms,
            )?,
            output_bytes: pick(
                "max_output_bytes",
                asked.output_bytes,
                d.output_bytes,
                ceiling.output_bytes,
            )?,
            files_written: pick(
                "max_files_written",
                u64::from(asked.files_written),
                u64::from(d.files_written),
                u64::from(ceiling.files_written),
            )? as u32,
            written_bytes: pick(
                "max_written_bytes",
                asked.written_bytes,
                d.written_bytes,
                ceiling.written_bytes,
            )?,
        })
    }

    /// Starts a run: checks it, takes a slot (RESOURCE_EXHAUSTED when none is free),
    /// copies the workspace, and runs the guest on a thread of its own. Dropping the
    /// receiver stops the guest within one epoch tick.
    pub async fn run(
        self: &Arc<Self>,
        p: &Principal,
        spec: RunSpec,
    ) -> Result<mpsc::Receiver<RunEvent>> {
        let limits = self.limits(p, spec.limits)?;
        if spec.args.len() > self.config.max_args {
            return Err(SandboxError::Invalid(format!(
                "args has {} entries; the limit is {}",
                spec.args.len(),
                self.config.max_args
            )));
        }
        let arg_bytes: usize = spec.args.iter().map(String::len).sum();
        if arg_bytes > self.config.max_code_bytes {
            return Err(SandboxError::Invalid(format!(
                "args hold {arg_bytes} bytes; the limit is {}",
                self.config.max_code_bytes
            )));
        }
        if spec.args.iter().any(|a| a.contains('\0')) {
            return Err(SandboxError::Invalid("args must not contain NUL".into()));
        }
        if spec.stdin.len() > self.config.max_stdin_bytes {
            return Err(SandboxError::Invalid(format!(
                "stdin is {} bytes; the limit is {}",
                spec.stdin.len(),
                self.config.max_stdin_bytes
            )));
        }
        let RunSpec {
            runtime,
            code,
            module_path,
            args,
            stdin,
            persist,
            ..
        } = spec;
        match runtime.as_str() {
            "python" => {
                if code.trim().is_empty() {
                    return Err(SandboxError::Invalid("code is required for python".into()));
                }
                if code.len() > self.config.max_code_bytes {
                    return Err(SandboxError::Invalid(format!(
                        "code is {} bytes; the limit is {}",
                        code.len(),
                        self.config.max_code_bytes
                    )));
                }
                if code.contains('\0') {
                    return Err(SandboxError::Invalid("code must not contain NUL".into()));
                }
            }
            "wasm" => {
                if !self.config.runtimes.iter().any(|r| r == "wasm") {
                    return Err(SandboxError::Precondition(
                        "the wasm runtime is disabled on this node (sandbox.runtimes)".into(),
                    ));
                }
                check_path("module_path", &module_path)?;
            }
            other => {
                return Err(SandboxError::Invalid(format!(
                    "runtime {other:?} is not one of \"python\", \"wasm\""
                )));
            }
        }
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            self.metrics
                .refused
                .with_label_values(&[&runtime, "busy"])
                .inc();
            SandboxError::Exhausted(
                format!(
                    "all {} sandbox slots are busy; retry shortly",
                    self.config.max_concurrent_runs
                ),
                Duration::from_secs(1),
            )
        })?;
        self.metrics.active.inc();
        let slot = Slot {
            _permit: permit,
            active: self.metrics.active.clone(),
        };
        let rpc = tracing::Span::current();
        let copy_start = std::time::SystemTime::now();
        // Billing holds the run's fuel ceiling while the program and the workspace copy are
        // got ready; nothing starts until the hold is in place. A refusal (balance, quota,
        // rate) ends the request, and a failure to get ready releases the hold.
        let prepare = async {
            let program = match runtime.as_str() {
                "python" => {
                    let module = self.runtimes.python().await?;
                    self.pool.fill(&module);
                    let files = self.workspaces.snapshot(&p.user_id).await?;
                    Program::Python {
                        module,
                        code,
                        args,
                        files,
                    }
                }
                _ => {
                    let bytes = match self.workspaces.read(&p.user_id, &module_path).await {
                        Err(SandboxError::NotFound(_)) => {
                            return Err(SandboxError::Invalid(format!(
                                "module_path {module_path:?} is not in your workspace"
                            )));
                        }
                        other => other?,
                    };
                    let runtimes = self.runtimes.clone();
                    let module = tokio::task::spawn_blocking(move || runtimes.module(&bytes))
                        .await
                        .map_err(|e| SandboxError::Internal(format!("compiling: {e}")))??;
                    let mut argv = vec![module_path.clone()];
                    argv.extend(args);
                    let files = self.workspaces.snapshot(&p.user_id).await?;
                    let dir = tokio::task::spawn_blocking(move || RunDir::create(files))
                        .await
                        .map_err(|e| SandboxError::Internal(format!("workspace copy: {e}")))??;
                    Program::Module { module, argv, dir }
                }
            };
            Ok::<_, SandboxError>(program)
        };
        let (hold, prepared) = tokio::join!(self.meter.reserve(p, &runtime, limits.fuel), prepare);
        let hold = match hold {
            Ok(hold) => hold,
            Err(e) => {
                if matches!(
                    e,
                    SandboxError::Precondition(_) | SandboxError::Exhausted(..)
                ) {
                    self.metrics
                        .refused
                        .with_label_values(&[&runtime, "billing"])
                        .inc();
                }
                return Err(e);
            }
        };
        let program = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                self.release(&hold).await;
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let over_files = Arc::new(AtomicBool::new(false));
        let claim = Claim {
            fuel: limits.fuel,
            memory_bytes: limits.memory_bytes as usize,
            timeout: Duration::from_millis(limits.timeout_ms),
            output_bytes: limits.output_bytes,
            tx: out_tx,
            cancelled: cancelled.clone(),
            over_files: over_files.clone(),
        };
        let started = match program {
            Program::Python {
                module,
                code,
                args,
                files,
            } => {
                self.pool
                    .run(&module, files, &code, &args, &stdin, claim)
                    .await
            }
            Program::Module { module, argv, dir } => {
                self.start_module(module, argv, dir, stdin, claim).await
            }
        };
        let Running { dir, exit } = match started {
            Ok(running) => running,
            Err(e) => {
                self.release(&hold).await;
                return Err(e);
            }
        };
        llmesh_kit::trace::record_child(
            &rpc,
            "sandbox.start",
            copy_start,
            std::time::SystemTime::now(),
            Vec::new(),
        );
        let dir = Arc::new(dir);

        let this = self.clone();
        let principal = p.clone();
        tokio::spawn(async move {
            let slot = slot;
            let watched = dir.clone();
            let watch_over = over_files.clone();
            let watcher = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(WATCH).await;
                    let dir = watched.clone();
                    let Ok((files, bytes)) =
                        tokio::task::spawn_blocking(move || dir.written()).await
                    else {
                        return;
                    };
                    if files > limits.files_written || bytes > limits.written_bytes {
                        watch_over.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            });
            tokio::pin!(exit);
            let mut open = true;
            let exit = loop {
                tokio::select! {
                    out = out_rx.recv(), if open => match out {
                        Some(out) => {
                            if tx.send(event_of(out)).await.is_err() {
                                cancelled.store(true, Ordering::SeqCst);
                            }
                        }
                        None => open = false,
                    },
                    _ = tx.closed(), if !cancelled.load(Ordering::SeqCst) => {
                        cancelled.store(true, Ordering::SeqCst);
                    }
                    done = &mut exit => break done,
                }
            };
            watcher.abort();
            // What the guest wrote last, after its final output events.
            while let Ok(out) = out_rx.try_recv() {
                let _ = tx.send(event_of(out)).await;
            }
            let exit = match exit {
                Ok(exit) => exit,
                Err(e) => {
                    tracing::error!(error = %e, "a sandbox run's thread ended without an exit");
                    this.release(&hold).await;
                    return;
                }
            };
            let guest_end = std::time::SystemTime::now();
            let fuel_used = exit.fuel_used;
            let mut result = this.finish(&principal, &dir, exit, limits, persist).await;
            let m = &this.metrics;
            m.runs
                .with_label_values(&[&runtime, status_label(result.exit.status)])
                .inc();
            m.fuel.with_label_values(&[&runtime]).inc_by(fuel_used);
            m.duration
                .with_label_values(&[&runtime])
                .observe(result.exit.wall.as_secs_f64());
            m.peak_memory
                .with_label_values(&[&runtime])
                .observe(result.exit.peak_memory_bytes as f64);
            guest_span(&rpc, &runtime, &result.exit, guest_end);
            // The cost is known from the hold's price, so the caller hears how the run
            // ended without waiting for billing; Settle charges the same amount just after.
            result.cost_micros = hold.cost(fuel_used);
            let _ = tx.send(RunEvent::Exit(result)).await;
            // The guest is gone: its slot is free for the next run while billing settles.
            drop(tx);
            drop(slot);
            match this.meter.settle(&hold, fuel_used).await {
                Ok(charged) if charged != hold.cost(fuel_used) => tracing::warn!(
                    charged,
                    reported = hold.cost(fuel_used),
                    reservation = %hold.id,
                    "billing charged a sandbox run differently from what the run reported"
                ),
                Ok(_) => {}
                // The hold expires on billing's side; the run itself is done.
                Err(e) => {
                    tracing::warn!(error = %e, reservation = %hold.id, "settling a sandbox run failed")
                }
            }
        });
        Ok(rx)
    }

    /// Starts an uploaded module in its workspace copy `dir`, claimed from its first
    /// instruction, on a blocking thread.
    async fn start_module(
        &self,
        module: Module,
        argv: Vec<String>,
        dir: RunDir,
        stdin: Vec<u8>,
        claim: Claim,
    ) -> Result<Running> {
        let controls = Controls::new(claim.memory_bytes);
        controls
            .claim(claim)
            .map_err(|(_, e)| SandboxError::Internal(e))?;
        let (tx, exit) = oneshot::channel();
        let runtimes = self.runtimes.clone();
        let workspace = dir.path.clone();
        tokio::task::spawn_blocking(move || {
            let exit = runner::run(
                runtimes.engine(),
                runtimes.linker(),
                Launch {
                    module: &module,
                    args: &argv,
                    env: &[],
                    stdin: MemoryInputPipe::new(stdin),
                    workspace: &workspace,
                    boots: false,
                },
                controls,
            );
            let _ = tx.send(exit);
        });
        Ok(Running { dir, exit })
    }

    /// Gives back a hold whose run never ran.
    async fn release(&self, hold: &Hold) {
        if let Err(e) = self.meter.settle(hold, 0).await {
            tracing::warn!(error = %e, reservation = %hold.id, "releasing a sandbox hold failed");
        }
    }

    /// Collects a finished run's file changes and keeps them when asked and allowed.
    async fn finish(
        &self,
        p: &Principal,
        dir: &Arc<RunDir>,
        mut exit: Exit,
        limits: RunLimits,
        persist: bool,
    ) -> RunResult {
        let scan = dir.clone();
        let changes = match tokio::task::spawn_blocking(move || scan.changes()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading a run's files failed");
                Default::default()
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading a run's files failed");
                Default::default()
            }
        };
        let changed_paths: Vec<String> = changes.keys().cloned().collect();
        let written: u64 = changes
            .values()
            .map(|d| d.as_ref().map_or(0, |d| d.len() as u64))
            .sum();
        let too_many = changes.values().filter(|d| d.is_some()).count() as u64
            > u64::from(limits.files_written)
            || written > limits.written_bytes;
        if too_many && exit.status == Status::Exited {
            exit.status = Status::OutputLimit;
            exit.message = format!(
                "wrote {} files and {written} bytes; the run may write {} files and {} bytes",
                changes.len(),
                limits.files_written,
                limits.written_bytes
            );
        }
        let mut persisted = false;
        if persist && exit.status == Status::Exited && !changes.is_empty() {
            match self
                .workspaces
                .apply(&p.user_id, &changes, self.quota(), self.clock.now())
                .await
            {
                Ok(()) => persisted = true,
                Err(e) => {
                    exit.message = format!("{}; its files were not kept: {e}", exit.message);
                }
            }
        }
        RunResult {
            exit,
            changed_paths,
            persisted,
            cost_micros: 0,
        }
    }
}

/// Records the guest's run as a child span of its RPC, with its real time and outcome.
fn guest_span(rpc: &tracing::Span, runtime: &str, exit: &Exit, end: std::time::SystemTime) {
    use opentelemetry::KeyValue;
    llmesh_kit::trace::record_child(
        rpc,
        "sandbox.guest",
        end - exit.wall,
        end,
        vec![
            KeyValue::new("sandbox.runtime", runtime.to_owned()),
            KeyValue::new("sandbox.status", status_label(exit.status)),
            KeyValue::new(
                "sandbox.fuel_used",
                exit.fuel_used.min(i64::MAX as u64) as i64,
            ),
            KeyValue::new(
                "sandbox.peak_memory_bytes",
                exit.peak_memory_bytes.min(i64::MAX as u64) as i64,
            ),
        ],
    );
}

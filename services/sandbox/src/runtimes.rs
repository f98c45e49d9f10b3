//! The runtimes a node offers: one wasmtime engine for the process (fuel, epoch
//! interruption, compiled code cached on disk so no start after the first compiles the
//! Python module again), the Python module fetched like a model (sha256-pinned, with
//! progress), and uploaded WASI modules compiled on first use and kept by digest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use llmesh_kit::fetch::{self, Phase, Progress, Source};
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Linker, Module};

use crate::config::SandboxConfig;
use crate::error::{Result, SandboxError};
use crate::runner::{self, GuestState};

/// Compiled uploaded modules kept in memory, by digest.
const MODULE_CACHE: usize = 32;

/// Where one runtime stands on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Being fetched or compiled; the text says how far.
    Preparing(String),
    /// Why it cannot run here (disabled, not fetched yet, failed).
    Unavailable(String),
}

/// A runtime as ListRuntimes shows it.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    pub id: &'static str,
    pub language: &'static str,
    pub version: &'static str,
    pub availability: Availability,
}

enum PythonState {
    Missing,
    Preparing(String),
    Ready(Module),
    Failed(String),
}

/// The process's engine: one per process, with a thread that ticks its epoch.
fn engine(cache_dir: &Path) -> Result<Engine> {
    static ENGINE: OnceLock<std::result::Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config
                .consume_fuel(true)
                .epoch_interruption(true)
                .parallel_compilation(true);
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(cache_dir.join("compiled"));
            match wasmtime::Cache::new(cache) {
                Ok(cache) => {
                    config.cache(Some(cache));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "wasmtime's compiled-code cache is off")
                }
            }
            let engine = Engine::new(&config).map_err(|e| e.to_string())?;
            let ticker = engine.weak();
            std::thread::Builder::new()
                .name("sandbox-epoch".into())
                .spawn(move || {
                    while let Some(engine) = ticker.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(runner::TICK);
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(engine)
        })
        .clone()
        .map_err(|e| SandboxError::Internal(format!("wasmtime engine: {e}")))
}

/// The runtimes of this process.
pub struct Runtimes {
    config: SandboxConfig,
    engine: Engine,
    linker: Linker<GuestState>,
    python: Mutex<PythonState>,
    /// The latest progress of fetching Python (for a progress bar).
    fetching: Mutex<Option<Progress>>,
    /// Serialises preparing Python (one fetch and compile at a time).
    preparing: tokio::sync::Mutex<()>,
    modules: Mutex<HashMap<[u8; 32], (Module, Instant)>>,
}

impl Runtimes {
    pub fn new(config: SandboxConfig) -> Result<Arc<Runtimes>> {
        let dir = PathBuf::from(&config.runtimes_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| SandboxError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let engine = engine(&dir)?;
        let linker = runner::linker(&engine)
            .map_err(|e| SandboxError::Internal(format!("WASI linker: {e}")))?;
        Ok(Arc::new(Runtimes {
            config,
            engine,
            linker,
            python: Mutex::new(PythonState::Missing),
            fetching: Mutex::new(None),
            preparing: tokio::sync::Mutex::new(()),
            modules: Mutex::new(HashMap::new()),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<GuestState> {
        &self.linker
    }

    fn enabled(&self, id: &str) -> bool {
        self.config.runtimes.iter().any(|r| r == id)
    }

    /// How far fetching Python has come, while it is being fetched.
    pub fn fetch_progress(&self) -> Option<Progress> {
        *lock(&self.fetching)
    }

    /// Every runtime llmesh knows, and whether it can run here.
    pub fn list(&self) -> Vec<RuntimeInfo> {
        let python = if !self.enabled("python") {
            Availability::Unavailable("disabled in sandbox.runtimes".into())
        } else {
            match &*lock(&self.python) {
                PythonState::Ready(_) => Availability::Ready,
                PythonState::Preparing(how) => Availability::Preparing(how.clone()),
                PythonState::Failed(why) => Availability::Unavailable(why.clone()),
                PythonState::Missing => {
                    Availability::Unavailable("not fetched yet: it is fetched on first use".into())
                }
            }
        };
        let wasm = if self.enabled("wasm") {
            Availability::Ready
        } else {
            Availability::Unavailable("disabled in sandbox.runtimes".into())
        };
        vec![
            RuntimeInfo {
                id: "python",
                language: "Python",
                version: "3.12",
                availability: python,
            },
            RuntimeInfo {
                id: "wasm",
                language: "WebAssembly (WASI preview 1)",
                version: "wasi_snapshot_preview1",
                availability: wasm,
            },
        ]
    }

    /// The compiled Python module, fetching and compiling it first if needed.
    pub async fn python(self: &Arc<Self>) -> Result<Module> {
        if !self.enabled("python") {
            return Err(SandboxError::Precondition(
                "the python runtime is disabled on this node (sandbox.runtimes)".into(),
            ));
        }
        if let PythonState::Ready(m) = &*lock(&self.python) {
            return Ok(m.clone());
        }
        let _one = self.preparing.lock().await;
        if let PythonState::Ready(m) = &*lock(&self.python) {
            return Ok(m.clone());
        }
        let this = self.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare_python())
            .await
            .map_err(|e| SandboxError::Internal(format!("preparing python: {e}")))?;
        match prepared {
            Ok(module) => {
                *lock(&self.python) = PythonState::Ready(module.clone());
                Ok(module)
            }
            Err(e) => {
                *lock(&self.python) = PythonState::Failed(e.to_string());
                Err(e)
            }
        }
    }

    /// Fetches (once per node) and compiles (once per node, then from the cache).
    fn prepare_python(&self) -> Result<Module> {
        let dir = PathBuf::from(&self.config.runtimes_dir);
        let file = dir.join("python-3.12.0.wasm");
        if !file.is_file() {
            let source = Source::parse(&self.config.python_source)
                .map_err(|e| SandboxError::Precondition(format!("sandbox.python_source: {e}")))?;
            let staging = dir.join(format!(".python-{}.wasm", uuid::Uuid::new_v4().simple()));
            let report = |p: Progress| {
                *lock(&self.fetching) = Some(p);
                *lock(&self.python) = PythonState::Preparing(describe(&p));
            };
            tracing::info!(source = %self.config.python_source, "fetching the python runtime");
            let fetched = fetch::fetch(&source, &staging, &report).and_then(|()| {
                let digest = fetch::sha256(&staging, &report)?;
                let want = &self.config.python_sha256;
                if !want.is_empty() && !want.eq_ignore_ascii_case(&digest) {
                    return Err(fetch::FetchError::Invalid(format!(
                        "the python runtime's sha256 is {digest}, not the pinned {want}"
                    )));
                }
                Ok(())
            });
            if let Err(e) = fetched {
                let _ = std::fs::remove_file(&staging);
                return Err(SandboxError::Unavailable(format!(
                    "cannot fetch the python runtime: {e}"
                )));
            }
            std::fs::rename(&staging, &file)
                .map_err(|e| SandboxError::Internal(format!("installing python: {e}")))?;
        }
        *lock(&self.python) = PythonState::Preparing("compiling".into());
        let started = Instant::now();
        let module = Module::from_file(&self.engine, &file)
            .map_err(|e| SandboxError::Internal(format!("compiling python: {e}")))?;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "python runtime ready"
        );
        Ok(module)
    }

    /// Compiles an uploaded module (or finds it compiled), by its bytes' digest.
    pub fn module(&self, bytes: &[u8]) -> Result<Module> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some((m, at)) = lock(&self.modules).get_mut(&digest) {
            *at = Instant::now();
            return Ok(m.clone());
        }
        let module = Module::from_binary(&self.engine, bytes).map_err(|e| {
            SandboxError::Invalid(format!(
                "module_path is not a valid WebAssembly module: {e}"
            ))
        })?;
        let mut modules = lock(&self.modules);
        if modules.len() >= MODULE_CACHE
            && let Some(oldest) = modules
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k)
        {
            modules.remove(&oldest);
        }
        modules.insert(digest, (module.clone(), Instant::now()));
        Ok(module)
    }
}

fn describe(p: &Progress) -> String {
    let phase = match p.phase {
        Phase::Resolving => "resolving",
        Phase::Downloading => "downloading",
        Phase::Extracting => "extracting",
        Phase::Verifying => "verifying",
        Phase::Done => "done",
    };
    if p.total > 0 {
        format!(
            "{phase} {:.0}%",
            p.completed as f64 * 100.0 / p.total as f64
        )
    } else {
        phase.to_owned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

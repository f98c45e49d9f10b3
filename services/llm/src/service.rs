//! The llm domain: the registry of models, which are loaded (within a memory budget),
//! pulls, and generation, embeddings and token counts on top of the engine.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use llmesh_engine::embed::EmbeddingModel;
use llmesh_engine::scheduler::SchedulerConfig;
use llmesh_engine::{ChatModel, ModelInfo};
use llmesh_kit::signal::Signals;
use tokio::sync::mpsc;

use crate::config::LlmConfig;
use crate::error::{LlmError, Result};
pub use crate::generate::{Finished, GenEvent, Generation, Input};
use crate::pull::{self, Phase, Progress, Source};
use crate::registry::{self, Kind, Manifest, Registry};
use crate::spend::SpendHook;

/// Where a model is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Being pulled (its first pull, or this process's copy).
    Pulling,
    Available,
    Loading,
    Loaded,
    Failed(String),
}

/// A model as ListModels shows it.
#[derive(Debug, Clone)]
pub struct ModelView {
    pub manifest: Manifest,
    pub state: State,
    pub memory_bytes: u64,
    pub last_used: Option<chrono::DateTime<Utc>>,
    /// What every llm process of the deployment reports about it (empty without a catalog).
    pub replicas: Vec<crate::catalog::ReplicaReport>,
    /// The provider that runs it, for hosted models.
    pub provider: Option<String>,
}

#[derive(Clone)]
pub(crate) enum Runtime {
    Chat(Arc<ChatModel>),
    Embedding(Arc<EmbeddingModel>),
}

pub(crate) struct Slot {
    runtime: Runtime,
    pub(crate) weight_bytes: u64,
    last_used: Instant,
    last_used_at: chrono::DateTime<Utc>,
    /// When it was loaded, to tell an unload request that came later from one before.
    pub(crate) loaded_at: chrono::DateTime<Utc>,
}

impl Slot {
    pub(crate) fn idle(&self) -> bool {
        match &self.runtime {
            Runtime::Chat(m) => !m.scheduler().busy() && Arc::strong_count(m) == 1,
            Runtime::Embedding(m) => Arc::strong_count(m) == 1,
        }
    }

    pub(crate) fn memory(&self) -> u64 {
        let kv = match &self.runtime {
            Runtime::Chat(m) => m
                .scheduler()
                .counters()
                .kv_cache_bytes
                .load(std::sync::atomic::Ordering::Relaxed) as u64,
            Runtime::Embedding(_) => 0,
        };
        self.weight_bytes + kv
    }
}

/// A pull's progress, then the registered model.
#[derive(Debug, Clone)]
pub enum PullEvent {
    Progress(Progress),
    Done(Box<Manifest>),
}

/// The llm service.
pub struct LlmService {
    pub(crate) config: LlmConfig,
    pub(crate) registry: Registry,
    pub(crate) slots: Mutex<HashMap<String, Slot>>,
    pub(crate) loading: Mutex<HashSet<String>>,
    pub(crate) failed: Mutex<HashMap<String, String>>,
    pub(crate) pulling: Mutex<HashSet<String>>,
    /// Progress of this process's pulls, for its reports.
    pub(crate) pull_progress: Mutex<HashMap<String, Progress>>,
    /// Pulls the reconciler started that failed, and when: retried after a pause.
    pub(crate) pull_failures: Mutex<HashMap<String, Instant>>,
    pub(crate) load_lock: tokio::sync::Mutex<()>,
    pub(crate) spend: Arc<dyn SpendHook>,
    /// How StopGeneration and catalog changes reach other processes.
    pub(crate) signals: Arc<Signals>,
    /// The deployment's catalog of models; None keeps everything in this process.
    pub(crate) catalog: Option<crate::catalog::Catalog>,
    /// Hosted model providers (they live in the database).
    pub(crate) providers: Option<Arc<crate::providers::Providers>>,
    /// This process's name in the catalog's reports.
    pub(crate) replica: String,
    pub(crate) started: chrono::DateTime<Utc>,
    /// Recorded as generations run.
    pub metrics: crate::metrics::GenerationMetrics,
}

impl LlmService {
    pub fn new(config: LlmConfig, spend: Arc<dyn SpendHook>) -> Result<Self> {
        let registry = Registry::open(&config.models_dir)?;
        registry.sweep_staging();
        Ok(LlmService {
            config,
            registry,
            slots: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
            pulling: Mutex::new(HashSet::new()),
            pull_progress: Mutex::new(HashMap::new()),
            pull_failures: Mutex::new(HashMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
            spend,
            signals: Signals::local(),
            catalog: None,
            providers: None,
            replica: crate::fleet::replica_name(),
            started: Utc::now(),
            metrics: crate::metrics::GenerationMetrics::default(),
        })
    }

    /// Lets StopGeneration and catalog changes reach every process sharing `signals`.
    pub fn with_signals(mut self, signals: Arc<Signals>) -> Self {
        self.signals = signals;
        self
    }

    /// Keeps the models in the deployment's catalog, which every llm process reconciles
    /// with (see [`LlmService::reconcile`]).
    pub fn with_catalog(mut self, catalog: crate::catalog::Catalog) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Serves the hosted providers kept in the database beside the local models.
    pub fn with_providers(mut self, providers: crate::providers::Providers) -> Self {
        self.providers = Some(Arc::new(providers));
        self
    }

    /// This process's name in the catalog's reports.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// The currency generation costs are reported in.
    pub fn spend_currency(&self) -> String {
        self.spend.currency()
    }

    /// Every model on this process's disk with its state here.
    pub(crate) fn list_local(&self) -> Result<Vec<ModelView>> {
        let manifests = self.registry.list()?;
        Ok(manifests.into_iter().map(|m| self.view(m)).collect())
    }

    pub(crate) fn view(&self, manifest: Manifest) -> ModelView {
        let slots = lock(&self.slots);
        let (state, memory_bytes, last_used) = if let Some(slot) = slots.get(&manifest.id) {
            (State::Loaded, slot.memory(), Some(slot.last_used_at))
        } else if lock(&self.loading).contains(&manifest.id) {
            (State::Loading, 0, None)
        } else if lock(&self.pulling).contains(&manifest.id) {
            (State::Pulling, 0, None)
        } else if let Some(reason) = lock(&self.failed).get(&manifest.id) {
            (State::Failed(reason.clone()), 0, None)
        } else {
            (State::Available, 0, None)
        };
        ModelView {
            manifest,
            state,
            memory_bytes,
            last_used,
            replicas: Vec::new(),
            provider: None,
        }
    }

    /// Pulls a model onto this process's disk, streaming progress; the model is registered
    /// there only when whole and verified.
    pub(crate) fn pull_local(
        self: &Arc<Self>,
        source: &str,
        id: Option<String>,
        expected_sha256: Option<String>,
    ) -> Result<mpsc::UnboundedReceiver<Result<PullEvent>>> {
        let source_text = source.trim().to_owned();
        let parsed = Source::parse(&source_text)?;
        let id = id
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| registry::id_from_name(&parsed.name()));
        registry::check_id(&id)?;
        if let Some(hash) = &expected_sha256
            && (hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(LlmError::Invalid(
                "sha256 must be 64 hexadecimal characters".into(),
            ));
        }
        if self.registry.contains(&id) {
            return Err(LlmError::AlreadyExists(id));
        }
        if !lock(&self.pulling).insert(id.clone()) {
            return Err(LlmError::Precondition(format!(
                "{id} is already being pulled"
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let result = this.pull_blocking(&parsed, &source_text, &id, expected_sha256, &tx);
            lock(&this.pulling).remove(&id);
            lock(&this.pull_progress).remove(&id);
            match result {
                Ok(manifest) => {
                    tracing::info!(model = %id, source = %source_text, "model pulled");
                    let _ = tx.send(Ok(PullEvent::Done(Box::new(manifest))));
                }
                Err(e) => {
                    tracing::warn!(model = %id, error = %e, "pull failed");
                    let _ = tx.send(Err(e));
                }
            }
        });
        Ok(rx)
    }

    fn pull_blocking(
        &self,
        source: &Source,
        source_text: &str,
        id: &str,
        expected: Option<String>,
        tx: &mpsc::UnboundedSender<Result<PullEvent>>,
    ) -> Result<Manifest> {
        let staging = self.registry.staging()?;
        let result = (|| {
            let name = source.name();
            let file = if name.is_empty() {
                "model".to_owned()
            } else {
                name
            };
            let dest = staging.join(&file);
            let last = Mutex::new((Phase::Done, Instant::now(), 0u64));
            let report = |p: Progress| {
                // At most a few events a second, plus every phase change.
                let mut last = lock(&last);
                let due = last.0 != p.phase
                    || last.1.elapsed() >= Duration::from_millis(200)
                    || p.completed == p.total;
                if due && (last.0 != p.phase || last.2 != p.completed || p.total == 0) {
                    *last = (p.phase, Instant::now(), p.completed);
                    lock(&self.pull_progress).insert(id.to_owned(), p);
                    let _ = tx.send(Ok(PullEvent::Progress(p)));
                }
            };
            pull::fetch(source, &dest, &report)?;
            let sha256 = pull::sha256(&dest, &report)?;
            if let Some(want) = expected
                && !want.eq_ignore_ascii_case(&sha256)
            {
                return Err(LlmError::Precondition(format!(
                    "checksum mismatch: expected sha256 {want}, got {sha256}; nothing was registered"
                )));
            }
            let manifest = describe(id, &file, &dest, sha256, source_text)?;
            self.registry.commit(&staging, &manifest)?;
            report(Progress {
                phase: Phase::Done,
                completed: manifest.size_bytes,
                total: manifest.size_bytes,
            });
            Ok(manifest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    /// Deletes this process's copy of a model that is not generating.
    pub(crate) async fn delete_local(&self, id: &str) -> Result<()> {
        let _guard = self.load_lock.lock().await;
        self.registry.get(id)?;
        {
            let mut slots = lock(&self.slots);
            if let Some(slot) = slots.get(id) {
                if !slot.idle() {
                    return Err(LlmError::Precondition(format!(
                        "{id} is busy generating; retry when it is idle"
                    )));
                }
                slots.remove(id);
            }
        }
        lock(&self.failed).remove(id);
        self.registry.remove(id)?;
        tracing::info!(model = %id, "model deleted");
        Ok(())
    }

    /// Loads a model, evicting least recently used idle models past the memory budget.
    /// Returns the ids evicted.
    pub async fn load(&self, id: &str) -> Result<Vec<String>> {
        let _guard = self.load_lock.lock().await;
        if let Some(slot) = lock(&self.slots).get_mut(id) {
            slot.last_used = Instant::now();
            return Ok(Vec::new());
        }
        let manifest = self.registry.get(id)?;
        let budget = self.config.memory_budget_mib * 1024 * 1024;
        if manifest.size_bytes > budget {
            return Err(LlmError::Exhausted(
                format!(
                    "{id} needs {} MiB but llm.memory_budget_mib is {}",
                    manifest.size_bytes / (1024 * 1024),
                    self.config.memory_budget_mib
                ),
                Duration::from_secs(60),
            ));
        }
        let evicted = self.make_room(manifest.size_bytes, budget)?;
        lock(&self.loading).insert(id.to_owned());
        lock(&self.failed).remove(id);
        let path = self.registry.path_of(&manifest);
        let sched = SchedulerConfig {
            queue_capacity: self.config.queue_capacity,
            max_running: self.config.max_running,
            prefill_chunk: self.config.prefill_chunk,
            prefix_cache_entries: self.config.prefix_cache_entries,
        };
        let name = id.to_owned();
        let kind = manifest.kind;
        let started = Instant::now();
        let loaded = tokio::task::spawn_blocking(move || match kind {
            Kind::Chat => ChatModel::load(&name, &path, sched).map(|m| Runtime::Chat(Arc::new(m))),
            Kind::Embedding => EmbeddingModel::load(&path).map(|m| Runtime::Embedding(Arc::new(m))),
        })
        .await
        .map_err(|e| LlmError::Internal(format!("loading task: {e}")))?;
        lock(&self.loading).remove(id);
        match loaded {
            Ok(runtime) => {
                lock(&self.slots).insert(
                    id.to_owned(),
                    Slot {
                        runtime,
                        weight_bytes: manifest.size_bytes,
                        last_used: Instant::now(),
                        last_used_at: Utc::now(),
                        loaded_at: Utc::now(),
                    },
                );
                tracing::info!(model = %id, ms = started.elapsed().as_millis() as u64, "model loaded");
                Ok(evicted)
            }
            Err(e) => {
                let reason = e.to_string();
                lock(&self.failed).insert(id.to_owned(), reason.clone());
                tracing::warn!(model = %id, error = %reason, "model failed to load");
                Err(LlmError::Precondition(format!(
                    "{id} failed to load: {reason}"
                )))
            }
        }
    }

    fn make_room(&self, need: u64, budget: u64) -> Result<Vec<String>> {
        let mut slots = lock(&self.slots);
        let mut evicted = Vec::new();
        loop {
            let used: u64 = slots.values().map(|s| s.weight_bytes).sum();
            if used + need <= budget {
                return Ok(evicted);
            }
            let victim = slots
                .iter()
                .filter(|(_, s)| s.idle())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone());
            match victim {
                Some(id) => {
                    slots.remove(&id);
                    tracing::info!(model = %id, "evicted to stay within the memory budget");
                    evicted.push(id);
                }
                None => {
                    return Err(LlmError::Exhausted(
                        format!(
                            "loading needs {} MiB more than llm.memory_budget_mib allows and every loaded model is busy",
                            (used + need - budget) / (1024 * 1024)
                        ),
                        Duration::from_secs(10),
                    ));
                }
            }
        }
    }

    /// Unloads an idle model from this process.
    pub(crate) async fn unload_local(&self, id: &str) -> Result<()> {
        let _guard = self.load_lock.lock().await;
        self.registry.get(id)?;
        let mut slots = lock(&self.slots);
        match slots.get(id) {
            None => Err(LlmError::Precondition(format!("{id} is not loaded"))),
            Some(slot) if !slot.idle() => Err(LlmError::Precondition(format!(
                "{id} is busy generating; retry when it is idle"
            ))),
            Some(_) => {
                slots.remove(id);
                tracing::info!(model = %id, "model unloaded");
                Ok(())
            }
        }
    }

    pub(crate) async fn runtime(&self, id: &str) -> Result<Runtime> {
        if id.is_empty() {
            return Err(LlmError::Invalid("model is required".into()));
        }
        registry::check_id(id).map_err(|_| LlmError::ModelNotFound(id.to_owned()))?;
        let found = {
            let mut slots = lock(&self.slots);
            slots.get_mut(id).map(|slot| {
                slot.last_used = Instant::now();
                slot.last_used_at = Utc::now();
                slot.runtime.clone()
            })
        };
        if let Some(runtime) = found {
            return Ok(runtime);
        }
        self.registry.get(id)?;
        if !self.config.auto_load {
            return Err(LlmError::Precondition(format!(
                "model {id} is not loaded; an admin can load it with LoadModel"
            )));
        }
        self.load(id).await?;
        lock(&self.slots)
            .get(id)
            .map(|s| s.runtime.clone())
            .ok_or_else(|| {
                LlmError::Unavailable(format!("{id} was unloaded while starting; retry"))
            })
    }

    pub(crate) async fn chat_model(&self, id: &str) -> Result<Arc<ChatModel>> {
        match self.runtime(id).await? {
            Runtime::Chat(m) => Ok(m),
            Runtime::Embedding(_) => Err(LlmError::Invalid(format!(
                "{id} is an embedding model; use Embed, or pick a chat model"
            ))),
        }
    }

    /// Pulls the default models when missing and loads the startup models. `on_progress`
    /// sees each pull's events.
    pub async fn prepare(
        self: &Arc<Self>,
        on_progress: &(dyn Fn(&str, &Progress) + Sync),
    ) -> Result<()> {
        if self.config.pull_defaults {
            let defaults = [
                (
                    &self.config.default_chat_model,
                    &self.config.default_chat_source,
                ),
                (
                    &self.config.default_embedding_model,
                    &self.config.default_embedding_source,
                ),
            ];
            for (id, source) in defaults {
                if !self.registry.contains(id) {
                    tracing::info!(model = %id, source = %source, "pulling a default model");
                    let mut rx = self.pull_local(source, Some(id.clone()), None)?;
                    while let Some(event) = rx.recv().await {
                        match event? {
                            PullEvent::Progress(p) => on_progress(id, &p),
                            PullEvent::Done(_) => break,
                        }
                    }
                }
                // The defaults are part of the catalog, even after an admin deleted them.
                if let Some(catalog) = &self.catalog {
                    let manifest = self.registry.get(id)?;
                    catalog
                        .adopt(&manifest, Utc::now(), true)
                        .await
                        .map_err(|e| LlmError::Internal(format!("model catalog: {e}")))?;
                }
            }
        }
        for id in self.config.startup_models() {
            if self.registry.contains(&id) {
                self.load(&id).await?;
            } else {
                tracing::warn!(model = %id, "a model named in llm.load_at_start is not in the registry");
            }
        }
        Ok(())
    }

    /// Every loaded model: its id, resident memory and (chat models) scheduler counters.
    pub fn loaded_models(
        &self,
    ) -> Vec<(String, u64, Option<Arc<llmesh_engine::scheduler::Counters>>)> {
        lock(&self.slots)
            .iter()
            .map(|(id, slot)| {
                let counters = match &slot.runtime {
                    Runtime::Chat(m) => Some(m.scheduler().counters().clone()),
                    Runtime::Embedding(_) => None,
                };
                (id.clone(), slot.memory(), counters)
            })
            .collect()
    }

    /// The scheduler counters of a loaded chat model, for tests and metrics.
    pub fn counters(&self, id: &str) -> Option<Arc<llmesh_engine::scheduler::Counters>> {
        match &lock(&self.slots).get(id)?.runtime {
            Runtime::Chat(m) => Some(m.scheduler().counters().clone()),
            Runtime::Embedding(_) => None,
        }
    }
}

/// Builds the manifest of a fetched model by looking inside it.
fn describe(
    id: &str,
    file: &str,
    path: &std::path::Path,
    sha256: String,
    source: &str,
) -> Result<Manifest> {
    let size_bytes = pull::size_of(path)?;
    let now = Utc::now();
    if path.is_file() {
        let info = ModelInfo::inspect(path)
            .map_err(|e| LlmError::Invalid(format!("{file} is not a usable GGUF model: {e}")))?;
        return Ok(Manifest {
            id: id.to_owned(),
            kind: Kind::Chat,
            format: "gguf".into(),
            file: file.to_owned(),
            sha256,
            size_bytes,
            architecture: info.architecture,
            context_length: info.context_length,
            quantization: info.quantization,
            source: source.to_owned(),
            chat_template: info.chat_template,
            created_at: now,
        });
    }
    let config = std::fs::read(path.join("config.json")).map_err(|_| {
        LlmError::Invalid(format!(
            "{file} is a directory without config.json: an embedding model needs {}",
            llmesh_engine::embed::REQUIRED_FILES.join(", ")
        ))
    })?;
    for required in llmesh_engine::embed::REQUIRED_FILES {
        if !path.join(required).is_file() {
            return Err(LlmError::Invalid(format!("{file} lacks {required}")));
        }
    }
    let config: serde_json::Value = serde_json::from_slice(&config)
        .map_err(|e| LlmError::Invalid(format!("{file}/config.json: {e}")))?;
    Ok(Manifest {
        id: id.to_owned(),
        kind: Kind::Embedding,
        format: "safetensors".into(),
        file: file.to_owned(),
        sha256,
        size_bytes,
        architecture: config["model_type"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
        context_length: config["max_position_embeddings"].as_u64().unwrap_or(0) as u32,
        quantization: config["torch_dtype"]
            .as_str()
            .unwrap_or("F32")
            .to_uppercase(),
        source: source.to_owned(),
        chat_template: None,
        created_at: now,
    })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

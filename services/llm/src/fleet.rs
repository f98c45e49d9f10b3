//! The model operations as the deployment sees them. With a catalog (every server has
//! one), PullModel, LoadModel, UnloadModel and DeleteModel change the catalog and tell
//! every llm process, and each process reconciles its own disk and memory with it: pulls
//! what it lacks, loads what should be loaded, drops what was deleted. Without a catalog
//! (the operator commands' scratch use) the same calls act on this process alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use crate::catalog::{self, Catalog, Entry, ReplicaReport};
use crate::error::{LlmError, Result};
use crate::pull::{Phase, Source};
use crate::registry::{self, Kind, Manifest};
use crate::service::{LlmService, ModelView, PullEvent, State};

/// How often each process reconciles when no signal wakes it (and reports its state).
const RECONCILE_EVERY: Duration = Duration::from_secs(15);
/// How long a pull the reconciler started waits after failing before it is tried again.
const PULL_RETRY: Duration = Duration::from_secs(300);

/// A name for this process in the catalog's reports: the host (the pod, in Kubernetes)
/// and a random suffix, since several processes may share a host.
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "llm".into());
    let suffix: [u8; 3] = rand::random();
    format!("{host}-{}", hex::encode(suffix))
}

fn db(e: sea_orm::DbErr) -> LlmError {
    LlmError::Internal(format!("model catalog: {e}"))
}

impl LlmService {
    fn catalog(&self) -> Option<&Catalog> {
        self.catalog.as_ref()
    }

    /// Tells every llm process to reconcile now.
    async fn announce(&self) {
        self.signals.send(catalog::CHANGED).await;
    }

    /// Every model of the deployment with its state here and, per llm process, there.
    pub async fn list(&self) -> Result<Vec<ModelView>> {
        let mut views = self.list_here().await?;
        // A provider's trouble never hides the local models.
        match self.hosted_views().await {
            Ok(hosted) => views.extend(hosted),
            Err(e) => tracing::warn!(error = %e, "listing hosted models failed"),
        }
        Ok(views)
    }

    async fn list_here(&self) -> Result<Vec<ModelView>> {
        let Some(catalog) = self.catalog() else {
            return self.list_local();
        };
        let entries = catalog.entries().await.map_err(db)?;
        let reports = catalog
            .reports(Utc::now() - catalog::REPLICA_TIMEOUT)
            .await
            .map_err(db)?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let id = e.id.clone();
                let mut view = self.entry_view(e);
                view.replicas = reports.iter().filter(|r| r.model == id).cloned().collect();
                view
            })
            .collect())
    }

    /// One model of the deployment.
    pub async fn get(&self, id: &str) -> Result<ModelView> {
        if let Some(view) = self.hosted_view(id).await? {
            return Ok(view);
        }
        let Some(catalog) = self.catalog() else {
            return Ok(self.view(self.registry.get(id)?));
        };
        registry::check_id(id).map_err(|_| LlmError::ModelNotFound(id.to_owned()))?;
        let entry = catalog
            .entry(id)
            .await
            .map_err(db)?
            .ok_or_else(|| LlmError::ModelNotFound(id.to_owned()))?;
        let reports = catalog
            .reports(Utc::now() - catalog::REPLICA_TIMEOUT)
            .await
            .map_err(db)?;
        let mut view = self.entry_view(entry);
        view.replicas = reports.into_iter().filter(|r| r.model == id).collect();
        Ok(view)
    }

    /// A catalog entry as this process sees it.
    fn entry_view(&self, e: Entry) -> ModelView {
        match (e.manifest, self.registry.get(&e.id)) {
            // This process has it: its own state.
            (_, Ok(local)) => self.view(local),
            // Known to the deployment, not (yet) here.
            (Some(manifest), Err(_)) => {
                let mut view = self.view(manifest);
                if !matches!(view.state, State::Pulling | State::Failed(_)) {
                    view.state = State::Available;
                }
                view
            }
            // Its first pull is still running somewhere.
            (None, Err(_)) => ModelView {
                manifest: Manifest {
                    id: e.id,
                    kind: Kind::Chat,
                    format: String::new(),
                    file: String::new(),
                    sha256: e.sha256.unwrap_or_default(),
                    size_bytes: 0,
                    architecture: String::new(),
                    context_length: 0,
                    quantization: String::new(),
                    source: e.source,
                    chat_template: None,
                    created_at: Utc::now(),
                },
                state: State::Pulling,
                memory_bytes: 0,
                last_used: None,
                replicas: Vec::new(),
                provider: None,
            },
        }
    }

    /// Pulls a model for the deployment: this process fetches and verifies it, then the
    /// catalog publishes it and every other llm process pulls the same bytes.
    pub async fn pull(
        self: &Arc<Self>,
        source: &str,
        id: Option<String>,
        expected_sha256: Option<String>,
    ) -> Result<mpsc::UnboundedReceiver<Result<PullEvent>>> {
        let Some(catalog) = self.catalog().cloned() else {
            return self.pull_local(source, id, expected_sha256);
        };
        let parsed = Source::parse(source.trim())?;
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
        let claimed = catalog
            .claim(&id, source.trim(), expected_sha256.as_deref(), Utc::now())
            .await
            .map_err(db)?;
        if !claimed {
            return Err(match catalog.entry(&id).await.map_err(db)? {
                Some(e) if e.manifest.is_none() => LlmError::Precondition(format!(
                    "{id} is being pulled by another llm process; wait for it"
                )),
                _ => LlmError::AlreadyExists(id),
            });
        }
        // A copy left on this disk by a deleted model of the same id goes first.
        if self.registry.contains(&id)
            && let Err(e) = self.delete_local(&id).await
        {
            let _ = catalog.release_claim(&id).await;
            return Err(e);
        }
        let mut inner = match self.pull_local(source, Some(id.clone()), expected_sha256) {
            Ok(rx) => rx,
            Err(e) => {
                let _ = catalog.release_claim(&id).await;
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(event) = inner.recv().await {
                let event = match event {
                    Ok(PullEvent::Done(manifest)) => {
                        match catalog.publish(&manifest, Utc::now()).await {
                            Ok(()) => {
                                this.announce().await;
                                Ok(PullEvent::Done(manifest))
                            }
                            Err(e) => Err(db(e)),
                        }
                    }
                    Err(e) => {
                        if let Err(e) = catalog.release_claim(&id).await {
                            tracing::warn!(model = %id, error = %e, "releasing a failed pull's claim failed");
                        }
                        Err(e)
                    }
                    other => other,
                };
                // The pull goes on (and is published) even when its client has left.
                let _ = tx.send(event);
            }
        });
        Ok(rx)
    }

    /// Deletes a model from the deployment: this process's copy now (refused while it
    /// generates), every other process's copy as it reconciles.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let Some(catalog) = self.catalog() else {
            return self.delete_local(id).await;
        };
        registry::check_id(id).map_err(|_| LlmError::ModelNotFound(id.to_owned()))?;
        let entry = catalog.entry(id).await.map_err(db)?;
        if entry.is_none() {
            return Err(LlmError::ModelNotFound(id.to_owned()));
        }
        if self.registry.contains(id) {
            self.delete_local(id).await?;
        }
        catalog.delete(id, Utc::now()).await.map_err(db)?;
        tracing::info!(model = %id, "model deleted from the catalog");
        self.announce().await;
        Ok(())
    }

    /// Loads a model here and asks every llm process to keep it loaded. Returns the ids
    /// evicted here to make room.
    pub async fn load_model(&self, id: &str) -> Result<Vec<String>> {
        if let Some(catalog) = self.catalog()
            && catalog.entry(id).await.map_err(db)?.is_none()
        {
            return Err(LlmError::ModelNotFound(id.to_owned()));
        }
        let evicted = self.load(id).await?;
        if let Some(catalog) = self.catalog() {
            catalog
                .set_keep_loaded(id, true, Utc::now())
                .await
                .map_err(db)?;
            self.announce().await;
        }
        Ok(evicted)
    }

    /// Unloads a model here and asks every llm process to unload it (a process that loads
    /// it later, on demand, keeps it).
    pub async fn unload(&self, id: &str) -> Result<()> {
        let Some(catalog) = self.catalog() else {
            return self.unload_local(id).await;
        };
        if catalog.entry(id).await.map_err(db)?.is_none() {
            return Err(LlmError::ModelNotFound(id.to_owned()));
        }
        let loaded_here = self.loaded_here(id);
        let loaded_elsewhere = catalog
            .reports(Utc::now() - catalog::REPLICA_TIMEOUT)
            .await
            .map_err(db)?
            .iter()
            .any(|r| r.model == id && r.replica != self.replica && r.state == "loaded");
        if !loaded_here && !loaded_elsewhere {
            return Err(LlmError::Precondition(format!("{id} is not loaded")));
        }
        if loaded_here {
            self.unload_local(id).await?;
        }
        catalog
            .set_keep_loaded(id, false, Utc::now())
            .await
            .map_err(db)?;
        self.announce().await;
        Ok(())
    }

    fn loaded_here(&self, id: &str) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// Brings this process in line with the catalog: pulls the models it lacks (in the
    /// background), loads those every process should keep loaded, unloads those an
    /// UnloadModel since their load asked to drop, deletes its copies of deleted models,
    /// and reports where it stands. The first pass also adds to the catalog what this
    /// disk holds from before the catalog existed (unless deleted since).
    pub async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let Some(catalog) = self.catalog().cloned() else {
            return Ok(());
        };
        let now = Utc::now();
        let deleted = catalog.deleted().await.map_err(db)?;
        let mut entries = catalog.entries().await.map_err(db)?;
        for local in self.registry.list()? {
            if deleted.contains(&local.id) {
                if !entries.iter().any(|e| e.id == local.id) {
                    match self.delete_local(&local.id).await {
                        Ok(()) => {
                            tracing::info!(model = %local.id, "removed a model the catalog deleted")
                        }
                        Err(e) => {
                            tracing::info!(model = %local.id, error = %e, "a deleted model is still busy here; will retry")
                        }
                    }
                }
            } else if !entries.iter().any(|e| e.id == local.id) {
                catalog.adopt(&local, now, false).await.map_err(db)?;
                tracing::info!(model = %local.id, "added a model found on disk to the catalog");
            }
        }
        entries = catalog.entries().await.map_err(db)?;
        for entry in &entries {
            let Some(manifest) = &entry.manifest else {
                continue;
            };
            if !self.registry.contains(&entry.id) {
                self.pull_for_catalog(manifest);
                continue;
            }
            let loaded_at = self
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&entry.id)
                .map(|s| s.loaded_at);
            match loaded_at {
                // Reconciling never evicts: a model that does not fit beside the loaded
                // ones waits (LoadModel here, or a quieter moment, makes the room).
                None if entry.keep_loaded && self.fits(manifest.size_bytes) => {
                    if let Err(e) = self.load(&entry.id).await {
                        tracing::warn!(model = %entry.id, error = %e, "loading a model the catalog keeps loaded failed");
                    }
                }
                Some(at) if !entry.keep_loaded && entry.unloaded_at.is_some_and(|u| u > at) => {
                    if let Err(e) = self.unload_local(&entry.id).await {
                        tracing::info!(model = %entry.id, error = %e, "unloading as the catalog asks failed; will retry");
                    }
                }
                _ => {}
            }
        }
        self.report(&catalog, &entries).await
    }

    /// Whether `bytes` of weights fit beside the loaded models within the memory budget.
    fn fits(&self, bytes: u64) -> bool {
        let used: u64 = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| s.weight_bytes)
            .sum();
        used + bytes <= self.config.memory_budget_mib * 1024 * 1024
    }

    /// Starts pulling a published model this process lacks, unless it is being pulled or
    /// failed recently.
    fn pull_for_catalog(self: &Arc<Self>, manifest: &Manifest) {
        let recently_failed = self
            .pull_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&manifest.id)
            .is_some_and(|at| at.elapsed() < PULL_RETRY);
        let pulling = self
            .pulling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&manifest.id);
        if recently_failed || pulling {
            return;
        }
        let id = manifest.id.clone();
        tracing::info!(model = %id, source = %manifest.source, "pulling a model the catalog has");
        let mut rx = match self.pull_local(
            &manifest.source,
            Some(id.clone()),
            Some(manifest.sha256.clone()),
        ) {
            Ok(rx) => rx,
            Err(e) => {
                self.pull_failed(&id, &e);
                return;
            }
        };
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                match event {
                    Err(e) => this.pull_failed(&id, &e),
                    Ok(PullEvent::Done(_)) => {
                        // Load it now if the catalog keeps it loaded.
                        if let Err(e) = this.reconcile().await {
                            tracing::warn!(error = %e, "reconciling after a pull failed");
                        }
                    }
                    Ok(PullEvent::Progress(_)) => {}
                }
            }
        });
    }

    fn pull_failed(&self, id: &str, e: &LlmError) {
        tracing::warn!(model = %id, error = %e, "pulling a model the catalog has failed; will retry");
        self.pull_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), Instant::now());
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), format!("pull failed: {e}"));
    }

    /// Writes where this process stands on every catalog model.
    async fn report(&self, catalog: &Catalog, entries: &[Entry]) -> Result<()> {
        let now = Utc::now();
        let mut reports = Vec::new();
        for entry in entries {
            let (state, detail, memory_bytes) = match self.registry.get(&entry.id) {
                Ok(manifest) => {
                    let view = self.view(manifest);
                    match view.state {
                        State::Failed(reason) => ("failed", reason, 0),
                        State::Loaded => ("loaded", String::new(), view.memory_bytes),
                        State::Loading => ("loading", String::new(), 0),
                        State::Pulling => ("pulling", String::new(), 0),
                        State::Available => ("available", String::new(), 0),
                    }
                }
                Err(_) => {
                    let progress = self
                        .pull_progress
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&entry.id)
                        .copied();
                    let failed = self
                        .failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&entry.id)
                        .cloned();
                    match (progress, failed) {
                        (Some(p), _) => {
                            ("pulling", progress_text(p.phase, p.completed, p.total), 0)
                        }
                        (None, Some(reason)) => ("failed", reason, 0),
                        (None, None) => continue,
                    }
                }
            };
            reports.push(ReplicaReport {
                replica: self.replica.clone(),
                model: entry.id.clone(),
                state: state.into(),
                detail,
                memory_bytes,
                updated_at: now,
            });
        }
        catalog
            .heartbeat(&self.replica, self.started, now)
            .await
            .map_err(db)?;
        catalog.report(&self.replica, &reports).await.map_err(db)
    }

    /// Reconciles now, whenever the catalog changes (a signal from any process), and
    /// every few seconds otherwise.
    pub fn spawn_reconciler(self: &Arc<Self>) {
        if self.catalog.is_none() {
            return;
        }
        let this = self.clone();
        let mut changes = self.signals.subscribe(catalog::CHANGED);
        tokio::spawn(async move {
            if let Some(catalog) = &this.catalog
                && let Err(e) = catalog.sweep_replicas(Utc::now()).await
            {
                tracing::warn!(error = %e, "forgetting old llm processes failed");
            }
            loop {
                if let Err(e) = this.reconcile().await {
                    tracing::warn!(error = %e, "reconciling with the model catalog failed; will retry");
                }
                tokio::select! {
                    _ = changes.recv() => {}
                    _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
            }
        });
    }
}

fn progress_text(phase: Phase, completed: u64, total: u64) -> String {
    let phase = format!("{phase:?}").to_lowercase();
    if total > 0 {
        format!(
            "{phase} {:.0}% of {} MiB",
            completed as f64 * 100.0 / total as f64,
            total / (1024 * 1024)
        )
    } else {
        phase
    }
}

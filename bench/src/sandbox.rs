//! Sandbox speed against `llmesh serve` (release build, embedded SQLite, every service in
//! one process, billing metering every run), one table:
//!
//! - warm `python -c "print(1)"` through the Run RPC, one run every `pace_ms` so each finds
//!   a started interpreter: p50 and p99 over `runs`, beside native CPython's start-up
//!   (`python3 -c "print(1)"`, interleaved run for run) and the same module through the
//!   `wasmtime` PyPI package (bench/peer/wasmtime_python.py, a fresh instance per run);
//! - a WASI hello-world module (uploaded to the workspace) through the Run RPC: p50, p99;
//! - throughput, back to back, with 2 and 8 concurrent clients, for Python (there the pool
//!   refills as fast as it can: its refill rate) and for the hello module;
//! - the resident memory of `llmesh serve` idle with the Python runtime loaded and its pool
//!   of interpreters started.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use llmesh_proto::auth::v1 as auth_pb;
use llmesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use llmesh_proto::sandbox::v1 as pb;
use llmesh_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use llmesh_tests::mesh::Mesh;
use llmesh_tests::{Backend, TestDb};
use tonic::transport::Channel;

const PASSWORD: &str = "benchmark password";

/// Writes "hello\n" to stdout and returns.
const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

pub struct Options {
    pub binary: PathBuf,
    pub runtimes_dir: PathBuf,
    pub runs: usize,
    pub warmup: usize,
    pub pace_ms: u64,
    pub python: Option<PathBuf>,
    pub peer_python: Option<PathBuf>,
    pub seconds: u64,
    pub clients: Vec<usize>,
    pub pool: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// The CPython that `python3` really is (not a version manager's shim, which adds its own
/// start-up): /usr/bin/python3 when present.
fn native_python(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let system = PathBuf::from("/usr/bin/python3");
    if system.is_file() {
        return Ok(system);
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("python3 is needed for the native figure")?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn native_once(python: &PathBuf) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = std::process::Command::new(python)
        .args(["-c", "print(1)"])
        .output()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if out.stdout != b"1\n" {
        bail!("native python printed {:?}", out.stdout);
    }
    Ok(ms)
}

fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    req
}

/// One run to its end: its wall time in ms as the client saw it, and its stdout.
async fn run_once(
    c: &mut SandboxServiceClient<Channel>,
    token: &str,
    req: pb::RunRequest,
) -> anyhow::Result<(f64, Vec<u8>)> {
    let t = Instant::now();
    let mut stream = c.run(bearer(token, req)).await?.into_inner();
    let mut out = Vec::new();
    let mut status = None;
    while let Some(m) = stream.message().await? {
        match m.event {
            Some(pb::run_response::Event::Stdout(b)) => out.extend(b),
            Some(pb::run_response::Event::Exit(e)) => status = Some(e),
            _ => {}
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let exit = status.context("the run ended without an exit")?;
    if exit.status != pb::RunStatus::Exited as i32 || exit.exit_code != 0 {
        bail!("the run ended {:?}: {}", exit.status, exit.message);
    }
    Ok((ms, out))
}

fn python_print() -> pb::RunRequest {
    pb::RunRequest {
        runtime: "python".into(),
        code: "print(1)".into(),
        ..Default::default()
    }
}

fn hello() -> pb::RunRequest {
    pb::RunRequest {
        runtime: "wasm".into(),
        module_path: "bin/hello.wasm".into(),
        ..Default::default()
    }
}

/// Runs back to back from `clients` clients for `seconds`: runs per second.
async fn throughput(
    channel: &Channel,
    token: &str,
    clients: usize,
    seconds: u64,
    request: fn() -> pb::RunRequest,
) -> anyhow::Result<f64> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = SandboxServiceClient::new(channel.clone());
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                run_once(&mut c, &token, request()).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let python = native_python(o.python.clone())?;
    let module = o.runtimes_dir.join("python-3.12.0.wasm");
    if !module.is_file() {
        bail!(
            "{} is missing: start llmesh once with sandbox.runtimes_dir = {} (or run the tests) to fetch it",
            module.display(),
            o.runtimes_dir.display()
        );
    }
    let db = TestDb::create(Backend::Sqlite).await.context("sqlite")?;
    let mut config = llmesh::Config::default();
    config.llm.pull_defaults = false;
    config.llm.load_at_start = Some(Vec::new());
    config.server.web_dir = "none".into();
    config.log.filter = "warn".into();
    config.sandbox.runtimes_dir = o.runtimes_dir.display().to_string();
    config.sandbox.prepare_at_start = true;
    config.sandbox.python_pool = o.pool;
    config.sandbox.max_concurrent_runs = o.clients.iter().copied().max().unwrap_or(8).max(4);
    eprintln!(
        "==> starting llmesh serve (SQLite, every service, python pool of {})",
        o.pool
    );
    let layout = [("llmesh", "auth,billing,llm,chat,sandbox")];
    let mesh = Mesh::start_with(&db, &config, &o.binary, &layout, false)
        .await
        .context("starting llmesh serve")?;
    let channel = Channel::from_shared(mesh.url("llmesh"))?.connect().await?;
    let mut auth = AuthServiceClient::new(channel.clone());
    auth.register(auth_pb::RegisterRequest {
        email: "bench@example.com".into(),
        password: PASSWORD.into(),
        display_name: String::new(),
    })
    .await?;
    let token = auth
        .login(auth_pb::LoginRequest {
            email: "bench@example.com".into(),
            password: PASSWORD.into(),
        })
        .await?
        .into_inner()
        .tokens
        .context("tokens")?
        .access_token;
    let mut c = SandboxServiceClient::new(channel.clone());
    c.write_file_chunk(bearer(
        &token,
        pb::WriteFileChunkRequest {
            path: "bin/hello.wasm".into(),
            offset: 0,
            data: wat::parse_str(HELLO_WAT)?,
            last: true,
        },
    ))
    .await?;

    // Idle memory once the pool is full.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = mesh.pid("llmesh").context("llmesh pid")?;
    let idle_rss_mib = status_kb(pid, "VmRSS:") as f64 / 1024.0;

    eprintln!(
        "==> warm python print(1): {} runs (+{} warm-up), one every {} ms, interleaved with {}",
        o.runs,
        o.warmup,
        o.pace_ms,
        python.display()
    );
    let (mut ours, mut native) = (Vec::new(), Vec::new());
    for i in 0..o.warmup + o.runs {
        tokio::time::sleep(Duration::from_millis(o.pace_ms)).await;
        let (ms, out) = run_once(&mut c, &token, python_print()).await?;
        if out != b"1\n" {
            bail!("the sandbox printed {out:?}");
        }
        let n = native_once(&python)?;
        if i >= o.warmup {
            ours.push(ms);
            native.push(n);
        }
    }
    let (ours, native) = (sorted(ours), sorted(native));

    eprintln!("==> WASI hello: {} runs (+{} warm-up)", o.runs, o.warmup);
    let mut hello_ms = Vec::new();
    for i in 0..o.warmup + o.runs {
        let (ms, out) = run_once(&mut c, &token, hello()).await?;
        if out != b"hello\n" {
            bail!("hello printed {out:?}");
        }
        if i >= o.warmup {
            hello_ms.push(ms);
        }
    }
    let hello_ms = sorted(hello_ms);

    let mut rates = Vec::new();
    for &n in &o.clients {
        eprintln!("==> throughput, {n} clients, {} s each", o.seconds);
        let py = throughput(&channel, &token, n, o.seconds, python_print).await?;
        let wasm = throughput(&channel, &token, n, o.seconds, hello).await?;
        rates.push((n, py, wasm));
    }
    let busy_rss_mib = status_kb(pid, "VmHWM:") as f64 / 1024.0;
    drop(mesh);

    let peer = match &o.peer_python {
        Some(peer_python) => {
            eprintln!(
                "==> the wasmtime PyPI package, {} runs (+{} warm-up)",
                o.runs, o.warmup
            );
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer/wasmtime_python.py");
            let out = std::process::Command::new(peer_python)
                .arg(&script)
                .args(["--module", &module.display().to_string()])
                .args(["--runs", &o.runs.to_string()])
                .args(["--warmup", &o.warmup.to_string()])
                .output()
                .context("running bench/peer/wasmtime_python.py")?;
            if !out.status.success() {
                bail!(
                    "wasmtime_python.py failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let times: Vec<f64> = v["times_ms"]
                .as_array()
                .context("times_ms")?
                .iter()
                .filter_map(|t| t.as_f64())
                .collect();
            Some((
                sorted(times),
                v["version"].as_str().unwrap_or("?").to_owned(),
            ))
        }
        None => None,
    };

    println!();
    println!("| python -c \"print(1)\" | p50 ms | p99 ms | llmesh p50 ÷ this p50 |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, v: &[f64]| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} |",
            percentile(v, 0.5),
            percentile(v, 0.99),
            percentile(&ours, 0.5) / percentile(v, 0.5)
        );
    };
    row("llmesh Run RPC, warm (pooled interpreter)", &ours);
    row(&format!("native CPython ({})", python.display()), &native);
    if let Some((times, version)) = &peer {
        row(&format!("wasmtime PyPI {version}, instance per run"), times);
    }
    println!();
    println!(
        "WASI hello module through the Run RPC: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&hello_ms, 0.5),
        percentile(&hello_ms, 0.99)
    );
    println!();
    println!("| clients | python print(1) runs/s | WASI hello runs/s |");
    println!("|---:|---:|---:|");
    for (n, py, wasm) in &rates {
        println!("| {n} | {py:.1} | {wasm:.1} |");
    }
    println!();
    println!(
        "llmesh serve RSS: {idle_rss_mib:.0} MiB idle (python runtime loaded, {} interpreters started), {busy_rss_mib:.0} MiB peak under load",
        o.pool
    );
    Ok(())
}

//! The engine benchmark: single-stream prefill and decode in process and over gRPC,
//! aggregate decode and time to first token with 1, 4 and 16 concurrent streams, and the
//! peak memory of `llmesh serve`. llama.cpp's single-stream figures come from
//! `bench/peer/llamacpp_bench.py` (run by `bench/engine.sh`) and are read from a JSON file.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use llmesh_engine::ChatModel;
use llmesh_engine::sampler::SamplingParams;
use llmesh_engine::scheduler::{Event, Request, SchedulerConfig};
use llmesh_proto::llm::v1 as llm_pb;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;

/// What the harness measures against.
pub struct Options {
    pub models_dir: PathBuf,
    pub model: String,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub runs: usize,
    pub ids_out: Option<PathBuf>,
    pub peer: Option<PathBuf>,
    pub single_only: bool,
    pub streams_only: bool,
    /// Concurrent stream counts for the aggregate rows.
    pub streams: Vec<usize>,
}

const SENTENCE: &str =
    "The quick brown fox jumps over the lazy dog while the river runs to the sea. ";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// A prompt text of about `n` tokens, and exactly its first `n` ids.
fn prompt(model: &ChatModel, n: usize) -> anyhow::Result<(String, Vec<u32>)> {
    let mut text = String::new();
    loop {
        text.push_str(SENTENCE);
        let ids = model.text_tokens(&text)?;
        if ids.len() >= n {
            return Ok((text, ids[..n].to_vec()));
        }
    }
}

/// Plays a five-turn conversation (48 greedy tokens per reply) and returns the 5th turn's
/// time to first token in ms and its prompt length.
async fn fifth_turn_ttft(model: &ChatModel) -> anyhow::Result<(f64, usize)> {
    use llmesh_engine::template::Message;
    let questions = [
        "Tell me about lighthouses.",
        "Who kept them running?",
        "What did a keeper do at night?",
        "How did storms change the work?",
        "Summarise our conversation in two sentences.",
    ];
    let mut messages = vec![Message {
        role: "system".into(),
        content: "You are a helpful assistant.".into(),
    }];
    let mut last = (0.0, 0);
    for q in questions {
        messages.push(Message {
            role: "user".into(),
            content: q.into(),
        });
        let prompt = model.chat_tokens(&messages)?;
        let len = prompt.len();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let submitted = Instant::now();
        model.generate(Request {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: 48,
            stop: Vec::new(),
            emit_tokens: false,
            events: tx,
        })?;
        let mut first = None;
        let mut reply = String::new();
        while let Some(event) = rx.recv().await {
            match event {
                Event::Delta(d) => {
                    first.get_or_insert_with(|| submitted.elapsed());
                    reply.push_str(&d);
                }
                Event::Done(done) => {
                    if let Some(e) = done.error {
                        anyhow::bail!("turn failed: {e}");
                    }
                    break;
                }
                Event::Token(_) => {}
            }
        }
        last = (first.unwrap_or_default().as_secs_f64() * 1000.0, len);
        messages.push(Message {
            role: "assistant".into(),
            content: reply,
        });
    }
    Ok(last)
}

async fn run_one(
    model: &ChatModel,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> anyhow::Result<(f64, f64, Duration, u32)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let submitted = Instant::now();
    model.generate(Request {
        prompt,
        // Exactly max_tokens, as the llama.cpp side decodes.
        sampling: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::default()
        },
        max_tokens,
        stop: Vec::new(),
        emit_tokens: true,
        events: tx,
    })?;
    let mut first = None;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token(_) if first.is_none() => first = Some(submitted.elapsed()),
            Event::Done(done) => {
                if let Some(e) = done.error {
                    anyhow::bail!("generation failed: {e}");
                }
                return Ok((
                    f64::from(done.timings.prefill_tokens_per_second),
                    f64::from(done.timings.decode_tokens_per_second),
                    first.unwrap_or_default(),
                    done.completion_tokens,
                ));
            }
            _ => {}
        }
    }
    anyhow::bail!("the engine stopped without a final message")
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let registry = llmesh_llm::registry::Registry::open(&o.models_dir)?;
    let manifest = registry
        .get(&o.model)
        .with_context(|| format!("model {} in {}", o.model, o.models_dir.display()))?;
    let path = registry.path_of(&manifest);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!(
        "model {} ({}), {threads} threads",
        o.model, manifest.quantization
    );
    let model = Arc::new(ChatModel::load(
        "bench",
        &path,
        SchedulerConfig {
            queue_capacity: 64,
            max_running: 16,
            prefill_chunk: 512,
            // Repeated runs of one prompt must each compute it.
            prefix_cache_entries: 0,
        },
    )?);
    let (text, ids) = prompt(&model, o.prompt_tokens)?;
    if let Some(out) = &o.ids_out {
        std::fs::write(out, serde_json::to_string(&ids)?)?;
        eprintln!("wrote the {}-token prompt to {}", ids.len(), out.display());
        return Ok(());
    }

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    run_one(&model, ids[..32].to_vec(), 8).await?; // warm-up
    if o.streams_only {
        for (streams, tps, p50, p99) in aggregate_streams(&model, &ids, &o.streams).await? {
            println!("{streams} streams: {tps:.1} tok/s, TTFT p50 {p50:.0} ms, p99 {p99:.0} ms");
        }
        return Ok(());
    }
    // 1 and 2. Single stream in process and over gRPC through a real server on 127.0.0.1,
    // one run of each in turn, so that both meet the same phases of a noisy machine.
    let grpc = if o.single_only {
        None
    } else {
        Some(GrpcBench::start(&o).await?)
    };
    let mut grpc_runs = Vec::new();
    for r in 0..o.runs {
        let (p, d, _, n) = run_one(&model, ids.clone(), o.decode_tokens).await?;
        eprintln!(
            "in-process run {}: prefill {p:.1} tok/s, decode {d:.1} tok/s ({n} tokens)",
            r + 1
        );
        prefill.push(p);
        decode.push(d);
        if let Some(g) = &grpc {
            let (tps, n) = g.decode(&o, &text).await?;
            eprintln!("gRPC run {}: decode {tps:.1} tok/s ({n} tokens)", r + 1);
            grpc_runs.push(tps);
        }
    }
    let (in_prefill, in_decode) = (median(prefill), median(decode.clone()));
    let Some(grpc) = grpc else {
        println!("prefill {in_prefill:.1} tok/s, decode {in_decode:.1} tok/s (in process, median)");
        return Ok(());
    };
    grpc.stop().await?;
    // The runs alternate, so each gRPC run is set against the in-process run beside it.
    let grpc_ratio = median(grpc_runs.iter().zip(&decode).map(|(g, d)| g / d).collect());
    let grpc_decode = median(grpc_runs);

    // 3. Aggregate decode and time to first token with 1, 4 and 16 streams.
    let aggregate = aggregate_streams(&model, &ids, &o.streams).await?;

    // 4. Time to first token on the 5th turn of a conversation, with and without reuse of
    // the KV cache of the turns before.
    let mut fifth = Vec::new();
    for entries in [0usize, 16] {
        let model = ChatModel::load(
            "bench-turns",
            &path,
            SchedulerConfig {
                prefix_cache_entries: entries,
                ..Default::default()
            },
        )?;
        fifth.push(fifth_turn_ttft(&model).await?);
        eprintln!(
            "5th turn, prefix reuse {}: TTFT {:.0} ms over a {}-token prompt",
            if entries > 0 { "on" } else { "off" },
            fifth.last().map_or(0.0, |f| f.0),
            fifth.last().map_or(0, |f| f.1)
        );
    }

    // 5. Peak memory of `llmesh serve`.
    let (rss_idle, rss_peak) = serve_rss(&o, &text).await?;

    let peer: Option<serde_json::Value> = match &o.peer {
        Some(p) => Some(serde_json::from_slice(&std::fs::read(p)?)?),
        None => None,
    };
    let peer_f = |k: &str| peer.as_ref().and_then(|v| v[k].as_f64());
    let ratio = |ours: f64, theirs: Option<f64>| {
        theirs
            .map(|t| format!("{:.2}×", ours / t))
            .unwrap_or_else(|| "–".into())
    };
    let show = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
    println!();
    println!(
        "engine benchmark: {} {}, {threads} threads, {}-token prompt, {} greedy tokens, median of {} runs",
        o.model,
        manifest.quantization,
        ids.len(),
        o.decode_tokens,
        o.runs
    );
    println!();
    println!(
        "| single stream | llmesh in-process | llmesh over gRPC | llama.cpp | llmesh / llama.cpp |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| prefill tok/s | {in_prefill:.1} | – | {} | {} |",
        show(peer_f("prefill_tps")),
        ratio(in_prefill, peer_f("prefill_tps"))
    );
    println!(
        "| decode tok/s | {in_decode:.1} | {grpc_decode:.1} ({grpc_ratio:.2}× in-process, median of run pairs) | {} | {} |",
        show(peer_f("decode_tps")),
        ratio(in_decode, peer_f("decode_tps"))
    );
    println!();
    println!(
        "| streams (65-token prompts, 64 tokens each) | llmesh aggregate tok/s | llama.cpp aggregate tok/s | llmesh / llama.cpp | llmesh TTFT p50 / p99 | llama.cpp TTFT p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|");
    for (s, tps, p50, p99) in aggregate {
        let theirs = peer.as_ref().map(|v| &v["parallel"][s.to_string()]);
        let their_tps = theirs.and_then(|v| v["tps"].as_f64());
        let their_ttft = theirs
            .and_then(|v| Some((v["ttft_p50_ms"].as_f64()?, v["ttft_p99_ms"].as_f64()?)))
            .map(|(a, b)| format!("{a:.0} / {b:.0} ms"))
            .unwrap_or_else(|| "–".into());
        println!(
            "| {s} | {tps:.1} | {} | {} | {p50:.0} / {p99:.0} ms | {their_ttft} |",
            show(their_tps),
            ratio(tps, their_tps)
        );
    }
    println!();
    println!(
        "time to first token on the 5th turn of a conversation ({}-token prompt): {:.0} ms computing every token, {:.0} ms reusing the earlier turns' KV cache ({:.1}× faster)",
        fifth[1].1,
        fifth[0].0,
        fifth[1].0,
        fifth[0].0 / fifth[1].0.max(0.001)
    );
    println!();
    println!(
        "peak RSS of `llmesh serve` with {} loaded: idle {} MB, after 16 streams {} MB",
        o.model,
        rss_idle / 1024,
        rss_peak / 1024
    );
    Ok(())
}

/// Aggregate decode tok/s and TTFT p50/p99 (ms) with 1, 4 and 16 concurrent streams of
/// 65-token prompts and 64 greedy tokens each.
async fn aggregate_streams(
    model: &Arc<ChatModel>,
    ids: &[u32],
    counts: &[usize],
) -> anyhow::Result<Vec<(usize, f64, f64, f64)>> {
    let short = &ids[..64.min(ids.len())];
    let mut aggregate = Vec::new();
    for &streams in counts {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..streams {
            let model = model.clone();
            let mut p = short.to_vec();
            p.push(p[s % p.len()]); // distinct prompts of slightly different lengths
            tasks.push(tokio::spawn(async move { run_one(&model, p, 64).await }));
        }
        let mut ttft = Vec::new();
        let mut tokens = 0u64;
        for t in tasks {
            let (_, _, first, n) = t.await??;
            ttft.push(first.as_secs_f64() * 1000.0);
            tokens += u64::from(n);
        }
        let secs = started.elapsed().as_secs_f64();
        aggregate.push((
            streams,
            tokens as f64 / secs,
            pct(&mut ttft, 0.5),
            pct(&mut ttft, 0.99),
        ));
        eprintln!(
            "{streams} streams: {:.1} tok/s aggregate ({tokens} tokens in {secs:.2} s)",
            tokens as f64 / secs
        );
    }

    Ok(aggregate)
}

async fn login(channel: &tonic::transport::Channel) -> anyhow::Result<String> {
    Ok(crate::sign_in(channel).await?.1)
}

/// Decode speed of one Generate stream as the client sees it.
async fn stream_decode(
    channel: &tonic::transport::Channel,
    token: &str,
    model: &str,
    text: &str,
    max_tokens: u32,
) -> anyhow::Result<(f64, u32)> {
    let mut llm = LlmServiceClient::new(channel.clone());
    let mut req = tonic::Request::new(llm_pb::GenerateRequest {
        model: model.into(),
        input: Some(llm_pb::generate_request::Input::Prompt(text.into())),
        sampling: Some(llm_pb::SamplingParams {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ignore_eos: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut stream = llm.generate(req).await?.into_inner();
    let mut first = None;
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(llm_pb::generate_response::Event::Delta(_)) if first.is_none() => {
                first = Some(Instant::now())
            }
            Some(llm_pb::generate_response::Event::Done(done)) => {
                let n = done.usage.map_or(0, |u| u.completion_tokens);
                let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
                return Ok((
                    if secs > 0.0 {
                        f64::from(n.saturating_sub(1)) / secs
                    } else {
                        0.0
                    },
                    n,
                ));
            }
            _ => {}
        }
    }
    anyhow::bail!("the stream ended without a final message")
}

/// A real server (auth and llm services, SQLite in a scratch directory) on 127.0.0.1 and
/// a logged-in client channel to it.
struct GrpcBench {
    app: llmesh::App,
    channel: tonic::transport::Channel,
    token: String,
    scratch: PathBuf,
}

impl GrpcBench {
    async fn start(o: &Options) -> anyhow::Result<GrpcBench> {
        let scratch =
            std::env::temp_dir().join(format!("llmesh-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&scratch)?;
        let mut config = llmesh::Config::default();
        config.server.bind = "127.0.0.1:0".into();
        config.database.url = format!("sqlite://{}/bench.db", scratch.display());
        config.llm.models_dir = o.models_dir.display().to_string();
        config.llm.pull_defaults = false;
        config.llm.load_at_start = Some(vec![o.model.clone()]);
        config.llm.prefill_chunk = 512;
        let (app, channel) = crate::start_local(config, &["auth", "llm"]).await?;
        let token = login(&channel).await?;
        stream_decode(&channel, &token, &o.model, "Hello", 4).await?; // warm-up
        Ok(GrpcBench {
            app,
            channel,
            token,
            scratch,
        })
    }

    /// One Generate stream's decode speed as the client sees it, and its token count.
    async fn decode(&self, o: &Options, text: &str) -> anyhow::Result<(f64, u32)> {
        stream_decode(
            &self.channel,
            &self.token,
            &o.model,
            text,
            o.decode_tokens as u32,
        )
        .await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.app.server.shutdown().await?;
        let _ = std::fs::remove_dir_all(&self.scratch);
        Ok(())
    }
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

/// Starts the real `llmesh serve` beside this binary and reads its memory.
async fn serve_rss(o: &Options, text: &str) -> anyhow::Result<(u64, u64)> {
    let exe = std::env::current_exe()?.with_file_name("llmesh");
    anyhow::ensure!(
        exe.exists(),
        "{} is missing: build it with `cargo build --release -p llmesh`",
        exe.display()
    );
    let scratch =
        std::env::temp_dir().join(format!("llmesh-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch)?;
    let mut child = std::process::Command::new(&exe)
        .args(["serve", "--bind", "127.0.0.1:0", "--services", "auth,llm"])
        .current_dir(&scratch)
        .env("LLMESH__LLM__MODELS_DIR", abs(&o.models_dir))
        .env("LLMESH__LLM__PULL_DEFAULTS", "false")
        .env("LLMESH__LLM__LOAD_AT_START", format!("[\"{}\"]", o.model))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    // Keep reading after the address: a closed pipe would end the server at its next line.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .context("llmesh serve printed no address")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id();
    let idle = status_kb(pid, "VmRSS:");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let token = login(&channel).await?;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (channel, token, model, text) = (
            channel.clone(),
            token.clone(),
            o.model.clone(),
            text.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            stream_decode(&channel, &token, &model, &text, 64).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let peak = status_kb(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok((idle, peak))
}

fn abs(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

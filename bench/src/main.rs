//! llmesh benchmarks. `llmesh-bench search` measures chat search latency over real gRPC
//! against a store holding many messages (100,000 by default), on SQLite or Postgres;
//! `llmesh-bench engine` measures inference (see `bench/engine.sh` for the full run with
//! llama.cpp beside it); `llmesh-bench mesh` measures what splitting the services into
//! processes behind nginx costs (see `bench/mesh.sh`); `llmesh-bench sandbox` measures
//! sandbox runs against native CPython and the wasmtime PyPI package (see
//! `bench/sandbox.sh`); `llmesh-bench knowledge` measures knowledge ingest and search
//! (see `bench/knowledge.sh`).

mod door;
mod engine;
mod import;
mod knowledge;
mod mesh;
mod sandbox;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use llmesh_kit::db::exec;
use llmesh_proto::auth::v1 as auth_pb;
use llmesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use llmesh_proto::chat::v1 as chat_pb;
use llmesh_proto::chat::v1::chat_archive_service_client::ChatArchiveServiceClient;
use llmesh_proto::common::v1::PageRequest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, Database, TransactionTrait};

#[derive(Parser)]
#[command(name = "llmesh-bench", about = "llmesh benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inference speed and memory: single stream, concurrent streams, `llmesh serve` RSS.
    Engine {
        /// Models directory holding the model.
        #[arg(long, default_value = "data/models")]
        models_dir: std::path::PathBuf,
        #[arg(long, default_value = "smollm2-135m-instruct")]
        model: String,
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        decode_tokens: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only write the prompt's token ids (JSON) for the llama.cpp side, then exit.
        #[arg(long)]
        write_prompt_ids: Option<std::path::PathBuf>,
        /// llama.cpp's figures (JSON from bench/peer/llamacpp_bench.py).
        #[arg(long)]
        peer: Option<std::path::PathBuf>,
        /// Measure only single-stream prefill and decode in process (for profiling).
        #[arg(long)]
        single_only: bool,
        /// Measure only the concurrent-stream rows (`--streams`) in process (for profiling).
        #[arg(long)]
        streams_only: bool,
        /// The concurrent stream counts to measure.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16])]
        streams: Vec<usize>,
    },
    /// The OpenAI door's overhead: gRPC Generate against /v1/chat/completions, alternating.
    Door {
        /// The llmesh binary to run (a release build for figures).
        #[arg(long, default_value = "target/release/llmesh")]
        binary: std::path::PathBuf,
        /// Models directory holding the default chat model.
        #[arg(long)]
        models_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Generations per way per round.
        #[arg(long, default_value_t = 3)]
        per_round: usize,
        /// Tokens per generation.
        #[arg(long, default_value_t = 128)]
        tokens: u32,
    },
    /// The split's overhead: a chat reply's TTFT and decode speed and GetMe throughput and
    /// p99, one process against chat | llm | auth+billing behind nginx, on Postgres.
    Mesh {
        /// The llmesh binary to run (a release build for figures).
        #[arg(long, default_value = "target/release/llmesh")]
        binary: std::path::PathBuf,
        /// Models directory holding the default chat model.
        #[arg(long)]
        models_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Tokens per chat reply.
        #[arg(long, default_value_t = 128)]
        tokens: u32,
        /// GetMe calls per round, and the clients sharing them.
        #[arg(long, default_value_t = 4000)]
        requests: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// Sandbox runs: warm Python and a WASI hello module through the Run RPC (p50, p99),
    /// native CPython and the wasmtime PyPI package beside them, throughput, and RSS.
    Sandbox {
        /// The llmesh binary to run (a release build for figures).
        #[arg(long, default_value = "target/release/llmesh")]
        binary: std::path::PathBuf,
        /// Where the Python runtime is (or is fetched to).
        #[arg(long)]
        runtimes_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        runs: usize,
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Pause before each timed Python run, so it finds a started interpreter.
        #[arg(long, default_value_t = 250)]
        pace_ms: u64,
        /// Native CPython (default: /usr/bin/python3, else what `python3` runs).
        #[arg(long)]
        python: Option<std::path::PathBuf>,
        /// A Python with the `wasmtime` package, for the peer figure.
        #[arg(long)]
        peer_python: Option<std::path::PathBuf>,
        /// Seconds per throughput measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, value_delimiter = ',', default_values_t = [2, 8])]
        clients: Vec<usize>,
        /// sandbox.python_pool for the server.
        #[arg(long, default_value_t = 2)]
        pool: usize,
    },
    /// Knowledge bases: ingest speed beside sentence-transformers, and hybrid search
    /// latency at many chunks (see `bench/knowledge.sh`).
    Knowledge {
        /// Run on the Postgres with pgvector (`scripts/pgvector start`; the URL from
        /// LLMESH_TEST_PGVECTOR_URL) instead of SQLite.
        #[arg(long)]
        pgvector: bool,
        /// Chunks in the collection searched.
        #[arg(long, default_value_t = 100_000)]
        chunks: usize,
        /// Searches to time.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// A Python with sentence-transformers, for the ingest peer.
        #[arg(long)]
        peer_python: Option<std::path::PathBuf>,
        /// Only the search half.
        #[arg(long)]
        search_only: bool,
    },
    /// A large ChatGPT export uploaded and imported over gRPC: time, conversations per
    /// second and peak resident memory growth.
    Import {
        #[arg(long, default_value_t = 2_000)]
        conversations: usize,
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// A Postgres server URL (a fresh database is created on it); SQLite otherwise.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Chat search latency (p50/p99) over gRPC at a given number of messages.
    Search {
        /// Messages to store before measuring.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Search requests to time.
        #[arg(long, default_value_t = 400)]
        queries: usize,
        /// A Postgres server URL (a fresh database is created on it); SQLite otherwise.
        #[arg(long)]
        postgres: Option<String>,
        /// chat.search_candidates for the run (1000000 ranks every match, as before the
        /// bound).
        #[arg(long)]
        candidates: Option<u64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Search {
            messages,
            queries,
            postgres,
            candidates,
        } => search(messages, queries, postgres, candidates).await,
        Command::Import {
            conversations,
            messages,
            postgres,
        } => {
            import::run(import::Options {
                conversations,
                messages,
                postgres,
            })
            .await
        }
        Command::Knowledge {
            pgvector,
            chunks,
            queries,
            peer_python,
            search_only,
        } => {
            knowledge::run(knowledge::Options {
                backend: if pgvector {
                    llmesh_tests::Backend::Pgvector
                } else {
                    llmesh_tests::Backend::Sqlite
                },
                chunks,
                queries,
                peer_python,
                search_only,
            })
            .await
        }
        Command::Door {
            binary,
            models_dir,
            rounds,
            per_round,
            tokens,
        } => {
            door::run(door::Options {
                binary,
                models_dir,
                rounds,
                tokens,
                per_round,
            })
            .await
        }
        Command::Mesh {
            binary,
            models_dir,
            rounds,
            tokens,
            requests,
            clients,
        } => {
            mesh::run(mesh::Options {
                binary,
                models_dir,
                rounds,
                tokens,
                requests,
                clients,
            })
            .await
        }
        Command::Sandbox {
            binary,
            runtimes_dir,
            runs,
            warmup,
            pace_ms,
            python,
            peer_python,
            seconds,
            clients,
            pool,
        } => {
            sandbox::run(sandbox::Options {
                binary,
                runtimes_dir,
                runs,
                warmup,
                pace_ms,
                python,
                peer_python,
                seconds,
                clients,
                pool,
            })
            .await
        }
        Command::Engine {
            models_dir,
            model,
            prompt_tokens,
            decode_tokens,
            runs,
            write_prompt_ids,
            peer,
            single_only,
            streams_only,
            streams,
        } => {
            engine::run(engine::Options {
                models_dir,
                model,
                prompt_tokens,
                decode_tokens,
                runs,
                ids_out: write_prompt_ids,
                peer,
                single_only,
                streams_only,
                streams,
            })
            .await
        }
    }
}

/// A vocabulary of pronounceable words; a few are common, most are rare (Zipf-like draws).
fn vocabulary(n: usize, rng: &mut StdRng) -> Vec<String> {
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ren", "ta", "vo", "shi", "ne", "pa", "dor", "qui", "za", "lu", "mer",
        "fo", "tis",
    ];
    (0..n)
        .map(|_| {
            (0..rng.random_range(2..4))
                .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                .collect()
        })
        .collect()
}

fn zipf(rng: &mut StdRng, n: usize) -> usize {
    // Inverse-CDF sampling of 1/k weights, approximately.
    let u: f64 = rng.random_range(0.0..1.0);
    ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
}

async fn search(
    messages: usize,
    queries: usize,
    postgres: Option<String>,
    candidates: Option<u64>,
) -> anyhow::Result<()> {
    let bench = Bench::start(postgres, |config| {
        if let Some(n) = candidates {
            config.chat.search_candidates = n;
        }
    })
    .await?;
    let candidates = bench.config.chat.search_candidates;
    let (channel, backend) = (bench.channel.clone(), bench.backend);
    let user_id = bench.user_id.clone();

    // Fill the store directly (the same tables and index the service writes), in batches.
    let mut rng = StdRng::seed_from_u64(42);
    let words = vocabulary(20_000, &mut rng);
    let per_conversation = 100;
    let started = Instant::now();
    let db = &bench.app.db;
    let mut done = 0;
    while done < messages {
        let txn = db.begin().await?;
        let conversation = uuid::Uuid::now_v7().to_string();
        let now = chrono_now_micros();
        exec(
            &txn,
            "INSERT INTO conversations (id, user_id, title, model, sampling, system_prompt, assistant_id, folder_id, tags, pinned, archived, active_leaf_id, titled, created_at, updated_at) \
             VALUES (?, ?, ?, 'm', '{}', '', NULL, NULL, '[]', ?, ?, NULL, ?, ?, ?)",
            vec![conversation.clone().into(), user_id.clone().into(), format!("conversation {done}").into(), false.into(), false.into(), true.into(), now.into(), now.into()],
        )
        .await?;
        let mut parent: Option<String> = None;
        for i in 0..per_conversation.min(messages - done) {
            let id = uuid::Uuid::now_v7().to_string();
            let len = rng.random_range(15..45);
            let text: Vec<&str> = (0..len)
                .map(|_| words[zipf(&mut rng, words.len())].as_str())
                .collect();
            let text = text.join(" ");
            exec(
                &txn,
                "INSERT INTO messages (id, conversation_id, user_id, parent_id, role, content, model, state, prompt_tokens, completion_tokens, cost_micros, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, 'm', 'complete', 0, 0, 0, ?)",
                vec![id.clone().into(), conversation.clone().into(), user_id.clone().into(), parent.clone().into(), (if i % 2 == 0 { "user" } else { "assistant" }).into(), text.clone().into(), now.into()],
            )
            .await?;
            exec(
                &txn,
                "INSERT INTO chat_search (doc_id, user_id, conversation_id, message_id, body) VALUES (?, ?, ?, ?, ?)",
                vec![id.clone().into(), user_id.clone().into(), conversation.clone().into(), id.clone().into(), text.into()],
            )
            .await?;
            parent = Some(id);
        }
        txn.commit().await?;
        done += per_conversation.min(messages - done);
        if done % 10_000 == 0 || done == messages {
            eprintln!(
                "stored {done}/{messages} messages ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    if backend == "postgres" {
        db.execute_unprepared("ANALYZE").await?;
    }

    // Time searches in four classes, interleaved: one of the ten most frequent words
    // (each is in thousands of messages), a middling word, a rare word, and two words.
    const CLASSES: [&str; 4] = ["common word", "middling word", "rare word", "two words"];
    let mut archive = ChatArchiveServiceClient::new(channel);
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); CLASSES.len()];
    let mut hits_per_class = vec![0usize; CLASSES.len()];
    for q in 0..queries + 20 {
        let class = q % CLASSES.len();
        let query = match class {
            0 => words[rng.random_range(0..10)].clone(),
            1 => words[rng.random_range(10..500)].clone(),
            2 => words[rng.random_range(2_000..words.len())].clone(),
            _ => format!(
                "{} {}",
                words[zipf(&mut rng, 500)],
                words[zipf(&mut rng, 500)]
            ),
        };
        let req = llmesh_tests::bearer(
            &bench.token,
            chat_pb::SearchRequest {
                query,
                page: Some(PageRequest {
                    page_size: 20,
                    page_token: String::new(),
                }),
            },
        );
        let t = Instant::now();
        let hits = archive.search(req).await?.into_inner().hits.len();
        let elapsed = t.elapsed();
        if q >= 20 {
            // The first 20 warm caches and are not counted.
            latencies[class].push(elapsed);
            hits_per_class[class] += hits;
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |l: &[Duration], p: f64| l[((l.len() as f64 - 1.0) * p).round() as usize];
    let mut all: Vec<Duration> = latencies.iter().flatten().copied().collect();
    all.sort();
    println!();
    println!(
        "chat search over gRPC: {backend}, {messages} messages, {queries} queries, page size 20, \
         search_candidates {candidates}"
    );
    println!("| queries | p50 | p90 | p99 | max | mean hits |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, l: &[Duration], hits: usize| {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} |",
            ms(pct(l, 0.5)),
            ms(pct(l, 0.9)),
            ms(pct(l, 0.99)),
            ms(*l.last().unwrap_or(&Duration::ZERO)),
            hits as f64 / l.len().max(1) as f64
        )
    };
    for (c, name) in CLASSES.iter().enumerate() {
        latencies[c].sort();
        row(name, &latencies[c], hits_per_class[c]);
    }
    row("all", &all, hits_per_class.iter().sum());
    println!(
        "target p99 < 50 ms: {}",
        if ms(pct(&all, 0.99)) < 50.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    bench.stop().await
}

/// llmesh's chat services in this process on a fresh database (SQLite in a scratch
/// directory, or a new database on a Postgres server), with one signed-in user.
struct Bench {
    app: llmesh::App,
    config: llmesh::Config,
    channel: tonic::transport::Channel,
    token: String,
    user_id: String,
    backend: &'static str,
    scratch: std::path::PathBuf,
    created_db: Option<(String, String)>,
}

impl Bench {
    async fn start(
        postgres: Option<String>,
        tweak: impl FnOnce(&mut llmesh::Config),
    ) -> anyhow::Result<Bench> {
        let scratch =
            std::env::temp_dir().join(format!("llmesh-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&scratch)?;
        let mut created_db = None;
        let (url, backend) = match &postgres {
            Some(admin) => {
                let name = format!("llmesh_bench_{}", uuid::Uuid::new_v4().simple());
                created_db = Some((admin.clone(), name.clone()));
                let conn = Database::connect(admin.as_str())
                    .await
                    .context("connecting to Postgres")?;
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await?;
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
                (format!("{base}/{name}"), "postgres")
            }
            None => (format!("sqlite://{}/bench.db", scratch.display()), "sqlite"),
        };
        let mut config = llmesh::Config::default();
        config.server.bind = "127.0.0.1:0".into();
        config.database.url = url;
        config.llm.models_dir = scratch.join("models").display().to_string();
        config.llm.pull_defaults = false;
        config.llm.load_at_start = Some(Vec::new());
        tweak(&mut config);
        let (app, channel) =
            start_local(config.clone(), &["auth", "llm", "billing", "chat"]).await?;

        let (user_id, token) = sign_in(&channel).await?;
        Ok(Bench {
            app,
            config,
            channel,
            token,
            user_id,
            backend,
            scratch,
            created_db,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.app.server.shutdown().await?;
        drop(self.app.db);
        if let Some((admin, name)) = self.created_db {
            let conn = Database::connect(admin.as_str()).await?;
            conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
        Ok(())
    }
}

fn chrono_now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Registers the bench's user (unless it exists) and signs in: its id and access token.
async fn sign_in(channel: &tonic::transport::Channel) -> anyhow::Result<(String, String)> {
    let mut auth = AuthServiceClient::new(channel.clone());
    let password = "benchmark password";
    let _ = auth
        .register(auth_pb::RegisterRequest {
            email: "bench@example.com".into(),
            password: password.into(),
            display_name: String::new(),
        })
        .await;
    let signed_in = auth
        .login(auth_pb::LoginRequest {
            email: "bench@example.com".into(),
            password: password.into(),
        })
        .await?
        .into_inner();
    Ok((
        signed_in.user.context("user")?.id,
        signed_in.tokens.context("tokens")?.access_token,
    ))
}

/// Starts `services` of llmesh in this process with `config` (bound to a local port) and
/// connects a channel to it.
async fn start_local(
    config: llmesh::Config,
    services: &[&str],
) -> anyhow::Result<(llmesh::App, tonic::transport::Channel)> {
    let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    let app = llmesh::start(
        config,
        &services,
        std::sync::Arc::new(llmesh_kit::SystemClock),
        &|_, _| {},
        std::future::pending(),
    )
    .await?;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", app.server.local_addr))?
            .connect()
            .await?;
    Ok((app, channel))
}

//! The cost of the split: the same workload against one `llmesh serve` process and
//! against the product split into three processes (chat, llm, auth + billing) behind the
//! nginx edge, both on Postgres, measured in alternating rounds on the same clock.
//!
//! - a chat reply (SendMessage, exactly `tokens` tokens): time to the first delta and
//!   decode speed (tokens after the first over the time they took);
//! - unary GetMe from `clients` concurrent clients: requests per second and p99.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use llmesh_proto::auth::v1 as auth_pb;
use llmesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use llmesh_proto::chat::v1 as chat_pb;
use llmesh_proto::chat::v1::chat_service_client::ChatServiceClient;
use llmesh_proto::llm::v1::SamplingParams;
use llmesh_tests::mesh::Mesh;
use llmesh_tests::{Backend, TestDb};
use tonic::transport::Channel;

const MODEL: &str = "smollm2-135m-instruct";
const PASSWORD: &str = "benchmark password";

pub struct Options {
    pub binary: PathBuf,
    pub models_dir: PathBuf,
    pub rounds: usize,
    pub tokens: u32,
    pub requests: usize,
    pub clients: usize,
}

/// One shape under test: its database, processes and a signed-in user.
struct Shape {
    name: &'static str,
    _db: TestDb,
    mesh: Mesh,
    channel: Channel,
    token: String,
}

/// What one round measured for one shape.
#[derive(Default, Clone)]
struct Round {
    ttft_ms: Vec<f64>,
    decode_tps: Vec<f64>,
    getme_rps: f64,
    getme_p99_ms: f64,
}

async fn shape(
    name: &'static str,
    o: &Options,
    layout: &[(&'static str, &'static str)],
    edge: bool,
) -> anyhow::Result<Shape> {
    let db = TestDb::create(Backend::Postgres)
        .await
        .context("the benchmark needs Postgres (LLMESH_TEST_POSTGRES_URL)")?;
    let mut config = llmesh::Config::default();
    config.llm.models_dir = o.models_dir.display().to_string();
    config.llm.pull_defaults = false;
    config.llm.load_at_start = Some(vec![MODEL.into()]);
    config.chat.auto_title = false;
    config.server.web_dir = "none".into();
    config.log.filter = "warn".into();
    let mesh = Mesh::start_with(&db, &config, &o.binary, layout, edge)
        .await
        .context("nginx is needed for the split shape")?;
    let channel = Channel::from_shared(mesh.grpc_url.clone())?
        .connect()
        .await?;
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
    Ok(Shape {
        name,
        _db: db,
        mesh,
        channel,
        token,
    })
}

fn bearer<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

/// One chat reply of exactly `tokens` tokens in a fresh conversation: (TTFT ms, decode tok/s).
async fn reply(s: &Shape, tokens: u32) -> anyhow::Result<(f64, f64)> {
    let mut chat = ChatServiceClient::new(s.channel.clone());
    let conv = chat
        .create_conversation(bearer(
            &s.token,
            chat_pb::CreateConversationRequest {
                model: MODEL.into(),
                ..Default::default()
            },
        )?)
        .await?
        .into_inner()
        .conversation
        .context("conversation")?;
    let started = Instant::now();
    let mut stream = chat
        .send_message(bearer(
            &s.token,
            chat_pb::SendMessageRequest {
                conversation_id: conv.id,
                content: "Write a long story about a lighthouse keeper.".into(),
                sampling: Some(SamplingParams {
                    temperature: Some(0.0),
                    max_tokens: Some(tokens),
                    // SmolLM2's end tokens, so every reply has exactly `tokens` tokens.
                    logit_bias: [(0, -100.0), (2, -100.0)].into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )?)
        .await?
        .into_inner();
    let mut first = None;
    let mut completion = 0;
    while let Some(m) = stream.message().await? {
        match m.event.and_then(|e| e.event) {
            Some(chat_pb::reply_event::Event::Delta(_)) if first.is_none() => {
                first = Some(Instant::now());
            }
            Some(chat_pb::reply_event::Event::AssistantMessage(a)) => {
                completion = a.usage.map_or(0, |u| u.completion_tokens);
            }
            _ => {}
        }
    }
    let done = Instant::now();
    let first = first.context("no delta")?;
    anyhow::ensure!(completion == tokens, "the reply had {completion} tokens");
    let ttft = (first - started).as_secs_f64() * 1000.0;
    let tps = f64::from(tokens - 1) / (done - first).as_secs_f64();
    Ok((ttft, tps))
}

/// `requests` GetMe calls from `clients` concurrent clients: (req/s, p99 ms).
async fn getme(s: &Shape, requests: usize, clients: usize) -> anyhow::Result<(f64, f64)> {
    let per_client = requests / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let channel = s.channel.clone();
        let token = s.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut auth = AuthServiceClient::new(channel);
            let mut lat = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                auth.get_me(bearer(&token, auth_pb::GetMeRequest {})?)
                    .await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    Ok((lat.len() as f64 / elapsed, p99))
}

async fn round(s: &Shape, o: &Options) -> anyhow::Result<Round> {
    let mut r = Round::default();
    for _ in 0..3 {
        let (ttft, tps) = reply(s, o.tokens).await?;
        r.ttft_ms.push(ttft);
        r.decode_tps.push(tps);
    }
    let (rps, p99) = getme(s, o.requests, o.clients).await?;
    r.getme_rps = rps;
    r.getme_p99_ms = p99;
    Ok(r)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return f64::NAN;
    }
    xs[xs.len() / 2]
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    eprintln!(
        "starting the single process and the split mesh (chat | llm | auth+billing behind nginx)"
    );
    let single = shape(
        "single process",
        &o,
        &[("all", "auth,billing,llm,chat")],
        false,
    )
    .await?;
    let split = shape(
        "split behind nginx",
        &o,
        &[("auth", "auth,billing"), ("llm", "llm"), ("chat", "chat")],
        true,
    )
    .await?;
    // Warm-up: one reply and a short GetMe burst each, not counted.
    for s in [&single, &split] {
        reply(s, 16).await?;
        getme(s, o.clients * 20, o.clients).await?;
    }
    let mut results: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
    for i in 0..o.rounds {
        // Alternate which shape goes first, so slow phases of the machine hit both.
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for &k in &order {
            let s = if k == 0 { &single } else { &split };
            let r = round(s, &o).await?;
            eprintln!(
                "  round {}: {:<20} TTFT {:>7.1} ms  decode {:>6.1} tok/s  GetMe {:>7.0} req/s p99 {:>6.2} ms",
                i + 1,
                s.name,
                median(r.ttft_ms.clone()),
                median(r.decode_tps.clone()),
                r.getme_rps,
                r.getme_p99_ms
            );
            results[k].push(r);
        }
    }
    let summary = |rounds: &[Round]| {
        (
            median(rounds.iter().flat_map(|r| r.ttft_ms.clone()).collect()),
            median(rounds.iter().flat_map(|r| r.decode_tps.clone()).collect()),
            median(rounds.iter().map(|r| r.getme_rps).collect()),
            median(rounds.iter().map(|r| r.getme_p99_ms).collect()),
        )
    };
    let (s_ttft, s_tps, s_rps, s_p99) = summary(&results[0]);
    let (m_ttft, m_tps, m_rps, m_p99) = summary(&results[1]);
    println!();
    println!(
        "split overhead: {} rounds, {}-token replies ×3 per round, GetMe {} requests from {} clients per round (medians)",
        o.rounds, o.tokens, o.requests, o.clients
    );
    println!("| measure | single process | split (3 processes + nginx) | split vs single |");
    println!("|---|---|---|---|");
    println!(
        "| chat reply: time to first token | {s_ttft:.1} ms | {m_ttft:.1} ms | {:+.1} ms |",
        m_ttft - s_ttft
    );
    println!(
        "| chat reply: decode speed | {s_tps:.1} tok/s | {m_tps:.1} tok/s | {:.3}× |",
        m_tps / s_tps
    );
    println!(
        "| GetMe throughput | {s_rps:.0} req/s | {m_rps:.0} req/s | {:.2}× |",
        m_rps / s_rps
    );
    println!(
        "| GetMe p99 | {s_p99:.2} ms | {m_p99:.2} ms | {:+.2} ms |",
        m_p99 - s_p99
    );
    drop(split.mesh);
    drop(single.mesh);
    Ok(())
}

//! What the OpenAI-compatible door costs: the same generation through llm's gRPC Generate
//! and through `POST /v1/chat/completions` (streamed, `ignore_eos`, so both produce
//! exactly `tokens` tokens), against one `llmesh serve`, in alternating rounds on the same
//! clock with the same warm-up: time to the first token and decode speed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use llmesh_proto::auth::v1 as auth_pb;
use llmesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use llmesh_proto::llm::v1 as llm_pb;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;
use llmesh_tests::mesh::Mesh;
use llmesh_tests::{Backend, TestDb};
use tonic::transport::Channel;

const MODEL: &str = "smollm2-135m-instruct";
const PROMPT: &str = "Write a long story about a lighthouse keeper.";

pub struct Options {
    pub binary: PathBuf,
    pub models_dir: PathBuf,
    pub rounds: usize,
    pub tokens: u32,
    pub per_round: usize,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return f64::NAN;
    }
    xs[xs.len() / 2]
}

/// One gRPC Generate: (TTFT ms, decode tok/s).
async fn grpc(channel: &Channel, token: &str, tokens: u32) -> anyhow::Result<(f64, f64)> {
    let mut llm = LlmServiceClient::new(channel.clone());
    let mut req = tonic::Request::new(llm_pb::GenerateRequest {
        model: MODEL.into(),
        input: Some(llm_pb::generate_request::Input::Chat(llm_pb::ChatInput {
            messages: vec![llm_pb::ChatMessage {
                role: llm_pb::ChatRole::User as i32,
                content: PROMPT.into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
        sampling: Some(llm_pb::SamplingParams {
            temperature: Some(0.0),
            max_tokens: Some(tokens),
            ignore_eos: Some(true),
            ..Default::default()
        }),
        generation_id: String::new(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let started = Instant::now();
    let mut stream = llm.generate(req).await?.into_inner();
    let mut first = None;
    let mut completion = 0;
    while let Some(m) = stream.message().await? {
        match m.event {
            Some(llm_pb::generate_response::Event::Delta(_)) if first.is_none() => {
                first = Some(Instant::now());
            }
            Some(llm_pb::generate_response::Event::Done(d)) => {
                completion = d.usage.map_or(0, |u| u.completion_tokens);
            }
            _ => {}
        }
    }
    let done = Instant::now();
    let first = first.context("no delta")?;
    anyhow::ensure!(completion == tokens, "gRPC produced {completion} tokens");
    Ok((
        (first - started).as_secs_f64() * 1000.0,
        f64::from(tokens - 1) / (done - first).as_secs_f64(),
    ))
}

/// One streamed /v1/chat/completions: (TTFT ms, decode tok/s).
async fn door(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    tokens: u32,
) -> anyhow::Result<(f64, f64)> {
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": tokens,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let started = Instant::now();
    let mut response = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    let mut first = None;
    let mut buffer = String::new();
    let mut completion = 0;
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data)?;
            if first.is_none()
                && v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            {
                first = Some(Instant::now());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                completion = n as u32;
            }
        }
    }
    let done = Instant::now();
    let first = first.context("no delta")?;
    anyhow::ensure!(
        completion == tokens,
        "the door produced {completion} tokens"
    );
    Ok((
        (first - started).as_secs_f64() * 1000.0,
        f64::from(tokens - 1) / (done - first).as_secs_f64(),
    ))
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let db = TestDb::create(Backend::Sqlite)
        .await
        .context("a scratch SQLite database")?;
    let mut config = llmesh::Config::default();
    config.llm.models_dir = o.models_dir.display().to_string();
    config.llm.pull_defaults = false;
    config.llm.load_at_start = Some(vec![MODEL.into()]);
    config.server.web_dir = "none".into();
    config.log.filter = "warn".into();
    let mesh = Mesh::start_with(
        &db,
        &config,
        &o.binary,
        &[("all", "auth,billing,llm,chat")],
        false,
    )
    .await
    .context("starting llmesh serve")?;
    let url = mesh.grpc_url.clone();
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let mut auth = AuthServiceClient::new(channel.clone());
    auth.register(auth_pb::RegisterRequest {
        email: "bench@example.com".into(),
        password: "benchmark password".into(),
        display_name: String::new(),
    })
    .await?;
    let token = auth
        .login(auth_pb::LoginRequest {
            email: "bench@example.com".into(),
            password: "benchmark password".into(),
        })
        .await?
        .into_inner()
        .tokens
        .context("tokens")?
        .access_token;
    let http = reqwest::Client::new();
    // Warm-up, not counted.
    grpc(&channel, &token, 16).await?;
    door(&http, &url, &token, 16).await?;
    let (mut g, mut d) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for i in 0..o.rounds {
        for k in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            for _ in 0..o.per_round {
                let (ttft, tps) = if k == 0 {
                    grpc(&channel, &token, o.tokens).await?
                } else {
                    door(&http, &url, &token, o.tokens).await?
                };
                let into = if k == 0 { &mut g } else { &mut d };
                into.0.push(ttft);
                into.1.push(tps);
            }
        }
        eprintln!(
            "  round {}: gRPC TTFT {:.1} ms decode {:.1} tok/s | door TTFT {:.1} ms decode {:.1} tok/s",
            i + 1,
            median(g.0.clone()),
            median(g.1.clone()),
            median(d.0.clone()),
            median(d.1.clone())
        );
    }
    let (g_ttft, g_tps, d_ttft, d_tps) = (median(g.0), median(g.1), median(d.0), median(d.1));
    println!();
    println!(
        "OpenAI door overhead: {} rounds × {} generations of {} tokens each way, alternating (medians)",
        o.rounds, o.per_round, o.tokens
    );
    println!("| measure | gRPC Generate | /v1/chat/completions | door vs gRPC |");
    println!("|---|---|---|---|");
    println!(
        "| time to first token | {g_ttft:.1} ms | {d_ttft:.1} ms | {:+.2} ms |",
        d_ttft - g_ttft
    );
    println!(
        "| decode speed | {g_tps:.1} tok/s | {d_tps:.1} tok/s | {:.3}× |",
        d_tps / g_tps
    );
    drop(mesh);
    Ok(())
}

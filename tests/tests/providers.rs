//! Hosted providers against a real upstream: llama.cpp's own OpenAI-compatible server
//! (`llama-cpp-python[server]`, in the peer virtualenv .ci/run builds and caches) serving
//! the same SmolLM2 file on loopback. Registered as a provider, its model streams through
//! Generate with the provider's usage and llmesh's billing; a stream the client drops is
//! billed for what it produced; a wrong key is FAILED_PRECONDITION naming the provider; a
//! provider that is down is UNAVAILABLE, moves to its fallback, and never blocks local
//! models; the stored key never comes back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use llmesh_proto::billing::v1 as bpb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_proto::llm::v1 as lpb;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;
use llmesh_tests::{Backend, TestServer, bearer, price_and_credit};
use prost::Message;
use tokio_stream::StreamExt;

const LOCAL: &str = "smollm2-135m-instruct";
const HOSTED: &str = "llamacpp/smollm2";
const KEY: &str = "peer-secret-key-123";

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peer_python() -> PathBuf {
    std::env::var_os("LLMESH_PEER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/llmesh-peer-venv")
        })
        .join("bin/python")
}

/// Starts llama.cpp's server on the GGUF file and waits until it answers.
async fn start_peer(gguf: &std::path::Path) -> Option<(Peer, u16)> {
    let python = peer_python();
    let has_server = Command::new(&python)
        .args(["-c", "import llama_cpp.server"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_server {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs llama-cpp-python[server] in the peer virtualenv ({})",
            python.display()
        );
        eprintln!(
            "skipping: no llama-cpp-python[server] at {}",
            python.display()
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new(&python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(gguf)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--api_key", KEY, "--n_ctx", "2048", "--n_threads", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start llama.cpp's server");
    let peer = Peer(child);
    for _ in 0..240 {
        let up = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if up {
            return Some((peer, port));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("llama.cpp's server did not start on port {port}");
}

fn provider(id: &str, base_url: String, models: Vec<lpb::ProviderModel>) -> lpb::Provider {
    lpb::Provider {
        id: id.into(),
        kind: lpb::ProviderKind::OpenaiCompatible as i32,
        base_url,
        timeout_seconds: 30,
        models,
        enabled: true,
        ..Default::default()
    }
}

fn chat(model: &str, text: &str, max_tokens: u32) -> lpb::GenerateRequest {
    lpb::GenerateRequest {
        model: model.into(),
        input: Some(lpb::generate_request::Input::Chat(lpb::ChatInput {
            messages: vec![lpb::ChatMessage {
                role: lpb::ChatRole::User as i32,
                content: text.into(),
            }],
        })),
        sampling: Some(lpb::SamplingParams {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ..Default::default()
        }),
        generation_id: String::new(),
    }
}

/// Runs a generation to its end: the text and the final message.
async fn run(
    llm: &mut LlmServiceClient<tonic::transport::Channel>,
    token: &str,
    req: lpb::GenerateRequest,
) -> Result<(String, lpb::GenerateDone), tonic::Status> {
    let mut stream = llm.generate(bearer(token, req)).await?.into_inner();
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event?.event {
            Some(lpb::generate_response::Event::Delta(d)) => text.push_str(&d),
            Some(lpb::generate_response::Event::Done(done)) => return Ok((text, done)),
            None => {}
        }
    }
    Err(tonic::Status::internal(
        "the stream ended without its final message",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_server_as_an_openai_compatible_provider() {
    let models = llmesh_tests::models::models_dir();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(models.join(LOCAL).join("manifest.json")).expect("the SmolLM2 manifest"),
    )
    .expect("manifest JSON");
    let gguf = models
        .join(LOCAL)
        .join(manifest["file"].as_str().expect("file"));
    let Some((_peer, port)) = start_peer(&gguf).await else {
        return;
    };
    let Some(s) = TestServer::start_with(Backend::Sqlite, |c| {
        c.llm.models_dir = models.display().to_string();
    })
    .await
    else {
        return;
    };
    let (admin, tokens) = s.signup("admin@example.com").await;
    let token = tokens.access_token;
    let mut llm = LlmServiceClient::new(s.channel.clone());

    // Register it; the key is sealed and never returned.
    let created = llm
        .create_provider(bearer(
            &token,
            lpb::CreateProviderRequest {
                provider: Some(provider(
                    "llamacpp",
                    format!("http://127.0.0.1:{port}/v1"),
                    vec![lpb::ProviderModel {
                        name: "smollm2".into(),
                        context_length: 2048,
                        ..Default::default()
                    }],
                )),
                api_key: KEY.into(),
                headers: Default::default(),
            },
        ))
        .await
        .expect("create provider")
        .into_inner();
    assert!(created.provider.as_ref().is_some_and(|p| p.has_api_key));
    let listed = llm
        .list_providers(bearer(&token, lpb::ListProvidersRequest {}))
        .await
        .expect("list providers")
        .into_inner();
    let bytes = listed.encode_to_vec();
    assert!(
        !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
        "ListProviders must never carry the key"
    );
    let tested = llm
        .test_provider(bearer(
            &token,
            lpb::TestProviderRequest {
                id: "llamacpp".into(),
            },
        ))
        .await
        .expect("test provider")
        .into_inner();
    assert!(
        tested.ok,
        "the peer answers its model list: {}",
        tested.error
    );
    assert!(!tested.models.is_empty());

    // It is listed beside the local models, with where it runs.
    let all = llm
        .list_models(bearer(&token, lpb::ListModelsRequest {}))
        .await
        .expect("list models")
        .into_inner();
    let hosted = all
        .models
        .iter()
        .find(|m| m.id == HOSTED)
        .expect("the hosted model is listed");
    assert_eq!(hosted.provider, "llamacpp");
    assert_eq!(hosted.context_length, 2048);

    // Streamed, with the provider's usage, billed at llmesh's price.
    price_and_credit(&s.channel, &token, HOSTED, &admin.id, 10_000_000).await;
    let (text, done) = run(&mut llm, &token, chat(HOSTED, "Say hello in one word.", 12))
        .await
        .expect("a hosted generation");
    assert!(!text.is_empty(), "the peer produced text");
    let usage = done.usage.expect("usage");
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert!(
        usage.completion_tokens <= 12,
        "max_tokens reached the provider: {usage:?}"
    );
    assert!(
        done.cost.is_some_and(|c| c.micros > 0),
        "the generation was charged"
    );

    // A client that leaves mid-stream pays for what was produced.
    let mut stream = llm
        .generate(bearer(
            &token,
            chat(HOSTED, "Count from one to two hundred.", 400),
        ))
        .await
        .expect("start")
        .into_inner();
    let mut pieces = 0;
    while let Some(Ok(event)) = stream.next().await {
        if matches!(event.event, Some(lpb::generate_response::Event::Delta(_))) {
            pieces += 1;
            if pieces == 3 {
                break;
            }
        }
    }
    drop(stream);
    let mut billing = BillingServiceClient::new(s.channel.clone());
    let mut row = None;
    for _ in 0..100 {
        let rows = billing
            .list_usage(bearer(
                &token,
                bpb::ListUsageRequest {
                    group_by: bpb::UsageGrouping::Model as i32,
                    ..Default::default()
                },
            ))
            .await
            .expect("usage")
            .into_inner();
        row = rows.rows.into_iter().find(|r| r.key == HOSTED);
        if row.as_ref().is_some_and(|r| r.requests >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = row.expect("hosted usage");
    assert_eq!(row.requests, 2);
    let completion = row.tokens.expect("tokens").completion_tokens;
    assert!(
        completion < usage.completion_tokens + 100,
        "the dropped stream was billed for what it produced, not its 400 tokens: {completion}"
    );

    // A wrong key: FAILED_PRECONDITION naming the provider.
    llm.update_provider(bearer(
        &token,
        lpb::UpdateProviderRequest {
            id: "llamacpp".into(),
            api_key: Some("wrong".into()),
            ..Default::default()
        },
    ))
    .await
    .expect("update key");
    let refused = run(&mut llm, &token, chat(HOSTED, "Hi", 4))
        .await
        .expect_err("a wrong key");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("llamacpp"),
        "{}",
        refused.message()
    );
    llm.update_provider(bearer(
        &token,
        lpb::UpdateProviderRequest {
            id: "llamacpp".into(),
            api_key: Some(KEY.into()),
            ..Default::default()
        },
    ))
    .await
    .expect("restore key");

    // A provider that is down: UNAVAILABLE, its fallback takes over, local models go on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a closed port");
    llm.create_provider(bearer(
        &token,
        lpb::CreateProviderRequest {
            provider: Some(provider(
                "down",
                format!("http://127.0.0.1:{dead}/v1"),
                vec![
                    lpb::ProviderModel {
                        name: "gone".into(),
                        context_length: 4096,
                        ..Default::default()
                    },
                    lpb::ProviderModel {
                        name: "gone-with-fallback".into(),
                        context_length: 4096,
                        fallback: HOSTED.into(),
                        ..Default::default()
                    },
                ],
            )),
            api_key: String::new(),
            headers: Default::default(),
        },
    ))
    .await
    .expect("create the dead provider");
    price_and_credit(&s.channel, &token, "down/gone", &admin.id, 1).await;
    let down = run(&mut llm, &token, chat("down/gone", "Hi", 4))
        .await
        .expect_err("down");
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    let (text, _) = run(
        &mut llm,
        &token,
        chat("down/gone-with-fallback", "Say hi.", 6),
    )
    .await
    .expect("the fallback answers");
    assert!(!text.is_empty());
    price_and_credit(&s.channel, &token, LOCAL, &admin.id, 1).await;
    let (text, _) = run(&mut llm, &token, chat(LOCAL, "Say hi.", 6))
        .await
        .expect("local still works");
    assert!(!text.is_empty());
    let all = llm
        .list_models(bearer(&token, lpb::ListModelsRequest {}))
        .await
        .expect("list models with a dead provider")
        .into_inner();
    assert!(all.models.iter().any(|m| m.id == LOCAL));
}

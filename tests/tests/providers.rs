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
use llmesh_proto::chat::v1 as cpb;
use llmesh_proto::chat::v1::chat_service_client::ChatServiceClient;
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
                ..Default::default()
            }],
            ..Default::default()
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
            Some(lpb::generate_response::Event::ToolCall(_)) | None => {}
        }
    }
    Err(tonic::Status::internal(
        "the stream ended without its final message",
    ))
}

/// Runs a generation to its end: the tool calls it made (pieces joined by index) and the
/// final message.
async fn run_tools(
    llm: &mut LlmServiceClient<tonic::transport::Channel>,
    token: &str,
    req: lpb::GenerateRequest,
) -> Result<(Vec<lpb::ToolCall>, lpb::GenerateDone), tonic::Status> {
    let mut stream = llm.generate(bearer(token, req)).await?.into_inner();
    let mut calls: Vec<lpb::ToolCall> = Vec::new();
    while let Some(event) = stream.next().await {
        match event?.event {
            Some(lpb::generate_response::Event::ToolCall(piece)) => {
                let i = piece.index as usize;
                if calls.len() <= i {
                    calls.resize_with(i + 1, Default::default);
                }
                calls[i].id.push_str(&piece.id);
                calls[i].name.push_str(&piece.name);
                calls[i].arguments_json.push_str(&piece.arguments);
            }
            Some(lpb::generate_response::Event::Done(done)) => return Ok((calls, done)),
            _ => {}
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
    assert!(row.requests >= 2, "{row:?}");
    let completion = row.tokens.expect("tokens").completion_tokens;
    assert!(
        completion < usage.completion_tokens + 100,
        "the dropped stream was billed for what it produced, not its 400 tokens: {completion}"
    );

    // Chat works with the hosted model with no special case: a reply streams and is kept.
    let mut chats = ChatServiceClient::new(s.channel.clone());
    let conv = chats
        .create_conversation(bearer(
            &token,
            cpb::CreateConversationRequest {
                model: HOSTED.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("a conversation on the hosted model")
        .into_inner()
        .conversation
        .expect("conversation");
    let mut replies = chats
        .send_message(bearer(
            &token,
            cpb::SendMessageRequest {
                conversation_id: conv.id,
                content: "Name a colour.".into(),
                sampling: Some(lpb::SamplingParams {
                    temperature: Some(0.0),
                    max_tokens: Some(8),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("send")
        .into_inner();
    let mut kept = None;
    while let Some(event) = replies.next().await {
        if let Some(cpb::reply_event::Event::AssistantMessage(m)) =
            event.expect("reply event").event.and_then(|e| e.event)
        {
            kept = Some(m);
        }
    }
    let kept = kept.expect("the assistant's message");
    assert!(!kept.content.is_empty(), "the hosted reply was kept");
    assert_eq!(kept.model, HOSTED);

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

/// A one-endpoint HTTP server that answers every request with `status` and `body` (as
/// server-sent events when 200) and keeps the requests it saw.
async fn replay(
    status: u16,
    body: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then as many body bytes as Content-Length says.
                loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(String::from_utf8_lossy(&buf).to_string());
                let kind = if status == 200 {
                    "text/event-stream"
                } else {
                    "application/json"
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nretry-after: 9\r\nConnection: close\r\n\r\n"
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, seen)
}

/// Anthropic's Messages stream as its documentation describes it: message_start with the
/// input tokens, ping, a text block in deltas, message_delta with the stop reason and the
/// output tokens, message_stop.
const ANTHROPIC_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there!\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

/// The same stream broken by an error event after the first delta.
const ANTHROPIC_BROKEN: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n\
event: error\n\
data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

/// Gemini's streamGenerateContent?alt=sse: candidates with text parts, the finish reason
/// and usageMetadata on the last chunk.
const GEMINI_STREAM: &str = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hello\"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":8,\"totalTokenCount\":9},\"modelVersion\":\"gemini-x\"}\r\n\r\n\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\" from Gemini\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":4,\"totalTokenCount\":12}}\r\n\r\n";

/// OpenAI's /v1/embeddings answer, its rows out of order.
const EMBEDDINGS: &str = "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":1,\"embedding\":[0.0,2.0]},{\"object\":\"embedding\",\"index\":0,\"embedding\":[3.0,4.0]}],\"model\":\"embed-small\",\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}}";

const RATE_LIMITED: &str = "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Number of request tokens has exceeded your per-minute rate limit\"}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_and_gemini_adapters_read_the_providers_streams() {
    let Some(s) = TestServer::start(Backend::Sqlite).await else {
        return;
    };
    let (admin, tokens) = s.signup("admin@example.com").await;
    let token = tokens.access_token;
    let mut llm = LlmServiceClient::new(s.channel.clone());
    let register = |id: &str, kind: lpb::ProviderKind, url: String| lpb::CreateProviderRequest {
        provider: Some(lpb::Provider {
            kind: kind as i32,
            ..provider(
                id,
                url,
                vec![lpb::ProviderModel {
                    name: "m".into(),
                    context_length: 100_000,
                    ..Default::default()
                }],
            )
        }),
        api_key: "sk-test-key".into(),
        headers: Default::default(),
    };
    let (url, _) = replay(200, EMBEDDINGS).await;
    llm.create_provider(bearer(
        &token,
        lpb::CreateProviderRequest {
            provider: Some(provider(
                "vectors",
                format!("{url}/v1"),
                vec![lpb::ProviderModel {
                    name: "embed-small".into(),
                    context_length: 8191,
                    kind: lpb::ModelKind::Embedding as i32,
                    ..Default::default()
                }],
            )),
            api_key: "sk-test-key".into(),
            headers: Default::default(),
        },
    ))
    .await
    .expect("an embedding provider");
    price_and_credit(
        &s.channel,
        &token,
        "vectors/embed-small",
        &admin.id,
        1_000_000,
    )
    .await;
    let embedded = llm
        .embed(bearer(
            &token,
            lpb::EmbedRequest {
                model: "vectors/embed-small".into(),
                texts: vec!["first".into(), "second".into()],
            },
        ))
        .await
        .expect("hosted embeddings")
        .into_inner();
    assert_eq!(embedded.prompt_tokens, 5, "the provider's count");
    assert_eq!(embedded.dimension, 2);
    let first = &embedded.embeddings[0].values;
    assert!(
        (first[0] - 0.6).abs() < 1e-6 && (first[1] - 0.8).abs() < 1e-6,
        "normalised, in order: {first:?}"
    );
    let usage = BillingServiceClient::new(s.channel.clone())
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
    let row = usage
        .rows
        .iter()
        .find(|r| r.key == "vectors/embed-small")
        .expect("embeddings are billed");
    assert_eq!(row.tokens.expect("tokens").prompt_tokens, 5);
    assert!(row.spend.as_ref().is_some_and(|m| m.micros > 0));

    let cases = [
        (
            "claude",
            lpb::ProviderKind::Anthropic,
            200,
            ANTHROPIC_STREAM,
        ),
        (
            "claude-broken",
            lpb::ProviderKind::Anthropic,
            200,
            ANTHROPIC_BROKEN,
        ),
        (
            "claude-limited",
            lpb::ProviderKind::Anthropic,
            429,
            RATE_LIMITED,
        ),
        ("gemini", lpb::ProviderKind::Gemini, 200, GEMINI_STREAM),
    ];
    let mut logs = std::collections::HashMap::new();
    for (id, kind, status, body) in cases {
        let (url, seen) = replay(status, body).await;
        llm.create_provider(bearer(&token, register(id, kind, url)))
            .await
            .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
        price_and_credit(&s.channel, &token, &format!("{id}/m"), &admin.id, 1_000_000).await;
        logs.insert(id, seen);
    }

    let (text, done) = run(&mut llm, &token, chat("claude/m", "Hi", 15))
        .await
        .expect("anthropic");
    assert_eq!(text, "Hello there!");
    let usage = done.usage.expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (25, 15));
    assert_eq!(done.finish_reason, lpb::FinishReason::Length as i32);
    let request = logs["claude"].lock().expect("log")[0].to_lowercase();
    assert!(request.starts_with("post /v1/messages"), "{request}");
    assert!(
        request.contains("x-api-key: sk-test-key")
            && request.contains("anthropic-version: 2023-06-01")
    );
    assert!(
        request.contains("\"max_tokens\":15"),
        "max_tokens is always sent: {request}"
    );

    // An error after the first delta ends the stream with FINISH_REASON_ERROR, billed for
    // what came.
    let (text, done) = run(&mut llm, &token, chat("claude-broken/m", "Hi", 50))
        .await
        .expect("a broken stream still ends with its final message");
    assert_eq!(text, "Hel");
    assert_eq!(done.finish_reason, lpb::FinishReason::Error as i32);
    assert!(done.error.contains("Overloaded"), "{}", done.error);
    assert_eq!(done.usage.expect("usage").prompt_tokens, 25);

    let limited = run(&mut llm, &token, chat("claude-limited/m", "Hi", 5))
        .await
        .expect_err("429");
    assert_eq!(
        limited.code(),
        tonic::Code::ResourceExhausted,
        "{limited:?}"
    );

    let (text, done) = run(&mut llm, &token, chat("gemini/m", "Hi", 10))
        .await
        .expect("gemini");
    assert_eq!(text, "Hello from Gemini");
    let usage = done.usage.expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (8, 4));
    let request = logs["gemini"].lock().expect("log")[0].to_lowercase();
    assert!(
        request.starts_with("post /v1beta/models/m:streamgeneratecontent?alt=sse"),
        "{request}"
    );
    assert!(request.contains("x-goog-api-key: sk-test-key"));
    assert!(request.contains("\"maxoutputtokens\":10"), "{request}");
}

/// OpenAI's chat stream with a tool call, its arguments in three pieces, as the API
/// reference's streaming example shows them, then the usage chunk.
const OPENAI_TOOL_STREAM: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_w1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ci\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\": \\\"Os\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"lo\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":61,\"completion_tokens\":17,\"total_tokens\":78}}\n\n",
    "data: [DONE]\n\n",
);

/// Anthropic's stream when Claude calls a tool: a text block, then a tool_use block whose
/// input comes as input_json_delta pieces, and stop_reason tool_use.
const ANTHROPIC_TOOL_STREAM: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":380,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me check.\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Oslo\\\"}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

/// Gemini's stream with a functionCall part (whole, with no id) and finishReason STOP.
const GEMINI_TOOL_STREAM: &str = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Oslo\"}}}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":40,\"candidatesTokenCount\":6,\"totalTokenCount\":46}}\r\n\r\n";

fn weather_chat(model: &str, messages: Vec<lpb::ChatMessage>) -> lpb::GenerateRequest {
    lpb::GenerateRequest {
        model: model.into(),
        input: Some(lpb::generate_request::Input::Chat(lpb::ChatInput {
            messages,
            tools: vec![lpb::Tool {
                name: "get_weather".into(),
                description: "The weather in a city now.".into(),
                parameters_json:
                    r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
                        .into(),
            }],
            tool_choice: "auto".into(),
        })),
        sampling: Some(lpb::SamplingParams {
            max_tokens: Some(100),
            ..Default::default()
        }),
        generation_id: String::new(),
    }
}

fn user(text: &str) -> lpb::ChatMessage {
    lpb::ChatMessage {
        role: lpb::ChatRole::User as i32,
        content: text.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_pass_through_every_adapter_and_the_door() {
    let models = llmesh_tests::models::models_dir();
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
    let mut logs = std::collections::HashMap::new();
    for (id, kind, body) in [
        (
            "oai",
            lpb::ProviderKind::OpenaiCompatible,
            OPENAI_TOOL_STREAM,
        ),
        (
            "claude",
            lpb::ProviderKind::Anthropic,
            ANTHROPIC_TOOL_STREAM,
        ),
        ("gemini", lpb::ProviderKind::Gemini, GEMINI_TOOL_STREAM),
    ] {
        let (url, seen) = replay(200, body).await;
        let base = if id == "oai" {
            format!("{url}/v1")
        } else {
            url
        };
        llm.create_provider(bearer(
            &token,
            lpb::CreateProviderRequest {
                provider: Some(lpb::Provider {
                    kind: kind as i32,
                    ..provider(
                        id,
                        base,
                        vec![lpb::ProviderModel {
                            name: "m".into(),
                            context_length: 100_000,
                            ..Default::default()
                        }],
                    )
                }),
                api_key: "sk-test-key".into(),
                headers: Default::default(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
        price_and_credit(&s.channel, &token, &format!("{id}/m"), &admin.id, 1_000_000).await;
        logs.insert(id, seen);
    }
    let body_of = |id: &str, n: usize| -> serde_json::Value {
        let request = logs[id].lock().expect("log")[n].clone();
        let (_, body) = request.split_once("\r\n\r\n").expect("a body");
        serde_json::from_str(body).expect("a JSON body")
    };

    for id in ["oai", "claude", "gemini"] {
        let model = format!("{id}/m");
        let (calls, done) = run_tools(
            &mut llm,
            &token,
            weather_chat(&model, vec![user("Weather in Oslo?")]),
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: {e:?}"));
        assert_eq!(calls.len(), 1, "{id}: {calls:?}");
        assert_eq!(calls[0].name, "get_weather", "{id}");
        assert!(!calls[0].id.is_empty(), "{id}: every call has an id");
        let args: serde_json::Value =
            serde_json::from_str(&calls[0].arguments_json).expect("arguments are JSON");
        assert_eq!(args, serde_json::json!({"city": "Oslo"}), "{id}");
        assert_eq!(
            done.finish_reason,
            lpb::FinishReason::ToolCalls as i32,
            "{id}"
        );

        // The call and its result go back; each provider gets them in its own shape.
        let answered = weather_chat(
            &model,
            vec![
                user("Weather in Oslo?"),
                lpb::ChatMessage {
                    role: lpb::ChatRole::Assistant as i32,
                    tool_calls: calls.clone(),
                    ..Default::default()
                },
                lpb::ChatMessage {
                    role: lpb::ChatRole::Tool as i32,
                    content: r#"{"celsius": 12}"#.into(),
                    tool_call_id: calls[0].id.clone(),
                    ..Default::default()
                },
            ],
        );
        run_tools(&mut llm, &token, answered)
            .await
            .unwrap_or_else(|e| panic!("{id} with a tool result: {e:?}"));
    }

    let first = body_of("oai", 0);
    assert_eq!(first["tools"][0]["type"], "function");
    assert_eq!(first["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        first["tools"][0]["function"]["parameters"]["required"][0],
        "city"
    );
    assert_eq!(first["tool_choice"], "auto");
    let second = body_of("oai", 1);
    let messages = second["messages"].as_array().expect("messages");
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_w1");
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["arguments"],
        r#"{"city": "Oslo"}"#
    );
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["tool_call_id"], "call_w1");

    let first = body_of("claude", 0);
    assert_eq!(first["tools"][0]["name"], "get_weather");
    assert_eq!(first["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(first["tool_choice"]["type"], "auto");
    let second = body_of("claude", 1);
    let blocks = &second["messages"][1]["content"];
    assert_eq!(blocks[0]["type"], "tool_use");
    assert_eq!(blocks[0]["id"], "toolu_01");
    assert_eq!(blocks[0]["input"]["city"], "Oslo", "input as an object");
    let result = &second["messages"][2];
    assert_eq!(result["role"], "user");
    assert_eq!(result["content"][0]["type"], "tool_result");
    assert_eq!(result["content"][0]["tool_use_id"], "toolu_01");

    let first = body_of("gemini", 0);
    assert_eq!(
        first["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    assert_eq!(first["toolConfig"]["functionCallingConfig"]["mode"], "AUTO");
    let second = body_of("gemini", 1);
    assert_eq!(second["contents"][1]["role"], "model");
    assert_eq!(
        second["contents"][1]["parts"][0]["functionCall"]["args"]["city"],
        "Oslo"
    );
    let response = &second["contents"][2]["parts"][0]["functionResponse"];
    assert_eq!(
        response["name"], "get_weather",
        "Gemini answers a call by its name"
    );
    assert_eq!(response["response"]["celsius"], 12);

    // Refusals: a local model offered tools, a result answering no call, a bad schema.
    let local = run_tools(&mut llm, &token, weather_chat(LOCAL, vec![user("hi")]))
        .await
        .expect_err("a local model takes no tools");
    assert_eq!(local.code(), tonic::Code::InvalidArgument, "{local:?}");
    assert!(
        local.message().contains("chat.tools"),
        "{}",
        local.message()
    );
    let mut orphan = weather_chat("oai/m", vec![user("hi")]);
    if let Some(lpb::generate_request::Input::Chat(c)) = &mut orphan.input {
        c.messages.push(lpb::ChatMessage {
            role: lpb::ChatRole::Tool as i32,
            content: "x".into(),
            tool_call_id: "nobody".into(),
            ..Default::default()
        });
    }
    let err = run_tools(&mut llm, &token, orphan)
        .await
        .expect_err("orphan");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("chat.messages[1].tool_call_id"),
        "{}",
        err.message()
    );
    let mut bad = weather_chat("oai/m", vec![user("hi")]);
    if let Some(lpb::generate_request::Input::Chat(c)) = &mut bad.input {
        c.tools[0].parameters_json = "[not a schema".into();
        c.tools.push(c.tools[0].clone());
    }
    let err = run_tools(&mut llm, &token, bad)
        .await
        .expect_err("bad schema");
    assert!(
        err.message().contains("chat.tools[0].parameters_json"),
        "{}",
        err.message()
    );

    // Tool calls are billed by the provider's usage.
    let usage = BillingServiceClient::new(s.channel.clone())
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
    let row = usage
        .rows
        .iter()
        .find(|r| r.key == "claude/m")
        .expect("billed");
    assert_eq!(row.tokens.expect("tokens").completion_tokens, 2 * 89);

    // The official openai client through the door, on the OpenAI-compatible provider.
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let has_openai = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openai {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs the openai package in .venv (tests/requirements.txt)"
        );
        eprintln!("skipping the door's part: .venv has no openai package");
        return;
    }
    let key = s.api_key(&token, "tools").await.secret;
    let out = Command::new(&python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openai_tools_check.py"))
        .env("LLMESH_URL", &s.url)
        .env("LLMESH_KEY", &key)
        .env("LLMESH_MODEL", "oai/m")
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the openai client with tools: {text}");
    let named = body_of("oai", 3);
    assert_eq!(
        named["tool_choice"]["function"]["name"], "get_weather",
        "a named tool choice reaches the provider: {named}"
    );
}

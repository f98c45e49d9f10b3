//! The llm service over real gRPC with the real models: streaming, stops, limits,
//! cancellation and deadlines, the queue, embeddings against reference vectors, the
//! registry (pull, load, unload, memory budget, delete).

use std::sync::atomic::Ordering;
use std::time::Duration;

use llmesh_proto::llm::v1 as pb;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;
use llmesh_tests::{Backend, TestServer, bearer};
use tonic::Code;
use tonic::transport::Channel;

const CHAT: &str = "smollm2-135m-instruct";
const EMBED: &str = "all-minilm-l6-v2";

/// A server on the shared test models; `tweak` adjusts its llm config.
async fn server(tweak: impl FnOnce(&mut llmesh::Config)) -> (TestServer, String) {
    server_on(Backend::Sqlite, tweak).await.expect("sqlite")
}

async fn server_on(
    backend: Backend,
    tweak: impl FnOnce(&mut llmesh::Config),
) -> Option<(TestServer, String)> {
    let models = llmesh_tests::models::models_dir();
    let s = TestServer::start_with(backend, |c| {
        c.llm.models_dir = models.display().to_string();
        tweak(c);
    })
    .await?;
    let (_, tokens) = s.signup("admin@example.com").await;
    Some((s, tokens.access_token))
}

fn client(s: &TestServer) -> LlmServiceClient<Channel> {
    LlmServiceClient::new(s.channel.clone())
}

fn prompt_request(prompt: &str, sampling: pb::SamplingParams) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: CHAT.into(),
        input: Some(pb::generate_request::Input::Prompt(prompt.into())),
        sampling: Some(sampling),
        ..Default::default()
    }
}

fn greedy(max_tokens: u32) -> pb::SamplingParams {
    pb::SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

/// Reads a generation to its end: the concatenated text and the final message.
async fn read_all(
    mut stream: tonic::Streaming<pb::GenerateResponse>,
) -> (String, Vec<String>, pb::GenerateDone) {
    let mut text = String::new();
    let mut deltas = Vec::new();
    while let Some(msg) = stream.message().await.expect("stream") {
        match msg.event.expect("event") {
            pb::generate_response::Event::Delta(d) => {
                text.push_str(&d);
                deltas.push(d);
            }
            pb::generate_response::Event::Done(done) => return (text, deltas, done),
            pb::generate_response::Event::ToolCall(c) => panic!("a local model called {c:?}"),
        }
    }
    panic!("stream ended without a final message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_streams_text_then_usage_and_timings() {
    let (s, token) = server(|_| {}).await;
    let mut llm = client(&s);
    let stream = llm
        .generate(bearer(
            &token,
            prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(12)),
        ))
        .await
        .expect("generate")
        .into_inner();
    let (text, deltas, done) = read_all(stream).await;
    // Digits are single tokens: 12 tokens reach " 9, 10, 11, ".
    assert_eq!(text, " 9, 10, 11, ");
    assert!(deltas.len() > 1, "the reply arrives in pieces");
    assert_eq!(done.finish_reason, pb::FinishReason::Length as i32);
    let usage = done.usage.expect("usage");
    assert_eq!(usage.completion_tokens, 12);
    assert_eq!(usage.prompt_tokens, 23);
    let timings = done.timings.expect("timings");
    assert!(timings.decode_tokens_per_second > 0.0);
    assert!(timings.prefill_tokens_per_second > 0.0);
    assert_eq!(done.cost.expect("cost").micros, 0, "no billing yet: free");

    // Chat input goes through the model's template; a stop sequence ends it early.
    let chat = pb::GenerateRequest {
        model: CHAT.into(),
        input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
            messages: vec![pb::ChatMessage {
                role: pb::ChatRole::User as i32,
                content: "Count to 20.".into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
        sampling: Some(pb::SamplingParams {
            stop: vec!["5".into()],
            ..greedy(64)
        }),
        ..Default::default()
    };
    let (text, _, done) = read_all(
        llm.generate(bearer(&token, chat))
            .await
            .expect("generate")
            .into_inner(),
    )
    .await;
    assert!(!text.contains('5'), "{text:?}");
    assert_eq!(done.finish_reason, pb::FinishReason::Stop as i32);

    // A short reply ends on its own; with ignore_eos it runs to max_tokens.
    let say_hi = |sampling| pb::GenerateRequest {
        model: CHAT.into(),
        input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
            messages: vec![pb::ChatMessage {
                role: pb::ChatRole::User as i32,
                content: "Say hi.".into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
        sampling: Some(sampling),
        ..Default::default()
    };
    for (ignore_eos, finish) in [
        (None, pb::FinishReason::Stop),
        (Some(true), pb::FinishReason::Length),
    ] {
        let (_, _, done) = read_all(
            llm.generate(bearer(
                &token,
                say_hi(pb::SamplingParams {
                    ignore_eos,
                    ..greedy(120)
                }),
            ))
            .await
            .expect("generate")
            .into_inner(),
        )
        .await;
        assert_eq!(
            done.finish_reason, finish as i32,
            "ignore_eos {ignore_eos:?}"
        );
        let completion = done.usage.expect("usage").completion_tokens;
        assert_eq!(
            completion == 120,
            ignore_eos.is_some(),
            "{completion} tokens"
        );
    }

    let counted = llm
        .count_tokens(bearer(
            &token,
            pb::CountTokensRequest {
                model: CHAT.into(),
                input: Some(pb::count_tokens_request::Input::Text(
                    "1, 2, 3, 4, 5, 6, 7, 8,".into(),
                )),
            },
        ))
        .await
        .expect("count")
        .into_inner();
    assert_eq!(counted.tokens, 23);
    assert_eq!(counted.context_length, 8192);
}

/// SmolLM2's token for a space and the first two bytes of a four-byte emoji (the engine
/// tests check its bytes).
const SPACE_AND_EMOJI_LEAD: u32 = 15107;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_character_cut_by_max_tokens_is_not_sent() {
    let (s, token) = server(|_| {}).await;
    let mut llm = client(&s);
    let forced = |max_tokens| {
        prompt_request(
            "Trees:",
            pb::SamplingParams {
                logit_bias: [(SPACE_AND_EMOJI_LEAD, 100.0)].into(),
                ..greedy(max_tokens)
            },
        )
    };
    let stream = llm
        .generate(bearer(&token, forced(1)))
        .await
        .expect("generate")
        .into_inner();
    let (text, deltas, done) = read_all(stream).await;
    assert_eq!(text, " ", "{deltas:?}");
    assert!(
        deltas
            .iter()
            .all(|d| !d.is_empty() && !d.contains('\u{FFFD}'))
    );
    assert_eq!(done.finish_reason, pb::FinishReason::Length as i32);
    assert_eq!(done.usage.expect("usage").completion_tokens, 1);

    // Leads that can never complete are replaced; the one cut at the end is dropped.
    let stream = llm
        .generate(bearer(&token, forced(4)))
        .await
        .expect("generate")
        .into_inner();
    let (text, _, done) = read_all(stream).await;
    assert_eq!(text, " \u{FFFD} \u{FFFD} \u{FFFD} ");
    assert_eq!(done.usage.expect("usage").completion_tokens, 4);

    // The report's own case: default temperature, seeds whose 24th token began an emoji.
    for seed in [2, 22] {
        let request = pb::GenerateRequest {
            model: CHAT.into(),
            input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
                messages: vec![pb::ChatMessage {
                    role: pb::ChatRole::User as i32,
                    content: "Say hello.".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            sampling: Some(pb::SamplingParams {
                seed: Some(seed),
                max_tokens: Some(24),
                ..Default::default()
            }),
            ..Default::default()
        };
        let stream = llm
            .generate(bearer(&token, request))
            .await
            .expect("generate")
            .into_inner();
        let (text, _, _) = read_all(stream).await;
        assert!(!text.contains('\u{FFFD}'), "seed {seed}: {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_validated() {
    let (s, token) = server(|_| {}).await;
    let mut llm = client(&s);
    let cases: Vec<(pb::GenerateRequest, Code, &str)> = vec![
        (
            prompt_request(
                "hi",
                pb::SamplingParams {
                    temperature: Some(3.0),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "temperature",
        ),
        (
            prompt_request(
                "hi",
                pb::SamplingParams {
                    top_p: Some(0.0),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "top_p",
        ),
        (
            prompt_request(
                "hi",
                pb::SamplingParams {
                    temperature: Some(f32::NAN),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "temperature",
        ),
        (
            prompt_request(
                "hi",
                pb::SamplingParams {
                    stop: vec!["a".into(); 5],
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "stop",
        ),
        (
            prompt_request(
                "hi",
                pb::SamplingParams {
                    max_tokens: Some(9000),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "8192",
        ),
        (
            prompt_request(
                "hi",
                pb::SamplingParams {
                    logit_bias: [(7, 101.0)].into(),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "sampling.logit_bias[7]",
        ),
        (
            prompt_request(
                "hi",
                pb::SamplingParams {
                    logit_bias: [(7, f32::INFINITY)].into(),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "sampling.logit_bias[7]",
        ),
        (
            prompt_request(
                "hi",
                pb::SamplingParams {
                    logit_bias: (0..1025).map(|i| (i, 1.0)).collect(),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "1024",
        ),
        (
            prompt_request(
                "hi",
                pb::SamplingParams {
                    logit_bias: [(49_152, 1.0)].into(),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "vocabulary of 49152",
        ),
        (
            pb::GenerateRequest {
                model: CHAT.into(),
                input: None,
                sampling: None,
                ..Default::default()
            },
            Code::InvalidArgument,
            "input",
        ),
        (
            pb::GenerateRequest {
                model: "no-such-model".into(),
                input: Some(pb::generate_request::Input::Prompt("hi".into())),
                sampling: None,
                ..Default::default()
            },
            Code::NotFound,
            "no-such-model",
        ),
        (
            pb::GenerateRequest {
                model: EMBED.into(),
                input: Some(pb::generate_request::Input::Prompt("hi".into())),
                sampling: None,
                ..Default::default()
            },
            Code::InvalidArgument,
            "embedding",
        ),
    ];
    for (request, code, needle) in cases {
        let status = llm
            .generate(bearer(&token, request))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(needle),
            "{:?} lacks {needle}",
            status.message()
        );
    }
    // The context check names both numbers.
    let status = llm
        .generate(bearer(
            &token,
            prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(8180)),
        ))
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("23")
            && status.message().contains("8180")
            && status.message().contains("8192"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloaded_models_are_refused_without_auto_load() {
    let (s, token) = server(|c| c.llm.auto_load = false).await;
    let mut llm = client(&s);
    let status = llm
        .generate(bearer(&token, prompt_request("hi", greedy(2))))
        .await
        .expect_err("not loaded");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("LoadModel"));
    llm.load_model(bearer(&token, pb::LoadModelRequest { id: CHAT.into() }))
        .await
        .expect("load");
    let (_, _, done) = read_all(
        llm.generate(bearer(&token, prompt_request("hi", greedy(2))))
            .await
            .expect("generate")
            .into_inner(),
    )
    .await;
    assert_eq!(done.usage.expect("usage").completion_tokens, 2);
}

/// Waits (bounded) until the model's scheduler has counted a cancellation.
async fn wait_cancelled(s: &TestServer) -> std::sync::Arc<llmesh_engine::scheduler::Counters> {
    let counters = s
        .app()
        .llm
        .as_ref()
        .expect("llm runs here")
        .counters(CHAT)
        .expect("loaded");
    for _ in 0..1000 {
        if counters.cancelled.load(Ordering::SeqCst) >= 1
            && counters.running.load(Ordering::SeqCst) == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    counters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_stops_its_sequence() {
    let (s, token) = server(|_| {}).await;
    let mut llm = client(&s);
    let mut stream = llm
        .generate(bearer(
            &token,
            prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(4000)),
        ))
        .await
        .expect("generate")
        .into_inner();
    let first = stream.message().await.expect("message").expect("delta");
    assert!(matches!(
        first.event,
        Some(pb::generate_response::Event::Delta(_))
    ));
    drop(stream);
    let counters = wait_cancelled(&s).await;
    assert_eq!(counters.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(counters.running.load(Ordering::SeqCst), 0);
    assert_eq!(counters.kv_cache_bytes.load(Ordering::SeqCst), 0);
    assert!(counters.generated_tokens.load(Ordering::SeqCst) < 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_stops_the_sequence() {
    let (s, token) = server(|_| {}).await;
    let mut llm = client(&s);
    // Warm up so the deadline falls during decoding, not loading.
    read_all(
        llm.generate(bearer(&token, prompt_request("hi", greedy(1))))
            .await
            .expect("warm")
            .into_inner(),
    )
    .await;
    let mut request = bearer(
        &token,
        prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(4000)),
    );
    request.set_timeout(Duration::from_millis(700));
    let result = async {
        let mut stream = llm.generate(request).await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    }
    .await;
    let status = result.expect_err("the deadline ends it");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let counters = wait_cancelled(&s).await;
    assert_eq!(counters.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(counters.kv_cache_bytes.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted_with_a_retry_hint() {
    let (s, token) = server(|c| {
        c.llm.queue_capacity = 1;
        c.llm.max_running = 1;
    })
    .await;
    let mut llm = client(&s);
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..5 {
        match llm
            .generate(bearer(
                &token,
                prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(2000)),
            ))
            .await
        {
            Ok(stream) => open.push(stream),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("the queue fills up");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.metadata().get("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_the_reference_vectors() {
    let (s, token) = server(|_| {}).await;
    let mut llm = client(&s);
    let path = format!(
        "{}/fixtures/minilm-embeddings.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let texts: Vec<String> = cases
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["text"].as_str().expect("text").to_owned())
        .collect();
    let reply = llm
        .embed(bearer(
            &token,
            pb::EmbedRequest {
                model: EMBED.into(),
                texts: texts.clone(),
            },
        ))
        .await
        .expect("embed")
        .into_inner();
    assert_eq!(reply.dimension, 384);
    assert_eq!(reply.embeddings.len(), texts.len());
    for (case, got) in cases
        .as_array()
        .expect("array")
        .iter()
        .zip(&reply.embeddings)
    {
        let want: Vec<f32> = serde_json::from_value(case["embedding"].clone()).expect("vector");
        let norm: f32 = got.values.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
        let cosine: f32 = got.values.iter().zip(&want).map(|(a, b)| a * b).sum();
        let max_diff = got
            .values
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            cosine > 0.9999 && max_diff < 1e-3,
            "{}: cosine {cosine}, max diff {max_diff}",
            case["text"]
        );
    }
    let status = llm
        .embed(bearer(
            &token,
            pb::EmbedRequest {
                model: EMBED.into(),
                texts: vec![],
            },
        ))
        .await
        .expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = llm
        .embed(bearer(
            &token,
            pb::EmbedRequest {
                model: EMBED.into(),
                texts: vec!["x".into(); 65],
            },
        ))
        .await
        .expect_err("too many");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = llm
        .embed(bearer(
            &token,
            pb::EmbedRequest {
                model: CHAT.into(),
                texts: vec!["x".into()],
            },
        ))
        .await
        .expect_err("chat model");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_respects_the_memory_budget() {
    // Room for one of the two models (94 MiB and 87 MiB) at a time.
    let (s, token) = server(|c| c.llm.memory_budget_mib = 150).await;
    let mut llm = client(&s);
    let loaded = llm
        .load_model(bearer(&token, pb::LoadModelRequest { id: CHAT.into() }))
        .await
        .expect("load chat")
        .into_inner();
    let model = loaded.model.expect("model");
    assert_eq!(model.state, pb::ModelState::Loaded as i32);
    assert!(model.memory_bytes >= model.size_bytes);
    let loaded = llm
        .load_model(bearer(&token, pb::LoadModelRequest { id: EMBED.into() }))
        .await
        .expect("load embedding")
        .into_inner();
    assert_eq!(
        loaded.evicted_ids,
        vec![CHAT.to_owned()],
        "the idle chat model made room"
    );
    let models = llm
        .list_models(bearer(&token, pb::ListModelsRequest {}))
        .await
        .expect("list")
        .into_inner()
        .models;
    let state = |id: &str| models.iter().find(|m| m.id == id).expect("listed").state;
    assert_eq!(state(CHAT), pb::ModelState::Available as i32);
    assert_eq!(state(EMBED), pb::ModelState::Loaded as i32);

    // Busy models are not evicted: a generation holds the chat model.
    let (s2, token2) = server(|c| c.llm.memory_budget_mib = 150).await;
    let mut llm2 = client(&s2);
    let stream = llm2
        .generate(bearer(
            &token2,
            prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(2000)),
        ))
        .await
        .expect("generate")
        .into_inner();
    let status = llm2
        .load_model(bearer(&token2, pb::LoadModelRequest { id: EMBED.into() }))
        .await
        .expect_err("no room");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let status = llm2
        .unload_model(bearer(&token2, pb::UnloadModelRequest { id: CHAT.into() }))
        .await
        .expect_err("busy");
    assert_eq!(status.code(), Code::FailedPrecondition);
    drop(stream);

    llm.unload_model(bearer(&token, pb::UnloadModelRequest { id: EMBED.into() }))
        .await
        .expect("unload");
    let status = llm
        .unload_model(bearer(&token, pb::UnloadModelRequest { id: EMBED.into() }))
        .await
        .expect_err("not loaded");
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_verify_and_delete() {
    // A private registry: this test adds and removes models.
    let s = TestServer::start(Backend::Sqlite).await.expect("sqlite");
    let (_, tokens) = s.signup("admin@example.com").await;
    let token = tokens.access_token;
    let mut llm = client(&s);
    let gguf = llmesh_tests::models::chat_model_path();
    let sha = std::fs::read_to_string(gguf.parent().expect("dir").join("manifest.json"))
        .ok()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
        .and_then(|m| m["sha256"].as_str().map(str::to_owned))
        .expect("sha in manifest");

    let wrong = "0".repeat(64);
    let result = async {
        let mut stream = llm
            .pull_model(bearer(
                &token,
                pb::PullModelRequest {
                    source: format!("file:{}", gguf.display()),
                    id: "copy".into(),
                    sha256: wrong,
                },
            ))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    }
    .await;
    assert_eq!(
        result.expect_err("mismatch").code(),
        Code::FailedPrecondition
    );
    assert!(
        llm.list_models(bearer(&token, pb::ListModelsRequest {}))
            .await
            .expect("list")
            .into_inner()
            .models
            .is_empty(),
        "nothing registered"
    );

    let mut stream = llm
        .pull_model(bearer(
            &token,
            pb::PullModelRequest {
                source: format!("file:{}", gguf.display()),
                id: "copy".into(),
                sha256: sha.clone(),
            },
        ))
        .await
        .expect("pull")
        .into_inner();
    let mut phases = Vec::new();
    let mut done = None;
    while let Some(msg) = stream.message().await.expect("progress") {
        phases.push(msg.phase);
        if msg.model.is_some() {
            done = msg.model;
        }
    }
    let model = done.expect("the last message carries the model");
    assert_eq!(model.sha256, sha);
    assert_eq!(model.architecture, "llama");
    assert_eq!(model.quantization, "Q4_1");
    assert_eq!(model.context_length, 8192);
    assert!(model.chat_template.contains("im_start"));
    assert!(phases.contains(&(pb::PullPhase::Verifying as i32)));
    assert_eq!(phases.last(), Some(&(pb::PullPhase::Done as i32)));

    let again = llm
        .pull_model(bearer(
            &token,
            pb::PullModelRequest {
                source: format!("file:{}", gguf.display()),
                id: "copy".into(),
                sha256: String::new(),
            },
        ))
        .await;
    assert_eq!(again.err().map(|s| s.code()), Some(Code::AlreadyExists));

    // Parts are joined in order.
    let dir = s.db.scratch().join("parts");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("a.part0"), b"hello ").expect("write");
    std::fs::write(dir.join("b.part1"), b"world").expect("write");
    let result = async {
        let mut stream = llm
            .pull_model(bearer(
                &token,
                pb::PullModelRequest {
                    source: format!(
                        "parts:file:{};file:{}",
                        dir.join("a.part0").display(),
                        dir.join("b.part1").display()
                    ),
                    id: "joined".into(),
                    sha256: String::new(),
                },
            ))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    }
    .await;
    // Two text files joined are not a model: refused after joining, by content.
    let status = result.expect_err("not a model");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("GGUF"), "{}", status.message());

    llm.delete_model(bearer(&token, pb::DeleteModelRequest { id: "copy".into() }))
        .await
        .expect("delete");
    let status = llm
        .get_model(bearer(&token, pb::GetModelRequest { id: "copy".into() }))
        .await
        .expect_err("gone");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_is_billed_for_what_it_produced_sqlite() {
    generation_is_billed_for_what_it_produced(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_is_billed_for_what_it_produced_postgres() {
    generation_is_billed_for_what_it_produced(Backend::Postgres).await;
}

async fn generation_is_billed_for_what_it_produced(backend: Backend) {
    use llmesh_proto::billing::v1 as bpb;
    use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;

    let Some((s, admin)) = server_on(backend, |_| {}).await else {
        return;
    };
    let (user, tokens) = s.signup("user@example.com").await;
    let user_token = tokens.access_token;
    let mut billing = BillingServiceClient::new(s.channel.clone());
    billing
        .set_price(bearer(
            &admin,
            bpb::SetPriceRequest {
                model: CHAT.into(),
                input_micros_per_mtok: 1_000_000,
                output_micros_per_mtok: 2_000_000,
                ..Default::default()
            },
        ))
        .await
        .expect("price");
    let mut llm = client(&s);

    // No balance: refused before any inference.
    let status = llm
        .generate(bearer(
            &user_token,
            prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(12)),
        ))
        .await
        .expect_err("no money");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("insufficient balance"),
        "{}",
        status.message()
    );
    let counters = s
        .app()
        .llm
        .as_ref()
        .expect("llm")
        .counters(CHAT)
        .expect("loaded");
    assert_eq!(counters.generated_tokens.load(Ordering::SeqCst), 0);

    billing
        .adjust_balance(bearer(
            &admin,
            bpb::AdjustBalanceRequest {
                user_id: user.id.clone(),
                amount_micros: 100_000,
                reason: "test credit".into(),
                idempotency_key: "fund".into(),
            },
        ))
        .await
        .expect("credit");

    // A finished generation: 23 prompt tokens at 1 and 12 completion tokens at 2.
    let (_, _, done) = read_all(
        llm.generate(bearer(
            &user_token,
            prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(12)),
        ))
        .await
        .expect("generate")
        .into_inner(),
    )
    .await;
    assert_eq!(done.cost.expect("cost").micros, 23 + 12 * 2);

    // A stream the client stops early is charged for what was produced, not max_tokens.
    let mut stream = llm
        .generate(bearer(
            &user_token,
            prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(500)),
        ))
        .await
        .expect("generate")
        .into_inner();
    let mut received = 0;
    while received < 6 {
        if let Some(pb::generate_response::Event::Delta(_)) =
            stream.message().await.expect("msg").and_then(|m| m.event)
        {
            received += 1;
        }
    }
    drop(stream);
    let mut settled = None;
    for _ in 0..300 {
        let r = billing
            .get_balance(bearer(&user_token, bpb::GetBalanceRequest::default()))
            .await
            .expect("balance")
            .into_inner();
        if r.reserved.as_ref().expect("reserved").micros == 0 {
            settled = Some(r.balance.expect("balance").micros);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let balance = settled.expect("the cancelled stream was settled");
    let usage = billing
        .list_usage(bearer(
            &user_token,
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
        .find(|r| r.key == CHAT)
        .expect("usage row");
    assert_eq!(row.requests, 2);
    let t = row.tokens.expect("tokens");
    let cancelled_completion = t.completion_tokens - 12;
    assert!(
        (6..100).contains(&cancelled_completion),
        "charged {cancelled_completion} completion tokens for a stream stopped after 6 deltas"
    );
    let spend = row.spend.as_ref().expect("spend").micros;
    assert_eq!(
        spend,
        (23 + 12 * 2) + (23 + i64::from(cancelled_completion) * 2)
    );
    assert_eq!(balance, 100_000 - spend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_processes_verify_tokens_and_bill_over_grpc() {
    use llmesh_proto::billing::v1 as bpb;
    use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
    const TOKEN: &str = "0123456789abcdef0123456789abcdef-split";

    // Process A: auth and billing. Process B: llm only, trusting A.
    let a = TestServer::start_services(Backend::Sqlite, &["auth", "billing"], |c| {
        c.peers.service_token = Some(TOKEN.into());
    })
    .await
    .expect("sqlite");
    let models = llmesh_tests::models::models_dir();
    let a_url = a.url.clone();
    let b = TestServer::start_services(Backend::Sqlite, &["llm"], |c| {
        c.peers.service_token = Some(TOKEN.into());
        c.peers.auth_url = Some(a_url.clone());
        c.peers.billing_url = Some(a_url.clone());
        c.llm.models_dir = models.display().to_string();
    })
    .await
    .expect("sqlite");

    let (_, admin) = a.signup("admin@example.com").await;
    let (user, tokens) = a.signup("user@example.com").await;
    let mut billing = BillingServiceClient::new(a.channel.clone());
    billing
        .set_price(bearer(
            &admin.access_token,
            bpb::SetPriceRequest {
                model: CHAT.into(),
                input_micros_per_mtok: 1_000_000,
                output_micros_per_mtok: 2_000_000,
                ..Default::default()
            },
        ))
        .await
        .expect("price");
    billing
        .adjust_balance(bearer(
            &admin.access_token,
            bpb::AdjustBalanceRequest {
                user_id: user.id.clone(),
                amount_micros: 1000,
                reason: "test".into(),
                idempotency_key: "fund".into(),
            },
        ))
        .await
        .expect("credit");

    // B verifies A's token with A's published keys and bills through A's internal RPCs.
    let mut llm = client(&b);
    let (_, _, done) = read_all(
        llm.generate(bearer(
            &tokens.access_token,
            prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(12)),
        ))
        .await
        .expect("generate on B")
        .into_inner(),
    )
    .await;
    assert_eq!(done.cost.expect("cost").micros, 23 + 24);
    let balance = billing
        .get_balance(bearer(
            &tokens.access_token,
            bpb::GetBalanceRequest::default(),
        ))
        .await
        .expect("balance")
        .into_inner();
    assert_eq!(balance.balance.expect("b").micros, 1000 - 47);
    assert_eq!(balance.reserved.expect("r").micros, 0);

    // API keys resolve through A too; B has no auth routes of its own.
    let key = a.api_key(&tokens.access_token, "k").await.secret;
    let (_, _, done) = read_all(
        llm.generate(bearer(
            &key,
            prompt_request("1, 2, 3, 4, 5, 6, 7, 8,", greedy(2)),
        ))
        .await
        .expect("generate with a key")
        .into_inner(),
    )
    .await;
    assert_eq!(done.usage.expect("usage").completion_tokens, 2);
    let status = b
        .auth()
        .get_me(bearer(
            &tokens.access_token,
            llmesh_proto::auth::v1::GetMeRequest {},
        ))
        .await
        .expect_err("auth is not served by B");
    assert_eq!(status.code(), Code::Unimplemented);
}

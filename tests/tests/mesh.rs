//! The whole product split into processes behind nginx (see `llmesh_tests::mesh`):
//! reflection through the edge, one trace across chat → llm → billing (and sandbox →
//! billing) in an OTLP receiver the test runs, an llm process killed mid-reply, and the browser e2e run.
//! The chat, chat archive, auth and billing suites also run through the mesh
//! (`every_shape!`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmesh_proto::billing::v1 as bpb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_proto::chat::v1 as pb;
use llmesh_proto::chat::v1::chat_service_client::ChatServiceClient;
use llmesh_proto::llm::v1 as lpb;
use llmesh_proto::sandbox::v1 as spb;
use llmesh_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use llmesh_tests::{Backend, TestServer, bearer, http_get};
use opentelemetry_proto::tonic::collector::trace::v1 as otlp;

const CHAT: &str = "smollm2-135m-instruct";

/// A mesh on the shared test models, every llm process with the chat model loaded.
async fn mesh(tweak: impl FnOnce(&mut llmesh::Config)) -> Option<TestServer> {
    let models = llmesh_tests::models::models_dir();
    TestServer::start_with(Backend::Mesh, |c| {
        c.llm.models_dir = models.display().to_string();
        c.llm.load_at_start = Some(vec![CHAT.into()]);
        c.chat.auto_title = false;
        tweak(c);
    })
    .await
}

/// Greedy sampling that cannot end before `max_tokens` (SmolLM2's end tokens biased away).
fn endless(max_tokens: u32) -> Option<lpb::SamplingParams> {
    Some(lpb::SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        logit_bias: [(0, -100.0), (2, -100.0)].into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_through_the_edge_lists_every_service() {
    let Some(s) = mesh(|_| {}).await else {
        return;
    };
    let services = llmesh_tests::reflected_services(&s.channel).await;
    let want: BTreeSet<String> = llmesh::ALL_SERVICE_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(services, want);

    // The same with buf, as the README's quickstart does it.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let buf = repo.join("node_modules/.bin/buf");
    if !buf.is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "buf is required in CI (npm install)"
        );
        eprintln!("skipping buf curl: run npm install for node_modules/.bin/buf");
        return;
    }
    let out = std::process::Command::new(buf)
        .args([
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--list-methods",
            &s.url,
        ])
        .output()
        .expect("buf curl");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for method in [
        "llmesh.auth.v1.AuthService/Login",
        "llmesh.billing.v1.BillingService/GetBalance",
        "llmesh.llm.v1.LlmService/Generate",
        "llmesh.chat.v1.ChatService/SendMessage",
        "llmesh.chat.v1.ChatArchiveService/Search",
    ] {
        assert!(listed.contains(method), "{method} missing from:\n{listed}");
    }
}

/// An OTLP trace receiver: keeps every span with its process's service.name.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>);

#[tonic::async_trait]
impl otlp::trace_service_server::TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<otlp::ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<otlp::ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(
            otlp::ExportTraceServiceResponse::default(),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chat_message_is_one_trace_across_processes() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let receiver = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(otlp::trace_service_server::TraceServiceServer::new(
                receiver,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let Some(s) = mesh(|c| c.telemetry.otlp_endpoint = endpoint.clone()).await else {
        return;
    };
    let (_, tokens) = s.signup("user@example.com").await;
    let mut chat = ChatServiceClient::new(s.channel.clone());
    let conv = chat
        .create_conversation(bearer(
            &tokens.access_token,
            pb::CreateConversationRequest {
                model: CHAT.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("conversation")
        .into_inner()
        .conversation
        .expect("conversation");
    let mut stream = chat
        .send_message(bearer(
            &tokens.access_token,
            pb::SendMessageRequest {
                conversation_id: conv.id,
                content: "Count to 3.".into(),
                sampling: endless(8),
                ..Default::default()
            },
        ))
        .await
        .expect("send")
        .into_inner();
    while stream.message().await.expect("event").is_some() {}

    // Spans arrive in batches; wait for the whole chain.
    let spans = |name: &str| -> Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)> {
        collector
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, s)| s.name == name)
            .cloned()
            .collect()
    };
    let mut chain = None;
    for _ in 0..200 {
        let sends = spans("llmesh.chat.v1.ChatService/SendMessage");
        let generates = spans("llmesh.llm.v1.LlmService/Generate");
        let settles = spans("llmesh.billing.v1.BillingService/Settle");
        let decodes = spans("engine.decode");
        if let (Some(send), Some(generate), Some(settle), Some(decode)) = (
            sends.first(),
            generates.first(),
            settles.first(),
            decodes.first(),
        ) {
            chain = Some((
                send.clone(),
                generate.clone(),
                settle.clone(),
                decode.clone(),
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (send, generate, settle, decode) = chain.expect("the spans of every hop were exported");
    let reserve = spans("llmesh.billing.v1.BillingService/Reserve")
        .into_iter()
        .find(|(_, s)| s.trace_id == send.1.trace_id)
        .expect("reserve span");
    // Three processes, one trace.
    assert_eq!(send.0, "llmesh-chat");
    assert_eq!(generate.0, "llmesh-llm");
    assert_eq!(settle.0, "llmesh-billing");
    for (_, span) in [&generate, &reserve, &settle, &decode] {
        assert_eq!(
            span.trace_id, send.1.trace_id,
            "{} is in the trace",
            span.name
        );
    }
    // Parent links: chat → llm → billing, and the engine's work under llm's RPC.
    assert_eq!(generate.1.parent_span_id, send.1.span_id);
    assert_eq!(reserve.1.parent_span_id, generate.1.span_id);
    assert_eq!(settle.1.parent_span_id, generate.1.span_id);
    assert_eq!(decode.1.parent_span_id, generate.1.span_id);
    for name in ["engine.queue", "engine.prefill"] {
        let span = spans(name).into_iter().next().expect(name).1;
        assert_eq!(span.parent_span_id, generate.1.span_id, "{name}");
    }
    assert!(decode.1.end_time_unix_nano >= decode.1.start_time_unix_nano);

    // A sandbox run is one trace too: the sandbox process, its hold in billing, its guest.
    let mut sandbox = SandboxServiceClient::new(s.channel.clone());
    let mut run = sandbox
        .run(bearer(
            &tokens.access_token,
            spb::RunRequest {
                runtime: "python".into(),
                code: "print(6 * 7)".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("run")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = run.message().await.expect("run event") {
        if let Some(spb::run_response::Event::Stdout(b)) = m.event {
            out.extend(b);
        }
    }
    assert_eq!(out, b"42\n");
    let mut found = None;
    for _ in 0..200 {
        if let (Some(run), Some(guest)) = (
            spans("llmesh.sandbox.v1.SandboxService/Run").first(),
            spans("sandbox.guest").first(),
        ) {
            found = Some((run.clone(), guest.clone()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (run, guest) = found.expect("the sandbox's spans were exported");
    assert_eq!(run.0, "llmesh-sandbox");
    assert_eq!(guest.1.parent_span_id, run.1.span_id);
    assert!(
        spans("llmesh.billing.v1.BillingService/Reserve")
            .iter()
            .any(|(service, s)| service == "llmesh-billing" && s.parent_span_id == run.1.span_id),
        "the run's hold in billing is a child of the run"
    );
}

/// The llm process running a generation now, found from each process's metrics.
async fn busy_llm(s: &TestServer) -> &'static str {
    let mesh = s.mesh.as_ref().expect("mesh");
    for _ in 0..200 {
        for name in ["llm-1", "llm-2"] {
            let (_, _, metrics) = http_get(&format!("{}/metrics", mesh.url(name))).await;
            if metrics.contains(&format!(
                "llmesh_llm_running_sequences{{model=\"{CHAT}\"}} 1"
            )) {
                return name;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no llm process reports the running generation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_process_killed_mid_reply() {
    // Holds expire quickly here, so the sweeper's release is seen within the test.
    let Some(s) = mesh(|c| {
        c.billing.reservation_ttl_secs = 10;
        c.billing.sweep_interval_secs = 1;
    })
    .await
    else {
        return;
    };
    let mesh = s.mesh.as_ref().expect("mesh");
    let (_, admin) = s.signup("admin@example.com").await;
    let (user, tokens) = s.signup("user@example.com").await;
    let user_token = tokens.access_token;
    llmesh_tests::price_and_credit(&s.channel, &admin.access_token, CHAT, &user.id, 1_000_000)
        .await;
    let mut billing = BillingServiceClient::new(s.channel.clone());

    let mut chat = ChatServiceClient::new(s.channel.clone());
    let conv = chat
        .create_conversation(bearer(
            &user_token,
            pb::CreateConversationRequest {
                model: CHAT.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("conversation")
        .into_inner()
        .conversation
        .expect("conversation");
    let send = |content: &str, sampling| pb::SendMessageRequest {
        conversation_id: conv.id.clone(),
        content: content.into(),
        sampling,
        ..Default::default()
    };
    let mut stream = chat
        .send_message(bearer(
            &user_token,
            send("Count from 1 to 1000.", endless(2000)),
        ))
        .await
        .expect("send")
        .into_inner();
    let mut deltas = 0;
    while deltas < 3 {
        if let Some(pb::reply_event::Event::Delta(_)) = stream
            .message()
            .await
            .expect("event")
            .and_then(|m| m.event)
            .and_then(|e| e.event)
        {
            deltas += 1;
        }
    }
    let victim = busy_llm(&s).await;
    mesh.kill(victim);

    // The client gets the partial reply, stored as stopped.
    let mut stored = None;
    while let Some(m) = stream.message().await.expect("the stream ends cleanly") {
        if let Some(pb::reply_event::Event::AssistantMessage(a)) = m.event.and_then(|e| e.event) {
            stored = Some(a);
        }
    }
    let reply = stored.expect("the partial reply is stored");
    assert_eq!(reply.state, pb::MessageState::Stopped as i32);
    assert!(!reply.content.is_empty());

    // The hold of the lost generation is released (never half-settled).
    let mut released = false;
    for _ in 0..200 {
        let b = billing
            .get_balance(bearer(&user_token, bpb::GetBalanceRequest::default()))
            .await
            .expect("balance")
            .into_inner();
        if b.reserved.expect("reserved").micros == 0 {
            assert_eq!(
                b.balance.expect("balance").micros,
                1_000_000,
                "nothing charged"
            );
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the reservation was released");

    // The other llm process serves the next reply.
    let mut stream = chat
        .send_message(bearer(&user_token, send("Say hi.", endless(6))))
        .await
        .expect("the other llm answers")
        .into_inner();
    let mut next = None;
    while let Some(m) = stream.message().await.expect("event") {
        if let Some(pb::reply_event::Event::AssistantMessage(a)) = m.event.and_then(|e| e.event) {
            next = Some(a);
        }
    }
    let next = next.expect("stored");
    assert_eq!(next.state, pb::MessageState::Complete as i32);
    assert_eq!(next.usage.expect("usage").completion_tokens, 6);

    // Nothing half-written: two prompts, two replies.
    let messages = chat
        .get_conversation(bearer(
            &user_token,
            pb::GetConversationRequest {
                id: conv.id.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .messages;
    assert_eq!(messages.len(), 4);

    // The killed process comes back and reports its model loaded again.
    mesh.restart(victim).await;
    let mut llm = lpb::llm_service_client::LlmServiceClient::new(s.channel.clone());
    let mut rejoined = false;
    for _ in 0..200 {
        let models = llm
            .list_models(bearer(&user_token, lpb::ListModelsRequest {}))
            .await
            .expect("list")
            .into_inner()
            .models;
        let loaded = models
            .iter()
            .find(|m| m.id == CHAT)
            .map(|m| {
                m.replicas
                    .iter()
                    .filter(|r| r.state == lpb::ModelState::Loaded as i32)
                    .count()
            })
            .unwrap_or(0);
        // The killed process's old report stays until it ages out; the new one adds.
        if loaded >= 3 {
            rejoined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        rejoined,
        "the restarted llm process reports its model loaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_e2e_runs_through_the_edge() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ready = repo.join("web/dist/index.html").is_file()
        && repo.join("node_modules/playwright-core").is_dir()
        && std::path::Path::new(
            &std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        )
        .is_file();
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser run needs the built UI, npm packages and Chromium in CI"
        );
        eprintln!(
            "skipping the browser run through the edge: build the UI, npm install, install Chromium"
        );
        return;
    }
    let dist = repo.join("web/dist").display().to_string();
    let Some(s) = mesh(|c| {
        c.llm.default_max_tokens = 400;
        c.server.web_dir = dist;
    })
    .await
    else {
        return;
    };
    let mesh = s.mesh.as_ref().expect("mesh");
    let out = mesh.dir().join("e2e");
    let run = tokio::process::Command::new("node")
        .arg(repo.join("web/e2e/run.mjs"))
        .current_dir(repo.join("web"))
        .env("LLMESH_E2E_URL", &mesh.http_url)
        .env("LLMESH_E2E_OUT", &out)
        .env("LLMESH_TEST_MODELS_DIR", llmesh_tests::models::models_dir())
        .output()
        .await
        .expect("node");
    let log = String::from_utf8_lossy(&run.stdout);
    eprintln!("{log}{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        run.status.success(),
        "the browser run failed through the edge"
    );
    assert!(log.contains("passed"));
}

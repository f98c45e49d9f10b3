//! Services in separate processes (servers on their own ports, talking gRPC): chat apart
//! from llm (replies, Stop, deadlines that follow the call), a peer that is down answered
//! as UNAVAILABLE naming it, auth's deleted-user notice surviving billing being down, and
//! the sandbox alone charging runs through billing in another process.

use std::time::Duration;

use llmesh_migration::MigratorTrait;
use llmesh_proto::auth::v1 as apb;
use llmesh_proto::billing::v1 as bpb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_proto::chat::v1 as pb;
use llmesh_proto::chat::v1::chat_service_client::ChatServiceClient;
use llmesh_proto::llm::v1::SamplingParams;
use llmesh_tests::{Backend, TestServer, bearer, free_port};
use sea_orm::ConnectionTrait;
use tonic::Code;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-split";
const CHAT_MODEL: &str = "smollm2-135m-instruct";

fn greedy(max_tokens: u32) -> Option<SamplingParams> {
    Some(SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    })
}

/// Greedy sampling that cannot end before `max_tokens`: SmolLM2's end tokens
/// (<|endoftext|> = 0, <|im_end|> = 2) are biased away.
fn endless(max_tokens: u32) -> Option<SamplingParams> {
    Some(SamplingParams {
        logit_bias: [(0, -100.0), (2, -100.0)].into(),
        ..greedy(max_tokens)?
    })
}

/// Starts a reply of 2000 tokens through `streaming`, asks `stopper` (another client, maybe
/// of another process) to StopReply after three deltas, and returns the stored reply.
async fn stop_after_three_deltas(
    streaming: &mut ChatServiceClient<tonic::transport::Channel>,
    stopper: &mut ChatServiceClient<tonic::transport::Channel>,
    user: &str,
    conversation: &str,
) -> pb::Message {
    let mut stream = streaming
        .send_message(bearer(
            user,
            pb::SendMessageRequest {
                conversation_id: conversation.into(),
                content: "Count from 1 to 1000.".into(),
                sampling: endless(2000),
                ..Default::default()
            },
        ))
        .await
        .expect("send")
        .into_inner();
    let mut deltas = 0;
    let mut last = None;
    while let Some(m) = stream.message().await.expect("event") {
        match m.event.and_then(|e| e.event) {
            Some(pb::reply_event::Event::Delta(_)) => {
                deltas += 1;
                if deltas == 3 {
                    let stopped = stopper
                        .stop_reply(bearer(
                            user,
                            pb::StopReplyRequest {
                                conversation_id: conversation.into(),
                            },
                        ))
                        .await
                        .expect("stop")
                        .into_inner()
                        .stopped;
                    assert!(stopped, "the stopping process knows a reply runs");
                }
            }
            Some(pb::reply_event::Event::AssistantMessage(a)) => last = Some(a),
            _ => {}
        }
    }
    last.expect("the stream ends with the stored reply")
}

async fn conversation(c: &mut ChatServiceClient<tonic::transport::Channel>, user: &str) -> String {
    c.create_conversation(bearer(
        user,
        pb::CreateConversationRequest {
            model: CHAT_MODEL.into(),
            ..Default::default()
        },
    ))
    .await
    .expect("create conversation")
    .into_inner()
    .conversation
    .expect("conversation")
    .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_llm_in_another_process() {
    // A: auth, billing and llm. B: chat alone, trusting A.
    let models = llmesh_tests::models::models_dir();
    let a = TestServer::start_services(Backend::Sqlite, &["auth", "billing", "llm"], |c| {
        c.peers.service_token = Some(TOKEN.into());
        c.llm.models_dir = models.display().to_string();
        c.chat.auto_title = false;
    })
    .await
    .expect("sqlite");
    let a_url = a.url.clone();
    let b = TestServer::start_services(Backend::Sqlite, &["chat"], |c| {
        c.peers.service_token = Some(TOKEN.into());
        c.peers.auth_url = Some(a_url.clone());
        c.peers.llm_url = Some(a_url.clone());
        c.chat.auto_title = false;
    })
    .await
    .expect("sqlite");
    let (_, admin) = a.signup("admin@example.com").await;
    let (user, tokens) = a.signup("user@example.com").await;
    let user_token = tokens.access_token;
    llmesh_tests::price_and_credit(
        &a.channel,
        &admin.access_token,
        CHAT_MODEL,
        &user.id,
        100_000,
    )
    .await;
    let mut billing = BillingServiceClient::new(a.channel.clone());

    // A reply through B, generated and billed on A, with its cost stored on B.
    let mut c = ChatServiceClient::new(b.channel.clone());
    let conv = conversation(&mut c, &user_token).await;
    let mut stream = c
        .send_message(bearer(
            &user_token,
            pb::SendMessageRequest {
                conversation_id: conv.clone(),
                content: "Count to 5.".into(),
                sampling: greedy(12),
                ..Default::default()
            },
        ))
        .await
        .expect("send through B")
        .into_inner();
    let mut text = String::new();
    let mut reply = None;
    while let Some(m) = stream.message().await.expect("event") {
        match m.event.and_then(|e| e.event) {
            Some(pb::reply_event::Event::Delta(d)) => text.push_str(&d),
            Some(pb::reply_event::Event::AssistantMessage(a)) => reply = Some(a),
            _ => {}
        }
    }
    let reply = reply.expect("the stored reply");
    assert_eq!(reply.content, text);
    assert_eq!(reply.state, pb::MessageState::Complete as i32);
    let usage = reply.usage.expect("usage");
    assert_eq!(
        reply.cost.expect("cost").micros,
        i64::from(usage.prompt_tokens) + 2 * i64::from(usage.completion_tokens),
        "the cost A settled is the one B stored"
    );

    // StopReply on B ends the generation on A; the partial reply is kept and billed.
    let mut again = c.clone();
    let stopped = stop_after_three_deltas(&mut c, &mut again, &user_token, &conv).await;
    assert_eq!(stopped.state, pb::MessageState::Stopped as i32);
    let usage = stopped.usage.expect("usage");
    assert!((3..2000).contains(&usage.completion_tokens), "{usage:?}");
    assert_eq!(
        stopped.cost.expect("cost").micros,
        i64::from(usage.prompt_tokens) + 2 * i64::from(usage.completion_tokens)
    );

    // The caller's deadline travels to llm: a reply that would run for 2000 tokens stops
    // on A when the client's two seconds are up.
    let counters = || {
        a.app()
            .llm
            .as_ref()
            .expect("llm on A")
            .counters(CHAT_MODEL)
            .expect("loaded")
    };
    let cancelled_before = counters()
        .cancelled
        .load(std::sync::atomic::Ordering::SeqCst);
    let mut req = bearer(
        &user_token,
        pb::SendMessageRequest {
            conversation_id: conv.clone(),
            content: "Count from 1 to 1000.".into(),
            sampling: endless(2000),
            ..Default::default()
        },
    );
    req.set_timeout(Duration::from_secs(2));
    let started = std::time::Instant::now();
    if let Ok(stream) = c.send_message(req).await {
        let mut stream = stream.into_inner();
        while let Ok(Some(_)) = stream.message().await {}
    }
    // Chat does not cut its own stream at the deadline: only llm's stop ends it this soon
    // (2000 tokens take over ten seconds here).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let mut cancelled = false;
    for _ in 0..100 {
        if counters()
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
            > cancelled_before
        {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cancelled,
        "llm stopped the sequence when the deadline passed"
    );

    // Every hold is settled in the end.
    let mut reserved = -1;
    for _ in 0..200 {
        reserved = billing
            .get_balance(bearer(&user_token, bpb::GetBalanceRequest::default()))
            .await
            .expect("balance")
            .into_inner()
            .reserved
            .expect("reserved")
            .micros;
        if reserved == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reserved, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_is_unavailable_by_name() {
    let a = TestServer::start_services(Backend::Sqlite, &["auth"], |c| {
        c.peers.service_token = Some(TOKEN.into());
    })
    .await
    .expect("sqlite");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let a_url = a.url.clone();
    let b = TestServer::start_services(Backend::Sqlite, &["chat"], |c| {
        c.peers.service_token = Some(TOKEN.into());
        c.peers.auth_url = Some(a_url);
        c.peers.llm_url = Some(dead.clone());
    })
    .await
    .expect("sqlite");
    let (_, tokens) = a.signup("user@example.com").await;
    let mut c = ChatServiceClient::new(b.channel.clone());
    let conv = conversation(&mut c, &tokens.access_token).await;
    let status = c
        .send_message(bearer(
            &tokens.access_token,
            pb::SendMessageRequest {
                conversation_id: conv.clone(),
                content: "hi".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("llm is down");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("llm service") && status.message().contains(&dead),
        "{}",
        status.message()
    );
    let (_, messages) = {
        let r = c
            .get_conversation(bearer(
                &tokens.access_token,
                pb::GetConversationRequest { id: conv },
            ))
            .await
            .expect("get")
            .into_inner();
        (r.conversation, r.messages)
    };
    assert!(messages.is_empty(), "nothing half-written");

    // B's health says chat is not ready while the llm it needs is down.
    let mut health = tonic_health::pb::health_client::HealthClient::new(b.channel.clone());
    let mut not_serving = false;
    for _ in 0..50 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "llmesh.chat.v1.ChatService".into(),
            })
            .await
            .expect("check")
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(not_serving, "chat on B reports its missing peer");

    // A process whose auth is down refuses with UNAVAILABLE naming auth, not INTERNAL: an
    // API key B has never seen can only be resolved by auth.
    let key = a.api_key(&tokens.access_token, "k").await.secret;
    a.stop().await;
    let status = c
        .list_conversations(bearer(&key, pb::ListConversationsRequest::default()))
        .await
        .expect_err("auth is gone");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("auth service"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_runs_alone_and_charges_through_billing() {
    use llmesh_proto::sandbox::v1 as spb;
    use llmesh_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;

    // A: auth and billing. B: the sandbox alone, its workspaces in its own database.
    let a = TestServer::start_services(Backend::Sqlite, &["auth", "billing"], |c| {
        c.peers.service_token = Some(TOKEN.into());
    })
    .await
    .expect("sqlite");
    let a_url = a.url.clone();
    let b = TestServer::start_services(Backend::Sqlite, &["sandbox"], |c| {
        c.peers.service_token = Some(TOKEN.into());
        c.peers.auth_url = Some(a_url.clone());
        c.peers.billing_url = Some(a_url.clone());
    })
    .await
    .expect("sqlite");
    let (_, admin) = a.signup("admin@example.com").await;
    let (user, tokens) = a.signup("user@example.com").await;
    let token = tokens.access_token;
    let mut billing = BillingServiceClient::new(a.channel.clone());
    billing
        .set_price(bearer(
            &admin.access_token,
            bpb::SetPriceRequest {
                model: "sandbox/python".into(),
                micros_per_billion_fuel: 1_000_000,
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
                amount_micros: 100_000_000,
                reason: "test credit".into(),
                idempotency_key: "sandbox-split".into(),
            },
        ))
        .await
        .expect("credit");

    let mut sandbox = SandboxServiceClient::new(b.channel.clone());
    let request = || spb::RunRequest {
        runtime: "python".into(),
        code: "import sys; print('out'); print('err', file=sys.stderr)".into(),
        ..Default::default()
    };
    let mut stream = sandbox
        .run(bearer(&token, request()))
        .await
        .expect("run")
        .into_inner();
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(m) = stream.message().await.expect("event") {
        match m.event.expect("event") {
            spb::run_response::Event::Stdout(b) => out.extend(b),
            spb::run_response::Event::Stderr(b) => err.extend(b),
            spb::run_response::Event::Exit(e) => exit = Some(e),
        }
    }
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    let exit = exit.expect("exit");
    assert_eq!(
        exit.status,
        spb::RunStatus::Exited as i32,
        "{}",
        exit.message
    );
    let cost = exit.cost.expect("cost").micros;
    assert_eq!(cost as u64, exit.fuel_used.div_ceil(1000));
    // Billing settles just after the exit (which already carries the cost).
    let mut settled = None;
    for _ in 0..100 {
        let balance = billing
            .get_balance(bearer(&token, bpb::GetBalanceRequest::default()))
            .await
            .expect("balance")
            .into_inner();
        if balance.reserved.as_ref().expect("reserved").micros == 0 {
            settled = Some(balance);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let balance = settled.expect("billing settles the run within 5 s");
    assert_eq!(balance.balance.expect("balance").micros, 100_000_000 - cost);
    let (_, _, scrape) = llmesh_tests::http_get(&format!("{}/metrics", b.url)).await;
    assert!(
        scrape.contains(r#"llmesh_sandbox_runs_total{runtime="python",status="exited"} 1"#),
        "{scrape}"
    );

    // With billing gone, a run is refused as UNAVAILABLE naming it, before it starts.
    a.stop().await;
    let status = sandbox
        .run(bearer(&token, request()))
        .await
        .expect_err("billing is gone");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("billing service") || status.message().contains("auth service"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_notice_waits_for_billing() {
    // Billing (B) will live on a fixed port so it can come back there.
    let port = free_port();
    let billing_url = format!("http://127.0.0.1:{port}");
    let url = billing_url.clone();
    let a = TestServer::start_services(Backend::Sqlite, &["auth"], |c| {
        c.peers.service_token = Some(TOKEN.into());
        c.peers.billing_url = Some(url);
    })
    .await
    .expect("sqlite");
    let a_url = a.url.clone();
    let billing_config = move |c: &mut llmesh::Config| {
        c.peers.service_token = Some(TOKEN.into());
        c.peers.auth_url = Some(a_url.clone());
        c.server.bind = format!("127.0.0.1:{port}");
    };
    let b = TestServer::start_services(Backend::Sqlite, &["billing"], billing_config.clone())
        .await
        .expect("sqlite");
    let (_, admin) = a.signup("admin@example.com").await;
    let (user, _) = a.signup("user@example.com").await;
    let mut billing = BillingServiceClient::new(b.channel.clone());
    billing
        .adjust_balance(bearer(
            &admin.access_token,
            bpb::AdjustBalanceRequest {
                user_id: user.id.clone(),
                amount_micros: 5,
                reason: "an account to mark".into(),
                idempotency_key: "acct".into(),
            },
        ))
        .await
        .expect("credit");

    // Billing goes down; the user is deleted meanwhile.
    let b = b.stop().await;
    a.auth()
        .delete_user(bearer(
            &admin.access_token,
            apb::DeleteUserRequest {
                user_id: user.id.clone(),
            },
        ))
        .await
        .expect("deleting does not wait for billing");
    let pending = || async {
        a.app()
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                a.app().db.get_database_backend(),
                "SELECT id FROM outbox",
            ))
            .await
            .expect("outbox")
            .len()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pending().await, 1, "the notice waits in auth's outbox");

    // Billing comes back on its database; the next attempt delivers the notice.
    let b = b.start(&["billing"], billing_config).await;
    a.clock().advance(chrono::Duration::minutes(10));
    let mut delivered = false;
    for _ in 0..100 {
        if pending().await == 0 {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered, "delivered once billing answered");
    let row = b
        .app()
        .db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            b.app().db.get_database_backend(),
            "SELECT user_deleted FROM accounts WHERE user_id = ?",
            [user.id.clone().into()],
        ))
        .await
        .expect("query")
        .expect("account");
    let marked: bool = row.try_get("", "user_deleted").expect("column");
    assert!(marked, "billing marked the account");
}

/// An llmesh JSON export of one conversation with one exchange.
fn export_of_one() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": "llmesh.conversations.v1",
        "conversations": [{
            "id": "00000000-0000-7000-8000-000000000001",
            "title": "Moved in",
            "model": CHAT_MODEL,
            "system_prompt": "",
            "pinned": false,
            "archived": false,
            "tags": [],
            "created_at": "2026-11-01T12:00:00Z",
            "updated_at": "2026-11-01T12:00:00Z",
            "active_leaf_id": "00000000-0000-7000-8000-000000000003",
            "messages": [
                {"id": "00000000-0000-7000-8000-000000000002", "parent_id": null, "role": "user",
                 "content": "hello there", "state": "complete", "created_at": "2026-11-01T12:00:00Z"},
                {"id": "00000000-0000-7000-8000-000000000003", "parent_id": "00000000-0000-7000-8000-000000000002",
                 "role": "assistant", "content": "hi", "state": "complete", "created_at": "2026-11-01T12:00:01Z"}
            ]
        }]
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chat_copies_share_stops_and_uploads() {
    use llmesh_proto::chat::v1::chat_archive_service_client::ChatArchiveServiceClient;
    use sha2::{Digest, Sha256};

    // One Postgres database; A runs auth, billing and llm; B1 and B2 are two copies of chat.
    let models = llmesh_tests::models::models_dir();
    let Some(a) = TestServer::start_services(Backend::Postgres, &["auth", "billing", "llm"], |c| {
        c.peers.service_token = Some(TOKEN.into());
        c.llm.models_dir = models.display().to_string();
    })
    .await
    else {
        return;
    };
    let a_url = a.url.clone();
    let chat_copy = move |c: &mut llmesh::Config| {
        c.peers.service_token = Some(TOKEN.into());
        c.peers.auth_url = Some(a_url.clone());
        c.peers.llm_url = Some(a_url.clone());
        c.chat.auto_title = false;
    };
    let b1 = a.another(&["chat"], chat_copy.clone()).await;
    let b2 = a.another(&["chat"], chat_copy).await;
    let (_, tokens) = a.signup("user@example.com").await;
    let user = tokens.access_token;

    // The reply streams from B1; StopReply reaches it through B2.
    let mut c1 = ChatServiceClient::new(b1.channel.clone());
    let mut c2 = ChatServiceClient::new(b2.channel.clone());
    let conv = conversation(&mut c1, &user).await;
    let reply = stop_after_three_deltas(&mut c1, &mut c2, &user, &conv).await;
    assert_eq!(reply.state, pb::MessageState::Stopped as i32);
    assert!(reply.usage.expect("usage").completion_tokens < 2000);
    let idle = c2
        .stop_reply(bearer(
            &user,
            pb::StopReplyRequest {
                conversation_id: conv.clone(),
            },
        ))
        .await
        .expect("stop")
        .into_inner();
    assert!(!idle.stopped, "nothing runs any more");

    // An upload whose chunks go to either copy, finished on one and imported on the other.
    let bytes = export_of_one();
    let mut a1 = ChatArchiveServiceClient::new(b1.channel.clone());
    let mut a2 = ChatArchiveServiceClient::new(b2.channel.clone());
    let begun = a1
        .begin_upload(bearer(
            &user,
            pb::BeginUploadRequest {
                file_name: "conversations.json".into(),
                size_bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            },
        ))
        .await
        .expect("begin on B1")
        .into_inner();
    let mut offset = 0;
    for (i, chunk) in bytes.chunks(100).enumerate() {
        let client = if i % 2 == 0 { &mut a2 } else { &mut a1 };
        let request = || {
            bearer(
                &user,
                pb::AppendUploadChunkRequest {
                    upload_id: begun.upload_id.clone(),
                    offset,
                    data: chunk.to_vec(),
                },
            )
        };
        client.append_upload_chunk(request()).await.expect("chunk");
        // A retried chunk (its answer lost) is accepted again, not doubled.
        let again = client
            .append_upload_chunk(request())
            .await
            .expect("the same chunk again")
            .into_inner();
        offset += chunk.len() as u64;
        assert_eq!(again.received_bytes, offset);
    }
    a2.finish_upload(bearer(
        &user,
        pb::FinishUploadRequest {
            upload_id: begun.upload_id.clone(),
        },
    ))
    .await
    .expect("finish on B2");
    let mut stream = a1
        .import_conversations(bearer(
            &user,
            pb::ImportConversationsRequest {
                upload_id: begun.upload_id.clone(),
                source: pb::ImportSource::LlmeshJson as i32,
            },
        ))
        .await
        .expect("import on B1")
        .into_inner();
    let mut imported = None;
    while let Some(m) = stream.message().await.expect("event") {
        if let Some(pb::import_conversations_response::Event::Report(r)) = m.event {
            imported = Some(r.imported);
        }
    }
    assert_eq!(imported, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_migrate_once() {
    let Some(db) = llmesh_tests::TestDb::create(Backend::Postgres).await else {
        return;
    };
    let clock = || std::sync::Arc::new(llmesh_kit::ManualClock::new(chrono::Utc::now()));
    let start = |services: &'static [&'static str]| {
        llmesh_tests::StoppedServer {
            clock: clock(),
            db: db.shared(),
        }
        .start(services, |c| c.peers.service_token = Some(TOKEN.into()))
    };
    // Three processes against one empty database at once: one migrates, two wait.
    let (a, b, c) = tokio::join!(
        start(&["auth", "billing"]),
        start(&["auth", "billing"]),
        start(&["auth", "billing"])
    );
    let applied = a
        .app()
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            a.app().db.get_database_backend(),
            "SELECT version FROM seaql_migrations",
        ))
        .await
        .expect("migrations table")
        .len();
    assert_eq!(applied, llmesh_migration::Migrator::migrations().len());
    for s in [&a, &b, &c] {
        s.signup(&format!("{}@example.com", s.app().server.local_addr.port()))
            .await;
    }
}

/// Waits (up to 30 s) until `check` holds for the model list `s` answers.
async fn until_models(
    s: &TestServer,
    token: &str,
    what: &str,
    check: impl Fn(&[llmesh_proto::llm::v1::Model]) -> bool,
) -> Vec<llmesh_proto::llm::v1::Model> {
    use llmesh_proto::llm::v1 as lpb;
    let mut llm = lpb::llm_service_client::LlmServiceClient::new(s.channel.clone());
    let mut last = Vec::new();
    for _ in 0..300 {
        last = llm
            .list_models(bearer(token, lpb::ListModelsRequest {}))
            .await
            .expect("list")
            .into_inner()
            .models;
        if check(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}: {last:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_llm_processes_follow_one_catalog() {
    use llmesh_proto::llm::v1 as lpb;
    let gguf = llmesh_tests::models::chat_model_path();
    // A: auth, billing and llm; B: a second llm. One Postgres, a models directory each.
    let Some(a) = TestServer::start_services(Backend::Postgres, &["auth", "billing", "llm"], |c| {
        c.peers.service_token = Some(TOKEN.into());
    })
    .await
    else {
        return;
    };
    let a_url = a.url.clone();
    let b = a
        .another(&["llm"], move |c| {
            c.peers.service_token = Some(TOKEN.into());
            c.peers.auth_url = Some(a_url.clone());
            c.peers.billing_url = Some(a_url.clone());
        })
        .await;
    let b_replica = b.app().llm.as_ref().expect("llm").replica().to_owned();
    let a_replica = a.app().llm.as_ref().expect("llm").replica().to_owned();
    let (_, admin) = a.signup("admin@example.com").await;
    let admin = admin.access_token;
    let state_on = |m: &lpb::Model, replica: &str| {
        m.replicas
            .iter()
            .find(|r| r.replica == replica)
            .map(|r| r.state)
    };

    // Pulled through A: B fetches the same bytes from the same source by itself.
    let mut llm_a = lpb::llm_service_client::LlmServiceClient::new(a.channel.clone());
    let mut pull = llm_a
        .pull_model(bearer(
            &admin,
            lpb::PullModelRequest {
                source: format!("file:{}", gguf.display()),
                id: "copy".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("pull on A")
        .into_inner();
    while pull.message().await.expect("progress").is_some() {}
    let models = until_models(&b, &admin, "B has its own copy", |ms| {
        ms.iter().any(|m| {
            m.id == "copy" && state_on(m, &b_replica) == Some(lpb::ModelState::Available as i32)
        })
    })
    .await;
    let copy = models.iter().find(|m| m.id == "copy").expect("listed");
    assert_eq!(copy.architecture, "llama");
    assert!(b.db.scratch().join("models/copy/manifest.json").is_file());

    // LoadModel through A loads it in B too; UnloadModel through B unloads it in A.
    llm_a
        .load_model(bearer(&admin, lpb::LoadModelRequest { id: "copy".into() }))
        .await
        .expect("load on A");
    until_models(&a, &admin, "both processes loaded it", |ms| {
        ms.iter().any(|m| {
            m.id == "copy"
                && state_on(m, &a_replica) == Some(lpb::ModelState::Loaded as i32)
                && state_on(m, &b_replica) == Some(lpb::ModelState::Loaded as i32)
        })
    })
    .await;
    let mut llm_b = lpb::llm_service_client::LlmServiceClient::new(b.channel.clone());
    llm_b
        .unload_model(bearer(
            &admin,
            lpb::UnloadModelRequest { id: "copy".into() },
        ))
        .await
        .expect("unload on B");
    until_models(&a, &admin, "both processes unloaded it", |ms| {
        ms.iter().any(|m| {
            m.id == "copy"
                && state_on(m, &a_replica) == Some(lpb::ModelState::Available as i32)
                && state_on(m, &b_replica) == Some(lpb::ModelState::Available as i32)
        })
    })
    .await;

    // DeleteModel through B removes A's copy too.
    llm_b
        .delete_model(bearer(
            &admin,
            lpb::DeleteModelRequest { id: "copy".into() },
        ))
        .await
        .expect("delete on B");
    until_models(&a, &admin, "the model is gone", |ms| {
        !ms.iter().any(|m| m.id == "copy")
    })
    .await;
    let mut gone = false;
    for _ in 0..100 {
        if !a.db.scratch().join("models/copy").exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "A deleted its copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_is_not_serving_until_its_default_model_is_ready() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let models = llmesh_tests::models::models_dir();
    let registry = llmesh_llm::registry::Registry::open(&models).expect("registry");
    let embedding = registry
        .path_of(&registry.get("all-minilm-l6-v2").expect("embedding model"))
        .display()
        .to_string();
    let gguf = llmesh_tests::models::chat_model_path();
    // The default chat model comes through a named pipe, so its pull waits for the test.
    let db = llmesh_tests::TestDb::create(Backend::Sqlite)
        .await
        .expect("sqlite");
    let pipe = db.scratch().join("model.pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    // The pipe's writer waits for the word to feed the model. Should the test fail before
    // that, the word never comes: the writer then opens and closes the pipe, so the pull
    // blocked on it reads an empty file and ends (the runtime cannot shut down while it
    // waits on the pipe).
    let (feed, fed) = std::sync::mpsc::channel::<()>();
    let writer = {
        let pipe = pipe.clone();
        std::thread::spawn(move || {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .open(&pipe)
                .expect("open the pipe");
            if fed.recv().is_ok() {
                let mut input = std::fs::File::open(gguf).expect("model");
                std::io::copy(&mut input, &mut out).expect("feed the pipe");
            }
        })
    };
    let port = free_port();
    let mut config = llmesh_tests::test_config(&db);
    config.server.bind = format!("127.0.0.1:{port}");
    config.llm.pull_defaults = true;
    config.llm.default_chat_source = format!("file:{}", pipe.display());
    config.llm.default_embedding_source = format!("file:{embedding}");
    config.llm.load_at_start = None;
    let starting = tokio::spawn(async move {
        llmesh::start(
            config,
            &llmesh::default_services(),
            std::sync::Arc::new(llmesh_kit::SystemClock),
            &|_, _| {},
            std::future::pending(),
        )
        .await
    });
    let url = format!("http://127.0.0.1:{port}");
    let mut health = None;
    for _ in 0..200 {
        if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
        {
            health = Some(HealthClient::new(channel));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = health.expect("the server answers while it prepares");
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await
                .expect("check")
                .into_inner()
                .status
        }
    };
    let mut settled = false;
    for _ in 0..200 {
        if status(llmesh_auth::SERVICE_NAME).await == ServingStatus::Serving as i32 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled, "auth needs nothing and is ready");
    assert_eq!(
        status(llmesh_llm::SERVICE_NAME).await,
        ServingStatus::NotServing as i32,
        "llm waits for its model"
    );
    assert_eq!(status("").await, ServingStatus::NotServing as i32);

    // The model arrives; llm loads it and reports SERVING, and so does the process.
    feed.send(()).expect("the writer waits");
    let app = starting.await.expect("task").expect("server starts");
    writer.join().expect("writer");
    let mut serving = false;
    for _ in 0..200 {
        if status(llmesh_llm::SERVICE_NAME).await == ServingStatus::Serving as i32
            && status("").await == ServingStatus::Serving as i32
        {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        serving,
        "llm and the process are ready once the model is loaded"
    );
    app.server.shutdown().await.expect("shutdown");
    drop(db);
}

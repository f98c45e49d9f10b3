//! Services in separate processes (servers on their own ports, talking gRPC): chat apart
//! from llm (replies, Stop, deadlines that follow the call), a peer that is down answered
//! as UNAVAILABLE naming it, and auth's deleted-user notice surviving billing being down.

use std::time::Duration;

use llmesh_proto::auth::v1 as apb;
use llmesh_proto::billing::v1 as bpb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_proto::chat::v1 as pb;
use llmesh_proto::chat::v1::chat_service_client::ChatServiceClient;
use llmesh_proto::llm::v1::SamplingParams;
use llmesh_tests::{Backend, TestServer, bearer};
use sea_orm::ConnectionTrait;
use tonic::Code;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-split";
const CHAT_MODEL: &str = "smollm2-135m-instruct";

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

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
    let mut billing = BillingServiceClient::new(a.channel.clone());
    billing
        .set_price(bearer(
            &admin.access_token,
            bpb::SetPriceRequest {
                model: CHAT_MODEL.into(),
                input_micros_per_mtok: 1_000_000,
                output_micros_per_mtok: 2_000_000,
            },
        ))
        .await
        .expect("price");
    billing
        .adjust_balance(bearer(
            &admin.access_token,
            bpb::AdjustBalanceRequest {
                user_id: user.id.clone(),
                amount_micros: 100_000,
                reason: "test".into(),
                idempotency_key: "fund".into(),
            },
        ))
        .await
        .expect("credit");

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
    let mut stream = c
        .send_message(bearer(
            &user_token,
            pb::SendMessageRequest {
                conversation_id: conv.clone(),
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
                    let stopped = c
                        .stop_reply(bearer(
                            &user_token,
                            pb::StopReplyRequest {
                                conversation_id: conv.clone(),
                            },
                        ))
                        .await
                        .expect("stop")
                        .into_inner()
                        .stopped;
                    assert!(stopped);
                }
            }
            Some(pb::reply_event::Event::AssistantMessage(a)) => last = Some(a),
            _ => {}
        }
    }
    let stopped = last.expect("stored");
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
        a.app
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
        a.app
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                a.app.db.get_database_backend(),
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
    a.clock.advance(chrono::Duration::minutes(10));
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
        .app
        .db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            b.app.db.get_database_backend(),
            "SELECT user_deleted FROM accounts WHERE user_id = ?",
            [user.id.clone().into()],
        ))
        .await
        .expect("query")
        .expect("account");
    let marked: bool = row.try_get("", "user_deleted").expect("column");
    assert!(marked, "billing marked the account");
}

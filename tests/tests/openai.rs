//! The OpenAI-compatible door (`/v1/…` on the server's port) driven by the official
//! `openai` Python package (tests/openai_check.py, run from .venv) and the `openai` npm
//! package (tests/openai_check.mjs): models, chat and legacy
//! completions whole and streamed with usage, embeddings (float and base64), the async
//! client, and the errors OpenAI's clients expect (401, 404, 400 naming the field, 429 with
//! retry-after, 402 on an empty balance). Then the ledger: every call was billed like a
//! gRPC call, and a client that left mid-stream paid only for what was produced.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use llmesh_proto::billing::v1 as bpb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_tests::{Backend, TestServer, bearer, price_and_credit};

const CHAT: &str = "smollm2-135m-instruct";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn usage(s: &TestServer, token: &str) -> (u64, u64, i64) {
    let rows = BillingServiceClient::new(s.channel.clone())
        .list_usage(bearer(
            token,
            bpb::ListUsageRequest {
                group_by: bpb::UsageGrouping::Model as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("usage")
        .into_inner();
    let row = rows.rows.iter().find(|r| r.key == CHAT);
    row.map(|r| {
        let t = r.tokens.unwrap_or_default();
        (
            r.requests,
            u64::from(t.completion_tokens),
            r.spend.as_ref().map_or(0, |m| m.micros),
        )
    })
    .unwrap_or_default()
}

/// An API key of a new, funded user held to `per_minute` requests a minute (a quota on
/// the user, which its keys inherit).
async fn limited_key_for(
    s: &TestServer,
    admin_token: &str,
    email: &str,
    per_minute: u32,
) -> String {
    let (user, tokens) = s.signup(email).await;
    let mut billing = BillingServiceClient::new(s.channel.clone());
    billing
        .adjust_balance(bearer(
            admin_token,
            bpb::AdjustBalanceRequest {
                user_id: user.id.clone(),
                amount_micros: 1_000_000,
                reason: "test".into(),
                idempotency_key: format!("credit-{email}"),
            },
        ))
        .await
        .expect("credit");
    billing
        .set_quota(bearer(
            admin_token,
            bpb::SetQuotaRequest {
                subject: Some(bpb::set_quota_request::Subject::UserId(user.id.clone())),
                quota: Some(bpb::Quota {
                    requests_per_minute: per_minute,
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("quota");
    s.api_key(&tokens.access_token, "limited").await.secret
}

/// Runs the client against one shape: one process, or the mesh through its nginx edge
/// (routes.yaml sends /v1/ to the llm processes).
async fn against(backend: Backend) {
    let python = repo().join(".venv/bin/python");
    let has_openai = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openai {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs the openai package in .venv (tests/requirements.txt)"
        );
        eprintln!(
            "skipping: .venv has no openai package (scripts/test installs tests/requirements.txt)"
        );
        return;
    }
    let models = llmesh_tests::models::models_dir();
    let Some(s) = TestServer::start_with(backend, |c| {
        c.llm.models_dir = models.display().to_string();
    })
    .await
    else {
        return;
    };
    // The edge serves HTTP/1.1 (what OpenAI's clients speak) on a listener of its own.
    let url = s
        .mesh
        .as_ref()
        .map_or_else(|| s.url.clone(), |m| m.http_url.clone());
    let (admin, admin_tokens) = s.signup("admin@example.com").await;
    let admin_token = admin_tokens.access_token;
    price_and_credit(&s.channel, &admin_token, CHAT, &admin.id, 10_000_000).await;
    let key = s.api_key(&admin_token, "openai sdk").await.secret;

    let limited_key = limited_key_for(&s, &admin_token, "limited@example.com", 2).await;
    let (_, broke_tokens) = s.signup("broke@example.com").await;
    let broke_key = s.api_key(&broke_tokens.access_token, "broke").await.secret;

    // Python, then Node, each with a rate-limited key of its own (a minute's allowance
    // is spent once).
    let node_limited = limited_key_for(&s, &admin_token, "node-limited@example.com", 1).await;
    for (name, program, script, limited) in [
        (
            "python",
            python.display().to_string(),
            "tests/openai_check.py",
            &limited_key,
        ),
        (
            "node",
            "node".to_owned(),
            "tests/openai_check.mjs",
            &node_limited,
        ),
    ] {
        let out = Command::new(&program)
            .arg(repo().join(script))
            .env("LLMESH_URL", &url)
            .env("LLMESH_KEY", &key)
            .env("LLMESH_LIMITED_KEY", limited)
            .env("LLMESH_BROKE_KEY", &broke_key)
            .current_dir(repo())
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{name}:\n{text}");
        assert!(out.status.success(), "the {name} client: {text}");
    }

    // Billed like gRPC calls: every completion is in the admin's usage, priced at 1 µ per
    // prompt token and 2 per completion token. The stream the client left settles shortly
    // after; it must come to far less than its 400 tokens.
    let mut last = (0, 0, 0);
    for _ in 0..100 {
        last = usage(&s, &admin_token).await;
        if last.0 >= 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (requests, completion, spend) = last;
    assert!(requests >= 11, "every completion reaches billing: {last:?}");
    assert!(spend > 0 && spend >= 2 * completion as i64, "{last:?}");
    assert!(
        completion < 24 + 16 + 12 + 12 + 3 * 8 + 16 + 12 + 2 * 150,
        "the stream the client left was billed for what it produced, not its 400 tokens: {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_works_against_one_process() {
    against(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_works_through_the_mesh_edge() {
    against(Backend::Mesh).await;
}

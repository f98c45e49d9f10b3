//! Observability over real sockets: Prometheus metrics scraped during real traffic (and
//! accepted by promtool), the x-request-id every answer carries.

use llmesh_proto::llm::v1 as pb;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;
use llmesh_tests::{Backend, TestServer, bearer, http_get, promtool_accepts};

const CHAT: &str = "smollm2-135m-instruct";

/// The value of the sample `name{labels}` (labels as rendered, in order), or 0.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn generate(s: &TestServer, token: &str, max_tokens: u32) {
    let mut llm = LlmServiceClient::new(s.channel.clone());
    let mut stream = llm
        .generate(bearer(
            token,
            pb::GenerateRequest {
                model: CHAT.into(),
                input: Some(pb::generate_request::Input::Prompt("1, 2, 3, 4,".into())),
                sampling: Some(pb::SamplingParams {
                    temperature: Some(0.0),
                    max_tokens: Some(max_tokens),
                    ignore_eos: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("generate")
        .into_inner();
    while stream.message().await.expect("stream").is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_and_pass_promtool() {
    let models = llmesh_tests::models::models_dir();
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.llm.models_dir = models.display().to_string();
        c.llm.load_at_start = Some(vec![CHAT.into()]);
    })
    .await
    .expect("sqlite");
    let (_, tokens) = s.signup("user@example.com").await;
    let (status, headers, before) = http_get(&format!("{}/metrics", s.url)).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    generate(&s, &tokens.access_token, 12).await;
    let (_, _, after) = http_get(&format!("{}/metrics", s.url)).await;

    let generate_ok = r#"llmesh_rpc_requests_total{code="Ok",method="Generate",service="llmesh.llm.v1.LlmService"}"#;
    assert_eq!(
        sample(&after, generate_ok) - sample(&before, generate_ok),
        1.0
    );
    let register_ok = r#"llmesh_rpc_requests_total{code="Ok",method="Register",service="llmesh.auth.v1.AuthService"}"#;
    assert_eq!(sample(&after, register_ok), 1.0);
    let tokens_out = r#"llmesh_llm_generated_tokens_total{model="smollm2-135m-instruct"}"#;
    assert_eq!(
        sample(&after, tokens_out) - sample(&before, tokens_out),
        12.0
    );
    let prompt = r#"llmesh_llm_prompt_tokens_total{model="smollm2-135m-instruct"}"#;
    assert!(sample(&after, prompt) > sample(&before, prompt));
    let ttft = r#"llmesh_llm_time_to_first_token_seconds_count{model="smollm2-135m-instruct"}"#;
    assert_eq!(sample(&after, ttft), 1.0);
    let itl = r#"llmesh_llm_inter_token_latency_seconds_count{model="smollm2-135m-instruct"}"#;
    assert_eq!(
        sample(&after, itl),
        11.0,
        "one gap between each of 12 tokens"
    );
    let steps = r#"llmesh_llm_forward_steps_total{model="smollm2-135m-instruct"}"#;
    assert!(sample(&after, steps) >= 12.0);
    let memory = r#"llmesh_llm_model_memory_bytes{model="smollm2-135m-instruct"}"#;
    assert!(sample(&after, memory) > 50e6, "the loaded model's memory");
    assert!(after.contains(r#"llmesh_llm_queue_depth{model="smollm2-135m-instruct"} 0"#));
    assert!(after.contains(r#"llmesh_llm_running_sequences{model="smollm2-135m-instruct"} 0"#));
    for outcome in ["held", "settled"] {
        let series = format!(r#"llmesh_billing_reservations_total{{outcome="{outcome}"}}"#);
        assert_eq!(
            sample(&after, &series) - sample(&before, &series),
            1.0,
            "{outcome}"
        );
    }
    // The in-process calls from llm to billing are RPCs too.
    let reserve = r#"llmesh_rpc_requests_total{code="Ok",method="Reserve",service="llmesh.billing.v1.BillingService"}"#;
    assert!(sample(&after, reserve) >= 1.0);
    promtool_accepts(&after);

    // A refused call is counted under its code.
    let mut llm = LlmServiceClient::new(s.channel.clone());
    llm.get_model(bearer(
        &tokens.access_token,
        pb::GetModelRequest {
            id: "no-such-model".into(),
        },
    ))
    .await
    .expect_err("missing");
    let (_, _, later) = http_get(&format!("{}/metrics", s.url)).await;
    assert_eq!(
        sample(
            &later,
            r#"llmesh_rpc_requests_total{code="NotFound",method="GetModel",service="llmesh.llm.v1.LlmService"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn metrics_can_have_a_port_of_their_own() {
    let port = llmesh_tests::free_port();
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.server.metrics_bind = format!("127.0.0.1:{port}");
        c.server.web_dir = "none".into();
    })
    .await
    .expect("sqlite");
    s.signup("user@example.com").await;
    let (status, _, body) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(body.contains("# TYPE llmesh_rpc_requests_total counter"));
    let (status, _, _) = http_get(&format!("{}/metrics", s.url)).await;
    assert_ne!(status, http::StatusCode::OK, "not on the main port then");
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let s = TestServer::start(Backend::Sqlite).await.expect("sqlite");
    let mut auth = s.auth();
    let ok = auth
        .get_sign_up_info(llmesh_proto::auth::v1::GetSignUpInfoRequest {})
        .await
        .expect("public");
    let id = ok.metadata().get("x-request-id").expect("x-request-id");
    assert_eq!(id.len(), 32);
    // An error's id is the one its message names; a caller's own id is kept.
    let mut req = tonic::Request::new(llmesh_proto::auth::v1::GetMeRequest {});
    req.metadata_mut()
        .insert("x-request-id", "edge-1234".parse().expect("ascii"));
    let err = auth.get_me(req).await.expect_err("not signed in");
    assert_eq!(
        err.metadata()
            .get("x-request-id")
            .map(|v| v.to_str().expect("ascii")),
        Some("edge-1234")
    );
}

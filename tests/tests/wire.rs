//! What crosses the wire around the handlers: grpc-web framing over HTTP/1.1, malformed
//! credentials, the message-size limit, health, the service credential, and the clients
//! other processes use to trust auth.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use llmesh_auth::remote::{RemoteApiKeyResolver, RemoteKeySource};
use llmesh_kit::authn::ApiKeyResolver;
use llmesh_kit::jwt::TokenVerifier;
use llmesh_proto::auth::v1 as pb;
use llmesh_tests::{Backend, PASSWORD, TestServer, bearer};
use prost::Message;
use tonic::Code;

const SERVICE_TOKEN: &str = "0123456789abcdef0123456789abcdef-test";

#[tokio::test]
async fn grpc_web_login_over_http1() {
    let s = TestServer::start(Backend::Sqlite).await.expect("sqlite");
    s.signup("web@example.com").await;

    let message = pb::LoginRequest {
        email: "web@example.com".into(),
        password: PASSWORD.into(),
    }
    .encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = http::Request::post(format!("{}/llmesh.auth.v1.AuthService/Login", s.url))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", "http://127.0.0.1")
        .body(Full::new(frame.freeze()))
        .expect("request");
    let response = client.request(request).await.expect("http/1.1 response");
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/grpc-web")
    );
    let mut body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();

    // A data frame with the LoginResponse, then a trailer frame with grpc-status 0.
    let mut reply = None;
    let mut trailers = String::new();
    while body.has_remaining() {
        let flag = body.get_u8();
        let len = body.get_u32() as usize;
        let chunk = body.split_to(len);
        if flag & 0x80 == 0 {
            reply = Some(pb::LoginResponse::decode(chunk).expect("LoginResponse"));
        } else {
            trailers = String::from_utf8(chunk.to_vec()).expect("trailers");
        }
    }
    let reply = reply.expect("a data frame");
    assert_eq!(reply.user.expect("user").email, "web@example.com");
    assert!(!reply.tokens.expect("tokens").access_token.is_empty());
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}

#[tokio::test]
async fn malformed_credentials_are_unauthenticated() {
    let s = TestServer::start(Backend::Sqlite).await.expect("sqlite");
    let (_, tokens) = s.signup("m@example.com").await;
    let mut auth = s.auth();
    let cases: Vec<(&str, String)> = vec![
        ("authorization", "Basic dXNlcjpwYXNz".into()),
        ("authorization", "Bearer".into()),
        ("authorization", "Bearer not.a.jwt".into()),
        ("authorization", "Bearer a b".into()),
        ("authorization", "Bearer lmk_unknown_key".into()),
        ("x-api-key", "no-prefix".into()),
        ("x-llmesh-service-token", "wrong".into()),
        // A forwarded principal without the service credential is a forgery.
        ("x-llmesh-forwarded-user", "someone".into()),
        ("authorization", format!("Bearer {}x", tokens.access_token)),
    ];
    for (key, value) in cases {
        let mut req = tonic::Request::new(pb::GetMeRequest {});
        req.metadata_mut()
            .insert(key, value.parse().expect("ascii"));
        let status = auth.get_me(req).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{key}: {value}");
    }
    // Both headers at once is ambiguous.
    let mut req = bearer(&tokens.access_token, pb::GetMeRequest {});
    req.metadata_mut()
        .insert("x-api-key", "lmk_something".parse().expect("ascii"));
    assert_eq!(
        auth.get_me(req).await.expect_err("refused").code(),
        Code::Unauthenticated
    );
    // Public RPCs still refuse a bad credential rather than ignore it.
    let mut req = tonic::Request::new(pb::GetPublicKeysRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer garbage".parse().expect("ascii"));
    assert_eq!(
        auth.get_public_keys(req).await.expect_err("refused").code(),
        Code::Unauthenticated
    );
    // A token signed by some other server's key is not ours.
    let other = TestServer::start(Backend::Sqlite).await.expect("sqlite");
    let (_, foreign) = other.signup("m@example.com").await;
    let status = auth
        .get_me(bearer(&foreign.access_token, pb::GetMeRequest {}))
        .await
        .expect_err("foreign token");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_server_stays_up() {
    let s = TestServer::start_with(Backend::Sqlite, |c| c.server.max_message_bytes = 64 * 1024)
        .await
        .expect("sqlite");
    let mut auth = s.auth();
    let status = auth
        .register(pb::RegisterRequest {
            email: "big@example.com".into(),
            password: PASSWORD.into(),
            display_name: "x".repeat(100 * 1024),
        })
        .await
        .expect_err("too large");
    // tonic refuses a message over max_decoding_message_size with OUT_OF_RANGE.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    auth.get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .expect("still serving");
    s.signup("small@example.com").await;
}

#[tokio::test]
async fn health_reports_each_service_and_shutdown_drains() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let s = TestServer::start(Backend::Sqlite).await.expect("sqlite");
    let mut health = HealthClient::new(s.channel.clone());
    for service in [
        "",
        "llmesh.auth.v1.AuthService",
        "llmesh.llm.v1.LlmService",
        "llmesh.billing.v1.BillingService",
        "llmesh.chat.v1.ChatService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    // The sandbox is served too (NOT_SERVING only while its Python is being prepared).
    let status = health
        .check(HealthCheckRequest {
            service: "llmesh.sandbox.v1.SandboxService".into(),
        })
        .await
        .expect("the sandbox is known")
        .into_inner()
        .status;
    assert!(
        [
            ServingStatus::Serving as i32,
            ServingStatus::NotServing as i32
        ]
        .contains(&status),
        "{status}"
    );
    let status = health
        .check(HealthCheckRequest {
            service: "llmesh.nothing.v1.NothingService".into(),
        })
        .await
        .expect_err("not served here");
    assert_eq!(status.code(), Code::NotFound);

    let addr = s.app().server.local_addr;
    tokio::time::timeout(Duration::from_secs(20), s.into_app().server.shutdown())
        .await
        .expect("shutdown finishes within the grace period")
        .expect("clean shutdown");
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the port is closed after shutdown");
}

#[tokio::test]
async fn internal_rpcs_take_the_service_credential() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.peers.service_token = Some(SERVICE_TOKEN.into())
    })
    .await
    .expect("sqlite");
    let (_, tokens) = s.signup("m@example.com").await;
    let mut auth = s.auth();
    let secret = s.api_key(&tokens.access_token, "k").await.secret;
    let mut req = tonic::Request::new(pb::ResolveApiKeyRequest {
        secret: secret.clone(),
    });
    req.metadata_mut().insert(
        "x-llmesh-service-token",
        SERVICE_TOKEN.parse().expect("ascii"),
    );
    let resolved = auth
        .resolve_api_key(req)
        .await
        .expect("service may")
        .into_inner();
    assert_eq!(resolved.role, llmesh_proto::common::v1::Role::Admin as i32);

    // A service forwarding a user keeps the user's rights: it gains no admin powers.
    let mut req = bearer(&secret, pb::ListUsersRequest::default());
    req.metadata_mut().insert(
        "x-llmesh-service-token",
        SERVICE_TOKEN.parse().expect("ascii"),
    );
    assert_eq!(
        auth.list_users(req)
            .await
            .expect_err("no escalation")
            .code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn other_processes_verify_tokens_and_keys_through_auth() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.peers.service_token = Some(SERVICE_TOKEN.into())
    })
    .await
    .expect("sqlite");
    let (user, tokens) = s.signup("m@example.com").await;
    let mut auth = s.auth();

    let peer = || llmesh_kit::peer::Peer::remote("auth", "peers.auth_url", &s.url).expect("url");
    let keys = std::sync::Arc::new(RemoteKeySource::new(peer()));
    let verifier = TokenVerifier::new(keys, s.clock().clone());
    let principal = verifier
        .verify(&tokens.access_token)
        .await
        .expect("verified with fetched keys");
    assert_eq!(principal.user_id, user.id);

    let created = s.api_key(&tokens.access_token, "k").await;
    let no_cache = RemoteApiKeyResolver::new(peer(), SERVICE_TOKEN.into(), Duration::ZERO);
    let cached = RemoteApiKeyResolver::new(peer(), SERVICE_TOKEN.into(), Duration::from_secs(60));
    let p = no_cache.resolve(&created.secret).await.expect("resolves");
    assert_eq!(p.user_id, user.id);
    cached.resolve(&created.secret).await.expect("resolves");

    auth.revoke_api_key(bearer(
        &tokens.access_token,
        pb::RevokeApiKeyRequest {
            id: created.api_key.expect("key").id,
        },
    ))
    .await
    .expect("revoke");
    let err = no_cache
        .resolve(&created.secret)
        .await
        .expect_err("revoked");
    assert_eq!(err.code, llmesh_kit::ErrorCode::Unauthenticated);
    // The cache is capped at 5 seconds whatever was asked, so the revocation still lands soon.
    cached
        .resolve(&created.secret)
        .await
        .expect("served from cache");
    tokio::time::sleep(llmesh_auth::remote::MAX_API_KEY_CACHE + Duration::from_millis(200)).await;
    assert!(
        cached.resolve(&created.secret).await.is_err(),
        "cache expired"
    );

    let wrong = RemoteApiKeyResolver::new(peer(), "wrong".into(), Duration::ZERO);
    assert!(wrong.resolve("lmk_whatever").await.is_err());
}

async fn get(url: &str, content_type: Option<&str>) -> (http::StatusCode, http::HeaderMap, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = http::Request::get(url).header("accept-encoding", "identity");
    if let Some(ct) = content_type {
        // An RPC: gRPC calls are POSTs.
        req = req
            .method(http::Method::POST)
            .header("content-type", ct)
            .header("x-grpc-web", "1");
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn the_web_ui_shares_the_port_with_the_rpcs() {
    let dir = std::env::temp_dir().join(format!("llmesh-web-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(dir.join("assets")).expect("dist dir");
    std::fs::write(dir.join("index.html"), "<div id=\"root\"></div>").expect("index");
    std::fs::write(dir.join("assets/app-1234.js"), "console.log(1)").expect("asset");
    let web_dir = dir.to_string_lossy().into_owned();
    let s = TestServer::start_with(Backend::Sqlite, move |c| c.server.web_dir = web_dir)
        .await
        .expect("sqlite");

    let (status, headers, body) = get(&format!("{}/", s.url), None).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(body.contains("id=\"root\""));
    let csp = headers["content-security-policy"].to_str().expect("ascii");
    assert!(csp.contains("script-src 'self'") && csp.contains("object-src 'none'"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-cache");

    // The UI's own routes survive a reload.
    let (status, _, body) = get(&format!("{}/c/0190-some-conversation", s.url), None).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(body.contains("id=\"root\""));

    // Hashed assets are cached for good.
    let (status, headers, body) = get(&format!("{}/assets/app-1234.js", s.url), None).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(body, "console.log(1)");
    assert!(
        headers["cache-control"]
            .to_str()
            .expect("ascii")
            .contains("immutable")
    );

    // An unknown RPC is still UNIMPLEMENTED, not a web page.
    let (status, headers, _) = get(
        &format!("{}/llmesh.nope.v1.Nope/Call", s.url),
        Some("application/grpc-web+proto"),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(headers["grpc-status"], "12");

    // Without a built UI, `/` says how to build one.
    let s2 = TestServer::start_with(Backend::Sqlite, |c| {
        c.server.web_dir = "/nonexistent/llmesh-web".into()
    })
    .await
    .expect("sqlite");
    let (status, _, body) = get(&format!("{}/", s2.url), None).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(body.contains("has not been built"), "{body}");
    let _ = std::fs::remove_dir_all(dir);
}

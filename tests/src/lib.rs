//! Shared harness of the end-to-end tests: real servers on 127.0.0.1:0 over real sockets,
//! fresh SQLite files or fresh Postgres databases, a manual clock, and helpers to call RPCs.

pub mod mesh;
pub mod models;
pub mod raw;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chrono::{TimeZone, Utc};
use llmesh::{App, Config};
use llmesh_kit::{Clock, ManualClock};
use llmesh_proto::auth::v1 as pb;
use llmesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use sea_orm::{ConnectionTrait, Database};
use tonic::transport::Channel;

/// Which database a test runs against, and in which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// Postgres with pgvector (PostgreSQL 18 from `scripts/pgvector`): the knowledge
    /// store's Postgres. The database is a Postgres one like any other.
    Pgvector,
    /// Every service in processes of its own (llm and chat twice) on one Postgres (the
    /// one with pgvector), reached through an nginx edge (see [`mesh::Mesh`]).
    Mesh,
}

/// The admin URL of the test Postgres; each test gets its own database on it.
pub fn postgres_admin_url() -> String {
    std::env::var("LLMESH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The admin URL of the Postgres with pgvector (`scripts/pgvector start` prints it).
pub fn pgvector_admin_url() -> String {
    std::env::var("LLMESH_TEST_PGVECTOR_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".into())
}

/// Appends a skipped variant to the file `LLMESH_SKIP_LOG` names (scripts/test counts
/// them in its summary, since cargo's capture hides a skipped test's message).
pub fn record_skip(why: &str) {
    use std::io::Write;
    let Some(path) = std::env::var_os("LLMESH_SKIP_LOG") else {
        return;
    };
    let line = format!(
        "{}: {why}\n",
        std::thread::current().name().unwrap_or("a test")
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "cannot record a skipped test in {}: {e}",
            path.to_string_lossy()
        );
    }
}

/// A fresh, empty database for one test. Postgres databases are dropped at the end of
/// the test when possible; SQLite files live in a temporary directory.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    dir: TempDir,
    /// The Postgres database this test made, and the admin URL it was made through.
    pg: Option<(String, String)>,
}

impl TestDb {
    /// Creates the database, or returns `None` (with the reason printed) when Postgres is
    /// not reachable outside CI. In CI (`CI` set) a missing Postgres fails the test.
    pub async fn create(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = TempDir::new("llmesh-test");
                let url = format!("sqlite://{}/llmesh.db", dir.path.display());
                Some(TestDb {
                    url,
                    backend,
                    dir,
                    pg: None,
                })
            }
            Backend::Postgres | Backend::Mesh | Backend::Pgvector => {
                // The mesh is the production shape, and production Postgres has pgvector.
                let (admin, start) = if backend != Backend::Postgres {
                    (pgvector_admin_url(), "scripts/pgvector start")
                } else {
                    (postgres_admin_url(), "start Postgres")
                };
                // A server that is not there is known in seconds, not after the pool's
                // default 30 s of retries.
                let mut options = sea_orm::ConnectOptions::new(admin.clone());
                options.acquire_timeout(std::time::Duration::from_secs(8));
                let conn = match Database::connect(options).await {
                    Ok(c) => c,
                    Err(e) => {
                        if std::env::var_os("CI").is_some() {
                            panic!("Postgres at {admin} is required in CI ({start}): {e}");
                        }
                        let why =
                            format!("the {backend:?} variant cannot reach {admin} ({start}): {e}");
                        eprintln!("SKIPPED: {why}");
                        record_skip(&why);
                        return None;
                    }
                };
                let name = format!("llmesh_test_{}", uuid::Uuid::new_v4().simple());
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Some(TestDb {
                    url: format!("{base}/{name}"),
                    backend: Backend::Postgres,
                    dir: TempDir::new("llmesh-test"),
                    pg: Some((admin, name)),
                })
            }
        }
    }
}

impl TestDb {
    /// A private directory for this test's files (models, uploads).
    pub fn scratch(&self) -> &std::path::Path {
        &self.dir.path
    }

    /// The same database for another process of the test; the original still owns it.
    pub fn shared(&self) -> TestDb {
        TestDb {
            url: self.url.clone(),
            backend: self.backend,
            dir: TempDir::new("llmesh-test"),
            pg: None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Best effort, on a thread of its own: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    if let Ok(conn) = Database::connect(admin.as_str()).await {
                        let _ = conn
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running llmesh server with a manual clock.
pub struct TestServer {
    app: Option<App>,
    /// The server's clock; a mesh's processes keep real time instead (see [`Self::clock`]).
    clock: Arc<ManualClock>,
    pub channel: Channel,
    pub url: String,
    /// Declared before `db`: the mesh's processes stop before their database goes.
    pub mesh: Option<mesh::Mesh>,
    pub db: TestDb,
}

/// The configuration tests start from: port 0, cheap (but real) argon2id parameters.
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".into();
    config.database.url = db.url.clone();
    config.auth.argon2_memory_kib = 1024;
    config.auth.argon2_iterations = 1;
    // No pulls and no loads unless a test asks: most tests need no model.
    config.llm.models_dir = format!("{}/models", db.scratch().display());
    config.llm.pull_defaults = false;
    config.llm.load_at_start = Some(Vec::new());
    // The Python runtime is fetched (once per machine) and compiled (then cached) only by
    // the tests that run it.
    config.sandbox.runtimes_dir = models::runtimes_dir().display().to_string();
    config.sandbox.prepare_at_start = false;
    config
}

impl TestServer {
    /// Starts every implemented service on a fresh database of `backend`.
    pub async fn start(backend: Backend) -> Option<TestServer> {
        Self::start_with(backend, |_| {}).await
    }

    /// Like [`TestServer::start`], after letting the test adjust the config.
    pub async fn start_with(
        backend: Backend,
        tweak: impl FnOnce(&mut Config),
    ) -> Option<TestServer> {
        let services = llmesh::default_services();
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        Self::start_services(backend, &names, tweak).await
    }

    /// Starts only the named services, as one process of a split deployment.
    pub async fn start_services(
        backend: Backend,
        services: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> Option<TestServer> {
        let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        let db = TestDb::create(backend).await?;
        let mut config = test_config(&db);
        tweak(&mut config);
        if backend == Backend::Mesh {
            return Self::start_mesh(db, config).await;
        }
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
                .single()
                .expect("valid time"),
        ));
        Some(Self::in_process(db, clock, config, &services).await)
    }

    /// Starts `services` in this process on `db` with `clock`, and connects to it.
    async fn in_process(
        db: TestDb,
        clock: Arc<ManualClock>,
        config: Config,
        services: &[String],
    ) -> TestServer {
        let app = llmesh::start(
            config,
            services,
            clock.clone(),
            &|_, _| {},
            std::future::pending(),
        )
        .await
        .expect("server starts");
        let url = format!("http://{}", app.server.local_addr);
        let channel = Channel::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        TestServer {
            app: Some(app),
            clock,
            channel,
            url,
            mesh: None,
            db,
        }
    }

    /// The whole product as a mesh on `db`, reached through its edge.
    async fn start_mesh(db: TestDb, config: Config) -> Option<TestServer> {
        let mesh = mesh::Mesh::start(&db, &config).await?;
        let url = mesh.grpc_url.clone();
        let channel = Channel::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect to the edge");
        Some(TestServer {
            app: None,
            clock: Arc::new(ManualClock::new(Utc::now())),
            channel,
            url,
            mesh: Some(mesh),
            db,
        })
    }

    /// The in-process handles of the server; a test that uses them does not run against
    /// a mesh (its services live in other processes there).
    pub fn app(&self) -> &App {
        self.app
            .as_ref()
            .expect("this test uses the server's in-process handles, which a mesh does not have")
    }

    /// The server's manual clock; a test that moves it does not run against a mesh.
    pub fn clock(&self) -> &Arc<ManualClock> {
        assert!(
            self.mesh.is_none(),
            "this test moves the server's clock, which a mesh's processes do not share"
        );
        &self.clock
    }

    /// Lets time pass between two steps so their timestamps differ: the manual clock
    /// moves by `by`, or, in a mesh (real clocks), a few milliseconds go by.
    pub async fn pass_time(&self, by: chrono::Duration) {
        if self.mesh.is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        } else {
            self.clock.advance(by);
        }
    }

    /// The in-process handles, owned (to shut the server down).
    pub fn into_app(self) -> App {
        self.app
            .expect("this test uses the server's in-process handles, which a mesh does not have")
    }

    /// Stops this server and starts another on the same database, with the clock moved
    /// on by `advance` (as a restart after a crash would find it).
    pub async fn restart(
        self,
        advance: chrono::Duration,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let TestServer {
            app,
            clock,
            db,
            mesh,
            ..
        } = self;
        assert!(mesh.is_none(), "restart is for single-process servers");
        if let Some(app) = app {
            app.server.shutdown().await.expect("shutdown");
        }
        clock.advance(advance);
        let mut config = test_config(&db);
        tweak(&mut config);
        Self::in_process(db, clock, config, &llmesh::default_services()).await
    }

    /// Starts another process running `services` on this server's database (with its own
    /// clock), as a second copy or another part of a split deployment.
    pub async fn another(&self, services: &[&str], tweak: impl FnOnce(&mut Config)) -> TestServer {
        let clock = Arc::new(ManualClock::new(self.clock.now()));
        StoppedServer {
            clock,
            db: self.db.shared(),
        }
        .start(services, tweak)
        .await
    }

    /// Stops this server, keeping its database and clock for [`StoppedServer::start`].
    pub async fn stop(self) -> StoppedServer {
        let TestServer {
            app,
            clock,
            db,
            mesh,
            ..
        } = self;
        assert!(mesh.is_none(), "stop is for single-process servers");
        if let Some(app) = app {
            app.server.shutdown().await.expect("shutdown");
        }
        StoppedServer { clock, db }
    }

    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel.clone())
    }

    /// Registers a user and signs in; returns the user and their tokens.
    pub async fn signup(&self, email: &str) -> (pb::User, pb::TokenPair) {
        let mut auth = self.auth();
        auth.register(pb::RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            display_name: String::new(),
        })
        .await
        .expect("register");
        self.login(email).await
    }

    /// Creates an API key named `name` for the holder of `access_token`.
    pub async fn api_key(&self, access_token: &str, name: &str) -> pb::CreateApiKeyResponse {
        self.auth()
            .create_api_key(bearer(
                access_token,
                pb::CreateApiKeyRequest {
                    name: name.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("create API key")
            .into_inner()
    }

    /// Signs in with the standard test password.
    pub async fn login(&self, email: &str) -> (pb::User, pb::TokenPair) {
        let reply = self
            .auth()
            .login(pb::LoginRequest {
                email: email.into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("login")
            .into_inner();
        (reply.user.expect("user"), reply.tokens.expect("tokens"))
    }
}

/// A server that was stopped: its database and clock, to start it again.
pub struct StoppedServer {
    pub clock: Arc<ManualClock>,
    pub db: TestDb,
}

impl StoppedServer {
    /// Starts `services` again on the same database and clock.
    pub async fn start(self, services: &[&str], tweak: impl FnOnce(&mut Config)) -> TestServer {
        let StoppedServer { clock, db } = self;
        let mut config = test_config(&db);
        tweak(&mut config);
        let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        TestServer::in_process(db, clock, config, &services).await
    }
}

/// Prices `model` at 1 µ-unit per prompt token and 2 per completion token (so every
/// cost is exact) and credits `user_id` with `micros`, as an admin.
pub async fn price_and_credit(
    channel: &Channel,
    admin_token: &str,
    model: &str,
    user_id: &str,
    micros: i64,
) {
    use llmesh_proto::billing::v1 as bpb;
    let mut billing = bpb::billing_service_client::BillingServiceClient::new(channel.clone());
    billing
        .set_price(bearer(
            admin_token,
            bpb::SetPriceRequest {
                model: model.into(),
                input_micros_per_mtok: 1_000_000,
                output_micros_per_mtok: 2_000_000,
                ..Default::default()
            },
        ))
        .await
        .expect("price");
    billing
        .adjust_balance(bearer(
            admin_token,
            bpb::AdjustBalanceRequest {
                user_id: user_id.into(),
                amount_micros: micros,
                reason: "test credit".into(),
                idempotency_key: format!("credit-{}", uuid::Uuid::new_v4()),
            },
        ))
        .await
        .expect("credit");
}

/// The password test accounts use.
pub const PASSWORD: &str = "correct horse battery";

/// Wraps a message in a request that carries `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}

/// Runs a test body against SQLite, against Postgres, and through the mesh (every
/// service in processes of its own behind an nginx edge, on Postgres). For tests that talk
/// to the server only over sockets and never move its clock.
#[macro_export]
macro_rules! every_shape {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::Backend::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mesh() {
                ($body)($crate::Backend::Mesh).await;
            }
        }
    };
}

/// Runs a test body against SQLite and against Postgres.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::Backend::Postgres).await;
            }
        }
    };
}

/// A free port below Linux's ephemeral range (32768 and up), so the ports the kernel hands
/// to other tests' `127.0.0.1:0` servers meanwhile never collide with it. A port is handed
/// out once per test binary: two tests that pick ports for processes they start later can
/// never be given the same one (the second process would fail to bind, and the first
/// would answer in its place).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

/// Lists the llmesh services a server (or an edge) names through server reflection.
pub async fn reflected_services(channel: &Channel) -> std::collections::BTreeSet<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut client = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = stream.message().await.expect("reply").expect("one reply");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|s| s.name)
            .filter(|n| n.starts_with("llmesh."))
            .collect(),
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

/// GETs `url` over HTTP/1.1; returns the status, headers and body text.
pub async fn http_get(url: &str) -> (http::StatusCode, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Runs Prometheus' `promtool check metrics` on a scrape. Without promtool, the check is
/// skipped with a note, except under `CI`, where promtool is required.
pub fn promtool_accepts(scrape: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("promtool is required in CI (apt-get install prometheus): {e}");
            }
            eprintln!("skipping promtool check metrics: promtool is not installed ({e})");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write the scrape");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One ChatGPT conversations.json conversation whose messages form a chain under an empty
/// root, as ChatGPT writes them: user and assistant in turn, `step` seconds apart from
/// `start`, the assistant's replies from `model` (none when empty). Node ids begin with
/// `key`, so several conversations of one file stay distinct.
pub fn chatgpt_chain(
    key: &str,
    title: &str,
    texts: &[String],
    start: f64,
    step: f64,
    model: &str,
) -> serde_json::Value {
    let node = |i: usize| format!("{key}m{i}");
    let root = format!("{key}root");
    let mut mapping = serde_json::Map::new();
    mapping.insert(
        root.clone(),
        serde_json::json!({"id": root, "message": null, "parent": null, "children": [node(0)]}),
    );
    for (i, text) in texts.iter().enumerate() {
        let id = node(i);
        let parent = if i == 0 { root.clone() } else { node(i - 1) };
        let children: Vec<String> = if i + 1 < texts.len() {
            vec![node(i + 1)]
        } else {
            Vec::new()
        };
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let slug = if role == "assistant" { model } else { "" };
        mapping.insert(
            id.clone(),
            serde_json::json!({
                "id": id,
                "parent": parent,
                "children": children,
                "message": {
                    "id": id,
                    "author": {"role": role, "name": null, "metadata": {}},
                    "create_time": start + i as f64 * step,
                    "content": {"content_type": "text", "parts": [text]},
                    "status": "finished_successfully",
                    "metadata": {"model_slug": slug},
                },
            }),
        );
    }
    serde_json::json!({
        "id": format!("{key}conv"),
        "title": title,
        "create_time": start,
        "update_time": start + texts.len() as f64 * step,
        "current_node": node(texts.len().saturating_sub(1)),
        "mapping": mapping,
    })
}

/// Uploads `bytes` as `name` through chat's chunked upload (BeginUpload, chunks of the
/// size the server names, FinishUpload); returns the upload id.
pub async fn upload(channel: &Channel, token: &str, name: &str, bytes: &[u8]) -> String {
    use llmesh_proto::chat::v1 as cpb;
    use llmesh_proto::chat::v1::chat_archive_service_client::ChatArchiveServiceClient;
    use sha2::Digest;
    let mut a = ChatArchiveServiceClient::new(channel.clone());
    let begun = a
        .begin_upload(bearer(
            token,
            cpb::BeginUploadRequest {
                file_name: name.into(),
                size_bytes: bytes.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(bytes)),
            },
        ))
        .await
        .expect("begin the upload")
        .into_inner();
    let mut offset = 0;
    for chunk in bytes.chunks(begun.max_chunk_bytes.max(1) as usize) {
        a.append_upload_chunk(bearer(
            token,
            cpb::AppendUploadChunkRequest {
                upload_id: begun.upload_id.clone(),
                offset,
                data: chunk.to_vec(),
            },
        ))
        .await
        .expect("append a chunk");
        offset += chunk.len() as u64;
    }
    a.finish_upload(bearer(
        token,
        cpb::FinishUploadRequest {
            upload_id: begun.upload_id.clone(),
        },
    ))
    .await
    .expect("finish the upload");
    begun.upload_id
}

/// Ingests an upload; returns the progress phases seen and the document (or the error).
pub async fn ingest(
    k: &mut llmesh_proto::chat::v1::knowledge_service_client::KnowledgeServiceClient<Channel>,
    token: &str,
    collection: &str,
    upload_id: &str,
) -> Result<(Vec<i32>, llmesh_proto::chat::v1::Document), tonic::Status> {
    let mut stream = k
        .ingest_document(bearer(
            token,
            llmesh_proto::chat::v1::IngestDocumentRequest {
                collection_id: collection.into(),
                upload_id: upload_id.into(),
                format: 0,
            },
        ))
        .await?
        .into_inner();
    let mut phases = Vec::new();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(llmesh_proto::chat::v1::ingest_document_response::Event::Progress(p)) => {
                phases.push(p.phase)
            }
            Some(llmesh_proto::chat::v1::ingest_document_response::Event::Document(d)) => {
                return Ok((phases, d));
            }
            None => {}
        }
    }
    Err(tonic::Status::internal(
        "the ingest ended without its document",
    ))
}

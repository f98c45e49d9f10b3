//! The three SDKs against a live server: `llmesh serve` (the binary, one process, SQLite,
//! the real clock, access tokens that live 30 s) with the default chat model, a priced
//! model and credited users. Rust: every example in clients/rust/examples runs, and a
//! password session outlives its access token (and ends clearly when revoked). Python: the
//! pytest suite of clients/python and mypy --strict on its examples. TypeScript: the Node
//! examples and the `node --test` suite of clients/typescript, and the packed tarball
//! installed into a fresh project.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use llmesh_client::{Client, Code};
use llmesh_proto::auth::v1 as auth;
use llmesh_tests::mesh::{self, Mesh};
use llmesh_tests::{Backend, PASSWORD, TestDb, bearer};
use tonic::transport::Channel;

const CHAT_MODEL: &str = "smollm2-135m-instruct";
const ACCESS_TTL_SECS: u64 = 30;

/// A live server and the accounts the SDK suites use.
struct Live {
    mesh: Mesh,
    env: Vec<(&'static str, String)>,
    admin_token: String,
    _db: TestDb,
}

impl Live {
    async fn start() -> Live {
        let models = llmesh_tests::models::models_dir();
        let db = TestDb::create(Backend::Sqlite).await.expect("sqlite");
        let mut config = llmesh_tests::test_config(&db);
        config.llm.models_dir = models.display().to_string();
        config.auth.access_token_ttl_secs = ACCESS_TTL_SECS;
        let mesh = Mesh::start_with(
            &db,
            &config,
            &mesh::binary(),
            &[("llmesh", "auth,llm,chat,billing,sandbox")],
            false,
        )
        .await
        .expect("llmesh serve starts");
        let url = mesh.url("llmesh");
        let channel = Channel::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let admin = signup(&channel, "admin@example.com").await;
        let user = signup(&channel, "user@example.com").await;
        let other = signup(&channel, "other@example.com").await;
        for u in [&user, &other] {
            llmesh_tests::price_and_credit(&channel, &admin.1, CHAT_MODEL, &u.0, 10_000_000).await;
        }
        let key = auth::auth_service_client::AuthServiceClient::new(channel.clone())
            .create_api_key(bearer(
                &user.1,
                auth::CreateApiKeyRequest {
                    name: "sdk tests".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("api key")
            .into_inner()
            .secret;
        let env = vec![
            ("LLMESH_URL", url),
            ("LLMESH_API_KEY", key),
            ("LLMESH_EMAIL", "user@example.com".into()),
            ("LLMESH_PASSWORD", PASSWORD.into()),
            ("LLMESH_OTHER_EMAIL", "other@example.com".into()),
            ("LLMESH_ADMIN_EMAIL", "admin@example.com".into()),
            ("LLMESH_ADMIN_PASSWORD", PASSWORD.into()),
            ("LLMESH_MODEL", CHAT_MODEL.into()),
            ("LLMESH_ACCESS_TTL_SECS", ACCESS_TTL_SECS.to_string()),
        ];
        Live {
            mesh,
            env,
            admin_token: admin.1,
            _db: db,
        }
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .expect("known variable")
    }

    /// Runs `program` with the live server's variables; panics with its output (and the
    /// server's log) unless it succeeds within [`COMMAND_LIMIT`]. Returns its stdout.
    fn run(&self, what: &str, cmd: &mut Command) -> String {
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let scratch = llmesh_tests::TempDir::new("llmesh-sdk-run");
        let (out_path, err_path) = (scratch.path.join("stdout"), scratch.path.join("stderr"));
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if started.elapsed() > COMMAND_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let verdict = match status {
            Some(s) if s.success() => return stdout,
            Some(s) => format!("failed ({s})"),
            None => format!(
                "did not finish within {} s (killed)",
                COMMAND_LIMIT.as_secs()
            ),
        };
        panic!(
            "{what} {verdict}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
            self.mesh.log("llmesh")
        );
    }
}

/// How long one SDK command (an example, a suite) may run.
const COMMAND_LIMIT: Duration = Duration::from_secs(240);

/// Registers `email` and signs in: (user id, access token).
async fn signup(channel: &Channel, email: &str) -> (String, String) {
    let mut client = auth::auth_service_client::AuthServiceClient::new(channel.clone());
    client
        .register(auth::RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            display_name: String::new(),
        })
        .await
        .expect("register");
    let login = client
        .login(auth::LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner();
    (
        login.user.expect("user").id,
        login.tokens.expect("tokens").access_token,
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// An example of the Rust SDK, built by `cargo test` beside the test binaries.
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.is_file(),
        "{} is missing: `cargo test --workspace` builds the examples of llmesh-client",
        bin.display()
    );
    Command::new(bin)
}

/// A tool the SDK suites need: found on PATH or at a given path; outside CI, a missing one
/// skips the suite (saying so), in CI it fails it.
fn tool(env: &str, default: &str, why: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    let found = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} is required in CI: {why}", path.display());
    }
    eprintln!("skipping: {} not found ({why}; set {env})", path.display());
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_examples_run_against_a_live_server() {
    let live = Live::start().await;
    let chat = live.run("example chat", example("chat").arg("Say hi."));
    assert!(chat.contains("completion tokens"), "{chat}");
    assert!(chat.contains("micro-USD"), "{chat}");

    let login = live.run("example login", &mut example("login"));
    assert!(login.contains("calling as user@example.com"), "{login}");

    let errors = live.run("example errors", &mut example("errors"));
    assert!(errors.contains("not there:"), "{errors}");
    assert!(errors.contains("(NOT_FOUND, request id "), "{errors}");
    assert!(!errors.contains("request id: none"), "{errors}");

    let generate = live.run("example generate", example("generate").arg(CHAT_MODEL));
    assert!(
        generate.contains("[Stop,") || generate.contains("[Length,"),
        "{generate}"
    );

    let scratch = llmesh_tests::TempDir::new("llmesh-sdk-rust");
    let export = scratch.path.join("export.json");
    let import = live.run(
        "example import_chatgpt",
        example("import_chatgpt")
            .arg(repo().join("tests/fixtures/chatgpt/conversations.json"))
            .arg(&export),
    );
    assert!(import.contains("imported "), "{import}");
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&export).expect("export written")).expect("json");
    assert!(exported.to_string().contains("Photosynthesis basics"));

    let sandbox = live.run("example sandbox", &mut example("sandbox"));
    assert!(sandbox.contains("sum 12"), "{sandbox}");
    assert!(sandbox.contains("[Exited, exit code 0"), "{sandbox}");
    assert!(sandbox.contains("data/total.txt"), "{sandbox}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_password_session_outlives_its_token_and_ends_clearly_when_revoked() {
    let live = Live::start().await;
    let url = live.var("LLMESH_URL").to_owned();
    let user = Client::builder(&url)
        .password("user@example.com", PASSWORD)
        .connect()
        .await
        .expect("user signs in");
    let other = Client::builder(&url)
        .password("other@example.com", PASSWORD)
        .connect()
        .await
        .expect("other signs in");
    let me = |c: Client| async move { c.auth().get_me(auth::GetMeRequest {}).await };
    let other_id = me(other.clone())
        .await
        .expect("other calls")
        .into_inner()
        .user
        .expect("user")
        .id;

    // An admin disables the other account: its refresh token stops at once, its access
    // token at expiry.
    let wrong = Client::builder(&url)
        .password("user@example.com", "not the password")
        .connect()
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    auth::auth_service_client::AuthServiceClient::new(
        Channel::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
    .disable_user(bearer(
        &live.admin_token,
        auth::DisableUserRequest { user_id: other_id },
    ))
    .await
    .expect("disable");

    tokio::time::sleep(Duration::from_secs(ACCESS_TTL_SECS + 2)).await;
    let after = me(user.clone())
        .await
        .expect("the session was refreshed before its token expired");
    assert_eq!(
        after.into_inner().user.expect("user").email,
        "user@example.com"
    );
    let ended = llmesh_client::Error::from(
        me(other.clone())
            .await
            .expect_err("a disabled account's session ends"),
    );
    assert_eq!(ended.code(), Code::Unauthenticated);
    assert!(
        ended.message().contains("session has ended") && ended.message().contains("sign in"),
        "{ended}"
    );

    user.logout().await.expect("logout");
    let out = llmesh_client::Error::from(me(user).await.expect_err("signed out"));
    assert_eq!(out.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_passes_its_suite_and_mypy() {
    let Some(python) = tool(
        "LLMESH_PYTHON",
        &repo().join(".venv/bin/python").display().to_string(),
        "scripts/test makes .venv with the Python SDK and its test tools",
    ) else {
        return;
    };
    let live = Live::start().await;
    let sdk = repo().join("clients/python");
    let out = live.run(
        "pytest",
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
            .current_dir(&sdk),
    );
    assert!(out.contains(" passed"), "{out}");
    assert!(
        !out.contains("skipped"),
        "nothing may be skipped in CI: {out}"
    );
    live.run(
        "mypy --strict",
        Command::new(&python)
            .args(["-m", "mypy", "--strict", "examples", "tests", "src/llmesh"])
            .current_dir(&sdk),
    );
    for example in ["chat.py", "chat_async.py", "errors.py", "upload.py"] {
        let out = live.run(
            example,
            Command::new(&python)
                .arg(sdk.join("examples").join(example))
                .current_dir(&sdk),
        );
        assert!(!out.is_empty(), "{example} printed nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_runs_in_node_and_installs_from_its_tarball() {
    let Some(node) = tool("NODE", "node", "the TypeScript SDK's example runs in Node") else {
        return;
    };
    let client = repo().join("clients/typescript");
    if !client.join("dist/index.js").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "clients/typescript/dist is missing: scripts/test builds it first"
        );
        eprintln!("skipping: clients/typescript is not built (npm run build)");
        return;
    }
    let live = Live::start().await;
    let out = live.run(
        "node examples/chat.mjs",
        Command::new(&node)
            .arg("examples/chat.mjs")
            .current_dir(&client),
    );
    assert!(out.contains("completion tokens"), "{out}");
    let out = live.run(
        "node examples/errors.mjs",
        Command::new(&node)
            .arg("examples/errors.mjs")
            .current_dir(&client),
    );
    assert!(out.contains("NOT_FOUND"), "{out}");
    assert!(out.contains("request id"), "{out}");
    let out = live.run(
        "node --test tests/sdk.test.mjs",
        Command::new(&node)
            .args(["--test", "tests/sdk.test.mjs"])
            .current_dir(&client),
    );
    assert!(out.contains("# fail 0"), "{out}");

    // The packed package installs into a project of its own and type-checks there.
    let project = llmesh_tests::TempDir::new("llmesh-sdk-ts");
    let packed = live.run(
        "npm pack",
        Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&project.path)
            .current_dir(&client),
    );
    let tarball = project
        .path
        .join(packed.trim().lines().last().expect("tarball name"));
    let consumer = repo().join("clients/typescript/tests/consumer");
    for file in ["package.json", "main.ts", "tsconfig.json"] {
        std::fs::copy(consumer.join(file), project.path.join(file)).expect("copy consumer");
    }
    live.run(
        "npm install (fresh project)",
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .arg(&tarball)
            .arg(repo().join("node_modules/typescript"))
            .current_dir(&project.path),
    );
    live.run(
        "tsc (fresh project)",
        Command::new(&node)
            .args(["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"])
            .current_dir(&project.path),
    );
    let out = live.run(
        "node main.js (fresh project)",
        Command::new(&node)
            .arg("main.js")
            .current_dir(&project.path),
    );
    assert!(out.contains("models:"), "{out}");
}

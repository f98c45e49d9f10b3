//! The real `llmesh` binary: startup errors are one clear line, the operator commands work.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn llmesh(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmesh"));
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env("LLMESH__AUTH__ARGON2_MEMORY_KIB", "1024")
        .env("LLMESH__AUTH__ARGON2_ITERATIONS", "1")
        .env("LLMESH__LLM__PULL_DEFAULTS", "false")
        .env("LLMESH__LLM__LOAD_AT_START", "[]")
        // Like the models: the Python runtime is fetched on first use, not at start.
        .env("LLMESH__SANDBOX__PREPARE_AT_START", "false")
        .stdin(Stdio::null());
    cmd
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("llmesh-cli-{}", uuid_like()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failed run printed exactly one `error:` line mentioning `needle`, no panic.
fn assert_one_line_error(out: &Output, needle: &str) {
    let (_, stderr) = text(out);
    assert!(!out.status.success(), "should fail: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected in:\n{stderr}");
    assert!(
        errors[0].contains(needle),
        "{:?} should mention {needle:?}",
        errors[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
}

#[test]
fn version_and_help() {
    let dir = tempdir();
    let out = llmesh(&dir).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(text(&out).0.starts_with("llmesh "));
    for sub in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["users", "create", "--help"],
        vec!["users", "list", "--help"],
        vec!["users", "reset-password", "--help"],
        vec!["keys", "rotate", "--help"],
    ] {
        let out = llmesh(&dir).args(&sub).output().expect("run");
        assert!(out.status.success(), "{sub:?}");
        assert!(text(&out).0.contains("Usage"), "{sub:?}");
    }
}

#[test]
fn startup_errors_are_one_line() {
    let dir = tempdir();
    // Port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let out = llmesh(&dir)
        .args(["serve", "--bind", &addr])
        .output()
        .expect("run");
    assert_one_line_error(&out, "already in use");

    // Unreadable, invalid and unknown-key configs.
    let out = llmesh(&dir)
        .args(["--config", "missing.toml", "migrate"])
        .output()
        .expect("run");
    assert_one_line_error(&out, "missing.toml");
    std::fs::write(dir.join("bad.toml"), "[server\nbind = ").expect("write");
    let out = llmesh(&dir)
        .args(["--config", "bad.toml", "migrate"])
        .output()
        .expect("run");
    assert_one_line_error(&out, "bad.toml");
    std::fs::write(dir.join("unknown.toml"), "[server]\nbnd = \"x\"\n").expect("write");
    let out = llmesh(&dir)
        .args(["--config", "unknown.toml", "migrate"])
        .output()
        .expect("run");
    assert_one_line_error(&out, "bnd");
    let out = llmesh(&dir)
        .env("LLMESH__AUTH__REGISTRATION", "sometimes")
        .arg("migrate")
        .output()
        .expect("run");
    assert_one_line_error(&out, "auth.registration");

    // Bad database URL, unreachable database.
    let out = llmesh(&dir)
        .env("LLMESH__DATABASE__URL", "mysql://x")
        .arg("migrate")
        .output()
        .expect("run");
    assert_one_line_error(&out, "not supported");
    let out = llmesh(&dir)
        .env(
            "LLMESH__DATABASE__URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .env("LLMESH__DATABASE__CONNECT_TIMEOUT_SECS", "1")
        .arg("migrate")
        .output()
        .expect("run");
    assert_one_line_error(&out, "cannot connect");

    // A service that does not exist.
    let out = llmesh(&dir)
        .args(["serve", "--services", "auth,payments"])
        .output()
        .expect("run");
    assert_one_line_error(&out, "unknown service \"payments\"");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn users_and_keys_commands() {
    let dir = tempdir();
    let out = llmesh(&dir).arg("migrate").output().expect("run");
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        dir.join("data/llmesh.db").exists(),
        "SQLite file created under ./data"
    );

    let mut child = llmesh(&dir)
        .args(["users", "create", "--email", "root@example.com", "--admin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a long enough password\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("role admin"));

    let out = llmesh(&dir)
        .args([
            "users",
            "create",
            "--email",
            "gen@example.com",
            "--generate-password",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("password (shown once): "));

    let out = llmesh(&dir)
        .args(["users", "create", "--email", "dup@example.com"])
        .output()
        .expect("run");
    assert_one_line_error(&out, "no password");

    let out = llmesh(&dir).args(["users", "list"]).output().expect("run");
    let (stdout, _) = text(&out);
    assert!(stdout.contains("root@example.com") && stdout.contains("gen@example.com"));

    let out = llmesh(&dir)
        .args(["users", "reset-password", "--email", "gen@example.com"])
        .output()
        .expect("run");
    assert!(text(&out).0.contains("temporary password"));
    let out = llmesh(&dir)
        .args(["users", "reset-password", "--email", "nobody@example.com"])
        .output()
        .expect("run");
    assert_one_line_error(&out, "not found");

    let out = llmesh(&dir).args(["keys", "rotate"]).output().expect("run");
    assert!(out.status.success(), "{:?}", text(&out));

    // Billing: prices, credits in micro-units, and the ledger check.
    let out = llmesh(&dir)
        .args([
            "billing",
            "prices",
            "set",
            "smollm2-135m-instruct",
            "--input",
            "150000",
            "--output",
            "600000",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{:?}", text(&out));
    let out = llmesh(&dir)
        .args(["billing", "prices", "list"])
        .output()
        .expect("run");
    assert!(text(&out).0.contains("150000"), "{:?}", text(&out));
    let out = llmesh(&dir)
        .args([
            "billing",
            "credit",
            "--email",
            "root@example.com",
            "--amount",
            "2500000",
        ])
        .output()
        .expect("run");
    assert!(
        text(&out).0.contains("balance: 2500000"),
        "{:?}",
        text(&out)
    );
    let out = llmesh(&dir)
        .args([
            "billing",
            "credit",
            "--email",
            "root@example.com",
            "--amount",
            "-9999999",
        ])
        .output()
        .expect("run");
    assert_one_line_error(&out, "insufficient balance");
    let out = llmesh(&dir)
        .args(["billing", "reconcile"])
        .output()
        .expect("run");
    assert!(
        out.status.success() && text(&out).0.contains("0 mismatches"),
        "{:?}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_prints_its_address_and_stops_on_sigterm() {
    let dir = tempdir();
    let mut child = llmesh(&dir)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut addr = None;
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(30) && addr.is_none() {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                addr = Some(rest.trim().to_owned());
            }
            seen.push(line);
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no address printed: {seen:?}"));
    std::net::TcpStream::connect(&addr).expect("accepts connections");
    // SIGTERM, as an orchestrator would send.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "graceful exit, got {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `llmesh billing reconcile` agrees with a ledger that adds up, and catches a stored
/// balance that was changed behind the ledger's back: it names the account, both
/// figures, and exits non-zero.
#[test]
fn reconcile_catches_a_corrupted_balance() {
    let dir = tempdir();
    let out = llmesh(&dir).arg("migrate").output().expect("run");
    assert!(out.status.success(), "{:?}", text(&out));
    let out = llmesh(&dir)
        .args([
            "users",
            "create",
            "--email",
            "payer@example.com",
            "--generate-password",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{:?}", text(&out));
    let out = llmesh(&dir)
        .args([
            "billing",
            "credit",
            "--email",
            "payer@example.com",
            "--amount",
            "5000000",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{:?}", text(&out));

    let out = llmesh(&dir)
        .args(["billing", "reconcile"])
        .output()
        .expect("run");
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(stdout.contains(", 0 mismatches"), "{stdout}");

    // A balance written directly, as a bug or a hand edit would.
    let db = format!("sqlite://{}/data/llmesh.db", dir.display());
    let user_id = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            use sea_orm::{ConnectionTrait, Database, Statement};
            let conn = Database::connect(db.as_str()).await.expect("open");
            let backend = conn.get_database_backend();
            conn.execute_raw(Statement::from_string(
                backend,
                "UPDATE accounts SET balance_micros = balance_micros + 1234",
            ))
            .await
            .expect("corrupt");
            let row = conn
                .query_one_raw(Statement::from_string(
                    backend,
                    "SELECT user_id FROM accounts",
                ))
                .await
                .expect("query")
                .expect("an account");
            row.try_get::<String>("", "user_id").expect("user id")
        });

    let out = llmesh(&dir)
        .args(["billing", "reconcile"])
        .output()
        .expect("run");
    let (stdout, _) = text(&out);
    assert_one_line_error(&out, "disagree with the ledger");
    assert!(stdout.contains(", 1 mismatches"), "{stdout}");
    assert!(
        stdout.contains(&format!("{user_id}: stored 5001234 ledger 5000000")),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! A Postgres variant that cannot reach its server outside CI is skipped, and the skip is
//! recorded for scripts/test's summary rather than hidden by cargo's output capture.

use llmesh_tests::{Backend, TestDb};

#[test]
fn unreachable_postgres_is_skipped_and_recorded() {
    let log = std::env::temp_dir().join(format!("llmesh-skips-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    // The variant runs in a child process of this test binary, with an environment of its
    // own: outside CI, and pointed at a port nothing listens on.
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "a_postgres_variant_without_postgres",
        ])
        .env_remove("CI")
        .env("LLMESH_SKIP_CHILD", "1")
        .env("LLMESH_SKIP_LOG", &log)
        .env(
            "LLMESH_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:9/postgres",
        )
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = std::fs::read_to_string(&log).expect("the skip is recorded");
    let _ = std::fs::remove_file(&log);
    assert_eq!(recorded.lines().count(), 1, "{recorded}");
    assert!(
        recorded.starts_with("a_postgres_variant_without_postgres: ")
            && recorded.contains("127.0.0.1:9"),
        "{recorded}"
    );
}

#[tokio::test]
#[ignore = "run by unreachable_postgres_is_skipped_and_recorded, in a child process"]
async fn a_postgres_variant_without_postgres() {
    if std::env::var_os("LLMESH_SKIP_CHILD").is_none() {
        return;
    }
    assert!(TestDb::create(Backend::Postgres).await.is_none());
    assert!(
        TestDb::create(Backend::Sqlite).await.is_some(),
        "SQLite needs no server"
    );
}

//! The sandbox over real gRPC with the real CPython for WASI and hand-written WASI
//! modules: streamed output, limits, workspaces and persistence, and hostile guests that
//! must end with the right status while the server keeps answering.

use std::time::{Duration, Instant};

use llmesh_proto::sandbox::v1 as pb;
use llmesh_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use llmesh_tests::{Backend, TestServer, bearer};
use tonic::Code;
use tonic::transport::Channel;

struct Setup {
    s: TestServer,
    user: String,
}

async fn setup(tweak: impl FnOnce(&mut llmesh::Config)) -> Setup {
    let s = TestServer::start_with(Backend::Sqlite, tweak)
        .await
        .expect("sqlite");
    s.signup("admin@example.com").await;
    let (_, user) = s.signup("user@example.com").await;
    Setup {
        s,
        user: user.access_token,
    }
}

fn client(s: &TestServer) -> SandboxServiceClient<Channel> {
    SandboxServiceClient::new(s.channel.clone())
}

/// A run's output and how it ended.
#[derive(Debug, Default)]
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// stdout chunks in arrival order, with when they arrived.
    chunks: Vec<(Instant, Vec<u8>)>,
    exit: Option<pb::RunExit>,
}

impl Ran {
    fn exit(&self) -> &pb::RunExit {
        self.exit.as_ref().expect("the run ended with an exit")
    }

    fn status(&self) -> pb::RunStatus {
        pb::RunStatus::try_from(self.exit().status).expect("status")
    }

    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

async fn run(c: &mut SandboxServiceClient<Channel>, token: &str, req: pb::RunRequest) -> Ran {
    let mut stream = c
        .run(bearer(token, req))
        .await
        .expect("run accepted")
        .into_inner();
    let mut ran = Ran::default();
    while let Some(m) = stream.message().await.expect("stream") {
        match m.event.expect("event") {
            pb::run_response::Event::Stdout(b) => {
                ran.chunks.push((Instant::now(), b.clone()));
                ran.stdout.extend(b);
            }
            pb::run_response::Event::Stderr(b) => ran.stderr.extend(b),
            pb::run_response::Event::Exit(e) => ran.exit = Some(e),
        }
    }
    ran
}

fn python(code: &str) -> pb::RunRequest {
    pb::RunRequest {
        runtime: "python".into(),
        code: code.into(),
        ..Default::default()
    }
}

async fn upload(c: &mut SandboxServiceClient<Channel>, token: &str, path: &str, data: &[u8]) {
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(1000).collect()
    };
    let mut offset = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        c.write_file_chunk(bearer(
            token,
            pb::WriteFileChunkRequest {
                path: path.into(),
                offset,
                data: chunk.to_vec(),
                last: i + 1 == chunks.len(),
            },
        ))
        .await
        .expect("chunk");
        offset += chunk.len() as u64;
    }
}

async fn files(c: &mut SandboxServiceClient<Channel>, token: &str) -> Vec<String> {
    c.list_files(bearer(token, pb::ListFilesRequest {}))
        .await
        .expect("list")
        .into_inner()
        .files
        .into_iter()
        .map(|f| f.path)
        .collect()
}

async fn read(c: &mut SandboxServiceClient<Channel>, token: &str, path: &str) -> Vec<u8> {
    let mut stream = c
        .read_file(bearer(token, pb::ReadFileRequest { path: path.into() }))
        .await
        .expect("read")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.expect("chunk") {
        out.extend(m.chunk);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_runs_stream_and_report() {
    let Setup { s, user } = setup(|_| {}).await;
    let mut c = client(&s);
    let ran = run(
        &mut c,
        &user,
        python(
            "import sys, time, json, math\n\
             print('first', flush=True)\n\
             print('to stderr', file=sys.stderr)\n\
             time.sleep(0.3)\n\
             print(json.dumps({'pi': round(math.pi, 3)}))\n\
             sys.exit(3)",
        ),
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::Exited, "{ran:?}");
    assert_eq!(ran.exit().exit_code, 3);
    assert_eq!(ran.out(), "first\n{\"pi\": 3.142}\n");
    assert_eq!(ran.err(), "to stderr\n");
    // Streamed as written: the first line arrived well before the last.
    assert!(ran.chunks.len() >= 2, "{:?}", ran.chunks);
    let gap = ran.chunks.last().expect("chunk").0 - ran.chunks[0].0;
    assert!(gap >= Duration::from_millis(200), "{gap:?}");
    assert!(ran.exit().fuel_used > 1_000_000);
    assert!(ran.exit().peak_memory_bytes > 1_000_000);

    let runtimes = c
        .list_runtimes(bearer(&user, pb::ListRuntimesRequest {}))
        .await
        .expect("runtimes")
        .into_inner()
        .runtimes;
    assert!(runtimes.iter().all(|r| r.available), "{runtimes:?}");
    assert_eq!(
        runtimes.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["python", "wasm"]
    );

    // Arguments and stdin reach the guest; the host environment does not.
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            args: vec!["a1".into(), "b 2".into()],
            stdin: b"from stdin".to_vec(),
            ..python(
                "import sys, os\n\
                 print(sys.argv[1:])\n\
                 print(sys.stdin.read())\n\
                 print(sorted(k for k in os.environ if not k.startswith('PYTHON')))",
            )
        },
    )
    .await;
    assert_eq!(
        ran.out(),
        "['a1', 'b 2']\nfrom stdin\n['HOME']\n",
        "{}",
        ran.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_persist_only_when_asked() {
    let Setup { s, user } = setup(|_| {}).await;
    let mut c = client(&s);
    upload(
        &mut c,
        &user,
        "lib/greet.py",
        b"def hello(n):\n    return 'hello ' + n\n",
    )
    .await;
    upload(&mut c, &user, "data/in.txt", b"workspace data").await;
    let write = "import greet\n\
                 print(greet.hello('from lib'))\n\
                 print(open('/workspace/data/in.txt').read())\n\
                 open('/workspace/out.txt', 'w').write('written')";
    let ran = run(&mut c, &user, python(write)).await;
    assert_eq!(ran.status(), pb::RunStatus::Exited, "{}", ran.err());
    assert_eq!(ran.out(), "hello from lib\nworkspace data\n");
    assert_eq!(ran.exit().changed_paths, ["out.txt"]);
    assert!(!ran.exit().persisted);
    assert_eq!(files(&mut c, &user).await, ["data/in.txt", "lib/greet.py"]);

    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            persist: true,
            ..python(write)
        },
    )
    .await;
    assert!(ran.exit().persisted, "{:?}", ran.exit());
    assert_eq!(
        files(&mut c, &user).await,
        ["data/in.txt", "lib/greet.py", "out.txt"]
    );
    assert_eq!(read(&mut c, &user, "out.txt").await, b"written");

    // A failed run keeps nothing, even when asked to.
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            persist: true,
            ..python("open('/workspace/partial.txt', 'w').write('x')\nwhile True: pass")
        },
    )
    .await;
    assert_ne!(ran.status(), pb::RunStatus::Exited);
    assert!(!ran.exit().persisted);
    assert!(
        !files(&mut c, &user)
            .await
            .contains(&"partial.txt".to_owned())
    );

    // Deleting, and another user's files are never reachable.
    c.delete_file(bearer(
        &user,
        pb::DeleteFileRequest {
            path: "out.txt".into(),
        },
    ))
    .await
    .expect("delete");
    let (_, other) = s.signup("other@example.com").await;
    assert!(files(&mut c, &other.access_token).await.is_empty());
    let status = c
        .read_file(bearer(
            &other.access_token,
            pb::ReadFileRequest {
                path: "data/in.txt".into(),
            },
        ))
        .await
        .expect_err("not theirs");
    assert_eq!(status.code(), Code::NotFound);
    let ran = run(
        &mut c,
        &other.access_token,
        python("import os\nprint(os.listdir('/workspace'))"),
    )
    .await;
    assert_eq!(ran.out(), "[]\n");
}

//! The sandbox over real gRPC with the real CPython for WASI and hand-written WASI
//! modules: streamed output, limits, workspaces and persistence, and hostile guests that
//! must end with the right status while the server keeps answering. Runs and workspaces
//! are also tested on Postgres and through the mesh (the sandbox in its own process).

use std::time::{Duration, Instant};

use llmesh_proto::sandbox::v1 as pb;
use llmesh_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use llmesh_tests::{Backend, TestServer, bearer, every_shape};
use tonic::Code;
use tonic::transport::Channel;

struct Setup {
    s: TestServer,
    user: String,
}

async fn setup(tweak: impl FnOnce(&mut llmesh::Config)) -> Setup {
    setup_on(Backend::Sqlite, tweak)
        .await
        .expect("sqlite runs everywhere")
}

/// None when the backend cannot run here (Postgres or nginx missing outside CI).
async fn setup_on(backend: Backend, tweak: impl FnOnce(&mut llmesh::Config)) -> Option<Setup> {
    let s = TestServer::start_with(backend, tweak).await?;
    s.signup("admin@example.com").await;
    let (_, user) = s.signup("user@example.com").await;
    Some(Setup {
        s,
        user: user.access_token,
    })
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

every_shape!(python_runs_stream_and_report, |backend| async move {
    let Some(Setup { s, user }) = setup_on(backend, |_| {}).await else {
        return;
    };
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
});

every_shape!(workspaces_persist_only_when_asked, |backend| async move {
    let Some(Setup { s, user }) = setup_on(backend, |_| {}).await else {
        return;
    };
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
});

/// Interpreters are started ahead of demand and handed the program on stdin; the program
/// must not be able to tell: a clean `__main__`, `sys.argv`, tracebacks and syntax errors
/// as `python -c` gives them, stdin intact, nothing kept from another run, and only its
/// own instructions metered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_interpreters_run_programs_as_python_c_does() {
    let Setup { s, user } = setup(|_| {}).await;
    let mut c = client(&s);
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            args: vec!["a".into(), "b c".into()],
            stdin: b"line one\nline two".to_vec(),
            ..python(
                "print(sorted(globals()))\n\
                 import sys\n\
                 print(sys.argv)\n\
                 print(repr(sys.stdin.read()))\n\
                 sys.marker = 'left behind'",
            )
        },
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::Exited, "{}", ran.err());
    assert_eq!(
        ran.out(),
        "['__annotations__', '__builtins__', '__doc__', '__loader__', '__name__', '__package__', '__spec__']\n\
         ['-c', 'a', 'b c']\n\
         'line one\\nline two'\n"
    );
    // Only the program's own instructions and the interpreter's exit (about 50 M): its
    // start-up (over 200 M) is not the caller's.
    assert!(ran.exit().fuel_used < 120_000_000, "{:?}", ran.exit());

    let ran = run(
        &mut c,
        &user,
        python("import sys\nprint(hasattr(sys, 'marker'))"),
    )
    .await;
    assert_eq!(ran.out(), "False\n");

    let ran = run(&mut c, &user, python("x = 1\n1/0")).await;
    assert_eq!(ran.status(), pb::RunStatus::Exited);
    assert_eq!(ran.exit().exit_code, 1);
    assert_eq!(
        ran.err(),
        "Traceback (most recent call last):\n  File \"<string>\", line 2, in <module>\nZeroDivisionError: division by zero\n"
    );
    let ran = run(&mut c, &user, python("x=")).await;
    assert_eq!(ran.exit().exit_code, 1);
    assert_eq!(
        ran.err(),
        "  File \"<string>\", line 1\n    x=\n      ^\nSyntaxError: invalid syntax\n"
    );

    // Less memory than the interpreter itself holds: out of memory, before it starts.
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            limits: limits(pb::RunLimits {
                memory_bytes: 4 * 1024 * 1024,
                ..Default::default()
            }),
            ..python("print(1)")
        },
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::OutOfMemory, "{:?}", ran.exit());
    assert!(
        ran.exit().message.contains("interpreter"),
        "{:?}",
        ran.exit()
    );

    let (_, _, scrape) = llmesh_tests::http_get(&format!("{}/metrics", s.url)).await;
    let pooled = scrape
        .lines()
        .find_map(|l| l.strip_prefix(r#"llmesh_sandbox_python_interpreters_total{source="pool"} "#))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(pooled >= 1.0, "{scrape}");
}

/// Uploads a module written in WAT and returns a request that runs it.
async fn wat_module(
    c: &mut SandboxServiceClient<Channel>,
    token: &str,
    name: &str,
    wat: &str,
) -> pb::RunRequest {
    let bytes = wat::parse_str(wat).expect("valid WAT");
    let path = format!("bin/{name}.wasm");
    upload(c, token, &path, &bytes).await;
    pb::RunRequest {
        runtime: "wasm".into(),
        module_path: path,
        ..Default::default()
    }
}

fn limits(l: pb::RunLimits) -> Option<pb::RunLimits> {
    Some(l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_end_with_the_right_status() {
    let Setup { s, user } = setup(|c| {
        c.sandbox.workspace_quota_bytes = 1024 * 1024;
        c.sandbox.max_concurrent_runs = 3;
    })
    .await;
    let mut c = client(&s);

    // A WASI hello world, for comparison.
    let hello = wat_module(
        &mut c,
        &user,
        "hello",
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 16) "hello from wasm\n")
            (func (export "_start")
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 16))
              (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .await;
    let ran = run(&mut c, &user, hello.clone()).await;
    assert_eq!(ran.status(), pb::RunStatus::Exited, "{:?}", ran.exit());
    assert_eq!(ran.out(), "hello from wasm\n");

    // An endless loop runs out of fuel, or of time when fuel is plentiful.
    let spin = wat_module(
        &mut c,
        &user,
        "spin",
        r#"(module (memory (export "memory") 1)
            (func (export "_start") (loop $l (br $l))))"#,
    )
    .await;
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            limits: limits(pb::RunLimits {
                fuel: 50_000_000,
                ..Default::default()
            }),
            ..spin.clone()
        },
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::OutOfFuel, "{:?}", ran.exit());
    assert!(ran.exit().fuel_used >= 50_000_000);
    let started = Instant::now();
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            limits: limits(pb::RunLimits {
                fuel: 200_000_000_000,
                timeout_ms: 400,
                ..Default::default()
            }),
            ..spin.clone()
        },
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::TimedOut, "{:?}", ran.exit());
    assert!(started.elapsed() < Duration::from_secs(5));

    // A memory bomb, in WASM and in Python.
    let bomb = wat_module(
        &mut c,
        &user,
        "bomb",
        r#"(module (memory (export "memory") 1)
            (func (export "_start") (loop $l (drop (memory.grow (i32.const 256))) (br $l))))"#,
    )
    .await;
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            limits: limits(pb::RunLimits {
                memory_bytes: 64 * 1024 * 1024,
                ..Default::default()
            }),
            ..bomb
        },
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::OutOfMemory, "{:?}", ran.exit());
    assert!(ran.exit().peak_memory_bytes <= 64 * 1024 * 1024);
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            limits: limits(pb::RunLimits {
                memory_bytes: 64 * 1024 * 1024,
                ..Default::default()
            }),
            ..python("x = bytearray(512 * 1024 * 1024)\nprint(len(x))")
        },
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::OutOfMemory, "{:?}", ran.exit());

    // Unbounded recursion overflows the guest's stack, not the host's.
    let deep = wat_module(
        &mut c,
        &user,
        "deep",
        r#"(module (memory (export "memory") 1)
            (func $f (call $f))
            (func (export "_start") (call $f)))"#,
    )
    .await;
    let ran = run(&mut c, &user, deep).await;
    assert_eq!(ran.status(), pb::RunStatus::Trapped);
    assert!(
        ran.exit().message.contains("stack overflow"),
        "{:?}",
        ran.exit()
    );
    let ran = run(&mut c, &user, python("def f(n): return f(n + 1)\nf(0)")).await;
    assert_eq!(ran.status(), pb::RunStatus::Exited);
    assert_eq!(ran.exit().exit_code, 1);
    assert!(ran.err().contains("RecursionError"), "{}", ran.err());

    // An output flood is cut at the limit.
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            limits: limits(pb::RunLimits {
                max_output_bytes: 100_000,
                ..Default::default()
            }),
            ..python("while True:\n    print('x' * 1000)")
        },
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::OutputLimit, "{:?}", ran.exit());
    assert_eq!(ran.stdout.len() + ran.stderr.len(), 100_000);

    // No processes, no host files, no escaping the workspace.
    let ran = run(
        &mut c,
        &user,
        python(
            "import os\n\
             for attempt in [lambda: os.fork(), lambda: __import__('subprocess').run(['ls'])]:\n\
             \x20   try:\n\
             \x20       attempt(); print('ran')\n\
             \x20   except Exception as e: print('refused', type(e).__name__)",
        ),
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::Exited, "{}", ran.err());
    assert_eq!(ran.out().matches("refused").count(), 2, "{}", ran.out());
    let escapes = "import os\n\
         for path in ['/etc/passwd', '/workspace/../etc/passwd', '/proc/self/environ']:\n\
         \x20   try: print('read', len(open(path).read()))\n\
         \x20   except Exception as e: print('refused', path)\n\
         for path in ['/workspace/../escape.txt', '/tmp/escape.txt', '/escape.txt']:\n\
         \x20   try: open(path, 'w').write('x'); print('wrote', path)\n\
         \x20   except Exception as e: print('refused', path)\n\
         try: os.symlink('/etc/passwd', '/workspace/link'); print(open('/workspace/link').read()[:20])\n\
         except Exception as e: print('refused symlink')";
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            persist: true,
            ..python(escapes)
        },
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::Exited, "{}", ran.err());
    assert_eq!(ran.out().matches("refused").count(), 7, "{}", ran.out());
    assert!(!ran.out().contains("root:"), "{}", ran.out());
    assert!(!std::path::Path::new("/tmp/escape.txt").exists());
    assert!(!files(&mut c, &user).await.contains(&"link".to_owned()));

    // A module that imports what no runtime provides does not start.
    let alien = wat_module(
        &mut c,
        &user,
        "alien",
        r#"(module (import "env" "launch_missiles" (func)) (memory (export "memory") 1)
            (func (export "_start")))"#,
    )
    .await;
    let ran = run(&mut c, &user, alien).await;
    assert_eq!(ran.status(), pb::RunStatus::Trapped);
    assert!(
        ran.exit().message.contains("launch_missiles"),
        "{:?}",
        ran.exit()
    );

    // Filling the workspace past its quota keeps nothing.
    let ran = run(
        &mut c,
        &user,
        pb::RunRequest {
            persist: true,
            ..python("open('/workspace/big.bin', 'wb').write(b'x' * 2_000_000)")
        },
    )
    .await;
    assert!(!ran.exit().persisted, "{:?}", ran.exit());
    assert!(ran.exit().message.contains("quota"), "{:?}", ran.exit());
    assert!(!files(&mut c, &user).await.contains(&"big.bin".to_owned()));

    // Oversized requests are refused before anything runs.
    for (req, field) in [
        (
            pb::RunRequest {
                args: vec!["x".repeat(300 * 1024)],
                ..python("pass")
            },
            "args",
        ),
        (
            pb::RunRequest {
                stdin: vec![b'x'; 2 * 1024 * 1024],
                ..python("pass")
            },
            "stdin",
        ),
        (
            pb::RunRequest {
                limits: limits(pb::RunLimits {
                    fuel: u64::MAX,
                    ..Default::default()
                }),
                ..python("pass")
            },
            "limits.fuel",
        ),
        (
            pb::RunRequest {
                runtime: "wasm".into(),
                module_path: "../../etc/passwd".into(),
                ..Default::default()
            },
            "module_path",
        ),
    ] {
        let status = c.run(bearer(&user, req)).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_run_harms_no_other() {
    let Setup { s, user } = setup(|c| c.sandbox.max_concurrent_runs = 2).await;
    let mut c = client(&s);
    let spin = wat_module(
        &mut c,
        &user,
        "spin",
        r#"(module (memory (export "memory") 1)
            (func (export "_start") (loop $l (br $l))))"#,
    )
    .await;
    // A spinning guest takes one slot...
    let mut spinning = c
        .run(bearer(
            &user,
            pb::RunRequest {
                limits: limits(pb::RunLimits {
                    fuel: 200_000_000_000,
                    timeout_ms: 60_000,
                    ..Default::default()
                }),
                ..spin.clone()
            },
        ))
        .await
        .expect("run")
        .into_inner();
    // ...while other RPCs answer and a well-behaved run finishes normally.
    let started = Instant::now();
    c.list_runtimes(bearer(&user, pb::ListRuntimesRequest {}))
        .await
        .expect("answered");
    let ran = run(&mut c, &user, python("print(sum(range(1000)))")).await;
    assert_eq!(ran.out(), "499500\n");
    assert!(started.elapsed() < Duration::from_secs(10));

    // With both slots taken, a third run is refused with a retry hint.
    let second = c
        .run(bearer(
            &user,
            pb::RunRequest {
                limits: limits(pb::RunLimits {
                    fuel: 200_000_000_000,
                    timeout_ms: 60_000,
                    ..Default::default()
                }),
                ..spin.clone()
            },
        ))
        .await
        .expect("second slot")
        .into_inner();
    let status = c
        .run(bearer(&user, python("print(1)")))
        .await
        .expect_err("full");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.metadata().get("retry-after").is_some());

    // A client that hangs up stops its guest within a tick, freeing its slot.
    drop(spinning);
    let mut freed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(stream) = c.run(bearer(&user, python("print(2)"))).await {
            let mut stream = stream.into_inner();
            while stream.message().await.expect("stream").is_some() {}
            freed = true;
            break;
        }
    }
    assert!(freed, "the slot of the cancelled run was freed");
    drop(second);
    spinning = c
        .run(bearer(&user, python("print(3)")))
        .await
        .expect("run")
        .into_inner();
    while spinning.message().await.expect("stream").is_some() {}
}

/// Runs are paid for by the fuel they use at the runtime's price: billing holds the fuel
/// ceiling first (a run it refuses never starts) and settles what the guest used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_charged_by_fuel() {
    use llmesh_proto::billing::v1 as bpb;
    use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;

    let s = TestServer::start_with(Backend::Sqlite, |_| {})
        .await
        .expect("sqlite");
    let (_, admin) = s.signup("admin@example.com").await;
    let (user, tokens) = s.signup("user@example.com").await;
    let (admin, token) = (admin.access_token, tokens.access_token);
    let mut c = client(&s);
    let mut b = BillingServiceClient::new(s.channel.clone());
    // 1 000 000 micro-units per billion fuel: a micro-unit per thousand instructions.
    b.set_price(bearer(
        &admin,
        bpb::SetPriceRequest {
            model: "sandbox/python".into(),
            micros_per_billion_fuel: 1_000_000,
            ..Default::default()
        },
    ))
    .await
    .expect("price");
    let fuel_ceiling = 2_000_000_000;
    let paid = |code: &str| pb::RunRequest {
        limits: limits(pb::RunLimits {
            fuel: fuel_ceiling,
            ..Default::default()
        }),
        persist: true,
        ..python(code)
    };

    // No balance: refused before anything runs, so nothing is written.
    let refused = c
        .run(bearer(
            &token,
            paid("open('/workspace/ran.txt', 'w').write('yes')"),
        ))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(files(&mut c, &token).await.is_empty());

    b.adjust_balance(bearer(
        &admin,
        bpb::AdjustBalanceRequest {
            user_id: user.id.clone(),
            amount_micros: 5_000_000,
            reason: "test credit".into(),
            idempotency_key: "sandbox-credit".into(),
        },
    ))
    .await
    .expect("credit");
    let ran = run(
        &mut c,
        &token,
        paid("open('/workspace/ran.txt', 'w').write('yes'); print(sum(range(1000)))"),
    )
    .await;
    assert_eq!(ran.status(), pb::RunStatus::Exited, "{}", ran.err());
    assert_eq!(ran.out(), "499500\n");
    let exit = ran.exit();
    assert!(exit.fuel_used > 0 && exit.fuel_used < fuel_ceiling);
    let cost = exit.cost.clone().expect("cost");
    assert_eq!(cost.currency, "USD");
    assert_eq!(cost.micros as u64, exit.fuel_used.div_ceil(1000));
    assert_eq!(files(&mut c, &token).await, vec!["ran.txt".to_owned()]);

    // The exit carries the cost at the hold's price; billing settles just after it.
    let mut settled = None;
    for _ in 0..100 {
        let r = b
            .get_balance(bearer(&token, bpb::GetBalanceRequest::default()))
            .await
            .expect("balance")
            .into_inner();
        if r.reserved.as_ref().expect("reserved").micros == 0 {
            settled = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = settled.expect("billing settles the run within 5 s");
    assert_eq!(r.balance.expect("balance").micros, 5_000_000 - cost.micros);
    let usage = b
        .list_usage(bearer(
            &token,
            bpb::ListUsageRequest {
                group_by: bpb::UsageGrouping::Model as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("usage")
        .into_inner();
    let row = usage
        .rows
        .iter()
        .find(|r| r.key == "sandbox/python")
        .expect("a sandbox/python row");
    assert_eq!((row.requests, row.fuel), (1, exit.fuel_used));
    assert_eq!(row.spend.clone().expect("spend").micros, cost.micros);

    // A ceiling the balance cannot cover is refused too, naming the shortfall.
    let too_much = c
        .run(bearer(
            &token,
            pb::RunRequest {
                limits: limits(pb::RunLimits {
                    fuel: 100_000_000_000,
                    ..Default::default()
                }),
                ..python("print(1)")
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(too_much.code(), Code::FailedPrecondition, "{too_much:?}");

    // Sandbox spend counts against the monthly spend cap, and a run is one request for
    // the per-minute rate.
    let quota = |q: bpb::Quota| {
        bearer(
            &admin,
            bpb::SetQuotaRequest {
                subject: Some(bpb::set_quota_request::Subject::UserId(user.id.clone())),
                quota: Some(q),
            },
        )
    };
    b.set_quota(quota(bpb::Quota {
        monthly_spend_micros: cost.micros + 1_999_999,
        ..Default::default()
    }))
    .await
    .expect("cap");
    let capped = c
        .run(bearer(&token, paid("print(1)")))
        .await
        .expect_err("over the cap");
    assert_eq!(capped.code(), Code::ResourceExhausted, "{capped:?}");
    assert!(capped.message().contains("monthly spend cap"), "{capped:?}");
    b.set_quota(quota(bpb::Quota {
        requests_per_minute: 1,
        ..Default::default()
    }))
    .await
    .expect("rate");
    let second = run(&mut c, &token, paid("print(2)")).await;
    assert_eq!(second.out(), "2\n");
    let limited = c
        .run(bearer(&token, paid("print(3)")))
        .await
        .expect_err("over the rate");
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(
        limited.message().contains("requests per minute"),
        "{limited:?}"
    );
    assert!(
        limited.metadata().get("retry-after").is_some(),
        "{limited:?}"
    );

    // The metrics saw two runs and four refusals, and pass promtool.
    let (_, _, scrape) = llmesh_tests::http_get(&format!("{}/metrics", s.url)).await;
    let value = |name: &str, labels: &[&str]| -> f64 {
        scrape
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let python = r#"runtime="python""#;
    assert_eq!(
        value("llmesh_sandbox_runs_total", &[python, r#"status="exited""#]),
        2.0
    );
    assert_eq!(
        value(
            "llmesh_sandbox_runs_refused_total",
            &[python, r#"reason="billing""#]
        ),
        4.0
    );
    assert_eq!(
        value("llmesh_sandbox_fuel_used_total", &[python]),
        (exit.fuel_used + second.exit().fuel_used) as f64
    );
    assert_eq!(
        value("llmesh_sandbox_run_duration_seconds_count", &[python]),
        2.0
    );
    assert!(value("llmesh_sandbox_peak_memory_bytes_sum", &[python]) > 1e6);
    assert_eq!(value("llmesh_sandbox_runs_active", &[]), 0.0);
    llmesh_tests::promtool_accepts(&scrape);
}

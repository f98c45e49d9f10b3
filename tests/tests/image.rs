//! The container image that `scripts/image` writes (an OCI archive, named by
//! `LLMESH_IMAGE_ARCHIVE`): its layout (entrypoint, non-root user, no shell, the UI inside),
//! then the image started as it ships — it pulls the default models from the package index
//! in Rust (no Python inside), answers `grpc.health.v1` and serves a Generate.
//!
//! The image is started with podman where podman can run containers on the machine; on
//! machines where it cannot (crun may not set resource limits inside an unprivileged
//! sandbox), with util-linux's `unshare` into the image's unpacked root file system, as
//! its user and working directory, in mount and PID namespaces of its own. The test says
//! which it used.
//!
//! CI runs it after `scripts/image`; without `LLMESH_IMAGE_ARCHIVE` it has nothing to test.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llmesh_proto::auth::v1 as apb;
use llmesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use llmesh_proto::llm::v1 as pb;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;
use llmesh_tests::{PASSWORD, TempDir, bearer, free_port};
use serde_json::Value;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn blob(oci: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    oci.join("blobs/sha256").join(hex)
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

/// The image's config and its root file system, unpacked under `dir`.
fn unpack(archive: &Path, dir: &Path) -> (Value, PathBuf) {
    let oci = dir.join("oci");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&oci).expect("dir");
    std::fs::create_dir_all(&rootfs).expect("dir");
    let (ok, out) = run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&oci));
    assert!(ok, "unpacking {}: {out}", archive.display());
    let index = json(&oci.join("index.json"));
    let manifest = json(&blob(
        &oci,
        index["manifests"][0]["digest"].as_str().expect("manifest"),
    ));
    let config = json(&blob(
        &oci,
        manifest["config"]["digest"].as_str().expect("config"),
    ));
    for layer in manifest["layers"].as_array().expect("layers") {
        let path = blob(&oci, layer["digest"].as_str().expect("layer"));
        let (ok, out) = run(Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(&rootfs));
        assert!(ok, "unpacking a layer: {out}");
    }
    (config["config"].clone(), rootfs)
}

/// Settings the test adds: the sandbox's Python runtime is not what this test is about.
const EXTRA_ENV: &[(&str, &str)] = &[("LLMESH__SANDBOX__PREPARE_AT_START", "false")];

/// A started image, stopped on drop: the container removed, or every process of the
/// unshare's process group killed (llmesh runs as another user there, which clears the
/// parent-death signal `--kill-child` would send).
enum Running {
    Podman(Child, String),
    Unshare(Child),
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Podman(child, name) => {
                let _ = Command::new("podman")
                    .args(["--storage-driver", "vfs", "rm", "-f", "-t", "2"])
                    .arg(name.as_str())
                    .output();
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Unshare(child) => {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .output();
                let _ = child.wait();
            }
        }
    }
}

/// Starts the image: podman when it can run containers here, else unshare.
fn start(archive: &Path, config: &Value, rootfs: &Path, port: u16) -> (Running, &'static str) {
    let entrypoint: Vec<String> = config["Entrypoint"]
        .as_array()
        .expect("entrypoint")
        .iter()
        .map(|v| v.as_str().expect("string").to_owned())
        .collect();
    let args = ["serve", "--bind", &format!("127.0.0.1:{port}")].map(str::to_owned);
    let (loaded, out) = run(Command::new("podman")
        .args(["--storage-driver", "vfs", "load", "-q", "-i"])
        .arg(archive));
    if loaded {
        let image = out.lines().last().unwrap_or_default().trim();
        let image = image.rsplit(' ').next().unwrap_or(image).to_owned();
        let (works, why) = run(Command::new("podman").args([
            "--storage-driver",
            "vfs",
            "run",
            "--rm",
            "--network",
            "host",
            &image,
            "--version",
        ]));
        if works {
            let name = format!("llmesh-image-test-{port}");
            let mut cmd = Command::new("podman");
            cmd.args([
                "--storage-driver",
                "vfs",
                "run",
                "--rm",
                "--network",
                "host",
            ])
            .args(["--name", &name]);
            for (k, v) in EXTRA_ENV {
                cmd.arg("-e").arg(format!("{k}={v}"));
            }
            let child = cmd
                .arg(&image)
                .args(&args)
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("podman run");
            return (Running::Podman(child, name), "podman");
        }
        eprintln!(
            "podman cannot run containers on this machine ({}); starting the image's root file system with unshare instead",
            why.lines().last().unwrap_or_default()
        );
    } else {
        eprintln!("podman cannot load the image ({out}); starting it with unshare");
    }
    // What a container runtime provides: name resolution and /proc.
    for f in ["/etc/resolv.conf", "/etc/hosts"] {
        if Path::new(f).exists() {
            std::fs::copy(f, rootfs.join(&f[1..])).expect("copy name resolution");
        }
    }
    std::fs::create_dir_all(rootfs.join("proc")).expect("proc");
    let user = config["User"].as_str().expect("user");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork", "--mount-proc"])
        .arg(format!("--root={}", rootfs.display()))
        .arg(format!(
            "--wd={}",
            config["WorkingDir"].as_str().expect("working dir")
        ))
        .args(["--setuid", uid, "--setgid", gid])
        .args(&entrypoint)
        .args(&args)
        .env_clear();
    for e in config["Env"].as_array().into_iter().flatten() {
        if let Some((k, v)) = e.as_str().and_then(|e| e.split_once('=')) {
            cmd.env(k, v);
        }
    }
    cmd.envs(EXTRA_ENV.iter().copied());
    for (k, v) in std::env::vars() {
        // Where the index is, not what to trust: the image's own CA bundle must do.
        if k == "PIP_INDEX_URL" || k.ends_with("_PROXY") || k.ends_with("_proxy") {
            cmd.env(k, v);
        }
    }
    let child = cmd
        .process_group(0)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("unshare");
    (Running::Unshare(child), "unshare")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_health_and_generate() {
    let Some(archive) = std::env::var_os("LLMESH_IMAGE_ARCHIVE").map(PathBuf::from) else {
        eprintln!("no image to test: set LLMESH_IMAGE_ARCHIVE to the archive scripts/image wrote");
        return;
    };
    let dir = TempDir::new("llmesh-image");
    let (config, rootfs) = unpack(&archive, &dir.path);

    // The layout the chart relies on.
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/opt/llmesh/llmesh"])
    );
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["WorkingDir"], "/var/lib/llmesh");
    assert!(
        rootfs.join("opt/llmesh/web/index.html").is_file(),
        "the UI is inside"
    );
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file());
    for shell in ["bin/sh", "bin/bash", "usr/bin/sh", "usr/bin/python3"] {
        assert!(!rootfs.join(shell).exists(), "{shell} is in the image");
    }

    let port = free_port();
    let (_running, how) = start(&archive, &config, &rootfs, port);
    eprintln!("the image runs under {how} on port {port}");
    let url = format!("http://127.0.0.1:{port}");

    // SERVING once the models are pulled (from the package index, inside the image) and
    // the chat model is loaded.
    let started = Instant::now();
    let channel = loop {
        assert!(
            started.elapsed() < Duration::from_secs(420),
            "the image did not become ready in 7 minutes"
        );
        if let Ok(channel) = Channel::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
        {
            let status = HealthClient::new(channel.clone())
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "llmesh.llm.v1.LlmService".into(),
                })
                .await
                .map(|r| r.into_inner().status);
            if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                break channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("ready after {:.1} s", started.elapsed().as_secs_f64());

    let mut auth = AuthServiceClient::new(channel.clone());
    auth.register(apb::RegisterRequest {
        email: "admin@example.com".into(),
        password: PASSWORD.into(),
        display_name: String::new(),
    })
    .await
    .expect("register");
    let token = auth
        .login(apb::LoginRequest {
            email: "admin@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("tokens")
        .access_token;
    let mut stream = LlmServiceClient::new(channel)
        .generate(bearer(
            &token,
            pb::GenerateRequest {
                model: "smollm2-135m-instruct".into(),
                input: Some(pb::generate_request::Input::Prompt(
                    "1, 2, 3, 4, 5, 6, 7, 8,".into(),
                )),
                sampling: Some(pb::SamplingParams {
                    temperature: Some(0.0),
                    max_tokens: Some(12),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("generate")
        .into_inner();
    let mut text = String::new();
    while let Some(msg) = stream.message().await.expect("stream") {
        if let Some(pb::generate_response::Event::Delta(d)) = msg.event {
            text.push_str(&d);
        }
    }
    assert_eq!(text, " 9, 10, 11, ");
}

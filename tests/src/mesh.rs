//! The whole product split into processes behind a real edge: auth, billing, llm ×2,
//! chat ×2 and sandbox as separate `llmesh serve --services X` processes (the binary built with the
//! tests) on one fresh Postgres database, with nginx in front, configured by
//! `scripts/edge-nginx` from `helm/llmesh/routes.yaml`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llmesh::Config;

use crate::{Backend, TempDir, TestDb, free_port};

/// The service token every process of a test mesh shares, unless the test names one.
pub const SERVICE_TOKEN: &str = "mesh-test-service-token-0123456789abcdef";

/// One llmesh process of the mesh.
struct Proc {
    name: &'static str,
    services: &'static str,
    binary: PathBuf,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running mesh; dropping it stops every process.
pub struct Mesh {
    procs: Mutex<Vec<Proc>>,
    nginx: Option<Child>,
    /// The edge's gRPC listener (HTTP/2 without TLS).
    pub grpc_url: String,
    /// The edge's HTTP/1.1 listener: grpc-web and the web UI.
    pub http_url: String,
    dir: TempDir,
}

/// The processes of the test mesh: name and `--services`.
pub const LAYOUT: &[(&str, &str)] = &[
    ("auth", "auth"),
    ("billing", "billing"),
    ("llm-1", "llm"),
    ("llm-2", "llm"),
    ("chat-1", "chat"),
    ("chat-2", "chat"),
    ("sandbox", "sandbox"),
];

/// The `llmesh` binary built with this test crate.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> → target/<profile>/llmesh-under-test
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("llmesh-under-test");
    assert!(
        bin.is_file(),
        "{} is missing: cargo builds it with the tests of llmesh-tests",
        bin.display()
    );
    bin
}

/// The nginx binary (Debian installs it in /usr/sbin).
fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

impl Mesh {
    /// Starts the test mesh on `db` (Postgres), each process configured by `base` and then
    /// given its port and peers. Returns None, saying why, when nginx is missing outside CI.
    pub async fn start(db: &TestDb, base: &Config) -> Option<Mesh> {
        Self::start_with(db, base, &binary(), LAYOUT, true).await
    }

    /// Starts `layout` (process name, its `--services`) of `binary` on `db`, behind the
    /// nginx edge when `edge` is set. Peers are found by the services each process runs;
    /// with an edge, chat reaches llm through it (which spreads calls over the copies).
    pub async fn start_with(
        db: &TestDb,
        base: &Config,
        binary: &Path,
        layout: &[(&'static str, &'static str)],
        edge: bool,
    ) -> Option<Mesh> {
        assert!(
            db.backend == Backend::Postgres || layout.len() == 1,
            "processes of a mesh share one Postgres"
        );
        let nginx_bin = match (edge, nginx()) {
            (false, _) => None,
            (true, Some(bin)) => Some(bin),
            (true, None) => {
                if std::env::var_os("CI").is_some() {
                    panic!("nginx is required in CI (apt-get install nginx)");
                }
                eprintln!("skipping the mesh variant: nginx is not installed");
                return None;
            }
        };
        let dir = TempDir::new("llmesh-mesh");
        let grpc_port = free_port();
        let http_port = free_port();
        let edge_url = format!("http://127.0.0.1:{grpc_port}");
        let ports: Vec<u16> = layout.iter().map(|_| free_port()).collect();
        let url_of = |service: &str| {
            layout
                .iter()
                .position(|(_, s)| s.split(',').any(|s| s == service))
                .map(|i| format!("http://127.0.0.1:{}", ports[i]))
        };
        let mut procs = Vec::new();
        for ((name, services), port) in layout.iter().zip(&ports) {
            let mut config = base.clone();
            config.server.bind = format!("127.0.0.1:{port}");
            config.database.url = db.url.clone();
            config.peers.service_token = base
                .peers
                .service_token
                .clone()
                .or_else(|| Some(SERVICE_TOKEN.into()));
            config.peers.auth_url = url_of("auth");
            config.peers.billing_url = url_of("billing");
            config.peers.llm_url = if nginx_bin.is_some() {
                Some(edge_url.clone())
            } else {
                url_of("llm")
            };
            if services.split(',').any(|s| s == "auth") {
                config.server.reflection = "all".into();
            }
            let path = dir.path.join(format!("{name}.toml"));
            std::fs::write(&path, toml::to_string(&config).expect("config as TOML"))
                .expect("write config");
            procs.push(Proc {
                name,
                services,
                binary: binary.to_path_buf(),
                port: *port,
                config: path,
                log: dir.path.join(format!("{name}.log")),
                child: None,
            });
        }
        for p in &mut procs {
            p.child = Some(spawn(p));
        }
        let (nginx, grpc_url, http_url) = match nginx_bin {
            Some(bin) => (
                Some(start_edge(&procs, &dir.path, &bin, grpc_port, http_port)),
                edge_url,
                format!("http://127.0.0.1:{http_port}"),
            ),
            None => {
                let direct = format!("http://127.0.0.1:{}", ports[0]);
                (None, direct.clone(), direct)
            }
        };
        let mesh = Mesh {
            procs: Mutex::new(procs),
            nginx,
            grpc_url,
            http_url,
            dir,
        };
        for (name, _) in layout {
            mesh.wait_ready(name).await;
        }
        Some(mesh)
    }

    /// The URL of one process (not through the edge).
    pub fn url(&self, name: &str) -> String {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let p = procs.iter().find(|p| p.name == name).expect("process");
        format!("http://127.0.0.1:{}", p.port)
    }

    /// Waits until process `name` reports SERVING for the process and for each gRPC
    /// service it was started with (up to 90 s): a port answered by some other process
    /// would not name them.
    pub async fn wait_ready(&self, name: &str) {
        use tonic_health::pb::health_check_response::ServingStatus;
        let url = self.url(name);
        let services = {
            let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            let p = procs.iter().find(|p| p.name == name).expect("process");
            p.services
        };
        let mut wanted = vec![String::new()];
        for short in services.split(',') {
            let prefix = format!("llmesh.{short}.v1.");
            wanted.extend(
                llmesh::ALL_SERVICE_NAMES
                    .iter()
                    .filter(|full| full.starts_with(&prefix))
                    .map(|full| (*full).to_owned()),
            );
        }
        let started = Instant::now();
        loop {
            self.check_alive(name);
            if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())
                .expect("url")
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let mut serving = true;
                for service in &wanted {
                    let answer = health
                        .check(tonic_health::pb::HealthCheckRequest {
                            service: service.clone(),
                        })
                        .await;
                    if !matches!(answer, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32)
                    {
                        serving = false;
                        break;
                    }
                }
                if serving {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{name} did not become ready:\n{}",
                self.log(name)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Panics with the process's log if it exited.
    fn check_alive(&self, name: &str) {
        let exited = {
            let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            let p = procs.iter_mut().find(|p| p.name == name).expect("process");
            p.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
        };
        if let Some(status) = exited {
            panic!("{name} exited ({status}):\n{}", self.log(name));
        }
    }

    /// The process id of process `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let p = procs.iter().find(|p| p.name == name).expect("process");
        p.child.as_ref().map(Child::id)
    }

    /// The output of process `name` so far.
    pub fn log(&self, name: &str) -> String {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let p = procs.iter().find(|p| p.name == name).expect("process");
        std::fs::read_to_string(&p.log).unwrap_or_default()
    }

    /// Kills process `name` at once (SIGKILL: no draining, as a crash).
    pub fn kill(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let p = procs.iter_mut().find(|p| p.name == name).expect("process");
        if let Some(mut child) = p.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts process `name` again with its config and waits until it is ready.
    pub async fn restart(&self, name: &str) {
        {
            let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            let p = procs.iter_mut().find(|p| p.name == name).expect("process");
            assert!(p.child.is_none(), "{name} is running");
            p.child = Some(spawn(p));
        }
        self.wait_ready(name).await;
    }

    /// Where the mesh's files are (configs, logs, nginx).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }
}

/// Renders the edge's configuration from the route table and starts nginx.
fn start_edge(
    procs: &[Proc],
    dir: &Path,
    nginx_bin: &Path,
    grpc_port: u16,
    http_port: u16,
) -> Child {
    let upstream = |service: &str| {
        let servers: Vec<String> = procs
            .iter()
            .filter(|p| p.services.split(',').any(|s| s == service))
            .map(|p| format!("127.0.0.1:{}", p.port))
            .collect();
        format!("{service}={}", servers.join(","))
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/edge-nginx");
    let prefix = dir.join("nginx");
    let rendered = Command::new("python3")
        .arg(&script)
        .args(["--prefix", &prefix.display().to_string()])
        .args(["--grpc-port", &grpc_port.to_string()])
        .args(["--http-port", &http_port.to_string()])
        .args(["--upstream", &upstream("auth")])
        .args(["--upstream", &upstream("billing")])
        .args(["--upstream", &upstream("llm")])
        .args(["--upstream", &upstream("chat")])
        .args(["--upstream", &upstream("sandbox")])
        .output()
        .expect("run scripts/edge-nginx");
    assert!(
        rendered.status.success(),
        "edge-nginx: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, &rendered.stdout).expect("write nginx.conf");
    Command::new(nginx_bin)
        .args(["-p", &prefix.display().to_string()])
        .args(["-c", &conf.display().to_string()])
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx")
}

fn spawn(p: &Proc) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .expect("log file");
    Command::new(&p.binary)
        .args(["--config", &p.config.display().to_string()])
        .args(["serve", "--services", p.services])
        .env("RUST_LOG", "info")
        // Spans reach the test's OTLP receiver promptly.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env_remove("LLMESH__SERVER__BIND")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start llmesh")
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            let _ = nginx.kill();
            let _ = nginx.wait();
        }
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for p in procs.iter_mut() {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

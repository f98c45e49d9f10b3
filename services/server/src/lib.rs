//! The `llmesh` binary as a library: configuration, composition of the services into one
//! server, and the operator commands. Tests start servers through [`start`].

pub mod chat_llm;
pub mod cli;
pub mod spend;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use llmesh_auth::AuthConfig;
use llmesh_auth::remote::{RemoteApiKeyResolver, RemoteKeySource};
use llmesh_billing::BillingConfig;
use llmesh_chat::ChatConfig;
use llmesh_kit::authn::{ApiKeyResolver, Authenticator};
use llmesh_kit::config::{ConfigError, DatabaseConfig, LogConfig, ServerConfig, invalid};
use llmesh_kit::jwt::{KeySource, TokenVerifier};
use llmesh_kit::principal::AccessTable;
use llmesh_kit::serve::{RunningServer, Services};
use llmesh_kit::{Clock, db};
use llmesh_llm::LlmConfig;
use llmesh_llm::pull::Progress;
use llmesh_proto::auth::v1::auth_service_server::AuthServiceServer;
use llmesh_proto::billing::v1::billing_service_server::BillingServiceServer;
use llmesh_proto::chat::v1::chat_archive_service_server::ChatArchiveServiceServer;
use llmesh_proto::chat::v1::chat_service_server::ChatServiceServer;
use llmesh_proto::llm::v1::llm_service_server::LlmServiceServer;
use sea_orm::DatabaseConnection;
use serde::Deserialize;

/// Every service llmesh defines, and whether this build implements it.
pub const ALL_SERVICES: &[(&str, bool)] = &[
    ("auth", true),
    ("llm", true),
    ("chat", true),
    ("billing", true),
    ("sandbox", false),
];

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub llm: LlmConfig,
    pub billing: BillingConfig,
    pub chat: ChatConfig,
    pub peers: PeersConfig,
}

/// How services in separate processes find and trust each other.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeersConfig {
    /// URL of the auth service when it runs in another process, e.g. http://auth:7700.
    pub auth_url: Option<String>,
    /// URL of the billing service when llm runs without it in its process.
    pub billing_url: Option<String>,
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
        self.auth.validate()?;
        self.llm.validate()?;
        self.billing.validate()?;
        self.chat.validate()?;
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
        match ALL_SERVICES.iter().find(|(n, _)| *n == name) {
            None => bail!(
                "unknown service {name:?}: choose from {}",
                ALL_SERVICES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some((_, false)) => {
                bail!(
                    "the {name} service is not part of this build yet: run `--services auth,llm,billing`"
                )
            }
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
    ALL_SERVICES
        .iter()
        .filter(|(_, implemented)| *implemented)
        .map(|(n, _)| (*n).to_owned())
        .collect()
}

/// A started server with handles tests and the CLI use.
pub struct App {
    pub server: RunningServer,
    pub db: DatabaseConnection,
    pub auth: Option<Arc<llmesh_auth::AuthService>>,
    pub llm: Option<Arc<llmesh_llm::LlmService>>,
    pub billing: Option<Arc<llmesh_billing::BillingService>>,
    pub chat: Option<Arc<llmesh_chat::ChatService>>,
}

/// Reports model pull progress while the server prepares (model id, progress).
pub type PullProgress<'a> = &'a (dyn Fn(&str, &Progress) + Sync);

/// Opens and migrates the database named by the config.
pub async fn open_database(config: &DatabaseConfig) -> anyhow::Result<DatabaseConnection> {
    let conn = db::connect(config).await?;
    db::migrate(&conn).await?;
    Ok(conn)
}

/// Starts the given services on one port and returns once it is listening.
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

    if config.peers.billing_url.is_some() && config.peers.service_token.is_none() {
        bail!(
            "peers.billing_url needs peers.service_token: the same secret in every llmesh process"
        );
    }
    let service_token = match &config.peers.service_token {
        Some(token) => token.clone(),
        None => {
            let random: [u8; 32] = rand::random();
            random.iter().map(|b| format!("{b:02x}")).collect()
        }
    };

    let mut routes = tonic::service::RoutesBuilder::default();
    let mut names = Vec::new();
    let mut tables: Vec<AccessTable> = Vec::new();
    let max = config.server.max_message_bytes;
    let mut billing = None;
    if services.iter().any(|s| s == "billing") {
        let service = Arc::new(llmesh_billing::BillingService::new(
            llmesh_billing::store::BillingStore::new(conn.clone()),
            config.billing.clone(),
            clock.clone(),
        ));
        // Reservations a previous run left open are released once expired, now and later.
        service.spawn_sweeper();
        routes.add_service(
            BillingServiceServer::from_arc(Arc::new(llmesh_billing::GrpcBillingAdapter::new(
                service.clone(),
            )))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        );
        names.push(llmesh_billing::SERVICE_NAME);
        tables.push(llmesh_billing::ACCESS);
        billing = Some(service);
    }

    let mut auth = None;
    let (keys, api_keys): (Arc<dyn KeySource>, Arc<dyn ApiKeyResolver>) =
        if services.iter().any(|s| s == "auth") {
            let listeners: Vec<Arc<dyn llmesh_auth::UserListener>> = billing
                .iter()
                .map(|b| {
                    Arc::new(BillingUserListener(b.clone())) as Arc<dyn llmesh_auth::UserListener>
                })
                .collect();
            let service =
                llmesh_auth::build(conn.clone(), config.auth.clone(), clock.clone(), listeners)
                    .await
                    .context("starting the auth service")?;
            routes.add_service(
                AuthServiceServer::from_arc(Arc::new(llmesh_auth::GrpcAuthAdapter::new(
                    service.clone(),
                )))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            );
            names.push(llmesh_auth::SERVICE_NAME);
            tables.push(llmesh_auth::ACCESS);
            auth = Some(service.clone());
            (service.keyring().clone(), service)
        } else {
            let url =
                config.peers.auth_url.clone().with_context(
                    || "peers.auth_url is required when auth runs in another process",
                )?;
            let token = config.peers.service_token.clone().with_context(
                || "peers.service_token is required when services run in separate processes",
            )?;
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .with_context(|| format!("peers.auth_url {url:?} is not a URL"))?
                .connect_lazy();
            (
                Arc::new(RemoteKeySource::new(channel.clone())),
                Arc::new(RemoteApiKeyResolver::new(
                    channel,
                    token,
                    Duration::from_secs(config.peers.api_key_cache_secs),
                )),
            )
        };

    let mut llm = None;
    if services.iter().any(|s| s == "llm") {
        // Generation spends through billing: in memory when it runs here, over gRPC when
        // peers.billing_url names it, and not at all (free, logged once) otherwise.
        let spend: Arc<dyn llmesh_llm::spend::SpendHook> =
            match (&billing, &config.peers.billing_url) {
                (Some(b), _) => Arc::new(spend::InProcessBilling(b.clone())),
                (None, Some(url)) => {
                    let channel = tonic::transport::Endpoint::from_shared(url.clone())
                        .with_context(|| format!("peers.billing_url {url:?} is not a URL"))?
                        .connect_lazy();
                    Arc::new(spend::RemoteBilling::new(
                        channel,
                        service_token.clone(),
                        config.billing.currency.clone(),
                    ))
                }
                (None, None) => Arc::new(llmesh_llm::spend::NoBilling),
            };
        let service = Arc::new(llmesh_llm::LlmService::new(config.llm.clone(), spend)?);
        service
            .prepare(progress)
            .await
            .context("preparing the models")?;
        routes.add_service(
            LlmServiceServer::from_arc(Arc::new(llmesh_llm::GrpcLlmAdapter::new(service.clone())))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        names.push(llmesh_llm::SERVICE_NAME);
        tables.push(llmesh_llm::ACCESS);
        llm = Some(service);
    }

    let mut chat = None;
    if services.iter().any(|s| s == "chat") {
        // Chat reaches llm in memory; a split deployment needs llm in the same process for
        // now (a gRPC LlmClient is future work).
        let Some(llm_service) = &llm else {
            bail!(
                "the chat service needs the llm service in the same process: run `--services chat,llm` (with billing)"
            );
        };
        let service = Arc::new(llmesh_chat::ChatService::new(
            llmesh_chat::store::ChatStore::new(conn.clone()),
            Arc::new(chat_llm::InProcessLlm(llm_service.clone())),
            config.chat.clone(),
            clock.clone(),
        ));
        routes.add_service(
            ChatServiceServer::from_arc(Arc::new(llmesh_chat::GrpcChatAdapter::new(
                service.clone(),
                llm_service.spend_currency(),
            )))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        );
        names.push(llmesh_chat::SERVICE_NAME);
        tables.push(llmesh_chat::ACCESS);
        routes.add_service(
            ChatArchiveServiceServer::from_arc(Arc::new(llmesh_chat::GrpcChatArchiveAdapter::new(
                service.clone(),
            )))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        );
        names.push(llmesh_chat::ARCHIVE_SERVICE_NAME);
        tables.push(llmesh_chat::ARCHIVE_ACCESS);
        chat = Some(service);
    }

    let verifier = TokenVerifier::new(keys, clock.clone());
    let authenticator = Arc::new(Authenticator::new(
        verifier,
        api_keys,
        &service_token,
        &tables,
    ));
    let server = llmesh_kit::serve::serve(
        listener,
        &config.server,
        Services {
            routes: routes.routes(),
            names,
            authenticator,
        },
        signal,
    )?;
    Ok(App {
        server,
        db: conn,
        auth,
        llm,
        billing,
        chat,
    })
}

/// Tells billing when auth deletes a user, so the account is kept but marked deleted.
pub struct BillingUserListener(pub Arc<llmesh_billing::BillingService>);

#[async_trait::async_trait]
impl llmesh_auth::UserListener for BillingUserListener {
    async fn user_deleted(&self, user_id: &str) {
        if let Err(e) = self.0.user_deleted(user_id).await {
            tracing::error!(user_id, error = %e, "marking a deleted user's account failed");
        }
    }
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

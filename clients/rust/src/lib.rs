//! The Rust SDK for [llmesh](https://example.invalid/llmesh): typed clients for every
//! service (generated from the contracts in proto/, re-exported from `llmesh-proto`),
//! sign-in with an API key or a password, a deadline on every call, retries where they
//! are safe, errors that say what happened, and helpers for the calls that stream.
//!
//! ```no_run
//! # async fn run() -> llmesh_client::Result<()> {
//! use llmesh_client::{Client, Credentials};
//!
//! let client = Client::connect(
//!     "http://127.0.0.1:7700",
//!     Credentials::ApiKey(std::env::var("LLMESH_API_KEY").unwrap_or_default()),
//! )
//! .await?;
//! let conversation = client.create_conversation("Hello").await?;
//! let mut reply = client.send_message(&conversation.id, "Say hello").await?;
//! while let Some(delta) = reply.next_delta().await {
//!     print!("{}", delta?);
//! }
//! let message = reply.message().expect("the reply has ended");
//! println!("\n{:?} tokens, cost {:?}", message.usage, message.cost);
//! # Ok(())
//! # }
//! ```
//!
//! The generated clients are reachable as [`Client::chat`], [`Client::llm`] and so on; they
//! return `tonic::Status`, which converts into [`Error`] with `?`.

#![warn(missing_docs)]

pub mod chat;
pub mod credentials;
pub mod deadline;
pub mod error;
pub mod files;
pub mod generate;
pub mod retry;
pub mod sandbox;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{ClientTlsConfig, Endpoint};

pub use credentials::Credentials;
pub use error::{Code, Error, Result};
pub use llmesh_proto as proto;
pub use retry::{RetryLayer, RetryPolicy};
pub use transport::{Transport, TransportError};

use credentials::{API_KEY_HEADER, Session, Signer, WithCredentials};
use deadline::DeadlineLayer;
use llmesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_proto::chat::v1::chat_archive_service_client::ChatArchiveServiceClient;
use llmesh_proto::chat::v1::chat_service_client::ChatServiceClient;
use llmesh_proto::chat::v1::knowledge_service_client::KnowledgeServiceClient;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;
use llmesh_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;

/// How long a call answered with one message may take unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a streamed call (a chat reply, an import, a run) may take by default.
pub const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest message the clients accept (exports and file reads come in chunks below it).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A connection to one llmesh deployment (a single `llmesh serve`, or an edge in front of
/// many), signed in as one caller. Cheap to clone; clones share the connection and session.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    session: Option<Arc<Session>>,
    url: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("signed_in", &self.session.is_some())
            .finish()
    }
}

/// Options of a [`Client`]; [`ClientBuilder::connect`] opens it.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    credentials: Credentials,
    timeout: Duration,
    stream_timeout: Option<Duration>,
    connect_timeout: Duration,
    retry: RetryPolicy,
}

impl ClientBuilder {
    /// The credentials calls are made with (anonymous by default).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Calls as the owner of an API key.
    pub fn api_key(self, key: impl Into<String>) -> Self {
        self.credentials(Credentials::ApiKey(key.into()))
    }

    /// Signs in with an email and password when connecting.
    pub fn password(self, email: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials(Credentials::Password {
            email: email.into(),
            password: password.into(),
        })
    }

    /// The deadline of calls answered with one message ([`DEFAULT_TIMEOUT`] unless set).
    /// A call's own `Request::set_timeout` wins over it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The deadline of streamed calls ([`DEFAULT_STREAM_TIMEOUT`] unless set; `None` for
    /// none).
    pub fn stream_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.stream_timeout = timeout;
        self
    }

    /// How long connecting may take (10 s unless set).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How retry-safe calls are retried after UNAVAILABLE ([`RetryPolicy::default`]
    /// unless set; [`RetryPolicy::none`] turns retries off).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Connects, and signs in when the credentials are a password. Fails with
    /// UNAVAILABLE when nothing answers at the URL, UNAUTHENTICATED when the password is
    /// wrong.
    pub async fn connect(self) -> Result<Client> {
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|_| {
                Error::local(
                    Code::InvalidArgument,
                    format!(
                        "{:?} is not a URL like http://127.0.0.1:7700 or https://llmesh.example.com",
                        self.url
                    ),
                )
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let endpoint = if self.url.starts_with("https://") {
            endpoint
                .tls_config(ClientTlsConfig::new().with_webpki_roots())
                .map_err(|e| Error::local(Code::InvalidArgument, format!("tls: {e}")))?
        } else {
            endpoint
        };
        let channel = endpoint.connect().await.map_err(|e| {
            Error::local(
                Code::Unavailable,
                format!(
                    "cannot reach llmesh at {}: {}; check the URL and that the server runs",
                    self.url,
                    describe(&e)
                ),
            )
        })?;
        let retried = tower::ServiceBuilder::new()
            .layer(DeadlineLayer::new(self.timeout, self.stream_timeout))
            .layer(RetryLayer::new(self.retry))
            .service(channel);
        let bare = transport::boxed(retried.clone());
        let (signer, session) = match &self.credentials {
            Credentials::Anonymous => (Signer::Anonymous, None),
            Credentials::ApiKey(key) => (Signer::header(API_KEY_HEADER, key)?, None),
            Credentials::AccessToken(token) => (
                Signer::header("authorization", &format!("Bearer {token}"))?,
                None,
            ),
            Credentials::Password { email, password } => {
                let session = Arc::new(Session::login(bare.clone(), email, password).await?);
                (Signer::Session(session.clone()), Some(session))
            }
        };
        let transport = transport::boxed(WithCredentials {
            inner: retried,
            signer,
        });
        Ok(Client {
            transport,
            session,
            url: self.url,
        })
    }
}

/// The innermost cause of a connection error, which is the part that says what happened.
fn describe(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

impl Client {
    /// Options for a client of the deployment at `url` (e.g. `http://127.0.0.1:7700`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            credentials: Credentials::Anonymous,
            timeout: DEFAULT_TIMEOUT,
            stream_timeout: Some(DEFAULT_STREAM_TIMEOUT),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }

    /// Connects to `url` with `credentials` and the default options.
    pub async fn connect(url: impl Into<String>, credentials: Credentials) -> Result<Client> {
        Client::builder(url)
            .credentials(credentials)
            .connect()
            .await
    }

    /// The URL this client connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The transport every client here uses (credentials, deadlines and retries included),
    /// for a generated client this crate has no accessor for.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Ends a password session on the server. Later calls fail as UNAUTHENTICATED; a
    /// client with another kind of credential has nothing to end.
    pub async fn logout(&self) -> Result<()> {
        match &self.session {
            Some(session) => session.logout().await,
            None => Ok(()),
        }
    }

    /// Users, sign-in, API keys.
    pub fn auth(&self) -> AuthServiceClient<Transport> {
        AuthServiceClient::new(self.transport())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Conversations, messages, assistants, templates.
    pub fn chat(&self) -> ChatServiceClient<Transport> {
        ChatServiceClient::new(self.transport())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Search, export and import of conversations.
    pub fn archive(&self) -> ChatArchiveServiceClient<Transport> {
        ChatArchiveServiceClient::new(self.transport())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Knowledge collections: documents in (after an upload), search, citations.
    pub fn knowledge(&self) -> KnowledgeServiceClient<Transport> {
        KnowledgeServiceClient::new(self.transport())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Models, generation, embeddings, token counts.
    pub fn llm(&self) -> LlmServiceClient<Transport> {
        LlmServiceClient::new(self.transport())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Prices, balances, usage, quotas.
    pub fn billing(&self) -> BillingServiceClient<Transport> {
        BillingServiceClient::new(self.transport())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Code runs and workspace files.
    pub fn sandbox(&self) -> SandboxServiceClient<Transport> {
        SandboxServiceClient::new(self.transport())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

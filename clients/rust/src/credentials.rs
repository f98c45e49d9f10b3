//! Who a call is made as: an API key, a signed-in session (kept fresh with Refresh before
//! its access token expires), a bare access token, or nobody.

use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use llmesh_proto::auth::v1 as pb;
use llmesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::error::{Error, Result};
use crate::transport::Transport;

/// The header an API key travels in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// How the SDK proves who is calling.
#[derive(Clone)]
pub enum Credentials {
    /// No credential: only public calls (Register, Login, GetSignUpInfo) succeed.
    Anonymous,
    /// An API key (`lmk_…`): acts as its owner, capped by the key's role ceiling.
    ApiKey(String),
    /// An email and password: the SDK signs in, refreshes the session before its access
    /// token expires, and signs out with [`crate::Client::logout`].
    Password {
        /// The account's email.
        email: String,
        /// Its password (kept only until the sign-in).
        password: String,
    },
    /// An access token obtained elsewhere; it is not refreshed.
    AccessToken(String),
}

impl std::fmt::Debug for Credentials {
    /// Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::ApiKey(_) => write!(f, "ApiKey(…)"),
            Credentials::Password { email, .. } => write!(f, "Password({email}, …)"),
            Credentials::AccessToken(_) => write!(f, "AccessToken(…)"),
        }
    }
}

/// A signed-in session: the current token pair, refreshed one caller at a time (a refresh
/// token works once; two callers racing with it would end the session).
pub(crate) struct Session {
    auth: AuthServiceClient<Transport>,
    current: RwLock<Access>,
    refresh: tokio::sync::Mutex<Option<String>>,
}

#[derive(Clone)]
struct Access {
    token: String,
    /// When to refresh: before the token expires, by a margin.
    renew_at: Instant,
}

impl Session {
    /// Signs in with `email` and `password` through `bare` (a transport without
    /// credentials).
    pub(crate) async fn login(bare: Transport, email: &str, password: &str) -> Result<Session> {
        let mut auth = AuthServiceClient::new(bare);
        let answer = auth
            .login(pb::LoginRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await
            .map_err(Error::from)?;
        let server_now = server_time(answer.metadata());
        let pair = answer
            .into_inner()
            .tokens
            .ok_or_else(|| Error::local(Code::Internal, "login answered without tokens"))?;
        Ok(Session {
            auth,
            current: RwLock::new(access_of(&pair, server_now)),
            refresh: tokio::sync::Mutex::new(Some(pair.refresh_token)),
        })
    }

    /// The access token to send now, refreshed first when it is about to expire.
    pub(crate) async fn token(&self) -> Result<String> {
        let access = self.read();
        if access.token.is_empty() {
            return Err(ended());
        }
        if Instant::now() < access.renew_at {
            return Ok(access.token);
        }
        self.renew(&access.token).await
    }

    /// Refreshes the session unless another caller already replaced `stale`; returns the
    /// token to use.
    pub(crate) async fn renew(&self, stale: &str) -> Result<String> {
        let mut refresh = self.refresh.lock().await;
        let access = self.read();
        if access.token.is_empty() {
            return Err(ended());
        }
        if access.token != stale {
            return Ok(access.token);
        }
        let Some(token) = refresh.clone() else {
            return Err(ended());
        };
        let answer = self
            .auth
            .clone()
            .refresh(pb::RefreshRequest {
                refresh_token: token,
            })
            .await;
        let (pair, server_now) = match answer {
            Ok(r) => {
                let server_now = server_time(r.metadata());
                let pair = r.into_inner().tokens.ok_or_else(|| {
                    Error::local(Code::Internal, "refresh answered without tokens")
                })?;
                (pair, server_now)
            }
            Err(status) if status.code() == Code::Unauthenticated => {
                *refresh = None;
                return Err(ended());
            }
            Err(status) => return Err(status.into()),
        };
        let access = access_of(&pair, server_now);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = access.clone();
        *refresh = Some(pair.refresh_token);
        Ok(access.token)
    }

    /// Ends the session on the server (its refresh token stops working at once).
    pub(crate) async fn logout(&self) -> Result<()> {
        let access = self.token().await?;
        let Some(token) = self.refresh.lock().await.take() else {
            return Ok(());
        };
        let mut req = tonic::Request::new(pb::LogoutRequest {
            refresh_token: token,
        });
        if let Ok(value) = format!("Bearer {access}").parse() {
            req.metadata_mut().insert("authorization", value);
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Access {
            token: String::new(),
            renew_at: Instant::now(),
        };
        self.auth.clone().logout(req).await?;
        Ok(())
    }

    fn read(&self) -> Access {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The error every call gets once the session cannot be refreshed.
fn ended() -> Error {
    Error::local(
        Code::Unauthenticated,
        "the session has ended (signed out, revoked by an admin or a password change, or expired): sign in again",
    )
}

/// The server's clock when it answered (its `date` header), so token lifetimes are
/// measured on the clock that set them, whatever this machine's clock says.
fn server_time(metadata: &tonic::metadata::MetadataMap) -> Option<SystemTime> {
    let date = metadata.get("date")?.to_str().ok()?;
    httpdate::parse_http_date(date).ok()
}

/// When to renew a token: a minute before it expires, or half-way for short ones.
fn access_of(pair: &pb::TokenPair, server_now: Option<SystemTime>) -> Access {
    // `date` has whole seconds; the half second lost is within the margin.
    let now = server_now.unwrap_or_else(SystemTime::now);
    let left = pair
        .access_expires_at
        .as_ref()
        .and_then(|t| {
            let at = SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(t.seconds).ok()?)
                + Duration::from_nanos(u64::try_from(t.nanos).ok()?);
            at.duration_since(now).ok()
        })
        .unwrap_or_default();
    let margin = Duration::from_secs(60).min(left / 2);
    Access {
        token: pair.access_token.clone(),
        renew_at: Instant::now() + (left - margin),
    }
}

/// How [`WithCredentials`] signs each call.
#[derive(Clone)]
pub(crate) enum Signer {
    Anonymous,
    Header(&'static str, HeaderValue),
    Session(Arc<Session>),
}

impl Signer {
    pub(crate) fn header(name: &'static str, value: &str) -> Result<Signer> {
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            Error::local(
                Code::InvalidArgument,
                "the credential holds characters a header cannot carry",
            )
        })?;
        value.set_sensitive(true);
        Ok(Signer::Header(name, value))
    }
}

/// Adds the caller's credential to every call. With a session, a call refused as
/// UNAUTHENTICATED (its token expired on the way) is sent once more after a refresh:
/// the server refused it before doing anything.
#[derive(Clone)]
pub(crate) struct WithCredentials<S> {
    pub(crate) inner: S,
    pub(crate) signer: Signer,
}

impl<S> tower::Service<http::Request<Body>> for WithCredentials<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        match &self.signer {
            Signer::Anonymous => Box::pin(self.inner.call(req)),
            Signer::Header(name, value) => {
                req.headers_mut().insert(*name, value.clone());
                Box::pin(self.inner.call(req))
            }
            Signer::Session(session) => {
                let session = session.clone();
                let ready = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, ready);
                Box::pin(signed(inner, session, req))
            }
        }
    }
}

async fn signed<S>(
    mut inner: S,
    session: Arc<Session>,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, S::Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    let token = match session.token().await {
        Ok(t) => t,
        Err(e) => return Ok(Status::from(e).into_http()),
    };
    let (parts, body) = req.into_parts();
    // Every llmesh request is one message, so it can be kept to send again.
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(status) => return Ok(status.into_http()),
    };
    let build = |token: &str| {
        let mut req = http::Request::from_parts(parts.clone(), Body::new(Full::new(bytes.clone())));
        let value = HeaderValue::from_str(&format!("Bearer {token}"));
        if let Ok(mut value) = value {
            value.set_sensitive(true);
            req.headers_mut().insert(http::header::AUTHORIZATION, value);
        }
        req
    };
    let first = inner.ready().await?.call(build(&token)).await?;
    let refused = first
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"16");
    if !refused {
        return Ok(first);
    }
    match session.renew(&token).await {
        Ok(fresh) => inner.ready().await?.call(build(&fresh)).await,
        Err(e) => Ok(Status::from(e).into_http()),
    }
}

//! The authentication layer: reads the credential of every request, turns it into a
//! [`Caller`], applies the RPC's declared [`Access`] rule and leaves the caller in the
//! request extensions for the handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::jwt::TokenVerifier;
use crate::principal::{Access, AccessTable, Caller, Principal, authorize};
use crate::{ApiError, request_id};

/// Every API key secret starts with this, so a bearer token can be told apart from a JWT.
pub const API_KEY_PREFIX: &str = "lmk_";
/// Metadata key that carries an API key as an alternative to `authorization`.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Metadata key that carries the shared service credential between llmesh services.
pub const SERVICE_TOKEN_HEADER: &str = "x-llmesh-service-token";
/// With the service credential: the user a service acts for, their role, and the API key
/// the request came through (if any). Ignored as credentials without it.
pub const FORWARDED_USER_HEADER: &str = "x-llmesh-forwarded-user";
pub const FORWARDED_ROLE_HEADER: &str = "x-llmesh-forwarded-role";
pub const FORWARDED_KEY_HEADER: &str = "x-llmesh-forwarded-api-key";

/// Method prefixes that are public by design and never look at credentials.
const OPEN_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Turns an API key secret into the principal it acts as. In the process that runs auth
/// this is a direct store lookup (a revocation applies at once); elsewhere it is a call to
/// auth's ResolveApiKey with a cache of a few seconds.
#[async_trait::async_trait]
pub trait ApiKeyResolver: Send + Sync {
    async fn resolve(&self, secret: &str) -> Result<Principal, ApiError>;
}

/// Decides who is calling and whether the call is allowed.
pub struct Authenticator {
    verifier: TokenVerifier,
    api_keys: Arc<dyn ApiKeyResolver>,
    service_token_hash: [u8; 32],
    rules: HashMap<&'static str, Access>,
}

impl Authenticator {
    /// Builds an authenticator from the access tables of the registered services.
    pub fn new(
        verifier: TokenVerifier,
        api_keys: Arc<dyn ApiKeyResolver>,
        service_token: &str,
        tables: &[AccessTable],
    ) -> Self {
        let rules = tables.iter().flat_map(|t| t.iter().copied()).collect();
        Authenticator {
            verifier,
            api_keys,
            service_token_hash: Sha256::digest(service_token.as_bytes()).into(),
            rules,
        }
    }

    /// Returns the rule for a full method path, if one is declared.
    pub fn rule(&self, path: &str) -> Option<Access> {
        self.rules.get(path).copied()
    }

    /// Reads the credentials in `headers`. Absent credentials give an anonymous caller;
    /// present but bad ones are an error, never silently ignored.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let mut caller = Caller::default();
        if let Some(value) = headers.get(SERVICE_TOKEN_HEADER) {
            let given: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            // Comparing digests keeps the comparison independent of where the bytes differ.
            if given != self.service_token_hash {
                return Err(ApiError::unauthenticated("invalid service credential"));
            }
            caller.service = true;
        }
        let bearer = match headers.get(http::header::AUTHORIZATION) {
            Some(value) => Some(parse_bearer(value)?),
            None => None,
        };
        let api_key = match headers.get(API_KEY_HEADER) {
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| ApiError::unauthenticated("malformed x-api-key header"))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let credential = match (bearer, api_key) {
            (Some(_), Some(_)) => {
                return Err(ApiError::unauthenticated(
                    "send either authorization or x-api-key, not both",
                ));
            }
            (Some(token), None) => Some(token),
            (None, Some(key)) => {
                if !key.starts_with(API_KEY_PREFIX) {
                    return Err(ApiError::unauthenticated("malformed API key"));
                }
                Some(key)
            }
            (None, None) => None,
        };
        if let Some(token) = credential {
            let mut principal = if token.starts_with(API_KEY_PREFIX) {
                self.api_keys.resolve(&token).await?
            } else {
                self.verifier.verify(&token).await?
            };
            principal.via_service = caller.service;
            caller.principal = Some(principal);
        } else if let Some(user) = headers.get(FORWARDED_USER_HEADER) {
            if !caller.service {
                return Err(ApiError::unauthenticated(
                    "forwarded principals are accepted only with the service credential",
                ));
            }
            caller.principal = Some(forwarded_principal(user, headers)?);
        }
        Ok(caller)
    }
}

/// The principal a trusted service forwards in metadata.
fn forwarded_principal(
    user: &http::HeaderValue,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let text = |v: &http::HeaderValue| {
        v.to_str()
            .map(str::to_owned)
            .map_err(|_| ApiError::unauthenticated("malformed forwarded principal"))
    };
    let role = headers
        .get(FORWARDED_ROLE_HEADER)
        .map(text)
        .transpose()?
        .and_then(|r| crate::principal::Role::parse(&r))
        .ok_or_else(|| ApiError::unauthenticated("forwarded principal lacks a valid role"))?;
    let credential = match headers.get(FORWARDED_KEY_HEADER).map(text).transpose()? {
        Some(key_id) => crate::principal::CredentialKind::ApiKey { key_id },
        None => crate::principal::CredentialKind::AccessToken {
            session_id: String::new(),
        },
    };
    Ok(Principal {
        user_id: text(user)?,
        role,
        scopes: Vec::new(),
        credential,
        via_service: true,
    })
}

/// Adds the service credential and the forwarded principal to an outgoing request.
pub fn forward<T>(
    req: &mut tonic::Request<T>,
    service_token: &str,
    principal: &Principal,
) -> Result<(), ApiError> {
    let value = |s: &str| {
        s.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
            .map_err(|_| ApiError::internal("a forwarded value is not valid metadata"))
    };
    let md = req.metadata_mut();
    md.insert(SERVICE_TOKEN_HEADER, value(service_token)?);
    md.insert(FORWARDED_USER_HEADER, value(&principal.user_id)?);
    md.insert(FORWARDED_ROLE_HEADER, value(principal.role.as_str())?);
    if let Some(key) = principal.api_key_id() {
        md.insert(FORWARDED_KEY_HEADER, value(key)?);
    }
    Ok(())
}

fn parse_bearer(value: &http::HeaderValue) -> Result<String, ApiError> {
    let malformed =
        || ApiError::unauthenticated("malformed authorization header: expected `Bearer <token>`");
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(malformed());
    }
    Ok(token.to_owned())
}

/// Returns the caller the authentication layer found, from a tonic request.
pub fn caller<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default()
}

/// Returns the signed-in principal of a request, or UNAUTHENTICATED.
pub fn principal<T>(req: &tonic::Request<T>) -> Result<Principal, ApiError> {
    caller(req)
        .principal
        .ok_or_else(|| ApiError::unauthenticated("sign in first"))
}

/// Tower layer that runs an [`Authenticator`] in front of the gRPC routes.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone)]
pub struct AuthMiddleware<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B, RB> tower::Service<Request<B>> for AuthMiddleware<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The ready clone stays here; the fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let id = request_id::from_headers(req.headers()).unwrap_or_else(request_id::new_id);
        let deadline = crate::deadline::from_headers(req.headers());
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path.trim_start_matches('/'),
            method = %path,
            request_id = %id,
            trace_id = tracing::field::Empty,
            user_id = tracing::field::Empty,
            via = tracing::field::Empty,
        );
        // The caller's trace (W3C traceparent) continues here; logs carry its id.
        crate::trace::continue_from(req.headers(), &span);
        if let Some(trace) = crate::trace::trace_id(&span) {
            span.record("trace_id", trace.as_str());
        }
        let header = http::HeaderValue::from_str(&id).ok();
        let fut = async move {
            let started = Instant::now();
            if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
                return inner.call(req).await;
            }
            let caller = match auth.identify(req.headers()).await {
                Ok(caller) => caller,
                Err(err) => return Ok(reject(err)),
            };
            if let Some(p) = &caller.principal {
                let span = tracing::Span::current();
                span.record("user_id", p.user_id.as_str());
                span.record(
                    "via",
                    if p.api_key_id().is_some() {
                        "api_key"
                    } else {
                        "token"
                    },
                );
            }
            // A path without a rule is not a registered method; the router answers it.
            if let Some(rule) = auth.rule(&path)
                && let Err(err) = authorize(rule, &caller)
            {
                tracing::info!(code = ?err.code, reason = %err.message, "rpc refused");
                return Ok(reject(err));
            }
            req.extensions_mut().insert(caller);
            let result = inner.call(req).await;
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "rpc handled"
            );
            result
        };
        let fut = request_id::scope(id, crate::deadline::scope(deadline, fut.instrument(span)));
        Box::pin(async move {
            // A passed deadline is DEADLINE_EXCEEDED, as gRPC says. tonic's own timer,
            // outside this layer, would answer CANCELLED ("Timeout expired"); this one
            // fires at the same instant and is polled first.
            let answer = match deadline {
                Some(at) => tokio::time::timeout_at(at.into(), fut).await,
                None => Ok(fut.await),
            };
            let mut response = match answer {
                Ok(response) => response?,
                Err(_) => tonic::Status::deadline_exceeded(
                    "the call ran past its deadline (grpc-timeout); allow it more time",
                )
                .into_http(),
            };
            // Every answer names its request id, which the logs and internal errors carry.
            if let Some(value) = header {
                response.headers_mut().insert(request_id::HEADER, value);
            }
            Ok(response)
        })
    }
}

fn reject<RB: Default>(err: ApiError) -> Response<RB> {
    err.into_status().into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let ok = http::HeaderValue::from_static("Bearer abc.def");
        assert_eq!(parse_bearer(&ok).ok().as_deref(), Some("abc.def"));
        let lower = http::HeaderValue::from_static("bearer abc");
        assert!(parse_bearer(&lower).is_ok());
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc", "Bearer a b"] {
            let v = http::HeaderValue::from_static(bad);
            assert!(parse_bearer(&v).is_err(), "{bad} should be refused");
        }
    }
}

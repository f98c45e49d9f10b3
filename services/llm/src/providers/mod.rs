//! Hosted model providers beside the local models. An admin registers a provider (its wire
//! protocol, base URL, key, extra headers, timeout and the models it offers); its models
//! are then called "provider-id/model" and run through the same Generate, Embed,
//! CountTokens and ListModels as local ones, with the same billing. Secrets are sealed at
//! rest ([`seal`]) and never leave this module except towards the provider itself.

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod seal;
pub mod sse;
pub mod wire;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use llmesh_kit::db::{all, exec, from_micros, micros, one};
use sea_orm::{DatabaseConnection, QueryResult, TransactionTrait};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::config::LlmConfig;
use crate::error::{LlmError, Result};
use crate::registry::Kind;
use seal::{KeyRing, KeySource, SealKey, db_err};

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAiCompatible,
    Anthropic,
    Gemini,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAiCompatible => "openai-compatible",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
        }
    }

    pub fn parse(s: &str) -> Option<ProviderKind> {
        match s {
            "openai-compatible" | "openai" => Some(ProviderKind::OpenAiCompatible),
            "anthropic" => Some(ProviderKind::Anthropic),
            "gemini" => Some(ProviderKind::Gemini),
            _ => None,
        }
    }
}

/// One model a provider offers through llmesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderModel {
    pub name: String,
    pub context_length: u32,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A registered provider as the admin sees it (no secrets).
#[derive(Debug, Clone)]
pub struct Provider {
    pub id: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub header_names: Vec<String>,
    pub timeout: Duration,
    pub models: Vec<ProviderModel>,
    pub enabled: bool,
    pub has_api_key: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    sealed: Option<(String, String)>,
}

impl Provider {
    pub fn model(&self, name: &str) -> Option<&ProviderModel> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// What is sealed: the API key and the extra headers.
#[derive(Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub api_key: String,
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret(api_key: {}, headers: {:?})",
            if self.api_key.is_empty() {
                "none"
            } else {
                "redacted"
            },
            self.headers.keys().collect::<Vec<_>>()
        )
    }
}

/// A new provider.
#[derive(Debug, Clone)]
pub struct NewProvider {
    pub id: String,
    pub kind: Option<ProviderKind>,
    pub base_url: String,
    pub timeout_seconds: Option<u32>,
    pub models: Vec<ProviderModel>,
    pub enabled: bool,
    pub secret: Secret,
}

/// What UpdateProvider changes; None leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProviderChanges {
    pub base_url: Option<String>,
    pub timeout_seconds: Option<u32>,
    pub enabled: Option<bool>,
    pub models: Option<Vec<ProviderModel>>,
    pub api_key: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
}

/// The outcome of TestProvider.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub ok: bool,
    pub error: String,
    pub latency: Duration,
    pub models: Vec<String>,
}

/// A provider model resolved for one call: where to send it and with what.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Provider,
    pub model: ProviderModel,
    pub secret: Secret,
}

/// Limits on what admins register.
const MAX_MODELS: usize = 1000;
const MAX_HEADERS: usize = 16;
const MAX_SECRET_BYTES: usize = 4096;
const MAX_CONTEXT: u32 = 10_000_000;
/// Headers llmesh sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "anthropic-version",
    "host",
    "content-length",
    "content-type",
    "accept",
    "transfer-encoding",
    "connection",
];

/// The providers table, the ring that seals its secrets, and the HTTP client that reaches
/// the providers.
pub struct Providers {
    db: DatabaseConnection,
    config: LlmConfig,
    ring: OnceCell<KeyRing>,
    pub(crate) http: reqwest::Client,
}

impl Providers {
    pub fn new(db: DatabaseConnection, config: LlmConfig) -> Result<Providers> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("llmesh/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Internal(format!("HTTP client: {e}")))?;
        Ok(Providers {
            db,
            config,
            ring: OnceCell::new(),
            http,
        })
    }

    async fn ring(&self) -> Result<&KeyRing> {
        self.ring
            .get_or_try_init(|| KeyRing::load(&self.config, &self.db))
            .await
    }

    pub async fn list(&self) -> Result<Vec<Provider>> {
        let rows = all(&self.db, &format!("{SELECT} ORDER BY id"), vec![])
            .await
            .map_err(db_err)?;
        rows.iter().map(provider_row).collect()
    }

    pub async fn get(&self, id: &str) -> Result<Provider> {
        let row = one(&self.db, &format!("{SELECT} WHERE id = ?"), vec![id.into()])
            .await
            .map_err(db_err)?;
        match row {
            Some(r) => provider_row(&r),
            None => Err(LlmError::NotFound(format!(
                "provider {id:?} not found; ListProviders shows the registered ones"
            ))),
        }
    }

    pub async fn create(&self, new: NewProvider) -> Result<Provider> {
        check_provider_id(&new.id)?;
        let kind = new.kind.ok_or_else(|| {
            LlmError::Invalid(
                "provider.kind is required: openai-compatible, anthropic or gemini".into(),
            )
        })?;
        let base_url = check_base_url(&new.base_url, "provider.base_url")?;
        let timeout = check_timeout(
            new.timeout_seconds.unwrap_or(60),
            "provider.timeout_seconds",
        )?;
        check_models(kind, &new.id, &new.models, "provider.models")?;
        check_secret(&new.secret)?;
        let ring = self.ring().await?;
        let sealed = seal_secret(ring, &new.id, &new.secret)?;
        let now = Utc::now();
        let header_names: Vec<String> = new.secret.headers.keys().cloned().collect();
        let result = exec(
            &self.db,
            "INSERT INTO llm_providers (id, kind, base_url, header_names, has_api_key, sealed, sealed_key_id, timeout_seconds, models, enabled, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                new.id.clone().into(),
                kind.as_str().into(),
                base_url.into(),
                json(&header_names).into(),
                (!new.secret.api_key.is_empty()).into(),
                sealed.as_ref().map(|s| s.1.clone()).into(),
                sealed.as_ref().map(|s| s.0.clone()).into(),
                i64::from(timeout).into(),
                json(&new.models).into(),
                new.enabled.into(),
                micros(now).into(),
                micros(now).into(),
            ],
        )
        .await;
        match result {
            Ok(_) => {}
            Err(e) if llmesh_kit::db::is_unique_violation(&e) => {
                return Err(LlmError::ProviderExists(new.id.clone()));
            }
            Err(e) => return Err(db_err(e)),
        }
        tracing::info!(provider = %new.id, kind = kind.as_str(), models = new.models.len(), "provider registered");
        self.get(&new.id).await
    }

    pub async fn update(&self, id: &str, changes: ProviderChanges) -> Result<Provider> {
        let current = self.get(id).await?;
        let base_url = match &changes.base_url {
            Some(u) => check_base_url(u, "base_url")?,
            None => current.base_url.clone(),
        };
        let timeout = match changes.timeout_seconds {
            Some(t) => check_timeout(t, "timeout_seconds")?,
            None => current.timeout.as_secs() as u32,
        };
        let models = match changes.models {
            Some(m) => {
                check_models(current.kind, id, &m, "models")?;
                m
            }
            None => current.models.clone(),
        };
        let ring = self.ring().await?;
        let (sealed, header_names, has_api_key) =
            if changes.api_key.is_some() || changes.headers.is_some() {
                let mut secret = self.secret(&current).await.unwrap_or_default();
                if let Some(key) = changes.api_key {
                    secret.api_key = key;
                }
                if let Some(headers) = changes.headers {
                    secret.headers = headers;
                }
                check_secret(&secret)?;
                (
                    seal_secret(ring, id, &secret)?,
                    secret.headers.keys().cloned().collect(),
                    !secret.api_key.is_empty(),
                )
            } else {
                (
                    current.sealed.clone(),
                    current.header_names.clone(),
                    current.has_api_key,
                )
            };
        exec(
            &self.db,
            "UPDATE llm_providers SET base_url = ?, header_names = ?, has_api_key = ?, sealed = ?, sealed_key_id = ?, timeout_seconds = ?, models = ?, enabled = ?, updated_at = ? WHERE id = ?",
            vec![
                base_url.into(),
                json(&header_names).into(),
                has_api_key.into(),
                sealed.as_ref().map(|s| s.1.clone()).into(),
                sealed.as_ref().map(|s| s.0.clone()).into(),
                i64::from(timeout).into(),
                json(&models).into(),
                changes.enabled.unwrap_or(current.enabled).into(),
                micros(Utc::now()).into(),
                id.into(),
            ],
        )
        .await
        .map_err(db_err)?;
        tracing::info!(provider = %id, "provider updated");
        self.get(id).await
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        let n = exec(
            &self.db,
            "DELETE FROM llm_providers WHERE id = ?",
            vec![id.into()],
        )
        .await
        .map_err(db_err)?;
        if n == 0 {
            return Err(LlmError::NotFound(format!("provider {id:?} not found")));
        }
        tracing::info!(provider = %id, "provider deleted");
        Ok(())
    }

    /// Opens a provider's sealed secret.
    pub async fn secret(&self, p: &Provider) -> Result<Secret> {
        let Some((key_id, sealed)) = &p.sealed else {
            return Ok(Secret::default());
        };
        let plain = self.ring().await?.open(key_id, &p.id, sealed)?;
        serde_json::from_slice(&plain)
            .map_err(|_| LlmError::Internal(format!("provider {}: sealed secret is damaged", p.id)))
    }

    /// The provider model named `id` ("provider-id/model"), ready to call; None when `id`
    /// names no provider model (a local id has no '/').
    pub async fn resolve(&self, id: &str) -> Result<Option<Target>> {
        let Some((provider_id, name)) = id.split_once('/') else {
            return Ok(None);
        };
        let row = one(
            &self.db,
            &format!("{SELECT} WHERE id = ?"),
            vec![provider_id.into()],
        )
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Err(LlmError::ModelNotFound(id.to_owned()));
        };
        let provider = provider_row(&row)?;
        let model = provider
            .model(name)
            .cloned()
            .ok_or_else(|| LlmError::ModelNotFound(id.to_owned()))?;
        if !provider.enabled {
            return Err(LlmError::Precondition(format!(
                "provider {provider_id} is disabled; an admin can enable it with UpdateProvider"
            )));
        }
        let secret = self.secret(&provider).await?;
        Ok(Some(Target {
            provider,
            model,
            secret,
        }))
    }

    /// Asks the provider for its model list with the stored key.
    pub async fn test(&self, id: &str) -> Result<TestOutcome> {
        let provider = self.get(id).await?;
        let secret = self.secret(&provider).await?;
        let started = Instant::now();
        let listed = wire::list_models(&self.http, &provider, &secret).await;
        let latency = started.elapsed();
        Ok(match listed {
            Ok(models) => TestOutcome {
                ok: true,
                error: String::new(),
                latency,
                models,
            },
            Err(e) => TestOutcome {
                ok: false,
                error: e.to_string(),
                latency,
                models: Vec::new(),
            },
        })
    }

    /// Reseals every secret not sealed with the current key (after the operator moved to
    /// a new `llm.provider_key_file`); returns how many were resealed.
    pub async fn reseal(&self) -> Result<usize> {
        let ring = self.ring().await?.clone();
        let txn = self.db.begin().await.map_err(db_err)?;
        let n = reseal_all(&txn, &ring, &ring).await?;
        txn.commit().await.map_err(db_err)?;
        if n > 0 {
            tracing::info!(
                resealed = n,
                key = ring.current_id(),
                "provider secrets resealed with the current key"
            );
        }
        Ok(n)
    }

    /// Rotates the database-kept key: a new key seals every secret and the old keys are
    /// dropped, in one transaction. With key files the operator rotates by writing a new
    /// `llm.provider_key_file` and listing the old one in `llm.provider_previous_key_files`.
    pub async fn rotate_key(&self) -> Result<(String, usize)> {
        let old = self.ring().await?.clone();
        if old.source == KeySource::Files {
            return Err(LlmError::Precondition(
                "the provider key comes from llm.provider_key_file: write a new key there, list the old file in \
                 llm.provider_previous_key_files and restart llm; its secrets are resealed at start"
                    .into(),
            ));
        }
        let txn = self.db.begin().await.map_err(db_err)?;
        let fresh = SealKey::random();
        let mut everything = seal::stored_keys(&txn).await?;
        let current = everything.remove(0);
        let opener = KeyRing::from_keys(current, everything, KeySource::Database);
        let new_ring = KeyRing::from_keys(fresh.clone(), vec![], KeySource::Database);
        seal::store_key(&txn, &fresh).await?;
        let n = reseal_all(&txn, &opener, &new_ring).await?;
        exec(
            &txn,
            "DELETE FROM llm_provider_keys WHERE id <> ?",
            vec![fresh.id.clone().into()],
        )
        .await
        .map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        tracing::info!(key = %fresh.id, resealed = n, "provider key rotated");
        Ok((fresh.id, n))
    }
}

const SELECT: &str = "SELECT id, kind, base_url, header_names, has_api_key, sealed, sealed_key_id, timeout_seconds, models, enabled, created_at, updated_at FROM llm_providers";

async fn reseal_all<C: sea_orm::ConnectionTrait>(
    db: &C,
    opener: &KeyRing,
    sealer: &KeyRing,
) -> Result<usize> {
    let rows = all(
        db,
        "SELECT id, sealed, sealed_key_id FROM llm_providers WHERE sealed IS NOT NULL",
        vec![],
    )
    .await
    .map_err(db_err)?;
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get("", "id").map_err(db_err)?;
        let sealed: String = r.try_get("", "sealed").map_err(db_err)?;
        let key_id: String = r.try_get("", "sealed_key_id").map_err(db_err)?;
        if key_id == sealer.current_id() {
            continue;
        }
        let plain = opener.open(&key_id, &id, &sealed)?;
        let (new_id, new_sealed) = sealer.seal(&id, &plain)?;
        exec(
            db,
            "UPDATE llm_providers SET sealed = ?, sealed_key_id = ? WHERE id = ?",
            vec![new_sealed.into(), new_id.into(), id.into()],
        )
        .await
        .map_err(db_err)?;
        n += 1;
    }
    Ok(n)
}

fn seal_secret(ring: &KeyRing, id: &str, secret: &Secret) -> Result<Option<(String, String)>> {
    if secret.api_key.is_empty() && secret.headers.is_empty() {
        return Ok(None);
    }
    let plain = serde_json::to_vec(secret)
        .map_err(|e| LlmError::Internal(format!("encoding a provider secret: {e}")))?;
    ring.seal(id, &plain).map(Some)
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn provider_row(r: &QueryResult) -> Result<Provider> {
    let get_s = |c: &str| -> Result<String> { r.try_get("", c).map_err(db_err) };
    let kind = get_s("kind")?;
    let sealed: Option<String> = r.try_get("", "sealed").map_err(db_err)?;
    let sealed_key: Option<String> = r.try_get("", "sealed_key_id").map_err(db_err)?;
    let timeout: i64 = r.try_get("", "timeout_seconds").map_err(db_err)?;
    let created: i64 = r.try_get("", "created_at").map_err(db_err)?;
    let updated: i64 = r.try_get("", "updated_at").map_err(db_err)?;
    let models: Vec<ProviderModel> = serde_json::from_str(&get_s("models")?)
        .map_err(|e| LlmError::Internal(format!("provider models are not valid JSON: {e}")))?;
    let header_names: Vec<String> =
        serde_json::from_str(&get_s("header_names")?).unwrap_or_default();
    let sealed = sealed.zip(sealed_key).map(|(s, k)| (k, s));
    Ok(Provider {
        id: get_s("id")?,
        kind: ProviderKind::parse(&kind)
            .ok_or_else(|| LlmError::Internal(format!("unknown provider kind {kind:?} stored")))?,
        base_url: get_s("base_url")?,
        header_names,
        timeout: Duration::from_secs(timeout.max(1) as u64),
        models,
        enabled: r.try_get("", "enabled").map_err(db_err)?,
        has_api_key: r.try_get("", "has_api_key").map_err(db_err)?,
        created_at: from_micros(created),
        updated_at: from_micros(updated),
        sealed,
    })
}

/// Provider ids: 1-32 characters of a-z, 0-9 and '-', starting with a letter.
pub fn check_provider_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(LlmError::Invalid(format!(
            "provider.id {id:?} must be 1-32 characters of a-z, 0-9 and '-', starting with a letter"
        )));
    }
    // Billing prices the sandbox's runtimes as "sandbox/python" and "sandbox/wasm".
    if id == "sandbox" {
        return Err(LlmError::Invalid(
            "provider.id \"sandbox\" is reserved for the sandbox's runtimes; pick another".into(),
        ));
    }
    Ok(())
}

fn check_base_url(url: &str, field: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| LlmError::Invalid(format!("{field} {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(LlmError::Invalid(format!(
            "{field} must be an http:// or https:// URL with a host (got {url:?})"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || url.len() > 2048 {
        return Err(LlmError::Invalid(format!(
            "{field} must not carry a query or fragment, and at most 2048 characters"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(LlmError::Invalid(format!(
            "{field} must not carry credentials: give the key as api_key"
        )));
    }
    Ok(url.to_owned())
}

fn check_timeout(t: u32, field: &str) -> Result<u32> {
    if (1..=600).contains(&t) {
        Ok(t)
    } else {
        Err(LlmError::Invalid(format!(
            "{field} must be 1 to 600 seconds (got {t})"
        )))
    }
}

fn check_models(kind: ProviderKind, id: &str, models: &[ProviderModel], field: &str) -> Result<()> {
    if models.len() > MAX_MODELS {
        return Err(LlmError::Invalid(format!(
            "{field} has {} entries; the limit is {MAX_MODELS}",
            models.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, m) in models.iter().enumerate() {
        let bad_name = m.name.is_empty()
            || m.name.len() > 128
            || m.name.chars().any(|c| c.is_whitespace() || c.is_control());
        if bad_name {
            return Err(LlmError::Invalid(format!(
                "{field}[{i}].name must be 1-128 characters without spaces"
            )));
        }
        if !seen.insert(m.name.as_str()) {
            return Err(LlmError::Invalid(format!(
                "{field}[{i}].name {:?} is listed twice",
                m.name
            )));
        }
        if m.context_length == 0 || m.context_length > MAX_CONTEXT {
            return Err(LlmError::Invalid(format!(
                "{field}[{i}].context_length must be 1 to {MAX_CONTEXT} (got {})",
                m.context_length
            )));
        }
        if m.kind == Kind::Embedding && kind != ProviderKind::OpenAiCompatible {
            return Err(LlmError::Invalid(format!(
                "{field}[{i}].kind: embedding models are served through openai-compatible providers only"
            )));
        }
        if let Some(f) = &m.fallback {
            if f.is_empty() || f.len() > 200 {
                return Err(LlmError::Invalid(format!(
                    "{field}[{i}].fallback must be a model id of at most 200 characters"
                )));
            }
            if *f == format!("{id}/{}", m.name) {
                return Err(LlmError::Invalid(format!(
                    "{field}[{i}].fallback must name another model"
                )));
            }
        }
    }
    Ok(())
}

fn check_secret(s: &Secret) -> Result<()> {
    if s.api_key.len() > MAX_SECRET_BYTES
        || reqwest::header::HeaderValue::from_str(&s.api_key).is_err()
    {
        return Err(LlmError::Invalid(format!(
            "api_key must be at most {MAX_SECRET_BYTES} bytes of visible ASCII"
        )));
    }
    if s.headers.len() > MAX_HEADERS {
        return Err(LlmError::Invalid(format!(
            "headers has {} entries; the limit is {MAX_HEADERS}",
            s.headers.len()
        )));
    }
    for (name, value) in &s.headers {
        let lower = name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(LlmError::Invalid(format!(
                "headers: {name:?} is not a header name"
            )));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(LlmError::Invalid(format!(
                "headers: {name} is set by llmesh itself (give the key as api_key)"
            )));
        }
        if value.len() > MAX_SECRET_BYTES || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            return Err(LlmError::Invalid(format!(
                "headers[{name}] must be at most {MAX_SECRET_BYTES} bytes of visible ASCII"
            )));
        }
    }
    Ok(())
}

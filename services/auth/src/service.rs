//! The auth domain: accounts, passwords, sessions, API keys and the admin operations.
//! Typed inputs and outputs; no gRPC types here.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, Params, PasswordHasher, PasswordVerifier};
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use llmesh_kit::authn::{API_KEY_PREFIX, ApiKeyResolver};
use llmesh_kit::jwt::Claims;
use llmesh_kit::outbox::Outbox;
use llmesh_kit::principal::CredentialKind;
use llmesh_kit::{ApiError, Clock, Principal, Role};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::error::{AuthError, Result};
use crate::keys::Keyring;
use crate::store::{AuthStore, UserFilter, api_key, refresh_token, user};
use crate::throttle::{LoginThrottle, ThrottlePolicy};

/// Shortest and longest accepted password, in bytes.
pub const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 10..=1024;
/// Longest display name and API key name, in characters.
pub const NAME_CHARS: usize = 100;
/// Longest email address (RFC 5321 path limit).
pub const EMAIL_BYTES: usize = 254;
/// Refresh tokens start with this, to be recognisable in logs and leak scanners.
const REFRESH_PREFIX: &str = "lmr_";
/// Visible characters of an API key kept for listing.
const KEY_PREFIX_CHARS: usize = 12;
/// How often a key's last-used time is written, at most.
const TOUCH_EVERY_SECS: i64 = 60;

/// A new account's details.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub password: String,
    pub display_name: String,
}

/// A fresh access token and refresh token.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
}

/// An API key's request.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub role_ceiling: Option<Role>,
}

/// The outbox topic of "this user was deleted": billing keeps the ledger and marks the
/// account. The payload is the user id.
pub const USER_DELETED: &str = "billing.user_deleted";

/// The auth service.
pub struct AuthService {
    /// Delivers the notices account changes leave in the outbox, when this process does.
    outbox: Option<Arc<Outbox>>,
    store: AuthStore,
    keyring: Arc<Keyring>,
    config: AuthConfig,
    clock: Arc<dyn Clock>,
    throttle: LoginThrottle,
    hasher: Argon2<'static>,
    /// A hash of a random password, checked when an email is unknown so that a miss
    /// takes as long as a wrong password.
    decoy_hash: String,
}

impl AuthService {
    /// Builds the service; the keyring is loaded (or created) by the caller.
    pub fn new(
        store: AuthStore,
        keyring: Arc<Keyring>,
        config: AuthConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, 1, None)
            .map_err(|e| AuthError::Internal(format!("argon2 parameters: {e}")))?;
        let hasher = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let decoy: [u8; 16] = rand::random();
        let decoy_hash = hasher
            .hash_password(&decoy)
            .map_err(|e| AuthError::Internal(format!("hashing: {e}")))?
            .to_string();
        let throttle = LoginThrottle::new(
            ThrottlePolicy {
                free_failures: config.login_free_failures,
                base_delay: Duration::seconds(config.login_base_delay_secs as i64),
                max_delay: Duration::seconds(config.login_max_delay_secs as i64),
                window: Duration::seconds(config.login_window_secs as i64),
            },
            clock.clone(),
        );
        Ok(AuthService {
            outbox: None,
            store,
            keyring,
            config,
            clock,
            throttle,
            hasher,
            decoy_hash,
        })
    }

    /// Wakes `outbox` whenever an account change leaves a notice in it.
    pub fn with_outbox(mut self, outbox: Option<Arc<Outbox>>) -> Self {
        self.outbox = outbox;
        self
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Creates an account through self-registration. The first account ever becomes admin.
    pub async fn register(&self, actor: Option<&Principal>, new: NewUser) -> Result<user::Model> {
        let admin_acting = actor.is_some_and(Principal::is_admin);
        if !self.config.registration_open() && !admin_acting {
            return Err(AuthError::RegistrationClosed);
        }
        self.create(new, Role::Member, true).await
    }

    /// Whether self-registration is open, and whether the next account becomes admin.
    pub async fn sign_up_info(&self) -> Result<(bool, bool)> {
        let claimed = self.store.first_admin_claimed().await?;
        Ok((self.config.registration_open(), !claimed))
    }

    /// Creates an account with a given role (admins, and the CLI).
    pub async fn create_user(&self, new: NewUser, role: Role) -> Result<user::Model> {
        self.create(new, role, role != Role::Admin).await
    }

    async fn create(&self, new: NewUser, role: Role, may_claim_admin: bool) -> Result<user::Model> {
        let email = normalize_email(&new.email)?;
        check_password(&new.password)?;
        let display_name = if new.display_name.trim().is_empty() {
            email.split('@').next().unwrap_or_default().to_owned()
        } else {
            check_name("display_name", &new.display_name)?;
            new.display_name.trim().to_owned()
        };
        let password_hash = self.hash(new.password).await?;
        let now = self.clock.now();
        let model = user::Model {
            id: uuid::Uuid::now_v7().to_string(),
            email,
            display_name,
            password_hash,
            role: role.as_str().into(),
            disabled: false,
            password_change_required: false,
            created_at: now,
            updated_at: now,
        };
        // An explicit admin also takes the first-admin claim, so a later self-registration
        // never becomes a second "first" admin.
        let claim = may_claim_admin || role == Role::Admin;
        match self.store.insert_user(model, claim).await {
            Ok(user) => {
                tracing::info!(user_id = %user.id, role = %user.role, "user created");
                Ok(user)
            }
            Err(e) if llmesh_kit::db::is_unique_violation(&e) => Err(AuthError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Signs in with email and password; `client` is the caller's address for throttling.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: &str,
    ) -> Result<(user::Model, Tokens)> {
        let email = email.trim().to_lowercase();
        if email.is_empty() || email.len() > EMAIL_BYTES || password.len() > *PASSWORD_BYTES.end() {
            return Err(AuthError::BadCredentials);
        }
        if let Some(wait) = self.throttle.check(&email, client) {
            return Err(AuthError::Throttled(wait));
        }
        let user = self.store.user_by_email(&email).await?;
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.decoy_hash.clone());
        let matches = self.verify(password.to_owned(), hash).await?;
        let user = match user {
            Some(user) if matches && !user.disabled => user,
            Some(user) if matches && user.disabled => {
                tracing::info!(user_id = %user.id, "sign-in refused: account disabled");
                return Err(AuthError::BadCredentials);
            }
            _ => {
                self.throttle.failed(&email, client);
                tracing::info!(email = %email, client = %client, "sign-in failed");
                return Err(AuthError::BadCredentials);
            }
        };
        self.throttle.succeeded(&email, client);
        let family = uuid::Uuid::now_v7().to_string();
        let tokens = self.issue(&user, &family).await?;
        Ok((user, tokens))
    }

    /// Rotates a refresh token. A token that was already rotated is reuse: the whole
    /// session is revoked, because either the holder or a thief has a copy.
    pub async fn refresh(&self, token: &str) -> Result<Tokens> {
        let invalid = AuthError::BadToken("invalid refresh token: sign in again");
        if !token.starts_with(REFRESH_PREFIX) || token.len() > 128 {
            return Err(invalid);
        }
        let now = self.clock.now();
        let stored = self
            .store
            .refresh_token_by_hash(&digest(token))
            .await?
            .ok_or(AuthError::BadToken("invalid refresh token: sign in again"))?;
        if stored.revoked_at.is_some() {
            return Err(AuthError::BadToken("session revoked: sign in again"));
        }
        if stored.rotated_at.is_some() {
            self.store.revoke_family(&stored.family_id, now).await?;
            tracing::warn!(
                user_id = %stored.user_id,
                session = %stored.family_id,
                "refresh token reused: session revoked"
            );
            return Err(AuthError::BadToken(
                "refresh token already used: session revoked, sign in again",
            ));
        }
        if stored.expires_at <= now {
            return Err(AuthError::BadToken("session expired: sign in again"));
        }
        let user = self
            .store
            .user(&stored.user_id)
            .await?
            .filter(|u| !u.disabled)
            .ok_or(AuthError::BadToken("account disabled or deleted"))?;
        let (next, secret) = self.new_refresh_token(&user.id, &stored.family_id, now);
        let refresh_expires_at = next.expires_at;
        if !self
            .store
            .rotate_refresh_token(&stored.id, now, next)
            .await?
        {
            // Lost a race with another use of the same token: treat it as reuse.
            self.store.revoke_family(&stored.family_id, now).await?;
            tracing::warn!(user_id = %user.id, "refresh token used twice at once: session revoked");
            return Err(AuthError::BadToken(
                "refresh token already used: session revoked, sign in again",
            ));
        }
        let (access_token, access_expires_at) = self.access_token(&user, &stored.family_id)?;
        Ok(Tokens {
            access_token,
            access_expires_at,
            refresh_token: secret,
            refresh_expires_at,
        })
    }

    /// Ends the session a refresh token belongs to; it must be one of the caller's.
    pub async fn logout(&self, principal: &Principal, token: &str) -> Result<()> {
        let stored = self
            .store
            .refresh_token_by_hash(&digest(token))
            .await?
            .filter(|t| t.user_id == principal.user_id)
            .ok_or(AuthError::NotFound("session"))?;
        self.store
            .revoke_family(&stored.family_id, self.clock.now())
            .await?;
        Ok(())
    }

    /// Returns the caller's account; a deleted account is NOT_FOUND.
    pub async fn me(&self, principal: &Principal) -> Result<user::Model> {
        self.store
            .user(&principal.user_id)
            .await?
            .ok_or(AuthError::NotFound("user"))
    }

    pub async fn update_profile(
        &self,
        principal: &Principal,
        display_name: &str,
    ) -> Result<user::Model> {
        check_name("display_name", display_name)?;
        let user = self.me(principal).await?;
        let mut active: user::ActiveModel = user.into();
        active.display_name = sea_orm::Set(display_name.trim().to_owned());
        active.updated_at = sea_orm::Set(self.clock.now());
        Ok(self.store.update_user(active).await?)
    }

    /// Changes the caller's password and ends every other session of theirs.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: &str,
        new: &str,
    ) -> Result<()> {
        check_password(new)?;
        let user = self.me(principal).await?;
        if current.len() > *PASSWORD_BYTES.end()
            || !self
                .verify(current.to_owned(), user.password_hash.clone())
                .await?
        {
            return Err(AuthError::WrongPassword);
        }
        let hash = self.hash(new.to_owned()).await?;
        let now = self.clock.now();
        let user_id = user.id.clone();
        let mut active: user::ActiveModel = user.into();
        active.password_hash = sea_orm::Set(hash);
        active.password_change_required = sea_orm::Set(false);
        active.updated_at = sea_orm::Set(now);
        self.store.update_user(active).await?;
        let revoked = self
            .store
            .revoke_user_sessions(&user_id, principal.session_id(), now)
            .await?;
        tracing::info!(user_id = %user_id, revoked_sessions = revoked, "password changed");
        Ok(())
    }

    /// Creates an API key; the secret is returned here only.
    pub async fn create_api_key(
        &self,
        principal: &Principal,
        new: NewApiKey,
    ) -> Result<(api_key::Model, String)> {
        check_name("name", &new.name)?;
        let now = self.clock.now();
        if new.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::Invalid(
                "expires_at must be in the future".into(),
            ));
        }
        let ceiling = new.role_ceiling.unwrap_or(principal.role);
        if ceiling > principal.role {
            return Err(AuthError::Invalid(format!(
                "role_ceiling {ceiling} is above your role {}",
                principal.role
            )));
        }
        let random: [u8; 32] = rand::random();
        let secret = format!(
            "{API_KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
        );
        let key = api_key::Model {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: principal.user_id.clone(),
            name: new.name.trim().to_owned(),
            prefix: secret[..KEY_PREFIX_CHARS].to_owned(),
            secret_hash: digest(&secret),
            role_ceiling: ceiling.as_str().into(),
            created_at: now,
            last_used_at: None,
            expires_at: new.expires_at,
            revoked_at: None,
        };
        self.store.insert_api_key(key.clone()).await?;
        tracing::info!(user_id = %principal.user_id, key_id = %key.id, "API key created");
        Ok((key, secret))
    }

    pub async fn list_api_keys(&self, principal: &Principal) -> Result<Vec<api_key::Model>> {
        Ok(self.store.api_keys_of(&principal.user_id).await?)
    }

    pub async fn revoke_api_key(&self, principal: &Principal, key_id: &str) -> Result<()> {
        if !self
            .store
            .revoke_api_key(&principal.user_id, key_id, self.clock.now())
            .await?
        {
            return Err(AuthError::NotFound("API key"));
        }
        tracing::info!(user_id = %principal.user_id, key_id = %key_id, "API key revoked");
        Ok(())
    }

    /// Resolves an API key to its owner, capped by the key's ceiling. Checked against the
    /// database every time, so revocation and disabling apply at once.
    pub async fn resolve_api_key(&self, secret: &str) -> Result<Principal> {
        let invalid = || AuthError::BadToken("invalid API key");
        if !secret.starts_with(API_KEY_PREFIX) || secret.len() > 128 {
            return Err(invalid());
        }
        let key = self
            .store
            .api_key_by_hash(&digest(secret))
            .await?
            .ok_or_else(invalid)?;
        let now = self.clock.now();
        if key.revoked_at.is_some() {
            return Err(AuthError::BadToken("API key revoked"));
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::BadToken("API key expired"));
        }
        let owner = self
            .store
            .user(&key.user_id)
            .await?
            .filter(|u| !u.disabled)
            .ok_or(AuthError::BadToken("API key owner is disabled"))?;
        let owner_role = parse_role(&owner.role)?;
        let ceiling = parse_role(&key.role_ceiling)?;
        if key
            .last_used_at
            .is_none_or(|t| now - t > Duration::seconds(TOUCH_EVERY_SECS))
        {
            self.store.touch_api_key(&key.id, now).await?;
        }
        Ok(Principal {
            user_id: owner.id,
            role: owner_role.min(ceiling),
            scopes: Vec::new(),
            credential: CredentialKind::ApiKey { key_id: key.id },
            via_service: false,
        })
    }

    pub async fn list_users(&self, filter: &UserFilter) -> Result<Vec<user::Model>> {
        Ok(self.store.list_users(filter).await?)
    }

    async fn target(&self, user_id: &str) -> Result<user::Model> {
        self.store
            .user(user_id)
            .await?
            .ok_or(AuthError::NotFound("user"))
    }

    /// Refuses a change that would leave no enabled admin.
    async fn keep_an_admin(&self, target: &user::Model) -> Result<()> {
        if target.role == "admin"
            && !target.disabled
            && self.store.count_enabled_admins().await? <= 1
        {
            return Err(AuthError::LastAdmin);
        }
        Ok(())
    }

    pub async fn set_role(&self, user_id: &str, role: Role) -> Result<user::Model> {
        let target = self.target(user_id).await?;
        if role != Role::Admin {
            self.keep_an_admin(&target).await?;
        }
        let mut active: user::ActiveModel = target.into();
        active.role = sea_orm::Set(role.as_str().into());
        active.updated_at = sea_orm::Set(self.clock.now());
        let user = self.store.update_user(active).await?;
        tracing::info!(user_id = %user.id, role = %role, "role changed");
        Ok(user)
    }

    /// Disables or re-enables an account. Disabling ends its sessions and stops its keys.
    pub async fn set_disabled(&self, user_id: &str, disabled: bool) -> Result<user::Model> {
        let target = self.target(user_id).await?;
        if disabled {
            self.keep_an_admin(&target).await?;
        }
        let now = self.clock.now();
        let mut active: user::ActiveModel = target.into();
        active.disabled = sea_orm::Set(disabled);
        active.updated_at = sea_orm::Set(now);
        let user = self.store.update_user(active).await?;
        if disabled {
            self.store.revoke_user_sessions(&user.id, None, now).await?;
        }
        tracing::info!(user_id = %user.id, disabled, "account status changed");
        Ok(user)
    }

    pub async fn delete_user(&self, user_id: &str) -> Result<()> {
        let target = self.target(user_id).await?;
        self.keep_an_admin(&target).await?;
        // The notice to billing is written with the deletion, so neither happens alone.
        if !self.store.delete_user(user_id, self.clock.now()).await? {
            return Err(AuthError::NotFound("user"));
        }
        tracing::info!(user_id = %user_id, "user deleted");
        if let Some(outbox) = &self.outbox {
            outbox.wake();
        }
        Ok(())
    }

    /// Sets a random one-time password, ends the user's sessions and returns the password.
    pub async fn reset_password(&self, user_id: &str) -> Result<String> {
        let target = self.target(user_id).await?;
        let password = generate_password();
        let hash = self.hash(password.clone()).await?;
        let now = self.clock.now();
        let mut active: user::ActiveModel = target.into();
        active.password_hash = sea_orm::Set(hash);
        active.password_change_required = sea_orm::Set(true);
        active.updated_at = sea_orm::Set(now);
        let user = self.store.update_user(active).await?;
        self.store.revoke_user_sessions(&user.id, None, now).await?;
        tracing::info!(user_id = %user.id, "password reset by an admin");
        Ok(password)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<user::Model> {
        self.store
            .user_by_email(&email.trim().to_lowercase())
            .await?
            .ok_or(AuthError::NotFound("user"))
    }

    async fn issue(&self, user: &user::Model, family: &str) -> Result<Tokens> {
        let now = self.clock.now();
        let (record, secret) = self.new_refresh_token(&user.id, family, now);
        let refresh_expires_at = record.expires_at;
        self.store.insert_refresh_token(record).await?;
        let (access_token, access_expires_at) = self.access_token(user, family)?;
        Ok(Tokens {
            access_token,
            access_expires_at,
            refresh_token: secret,
            refresh_expires_at,
        })
    }

    fn access_token(&self, user: &user::Model, family: &str) -> Result<(String, DateTime<Utc>)> {
        let now = self.clock.now();
        let expires = now + Duration::seconds(self.config.access_token_ttl_secs as i64);
        let claims = Claims {
            iss: self.keyring.issuer().to_owned(),
            sub: user.id.clone(),
            iat: now.timestamp(),
            exp: expires.timestamp(),
            role: user.role.clone(),
            sid: family.to_owned(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            scopes: Vec::new(),
        };
        Ok((self.keyring.sign(&claims)?, expires))
    }

    fn new_refresh_token(
        &self,
        user_id: &str,
        family: &str,
        now: DateTime<Utc>,
    ) -> (refresh_token::Model, String) {
        let random: [u8; 32] = rand::random();
        let secret = format!(
            "{REFRESH_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
        );
        let record = refresh_token::Model {
            id: uuid::Uuid::now_v7().to_string(),
            family_id: family.to_owned(),
            user_id: user_id.to_owned(),
            token_hash: digest(&secret),
            created_at: now,
            expires_at: now + Duration::days(self.config.refresh_token_ttl_days as i64),
            rotated_at: None,
            revoked_at: None,
        };
        (record, secret)
    }

    /// Hashes a password off the async workers: argon2 is deliberately slow.
    async fn hash(&self, password: String) -> Result<String> {
        let hasher = self.hasher.clone();
        tokio::task::spawn_blocking(move || {
            hasher
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| AuthError::Internal(format!("hashing a password: {e}")))
        })
        .await
        .map_err(|e| AuthError::Internal(format!("hashing task: {e}")))?
    }

    async fn verify(&self, password: String, hash: String) -> Result<bool> {
        let hasher = self.hasher.clone();
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&hash)
                .map_err(|e| AuthError::Internal(format!("stored hash unreadable: {e}")))?;
            Ok(hasher.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|e| AuthError::Internal(format!("verifying task: {e}")))?
    }
}

#[async_trait::async_trait]
impl ApiKeyResolver for AuthService {
    async fn resolve(&self, secret: &str) -> std::result::Result<Principal, ApiError> {
        self.resolve_api_key(secret).await.map_err(ApiError::from)
    }
}

/// Hex SHA-256 of a secret token; tokens carry 256 random bits, so a fast hash suffices.
fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_role(stored: &str) -> Result<Role> {
    Role::parse(stored)
        .ok_or_else(|| AuthError::Internal(format!("unknown stored role {stored:?}")))
}

/// Lowercases and checks an email address: one `@`, a non-empty local part, a dotted
/// domain, no spaces or control characters, at most 254 bytes.
pub fn normalize_email(raw: &str) -> Result<String> {
    let email = raw.trim().to_lowercase();
    let bad = |why: &str| AuthError::Invalid(format!("email {why}"));
    if email.is_empty() {
        return Err(bad("is required"));
    }
    if email.len() > EMAIL_BYTES {
        return Err(bad("must be at most 254 bytes"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain spaces"));
    }
    let (local, domain) = email
        .split_once('@')
        .ok_or_else(|| bad("must look like name@example.com"))?;
    if local.is_empty()
        || local.len() > 64
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err(bad("must look like name@example.com"));
    }
    Ok(email)
}

fn check_password(password: &str) -> Result<()> {
    if !PASSWORD_BYTES.contains(&password.len()) {
        return Err(AuthError::Invalid(format!(
            "password must be {} to {} bytes long (got {})",
            PASSWORD_BYTES.start(),
            PASSWORD_BYTES.end(),
            password.len()
        )));
    }
    Ok(())
}

fn check_name(field: &str, value: &str) -> Result<()> {
    llmesh_kit::validate::text(field, value, NAME_CHARS, false)
        .map_err(|e| AuthError::Invalid(e.message))
}

/// Makes a temporary password a person can type: 20 characters from an alphabet without
/// look-alikes.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    (0..20)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").ok().as_deref(),
            Some("ada@example.com")
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@x.io",
            "ada@x",
            "a b@x.io",
            "a@b@x.io",
            "ada@.x.io",
            "ada@x..io",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("{}@x.io", "a".repeat(300));
        assert!(normalize_email(&long).is_err());
    }

    #[test]
    fn passwords() {
        assert!(check_password("123456789").is_err());
        assert!(check_password("1234567890").is_ok());
        assert!(check_password(&"x".repeat(1024)).is_ok());
        assert!(check_password(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn temporary_passwords_are_random() {
        let a = generate_password();
        assert_eq!(a.len(), 20);
        assert_ne!(a, generate_password());
    }
}

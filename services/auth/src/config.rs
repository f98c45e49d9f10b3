//! Auth's configuration section (`[auth]`).

use llmesh_kit::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// "open": anyone may register; "closed": only admins create accounts.
    pub registration: String,
    /// The `iss` claim of access tokens.
    pub issuer: String,
    /// Lifetime of access tokens, in seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of refresh tokens, in days.
    pub refresh_token_ttl_days: u64,
    /// Optional file with the Ed25519 signing key (PKCS#8 PEM). When unset, a key is
    /// generated on first start and kept in the database.
    pub signing_key_file: Option<String>,
    /// Failed sign-ins per email and client address before delays start.
    pub login_free_failures: u32,
    /// The first delay after the free failures, doubled with each further failure.
    pub login_base_delay_secs: u64,
    /// The longest delay; a throttle never becomes a lock-out.
    pub login_max_delay_secs: u64,
    /// Failures older than this are forgotten.
    pub login_window_secs: u64,
    /// Argon2id memory cost in KiB (OWASP's minimum, 19 MiB, by default).
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    pub argon2_iterations: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            registration: "open".into(),
            issuer: "llmesh".into(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_days: 30,
            signing_key_file: None,
            login_free_failures: 5,
            login_base_delay_secs: 2,
            login_max_delay_secs: 300,
            login_window_secs: 15 * 60,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
        }
    }
}

impl AuthConfig {
    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.registration.as_str(), "open" | "closed") {
            return Err(invalid(
                "auth.registration",
                format!("{:?} is not one of \"open\", \"closed\"", self.registration),
            ));
        }
        if !(30..=24 * 3600).contains(&self.access_token_ttl_secs) {
            return Err(invalid(
                "auth.access_token_ttl_secs",
                "must be between 30 and 86400",
            ));
        }
        if !(1..=365).contains(&self.refresh_token_ttl_days) {
            return Err(invalid(
                "auth.refresh_token_ttl_days",
                "must be between 1 and 365",
            ));
        }
        if self.issuer.trim().is_empty() {
            return Err(invalid("auth.issuer", "must not be empty"));
        }
        if self.login_max_delay_secs < self.login_base_delay_secs {
            return Err(invalid(
                "auth.login_max_delay_secs",
                "must be at least auth.login_base_delay_secs",
            ));
        }
        if !(8..=1024 * 1024).contains(&self.argon2_memory_kib) || self.argon2_iterations == 0 {
            return Err(invalid(
                "auth.argon2_memory_kib",
                "memory must be 8..=1048576 KiB and iterations positive",
            ));
        }
        Ok(())
    }

    pub fn registration_open(&self) -> bool {
        self.registration == "open"
    }
}

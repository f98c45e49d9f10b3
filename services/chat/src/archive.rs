//! Search, export, chunked uploads and import of a user's conversations.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use llmesh_kit::Principal;
use llmesh_kit::csv::{self, Cell};
use llmesh_kit::db::{all, exec, one};
use sea_orm::TransactionTrait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::{ChatError, Result};
use crate::service::{ChatService, DEFAULT_TITLE, check_tags, check_text, new_id, path_to};
use crate::store::{self, ChatStore, Citation, CodeRun, Conversation, Message, Sampling};

/// One search result with its snippet.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub conversation_id: String,
    pub conversation_title: String,
    pub message_id: Option<String>,
    pub snippet: String,
    /// Byte ranges of matched words inside the snippet.
    pub highlights: Vec<(u32, u32)>,
    pub rank: f32,
}

/// What an export looks like on the wire (llmesh JSON, every branch).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportDoc {
    pub format: String,
    pub conversations: Vec<ExportConversation>,
}

pub const EXPORT_FORMAT: &str = "llmesh.conversations.v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportConversation {
    pub id: String,
    pub title: String,
    pub model: String,
    pub system_prompt: String,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub archived: bool,
    /// The name of the folder it is in (a top-level folder of that name is used, or made,
    /// on import).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    pub active_leaf_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub messages: Vec<ExportMessage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportMessage {
    pub id: String,
    pub parent_id: Option<String>,
    pub role: String,
    pub content: String,
    #[serde(default)]
    pub model: String,
    #[serde(default = "complete")]
    pub state: String,
    #[serde(default)]
    pub prompt_tokens: i64,
    #[serde(default)]
    pub completion_tokens: i64,
    #[serde(default)]
    pub cost_micros: i64,
    pub created_at: DateTime<Utc>,
    /// Results of running the message's code blocks in the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code_runs: Vec<ExportCodeRun>,
    /// The knowledge sources the reply was given; an import keeps those whose chunk the
    /// importing user can still read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citations: Vec<store::Citation>,
}

/// A code block's run as exports carry it (output as text: bytes that are not UTF-8 become
/// U+FFFD).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportCodeRun {
    pub block: u32,
    pub language: String,
    pub code: String,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub truncated: bool,
    pub status: String,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub exit_message: String,
    #[serde(default)]
    pub fuel_used: i64,
    #[serde(default)]
    pub duration_ms: i64,
    #[serde(default)]
    pub peak_memory_bytes: i64,
    #[serde(default)]
    pub cost_micros: i64,
    pub ran_at: DateTime<Utc>,
}

impl From<CodeRun> for ExportCodeRun {
    fn from(r: CodeRun) -> Self {
        ExportCodeRun {
            block: r.block,
            language: r.language,
            code: r.code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            truncated: r.truncated,
            status: r.status,
            exit_code: r.exit_code,
            exit_message: r.exit_message,
            fuel_used: r.fuel_used,
            duration_ms: r.duration_ms,
            peak_memory_bytes: r.peak_memory_bytes,
            cost_micros: r.cost_micros,
            ran_at: r.ran_at,
        }
    }
}

impl From<ExportCodeRun> for CodeRun {
    fn from(r: ExportCodeRun) -> Self {
        CodeRun {
            block: r.block,
            language: r.language,
            code: r.code,
            stdout: r.stdout.into_bytes(),
            stderr: r.stderr.into_bytes(),
            truncated: r.truncated,
            status: r.status,
            exit_code: r.exit_code,
            exit_message: r.exit_message,
            fuel_used: r.fuel_used,
            duration_ms: r.duration_ms,
            peak_memory_bytes: r.peak_memory_bytes,
            cost_micros: r.cost_micros,
            ran_at: r.ran_at,
        }
    }
}

fn complete() -> String {
    "complete".into()
}

/// Import formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportSource {
    Llmesh,
    ChatGpt,
    OpenWebUi,
    LibreChat,
    TypingMind,
    Claude,
    Generic,
}

/// Import progress, then a report.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportEvent {
    Progress {
        done: u32,
        total: u32,
    },
    Report {
        imported: u32,
        skipped: Vec<(String, String)>,
        /// The format read: the one asked for, or the one the file looked like.
        source: ImportSource,
        /// Per conversation title, what it held that llmesh cannot.
        left_out: Vec<(String, String)>,
    },
}

/// An upload's state.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
    pub received: u64,
    pub finished: bool,
}

impl ChatService {
    // ---- search ----

    pub async fn search(
        &self,
        p: &Principal,
        query: &str,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<SearchHit>> {
        if query.trim().is_empty() || query.len() > 256 {
            return Err(ChatError::Invalid("query must be 1 to 256 bytes".into()));
        }
        let terms: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
            .take(16)
            .collect();
        if terms.is_empty() {
            return Err(ChatError::Invalid(
                "query has no words to search for".into(),
            ));
        }
        let hits = self
            .store
            .search(
                &p.user_id,
                &terms,
                limit,
                offset,
                self.config.search_candidates,
            )
            .await?;
        let mut titles: HashMap<String, String> = HashMap::new();
        let mut out = Vec::with_capacity(hits.len());
        for h in hits {
            if !titles.contains_key(&h.conversation_id)
                && let Some(c) = self
                    .store
                    .conversation(&p.user_id, &h.conversation_id)
                    .await?
            {
                titles.insert(c.id.clone(), c.title);
            }
            let (snippet, highlights) = snippet(&h.body, &terms);
            out.push(SearchHit {
                conversation_title: titles.get(&h.conversation_id).cloned().unwrap_or_default(),
                conversation_id: h.conversation_id,
                message_id: h.message_id,
                snippet,
                highlights,
                rank: h.rank as f32,
            });
        }
        Ok(out)
    }

    // ---- many at once ----

    /// The distinct ids of a batch, checked against chat.max_batch.
    fn batch_ids(&self, field: &str, ids: &[String]) -> Result<Vec<String>> {
        let mut distinct: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            if !distinct.contains(id) {
                distinct.push(id.clone());
            }
        }
        if distinct.is_empty() || distinct.len() > self.config.max_batch {
            return Err(ChatError::Invalid(format!(
                "{field} must name 1 to {} conversations (chat.max_batch)",
                self.config.max_batch
            )));
        }
        Ok(distinct)
    }

    /// NOT_FOUND unless every one of `ids` is a conversation of `p`'s (which ones are not
    /// is not said).
    pub(crate) async fn owned_all(
        &self,
        p: &Principal,
        ids: &[String],
        field: &str,
    ) -> Result<Vec<Conversation>> {
        let ids = self.batch_ids(field, ids)?;
        let found = ChatStore::conversations_by_id(&self.store.db, &p.user_id, &ids).await?;
        if found.len() != ids.len() {
            return Err(ChatError::NotFound("conversation"));
        }
        Ok(found)
    }

    /// Applies `action` to every conversation of `ids` in one transaction, or to none:
    /// NOT_FOUND when any is not `p`'s. Returns how many conversations it acted on.
    pub async fn batch_update(
        &self,
        p: &Principal,
        ids: &[String],
        action: BatchAction,
    ) -> Result<u32> {
        let ids = self.batch_ids("conversation_ids", ids)?;
        match &action {
            BatchAction::MoveTo(Some(folder)) => {
                self.folder(p, folder).await?;
            }
            BatchAction::AddTag(tag) | BatchAction::RemoveTag(tag) => {
                check_text("tag", tag, 50, true)?;
            }
            _ => {}
        }
        let txn = self.store.db.begin().await?;
        let mut found = ChatStore::conversations_by_id(&txn, &p.user_id, &ids).await?;
        if found.len() != ids.len() {
            return Err(ChatError::NotFound("conversation"));
        }
        if action == BatchAction::Delete {
            ChatStore::delete_conversations(&txn, &p.user_id, &ids).await?;
            txn.commit().await?;
            return Ok(ids.len() as u32);
        }
        let now = self.clock.now();
        for c in &mut found {
            match &action {
                BatchAction::Archive(v) => c.archived = *v,
                BatchAction::Pin(v) => c.pinned = *v,
                BatchAction::MoveTo(folder) => c.folder_id = folder.clone(),
                BatchAction::AddTag(tag) => {
                    let tag = tag.trim();
                    if !c.tags.iter().any(|t| t == tag) {
                        c.tags.push(tag.to_owned());
                        check_tags(&c.tags).map_err(|_| {
                            ChatError::Invalid(format!(
                                "add_tag: conversation {} already has 20 tags",
                                c.id
                            ))
                        })?;
                    }
                }
                BatchAction::RemoveTag(tag) => c.tags.retain(|t| t != tag.trim()),
                BatchAction::Delete => {}
            }
            c.updated_at = now;
            ChatStore::update_conversation(&txn, c).await?;
        }
        txn.commit().await?;
        Ok(ids.len() as u32)
    }

    // ---- export ----

    /// Streams an export as chunks of bytes: llmesh JSON (every branch), or the active
    /// path as Markdown, CSV or plain text. `selection` names conversations (each must be
    /// the caller's); `None` exports all of them.
    pub async fn export(
        &self,
        p: &Principal,
        selection: Option<Vec<String>>,
        format: ExportKind,
    ) -> Result<mpsc::Receiver<Result<Vec<u8>>>> {
        let ids: Vec<String> = match selection {
            Some(ids) => {
                self.owned_all(p, &ids, "conversation_ids").await?;
                ids
            }
            None => {
                let mut ids = Vec::new();
                let mut after = None;
                loop {
                    let page = self
                        .store
                        .conversations(
                            &p.user_id,
                            &store::ConversationFilter {
                                after: after.clone(),
                                limit: 200,
                                ..Default::default()
                            },
                        )
                        .await?;
                    ids.extend(page.iter().map(|c| c.id.clone()));
                    match page.last() {
                        Some(last) if page.len() == 200 => {
                            after = Some((last.updated_at.timestamp_micros(), last.id.clone()))
                        }
                        _ => break,
                    }
                }
                ids
            }
        };
        let (tx, rx) = mpsc::channel(8);
        let store = self.store.clone();
        let user = p.user_id.clone();
        tokio::spawn(async move {
            // Folder names for JSON, read once for the whole export.
            let folders = match format {
                ExportKind::Json => match store.folders(&user).await {
                    Ok(list) => list.into_iter().map(|f| (f.id, f.name)).collect(),
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                },
                _ => HashMap::new(),
            };
            let this = ExportWorker { store, folders };
            let head = match format {
                ExportKind::Json => {
                    format!("{{\"format\":\"{EXPORT_FORMAT}\",\"conversations\":[").into_bytes()
                }
                ExportKind::Csv => csv::record(&CSV_HEADER.map(Cell::Text)),
                ExportKind::Markdown | ExportKind::Text => Vec::new(),
            };
            if !head.is_empty() && tx.send(Ok(head)).await.is_err() {
                return;
            }
            for (i, id) in ids.iter().enumerate() {
                let chunk = this.chunk(&user, id, format, i > 0).await;
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            if format == ExportKind::Json {
                let _ = tx.send(Ok(b"]}".to_vec())).await;
            }
        });
        Ok(rx)
    }

    // ---- uploads ----

    pub async fn begin_upload(
        &self,
        p: &Principal,
        file_name: &str,
        size: u64,
        sha256: &str,
    ) -> Result<(String, u32)> {
        check_text("file_name", file_name, 255, true)?;
        if size == 0 || size > self.config.max_upload_bytes {
            return Err(ChatError::Invalid(format!(
                "size_bytes must be 1 to {} (chat.max_upload_bytes)",
                self.config.max_upload_bytes
            )));
        }
        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ChatError::Invalid(
                "sha256 must be 64 hexadecimal characters".into(),
            ));
        }
        let id = new_id();
        exec(
            &self.store.db,
            "INSERT INTO uploads (id, user_id, file_name, size_bytes, sha256, received_bytes, finished, created_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
            vec![id.clone().into(), p.user_id.clone().into(), file_name.into(), (size as i64).into(), sha256.to_lowercase().into(), false.into(), store::micros(self.clock.now()).into()],
        )
        .await?;
        Ok((id, self.config.max_chunk_bytes))
    }

    async fn upload(&self, p: &Principal, id: &str) -> Result<Upload> {
        upload(&self.store, &p.user_id, id).await
    }

    pub async fn append_chunk(
        &self,
        p: &Principal,
        id: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<u64> {
        let u = self.upload(p, id).await?;
        if u.finished {
            return Err(ChatError::Precondition(
                "the upload is already finished".into(),
            ));
        }
        if data.is_empty() || data.len() > self.config.max_chunk_bytes as usize {
            return Err(ChatError::Invalid(format!(
                "a chunk must be 1 to {} bytes",
                self.config.max_chunk_bytes
            )));
        }
        if offset < u.received {
            // A retry of a chunk that was stored (its answer was lost) succeeds again.
            let stored = one(
                &self.store.db,
                "SELECT data FROM upload_chunks WHERE upload_id = ? AND offset_bytes = ?",
                vec![id.into(), (offset as i64).into()],
            )
            .await?;
            if let Some(row) = stored {
                let data_then: Vec<u8> = row.try_get("", "data")?;
                if data_then == data {
                    return Ok(u.received);
                }
            }
        }
        if offset != u.received {
            return Err(ChatError::Invalid(format!(
                "offset {offset} does not continue the upload at {}",
                u.received
            )));
        }
        if u.received + data.len() as u64 > u.size {
            return Err(ChatError::Invalid(format!(
                "the chunk goes past the declared size of {} bytes",
                u.size
            )));
        }
        // The conditional update makes a concurrent duplicate chunk fail instead of doubling;
        // the chunk is stored in the same transaction.
        let txn = self.store.db.begin().await?;
        let moved = exec(
            &txn,
            "UPDATE uploads SET received_bytes = ? WHERE id = ? AND received_bytes = ?",
            vec![
                ((u.received + data.len() as u64) as i64).into(),
                id.into(),
                (u.received as i64).into(),
            ],
        )
        .await?;
        if moved != 1 {
            return Err(ChatError::Invalid(
                "another chunk arrived at this offset first".into(),
            ));
        }
        exec(
            &txn,
            "INSERT INTO upload_chunks (upload_id, offset_bytes, data) VALUES (?, ?, ?)",
            vec![id.into(), (offset as i64).into(), data.to_vec().into()],
        )
        .await?;
        txn.commit().await?;
        Ok(u.received + data.len() as u64)
    }

    pub async fn finish_upload(&self, p: &Principal, id: &str) -> Result<u64> {
        let u = self.upload(p, id).await?;
        if u.received != u.size {
            return Err(ChatError::Precondition(format!(
                "received {} of {} bytes",
                u.received, u.size
            )));
        }
        // A chunk at a time, so finishing a large upload does not hold it in memory.
        let mut hasher = Sha256::new();
        let mut from = 0;
        while let Some((at, data)) = upload_chunk(&self.store, id, from).await? {
            hasher.update(&data);
            from = at + data.len() as i64;
        }
        let digest = hex::encode(hasher.finalize());
        if digest != u.sha256 {
            return Err(ChatError::Precondition(format!(
                "sha256 mismatch: declared {}, received {digest}",
                u.sha256
            )));
        }
        exec(
            &self.store.db,
            "UPDATE uploads SET finished = ? WHERE id = ?",
            vec![true.into(), id.into()],
        )
        .await?;
        Ok(u.size)
    }

    // ---- import ----

    /// Parses a finished upload and imports it, one transaction per conversation.
    /// Malformed files fail as a whole (INVALID_ARGUMENT naming the bad field); a
    /// conversation whose tree is broken is skipped with the reason.
    pub async fn import(
        &self,
        p: &Principal,
        upload_id: &str,
        source: Option<ImportSource>,
    ) -> Result<mpsc::Receiver<Result<ImportEvent>>> {
        let u = self.upload(p, upload_id).await?;
        if !u.finished {
            return Err(ChatError::Precondition(
                "finish the upload before importing it".into(),
            ));
        }
        // The file is read a chunk at a time on a blocking thread: once to check every
        // conversation (a wrong type anywhere fails the import before anything is
        // written), then again to write each conversation as it is read.
        let open = {
            let store = self.store.clone();
            let id = upload_id.to_owned();
            let handle = tokio::runtime::Handle::current();
            move || -> Result<UploadReader> {
                Ok(UploadReader {
                    store: store.clone(),
                    id: id.clone(),
                    handle: handle.clone(),
                    next: 0,
                    chunk: Vec::new(),
                    pos: 0,
                    done: false,
                })
            }
        };
        let reading = {
            let open = open.clone();
            tokio::task::spawn_blocking(move || crate::import::stream::check(&open, source))
                .await
                .map_err(|e| ChatError::Internal(format!("import check: {e}")))??
        };
        let (tx, rx) = mpsc::channel(16);
        let store = self.store.clone();
        let user = p.user_id.clone();
        let max_chars = self.config.max_message_chars;
        tokio::spawn(async move {
            let total = reading.total as u32;
            let source = reading.source;
            let (ctx, mut crx) = mpsc::channel::<crate::import::apps::Parsed>(2);
            let reader = tokio::task::spawn_blocking(move || {
                crate::import::stream::each(&open, &reading, &mut |parsed| {
                    ctx.blocking_send(parsed)
                        .map_err(|_| ChatError::Internal("the import was abandoned".into()))
                })
            });
            let mut done = 0;
            let mut imported = 0;
            let mut skipped = Vec::new();
            let mut left_out = Vec::new();
            while let Some(parsed) = crx.recv().await {
                left_out.extend(parsed.left_out);
                for c in parsed.conversations {
                    let title = c.title.clone();
                    match crate::import::import_one(&store, &user, c, max_chars).await {
                        Ok(()) => imported += 1,
                        Err(reason) => skipped.push((title, reason)),
                    }
                    done += 1;
                    let progress = ImportEvent::Progress {
                        done,
                        total: total.max(done),
                    };
                    if tx.send(Ok(progress)).await.is_err() {
                        return;
                    }
                }
            }
            match reader.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(ChatError::Internal(format!("import reader: {e}"))))
                        .await;
                    return;
                }
            }
            let _ = tx
                .send(Ok(ImportEvent::Report {
                    imported,
                    skipped,
                    source,
                    left_out,
                }))
                .await;
        });
        Ok(rx)
    }
}

/// An upload's bytes as a reader for parsers on a blocking thread, fetching one chunk
/// at a time from the store.
struct UploadReader {
    store: ChatStore,
    id: String,
    handle: tokio::runtime::Handle,
    next: i64,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl std::io::Read for UploadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            let next = self
                .handle
                .block_on(upload_chunk(&self.store, &self.id, self.next))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            match next {
                Some((at, data)) => {
                    self.next = at + data.len() as i64;
                    self.chunk = data;
                    self.pos = 0;
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The chunk of upload `id` that starts at or after byte `from`, with its offset.
async fn upload_chunk(store: &ChatStore, id: &str, from: i64) -> Result<Option<(i64, Vec<u8>)>> {
    let row = one(
        &store.db,
        "SELECT offset_bytes, data FROM upload_chunks WHERE upload_id = ? AND offset_bytes >= ? \
         ORDER BY offset_bytes LIMIT 1",
        vec![id.into(), from.into()],
    )
    .await?;
    match row {
        Some(row) => Ok(Some((
            row.try_get("", "offset_bytes")?,
            row.try_get("", "data")?,
        ))),
        None => Ok(None),
    }
}

struct ExportWorker {
    store: ChatStore,
    /// The user's folder names by id.
    folders: HashMap<String, String>,
}

impl ExportWorker {
    async fn chunk(
        &self,
        user: &str,
        id: &str,
        format: ExportKind,
        comma: bool,
    ) -> Result<Vec<u8>> {
        let c = self
            .store
            .conversation(user, id)
            .await?
            .ok_or(ChatError::NotFound("conversation"))?;
        let messages = self.store.messages(&c.id).await?;
        let runs = self.store.code_runs(&c.id).await?;
        let cited = self.store.citations(&c.id).await?;
        match format {
            ExportKind::Csv => return Ok(csv_rows(&c, &messages)),
            ExportKind::Text => return Ok(plain_text(&c, &messages, &runs, &cited).into_bytes()),
            ExportKind::Json | ExportKind::Markdown => {}
        }
        if format == ExportKind::Markdown {
            let mut out = format!("# {}\n\n", c.title);
            for m in path_to(&messages, c.active_leaf_id.as_deref()) {
                let who = match m.role.as_str() {
                    "assistant" => "Assistant",
                    "system" => "System",
                    _ => "User",
                };
                out.push_str(&format!("**{who}:**\n\n{}\n\n", m.content));
                for run in runs.get(&m.id).into_iter().flatten() {
                    markdown_run(&mut out, run);
                }
                let sources = cited.get(&m.id).map(Vec::as_slice).unwrap_or_default();
                if !sources.is_empty() {
                    out.push_str("*Sources:*\n\n");
                    for c in sources {
                        let mut line = format!("{}. {}", c.index, c.document_name);
                        if !c.headings.is_empty() {
                            line.push_str(&format!(" — {}", c.headings.join(" > ")));
                        }
                        if c.page > 0 {
                            line.push_str(&format!(", page {}", c.page));
                        }
                        out.push_str(&line);
                        out.push('\n');
                    }
                    out.push('\n');
                }
            }
            out.push_str("---\n\n");
            return Ok(out.into_bytes());
        }
        let folder = c
            .folder_id
            .as_ref()
            .and_then(|f| self.folders.get(f).cloned());
        let doc = to_export(c, folder, messages, runs, cited);
        let mut bytes = if comma { b",".to_vec() } else { Vec::new() };
        serde_json::to_writer(&mut bytes, &doc)
            .map_err(|e| ChatError::Internal(format!("export: {e}")))?;
        Ok(bytes)
    }
}

/// What a batch call does to each of its conversations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchAction {
    Archive(bool),
    Pin(bool),
    /// Into a folder of the caller's, or out of any (`None`).
    MoveTo(Option<String>),
    AddTag(String),
    RemoveTag(String),
    Delete,
}

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// llmesh JSON: every branch, importable.
    Json,
    /// The active path as Markdown.
    Markdown,
    /// The active path, a row per message.
    Csv,
    /// The active path as plain text.
    Text,
}

/// The CSV export's columns.
pub const CSV_HEADER: [&str; 11] = [
    "conversation_id",
    "conversation_title",
    "message_id",
    "role",
    "model",
    "created_at",
    "prompt_tokens",
    "completion_tokens",
    "cost_micros",
    "state",
    "content",
];

/// A conversation's active path as CSV records (see [`CSV_HEADER`]).
fn csv_rows(c: &Conversation, messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in path_to(messages, c.active_leaf_id.as_deref()) {
        let at = m
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        out.extend(csv::record(&[
            Cell::Text(&c.id),
            Cell::Text(&c.title),
            Cell::Text(&m.id),
            Cell::Text(&m.role),
            Cell::Text(&m.model),
            Cell::Text(&at),
            Cell::Int(m.prompt_tokens),
            Cell::Int(m.completion_tokens),
            Cell::Int(m.cost_micros),
            Cell::Text(&m.state),
            Cell::Text(&m.content),
        ]));
    }
    out
}

/// A conversation's active path as plain text: the title underlined, then each message
/// under its speaker and time, with code runs and sources after it.
fn plain_text(
    c: &Conversation,
    messages: &[Message],
    runs: &BTreeMap<String, Vec<CodeRun>>,
    cited: &BTreeMap<String, Vec<Citation>>,
) -> String {
    let title = if c.title.is_empty() {
        DEFAULT_TITLE
    } else {
        &c.title
    };
    let mut out = format!(
        "{title}\n{}\n\n",
        "=".repeat(title.chars().count().clamp(3, 80))
    );
    for m in path_to(messages, c.active_leaf_id.as_deref()) {
        let who = match m.role.as_str() {
            "assistant" if !m.model.is_empty() => format!("Assistant ({})", m.model),
            "assistant" => "Assistant".into(),
            "system" => "System".into(),
            _ => "User".into(),
        };
        out.push_str(&format!(
            "{who}, {}:\n{}\n\n",
            m.created_at.format("%Y-%m-%d %H:%M UTC"),
            m.content.trim_end()
        ));
        for run in runs.get(&m.id).into_iter().flatten() {
            out.push_str(&format!(
                "[ran code block {} ({}): {}]\n",
                run.block + 1,
                run.language,
                run.status.replace('_', " ")
            ));
            for text in [&run.stdout, &run.stderr] {
                let text = String::from_utf8_lossy(text);
                if !text.is_empty() {
                    out.push_str(text.trim_end_matches('\n'));
                    out.push('\n');
                }
            }
            out.push('\n');
        }
        let sources = cited.get(&m.id).map(Vec::as_slice).unwrap_or_default();
        if !sources.is_empty() {
            out.push_str("Sources:\n");
            for s in sources {
                out.push_str(&format!("  {}. {}", s.index, s.document_name));
                if s.page > 0 {
                    out.push_str(&format!(", page {}", s.page));
                }
                out.push('\n');
            }
            out.push('\n');
        }
    }
    out.push('\n');
    out
}

/// A code block's run under its message: what it wrote, fenced so output cannot break out.
fn markdown_run(out: &mut String, run: &CodeRun) {
    out.push_str(&format!(
        "*Ran code block {} ({}): {}*\n\n",
        run.block + 1,
        run.language,
        run.status.replace('_', " ")
    ));
    for text in [&run.stdout, &run.stderr] {
        let text = String::from_utf8_lossy(text);
        if text.is_empty() {
            continue;
        }
        // A fence longer than any run of backticks in the output.
        let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
        let fence = "`".repeat(longest.max(2) + 1);
        out.push_str(&format!(
            "{fence}text\n{}\n{fence}\n\n",
            text.trim_end_matches('\n')
        ));
    }
}

/// A conversation and all its messages as the export format writes them.
fn to_export(
    c: Conversation,
    folder: Option<String>,
    messages: Vec<Message>,
    mut runs: BTreeMap<String, Vec<CodeRun>>,
    mut cited: BTreeMap<String, Vec<store::Citation>>,
) -> ExportConversation {
    ExportConversation {
        id: c.id,
        title: c.title,
        model: c.model,
        system_prompt: c.system_prompt,
        sampling: c.sampling,
        tags: c.tags,
        pinned: c.pinned,
        archived: c.archived,
        folder,
        active_leaf_id: c.active_leaf_id,
        created_at: c.created_at,
        updated_at: c.updated_at,
        messages: messages
            .into_iter()
            .map(|m| ExportMessage {
                parent_id: m.parent_id,
                role: m.role,
                content: m.content,
                model: m.model,
                state: m.state,
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.completion_tokens,
                cost_micros: m.cost_micros,
                created_at: m.created_at,
                code_runs: runs
                    .remove(&m.id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(ExportCodeRun::from)
                    .collect(),
                citations: cited.remove(&m.id).unwrap_or_default(),
                id: m.id,
            })
            .collect(),
    }
}

/// A window of text around the first match, with the byte ranges of every matched term.
fn snippet(body: &str, terms: &[String]) -> (String, Vec<(u32, u32)>) {
    const BEFORE: usize = 60;
    const LENGTH: usize = 200;
    let lower = body.to_lowercase();
    // Lowercasing can change byte lengths (rare); then match on the original text.
    let haystack = if lower.len() == body.len() {
        lower.as_str()
    } else {
        body
    };
    let first = terms
        .iter()
        .filter_map(|t| haystack.find(t.as_str()))
        .min()
        .unwrap_or(0);
    let mut start = first.saturating_sub(BEFORE);
    while !body.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + LENGTH).min(body.len());
    while !body.is_char_boundary(end) {
        end += 1;
    }
    let text = &body[start..end];
    let window = &haystack[start..end];
    let mut highlights = Vec::new();
    for t in terms {
        let mut from = 0;
        while let Some(i) = window[from..].find(t.as_str()) {
            let s = from + i;
            highlights.push((s as u32, (s + t.len()) as u32));
            from = s + t.len().max(1);
        }
    }
    highlights.sort_unstable();
    (text.to_owned(), highlights)
}

/// The bytes of an upload received so far, in order: uploads live in the database, so
/// every copy of chat sees every chunk whichever copy took it.
async fn upload_bytes(store: &ChatStore, id: &str) -> Result<Vec<u8>> {
    let rows = all(
        &store.db,
        "SELECT data FROM upload_chunks WHERE upload_id = ? ORDER BY offset_bytes",
        vec![id.into()],
    )
    .await?;
    let mut bytes = Vec::new();
    for row in rows {
        let data: Vec<u8> = row.try_get("", "data")?;
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

/// An upload of `user`'s, or NOT_FOUND.
async fn upload(store: &ChatStore, user: &str, id: &str) -> Result<Upload> {
    let row = one(
        &store.db,
        "SELECT * FROM uploads WHERE id = ? AND user_id = ?",
        vec![id.into(), user.into()],
    )
    .await?
    .ok_or(ChatError::NotFound("upload"))?;
    Ok(Upload {
        id: row.try_get("", "id")?,
        file_name: row.try_get("", "file_name")?,
        size: row.try_get::<i64>("", "size_bytes")? as u64,
        sha256: row.try_get("", "sha256")?,
        received: row.try_get::<i64>("", "received_bytes")? as u64,
        finished: row.try_get("", "finished")?,
    })
}

/// A finished upload of `user`'s: its description and its bytes.
pub(crate) async fn finished_upload(
    store: &ChatStore,
    user: &str,
    id: &str,
) -> Result<(Upload, Vec<u8>)> {
    let u = upload(store, user, id).await?;
    if !u.finished {
        return Err(ChatError::Precondition(
            "finish the upload (FinishUpload) before using it".into(),
        ));
    }
    let bytes = upload_bytes(store, id).await?;
    Ok((u, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_mark_every_term() {
        let (s, h) = snippet("The Quick brown fox; the quick end", &["quick".into()]);
        assert_eq!(s, "The Quick brown fox; the quick end");
        assert_eq!(h, vec![(4, 9), (25, 30)]);
    }
}

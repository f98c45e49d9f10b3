//! Knowledge bases inside chat: collections of documents, read from chat's uploads,
//! parsed, cut into chunks by the embedding model's tokens, embedded through llm.Embed
//! (billed to the user) and searched by meaning and by words, fused by reciprocal rank.

pub mod chunk;
pub mod grpc;
pub mod parse;
pub mod pgvector;
mod scan;
pub mod store;
pub mod vector;

use std::collections::HashMap;
use std::sync::Arc;

use llmesh_kit::Principal;
use llmesh_kit::principal::Role;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::mpsc;

use llmesh_kit::Clock;

use crate::error::{ChatError, Result};
use crate::llm_client::LlmClient;
use crate::service::{check_text, new_id};
use crate::store::{ChatStore, Citation};
use parse::Format;
use store::{ChunkIndex, ChunkRow, CollectionRow, DocumentRow, KnowledgeStore, NewChunk, SqlIndex};

/// The `[chat.knowledge]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnowledgeConfig {
    /// The embedding model (local or hosted) every collection uses.
    pub embedding_model: String,
    /// Tokens per chunk, at most (the model's own input limit caps it).
    pub chunk_tokens: u32,
    /// Tokens of the previous chunk repeated at the start of the next.
    pub chunk_overlap_tokens: u32,
    /// Largest document, in bytes.
    pub max_document_bytes: u64,
    /// Most chunks one document may make.
    pub max_chunks_per_document: u32,
    /// Most pages of one PDF.
    pub max_pages: u32,
    /// Most documents in one collection.
    pub max_documents_per_collection: u32,
    /// Most collections one user may own.
    pub max_collections_per_user: u32,
    /// Texts per Embed call while ingesting.
    pub embed_batch: usize,
    /// Chunks a reply is given from a conversation's collections, at most.
    pub retrieve_chunks: u32,
    /// Tokens of sources a reply is given, at most (counted as the embedding model does).
    pub retrieve_tokens: u32,
    /// Full-text search ranks at most this many matching chunks: past it, a query's most
    /// frequent words are left out and the newest matches of the rest are ranked.
    pub text_candidates: u32,
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        KnowledgeConfig {
            embedding_model: "all-minilm-l6-v2".into(),
            chunk_tokens: 200,
            chunk_overlap_tokens: 40,
            max_document_bytes: 32 * 1024 * 1024,
            max_chunks_per_document: 5000,
            max_pages: 2000,
            max_documents_per_collection: 1000,
            max_collections_per_user: 100,
            embed_batch: 32,
            retrieve_chunks: 5,
            retrieve_tokens: 1500,
            text_candidates: 5000,
        }
    }
}

impl KnowledgeConfig {
    pub fn validate(&self) -> std::result::Result<(), llmesh_kit::config::ConfigError> {
        use llmesh_kit::config::invalid;
        if self.chunk_tokens < 16 || self.chunk_overlap_tokens >= self.chunk_tokens {
            return Err(invalid(
                "chat.knowledge.chunk_tokens",
                "chunks must hold at least 16 tokens, more than chunk_overlap_tokens",
            ));
        }
        if !(1..=20).contains(&self.retrieve_chunks) {
            return Err(invalid("chat.knowledge.retrieve_chunks", "must be 1 to 20"));
        }
        if !(1..=1_000_000).contains(&self.text_candidates) {
            return Err(invalid(
                "chat.knowledge.text_candidates",
                "must be 1 to 1000000",
            ));
        }
        if !(1..=64).contains(&self.embed_batch) {
            return Err(invalid("chat.knowledge.embed_batch", "must be 1 to 64"));
        }
        if self.max_document_bytes == 0 || self.max_chunks_per_document == 0 {
            return Err(invalid(
                "chat.knowledge.max_document_bytes",
                "limits must be positive",
            ));
        }
        Ok(())
    }
}

/// What an ingest streams.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestEvent {
    Progress { phase: Phase, done: u32, total: u32 },
    Done(DocumentRow),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Parsing,
    Chunking,
    Embedding,
    Indexing,
}

/// Which retrievers a search uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Hybrid,
    Vector,
    Text,
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub chunk: ChunkRow,
    pub score: f64,
    pub similarity: f32,
    pub vector_rank: u32,
    pub text_rank: u32,
    pub highlight: String,
}

/// The constant of reciprocal rank fusion (60, as in Cormack et al.'s paper).
const RRF_K: f64 = 60.0;
/// How many candidates each retriever gives the fusion.
const CANDIDATES: usize = 50;
/// Most texts in one CountTokens call.
const COUNT_BATCH: usize = 1024;

/// Most collections a conversation or an assistant may draw on.
pub const MAX_ATTACHED: usize = 20;

/// The knowledge service: chat's uploads and llm client, and the knowledge store.
pub struct Knowledge {
    uploads: ChatStore,
    llm: Arc<dyn LlmClient>,
    clock: Arc<dyn Clock>,
    store: KnowledgeStore,
    index: Arc<dyn ChunkIndex>,
    config: KnowledgeConfig,
}

impl Knowledge {
    pub fn new(
        uploads: ChatStore,
        llm: Arc<dyn LlmClient>,
        clock: Arc<dyn Clock>,
        config: KnowledgeConfig,
    ) -> Knowledge {
        let db = uploads.db.clone();
        // SQLite scans its vectors; Postgres searches them with pgvector's HNSW.
        let index: Arc<dyn ChunkIndex> =
            if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
                Arc::new(pgvector::PgvectorIndex::new(db.clone()))
            } else {
                Arc::new(SqlIndex::new(db.clone()))
            };
        Knowledge {
            uploads,
            llm,
            clock,
            store: KnowledgeStore::new(db),
            index,
            config,
        }
    }

    /// FAILED_PRECONDITION, saying what to install, while the index cannot serve
    /// (Postgres without pgvector); every knowledge call asks first.
    async fn ready(&self) -> Result<()> {
        match self.index.ready().await? {
            None => Ok(()),
            Some(reason) => Err(ChatError::Precondition(reason)),
        }
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Checks collections to attach to a conversation or an assistant: at most 20, each
    /// readable by `p`; returns them without duplicates. `field` names the request field.
    pub async fn check_attached(
        &self,
        p: &Principal,
        field: &str,
        ids: &[String],
    ) -> Result<Vec<String>> {
        if !ids.is_empty() {
            self.ready().await?;
        }
        if ids.len() > MAX_ATTACHED {
            return Err(ChatError::Invalid(format!(
                "{field} holds {} collections; the limit is {MAX_ATTACHED}",
                ids.len()
            )));
        }
        let mut out: Vec<String> = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            check_id(&format!("{field}[{i}]"), id)?;
            if self.store.readable(&p.user_id, id).await?.is_none() {
                return Err(ChatError::NotFound("collection"));
            }
            if !out.contains(id) {
                out.push(id.clone());
            }
        }
        Ok(out)
    }

    /// The sources for a reply to `query` from `collections` (those `p` may still read;
    /// others are left out): the best chunks by hybrid search, at most
    /// knowledge.retrieve_chunks of them and knowledge.retrieve_tokens in all, numbered
    /// from 1.
    pub async fn retrieve(
        &self,
        p: &Principal,
        collections: &[String],
        query: &str,
    ) -> Result<Vec<(Citation, String)>> {
        if collections.is_empty() {
            return Ok(Vec::new());
        }
        self.ready().await?;
        let mut readable = Vec::new();
        for id in collections {
            if self.store.readable(&p.user_id, id).await?.is_some() {
                readable.push(id.clone());
            }
        }
        let query: String = query.chars().take(2000).collect();
        if readable.is_empty() || query.trim().is_empty() {
            return Ok(Vec::new());
        }
        let (hits, _) = self
            .search(
                p,
                &readable,
                &query,
                self.config.retrieve_chunks,
                Mode::Hybrid,
            )
            .await?;
        let mut out = Vec::new();
        let mut budget = self.config.retrieve_tokens;
        for h in hits {
            if h.chunk.tokens > budget && !out.is_empty() {
                break;
            }
            budget = budget.saturating_sub(h.chunk.tokens);
            let c = h.chunk;
            out.push((
                Citation {
                    index: out.len() as u32 + 1,
                    chunk_id: c.id,
                    document_id: c.document_id,
                    document_name: c.document_name,
                    collection_id: c.collection_id,
                    page: c.page,
                    headings: c.headings,
                    score: h.score,
                    quote: c.text.chars().take(300).collect(),
                },
                c.text,
            ));
        }
        Ok(out)
    }

    /// A collection `p` may read, or NOT_FOUND.
    async fn readable(&self, p: &Principal, id: &str) -> Result<CollectionRow> {
        self.ready().await?;
        check_id("id", id)?;
        self.store
            .readable(&p.user_id, id)
            .await?
            .ok_or(ChatError::NotFound("collection"))
    }

    /// A collection `p` owns. One shared with them is PERMISSION_DENIED (they know it
    /// exists); any other is NOT_FOUND.
    async fn owned(&self, p: &Principal, id: &str) -> Result<CollectionRow> {
        let c = self.readable(p, id).await?;
        if c.user_id != p.user_id {
            return Err(ChatError::PermissionDenied(
                "this collection is shared with you read-only; only its owner changes it".into(),
            ));
        }
        Ok(c)
    }

    pub async fn create_collection(
        &self,
        p: &Principal,
        name: &str,
        description: &str,
    ) -> Result<CollectionRow> {
        self.ready().await?;
        check_text("name", name, 200, true)?;
        check_text("description", description, 2000, false)?;
        let owned = self.store.count_collections(&p.user_id).await?;
        if owned >= u64::from(self.config.max_collections_per_user) {
            return Err(ChatError::Exhausted(
                format!(
                    "you own {owned} collections, the most chat.knowledge.max_collections_per_user allows; delete one first"
                ),
                std::time::Duration::ZERO,
            ));
        }
        let now = self.now();
        let c = CollectionRow {
            id: new_id(),
            user_id: p.user_id.clone(),
            name: name.trim().to_owned(),
            description: description.to_owned(),
            everyone: false,
            shared_with: Vec::new(),
            documents: 0,
            chunks: 0,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_collection(&c).await?;
        Ok(c)
    }

    pub async fn list_collections(&self, p: &Principal) -> Result<Vec<CollectionRow>> {
        self.ready().await?;
        Ok(self.store.list_readable(&p.user_id).await?)
    }

    pub async fn update_collection(
        &self,
        p: &Principal,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
        shared_with: Option<Vec<String>>,
        everyone: Option<bool>,
    ) -> Result<CollectionRow> {
        let mut c = self.owned(p, id).await?;
        if let Some(name) = name {
            check_text("name", name, 200, true)?;
            c.name = name.trim().to_owned();
        }
        if let Some(d) = description {
            check_text("description", d, 2000, false)?;
            c.description = d.to_owned();
        }
        if let Some(users) = shared_with {
            if users.len() > 100 {
                return Err(ChatError::Invalid(
                    "shared_with.user_ids holds more than 100 users".into(),
                ));
            }
            let mut users: Vec<String> = users.into_iter().filter(|u| *u != p.user_id).collect();
            for (i, u) in users.iter().enumerate() {
                check_id(&format!("shared_with.user_ids[{i}]"), u)?;
            }
            users.sort();
            users.dedup();
            c.shared_with = users;
        }
        if let Some(open) = everyone {
            if open && p.role != Role::Admin {
                return Err(ChatError::PermissionDenied(
                    "only admins open a collection to everyone".into(),
                ));
            }
            c.everyone = open;
        }
        c.updated_at = self.now();
        self.store.update_collection(&c).await?;
        self.readable(p, id).await
    }

    pub async fn delete_collection(&self, p: &Principal, id: &str) -> Result<()> {
        let c = self.owned(p, id).await?;
        Ok(self.index.delete_collection(&c.id).await?)
    }

    pub async fn list_documents(
        &self,
        p: &Principal,
        collection: &str,
    ) -> Result<Vec<DocumentRow>> {
        let c = self.readable(p, collection).await?;
        Ok(self.store.documents(&c.id).await?)
    }

    pub async fn delete_document(&self, p: &Principal, id: &str) -> Result<()> {
        self.ready().await?;
        check_id("id", id)?;
        let doc = self
            .store
            .document(id)
            .await?
            .ok_or(ChatError::NotFound("document"))?;
        self.owned(p, &doc.collection_id)
            .await
            .map_err(|e| match e {
                ChatError::NotFound(_) => ChatError::NotFound("document"),
                other => other,
            })?;
        Ok(self.index.delete_document(&doc.id).await?)
    }

    /// A chunk and `context` neighbours on each side, if `p` may read its collection.
    pub async fn chunk(
        &self,
        p: &Principal,
        id: &str,
        context: u32,
    ) -> Result<(ChunkRow, Vec<ChunkRow>)> {
        self.ready().await?;
        check_id("id", id)?;
        if context > 5 {
            return Err(ChatError::Invalid("context must be 0 to 5".into()));
        }
        let chunk = self
            .index
            .chunks(&[id.to_owned()])
            .await?
            .into_iter()
            .next()
            .ok_or(ChatError::NotFound("chunk"))?;
        self.readable(p, &chunk.collection_id)
            .await
            .map_err(|_| ChatError::NotFound("chunk"))?;
        let around = self
            .store
            .chunk_range(
                &chunk.document_id,
                chunk.position.saturating_sub(context),
                chunk.position.saturating_add(context),
            )
            .await?;
        Ok((chunk, around))
    }

    /// Reads a finished upload into a collection, streaming progress, then the document.
    pub async fn ingest(
        self: &Arc<Self>,
        p: &Principal,
        collection: &str,
        upload_id: &str,
        format: Option<Format>,
    ) -> Result<mpsc::Receiver<Result<IngestEvent>>> {
        let c = self.owned(p, collection).await?;
        check_id("upload_id", upload_id)?;
        let (upload, bytes) =
            crate::archive::finished_upload(&self.uploads, &p.user_id, upload_id).await?;
        if bytes.len() as u64 > self.config.max_document_bytes {
            return Err(ChatError::Invalid(format!(
                "the document is {} bytes; chat.knowledge.max_document_bytes allows {}",
                bytes.len(),
                self.config.max_document_bytes
            )));
        }
        let replacing = self.store.document_named(&c.id, &upload.file_name).await?;
        if replacing.is_none() && c.documents >= self.config.max_documents_per_collection {
            return Err(ChatError::Exhausted(
                format!(
                    "the collection holds {} documents, the most chat.knowledge.max_documents_per_collection allows",
                    c.documents
                ),
                std::time::Duration::ZERO,
            ));
        }
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        let p = p.clone();
        tokio::spawn(async move {
            let result = this
                .ingest_bytes(&p, &c, &upload.file_name, bytes, format, &tx)
                .await;
            let _ = tx.send(result.map(IngestEvent::Done)).await;
        });
        Ok(rx)
    }

    async fn ingest_bytes(
        &self,
        p: &Principal,
        c: &CollectionRow,
        name: &str,
        bytes: Vec<u8>,
        format: Option<Format>,
        tx: &mpsc::Sender<Result<IngestEvent>>,
    ) -> Result<DocumentRow> {
        let progress = |phase, done, total| {
            let tx = tx.clone();
            async move {
                let _ = tx
                    .send(Ok(IngestEvent::Progress { phase, done, total }))
                    .await;
            }
        };
        progress(Phase::Parsing, 0, 0).await;
        let format = format.unwrap_or_else(|| Format::guess(name, &bytes));
        let parsed = {
            let bytes = bytes.clone();
            let limits = parse::Limits {
                max_pages: self.config.max_pages,
                // A DOCX's XML may expand well past its zip; not without bound.
                max_expanded_bytes: self.config.max_document_bytes.saturating_mul(16),
            };
            tokio::task::spawn_blocking(move || parse::parse_with(format, &bytes, limits))
                .await
                .map_err(|e| ChatError::Internal(format!("parsing task: {e}")))?
                .map_err(|why| ChatError::Invalid(format!("{name}: {why}")))?
        };
        progress(Phase::Chunking, 0, 0).await;
        let drafts = self.chunk_blocks(p, &parsed.blocks).await?;
        if drafts.len() > self.config.max_chunks_per_document as usize {
            return Err(ChatError::Invalid(format!(
                "{name} makes {} chunks; chat.knowledge.max_chunks_per_document allows {}",
                drafts.len(),
                self.config.max_chunks_per_document
            )));
        }
        let total = drafts.len() as u32;
        let mut chunks = Vec::with_capacity(drafts.len());
        for batch in drafts.chunks(self.config.embed_batch) {
            let texts: Vec<String> = batch.iter().map(embed_text).collect();
            let (vectors, _) = self
                .llm
                .embed(p, &self.config.embedding_model, texts)
                .await?;
            for (d, v) in batch.iter().zip(vectors) {
                chunks.push(NewChunk {
                    page: d.page,
                    headings: d.headings.clone(),
                    text: d.text.clone(),
                    tokens: d.tokens,
                    embedding: v,
                });
            }
            progress(Phase::Embedding, chunks.len() as u32, total).await;
        }
        progress(Phase::Indexing, total, total).await;
        let doc = DocumentRow {
            id: new_id(),
            collection_id: c.id.clone(),
            user_id: p.user_id.clone(),
            name: name.to_owned(),
            format: parsed.format.as_str().into(),
            size_bytes: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            pages: parsed.pages,
            chunks: total,
            tokens: chunks.iter().map(|c| u64::from(c.tokens)).sum(),
            created_at: self.now(),
        };
        self.index.replace_document(&doc, chunks).await?;
        Ok(doc)
    }

    /// Cuts blocks into chunks by the embedding model's token counts.
    async fn chunk_blocks(
        &self,
        p: &Principal,
        blocks: &[parse::Block],
    ) -> Result<Vec<chunk::Draft>> {
        let model = &self.config.embedding_model;
        let mut units = chunk::units(blocks);
        let mut counts = Vec::with_capacity(units.len());
        let mut limit = self.config.chunk_tokens;
        for batch in units.chunks(COUNT_BATCH) {
            let texts = batch.iter().map(|u| u.text.clone()).collect();
            let (n, max_input) = self.llm.count_texts(p, model, texts).await?;
            // The model's two special tokens and a few for the heading line.
            limit = limit.min(max_input.saturating_sub(12).max(16));
            counts.extend(n);
        }
        // Units over the limit are halved and counted again (rare: very long words).
        for _ in 0..4 {
            let over: Vec<usize> = (0..units.len()).filter(|&i| counts[i] > limit).collect();
            if over.is_empty() {
                break;
            }
            let mut next_units = Vec::with_capacity(units.len() + over.len());
            let mut next_counts = Vec::with_capacity(units.len() + over.len());
            let mut pieces = Vec::new();
            for (i, u) in units.iter().enumerate() {
                if counts[i] > limit {
                    let half = u.text.len().div_ceil(2).max(1);
                    for piece in chunk::cut(&u.text, half) {
                        pieces.push(next_units.len());
                        next_units.push(chunk::Unit {
                            block: u.block,
                            text: piece.to_owned(),
                        });
                        next_counts.push(0);
                    }
                } else {
                    next_units.push(u.clone());
                    next_counts.push(counts[i]);
                }
            }
            for batch in pieces.chunks(COUNT_BATCH) {
                let texts = batch.iter().map(|&i| next_units[i].text.clone()).collect();
                let (n, _) = self.llm.count_texts(p, model, texts).await?;
                for (&i, c) in batch.iter().zip(n) {
                    next_counts[i] = c;
                }
            }
            units = next_units;
            counts = next_counts;
        }
        Ok(chunk::pack(
            blocks,
            &units,
            &counts,
            limit,
            self.config.chunk_overlap_tokens.min(limit / 2),
        ))
    }

    /// Hybrid search over collections `p` may read.
    pub async fn search(
        &self,
        p: &Principal,
        collections: &[String],
        query: &str,
        limit: u32,
        mode: Mode,
    ) -> Result<(Vec<Hit>, u32)> {
        if collections.is_empty() || collections.len() > 20 {
            return Err(ChatError::Invalid(
                "collection_ids must name 1 to 20 collections".into(),
            ));
        }
        check_text("query", query, 2000, true)?;
        let limit = if limit == 0 { 5 } else { limit };
        if limit > 50 {
            return Err(ChatError::Invalid("limit must be 1 to 50".into()));
        }
        let mut ids = Vec::with_capacity(collections.len());
        for (i, c) in collections.iter().enumerate() {
            check_id(&format!("collection_ids[{i}]"), c)?;
            ids.push(self.readable(p, c).await?.id);
        }
        ids.sort();
        ids.dedup();
        let terms = words(query);
        // The words need no embedding: both searches run at once.
        let by_meaning = async {
            if mode == Mode::Text {
                return Ok((Vec::new(), 0));
            }
            let (mut v, tokens) = self
                .llm
                .embed(p, &self.config.embedding_model, vec![query.to_owned()])
                .await?;
            let query_vector = v.pop().unwrap_or_default();
            let hits = self.index.nearest(&ids, &query_vector, CANDIDATES).await?;
            Ok::<_, ChatError>((hits, tokens))
        };
        let by_words = async {
            if mode == Mode::Vector {
                return Ok(Vec::new());
            }
            Ok::<_, ChatError>(
                self.index
                    .matching(
                        &ids,
                        &terms,
                        CANDIDATES,
                        self.config.text_candidates as usize,
                    )
                    .await?,
            )
        };
        let ((vector_hits, query_tokens), text_hits) = tokio::try_join!(by_meaning, by_words)?;
        // Reciprocal rank fusion: each list adds 1 / (k + rank).
        let mut fused: HashMap<String, (f64, f32, u32, u32)> = HashMap::new();
        for (rank, s) in vector_hits.iter().enumerate() {
            let e = fused.entry(s.chunk_id.clone()).or_default();
            e.0 += 1.0 / (RRF_K + rank as f64 + 1.0);
            e.1 = s.score;
            e.2 = rank as u32 + 1;
        }
        for (rank, s) in text_hits.iter().enumerate() {
            let e = fused.entry(s.chunk_id.clone()).or_default();
            e.0 += 1.0 / (RRF_K + rank as f64 + 1.0);
            e.3 = rank as u32 + 1;
        }
        let mut order: Vec<(String, (f64, f32, u32, u32))> = fused.into_iter().collect();
        // Ties (a chunk first by meaning and second by words, another the other way round)
        // go to the better vector rank: the words may match by chance, the meaning less so.
        let rank = |r: u32| if r == 0 { u32::MAX } else { r };
        order.sort_by(|a, b| {
            b.1.0
                .total_cmp(&a.1.0)
                .then_with(|| rank(a.1.2).cmp(&rank(b.1.2)))
                .then_with(|| rank(a.1.3).cmp(&rank(b.1.3)))
                .then_with(|| a.0.cmp(&b.0))
        });
        order.truncate(limit as usize);
        let chunk_ids: Vec<String> = order.iter().map(|(id, _)| id.clone()).collect();
        let mut rows: HashMap<String, ChunkRow> = self
            .index
            .chunks(&chunk_ids)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let hits = order
            .into_iter()
            .filter_map(|(id, (score, similarity, vector_rank, text_rank))| {
                let chunk = rows.remove(&id)?;
                let highlight = highlight(&chunk.text, &terms);
                Some(Hit {
                    chunk,
                    score,
                    similarity,
                    vector_rank,
                    text_rank,
                    highlight,
                })
            })
            .collect();
        Ok((hits, query_tokens))
    }
}

/// What a chunk is embedded as: its heading path on a line, then its text, so a chunk
/// deep in a section still carries what the section is about.
fn embed_text(d: &chunk::Draft) -> String {
    if d.headings.is_empty() {
        d.text.clone()
    } else {
        format!("{}\n{}", d.headings.join(" > "), d.text)
    }
}

/// English function words, left out of full-text queries: matching "how do I" finds every
/// document and drowns the words that carry the question.
const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing", "for",
    "from", "get", "gets", "got", "had", "has", "have", "having", "he", "her", "here", "him",
    "his", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "mine", "more", "most",
    "my", "no", "nor", "not", "of", "off", "on", "once", "only", "or", "other", "our", "out",
    "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "those", "to", "too", "under", "up", "us",
    "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why",
    "will", "with", "would", "you", "your",
];

/// The words of a query for full-text search: letters and digits, lowercased, without
/// function words, at most 32.
fn words(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in query.split(|c: char| !c.is_alphanumeric()) {
        let w = w.to_lowercase();
        if w.is_empty() || STOP_WORDS.contains(&w.as_str()) || out.contains(&w) {
            continue;
        }
        out.push(w);
    }
    out.truncate(32);
    out
}

/// The text with each query word marked «like this» (case-insensitive, whole words).
fn highlight(text: &str, terms: &[String]) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        if terms.iter().any(|t| *t == word.to_lowercase()) {
            out.push('«');
            out.push_str(word);
            out.push('»');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Ids are what llmesh hands out: 1-64 characters of letters, digits and '-'.
fn check_id(field: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ChatError::Invalid(format!(
            "{field} must be an id (1-64 letters, digits, '-' or '_')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlights_mark_whole_words() {
        let terms = words("How do I write Rust, async!");
        assert_eq!(
            terms,
            vec!["write".to_owned(), "rust".to_owned(), "async".to_owned()]
        );
        assert_eq!(
            highlight("Rustaceans write async Rust.", &terms),
            "Rustaceans «write» «async» «Rust»."
        );
    }
}

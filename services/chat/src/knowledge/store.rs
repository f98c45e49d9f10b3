//! Where knowledge lives: collections, shares and documents in plain SQL, and the chunk
//! index behind one trait. [`SqlIndex`] keeps vectors with their chunks and searches them
//! exactly (an int8 scan over the readable collections) beside the database's own
//! full-text index in `kb_chunks_fts` (SQLite FTS5, a Postgres tsvector); it runs on both
//! backends.

use chrono::{DateTime, Utc};
use llmesh_kit::db::{all, exec, from_micros, micros, one};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, QueryResult, TransactionTrait, Value};

use super::vector;

#[derive(Debug, Clone, PartialEq)]
pub struct CollectionRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub description: String,
    pub everyone: bool,
    pub shared_with: Vec<String>,
    pub documents: u32,
    pub chunks: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocumentRow {
    pub id: String,
    pub collection_id: String,
    pub user_id: String,
    pub name: String,
    pub format: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub pages: u32,
    pub chunks: u32,
    pub tokens: u64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRow {
    pub id: String,
    pub document_id: String,
    pub document_name: String,
    pub collection_id: String,
    pub position: u32,
    pub page: u32,
    pub headings: Vec<String>,
    pub text: String,
    pub tokens: u32,
}

/// A chunk to store with its vector.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub page: u32,
    pub headings: Vec<String>,
    pub text: String,
    pub tokens: u32,
    pub embedding: Vec<f32>,
}

/// A retriever's hit: the chunk id and its score (higher is better).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub chunk_id: String,
    pub score: f32,
}

/// The chunk index: what a store of chunks and vectors must do.
#[async_trait::async_trait]
pub trait ChunkIndex: Send + Sync {
    /// Whether the index can serve: `Some(reason)` when it cannot (pgvector missing),
    /// saying what to do.
    async fn ready(&self) -> Result<Option<String>, DbErr>;
    /// Replaces a document (by collection and name) with `doc` and its chunks in one
    /// transaction; the old document's chunks and vectors go with it.
    async fn replace_document(&self, doc: &DocumentRow, chunks: Vec<NewChunk>)
    -> Result<(), DbErr>;
    /// Deletes a document, its chunks and their vectors.
    async fn delete_document(&self, id: &str) -> Result<(), DbErr>;
    /// Deletes a collection with everything in it.
    async fn delete_collection(&self, id: &str) -> Result<(), DbErr>;
    /// The `k` chunks of `collections` nearest to the unit vector `query` (cosine).
    async fn nearest(
        &self,
        collections: &[String],
        query: &[f32],
        k: usize,
    ) -> Result<Vec<Scored>, DbErr>;
    /// The `k` best full-text matches of any of `terms` (letters and digits only) in
    /// `collections`, ranked within at most `candidates` matches (see [`full_text`]).
    async fn matching(
        &self,
        collections: &[String],
        terms: &[String],
        k: usize,
        candidates: usize,
    ) -> Result<Vec<Scored>, DbErr>;
    /// Chunks by id, with their document's name.
    async fn chunks(&self, ids: &[String]) -> Result<Vec<ChunkRow>, DbErr>;
}

/// Collections, shares and documents, and the [`SqlIndex`] on the same database.
#[derive(Clone)]
pub struct KnowledgeStore {
    pub db: DatabaseConnection,
}

pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn collection_row(r: &QueryResult, shared_with: Vec<String>) -> Result<CollectionRow, DbErr> {
    Ok(CollectionRow {
        id: r.try_get("", "id")?,
        user_id: r.try_get("", "user_id")?,
        name: r.try_get("", "name")?,
        description: r.try_get("", "description")?,
        everyone: r.try_get("", "everyone")?,
        shared_with,
        documents: r.try_get::<i64>("", "documents")? as u32,
        chunks: r.try_get::<i64>("", "chunk_count")? as u64,
        created_at: from_micros(r.try_get("", "created_at")?),
        updated_at: from_micros(r.try_get("", "updated_at")?),
    })
}

fn document_row(r: &QueryResult) -> Result<DocumentRow, DbErr> {
    Ok(DocumentRow {
        id: r.try_get("", "id")?,
        collection_id: r.try_get("", "collection_id")?,
        user_id: r.try_get("", "user_id")?,
        name: r.try_get("", "name")?,
        format: r.try_get("", "format")?,
        size_bytes: r.try_get::<i64>("", "size_bytes")? as u64,
        sha256: r.try_get("", "sha256")?,
        pages: r.try_get::<i64>("", "pages")? as u32,
        chunks: r.try_get::<i64>("", "chunks")? as u32,
        tokens: r.try_get::<i64>("", "tokens")? as u64,
        created_at: from_micros(r.try_get("", "created_at")?),
    })
}

const COLLECTION_SELECT: &str = "SELECT c.*, \
    (SELECT COUNT(*) FROM kb_documents d WHERE d.collection_id = c.id) AS documents, \
    (SELECT CAST(COALESCE(SUM(d.chunks), 0) AS BIGINT) FROM kb_documents d WHERE d.collection_id = c.id) AS chunk_count \
    FROM kb_collections c";

impl KnowledgeStore {
    pub fn new(db: DatabaseConnection) -> KnowledgeStore {
        KnowledgeStore { db }
    }

    pub async fn insert_collection(&self, c: &CollectionRow) -> Result<(), DbErr> {
        exec(
            &self.db,
            "INSERT INTO kb_collections (id, user_id, name, description, everyone, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            vec![
                c.id.clone().into(),
                c.user_id.clone().into(),
                c.name.clone().into(),
                c.description.clone().into(),
                c.everyone.into(),
                micros(c.created_at).into(),
                micros(c.updated_at).into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn count_collections(&self, user: &str) -> Result<u64, DbErr> {
        let row = one(
            &self.db,
            "SELECT COUNT(*) AS n FROM kb_collections WHERE user_id = ?",
            vec![user.into()],
        )
        .await?;
        Ok(row.map_or(Ok(0), |r| r.try_get::<i64>("", "n"))? as u64)
    }

    /// Who each of `collections` is shared with, by collection (users in order).
    async fn shares(
        &self,
        collections: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<String>>, DbErr> {
        let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
        if collections.is_empty() {
            return Ok(out);
        }
        let rows = all(
            &self.db,
            &format!(
                "SELECT collection_id, user_id FROM kb_shares WHERE collection_id IN ({}) ORDER BY user_id",
                placeholders(collections.len())
            ),
            collections.iter().map(|c| c.clone().into()).collect(),
        )
        .await?;
        for r in rows {
            out.entry(r.try_get("", "collection_id")?)
                .or_default()
                .push(r.try_get("", "user_id")?);
        }
        Ok(out)
    }

    /// A collection `user` may read: owned, shared with them, or open to everyone.
    pub async fn readable(&self, user: &str, id: &str) -> Result<Option<CollectionRow>, DbErr> {
        let row = one(
            &self.db,
            &format!(
                "{COLLECTION_SELECT} WHERE c.id = ? AND (c.user_id = ? OR c.everyone = ? OR EXISTS \
                 (SELECT 1 FROM kb_shares s WHERE s.collection_id = c.id AND s.user_id = ?))"
            ),
            vec![id.into(), user.into(), true.into(), user.into()],
        )
        .await?;
        match row {
            Some(r) => {
                let owner: String = r.try_get("", "user_id")?;
                // Only the owner sees who else reads it.
                let shared = if owner == user {
                    self.shares(&[id.to_owned()])
                        .await?
                        .remove(id)
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                Ok(Some(collection_row(&r, shared)?))
            }
            None => Ok(None),
        }
    }

    /// Every collection `user` may read, newest first.
    pub async fn list_readable(&self, user: &str) -> Result<Vec<CollectionRow>, DbErr> {
        let rows = all(
            &self.db,
            &format!(
                "{COLLECTION_SELECT} WHERE c.user_id = ? OR c.everyone = ? OR EXISTS \
                 (SELECT 1 FROM kb_shares s WHERE s.collection_id = c.id AND s.user_id = ?) \
                 ORDER BY c.created_at DESC, c.id"
            ),
            vec![user.into(), true.into(), user.into()],
        )
        .await?;
        let mut owned = Vec::new();
        for r in &rows {
            if r.try_get::<String>("", "user_id")? == user {
                owned.push(r.try_get::<String>("", "id")?);
            }
        }
        let mut shares = self.shares(&owned).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get("", "id")?;
            // Only the owner sees who else reads it (others' rows have no entry).
            out.push(collection_row(&r, shares.remove(&id).unwrap_or_default())?);
        }
        Ok(out)
    }

    /// Writes a collection's name, description, openness and shares in one transaction.
    pub async fn update_collection(&self, c: &CollectionRow) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        exec(
            &txn,
            "UPDATE kb_collections SET name = ?, description = ?, everyone = ?, updated_at = ? WHERE id = ?",
            vec![
                c.name.clone().into(),
                c.description.clone().into(),
                c.everyone.into(),
                micros(c.updated_at).into(),
                c.id.clone().into(),
            ],
        )
        .await?;
        exec(
            &txn,
            "DELETE FROM kb_shares WHERE collection_id = ?",
            vec![c.id.clone().into()],
        )
        .await?;
        for user in &c.shared_with {
            exec(
                &txn,
                "INSERT INTO kb_shares (collection_id, user_id) VALUES (?, ?)",
                vec![c.id.clone().into(), user.clone().into()],
            )
            .await?;
        }
        txn.commit().await
    }

    pub async fn documents(&self, collection: &str) -> Result<Vec<DocumentRow>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT * FROM kb_documents WHERE collection_id = ? ORDER BY name, id",
            vec![collection.into()],
        )
        .await?;
        rows.iter().map(document_row).collect()
    }

    pub async fn document(&self, id: &str) -> Result<Option<DocumentRow>, DbErr> {
        one(
            &self.db,
            "SELECT * FROM kb_documents WHERE id = ?",
            vec![id.into()],
        )
        .await?
        .map(|r| document_row(&r))
        .transpose()
    }

    pub async fn document_named(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<Option<DocumentRow>, DbErr> {
        one(
            &self.db,
            "SELECT * FROM kb_documents WHERE collection_id = ? AND name = ?",
            vec![collection.into(), name.into()],
        )
        .await?
        .map(|r| document_row(&r))
        .transpose()
    }

    /// The chunks of a document between two positions (inclusive).
    pub async fn chunk_range(
        &self,
        document: &str,
        from: u32,
        to: u32,
    ) -> Result<Vec<ChunkRow>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT k.id, k.document_id, d.name AS document_name, k.collection_id, k.position, k.page, k.headings, k.body, k.tokens \
             FROM kb_chunks k JOIN kb_documents d ON d.id = k.document_id \
             WHERE k.document_id = ? AND k.position >= ? AND k.position <= ? ORDER BY k.position",
            vec![document.into(), i64::from(from).into(), i64::from(to).into()],
        )
        .await?;
        rows.iter().map(chunk_row).collect()
    }
}

fn chunk_row(r: &QueryResult) -> Result<ChunkRow, DbErr> {
    let headings: String = r.try_get("", "headings")?;
    Ok(ChunkRow {
        id: r.try_get("", "id")?,
        document_id: r.try_get("", "document_id")?,
        document_name: r.try_get("", "document_name")?,
        collection_id: r.try_get("", "collection_id")?,
        position: r.try_get::<i64>("", "position")? as u32,
        page: r.try_get::<i64>("", "page")? as u32,
        headings: serde_json::from_str(&headings).unwrap_or_default(),
        text: r.try_get("", "body")?,
        tokens: r.try_get::<i64>("", "tokens")? as u32,
    })
}

/// Writes a document and its chunks (vectors, int8 copies and full-text rows) in `db`,
/// a transaction, after removing the document of the same name in that collection;
/// returns the new chunks' ids in order.
pub(super) async fn write_document<C: ConnectionTrait>(
    db: &C,
    doc: &DocumentRow,
    chunks: &[NewChunk],
) -> Result<Vec<String>, DbErr> {
    let old = all(
        db,
        "SELECT id FROM kb_documents WHERE collection_id = ? AND name = ?",
        vec![doc.collection_id.clone().into(), doc.name.clone().into()],
    )
    .await?;
    for r in old {
        let id: String = r.try_get("", "id")?;
        delete_document_rows(db, &id).await?;
    }
    exec(
        db,
        "INSERT INTO kb_documents (id, collection_id, user_id, name, format, size_bytes, sha256, pages, chunks, tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            doc.id.clone().into(),
            doc.collection_id.clone().into(),
            doc.user_id.clone().into(),
            doc.name.clone().into(),
            doc.format.clone().into(),
            (doc.size_bytes as i64).into(),
            doc.sha256.clone().into(),
            i64::from(doc.pages).into(),
            i64::from(doc.chunks).into(),
            (doc.tokens as i64).into(),
            micros(doc.created_at).into(),
        ],
    )
    .await?;
    let mut ids = Vec::with_capacity(chunks.len());
    for (position, c) in chunks.iter().enumerate() {
        let id = uuid::Uuid::now_v7().to_string();
        let (quantised, scale) = vector::quantise(&c.embedding);
        let headings = serde_json::to_string(&c.headings).unwrap_or_else(|_| "[]".into());
        let values: Vec<Value> = vec![
            id.clone().into(),
            doc.id.clone().into(),
            doc.collection_id.clone().into(),
            (position as i64).into(),
            i64::from(c.page).into(),
            headings.into(),
            c.text.clone().into(),
            i64::from(c.tokens).into(),
            vector::to_bytes(&c.embedding).into(),
            quantised.into(),
            f64::from(scale).into(),
        ];
        exec(
            db,
            "INSERT INTO kb_chunks (id, document_id, collection_id, position, page, headings, body, tokens, embedding, quantised, scale) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        .await?;
        exec(
            db,
            "INSERT INTO kb_chunks_fts (chunk_id, collection_id, body) VALUES (?, ?, ?)",
            vec![
                id.clone().into(),
                doc.collection_id.clone().into(),
                c.text.clone().into(),
            ],
        )
        .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Removes a document with its chunks and full-text rows.
pub(super) async fn delete_document_rows<C: ConnectionTrait>(
    db: &C,
    document: &str,
) -> Result<(), DbErr> {
    exec(
        db,
        "DELETE FROM kb_chunks_fts WHERE chunk_id IN (SELECT id FROM kb_chunks WHERE document_id = ?)",
        vec![document.into()],
    )
    .await?;
    exec(
        db,
        "DELETE FROM kb_chunks WHERE document_id = ?",
        vec![document.into()],
    )
    .await?;
    exec(
        db,
        "DELETE FROM kb_documents WHERE id = ?",
        vec![document.into()],
    )
    .await?;
    Ok(())
}

/// Removes a collection with its shares, documents, chunks and full-text rows.
pub(super) async fn delete_collection_rows<C: ConnectionTrait>(
    db: &C,
    id: &str,
) -> Result<(), DbErr> {
    for table in ["kb_chunks_fts", "kb_chunks", "kb_documents", "kb_shares"] {
        exec(
            db,
            &format!("DELETE FROM {table} WHERE collection_id = ?"),
            vec![id.into()],
        )
        .await?;
    }
    exec(
        db,
        "DELETE FROM kb_collections WHERE id = ?",
        vec![id.into()],
    )
    .await?;
    Ok(())
}

/// The `k` best full-text matches of any of `terms` in `collections`: FTS5's bm25 on
/// SQLite, `ts_rank` over the tsvector on Postgres.
///
/// Ranking reads every chunk it scores, so it is bounded: past `candidates` matches the
/// most frequent words of the query are left out (they weigh least in either score; see
/// [`selective`]), and then only the newest `candidates` matches of the rest are ranked.
/// A query whose words match fewer chunks than that ranks them all, as without a bound.
pub(super) async fn full_text(
    db: &DatabaseConnection,
    collections: &[String],
    terms: &[String],
    k: usize,
    candidates: usize,
) -> Result<Vec<Scored>, DbErr> {
    if collections.is_empty() || terms.is_empty() || k == 0 {
        return Ok(Vec::new());
    }
    let candidates = candidates.max(1);
    let terms = selective(db, terms, candidates).await?;
    let in_collections = placeholders(collections.len());
    let mut values: Vec<Value> = Vec::new();
    let rows = if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        // Any of the words, as in SQLite. The terms are letters and digits only (the
        // caller splits the query at everything else), so none is tsquery syntax. Chunk
        // ids are time-ordered, so the inner cut keeps the newest candidates.
        values.push(terms.join(" | ").into());
        values.extend(collections.iter().map(|c| Value::from(c.clone())));
        // Planned for these words each time, as chat search is (see all_custom_plan).
        llmesh_kit::db::all_custom_plan(
            db,
            &format!(
                "SELECT id, rank FROM ( \
                   SELECT chunk_id AS id, CAST(ts_rank(tsv, q) AS DOUBLE PRECISION) AS rank \
                   FROM kb_chunks_fts, to_tsquery('simple', ?) q \
                   WHERE tsv @@ q AND collection_id IN ({in_collections}) \
                   ORDER BY chunk_id DESC LIMIT {candidates}) c \
                 ORDER BY rank DESC, id LIMIT {k}"
            ),
            values,
        )
        .await?
    } else {
        // Any of the words; each quoted, so input never reaches FTS5's syntax. The rowid
        // of the newest `candidates`-th match bounds the ranked set.
        let query = terms
            .iter()
            .map(|t| format!("\"{}\"", t.replace('"', "")))
            .collect::<Vec<_>>()
            .join(" OR ");
        for _ in 0..2 {
            values.push(query.clone().into());
            values.extend(collections.iter().map(|c| Value::from(c.clone())));
        }
        all(
            db,
            &format!(
                "SELECT chunk_id AS id, -bm25(kb_chunks_fts) AS rank FROM kb_chunks_fts \
                 WHERE kb_chunks_fts MATCH ? AND collection_id IN ({in_collections}) \
                 AND rowid >= coalesce((SELECT rowid FROM kb_chunks_fts \
                   WHERE kb_chunks_fts MATCH ? AND collection_id IN ({in_collections}) \
                   ORDER BY rowid DESC LIMIT 1 OFFSET {}), 0) \
                 ORDER BY bm25(kb_chunks_fts), chunk_id LIMIT {k}",
                candidates - 1
            ),
            values,
        )
        .await?
    };
    rows.iter()
        .map(|r| {
            Ok(Scored {
                chunk_id: r.try_get("", "id")?,
                score: r.try_get::<f64>("", "rank")? as f32,
            })
        })
        .collect()
}

/// The words of `terms` worth ranking by: all of them when together they match at most
/// `budget` chunks; otherwise the rarest first, for as long as their matches stay within
/// the budget (always at least the rarest one). Frequencies are estimates over the whole
/// index: counted up to the budget in SQLite's FTS5 doclists (no row is read), taken from
/// the planner's statistics of the tsvector column in Postgres (words too rare to be
/// listed there count as rare).
async fn selective(
    db: &DatabaseConnection,
    terms: &[String],
    budget: usize,
) -> Result<Vec<String>, DbErr> {
    let mut frequency: Vec<(f64, &String)> = terms.iter().map(|t| (0.0, t)).collect();
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        let rows = all(
            db,
            &format!(
                "SELECT e.elem, CAST(e.freq * c.reltuples AS DOUBLE PRECISION) AS df \
                 FROM pg_stats s JOIN pg_class c ON c.oid = to_regclass('kb_chunks_fts') \
                 CROSS JOIN unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(elem, freq) \
                 WHERE s.schemaname = current_schema() AND s.tablename = 'kb_chunks_fts' \
                 AND s.attname = 'tsv' AND e.elem IN ({})",
                placeholders(terms.len())
            ),
            terms.iter().map(|t| Value::from(t.clone())).collect(),
        )
        .await?;
        for r in &rows {
            let elem: String = r.try_get("", "elem")?;
            let df: f64 = r.try_get("", "df")?;
            if let Some(f) = frequency.iter_mut().find(|f| *f.1 == elem) {
                f.0 = df;
            }
        }
    } else {
        let cap = budget + 1;
        let sql = (0..terms.len())
            .map(|i| {
                format!(
                    "SELECT {i} AS i, count(*) AS n FROM \
                     (SELECT 1 FROM kb_chunks_fts WHERE kb_chunks_fts MATCH ? LIMIT {cap})"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let values = terms
            .iter()
            .map(|t| Value::from(format!("\"{}\"", t.replace('"', ""))))
            .collect();
        for r in all(db, &sql, values).await? {
            let i: i64 = r.try_get("", "i")?;
            let n: i64 = r.try_get("", "n")?;
            if let Some(f) = frequency.get_mut(i as usize) {
                f.0 = n as f64;
            }
        }
    }
    if frequency.iter().map(|f| f.0).sum::<f64>() <= budget as f64 {
        return Ok(terms.to_vec());
    }
    frequency.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let mut kept = Vec::new();
    let mut total = 0.0;
    for (df, term) in frequency {
        if !kept.is_empty() && total + df > budget as f64 {
            break;
        }
        total += df;
        kept.push(term.clone());
    }
    Ok(kept)
}

/// Chunks by id, with their document's name.
pub(super) async fn chunk_rows(
    db: &DatabaseConnection,
    ids: &[String],
) -> Result<Vec<ChunkRow>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = all(
        db,
        &format!(
            "SELECT k.id, k.document_id, d.name AS document_name, k.collection_id, k.position, k.page, k.headings, k.body, k.tokens \
             FROM kb_chunks k JOIN kb_documents d ON d.id = k.document_id WHERE k.id IN ({})",
            placeholders(ids.len())
        ),
        ids.iter().map(|i| i.clone().into()).collect(),
    )
    .await?;
    rows.iter().map(chunk_row).collect()
}

/// The chunk index in the same SQL database: an exact int8 scan over each collection's
/// vectors (held in memory, see [`super::scan`]) and the backend's full-text index. The
/// embedded default (SQLite).
pub struct SqlIndex {
    db: DatabaseConnection,
    scan: super::scan::Scan,
}

impl SqlIndex {
    pub fn new(db: DatabaseConnection) -> SqlIndex {
        SqlIndex {
            db,
            scan: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl ChunkIndex for SqlIndex {
    async fn ready(&self) -> Result<Option<String>, DbErr> {
        Ok(None)
    }

    async fn replace_document(
        &self,
        doc: &DocumentRow,
        chunks: Vec<NewChunk>,
    ) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        write_document(&txn, doc, &chunks).await?;
        txn.commit().await?;
        self.scan.forget(&doc.collection_id);
        Ok(())
    }

    async fn delete_document(&self, id: &str) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        let collection = one(
            &txn,
            "SELECT collection_id FROM kb_documents WHERE id = ?",
            vec![id.into()],
        )
        .await?
        .map(|r| r.try_get::<String>("", "collection_id"))
        .transpose()?;
        delete_document_rows(&txn, id).await?;
        txn.commit().await?;
        if let Some(c) = collection {
            self.scan.forget(&c);
        }
        Ok(())
    }

    async fn delete_collection(&self, id: &str) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        delete_collection_rows(&txn, id).await?;
        txn.commit().await?;
        self.scan.forget(id);
        Ok(())
    }

    async fn nearest(
        &self,
        collections: &[String],
        query: &[f32],
        k: usize,
    ) -> Result<Vec<Scored>, DbErr> {
        if collections.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        self.scan.nearest(&self.db, collections, query, k).await
    }

    async fn matching(
        &self,
        collections: &[String],
        terms: &[String],
        k: usize,
        candidates: usize,
    ) -> Result<Vec<Scored>, DbErr> {
        full_text(&self.db, collections, terms, k, candidates).await
    }

    async fn chunks(&self, ids: &[String]) -> Result<Vec<ChunkRow>, DbErr> {
        chunk_rows(&self.db, ids).await
    }
}

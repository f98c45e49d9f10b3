//! The chunk index on Postgres with pgvector: chunks, documents and full-text rows as in
//! [`SqlIndex`](super::store::SqlIndex), and each chunk's vector once more in
//! `kb_vectors`, a `vector` column searched through an HNSW index (cosine).
//!
//! `kb_vectors` is not made by a migration: llmesh migrates and runs on a Postgres
//! without pgvector, and only knowledge bases need it. It is set up on first use (the
//! extension, the table), and it is derived data: `kb_chunks.embedding` stays the
//! source, so a backup leaves it out and the setup fills in what a restore (or an older
//! database) lacks and drops what no chunk owns any more.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use llmesh_kit::db::{all, exec, one};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait, Value};

use super::store::{
    ChunkIndex, ChunkRow, DocumentRow, NewChunk, Scored, chunk_rows, delete_collection_rows,
    delete_document_rows, full_text, placeholders, write_document,
};
use super::vector;

/// The advisory lock that keeps two chat processes from setting up at once.
const SETUP_LOCK: i64 = 0x6b62_7665_6374; // "kbvect"
/// Vectors written per statement while filling `kb_vectors` from `kb_chunks`.
const BACKFILL_BATCH: usize = 500;

/// What to tell a caller when the database has no pgvector.
pub const INSTALL_PGVECTOR: &str = "knowledge bases on Postgres need the pgvector extension, which this database server does not have: install it on the server (Debian and Ubuntu: apt install postgresql-<version>-pgvector; the official postgres images: pgvector/pgvector), then restart llmesh; the rest of llmesh runs without it";

pub struct PgvectorIndex {
    db: DatabaseConnection,
    ready: AtomicBool,
    /// Held while setting up, so concurrent first calls set up once.
    setup: tokio::sync::Mutex<()>,
    /// The dimensions that have their HNSW index (in this process's knowledge).
    indexed: Mutex<HashSet<usize>>,
}

impl PgvectorIndex {
    pub fn new(db: DatabaseConnection) -> PgvectorIndex {
        PgvectorIndex {
            db,
            ready: AtomicBool::new(false),
            setup: tokio::sync::Mutex::new(()),
            indexed: Mutex::new(HashSet::new()),
        }
    }

    /// Creates the extension and the table when they are missing, and brings
    /// `kb_vectors` in line with `kb_chunks`. `Some(reason)` when pgvector is missing.
    async fn set_up(&self) -> Result<Option<String>, DbErr> {
        let available = one(
            &self.db,
            "SELECT 1 AS found FROM pg_available_extensions WHERE name = 'vector'",
            vec![],
        )
        .await?;
        if available.is_none() {
            return Ok(Some(INSTALL_PGVECTOR.into()));
        }
        let txn = self.db.begin().await?;
        exec(
            &txn,
            &format!("SELECT pg_advisory_xact_lock({SETUP_LOCK})"),
            vec![],
        )
        .await?;
        if let Err(e) = txn
            .execute_unprepared("CREATE EXTENSION IF NOT EXISTS vector")
            .await
        {
            return Ok(Some(format!(
                "pgvector is installed on the server, but llmesh's database user could not enable it ({e}): have a superuser run CREATE EXTENSION vector in this database once"
            )));
        }
        // Untyped `vector`, its dimension beside it: each dimension gets a partial HNSW
        // index of its own, so changing the embedding model never breaks the table.
        txn.execute_unprepared(
            "CREATE TABLE IF NOT EXISTS kb_vectors (
                chunk_id TEXT PRIMARY KEY,
                collection_id TEXT NOT NULL,
                dims INTEGER NOT NULL,
                embedding vector NOT NULL
            )",
        )
        .await?;
        txn.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS idx_kb_vectors_collection ON kb_vectors (collection_id)",
        )
        .await?;
        exec(
            &txn,
            "DELETE FROM kb_vectors v WHERE NOT EXISTS (SELECT 1 FROM kb_chunks k WHERE k.id = v.chunk_id)",
            vec![],
        )
        .await?;
        let mut after = String::new();
        loop {
            let missing = all(
                &txn,
                &format!(
                    "SELECT k.id, k.collection_id, k.embedding FROM kb_chunks k \
                     WHERE k.id > ? AND NOT EXISTS (SELECT 1 FROM kb_vectors v WHERE v.chunk_id = k.id) \
                     ORDER BY k.id LIMIT {BACKFILL_BATCH}"
                ),
                vec![after.clone().into()],
            )
            .await?;
            let Some(last) = missing.last() else {
                break;
            };
            after = last.try_get("", "id")?;
            let mut rows = Vec::with_capacity(missing.len());
            for r in &missing {
                let bytes: Vec<u8> = r.try_get("", "embedding")?;
                // A damaged vector stays out of the index (the scan would skip it too).
                if let Some(v) = vector::from_bytes(&bytes).filter(|v| !v.is_empty()) {
                    rows.push((r.try_get("", "id")?, r.try_get("", "collection_id")?, v));
                }
            }
            insert_vectors(&txn, &rows).await?;
        }
        let dims = all(&txn, "SELECT DISTINCT dims FROM kb_vectors", vec![]).await?;
        for r in dims {
            let d = r.try_get::<i32>("", "dims")? as usize;
            create_hnsw(&txn, d).await?;
            self.indexed.lock().expect("index set").insert(d);
        }
        txn.commit().await?;
        Ok(None)
    }

    /// Makes sure the HNSW index for `dims` exists before vectors of that size land.
    async fn index_for(&self, dims: usize) -> Result<(), DbErr> {
        if self.indexed.lock().expect("index set").contains(&dims) {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        exec(
            &txn,
            &format!("SELECT pg_advisory_xact_lock({SETUP_LOCK})"),
            vec![],
        )
        .await?;
        create_hnsw(&txn, dims).await?;
        txn.commit().await?;
        self.indexed.lock().expect("index set").insert(dims);
        Ok(())
    }
}

/// The partial HNSW index (cosine) over the vectors of one dimension.
async fn create_hnsw<C: ConnectionTrait>(db: &C, dims: usize) -> Result<(), DbErr> {
    db.execute_unprepared(&format!(
        "CREATE INDEX IF NOT EXISTS idx_kb_vectors_hnsw_{dims} ON kb_vectors \
         USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}"
    ))
    .await?;
    Ok(())
}

/// pgvector's text form of a vector: `[x,y,…]`, each number as Rust prints an f32
/// (the shortest text that reads back the same value).
fn literal(v: &[f32]) -> String {
    let mut out = String::with_capacity(v.len() * 12 + 2);
    out.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // NaN and infinities are not vectors; an embedding never holds them.
        let x = if x.is_finite() { *x } else { 0.0 };
        out.push_str(&x.to_string());
    }
    out.push(']');
    out
}

/// Inserts (chunk id, collection id, vector) rows, many per statement.
async fn insert_vectors<C: ConnectionTrait>(
    db: &C,
    rows: &[(String, String, Vec<f32>)],
) -> Result<(), DbErr> {
    for batch in rows.chunks(BACKFILL_BATCH) {
        let mut sql = String::from(
            "INSERT INTO kb_vectors (chunk_id, collection_id, dims, embedding) VALUES ",
        );
        let mut values: Vec<Value> = Vec::with_capacity(batch.len() * 4);
        for (i, (chunk, collection, v)) in batch.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, CAST(? AS vector))");
            values.push(chunk.clone().into());
            values.push(collection.clone().into());
            values.push((v.len() as i32).into());
            values.push(literal(v).into());
        }
        exec(db, &sql, values).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl ChunkIndex for PgvectorIndex {
    async fn ready(&self) -> Result<Option<String>, DbErr> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(None);
        }
        let _setting_up = self.setup.lock().await;
        if self.ready.load(Ordering::Acquire) {
            return Ok(None);
        }
        // Not cached when pgvector is missing: once it is installed, the next call
        // finds it.
        let reason = self.set_up().await?;
        if reason.is_none() {
            self.ready.store(true, Ordering::Release);
        }
        Ok(reason)
    }

    async fn replace_document(
        &self,
        doc: &DocumentRow,
        chunks: Vec<NewChunk>,
    ) -> Result<(), DbErr> {
        let dims: HashSet<usize> = chunks.iter().map(|c| c.embedding.len()).collect();
        for d in dims {
            self.index_for(d).await?;
        }
        let txn = self.db.begin().await?;
        // The old document's vectors go first, while its chunks still say which they are.
        exec(
            &txn,
            "DELETE FROM kb_vectors WHERE chunk_id IN (SELECT k.id FROM kb_chunks k \
             JOIN kb_documents d ON d.id = k.document_id WHERE d.collection_id = ? AND d.name = ?)",
            vec![doc.collection_id.clone().into(), doc.name.clone().into()],
        )
        .await?;
        let ids = write_document(&txn, doc, &chunks).await?;
        let rows: Vec<(String, String, Vec<f32>)> = ids
            .into_iter()
            .zip(chunks)
            .map(|(id, c)| (id, doc.collection_id.clone(), c.embedding))
            .collect();
        insert_vectors(&txn, &rows).await?;
        txn.commit().await
    }

    async fn delete_document(&self, id: &str) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        exec(
            &txn,
            "DELETE FROM kb_vectors WHERE chunk_id IN (SELECT id FROM kb_chunks WHERE document_id = ?)",
            vec![id.into()],
        )
        .await?;
        delete_document_rows(&txn, id).await?;
        txn.commit().await
    }

    async fn delete_collection(&self, id: &str) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        exec(
            &txn,
            "DELETE FROM kb_vectors WHERE collection_id = ?",
            vec![id.into()],
        )
        .await?;
        delete_collection_rows(&txn, id).await?;
        txn.commit().await
    }

    async fn nearest(
        &self,
        collections: &[String],
        query: &[f32],
        k: usize,
    ) -> Result<Vec<Scored>, DbErr> {
        if collections.is_empty() || k == 0 || query.is_empty() {
            return Ok(Vec::new());
        }
        let d = query.len();
        let txn = self.db.begin().await?;
        // The collection filter is applied to what the index walk yields; an iterative
        // scan keeps walking until k rows pass it, in exact distance order.
        txn.execute_unprepared("SET LOCAL hnsw.iterative_scan = strict_order")
            .await?;
        txn.execute_unprepared(&format!("SET LOCAL hnsw.ef_search = {}", (2 * k).max(40)))
            .await?;
        let mut values: Vec<Value> = vec![literal(query).into()];
        values.extend(collections.iter().map(|c| Value::from(c.clone())));
        // The dimension is a literal (never a parameter) so that the planner matches the
        // partial index's predicate and expression.
        let rows = all(
            &txn,
            &format!(
                "SELECT chunk_id, CAST(embedding::vector({d}) <=> CAST(? AS vector({d})) AS DOUBLE PRECISION) AS distance \
                 FROM kb_vectors WHERE dims = {d} AND collection_id IN ({}) ORDER BY distance LIMIT {k}",
                placeholders(collections.len())
            ),
            values,
        )
        .await?;
        txn.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(Scored {
                    chunk_id: r.try_get("", "chunk_id")?,
                    score: (1.0 - r.try_get::<f64>("", "distance")?) as f32,
                })
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_back_exactly() {
        let v = [0.1f32, -2.5e-8, 1.0, 0.333_333_34];
        let text = literal(&v);
        assert_eq!(text, "[0.1,-0.000000025,1,0.33333334]");
        let back: Vec<f32> = text
            .trim_matches(['[', ']'])
            .split(',')
            .map(|x| x.parse().expect("number"))
            .collect();
        assert_eq!(back, v);
        assert_eq!(literal(&[f32::NAN, 2.0]), "[0,2]");
    }
}

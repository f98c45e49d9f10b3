//! The exact vector scan of [`SqlIndex`](super::store::SqlIndex): each collection's int8
//! vectors held in memory as one flat array, read from `kb_chunks` when first searched.
//!
//! A copy is of one set of documents: a document's chunks never change without its id
//! changing (a replacement is a new document), so the sorted ids of a collection's
//! documents say whether a copy is current. Each search reads them (a few rows) and
//! reads the vectors again only when they differ: so writes by another process are seen
//! too, and writes here drop the copy at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use llmesh_kit::db::all;
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};

use super::store::Scored;
use super::vector;

/// Memory the copies may take together; the least recently searched go first.
const MAX_BYTES: usize = 512 << 20;

/// One collection's vectors.
struct Slab {
    /// The collection's document ids, sorted, as they were when the vectors were read.
    documents: Vec<String>,
    ids: Vec<String>,
    dims: usize,
    /// `ids.len() × dims` int8 values.
    codes: Vec<u8>,
    scales: Vec<f32>,
    last_used: AtomicU64,
}

impl Slab {
    fn bytes(&self) -> usize {
        self.codes.len()
            + self.scales.len() * 4
            + self.ids.iter().map(|i| i.len() + 24).sum::<usize>()
    }
}

#[derive(Default)]
pub(super) struct Scan {
    slabs: Mutex<HashMap<String, Arc<Slab>>>,
    clock: AtomicU64,
}

impl Scan {
    /// Drops the copy of `collection` (after a write to it).
    pub(super) fn forget(&self, collection: &str) {
        self.slabs.lock().expect("slabs").remove(collection);
    }

    async fn documents(
        db: &impl sea_orm::ConnectionTrait,
        collection: &str,
    ) -> Result<Vec<String>, DbErr> {
        all(
            db,
            "SELECT id FROM kb_documents WHERE collection_id = ? ORDER BY id",
            vec![collection.into()],
        )
        .await?
        .iter()
        .map(|r| r.try_get("", "id"))
        .collect()
    }

    /// The current copy of `collection`'s vectors, read again if it is stale.
    async fn slab(&self, db: &DatabaseConnection, collection: &str) -> Result<Arc<Slab>, DbErr> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let cached = self.slabs.lock().expect("slabs").get(collection).cloned();
        let documents = Self::documents(db, collection).await?;
        if let Some(slab) = cached.filter(|s| s.documents == documents) {
            slab.last_used.store(tick, Ordering::Relaxed);
            return Ok(slab);
        }
        // The ids and the vectors from one snapshot, so the copy is of what the ids say.
        let txn = db.begin().await?;
        let documents = Self::documents(&txn, collection).await?;
        let rows = all(
            &txn,
            "SELECT id, quantised, scale FROM kb_chunks WHERE collection_id = ?",
            vec![collection.into()],
        )
        .await?;
        txn.commit().await?;
        let mut slab = Slab {
            documents,
            ids: Vec::with_capacity(rows.len()),
            dims: 0,
            codes: Vec::new(),
            scales: Vec::with_capacity(rows.len()),
            last_used: AtomicU64::new(tick),
        };
        for r in rows {
            let q: Vec<u8> = r.try_get("", "quantised")?;
            if slab.dims == 0 {
                slab.dims = q.len();
                slab.codes.reserve(q.len() * slab.ids.capacity());
            }
            // Vectors of another size (an earlier embedding model) cannot be compared.
            if q.len() != slab.dims {
                continue;
            }
            slab.codes.extend_from_slice(&q);
            slab.scales.push(r.try_get::<f64>("", "scale")? as f32);
            slab.ids.push(r.try_get("", "id")?);
        }
        let slab = Arc::new(slab);
        let mut slabs = self.slabs.lock().expect("slabs");
        slabs.insert(collection.to_owned(), slab.clone());
        let mut total: usize = slabs.values().map(|s| s.bytes()).sum();
        while total > MAX_BYTES && slabs.len() > 1 {
            let Some(oldest) = slabs
                .iter()
                .filter(|(c, _)| c.as_str() != collection)
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(c, _)| c.clone())
            else {
                break;
            };
            if let Some(s) = slabs.remove(&oldest) {
                total -= s.bytes();
            }
        }
        Ok(slab)
    }

    /// The `k` vectors of `collections` nearest to the unit vector `query` (cosine).
    pub(super) async fn nearest(
        &self,
        db: &DatabaseConnection,
        collections: &[String],
        query: &[f32],
        k: usize,
    ) -> Result<Vec<Scored>, DbErr> {
        let mut slabs = Vec::with_capacity(collections.len());
        for c in collections {
            slabs.push(self.slab(db, c).await?);
        }
        let query = query.to_vec();
        // Tens of milliseconds at a hundred thousand chunks: off the async threads.
        tokio::task::spawn_blocking(move || best_k(&slabs, &query, k))
            .await
            .map_err(|e| DbErr::Custom(format!("vector scan: {e}")))
    }
}

/// The best k of the slabs, the rows split between the cores.
fn best_k(slabs: &[Arc<Slab>], query: &[f32], k: usize) -> Vec<Scored> {
    let (query, query_scale) = vector::quantise_query(query);
    let rows: usize = slabs.iter().map(|s| s.ids.len()).sum();
    // Below this a second thread costs more than it saves.
    let threads = if rows < 20_000 {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    };
    let mut parts: Vec<Vec<(f32, usize, usize)>> = Vec::new();
    std::thread::scope(|scope| {
        let work: Vec<_> = (0..threads)
            .map(|t| {
                let query = &query;
                scope.spawn(move || {
                    let mut best = Vec::with_capacity(k + 1);
                    for (s, slab) in slabs.iter().enumerate() {
                        if slab.dims != query.len() {
                            continue;
                        }
                        let n = slab.ids.len();
                        let (from, to) = (n * t / threads, n * (t + 1) / threads);
                        for row in from..to {
                            let code = &slab.codes[row * slab.dims..(row + 1) * slab.dims];
                            let score = vector::dot_i8(query, query_scale, code, slab.scales[row]);
                            keep(&mut best, k, (score, s, row));
                        }
                    }
                    best
                })
            })
            .collect();
        parts = work.into_iter().filter_map(|h| h.join().ok()).collect();
    });
    let mut best = Vec::with_capacity(k + 1);
    for entry in parts.into_iter().flatten() {
        keep(&mut best, k, entry);
    }
    best.into_iter()
        .map(|(score, s, row)| Scored {
            chunk_id: slabs[s].ids[row].clone(),
            score,
        })
        .collect()
}

/// Offers an entry to a best-first list of at most k.
fn keep(best: &mut Vec<(f32, usize, usize)>, k: usize, entry: (f32, usize, usize)) {
    if best.len() == k && best.last().is_some_and(|w| w.0 >= entry.0) {
        return;
    }
    let at = best.partition_point(|b| b.0 >= entry.0);
    best.insert(at, entry);
    best.truncate(k);
}

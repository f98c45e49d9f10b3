//! Knowledge bases: ingest speed (the project's own Markdown and protobuf files through
//! IngestDocument, and the same chunks through llm.Embed, beside sentence-transformers on
//! the same chunks and model files), and hybrid search latency at many chunks (filled
//! through the knowledge store's own index code), over gRPC with the query embedded and
//! at the store without.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use llmesh_chat::knowledge::pgvector::PgvectorIndex;
use llmesh_chat::knowledge::store::{ChunkIndex, DocumentRow, NewChunk, SqlIndex};
use llmesh_chat::knowledge::vector::{self, dot};
use llmesh_proto::chat::v1 as pb;
use llmesh_proto::chat::v1::knowledge_service_client::KnowledgeServiceClient;
use llmesh_proto::llm::v1 as llm_pb;
use llmesh_proto::llm::v1::llm_service_client::LlmServiceClient;
use llmesh_tests::{Backend, TestServer, bearer, ingest, price_and_credit, upload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::ConnectionTrait;

const EMBED: &str = "all-minilm-l6-v2";

pub struct Options {
    pub backend: Backend,
    pub chunks: usize,
    pub queries: usize,
    /// A Python with sentence-transformers, for the peer's figure.
    pub peer_python: Option<PathBuf>,
    /// Skip the ingest half (search latency only).
    pub search_only: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The files ingested: every Markdown and protobuf file git tracks here.
fn documents() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let out = std::process::Command::new("git")
        .args(["ls-files", "*.md", "*.proto"])
        .output()
        .context("git ls-files")?;
    let mut docs = Vec::new();
    for name in String::from_utf8(out.stdout)?.lines() {
        let bytes = std::fs::read(name).with_context(|| format!("reading {name}"))?;
        docs.push((name.replace('/', "_"), bytes));
    }
    anyhow::ensure!(!docs.is_empty(), "run from the repository root");
    Ok(docs)
}

async fn collection(
    k: &mut KnowledgeServiceClient<tonic::transport::Channel>,
    token: &str,
    name: &str,
) -> anyhow::Result<String> {
    Ok(k.create_collection(bearer(
        token,
        pb::CreateCollectionRequest {
            name: name.into(),
            description: String::new(),
        },
    ))
    .await?
    .into_inner()
    .collection
    .context("collection")?
    .id)
}

/// The chunks of `collection` as they were embedded (heading path, then text), with the
/// vectors stored for them.
async fn stored_chunks(
    db: &sea_orm::DatabaseConnection,
    collection: &str,
) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let rows = llmesh_kit::db::all(
        db,
        "SELECT headings, body, embedding FROM kb_chunks WHERE collection_id = ? ORDER BY document_id, position",
        vec![collection.into()],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let headings: Vec<String> = serde_json::from_str(&r.try_get::<String>("", "headings")?)?;
        let body: String = r.try_get("", "body")?;
        let bytes: Vec<u8> = r.try_get("", "embedding")?;
        let text = if headings.is_empty() {
            body
        } else {
            format!("{}\n{body}", headings.join(" > "))
        };
        out.push((text, vector::from_bytes(&bytes).unwrap_or_default()));
    }
    Ok(out)
}

async fn embed(
    llm: &mut LlmServiceClient<tonic::transport::Channel>,
    token: &str,
    texts: &[String],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    // As ingest sends them: chat.knowledge.embed_batch (32) per call.
    for batch in texts.chunks(32) {
        let r = llm
            .embed(bearer(
                token,
                llm_pb::EmbedRequest {
                    model: EMBED.into(),
                    texts: batch.to_vec(),
                },
            ))
            .await?
            .into_inner();
        out.extend(r.embeddings.into_iter().map(|e| e.values));
    }
    Ok(out)
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let models = llmesh_tests::models::models_dir();
    let models_for = models.clone();
    let s = TestServer::start_with(o.backend, move |c| {
        c.llm.models_dir = models_for.display().to_string();
        c.llm.load_at_start = Some(vec![EMBED.into()]);
    })
    .await
    .context("no database for this backend (scripts/pgvector start for pgvector)")?;
    let (user, tokens) = s.signup("bench@example.com").await;
    let t = tokens.access_token;
    price_and_credit(&s.channel, &t, EMBED, &user.id, 1_000_000_000_000).await;
    let mut k = KnowledgeServiceClient::new(s.channel.clone());
    let mut llm = LlmServiceClient::new(s.channel.clone());
    let backend = if o.backend == Backend::Sqlite {
        "SQLite (exact int8 scan)"
    } else {
        "Postgres 18 + pgvector 0.8 (HNSW)"
    };
    let db = s.app().db.clone();

    // Warm-up: the model's first calls.
    embed(
        &mut llm,
        &t,
        &vec!["warm up the embedding model".to_owned(); 32],
    )
    .await?;

    let docs_id = collection(&mut k, &t, "docs").await?;
    if !o.search_only {
        let docs = documents()?;
        let bytes: usize = docs.iter().map(|(_, b)| b.len()).sum();
        let mut uploads = Vec::new();
        for (name, b) in &docs {
            uploads.push(upload(&s.channel, &t, name, b).await);
        }
        let started = Instant::now();
        let mut chunks = 0;
        for up in &uploads {
            chunks += ingest(&mut k, &t, &docs_id, up).await?.1.chunks;
        }
        let ingest_s = started.elapsed().as_secs_f64();
        let stored = stored_chunks(&db, &docs_id).await?;
        let texts: Vec<String> = stored.iter().map(|(t, _)| t.clone()).collect();
        let started = Instant::now();
        let again = embed(&mut llm, &t, &texts).await?;
        let embed_s = started.elapsed().as_secs_f64();
        let min_self = stored
            .iter()
            .zip(&again)
            .map(|((_, a), b)| dot(a, b))
            .fold(f32::INFINITY, f32::min);
        println!();
        println!(
            "knowledge ingest: {} files, {:.0} KB, {chunks} chunks (200 tokens at most), on {backend}",
            docs.len(),
            bytes as f64 / 1024.0
        );
        println!("| path | chunks/s | seconds |");
        println!("|---|---|---|");
        println!(
            "| IngestDocument (parse, count, chunk, embed, index) | {:.1} | {ingest_s:.1} |",
            chunks as f64 / ingest_s
        );
        println!(
            "| llm.Embed, batches of 32 | {:.1} | {embed_s:.1} |",
            texts.len() as f64 / embed_s
        );
        if let Some(python) = &o.peer_python {
            let peer = sentence_transformers(python, &texts, &again).await?;
            println!(
                "| sentence-transformers {} (PyTorch {}, {} threads), batches of 32 | {:.1} | {:.1} |",
                peer.version,
                peer.torch,
                peer.threads,
                texts.len() as f64 / peer.seconds,
                peer.seconds
            );
            println!(
                "llm.Embed against sentence-transformers: {:.2}x (cosine of the two vectors: min {:.5}, mean {:.5})",
                peer.seconds / embed_s,
                peer.min_cosine,
                peer.mean_cosine
            );
        }
        println!("stored vectors against a second embedding: min cosine {min_self:.5}");
    }

    // Search at scale: the bulk collection is filled through the index's own code.
    let bulk = collection(&mut k, &t, "bulk").await?;
    let index: Box<dyn ChunkIndex> = if o.backend == Backend::Sqlite {
        Box::new(SqlIndex::new(db.clone()))
    } else {
        let index = PgvectorIndex::new(db.clone());
        if let Some(why) = index.ready().await? {
            anyhow::bail!("{why}");
        }
        Box::new(index)
    };
    let seeds = stored_chunks(&db, &docs_id).await?;
    let seeds = if seeds.is_empty() {
        // --search-only: a few real vectors to spread the bulk around.
        let texts: Vec<String> = documents()?
            .iter()
            .take(64)
            .map(|(_, b)| String::from_utf8_lossy(&b[..b.len().min(800)]).into_owned())
            .collect();
        let vectors = embed(&mut llm, &t, &texts).await?;
        texts.into_iter().zip(vectors).collect()
    } else {
        seeds
    };
    fill(&*index, &bulk, &user.id, &seeds, o.chunks).await?;
    if o.backend != Backend::Sqlite {
        db.execute_unprepared("ANALYZE").await?;
    }

    let corpus: serde_json::Value =
        serde_json::from_slice(&std::fs::read("tests/fixtures/knowledge/corpus.json")?)?;
    let questions: Vec<String> = corpus["questions"]
        .as_array()
        .context("questions")?
        .iter()
        .filter_map(|q| q["q"].as_str().map(str::to_owned))
        .collect();
    let mut grpc = Vec::with_capacity(o.queries);
    for i in 0..o.queries + 20 {
        let query = questions[i % questions.len()].clone();
        let started = Instant::now();
        let hits = k
            .search_knowledge(bearer(
                &t,
                pb::SearchKnowledgeRequest {
                    collection_ids: vec![bulk.clone()],
                    query,
                    limit: 5,
                    mode: pb::SearchMode::Hybrid as i32,
                },
            ))
            .await?
            .into_inner()
            .hits;
        anyhow::ensure!(!hits.is_empty(), "no hits at all");
        if i >= 20 {
            grpc.push(started.elapsed());
        }
    }
    let vectors = embed(&mut llm, &t, &questions).await?;
    let mut embed_only = Vec::with_capacity(o.queries);
    for i in 0..o.queries {
        let q = vec![questions[i % questions.len()].clone()];
        let started = Instant::now();
        embed(&mut llm, &t, &q).await?;
        embed_only.push(started.elapsed());
    }
    // The model alone, in this process: what of the Embed call is the forward pass.
    let model =
        llmesh_engine::embed::EmbeddingModel::load(&llmesh_tests::models::embedding_model_path())?;
    let mut forward = Vec::with_capacity(o.queries);
    for i in 0..o.queries + 20 {
        let q = vec![questions[i % questions.len()].clone()];
        let started = Instant::now();
        model.embed(&q)?;
        if i >= 20 {
            forward.push(started.elapsed());
        }
    }
    let ids = vec![bulk.clone()];
    let mut vector_only = Vec::with_capacity(o.queries);
    let mut text_only = Vec::with_capacity(o.queries);
    for i in 0..o.queries + 20 {
        let q = &questions[i % questions.len()];
        let terms: Vec<String> = q
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 3)
            .map(str::to_lowercase)
            .collect();
        let started = Instant::now();
        index.nearest(&ids, &vectors[i % vectors.len()], 50).await?;
        let vector_took = started.elapsed();
        let started = Instant::now();
        let candidates = llmesh_chat::knowledge::KnowledgeConfig::default().text_candidates;
        index
            .matching(&ids, &terms, 50, candidates as usize)
            .await?;
        if i >= 20 {
            vector_only.push(vector_took);
            text_only.push(started.elapsed());
        }
    }
    for v in [
        &mut grpc,
        &mut embed_only,
        &mut forward,
        &mut vector_only,
        &mut text_only,
    ] {
        v.sort();
    }
    println!();
    println!(
        "knowledge search: {} chunks in one collection, {} queries (the quality corpus's questions), on {backend}",
        o.chunks, o.queries
    );
    println!("| measured | p50 | p99 |");
    println!("|---|---|---|");
    for (what, v) in [
        ("SearchKnowledge over gRPC, hybrid, query embedded", &grpc),
        ("at the store: the 50 nearest vectors", &vector_only),
        ("at the store: the 50 best full-text matches", &text_only),
        ("llm.Embed of the query alone, over gRPC", &embed_only),
        (
            "the embedding model's forward pass alone, in process",
            &forward,
        ),
    ] {
        println!(
            "| {what} | {:.2} ms | {:.2} ms |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99))
        );
    }
    println!(
        "goal p50 < 30 ms with the query embedded: {}",
        if ms(pct(&grpc, 0.5)) < 30.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

/// Fills `collection` with `n` chunks in documents of 1,000: texts of the seeds' words,
/// vectors the seeds' own moved a little at random and made unit again.
async fn fill(
    index: &dyn ChunkIndex,
    collection: &str,
    user: &str,
    seeds: &[(String, Vec<f32>)],
    n: usize,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    // The seeds' words, most frequent first; chunk texts draw from them by a Zipf law, as
    // natural text does (a few words everywhere, most words rare).
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for (t, _) in seeds {
        for w in t
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            *counts.entry(w.to_lowercase()).or_default() += 1;
        }
    }
    let mut vocabulary: Vec<(String, usize)> = counts.into_iter().collect();
    vocabulary.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let vocabulary: Vec<String> = vocabulary.into_iter().map(|(w, _)| w).collect();
    anyhow::ensure!(!vocabulary.is_empty(), "no seed text");
    let started = Instant::now();
    let mut done = 0;
    let mut doc = 0;
    while done < n {
        let take = (n - done).min(1000);
        let mut chunks = Vec::with_capacity(take);
        for _ in 0..take {
            let (_, seed) = &seeds[rng.random_range(0..seeds.len())];
            let mut v: Vec<f32> = seed
                .iter()
                .map(|x| x + rng.random_range(-0.03f32..0.03))
                .collect();
            let norm = dot(&v, &v).sqrt().max(1e-9);
            v.iter_mut().for_each(|x| *x /= norm);
            let text: Vec<&str> = (0..rng.random_range(80..160))
                .map(|_| vocabulary[crate::zipf(&mut rng, vocabulary.len())].as_str())
                .collect();
            let text = text.join(" ");
            chunks.push(NewChunk {
                page: 0,
                headings: vec![format!("Part {doc}")],
                tokens: (text.len() / 4) as u32,
                text,
                embedding: v,
            });
        }
        let row = DocumentRow {
            id: uuid::Uuid::now_v7().to_string(),
            collection_id: collection.into(),
            user_id: user.into(),
            name: format!("bulk-{doc}.md"),
            format: "markdown".into(),
            size_bytes: 0,
            sha256: String::new(),
            pages: 0,
            chunks: take as u32,
            tokens: 0,
            created_at: chrono::Utc::now(),
        };
        index.replace_document(&row, chunks).await?;
        done += take;
        doc += 1;
        if done % 10_000 == 0 || done == n {
            eprintln!(
                "stored {done}/{n} chunks ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

struct Peer {
    version: String,
    torch: String,
    threads: u64,
    seconds: f64,
    min_cosine: f64,
    mean_cosine: f64,
}

/// sentence-transformers on the same texts and model directory (bench/peer/st_embed.py),
/// its vectors compared with llmesh's.
async fn sentence_transformers(
    python: &Path,
    texts: &[String],
    ours: &[Vec<f32>],
) -> anyhow::Result<Peer> {
    let dir = std::env::temp_dir().join(format!("llmesh-st-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("chunks.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&serde_json::json!({ "texts": texts, "vectors": ours }))?,
    )?;
    let model = llmesh_tests::models::embedding_model_path();
    let out = tokio::process::Command::new(python)
        .arg("bench/peer/st_embed.py")
        .arg(&model)
        .arg(&input)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("running bench/peer/st_embed.py")?;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(out.status.success(), "st_embed.py failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(Peer {
        version: v["version"].as_str().unwrap_or("?").into(),
        torch: v["torch"].as_str().unwrap_or("?").into(),
        threads: v["threads"].as_u64().unwrap_or(0),
        seconds: v["seconds"].as_f64().context("seconds")?,
        min_cosine: v["min_cosine"].as_f64().unwrap_or(f64::NAN),
        mean_cosine: v["mean_cosine"].as_f64().unwrap_or(f64::NAN),
    })
}

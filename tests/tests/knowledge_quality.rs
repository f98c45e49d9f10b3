//! Retrieval quality on a fixed corpus (tests/fixtures/knowledge/corpus.json: 30 documents
//! and 40 questions, half of them paraphrased so they share no content word with their
//! document), written before any tuning. Every document is ingested through the real
//! MiniLM; each question is searched by vector, by full text and hybrid; recall@5 is the
//! share of questions whose document is among the top five hits. Hybrid must reach 0.9 on
//! SQLite and Postgres; the other figures are printed beside it.

use std::collections::HashSet;

use llmesh_proto::chat::v1 as pb;
use llmesh_proto::chat::v1::knowledge_service_client::KnowledgeServiceClient;
use llmesh_tests::{Backend, TestServer, bearer, price_and_credit, upload};
use serde::Deserialize;

#[derive(Deserialize)]
struct Corpus {
    documents: Vec<Doc>,
    questions: Vec<Question>,
}

#[derive(Deserialize)]
struct Doc {
    id: String,
    text: String,
}

#[derive(Deserialize)]
struct Question {
    q: String,
    doc: String,
    paraphrased: bool,
}

const STOP: &str = "a an the and or of to in on at for with by from is are be been do does did i my me we us our you your it its this that what when where why how which who whom can may must should would could will get got there here as if not no so than then too very into out up down about after before over under again once only own same some such both each few more most other any all just also per";

fn content_words(text: &str) -> HashSet<String> {
    let stop: HashSet<&str> = STOP.split(' ').collect();
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty() && !stop.contains(w))
        .map(str::to_owned)
        .collect()
}

fn corpus() -> Corpus {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/knowledge/corpus.json");
    serde_json::from_slice(&std::fs::read(path).expect("corpus")).expect("corpus JSON")
}

#[test]
fn the_corpus_keeps_its_promises() {
    let c = corpus();
    assert!(c.documents.len() >= 30 && c.questions.len() >= 40);
    let paraphrased = c.questions.iter().filter(|q| q.paraphrased).count();
    assert!(paraphrased * 2 >= c.questions.len(), "half are paraphrased");
    for q in c.questions.iter().filter(|q| q.paraphrased) {
        let doc = c
            .documents
            .iter()
            .find(|d| d.id == q.doc)
            .expect("the question's document");
        let shared: Vec<String> = content_words(&q.q)
            .intersection(&content_words(&doc.text))
            .cloned()
            .collect();
        assert!(
            shared.is_empty(),
            "{:?} shares {shared:?} with {}",
            q.q,
            q.doc
        );
    }
}

async fn recall_on(backend: Backend) {
    let c = corpus();
    let models = llmesh_tests::models::models_dir();
    let Some(s) = TestServer::start_with(backend, |cfg| {
        cfg.llm.models_dir = models.display().to_string();
    })
    .await
    else {
        return;
    };
    let (user, tokens) = s.signup("reader@example.com").await;
    let t = tokens.access_token;
    price_and_credit(&s.channel, &t, "all-minilm-l6-v2", &user.id, 100_000_000).await;
    let mut k = KnowledgeServiceClient::new(s.channel.clone());
    let collection = k
        .create_collection(bearer(
            &t,
            pb::CreateCollectionRequest {
                name: "Handbook".into(),
                description: String::new(),
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .collection
        .expect("collection")
        .id;
    for d in &c.documents {
        let up = upload(&s.channel, &t, &format!("{}.md", d.id), d.text.as_bytes()).await;
        let mut stream = k
            .ingest_document(bearer(
                &t,
                pb::IngestDocumentRequest {
                    collection_id: collection.clone(),
                    upload_id: up,
                    format: 0,
                },
            ))
            .await
            .expect("ingest")
            .into_inner();
        while stream.message().await.expect("ingest stream").is_some() {}
    }
    let mut report = Vec::new();
    let mut hybrid = 0.0;
    for (name, mode) in [
        ("hybrid", pb::SearchMode::Hybrid),
        ("vector", pb::SearchMode::Vector),
        ("text", pb::SearchMode::Text),
    ] {
        let (mut found, mut found_para, mut para) = (0usize, 0usize, 0usize);
        for q in &c.questions {
            let hits = k
                .search_knowledge(bearer(
                    &t,
                    pb::SearchKnowledgeRequest {
                        collection_ids: vec![collection.clone()],
                        query: q.q.clone(),
                        limit: 5,
                        mode: mode as i32,
                    },
                ))
                .await
                .expect("search")
                .into_inner()
                .hits;
            let want = format!("{}.md", q.doc);
            let hit = hits
                .iter()
                .any(|h| h.chunk.as_ref().is_some_and(|c| c.document_name == want));
            found += usize::from(hit);
            if q.paraphrased {
                para += 1;
                found_para += usize::from(hit);
            }
        }
        let recall = found as f64 / c.questions.len() as f64;
        if name == "hybrid" {
            hybrid = recall;
        }
        report.push(format!(
            "{backend:?} {name}: recall@5 {recall:.3} (paraphrased {:.3}, literal {:.3})",
            found_para as f64 / para as f64,
            (found - found_para) as f64 / (c.questions.len() - para) as f64
        ));
    }
    println!("{}", report.join("\n"));
    assert!(
        hybrid >= 0.9,
        "hybrid recall@5 below 0.9:\n{}",
        report.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_at_5_on_sqlite() {
    recall_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_at_5_on_postgres_with_pgvector() {
    recall_on(Backend::Pgvector).await;
}

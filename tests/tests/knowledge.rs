//! Knowledge bases end to end on a real server with the real MiniLM embedding model, on
//! SQLite and Postgres: documents uploaded in chunks, ingested with progress, cut by the
//! model's own tokens, searched by meaning and by words (fused), replaced atomically,
//! shared read-only, and refused with reasons; every id-taking RPC against another
//! user's ids is NOT_FOUND.

use llmesh_proto::chat::v1 as pb;
use llmesh_proto::chat::v1::chat_archive_service_client::ChatArchiveServiceClient;
use llmesh_proto::chat::v1::chat_service_client::ChatServiceClient;
use llmesh_proto::chat::v1::knowledge_service_client::KnowledgeServiceClient;
use llmesh_tests::{Backend, TestServer, bearer, ingest, price_and_credit, upload};
use tonic::Code;
use tonic::transport::Channel;

const EMBED: &str = "all-minilm-l6-v2";

const GUIDE: &str = "# Greenhouse handbook

## Watering

Tomatoes need deep watering twice a week in summer. Water at the base of the plant in the
early morning, so the leaves dry before the sun is strong.

## Pests

Aphids gather under young leaves. A spray of soapy water removes them without harming
ladybirds, which eat aphids.

## Heating

In winter the greenhouse heater keeps the air above five degrees Celsius. A thermostat
switches it off when the sun warms the glass.
";

async fn search(
    k: &mut KnowledgeServiceClient<Channel>,
    token: &str,
    collections: &[&str],
    query: &str,
    mode: pb::SearchMode,
) -> Result<Vec<pb::KnowledgeHit>, tonic::Status> {
    Ok(k.search_knowledge(bearer(
        token,
        pb::SearchKnowledgeRequest {
            collection_ids: collections.iter().map(|c| (*c).to_owned()).collect(),
            query: query.into(),
            limit: 3,
            mode: mode as i32,
        },
    ))
    .await?
    .into_inner()
    .hits)
}

fn top_heading(hits: &[pb::KnowledgeHit]) -> String {
    hits.first()
        .and_then(|h| h.chunk.as_ref())
        .and_then(|c| c.headings.last().cloned())
        .unwrap_or_default()
}

fn not_found<T>(r: Result<tonic::Response<T>, tonic::Status>) {
    match r {
        Err(e) if e.code() == Code::NotFound => {}
        Err(e) => panic!("expected NOT_FOUND, got {e:?}"),
        Ok(_) => panic!("expected NOT_FOUND, got a result"),
    }
}

async fn knowledge_on(backend: Backend) {
    let models = llmesh_tests::models::models_dir();
    let Some(s) = TestServer::start_with(backend, |c| {
        c.llm.models_dir = models.display().to_string();
        // Small chunks, so the handbook makes several.
        c.chat.knowledge.chunk_tokens = 48;
        c.chat.knowledge.chunk_overlap_tokens = 8;
    })
    .await
    else {
        return;
    };
    let (owner, tokens) = s.signup("owner@example.com").await;
    let t = tokens.access_token;
    price_and_credit(&s.channel, &t, EMBED, &owner.id, 10_000_000).await;
    let (other, other_tokens) = s.signup("other@example.com").await;
    let o = other_tokens.access_token;
    price_and_credit(&s.channel, &t, EMBED, &other.id, 10_000_000).await;
    let mut k = KnowledgeServiceClient::new(s.channel.clone());

    let garden = k
        .create_collection(bearer(
            &t,
            pb::CreateCollectionRequest {
                name: "Garden".into(),
                description: "How we grow things".into(),
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .collection
        .expect("collection");
    assert!(garden.writable);

    let up = upload(&s.channel, &t, "handbook.md", GUIDE.as_bytes()).await;
    let (phases, doc) = ingest(&mut k, &t, &garden.id, &up).await.expect("ingest");
    assert_eq!(doc.format, pb::DocumentFormat::Markdown as i32);
    assert!(doc.chunks >= 3, "one chunk or more per section: {doc:?}");
    for phase in [
        pb::IngestPhase::Parsing,
        pb::IngestPhase::Chunking,
        pb::IngestPhase::Embedding,
        pb::IngestPhase::Indexing,
    ] {
        assert!(phases.contains(&(phase as i32)), "{phase:?} in {phases:?}");
    }

    // Meaning: a paraphrase that shares no key word with its passage.
    let hits = search(
        &mut k,
        &t,
        &[&garden.id],
        "how do I get rid of small insects on my plants",
        pb::SearchMode::Vector,
    )
    .await
    .expect("vector search");
    assert_eq!(top_heading(&hits), "Pests", "{hits:#?}");
    assert!(hits[0].similarity > 0.2 && hits[0].vector_rank == 1);
    // Words: full text finds the exact term, highlighted.
    let hits = search(
        &mut k,
        &t,
        &[&garden.id],
        "thermostat",
        pb::SearchMode::Text,
    )
    .await
    .expect("text search");
    assert_eq!(top_heading(&hits), "Heating", "{hits:#?}");
    assert!(
        hits[0].highlight.contains("«thermostat»"),
        "{}",
        hits[0].highlight
    );
    // Both, fused.
    let hits = search(
        &mut k,
        &t,
        &[&garden.id],
        "when should tomatoes be watered",
        pb::SearchMode::Hybrid,
    )
    .await
    .expect("hybrid search");
    assert_eq!(top_heading(&hits), "Watering", "{hits:#?}");
    assert!(hits[0].vector_rank > 0 && hits[0].text_rank > 0);
    let chunk = hits[0].chunk.clone().expect("chunk");
    let around = k
        .get_chunk(bearer(
            &t,
            pb::GetChunkRequest {
                id: chunk.id.clone(),
                context: 1,
            },
        ))
        .await
        .expect("get chunk")
        .into_inner();
    assert!(around.around.iter().any(|c| c.id == chunk.id));

    // Chat with knowledge: a conversation drawing on the collection gets the best chunks
    // as numbered sources, streams them before the reply, and keeps them with it.
    let mut chat = ChatServiceClient::new(s.channel.clone());
    let conversation = chat
        .create_conversation(bearer(
            &t,
            pb::CreateConversationRequest {
                collection_ids: vec![garden.id.clone()],
                sampling: Some(llmesh_proto::llm::v1::SamplingParams {
                    max_tokens: Some(12),
                    temperature: Some(0.0),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("a conversation with knowledge")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(conversation.collection_ids, vec![garden.id.clone()]);
    let mut stream = chat
        .send_message(bearer(
            &t,
            pb::SendMessageRequest {
                conversation_id: conversation.id.clone(),
                content: "How do I get rid of the little insects under the leaves?".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("send")
        .into_inner();
    let mut streamed = Vec::new();
    let mut saw_delta_first = false;
    let mut reply = None;
    while let Some(msg) = stream.message().await.expect("stream") {
        match msg.event.and_then(|e| e.event) {
            Some(pb::reply_event::Event::Citations(list)) => streamed = list.citations,
            Some(pb::reply_event::Event::Delta(_)) if streamed.is_empty() => saw_delta_first = true,
            Some(pb::reply_event::Event::AssistantMessage(m)) => reply = Some(m),
            _ => {}
        }
    }
    assert!(!saw_delta_first, "the sources come before the reply's text");
    let reply = reply.expect("the stored reply");
    assert!(!streamed.is_empty(), "sources were found");
    assert_eq!(streamed[0].index, 1);
    assert_eq!(
        streamed[0].headings.last().map(String::as_str),
        Some("Pests"),
        "{streamed:#?}"
    );
    assert_eq!(streamed[0].document_name, "handbook.md");
    assert_eq!(reply.citations, streamed, "stored with the reply");
    let stored = chat
        .get_conversation(bearer(
            &t,
            pb::GetConversationRequest {
                id: conversation.id.clone(),
            },
        ))
        .await
        .expect("get conversation")
        .into_inner();
    let last = stored.messages.last().expect("messages");
    assert_eq!(last.citations, streamed, "kept across reads");
    // Exports keep the citations; an import keeps those the importer can still read.
    let mut archive = ChatArchiveServiceClient::new(s.channel.clone());
    let mut export = archive
        .export_conversations(bearer(
            &t,
            pb::ExportConversationsRequest {
                conversation_id: conversation.id.clone(),
                format: pb::ExportFormat::Json as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("export")
        .into_inner();
    let mut exported = Vec::new();
    while let Some(part) = export.message().await.expect("export stream") {
        exported.extend(part.chunk);
    }
    let text = String::from_utf8(exported.clone()).expect("JSON");
    assert!(text.contains("\"citations\"") && text.contains(&streamed[0].chunk_id));
    for (who, token, keeps) in [("owner", &t, true), ("other", &o, false)] {
        let up = upload(&s.channel, token, "export.json", &exported).await;
        let mut events = archive
            .import_conversations(bearer(
                token,
                pb::ImportConversationsRequest {
                    upload_id: up,
                    source: pb::ImportSource::LlmeshJson as i32,
                },
            ))
            .await
            .expect("import")
            .into_inner();
        while events.message().await.expect("import stream").is_some() {}
        let listed = chat
            .list_conversations(bearer(token, pb::ListConversationsRequest::default()))
            .await
            .expect("list")
            .into_inner()
            .conversations;
        let imported = listed
            .iter()
            .find(|c| c.id != conversation.id)
            .expect("the imported conversation");
        let got = chat
            .get_conversation(bearer(
                token,
                pb::GetConversationRequest {
                    id: imported.id.clone(),
                },
            ))
            .await
            .expect("get")
            .into_inner();
        let cites = &got.messages.last().expect("messages").citations;
        if keeps {
            assert_eq!(cites, &streamed, "{who} keeps the citations");
        } else {
            assert!(
                cites.is_empty(),
                "{who} cannot read the collection: {cites:?}"
            );
        }
        chat.delete_conversation(bearer(
            token,
            pb::DeleteConversationRequest {
                id: imported.id.clone(),
            },
        ))
        .await
        .expect("delete the copy");
    }

    // Someone else's collection cannot be attached.
    let other_private = k
        .create_collection(bearer(
            &o,
            pb::CreateCollectionRequest {
                name: "Secret".into(),
                description: String::new(),
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .collection
        .expect("collection");
    let err = chat
        .create_conversation(bearer(
            &t,
            pb::CreateConversationRequest {
                collection_ids: vec![other_private.id.clone()],
                ..Default::default()
            },
        ))
        .await
        .expect_err("not theirs");
    assert_eq!(err.code(), Code::NotFound);
    k.delete_collection(bearer(
        &o,
        pb::DeleteCollectionRequest {
            id: other_private.id,
        },
    ))
    .await
    .expect("delete");

    // A changed document of the same name replaces the old one whole.
    let changed = GUIDE.replace("thermostat", "timer switch");
    let up = upload(&s.channel, &t, "handbook.md", changed.as_bytes()).await;
    let (_, replaced) = ingest(&mut k, &t, &garden.id, &up)
        .await
        .expect("re-ingest");
    let docs = k
        .list_documents(bearer(
            &t,
            pb::ListDocumentsRequest {
                collection_id: garden.id.clone(),
            },
        ))
        .await
        .expect("list documents")
        .into_inner()
        .documents;
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].id, replaced.id);
    let gone = search(
        &mut k,
        &t,
        &[&garden.id],
        "thermostat",
        pb::SearchMode::Text,
    )
    .await
    .expect("search");
    assert!(
        gone.is_empty(),
        "the old chunks went with the old document: {gone:#?}"
    );

    // A file that cannot be read fails alone and leaves nothing.
    let up = upload(
        &s.channel,
        &t,
        "photo.txt",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00binary",
    )
    .await;
    let err = ingest(&mut k, &t, &garden.id, &up)
        .await
        .expect_err("binary");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("photo.txt"), "{}", err.message());
    let up = upload(&s.channel, &t, "report.pdf", b"%PDF-1.7\n...").await;
    let err = ingest(&mut k, &t, &garden.id, &up).await.expect_err("pdf");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("report.pdf: the PDF"),
        "{}",
        err.message()
    );

    // Another user sees nothing of it: every id is NOT_FOUND.
    let own = k
        .create_collection(bearer(
            &o,
            pb::CreateCollectionRequest {
                name: "Mine".into(),
                description: String::new(),
            },
        ))
        .await
        .expect("other's collection")
        .into_inner()
        .collection
        .expect("collection");
    let listed = k
        .list_collections(bearer(&o, pb::ListCollectionsRequest {}))
        .await
        .expect("list")
        .into_inner()
        .collections;
    assert_eq!(listed.len(), 1);
    let err = search(
        &mut k,
        &o,
        &[&garden.id],
        "tomatoes",
        pb::SearchMode::Hybrid,
    )
    .await
    .expect_err("not theirs");
    assert_eq!(err.code(), Code::NotFound);
    not_found(
        k.list_documents(bearer(
            &o,
            pb::ListDocumentsRequest {
                collection_id: garden.id.clone(),
            },
        ))
        .await,
    );
    not_found(
        k.get_chunk(bearer(
            &o,
            pb::GetChunkRequest {
                id: chunk.id.clone(),
                context: 0,
            },
        ))
        .await,
    );
    not_found(
        k.delete_document(bearer(
            &o,
            pb::DeleteDocumentRequest {
                id: replaced.id.clone(),
            },
        ))
        .await,
    );
    not_found(
        k.update_collection(bearer(
            &o,
            pb::UpdateCollectionRequest {
                id: garden.id.clone(),
                name: Some("taken".into()),
                ..Default::default()
            },
        ))
        .await,
    );
    not_found(
        k.delete_collection(bearer(
            &o,
            pb::DeleteCollectionRequest {
                id: garden.id.clone(),
            },
        ))
        .await,
    );
    let theirs = upload(&s.channel, &o, "x.md", b"# x\n\nhello").await;
    let err = ingest(&mut k, &o, &garden.id, &theirs)
        .await
        .expect_err("not theirs");
    assert_eq!(err.code(), Code::NotFound);
    // Nor may the owner ingest someone else's upload.
    let err = ingest(&mut k, &t, &garden.id, &theirs)
        .await
        .expect_err("not their upload");
    assert_eq!(err.code(), Code::NotFound);
    // Only admins open a collection to everyone (the owner here is the first user: admin).
    let err = k
        .update_collection(bearer(
            &o,
            pb::UpdateCollectionRequest {
                id: own.id.clone(),
                everyone: Some(true),
                ..Default::default()
            },
        ))
        .await
        .expect_err("members cannot open to everyone");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Shared read-only: the reader searches it, cannot change it, and sees none of the
    // owner's other collections.
    k.create_collection(bearer(
        &t,
        pb::CreateCollectionRequest {
            name: "Private".into(),
            description: String::new(),
        },
    ))
    .await
    .expect("private");
    let shared = k
        .update_collection(bearer(
            &t,
            pb::UpdateCollectionRequest {
                id: garden.id.clone(),
                shared_with: Some(pb::UserList {
                    user_ids: vec![other.id.clone()],
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("share")
        .into_inner()
        .collection
        .expect("collection");
    assert_eq!(shared.shared_with, vec![other.id.clone()]);
    let listed = k
        .list_collections(bearer(&o, pb::ListCollectionsRequest {}))
        .await
        .expect("list")
        .into_inner()
        .collections;
    let names: Vec<&str> = listed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(listed.len(), 2, "{names:?}");
    let seen = listed.iter().find(|c| c.id == garden.id).expect("shared");
    assert!(!seen.writable && seen.shared_with.is_empty(), "{seen:?}");
    let hits = search(
        &mut k,
        &o,
        &[&garden.id, &own.id],
        "aphids",
        pb::SearchMode::Hybrid,
    )
    .await
    .expect("the reader searches");
    assert_eq!(top_heading(&hits), "Pests");
    let err = k
        .delete_document(bearer(
            &o,
            pb::DeleteDocumentRequest {
                id: replaced.id.clone(),
            },
        ))
        .await
        .expect_err("read-only");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ingest(&mut k, &o, &garden.id, &theirs)
        .await
        .expect_err("read-only");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Validation names the field.
    let err = k
        .create_collection(bearer(
            &t,
            pb::CreateCollectionRequest {
                name: "x".repeat(201),
                description: String::new(),
            },
        ))
        .await
        .expect_err("long name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("name"), "{}", err.message());
    let err = search(&mut k, &t, &[], "x", pb::SearchMode::Hybrid)
        .await
        .expect_err("no collections");
    assert!(
        err.message().contains("collection_ids"),
        "{}",
        err.message()
    );

    // Deleting takes the chunks with it.
    k.delete_document(bearer(
        &t,
        pb::DeleteDocumentRequest {
            id: replaced.id.clone(),
        },
    ))
    .await
    .expect("delete document");
    let hits = search(&mut k, &t, &[&garden.id], "aphids", pb::SearchMode::Hybrid)
        .await
        .expect("search");
    assert!(hits.is_empty());
    k.delete_collection(bearer(
        &t,
        pb::DeleteCollectionRequest {
            id: garden.id.clone(),
        },
    ))
    .await
    .expect("delete collection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowledge_bases_on_sqlite() {
    knowledge_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowledge_bases_on_postgres_with_pgvector() {
    knowledge_on(Backend::Pgvector).await;
}

async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    db.query_one_raw(sea_orm::Statement::from_string(
        sea_orm::DatabaseBackend::Postgres,
        sql,
    ))
    .await
    .expect("count")
    .expect("a row")
    .try_get_by_index(0)
    .expect("a number")
}

/// pgvector's table is derived from the chunks: what a restore (or a database from before
/// pgvector) lacks is filled in when knowledge starts, what no chunk owns is dropped, and
/// deleting a document takes its vectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgvector_vectors_follow_the_chunks_across_restarts() {
    use sea_orm::ConnectionTrait;
    let models = llmesh_tests::models::models_dir();
    let with_models = |c: &mut llmesh::Config| c.llm.models_dir = models.display().to_string();
    let Some(s) = TestServer::start_with(Backend::Pgvector, with_models).await else {
        return;
    };
    let (owner, tokens) = s.signup("owner@example.com").await;
    let t = tokens.access_token;
    price_and_credit(&s.channel, &t, EMBED, &owner.id, 10_000_000).await;
    let mut k = KnowledgeServiceClient::new(s.channel.clone());
    let garden = k
        .create_collection(bearer(
            &t,
            pb::CreateCollectionRequest {
                name: "Garden".into(),
                description: String::new(),
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .collection
        .expect("collection");
    let up = upload(&s.channel, &t, "handbook.md", GUIDE.as_bytes()).await;
    let (_, doc) = ingest(&mut k, &t, &garden.id, &up).await.expect("ingest");
    let db = sea_orm::Database::connect(s.db.url.as_str())
        .await
        .expect("connect");
    let vectors = "SELECT COUNT(*) FROM kb_vectors";
    assert_eq!(count(&db, vectors).await, i64::from(doc.chunks));
    let pests = "how do I get rid of small insects on my plants";

    // As a restore leaves it: no vectors, and one that belongs to no chunk.
    db.execute_unprepared("DELETE FROM kb_vectors")
        .await
        .expect("empty");
    let ones = vec!["1"; 384].join(",");
    db.execute_unprepared(&format!(
        "INSERT INTO kb_vectors VALUES ('gone', '{}', 384, '[{ones}]')",
        garden.id
    ))
    .await
    .expect("a stray vector");
    let s = s.restart(chrono::Duration::zero(), with_models).await;
    let mut k = KnowledgeServiceClient::new(s.channel.clone());
    let hits = search(&mut k, &t, &[&garden.id], pests, pb::SearchMode::Vector)
        .await
        .expect("vector search after the restart");
    assert_eq!(top_heading(&hits), "Pests", "{hits:#?}");
    assert!(hits.iter().all(|h| h.chunk.is_some()));
    assert_eq!(count(&db, vectors).await, i64::from(doc.chunks));
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM kb_vectors WHERE chunk_id = 'gone'"
        )
        .await,
        0
    );

    k.delete_document(bearer(&t, pb::DeleteDocumentRequest { id: doc.id }))
        .await
        .expect("delete");
    assert_eq!(count(&db, vectors).await, 0);
}

/// On a Postgres without pgvector (the system Postgres 15 here) llmesh migrates and runs;
/// knowledge calls say what to install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pgvector_knowledge_is_a_failed_precondition() {
    let Some(s) = TestServer::start(Backend::Postgres).await else {
        return;
    };
    let db = sea_orm::Database::connect(s.db.url.as_str())
        .await
        .expect("connect");
    let has = "SELECT COUNT(*) FROM pg_available_extensions WHERE name = 'vector'";
    if count(&db, has).await > 0 {
        eprintln!("SKIPPED: the test Postgres has pgvector, so it cannot show its absence");
        return;
    }
    let (_, tokens) = s.signup("owner@example.com").await;
    let t = tokens.access_token;
    let mut k = KnowledgeServiceClient::new(s.channel.clone());
    let precondition = |e: tonic::Status| {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("pgvector"), "{}", e.message());
    };
    precondition(
        k.create_collection(bearer(
            &t,
            pb::CreateCollectionRequest {
                name: "Garden".into(),
                description: String::new(),
            },
        ))
        .await
        .expect_err("no pgvector"),
    );
    precondition(
        k.list_collections(bearer(&t, pb::ListCollectionsRequest::default()))
            .await
            .expect_err("no pgvector"),
    );
    precondition(
        search(&mut k, &t, &["c1"], "aphids", pb::SearchMode::Hybrid)
            .await
            .expect_err("no pgvector"),
    );
    let mut chat = ChatServiceClient::new(s.channel.clone());
    precondition(
        chat.create_conversation(bearer(
            &t,
            pb::CreateConversationRequest {
                collection_ids: vec!["c1".into()],
                ..Default::default()
            },
        ))
        .await
        .expect_err("no pgvector"),
    );
    // Everything else runs.
    chat.create_conversation(bearer(&t, pb::CreateConversationRequest::default()))
        .await
        .expect("a conversation without knowledge");
}

/// Full-text ranking is bounded: with `text_candidates` at 3, a word in six chunks ranks
/// the newest three, and a common word beside a rare one is left out of the query.
async fn full_text_is_bounded_on(backend: Backend) {
    use sea_orm::ConnectionTrait;
    let models = llmesh_tests::models::models_dir();
    let Some(s) = TestServer::start_with(backend, |c| {
        c.llm.models_dir = models.display().to_string();
        c.chat.knowledge.text_candidates = 3;
    })
    .await
    else {
        return;
    };
    let (owner, tokens) = s.signup("owner@example.com").await;
    let t = tokens.access_token;
    price_and_credit(&s.channel, &t, EMBED, &owner.id, 10_000_000).await;
    let mut k = KnowledgeServiceClient::new(s.channel.clone());
    let notes = k
        .create_collection(bearer(
            &t,
            pb::CreateCollectionRequest {
                name: "Notes".into(),
                description: String::new(),
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .collection
        .expect("collection");
    let mut names = Vec::new();
    for i in 0..6 {
        let text = if i == 1 || i == 4 {
            format!("Alpha note {i}: a zebra crossed the road.")
        } else {
            format!("Alpha note {i}: nothing happened today.")
        };
        let name = format!("note{i}.txt");
        let up = upload(&s.channel, &t, &name, text.as_bytes()).await;
        ingest(&mut k, &t, &notes.id, &up).await.expect("ingest");
        names.push(name);
    }
    if backend == Backend::Pgvector {
        // Postgres learns word frequencies from the planner's statistics.
        let db = sea_orm::Database::connect(s.db.url.as_str())
            .await
            .expect("connect");
        db.execute_unprepared("ANALYZE kb_chunks_fts")
            .await
            .expect("analyze");
    }
    let found = |query: &'static str| {
        let mut k = k.clone();
        let t = t.clone();
        let id = notes.id.clone();
        async move {
            let mut docs: Vec<String> = k
                .search_knowledge(bearer(
                    &t,
                    pb::SearchKnowledgeRequest {
                        collection_ids: vec![id],
                        query: query.into(),
                        limit: 10,
                        mode: pb::SearchMode::Text as i32,
                    },
                ))
                .await
                .expect("search")
                .into_inner()
                .hits
                .into_iter()
                .map(|h| h.chunk.expect("chunk").document_name)
                .collect();
            docs.sort();
            docs
        }
    };
    assert_eq!(found("zebra").await, ["note1.txt", "note4.txt"]);
    assert_eq!(
        found("alpha").await,
        ["note3.txt", "note4.txt", "note5.txt"],
        "the newest three"
    );
    assert_eq!(
        found("alpha zebra").await,
        ["note1.txt", "note4.txt"],
        "the frequent word is left out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_text_is_bounded_on_sqlite() {
    full_text_is_bounded_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_text_is_bounded_on_postgres_with_pgvector() {
    full_text_is_bounded_on(Backend::Pgvector).await;
}

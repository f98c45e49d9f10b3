//! The chat archive over gRPC on SQLite and Postgres: chunked uploads, ChatGPT and llmesh
//! imports (with malformed variants), export → import round trips, and ranked search.

use llmesh_proto::chat::v1 as pb;
use llmesh_proto::chat::v1::chat_archive_service_client::ChatArchiveServiceClient;
use llmesh_proto::chat::v1::chat_service_client::ChatServiceClient;
use llmesh_proto::common::v1::PageRequest;
use llmesh_proto::sandbox::v1 as sbx;
use llmesh_tests::{TestServer, bearer, both_backends, every_shape};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

fn archive(s: &TestServer) -> ChatArchiveServiceClient<Channel> {
    ChatArchiveServiceClient::new(s.channel.clone())
}

/// Uploads bytes in chunks of at most `chunk` bytes; returns the upload id.
async fn upload(a: &mut ChatArchiveServiceClient<Channel>, token: &str, bytes: &[u8]) -> String {
    let begun = a
        .begin_upload(bearer(
            token,
            pb::BeginUploadRequest {
                file_name: "conversations.json".into(),
                size_bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            },
        ))
        .await
        .expect("begin")
        .into_inner();
    let mut offset = 0;
    for chunk in bytes.chunks(begun.max_chunk_bytes as usize) {
        a.append_upload_chunk(bearer(
            token,
            pb::AppendUploadChunkRequest {
                upload_id: begun.upload_id.clone(),
                offset,
                data: chunk.to_vec(),
            },
        ))
        .await
        .expect("chunk");
        offset += chunk.len() as u64;
    }
    a.finish_upload(bearer(
        token,
        pb::FinishUploadRequest {
            upload_id: begun.upload_id.clone(),
        },
    ))
    .await
    .expect("finish");
    begun.upload_id
}

/// Imports an upload; returns the final report, or the status that ended the stream.
async fn import(
    a: &mut ChatArchiveServiceClient<Channel>,
    token: &str,
    upload_id: &str,
    source: pb::ImportSource,
) -> Result<pb::ImportReport, tonic::Status> {
    let mut stream = a
        .import_conversations(bearer(
            token,
            pb::ImportConversationsRequest {
                upload_id: upload_id.into(),
                source: source as i32,
            },
        ))
        .await?
        .into_inner();
    let mut last_progress = None;
    while let Some(msg) = stream.message().await? {
        match msg.event.expect("event") {
            pb::import_conversations_response::Event::Progress(p) => last_progress = Some(p),
            pb::import_conversations_response::Event::Report(r) => {
                let p = last_progress.expect("progress before the report");
                assert_eq!(p.done, p.total);
                return Ok(r);
            }
        }
    }
    panic!("import ended without a report");
}

async fn export(
    a: &mut ChatArchiveServiceClient<Channel>,
    token: &str,
    format: pb::ExportFormat,
) -> Vec<u8> {
    export_some(a, token, format, Vec::new())
        .await
        .expect("export")
}

/// Exports `ids` (all conversations when empty).
async fn export_some(
    a: &mut ChatArchiveServiceClient<Channel>,
    token: &str,
    format: pb::ExportFormat,
    ids: Vec<String>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = a
        .export_conversations(bearer(
            token,
            pb::ExportConversationsRequest {
                conversation_id: String::new(),
                format: format as i32,
                conversation_ids: ids,
            },
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.extend(msg.chunk);
    }
    Ok(out)
}

/// An export with ids replaced by their order of appearance, for comparing round trips.
fn normalized(bytes: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).expect("export is JSON");
    let mut ids: Vec<String> = Vec::new();
    let mut name = |id: &str| {
        let pos = ids.iter().position(|x| x == id).unwrap_or_else(|| {
            ids.push(id.to_owned());
            ids.len() - 1
        });
        serde_json::Value::String(format!("#{pos}"))
    };
    let convs = v["conversations"].as_array_mut().expect("conversations");
    convs.sort_by(|a, b| a["title"].as_str().cmp(&b["title"].as_str()));
    for c in convs.iter_mut() {
        c["id"] = serde_json::Value::Null;
        for m in c["messages"].as_array_mut().expect("messages") {
            let id = m["id"].as_str().expect("id").to_owned();
            m["id"] = name(&id);
        }
        for m in c["messages"].as_array_mut().expect("messages") {
            if let Some(p) = m["parent_id"].as_str().map(str::to_owned) {
                m["parent_id"] = name(&p);
            }
        }
        if let Some(l) = c["active_leaf_id"].as_str().map(str::to_owned) {
            c["active_leaf_id"] = name(&l);
        }
    }
    v
}

every_shape!(
    chatgpt_import_export_round_trip_and_search,
    |backend| async move {
        let Some(s) = TestServer::start(backend).await else {
            return;
        };
        let (_, a_tokens) = s.signup("a@example.com").await;
        let (_, b_tokens) = s.signup("b@example.com").await;
        let (ta, tb) = (a_tokens.access_token, b_tokens.access_token);
        let mut ar = archive(&s);
        let mut chat = ChatServiceClient::new(s.channel.clone());

        let fixture = std::fs::read(format!(
            "{}/fixtures/chatgpt/conversations.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture");
        let id = upload(&mut ar, &ta, &fixture).await;
        let report = import(&mut ar, &ta, &id, pb::ImportSource::Chatgpt)
            .await
            .expect("import");
        assert_eq!(report.imported, 3, "{:?}", report.skipped);
        assert!(report.skipped.is_empty());

        let list = chat
            .list_conversations(bearer(&ta, pb::ListConversationsRequest::default()))
            .await
            .expect("list")
            .into_inner()
            .conversations;
        assert_eq!(list.len(), 3);
        let photo = list
            .iter()
            .find(|c| c.title == "Photosynthesis basics")
            .expect("imported title");
        assert_eq!(photo.model, "gpt-4o");
        let path = chat
            .get_conversation(bearer(
                &ta,
                pb::GetConversationRequest {
                    id: photo.id.clone(),
                },
            ))
            .await
            .expect("get")
            .into_inner()
            .messages;
        // The hidden system node is dropped; the current node's path is active; the two
        // answers to the first question are siblings.
        assert_eq!(
            path.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            vec![
                "How does photosynthesis work?",
                "Photosynthesis happens in chloroplasts: light reactions, then the Calvin cycle.",
                "And the Calvin cycle?",
            ]
        );
        assert_eq!((path[1].sibling_index, path[1].sibling_count), (2, 2));
        assert_eq!(
            path[0].created_at.as_ref().expect("time").seconds,
            1718000001
        );
        let edited = list
            .iter()
            .find(|c| c.title == "Edited question")
            .expect("second");
        let path = chat
            .get_conversation(bearer(
                &ta,
                pb::GetConversationRequest {
                    id: edited.id.clone(),
                },
            ))
            .await
            .expect("get")
            .into_inner()
            .messages;
        assert_eq!(
            path.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            vec!["Name two prime numbers.", "Two and \nthree."]
        );
        assert_eq!(
            (path[0].sibling_index, path[0].sibling_count),
            (2, 2),
            "the edit is a sibling branch"
        );
        assert!(
            list.iter().any(|c| c.title == "New chat"),
            "a null title becomes the default"
        );

        // A code block's run travels with its message.
        let answer = path[1].id.clone();
        chat.record_code_run(bearer(
            &ta,
            pb::RecordCodeRunRequest {
                message_id: answer.clone(),
                run: Some(pb::CodeRun {
                    block: 0,
                    language: "python".into(),
                    code: "print('6CO2')".into(),
                    stdout: b"6CO2\n```\n".to_vec(),
                    exit: Some(sbx::RunExit {
                        status: sbx::RunStatus::Exited as i32,
                        fuel_used: 42,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("record a run");

        // Export (every branch) → import into another account → export again: equal but ids.
        let first = export(&mut ar, &ta, pb::ExportFormat::Json).await;
        let id = upload(&mut ar, &tb, &first).await;
        let report = import(&mut ar, &tb, &id, pb::ImportSource::LlmeshJson)
            .await
            .expect("re-import");
        assert_eq!(report.imported, 3);
        let second = export(&mut ar, &tb, pb::ExportFormat::Json).await;
        assert_eq!(normalized(&first), normalized(&second));
        let doc: serde_json::Value = serde_json::from_slice(&second).expect("json");
        let runs: Vec<&serde_json::Value> = doc["conversations"]
            .as_array()
            .expect("conversations")
            .iter()
            .flat_map(|c| c["messages"].as_array().expect("messages"))
            .flat_map(|m| m["code_runs"].as_array().into_iter().flatten())
            .collect();
        assert_eq!(runs.len(), 1, "the run was imported with its message");
        assert_eq!(runs[0]["stdout"], "6CO2\n```\n");
        assert_eq!(runs[0]["status"], "exited");
        let md = String::from_utf8(export(&mut ar, &ta, pb::ExportFormat::Markdown).await)
            .expect("utf-8");
        assert!(
            md.contains("# Photosynthesis basics")
                && md.contains("**User:**\n\nAnd the Calvin cycle?")
                && md.contains("*Ran code block 1 (python): exited*\n\n````text\n6CO2\n```\n````"),
            "{md}"
        );

        // Search: ranked, paged, highlighted, own messages only.
        let search = |token: &str, query: &str, page_size: u32, page_token: String| {
            bearer(
                token,
                pb::SearchRequest {
                    query: query.into(),
                    page: Some(PageRequest {
                        page_size,
                        page_token,
                    }),
                },
            )
        };
        let hits = ar
            .search(search(&ta, "photosynthesis", 10, String::new()))
            .await
            .expect("search")
            .into_inner()
            .hits;
        assert_eq!(hits.len(), 3, "title + two messages: {hits:?}");
        for h in &hits {
            assert!(!h.highlights.is_empty());
            let hl = &h.highlights[0];
            assert_eq!(
                h.snippet[hl.start as usize..hl.end as usize].to_lowercase(),
                "photosynthesis"
            );
        }
        assert!(hits.windows(2).all(|w| w[0].rank >= w[1].rank), "ranked");
        let page1 = ar
            .search(search(&ta, "photosynthesis", 2, String::new()))
            .await
            .expect("page 1")
            .into_inner();
        let token = page1.page.expect("page").next_page_token;
        assert!(!token.is_empty());
        let page2 = ar
            .search(search(&ta, "photosynthesis", 2, token))
            .await
            .expect("page 2")
            .into_inner();
        assert_eq!(page2.hits.len(), 1);
        assert!(page2.page.expect("page").next_page_token.is_empty());
        // B imported the same text: B's search sees B's copies only.
        let b_hits = ar
            .search(search(&tb, "calvin", 10, String::new()))
            .await
            .expect("search")
            .into_inner()
            .hits;
        let b_ids: Vec<String> = chat
            .list_conversations(bearer(&tb, pb::ListConversationsRequest::default()))
            .await
            .expect("list")
            .into_inner()
            .conversations
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert!(!b_hits.is_empty() && b_hits.iter().all(|h| b_ids.contains(&h.conversation_id)));
        // Query syntax is never interpreted: quotes and operators are just punctuation, and
        // every remaining word must match.
        let odd = ar
            .search(search(&ta, "calvin) \"(* NEAR", 10, String::new()))
            .await
            .expect("odd query")
            .into_inner()
            .hits;
        assert!(odd.is_empty(), "NEAR is a word to find, not an operator");
        let odd = ar
            .search(search(&ta, "\"calvin) (*", 10, String::new()))
            .await
            .expect("odd query")
            .into_inner()
            .hits;
        assert_eq!(odd.len(), 2);
        let status = ar
            .search(search(&ta, "   ", 10, String::new()))
            .await
            .expect_err("empty");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
);

every_shape!(malformed_imports_and_uploads, |backend| async move {
    let Some(s) = TestServer::start(backend).await else {
        return;
    };
    let (_, tokens) = s.signup("a@example.com").await;
    let (_, other) = s.signup("b@example.com").await;
    let t = tokens.access_token;
    let mut ar = archive(&s);

    // Whole-file problems: INVALID_ARGUMENT naming where.
    for (bytes, source, needle) in [
        (
            br#"[{"title":"x","mapping":{"#.to_vec(),
            pb::ImportSource::Chatgpt,
            "line 1",
        ),
        (
            br#"[{"title":5,"mapping":{}}]"#.to_vec(),
            pb::ImportSource::Chatgpt,
            "$[0].title",
        ),
        (
            br#"{"format":"llmesh.conversations.v1","conversations":[{"id":"x","title":7}]}"#
                .to_vec(),
            pb::ImportSource::LlmeshJson,
            "conversations[0].title",
        ),
    ] {
        let id = upload(&mut ar, &t, &bytes).await;
        let status = import(&mut ar, &t, &id, source)
            .await
            .expect_err("malformed");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(needle),
            "{} lacks {needle}",
            status.message()
        );
    }

    // Broken trees and oversized messages: that conversation is skipped, the rest imported.
    let big = "x".repeat(10 * 1024 * 1024);
    let doc = serde_json::json!([
        {"title": "ok", "mapping": {"a": {"message": {"author": {"role": "user"}, "content": {"parts": ["fine"]}}, "parent": null}}},
        {"title": "cycle", "mapping": {
            "a": {"message": {"author": {"role": "user"}, "content": {"parts": ["1"]}}, "parent": "b"},
            "b": {"message": {"author": {"role": "assistant"}, "content": {"parts": ["2"]}}, "parent": "a"}}},
        {"title": "orphan", "mapping": {"a": {"message": {"author": {"role": "user"}, "content": {"parts": ["1"]}}, "parent": "gone"}}},
        {"title": "huge", "mapping": {"a": {"message": {"author": {"role": "user"}, "content": {"parts": [big]}}, "parent": null}}}
    ]);
    let id = upload(&mut ar, &t, &serde_json::to_vec(&doc).expect("json")).await;
    let report = import(&mut ar, &t, &id, pb::ImportSource::Chatgpt)
        .await
        .expect("import");
    assert_eq!(report.imported, 1);
    let reasons: Vec<(String, String)> = report
        .skipped
        .into_iter()
        .map(|s| (s.title, s.reason))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|(t, r)| t == "cycle" && r.contains("cycle")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(t, r)| t == "orphan" && r.contains("missing parent")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(t, r)| t == "huge" && r.contains("longer than")),
        "{reasons:?}"
    );

    // Upload rules.
    let bytes = b"0123456789".to_vec();
    let begun = ar
        .begin_upload(bearer(
            &t,
            pb::BeginUploadRequest {
                file_name: "f".into(),
                size_bytes: 10,
                sha256: hex::encode(Sha256::digest(&bytes)),
            },
        ))
        .await
        .expect("begin")
        .into_inner();
    let chunk = |offset: u64, data: &[u8]| pb::AppendUploadChunkRequest {
        upload_id: begun.upload_id.clone(),
        offset,
        data: data.to_vec(),
    };
    assert_eq!(
        ar.append_upload_chunk(bearer(&t, chunk(3, b"x")))
            .await
            .expect_err("gap")
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        ar.append_upload_chunk(bearer(&t, chunk(0, b"0123456789AB")))
            .await
            .expect_err("too long")
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        ar.append_upload_chunk(bearer(&other.access_token, chunk(0, b"01")))
            .await
            .expect_err("not theirs")
            .code(),
        Code::NotFound
    );
    ar.append_upload_chunk(bearer(&t, chunk(0, b"01234")))
        .await
        .expect("first half");
    assert_eq!(
        ar.finish_upload(bearer(
            &t,
            pb::FinishUploadRequest {
                upload_id: begun.upload_id.clone()
            }
        ))
        .await
        .expect_err("short")
        .code(),
        Code::FailedPrecondition
    );
    ar.append_upload_chunk(bearer(&t, chunk(5, b"5678X")))
        .await
        .expect("second half, corrupted");
    assert_eq!(
        ar.finish_upload(bearer(
            &t,
            pb::FinishUploadRequest {
                upload_id: begun.upload_id.clone()
            }
        ))
        .await
        .expect_err("sha")
        .code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        import(&mut ar, &t, &begun.upload_id, pb::ImportSource::Chatgpt)
            .await
            .expect_err("unfinished")
            .code(),
        Code::FailedPrecondition
    );
});

/// A ChatGPT export of one conversation whose messages form a chain, oldest first.
fn chatgpt_chain(title: &str, texts: &[String]) -> Vec<u8> {
    let conversation = llmesh_tests::chatgpt_chain("", title, texts, 1_718_000_000.0, 1.0, "");
    serde_json::to_vec(&[conversation]).expect("json")
}

both_backends!(
    common_words_rank_within_the_newest_matches,
    |backend| async move {
        let Some(s) = TestServer::start_with(backend, |c| c.chat.search_candidates = 10).await
        else {
            return;
        };
        let (_, tokens) = s.signup("a@example.com").await;
        let t = tokens.access_token;
        let mut ar = archive(&s);
        // Message 0 is the most relevant for "lantern" and the oldest; "quartz" is rare.
        let texts: Vec<String> = (0..30)
            .map(|i| match i {
                0 => "lantern lantern lantern lantern quartz".to_string(),
                5 | 20 => format!("lantern filler{i} quartz"),
                _ => format!("lantern filler{i}"),
            })
            .collect();
        let id = upload(&mut ar, &t, &chatgpt_chain("Bounded search", &texts)).await;
        let report = import(&mut ar, &t, &id, pb::ImportSource::Chatgpt)
            .await
            .expect("import");
        assert!(
            report.imported == 1 && report.skipped.is_empty(),
            "{report:?}"
        );

        let mut seen = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = ar
                .search(bearer(
                    &t,
                    pb::SearchRequest {
                        query: "lantern".into(),
                        page: Some(PageRequest {
                            page_size: 4,
                            page_token: page_token.clone(),
                        }),
                    },
                ))
                .await
                .expect("search")
                .into_inner();
            seen.extend(page.hits.into_iter().map(|h| h.snippet));
            page_token = page.page.expect("page").next_page_token;
            if page_token.is_empty() {
                break;
            }
        }
        // Ten candidates, the ten newest messages, each once across the pages.
        assert_eq!(seen.len(), 10, "{seen:?}");
        let mut numbers: Vec<u32> = seen
            .iter()
            .map(|s| {
                s.split("filler")
                    .nth(1)
                    .and_then(|n| n.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("an older message came back: {s}"))
            })
            .collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (20..30).collect::<Vec<u32>>());

        // A rare word has fewer matches than candidates: every one is ranked, old ones too.
        let rare = ar
            .search(bearer(
                &t,
                pb::SearchRequest {
                    query: "quartz".into(),
                    page: Some(PageRequest {
                        page_size: 10,
                        page_token: String::new(),
                    }),
                },
            ))
            .await
            .expect("search")
            .into_inner()
            .hits;
        assert_eq!(rare.len(), 3, "{rare:?}");
        assert!(
            rare.iter()
                .any(|h| h.snippet.starts_with("lantern lantern"))
        );
        assert!(rare.windows(2).all(|w| w[0].rank >= w[1].rank), "ranked");
    }
);

both_backends!(
    batch_actions_are_all_or_nothing_and_exports_select,
    |backend| async move {
        let Some(s) = TestServer::start_with(backend, |c| c.chat.max_batch = 4).await else {
            return;
        };
        let (_, a_tokens) = s.signup("a@example.com").await;
        let (_, b_tokens) = s.signup("b@example.com").await;
        let (ta, tb) = (a_tokens.access_token, b_tokens.access_token);
        let mut chat = ChatServiceClient::new(s.channel.clone());
        let mut ar = archive(&s);
        let create = |token: String, title: &'static str| {
            let mut chat = chat.clone();
            async move {
                chat.create_conversation(bearer(
                    &token,
                    pb::CreateConversationRequest {
                        title: title.into(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("create")
                .into_inner()
                .conversation
                .expect("conversation")
                .id
            }
        };
        let a1 = create(ta.clone(), "one").await;
        let a2 = create(ta.clone(), "two").await;
        let a3 = create(ta.clone(), "three").await;
        let b1 = create(tb.clone(), "theirs").await;
        // A spreadsheet-hostile conversation, imported.
        let texts: Vec<String> = [
            "=HYPERLINK(\"http://example.com\",\"x\")",
            "a reply, with \"quotes\"\nand a second line",
            "@SUM(1+1) quasar",
        ]
        .map(String::from)
        .to_vec();
        let up = upload(&mut ar, &ta, &chatgpt_chain("+cmd title", &texts)).await;
        import(&mut ar, &ta, &up, pb::ImportSource::Chatgpt)
            .await
            .expect("import");
        let listed = chat
            .list_conversations(bearer(&ta, pb::ListConversationsRequest::default()))
            .await
            .expect("list")
            .into_inner()
            .conversations;
        let hostile = listed
            .iter()
            .find(|c| c.title == "+cmd title")
            .expect("imported")
            .id
            .clone();
        let folder = chat
            .create_folder(bearer(
                &ta,
                pb::CreateFolderRequest {
                    name: "Work".into(),
                    parent_id: String::new(),
                },
            ))
            .await
            .expect("folder")
            .into_inner()
            .folder
            .expect("folder")
            .id;

        use pb::batch_update_conversations_request::Action;
        let batch = |token: &str, ids: &[&String], action: Option<Action>| {
            bearer(
                token,
                pb::BatchUpdateConversationsRequest {
                    conversation_ids: ids.iter().map(|i| (*i).clone()).collect(),
                    action,
                },
            )
        };
        let reader = chat.clone();
        let get = |id: &String| {
            let mut chat = reader.clone();
            let req = bearer(&ta, pb::GetConversationRequest { id: id.clone() });
            async move {
                chat.get_conversation(req)
                    .await
                    .map(|r| r.into_inner().conversation.expect("conversation"))
            }
        };
        let done = chat
            .batch_update_conversations(batch(&ta, &[&a1, &a2, &a1], Some(Action::Archived(true))))
            .await
            .expect("archive")
            .into_inner();
        assert_eq!(done.conversations, 2, "a repeated id counts once");
        assert!(get(&a1).await.expect("a1").archived && get(&a2).await.expect("a2").archived);
        assert!(!get(&a3).await.expect("a3").archived);

        // Someone else's id anywhere: NOT_FOUND, and nothing changed.
        for ids in [vec![&a3, &b1], vec![&b1]] {
            let e = chat
                .batch_update_conversations(batch(&ta, &ids, Some(Action::Pinned(true))))
                .await
                .expect_err("not theirs");
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
            assert!(!e.message().contains(&b1), "{e:?}");
        }
        assert!(!get(&a3).await.expect("a3").pinned);
        let e = chat
            .batch_update_conversations(batch(&ta, &[&a1], Some(Action::Delete(true))))
            .await;
        assert!(e.is_ok());
        assert_eq!(get(&a1).await.expect_err("deleted").code(), Code::NotFound);

        // Folders and tags.
        chat.batch_update_conversations(batch(
            &ta,
            &[&a2, &a3],
            Some(Action::FolderId(folder.clone())),
        ))
        .await
        .expect("move");
        assert_eq!(get(&a3).await.expect("a3").folder_id, folder);
        let e = chat
            .batch_update_conversations(batch(&tb, &[&b1], Some(Action::FolderId(folder.clone()))))
            .await
            .expect_err("not their folder");
        assert_eq!(e.code(), Code::NotFound);
        chat.batch_update_conversations(batch(
            &ta,
            &[&a2, &a3],
            Some(Action::FolderId(String::new())),
        ))
        .await
        .expect("out of the folder");
        assert_eq!(get(&a2).await.expect("a2").folder_id, "");
        for _ in 0..2 {
            chat.batch_update_conversations(batch(
                &ta,
                &[&a2, &a3],
                Some(Action::AddTag("urgent".into())),
            ))
            .await
            .expect("tag");
        }
        assert_eq!(get(&a3).await.expect("a3").tags, ["urgent"]);
        chat.batch_update_conversations(batch(
            &ta,
            &[&a3],
            Some(Action::RemoveTag("urgent".into())),
        ))
        .await
        .expect("untag");
        assert!(get(&a3).await.expect("a3").tags.is_empty());
        assert_eq!(get(&a2).await.expect("a2").tags, ["urgent"]);

        // Refusals name what is wrong.
        let (x, y, z, w, v) = (
            "0190b000-0000-7000-8000-000000000001".to_string(),
            "0190b000-0000-7000-8000-000000000002".to_string(),
            "0190b000-0000-7000-8000-000000000003".to_string(),
            "0190b000-0000-7000-8000-000000000004".to_string(),
            "0190b000-0000-7000-8000-000000000005".to_string(),
        );
        for (ids, action, needle) in [
            (
                vec![&x, &y, &z, &w, &v],
                Some(Action::Pinned(true)),
                "chat.max_batch",
            ),
            (vec![], Some(Action::Pinned(true)), "conversation_ids"),
            (vec![&a2], None, "action"),
            (vec![&a2], Some(Action::Delete(false)), "delete"),
            (vec![&a2], Some(Action::AddTag(" ".into())), "tag"),
        ] {
            let e = chat
                .batch_update_conversations(batch(&ta, &ids, action))
                .await
                .expect_err("refused");
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(needle), "{needle}: {e:?}");
        }
        let bad = "not an id".to_string();
        let e = chat
            .batch_update_conversations(batch(&ta, &[&a2, &bad], Some(Action::Pinned(true))))
            .await
            .expect_err("bad id");
        assert!(e.message().contains("conversation_ids[1]"), "{e:?}");

        // CSV of a selection, read back with a CSV parser: no cell can run as a formula.
        let bytes = export_some(
            &mut ar,
            &ta,
            pb::ExportFormat::Csv,
            vec![hostile.clone(), a2.clone()],
        )
        .await
        .expect("csv");
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let header: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(header[0], "conversation_id");
        assert_eq!(header.last().map(String::as_str), Some("content"));
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
        assert_eq!(
            rows.len(),
            3,
            "three messages; the empty conversation has none"
        );
        for (row, text) in rows.iter().zip(&texts) {
            assert_eq!(&row[0], hostile.as_str());
            assert_eq!(&row[1], "'+cmd title");
            for cell in row.iter() {
                assert!(
                    !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                    "{cell:?}"
                );
            }
            assert_eq!(row[10].trim_start_matches('\''), text.as_str());
        }
        assert_eq!(&rows[0][3], "user");
        assert_eq!(&rows[1][3], "assistant");
        let text = String::from_utf8(
            export_some(&mut ar, &ta, pb::ExportFormat::Text, vec![hostile.clone()])
                .await
                .expect("text"),
        )
        .expect("utf-8");
        assert!(
            text.starts_with("+cmd title\n==========\n\nUser, "),
            "{text}"
        );
        assert!(text.contains("and a second line"), "{text}");
        let e = export_some(
            &mut ar,
            &ta,
            pb::ExportFormat::Csv,
            vec![a2.clone(), b1.clone()],
        )
        .await
        .expect_err("not theirs");
        assert_eq!(e.code(), Code::NotFound);

        // Deleting takes the conversation out of search too.
        let search = |query: &str| {
            let mut ar = ar.clone();
            let req = bearer(
                &ta,
                pb::SearchRequest {
                    query: query.into(),
                    page: None,
                },
            );
            async move { ar.search(req).await.expect("search").into_inner().hits }
        };
        assert_eq!(search("quasar").await.len(), 1);
        chat.batch_update_conversations(batch(&ta, &[&hostile, &a3], Some(Action::Delete(true))))
            .await
            .expect("delete");
        assert!(
            search("quasar").await.is_empty(),
            "no hit from a deleted conversation"
        );
        assert!(search("cmd").await.is_empty(), "nor its title");
    }
);

fn import_fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/fixtures/imports/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// Search statements are planned for their own words on Postgres: a cached statement
/// would otherwise settle on one generic plan that fetches every match of a common word.
#[tokio::test]
async fn text_search_is_planned_for_its_words_on_postgres() {
    let Some(db) = llmesh_tests::TestDb::create(llmesh_tests::Backend::Postgres).await else {
        return;
    };
    let conn = sea_orm::Database::connect(db.url.as_str())
        .await
        .expect("connect");
    let sql = "SELECT current_setting('plan_cache_mode') AS m";
    let mode =
        |rows: Vec<sea_orm::QueryResult>| -> String { rows[0].try_get("", "m").expect("setting") };
    let inside = llmesh_kit::db::all_custom_plan(&conn, sql, vec![])
        .await
        .expect("query");
    assert_eq!(mode(inside), "force_custom_plan");
    for _ in 0..4 {
        let outside = llmesh_kit::db::all(&conn, sql, vec![])
            .await
            .expect("query");
        assert_eq!(
            mode(outside),
            "auto",
            "the setting stays with its statement"
        );
    }
}

both_backends!(
    other_apps_exports_are_detected_imported_and_round_trip,
    |backend| async move {
        let Some(s) = TestServer::start(backend).await else {
            return;
        };
        let (_, a_tokens) = s.signup("a@example.com").await;
        let (_, b_tokens) = s.signup("b@example.com").await;
        let (ta, tb) = (a_tokens.access_token, b_tokens.access_token);
        let mut ar = archive(&s);
        let mut chat = ChatServiceClient::new(s.channel.clone());
        use pb::ImportSource as S;
        // (file, the format it must be seen as, conversations, how many have notes)
        let files = [
            ("openwebui.json", S::OpenWebui, 2, 1),
            ("librechat.json", S::Librechat, 1, 1),
            ("typingmind.json", S::Typingmind, 1, 1),
            ("claude.json", S::Claude, 2, 1),
            ("generic.json", S::Generic, 2, 1),
            ("generic.jsonl", S::Generic, 2, 0),
        ];
        for (file, source, conversations, noted) in files {
            let up = upload(&mut ar, &ta, &import_fixture(file)).await;
            let report = import(&mut ar, &ta, &up, S::Unspecified)
                .await
                .unwrap_or_else(|e| panic!("{file}: {e:?}"));
            assert_eq!(report.source, source as i32, "{file} detected");
            assert_eq!(report.imported, conversations, "{file}: {report:?}");
            assert!(report.skipped.is_empty(), "{file}: {report:?}");
            assert_eq!(report.left_out.len(), noted, "{file}: {report:?}");
            for l in &report.left_out {
                assert!(l.reason.starts_with("not imported: "), "{l:?}");
            }
        }

        // The Open WebUI tree: the active leaf's path runs through the second answer.
        let listed = chat
            .list_conversations(bearer(&ta, pb::ListConversationsRequest::default()))
            .await
            .expect("list")
            .into_inner()
            .conversations;
        let sourdough = listed
            .iter()
            .find(|c| c.title == "Sourdough starter")
            .expect("imported");
        assert!(sourdough.pinned);
        assert_eq!(sourdough.tags, ["baking", "fermentation"]);
        let path: Vec<String> = chat
            .get_conversation(bearer(
                &ta,
                pb::GetConversationRequest {
                    id: sourdough.id.clone(),
                },
            ))
            .await
            .expect("get")
            .into_inner()
            .messages
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(path.len(), 4, "{path:?}");
        assert!(
            path[1].starts_with("Feed it every 12 to 24 hours"),
            "{path:?}"
        );
        // Folders by name: made once, then reused.
        let folders = chat
            .list_folders(bearer(&ta, pb::ListFoldersRequest {}))
            .await
            .expect("folders")
            .into_inner()
            .folders;
        let mut names: Vec<&str> = folders.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["Homework", "Outdoors"]);
        let hike = listed
            .iter()
            .find(|c| c.title == "Packing for a hike")
            .expect("imported");
        assert_eq!(
            folders
                .iter()
                .find(|f| f.id == hike.folder_id)
                .map(|f| f.name.as_str()),
            Some("Outdoors")
        );

        // Round trip: A's export imported by B exports the same.
        let first = export(&mut ar, &ta, pb::ExportFormat::Json).await;
        let up = upload(&mut ar, &tb, &first).await;
        let report = import(&mut ar, &tb, &up, S::Unspecified)
            .await
            .expect("re-import");
        assert_eq!(report.source, S::LlmeshJson as i32);
        assert_eq!(report.imported, 10);
        let second = export(&mut ar, &tb, pb::ExportFormat::Json).await;
        assert_eq!(normalized(&first), normalized(&second));

        // A loop of parents skips that conversation with its reason; a wrong type anywhere
        // refuses the file, naming the field, and writes nothing.
        let looped = br#"{"conversationId":"x","title":"Loop","messages":[
            {"messageId":"a","parentMessageId":"b","isCreatedByUser":true,"text":"1"},
            {"messageId":"b","parentMessageId":"a","isCreatedByUser":false,"text":"2"}]}"#;
        let up = upload(&mut ar, &ta, looped).await;
        let report = import(&mut ar, &ta, &up, S::Librechat)
            .await
            .expect("import");
        assert_eq!(report.imported, 0);
        assert!(report.skipped[0].reason.contains("cycle"), "{report:?}");
        let before = export(&mut ar, &ta, pb::ExportFormat::Json).await;
        let bad = br#"[{"uuid":"x","name":"Fine","chat_messages":[]},{"uuid":"y","chat_messages":[{"uuid":"m","sender":7}]}]"#;
        let up = upload(&mut ar, &ta, bad).await;
        let e = import(&mut ar, &ta, &up, S::Unspecified)
            .await
            .expect_err("wrong type");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("$[1].chat_messages[0].sender"),
            "{e:?}"
        );
        assert_eq!(export(&mut ar, &ta, pb::ExportFormat::Json).await, before);
        let up = upload(&mut ar, &ta, b"\x00\x01 not json at all").await;
        let e = import(&mut ar, &ta, &up, S::Unspecified)
            .await
            .expect_err("not json");
        assert_eq!(e.code(), Code::InvalidArgument);
    }
);

//! The chat service over real gRPC with the real model, on SQLite and Postgres: message
//! trees and branches, Stop, billing of replies, folders, listing, assistants, templates
//! and ownership (another user's ids are NOT_FOUND everywhere).

use std::collections::HashMap;
use std::time::Duration;

use llmesh_proto::billing::v1 as bpb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_proto::chat::v1 as pb;
use llmesh_proto::chat::v1::chat_service_client::ChatServiceClient;
use llmesh_proto::common::v1::PageRequest;
use llmesh_proto::llm::v1::SamplingParams;
use llmesh_proto::sandbox::v1 as sbx;
use llmesh_tests::{Backend, TestServer, bearer, every_shape};
use sea_orm::ConnectionTrait;
use tonic::Code;
use tonic::transport::Channel;

const CHAT_MODEL: &str = "smollm2-135m-instruct";

struct Setup {
    s: TestServer,
    admin: String,
    user: String,
    user_id: String,
}

async fn setup(backend: Backend) -> Option<Setup> {
    let models = llmesh_tests::models::models_dir();
    let s = TestServer::start_with(backend, |c| {
        c.llm.models_dir = models.display().to_string();
    })
    .await?;
    let (_, admin) = s.signup("admin@example.com").await;
    let (user, tokens) = s.signup("user@example.com").await;
    Some(Setup {
        admin: admin.access_token,
        user: tokens.access_token,
        user_id: user.id,
        s,
    })
}

fn chat(s: &TestServer) -> ChatServiceClient<Channel> {
    ChatServiceClient::new(s.channel.clone())
}

fn greedy(max_tokens: u32) -> Option<SamplingParams> {
    Some(SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    })
}

/// Starts a reply that would run for 2000 tokens, for the tests that stop one.
async fn long_reply(
    c: &mut ChatServiceClient<Channel>,
    user: &str,
    conversation_id: &str,
) -> tonic::Streaming<pb::SendMessageResponse> {
    c.send_message(bearer(
        user,
        pb::SendMessageRequest {
            conversation_id: conversation_id.into(),
            content: "Count from 1 to 1000.".into(),
            sampling: greedy(2000),
            ..Default::default()
        },
    ))
    .await
    .expect("send")
    .into_inner()
}

async fn new_conversation(c: &mut ChatServiceClient<Channel>, token: &str) -> pb::Conversation {
    c.create_conversation(bearer(
        token,
        pb::CreateConversationRequest {
            model: CHAT_MODEL.into(),
            sampling: greedy(8),
            ..Default::default()
        },
    ))
    .await
    .expect("create conversation")
    .into_inner()
    .conversation
    .expect("conversation")
}

/// Reads a reply stream to the end: (user message, text, assistant message).
async fn read_reply<T>(
    mut stream: tonic::Streaming<T>,
    event: impl Fn(T) -> Option<pb::ReplyEvent>,
) -> (Option<pb::Message>, String, pb::Message) {
    let mut user = None;
    let mut text = String::new();
    while let Some(msg) = stream.message().await.expect("stream") {
        match event(msg).and_then(|e| e.event).expect("event") {
            pb::reply_event::Event::UserMessage(m) => user = Some(m),
            pb::reply_event::Event::Delta(d) => text.push_str(&d),
            pb::reply_event::Event::AssistantMessage(m) => return (user, text, m),
            pb::reply_event::Event::Citations(c) => panic!("no knowledge here, yet {c:?}"),
        }
    }
    panic!("the reply ended without the stored assistant message");
}

async fn send(
    c: &mut ChatServiceClient<Channel>,
    token: &str,
    conversation: &str,
    content: &str,
) -> (pb::Message, String, pb::Message) {
    let stream = c
        .send_message(bearer(
            token,
            pb::SendMessageRequest {
                conversation_id: conversation.into(),
                content: content.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("send")
        .into_inner();
    let (user, text, assistant) = read_reply(stream, |m| m.event).await;
    (user.expect("user message"), text, assistant)
}

async fn path(
    c: &mut ChatServiceClient<Channel>,
    token: &str,
    id: &str,
) -> (pb::Conversation, Vec<pb::Message>) {
    let r = c
        .get_conversation(bearer(token, pb::GetConversationRequest { id: id.into() }))
        .await
        .expect("get")
        .into_inner();
    (r.conversation.expect("conversation"), r.messages)
}

every_shape!(messages_form_a_tree_with_branches, |backend| async move {
    let Some(Setup { s, user, .. }) = setup(backend).await else {
        return;
    };
    let mut c = chat(&s);
    let conv = new_conversation(&mut c, &user).await;
    assert_eq!(conv.title, "New chat");

    let (u1, text, a1) = send(&mut c, &user, &conv.id, "Count to 10.").await;
    assert_eq!(u1.role, llmesh_proto::llm::v1::ChatRole::User as i32);
    assert_eq!(a1.content, text, "the stored reply is what streamed");
    assert_eq!(a1.parent_id, u1.id);
    assert_eq!(a1.state, pb::MessageState::Complete as i32);
    let produced = a1.usage.expect("usage").completion_tokens;
    assert!(
        (1..=8).contains(&produced),
        "max_tokens 8 caps the reply ({produced})"
    );
    let (_, messages) = path(&mut c, &user, &conv.id).await;
    assert_eq!(
        messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![u1.id.clone(), a1.id.clone()]
    );

    // Regenerate: a second reply under the same prompt, now active.
    let stream = c
        .regenerate(bearer(
            &user,
            pb::RegenerateRequest {
                message_id: a1.id.clone(),
                sampling: Some(SamplingParams {
                    temperature: Some(1.0),
                    seed: Some(3),
                    max_tokens: Some(8),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("regenerate")
        .into_inner();
    let (none, _, a2) = read_reply(stream, |m| m.event).await;
    assert!(none.is_none(), "regenerating adds no user message");
    assert_eq!(
        (a2.parent_id.as_str(), a2.sibling_index, a2.sibling_count),
        (u1.id.as_str(), 2, 2)
    );
    let (_, messages) = path(&mut c, &user, &conv.id).await;
    assert_eq!(messages[1].id, a2.id);
    assert_eq!(
        (messages[1].sibling_index, messages[1].sibling_count),
        (2, 2)
    );

    // Switch back to the first reply.
    let switched = c
        .switch_branch(bearer(
            &user,
            pb::SwitchBranchRequest {
                message_id: a1.id.clone(),
            },
        ))
        .await
        .expect("switch")
        .into_inner();
    assert_eq!(switched.messages[1].id, a1.id);
    assert_eq!(switched.messages[1].sibling_index, 1);
    assert_eq!(
        switched.messages[1].sibling_ids,
        vec![a1.id.clone(), a2.id.clone()],
        "sibling ids in creation order, for branch arrows"
    );

    // Edit the user message: a sibling prompt with its own reply.
    let stream = c
        .edit_message(bearer(
            &user,
            pb::EditMessageRequest {
                message_id: u1.id.clone(),
                content: "Count to 5.".into(),
            },
        ))
        .await
        .expect("edit")
        .into_inner();
    let (u2, _, a3) = read_reply(stream, |m| m.event).await;
    let u2 = u2.expect("edited user message");
    assert_eq!((u2.sibling_index, u2.sibling_count), (2, 2));
    assert_eq!(a3.parent_id, u2.id);
    let (conv_now, messages) = path(&mut c, &user, &conv.id).await;
    assert_eq!(
        messages.iter().map(|m| m.content.as_str()).next(),
        Some("Count to 5.")
    );
    assert_eq!(conv_now.active_leaf_id, a3.id);
    // Switching to the first prompt lands on its newest leaf.
    let switched = c
        .switch_branch(bearer(
            &user,
            pb::SwitchBranchRequest {
                message_id: u1.id.clone(),
            },
        ))
        .await
        .expect("switch")
        .into_inner();
    assert_eq!(
        switched.messages.last().map(|m| m.id.clone()),
        Some(a2.id.clone())
    );

    // Another user cannot touch these messages.
    let (_, stranger) = s.signup("stranger@example.com").await;
    let stranger = stranger.access_token;
    for status in [
        c.regenerate(bearer(
            &stranger,
            pb::RegenerateRequest {
                message_id: a1.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
        c.edit_message(bearer(
            &stranger,
            pb::EditMessageRequest {
                message_id: u1.id.clone(),
                content: "x".into(),
            },
        ))
        .await
        .map(|_| ()),
        c.switch_branch(bearer(
            &stranger,
            pb::SwitchBranchRequest {
                message_id: a1.id.clone(),
            },
        ))
        .await
        .map(|_| ()),
        c.send_message(bearer(
            &stranger,
            pb::SendMessageRequest {
                conversation_id: conv.id.clone(),
                content: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
    ] {
        assert_eq!(status.err().map(|s| s.code()), Some(Code::NotFound));
    }
    // A parent from another conversation is not found either.
    let elsewhere = new_conversation(&mut c, &user).await;
    let status = c
        .send_message(bearer(
            &user,
            pb::SendMessageRequest {
                conversation_id: elsewhere.id,
                content: "x".into(),
                parent_id: a1.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("foreign parent");
    assert_eq!(status.code(), Code::NotFound);

    // Wrong kinds of message are refused.
    let status = c
        .regenerate(bearer(
            &user,
            pb::RegenerateRequest {
                message_id: u1.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("user message");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = c
        .edit_message(bearer(
            &user,
            pb::EditMessageRequest {
                message_id: a1.id.clone(),
                content: "x".into(),
            },
        ))
        .await
        .expect_err("assistant message");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = c
        .send_message(bearer(
            &user,
            pb::SendMessageRequest {
                conversation_id: conv.id.clone(),
                content: "   ".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument);

    // The first exchange earned a title in the background.
    let mut title = String::new();
    for _ in 0..300 {
        title = path(&mut c, &user, &conv.id).await.0.title;
        if title != "New chat" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(title, "New chat", "auto-title");
});

every_shape!(
    stop_keeps_the_partial_reply_and_bills_what_it_produced,
    |backend| async move {
        let Some(Setup {
            s,
            admin,
            user,
            user_id,
        }) = setup(backend).await
        else {
            return;
        };
        let mut billing = BillingServiceClient::new(s.channel.clone());
        billing
            .set_price(bearer(
                &admin,
                bpb::SetPriceRequest {
                    model: CHAT_MODEL.into(),
                    input_micros_per_mtok: 1_000_000,
                    output_micros_per_mtok: 2_000_000,
                    ..Default::default()
                },
            ))
            .await
            .expect("price");
        let mut c = chat(&s);
        let conv = new_conversation(&mut c, &user).await;
        // No balance: refused before anything is stored.
        let status = c
            .send_message(bearer(
                &user,
                pb::SendMessageRequest {
                    conversation_id: conv.id.clone(),
                    content: "hi".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("no money");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            path(&mut c, &user, &conv.id).await.1.is_empty(),
            "nothing half-written"
        );

        billing
            .adjust_balance(bearer(
                &admin,
                bpb::AdjustBalanceRequest {
                    user_id: user_id.clone(),
                    amount_micros: 100_000,
                    reason: "t".into(),
                    idempotency_key: "f".into(),
                },
            ))
            .await
            .expect("credit");
        let mut stream = long_reply(&mut c, &user, &conv.id).await;
        let mut deltas = 0;
        while deltas < 5 {
            if let Some(pb::reply_event::Event::Delta(_)) = stream
                .message()
                .await
                .expect("msg")
                .and_then(|m| m.event)
                .and_then(|e| e.event)
            {
                deltas += 1;
            }
        }
        drop(stream); // the UI's Stop
        let mut stopped = None;
        for _ in 0..500 {
            let (_, messages) = path(&mut c, &user, &conv.id).await;
            if let Some(m) = messages
                .iter()
                .find(|m| m.role == llmesh_proto::llm::v1::ChatRole::Assistant as i32)
            {
                stopped = Some(m.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reply = stopped.expect("the partial reply was kept");
        assert_eq!(reply.state, pb::MessageState::Stopped as i32);
        assert!(!reply.content.is_empty());
        let usage = reply.usage.expect("usage");
        assert!(
            usage.completion_tokens >= 5 && usage.completion_tokens < 2000,
            "{usage:?}"
        );
        let cost = reply.cost.expect("cost").micros;
        assert_eq!(
            cost,
            i64::from(usage.prompt_tokens) + 2 * i64::from(usage.completion_tokens)
        );
        // Wait for every hold (the background title generation too) to settle.
        let mut balance = None;
        for _ in 0..500 {
            let b = billing
                .get_balance(bearer(&user, bpb::GetBalanceRequest::default()))
                .await
                .expect("balance")
                .into_inner();
            if b.reserved.as_ref().expect("reserved").micros == 0 {
                balance = Some(b);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let balance = balance.expect("all holds settled");
        // The auto-title generation is billed too; the reply's own cost is part of the spend.
        assert!(100_000 - balance.balance.expect("balance").micros >= cost);
    }
);

every_shape!(
    folders_listing_assistants_templates_and_ownership,
    |backend| async move {
        let Some(Setup { s, admin, user, .. }) = setup(backend).await else {
            return;
        };
        let mut c = chat(&s);
        let (_, other) = s.signup("other@example.com").await;
        let other = other.access_token;

        // Folders nest; a folder cannot move under itself; deleting moves contents up.
        let folder = |name: &str, parent: &str| pb::CreateFolderRequest {
            name: name.into(),
            parent_id: parent.into(),
        };
        let work = c
            .create_folder(bearer(&user, folder("Work", "")))
            .await
            .expect("folder")
            .into_inner()
            .folder
            .expect("f");
        let sub = c
            .create_folder(bearer(&user, folder("Sub", &work.id)))
            .await
            .expect("folder")
            .into_inner()
            .folder
            .expect("f");
        let status = c
            .update_folder(bearer(
                &user,
                pb::UpdateFolderRequest {
                    id: work.id.clone(),
                    name: None,
                    parent_id: Some(sub.id.clone()),
                },
            ))
            .await
            .expect_err("cycle");
        assert_eq!(status.code(), Code::FailedPrecondition);

        // Conversations: metadata, filters and cursor pages, newest update first.
        let mut ids = Vec::new();
        for i in 0..5 {
            let conv = c
                .create_conversation(bearer(
                    &user,
                    pb::CreateConversationRequest {
                        title: format!("c{i}"),
                        model: CHAT_MODEL.into(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("create")
                .into_inner()
                .conversation
                .expect("c");
            s.pass_time(chrono::Duration::seconds(1)).await;
            ids.push(conv.id);
        }
        c.update_conversation(bearer(
            &user,
            pb::UpdateConversationRequest {
                id: ids[1].clone(),
                folder_id: Some(sub.id.clone()),
                tags: vec!["rust".into(), "ml".into()],
                replace_tags: true,
                pinned: Some(true),
                ..Default::default()
            },
        ))
        .await
        .expect("update");
        let list = |page_size: u32, token: String, f: pb::ListConversationsRequest| {
            pb::ListConversationsRequest {
                page: Some(PageRequest {
                    page_size,
                    page_token: token,
                }),
                ..f
            }
        };
        let first = c
            .list_conversations(bearer(&user, list(3, String::new(), Default::default())))
            .await
            .expect("page")
            .into_inner();
        assert_eq!(first.conversations.len(), 3);
        assert_eq!(
            first.conversations[0].id, ids[1],
            "the updated one comes first"
        );
        let next = first.page.expect("page").next_page_token;
        let second = c
            .list_conversations(bearer(&user, list(3, next, Default::default())))
            .await
            .expect("page")
            .into_inner();
        assert_eq!(second.conversations.len(), 2);
        assert!(second.page.expect("page").next_page_token.is_empty());
        for filter in [
            pb::ListConversationsRequest {
                tag: "rust".into(),
                ..Default::default()
            },
            pb::ListConversationsRequest {
                pinned: Some(true),
                ..Default::default()
            },
            pb::ListConversationsRequest {
                folder_id: sub.id.clone(),
                ..Default::default()
            },
        ] {
            let got = c
                .list_conversations(bearer(&user, filter))
                .await
                .expect("filter")
                .into_inner()
                .conversations;
            assert_eq!(
                got.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
                vec![ids[1].clone()]
            );
        }
        c.delete_folder(bearer(
            &user,
            pb::DeleteFolderRequest { id: sub.id.clone() },
        ))
        .await
        .expect("delete folder");
        let moved = path(&mut c, &user, &ids[1]).await.0;
        assert_eq!(moved.folder_id, work.id, "contents move up to the parent");

        // Assistants: own, or global by admins only.
        let assistant = |name: &str, global: bool| pb::CreateAssistantRequest {
            assistant: Some(pb::Assistant {
                name: name.into(),
                system_prompt: "Be terse.".into(),
                model: CHAT_MODEL.into(),
                global,
                ..Default::default()
            }),
        };
        let mine = c
            .create_assistant(bearer(&user, assistant("Mine", false)))
            .await
            .expect("own")
            .into_inner()
            .assistant
            .expect("a");
        assert_eq!(
            c.create_assistant(bearer(&user, assistant("Global", true)))
                .await
                .expect_err("not admin")
                .code(),
            Code::PermissionDenied
        );
        let global = c
            .create_assistant(bearer(&admin, assistant("Global", true)))
            .await
            .expect("admin")
            .into_inner()
            .assistant
            .expect("a");
        let seen = c
            .list_assistants(bearer(&user, pb::ListAssistantsRequest {}))
            .await
            .expect("list")
            .into_inner()
            .assistants;
        assert_eq!(seen.len(), 2);
        let status = c
            .update_assistant(bearer(
                &user,
                pb::UpdateAssistantRequest {
                    assistant: Some(pb::Assistant {
                        name: "x".into(),
                        ..global.clone()
                    }),
                },
            ))
            .await
            .expect_err("global");
        assert_eq!(status.code(), Code::PermissionDenied);
        let from_assistant = c
            .create_conversation(bearer(
                &user,
                pb::CreateConversationRequest {
                    assistant_id: mine.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("from assistant")
            .into_inner()
            .conversation
            .expect("c");
        assert_eq!(from_assistant.assistant_id, mine.id);
        assert_eq!(from_assistant.model, CHAT_MODEL);

        // Templates with variables.
        let t = c
            .create_template(bearer(
                &user,
                pb::CreateTemplateRequest {
                    template: Some(pb::Template {
                        name: "Translate".into(),
                        category: "language".into(),
                        body: "Translate {{text}} to {{ lang }}.".into(),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect("template")
            .into_inner()
            .template
            .expect("t");
        assert_eq!(t.variables, vec!["text".to_owned(), "lang".to_owned()]);
        let values = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let text = c
            .render_template(bearer(
                &user,
                pb::RenderTemplateRequest {
                    id: t.id.clone(),
                    values: values(&[("text", "hi"), ("lang", "French")]),
                },
            ))
            .await
            .expect("render")
            .into_inner()
            .text;
        assert_eq!(text, "Translate hi to French.");
        for (vals, needle) in [
            (values(&[("text", "hi")]), "missing value for lang"),
            (
                values(&[("text", "a"), ("lang", "b"), ("x", "c")]),
                "unknown variable x",
            ),
        ] {
            let status = c
                .render_template(bearer(
                    &user,
                    pb::RenderTemplateRequest {
                        id: t.id.clone(),
                        values: vals,
                    },
                ))
                .await
                .expect_err("bad values");
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains(needle), "{}", status.message());
        }
        let status = c
            .create_template(bearer(
                &user,
                pb::CreateTemplateRequest {
                    template: Some(pb::Template {
                        name: "bad".into(),
                        body: "{{ oops".into(),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect_err("malformed");
        assert_eq!(status.code(), Code::InvalidArgument);

        // Ownership: every RPC that takes an id says NOT_FOUND for another user's object.
        let conv = &ids[0];
        let nf = |r: Result<(), tonic::Status>, what: &str| {
            assert_eq!(r.err().map(|s| s.code()), Some(Code::NotFound), "{what}");
        };
        nf(
            c.get_conversation(bearer(
                &other,
                pb::GetConversationRequest { id: conv.clone() },
            ))
            .await
            .map(|_| ()),
            "GetConversation",
        );
        nf(
            c.update_conversation(bearer(
                &other,
                pb::UpdateConversationRequest {
                    id: conv.clone(),
                    title: Some("x".into()),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
            "UpdateConversation",
        );
        nf(
            c.delete_conversation(bearer(
                &other,
                pb::DeleteConversationRequest { id: conv.clone() },
            ))
            .await
            .map(|_| ()),
            "DeleteConversation",
        );
        nf(
            c.send_message(bearer(
                &other,
                pb::SendMessageRequest {
                    conversation_id: conv.clone(),
                    content: "x".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
            "SendMessage",
        );
        nf(
            c.update_folder(bearer(
                &other,
                pb::UpdateFolderRequest {
                    id: work.id.clone(),
                    name: Some("x".into()),
                    parent_id: None,
                },
            ))
            .await
            .map(|_| ()),
            "UpdateFolder",
        );
        nf(
            c.delete_folder(bearer(
                &other,
                pb::DeleteFolderRequest {
                    id: work.id.clone(),
                },
            ))
            .await
            .map(|_| ()),
            "DeleteFolder",
        );
        nf(
            c.create_folder(bearer(&other, folder("x", &work.id)))
                .await
                .map(|_| ()),
            "CreateFolder under another's folder",
        );
        nf(
            c.get_assistant(bearer(
                &other,
                pb::GetAssistantRequest {
                    id: mine.id.clone(),
                },
            ))
            .await
            .map(|_| ()),
            "GetAssistant",
        );
        nf(
            c.update_assistant(bearer(
                &other,
                pb::UpdateAssistantRequest {
                    assistant: Some(mine.clone()),
                },
            ))
            .await
            .map(|_| ()),
            "UpdateAssistant",
        );
        nf(
            c.delete_assistant(bearer(
                &other,
                pb::DeleteAssistantRequest {
                    id: mine.id.clone(),
                },
            ))
            .await
            .map(|_| ()),
            "DeleteAssistant",
        );
        nf(
            c.create_conversation(bearer(
                &other,
                pb::CreateConversationRequest {
                    assistant_id: mine.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
            "CreateConversation from another's assistant",
        );
        nf(
            c.render_template(bearer(
                &other,
                pb::RenderTemplateRequest {
                    id: t.id.clone(),
                    values: HashMap::new(),
                },
            ))
            .await
            .map(|_| ()),
            "RenderTemplate",
        );
        nf(
            c.update_template(bearer(
                &other,
                pb::UpdateTemplateRequest {
                    template: Some(t.clone()),
                },
            ))
            .await
            .map(|_| ()),
            "UpdateTemplate",
        );
        nf(
            c.delete_template(bearer(
                &other,
                pb::DeleteTemplateRequest { id: t.id.clone() },
            ))
            .await
            .map(|_| ()),
            "DeleteTemplate",
        );
        assert!(
            c.list_conversations(bearer(&other, pb::ListConversationsRequest::default()))
                .await
                .expect("list")
                .into_inner()
                .conversations
                .is_empty()
        );

        // Deleting is final.
        c.delete_conversation(bearer(
            &user,
            pb::DeleteConversationRequest { id: conv.clone() },
        ))
        .await
        .expect("delete");
        nf(
            c.get_conversation(bearer(
                &user,
                pb::GetConversationRequest { id: conv.clone() },
            ))
            .await
            .map(|_| ()),
            "deleted",
        );
    }
);

every_shape!(
    stop_reply_stops_a_stream_the_client_keeps_reading,
    |backend| async move {
        let Some(Setup { s, user, .. }) = setup(backend).await else {
            return;
        };
        let mut c = chat(&s);
        let conv = new_conversation(&mut c, &user).await;
        let idle = c
            .stop_reply(bearer(
                &user,
                pb::StopReplyRequest {
                    conversation_id: conv.id.clone(),
                },
            ))
            .await
            .expect("stop with nothing running")
            .into_inner();
        assert!(!idle.stopped, "nothing was running");

        let mut stream = long_reply(&mut c, &user, &conv.id).await;
        let mut deltas = 0;
        let mut stopped = false;
        let mut last = None;
        while let Some(m) = stream.message().await.expect("event") {
            match m.event.and_then(|e| e.event) {
                Some(pb::reply_event::Event::Delta(_)) => {
                    deltas += 1;
                    // A proxy that swallows cancels: the client asks the service instead.
                    if deltas == 3 && !stopped {
                        stopped = c
                            .stop_reply(bearer(
                                &user,
                                pb::StopReplyRequest {
                                    conversation_id: conv.id.clone(),
                                },
                            ))
                            .await
                            .expect("stop")
                            .into_inner()
                            .stopped;
                        assert!(stopped, "a reply was running");
                    }
                }
                Some(pb::reply_event::Event::AssistantMessage(a)) => last = Some(a),
                _ => {}
            }
        }
        let reply = last.expect("the stream ends with the stored reply");
        assert_eq!(reply.state, pb::MessageState::Stopped as i32);
        let completion = reply.usage.expect("usage").completion_tokens;
        assert!(
            (3..2000).contains(&completion),
            "stopped early, after what it sent: {completion}"
        );
    }
);

/// SmolLM2's token for a space and the first two bytes of a four-byte emoji (the engine
/// tests check its bytes).
const SPACE_AND_EMOJI_LEAD: u32 = 15107;

every_shape!(
    a_reply_cut_inside_a_character_is_stored_as_streamed,
    |backend| async move {
        let Some(Setup { s, user, .. }) = setup(backend).await else {
            return;
        };
        let mut c = chat(&s);
        let conv = new_conversation(&mut c, &user).await;
        for (max_tokens, want) in [(1, " "), (3, " \u{FFFD} \u{FFFD} ")] {
            let stream = c
                .send_message(bearer(
                    &user,
                    pb::SendMessageRequest {
                        conversation_id: conv.id.clone(),
                        content: "Trees?".into(),
                        sampling: Some(SamplingParams {
                            logit_bias: [(SPACE_AND_EMOJI_LEAD, 100.0)].into(),
                            ..greedy(max_tokens).expect("sampling")
                        }),
                        ..Default::default()
                    },
                ))
                .await
                .expect("send")
                .into_inner();
            let (_, text, reply) = read_reply(stream, |m| m.event).await;
            // The cut lead is never sent; only leads that a space made invalid are replaced.
            assert_eq!(text, want, "max_tokens {max_tokens}");
            assert_eq!(reply.content, text, "the stored reply is what streamed");
            assert_eq!(reply.state, pb::MessageState::Complete as i32);
            assert_eq!(
                reply.usage.expect("usage").completion_tokens,
                max_tokens,
                "every token is counted"
            );
            let (_, messages) = path(&mut c, &user, &conv.id).await;
            assert_eq!(messages.last().expect("reply").content, want);
        }
    }
);

fn code_run(block: u32, code: &str, stdout: &str) -> pb::CodeRun {
    pb::CodeRun {
        block,
        language: "python".into(),
        code: code.into(),
        stdout: stdout.as_bytes().to_vec(),
        exit: Some(sbx::RunExit {
            status: sbx::RunStatus::Exited as i32,
            fuel_used: 1_234_567,
            duration_ms: 3,
            ..Default::default()
        }),
        ..Default::default()
    }
}

every_shape!(
    code_runs_are_kept_with_their_message,
    |backend| async move {
        let Some(Setup { s, user, admin, .. }) = setup(backend).await else {
            return;
        };
        let mut c = chat(&s);
        let conv = new_conversation(&mut c, &user).await;
        let (_, _, reply) = send(&mut c, &user, &conv.id, "Hello").await;
        let record = |token: &str, message_id: &str, run: pb::CodeRun| {
            bearer(
                token,
                pb::RecordCodeRunRequest {
                    message_id: message_id.into(),
                    run: Some(run),
                },
            )
        };

        let m = c
            .record_code_run(record(&user, &reply.id, code_run(1, "print(2)", "2\n")))
            .await
            .expect("record")
            .into_inner()
            .message
            .expect("message");
        assert_eq!(m.id, reply.id);
        assert_eq!(m.code_runs.len(), 1);
        c.record_code_run(record(&user, &reply.id, code_run(0, "print(1)", "1\n")))
            .await
            .expect("record block 0");
        // Running block 1 again replaces its earlier result.
        let mut again = code_run(1, "print(3)", "3\n");
        again.stderr = b"warning\n".to_vec();
        again.truncated = true;
        c.record_code_run(record(&user, &reply.id, again))
            .await
            .expect("record again");

        let (_, messages) = path(&mut c, &user, &conv.id).await;
        let runs = &messages.last().expect("reply").code_runs;
        assert_eq!(
            runs.iter()
                .map(|r| (r.block, r.code.as_str(), r.stdout.as_slice()))
                .collect::<Vec<_>>(),
            vec![(0, "print(1)", &b"1\n"[..]), (1, "print(3)", &b"3\n"[..])],
            "one run per block, in block order"
        );
        let last = &runs[1];
        assert!(last.truncated && last.stderr == b"warning\n");
        let exit = last.exit.as_ref().expect("exit");
        assert_eq!(exit.status, sbx::RunStatus::Exited as i32);
        assert_eq!((exit.fuel_used, exit.duration_ms), (1_234_567, 3));
        assert!(last.ran_at.is_some(), "the server stamps the run");
        assert!(messages[0].code_runs.is_empty());

        // Another account, even an admin's, cannot write the message's runs.
        let err = c
            .record_code_run(record(&admin, &reply.id, code_run(0, "x", "")))
            .await
            .expect_err("not theirs");
        assert_eq!(err.code(), Code::NotFound);

        // Validation names the field.
        let mut cases: Vec<(pb::CodeRun, &str)> = Vec::new();
        cases.push((code_run(100, "x", ""), "run.block"));
        let mut r = code_run(0, "x", "");
        r.language = "py thon".into();
        cases.push((r, "run.language"));
        cases.push((code_run(0, &"x".repeat(64 * 1024 + 1), ""), "run.code"));
        cases.push((code_run(0, "x", &"o".repeat(64 * 1024 + 1)), "run.stdout"));
        let mut r = code_run(0, "x", "");
        r.stderr = vec![b'e'; 64 * 1024 + 1];
        cases.push((r, "run.stderr"));
        let mut r = code_run(0, "x", "");
        r.exit = None;
        cases.push((r, "run.exit"));
        let mut r = code_run(0, "x", "");
        r.exit.as_mut().expect("exit").status = 0;
        cases.push((r, "run.exit.status"));
        let mut r = code_run(0, "x", "");
        r.exit.as_mut().expect("exit").message = "m".repeat(2001);
        cases.push((r, "run.exit.message"));
        for (run, field) in cases {
            let err = c
                .record_code_run(record(&user, &reply.id, run))
                .await
                .expect_err(field);
            assert_eq!(err.code(), Code::InvalidArgument, "{field}");
            assert!(err.message().contains(field), "{field}: {}", err.message());
        }
        let err = c
            .record_code_run(bearer(
                &user,
                pb::RecordCodeRunRequest {
                    message_id: reply.id.clone(),
                    run: None,
                },
            ))
            .await
            .expect_err("no run");
        assert!(err.code() == Code::InvalidArgument && err.message().contains("run"));
        let (_, messages) = path(&mut c, &user, &conv.id).await;
        assert_eq!(
            messages.last().expect("reply").code_runs.len(),
            2,
            "refused runs change nothing"
        );

        // Deleting the conversation deletes its runs.
        c.delete_conversation(bearer(
            &user,
            pb::DeleteConversationRequest {
                id: conv.id.clone(),
            },
        ))
        .await
        .expect("delete");
        if s.mesh.is_none() {
            let left = s
                .app()
                .db
                .query_all_raw(sea_orm::Statement::from_string(
                    s.app().db.get_database_backend(),
                    "SELECT block FROM message_code_runs",
                ))
                .await
                .expect("query");
            assert!(left.is_empty(), "runs outlived their conversation");
        }
    }
);

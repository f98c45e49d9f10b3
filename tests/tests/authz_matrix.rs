//! The authorization matrix: every RPC the server registers × every kind of caller, each
//! cell the exact status code. RPCs come from the descriptor set, filtered to the services
//! the running server lists through reflection, so an RPC added without a row fails here.

use std::collections::BTreeSet;

use base64::Engine;
use chrono::Duration;
use llmesh_proto::auth::v1 as pb;
use llmesh_proto::billing::v1 as billing;
use llmesh_proto::chat::v1 as chat;
use llmesh_proto::common::v1::Role;
use llmesh_proto::llm::v1 as llm;
use llmesh_proto::sandbox::v1 as sandbox;
use llmesh_tests::{Backend, PASSWORD, TestServer, bearer, raw};
use prost::Message;
use tonic::Code;

const COLUMNS: [&str; 9] = [
    "anonymous",
    "viewer",
    "member",
    "another member",
    "admin",
    "member's API key",
    "revoked API key",
    "expired token",
    "tampered token",
];

use Code::{
    InvalidArgument as IA, NotFound as NF, Ok as OK, PermissionDenied as PD, Unauthenticated as UA,
};

struct Fixture {
    credentials: [Option<String>; 9],
    member_spare_refresh: String,
    member_spare_key_id: String,
    member_key: String,
}

async fn fixture(s: &TestServer) -> Fixture {
    let mut auth = s.auth();
    let (_, admin) = s.signup("admin@example.com").await;
    let (viewer, _) = s.signup("viewer@example.com").await;
    auth.set_user_role(bearer(
        &admin.access_token,
        pb::SetUserRoleRequest {
            user_id: viewer.id,
            role: Role::Viewer as i32,
        },
    ))
    .await
    .expect("make viewer");
    let (_, member) = s.signup("member@example.com").await;
    s.signup("other@example.com").await;
    let member_key = s.api_key(&member.access_token, "main").await.secret;
    let revoked = s.api_key(&member.access_token, "revoked").await;
    auth.revoke_api_key(bearer(
        &member.access_token,
        pb::RevokeApiKeyRequest {
            id: revoked.api_key.expect("key").id,
        },
    ))
    .await
    .expect("revoke");
    let spare_key = s
        .api_key(&member.access_token, "spare")
        .await
        .api_key
        .expect("key")
        .id;
    let expired = s.login("member@example.com").await.1.access_token;
    s.clock().advance(Duration::minutes(20));

    // Fresh sessions after the clock moved.
    let token = |email: &'static str| async move { s.login(email).await.1 };
    let viewer = token("viewer@example.com").await.access_token;
    let member = token("member@example.com").await.access_token;
    let other = token("other@example.com").await.access_token;
    let admin = token("admin@example.com").await.access_token;
    let spare = token("member@example.com").await.refresh_token;

    Fixture {
        credentials: [
            None,
            Some(viewer),
            Some(member.clone()),
            Some(other),
            Some(admin),
            Some(member_key.clone()),
            Some(revoked.secret),
            Some(expired),
            Some(tamper(&member)),
        ],
        member_spare_refresh: spare,
        member_spare_key_id: spare_key,
        member_key,
    }
}

/// Rewrites the role claim of a signed token without re-signing it.
fn tamper(token: &str) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let claims = engine.decode(&parts[1]).expect("payload");
    let mut value: serde_json::Value = serde_json::from_slice(&claims).expect("json");
    value["role"] = "admin".into();
    parts[1] = engine.encode(serde_json::to_vec(&value).expect("json"));
    parts.join(".")
}

type Probe = Box<dyn Fn(usize) -> Vec<u8>>;

fn rows(f: &Fixture) -> Vec<(&'static str, Probe, [Code; 9])> {
    let unknown_user = uuid::Uuid::now_v7().to_string();
    let user_probe = move || unknown_user.clone();
    let spare_refresh = f.member_spare_refresh.clone();
    let spare_key = f.member_spare_key_id.clone();
    let member_key = f.member_key.clone();
    let admin_only = [UA, PD, PD, PD, NF, PD, UA, UA, UA];
    // Chat: viewers read, members write; unknown ids are NOT_FOUND.
    let write_nf = [UA, PD, NF, NF, NF, NF, UA, UA, UA];
    let write_ia = [UA, PD, IA, IA, IA, IA, UA, UA, UA];
    let read_ok = [UA, OK, OK, OK, OK, OK, UA, UA, UA];
    let read_nf = [UA, NF, NF, NF, NF, NF, UA, UA, UA];
    let some = || uuid::Uuid::now_v7().to_string();
    vec![
        (
            "Register",
            Box::new(|col| {
                pb::RegisterRequest {
                    email: format!("probe{col}@example.com"),
                    password: PASSWORD.into(),
                    display_name: String::new(),
                }
                .encode_to_vec()
            }),
            [OK, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "GetSignUpInfo",
            Box::new(|_| pb::GetSignUpInfoRequest {}.encode_to_vec()),
            [OK, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "Login",
            Box::new(|_| {
                pb::LoginRequest {
                    email: "other@example.com".into(),
                    password: PASSWORD.into(),
                }
                .encode_to_vec()
            }),
            [OK, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "Refresh",
            Box::new(|_| {
                pb::RefreshRequest {
                    refresh_token: "lmr_not_a_real_token".into(),
                }
                .encode_to_vec()
            }),
            [UA; 9],
        ),
        (
            "Logout",
            Box::new(move |_| {
                pb::LogoutRequest {
                    refresh_token: spare_refresh.clone(),
                }
                .encode_to_vec()
            }),
            [UA, NF, OK, NF, NF, PD, UA, UA, UA],
        ),
        (
            "GetMe",
            Box::new(|_| pb::GetMeRequest {}.encode_to_vec()),
            [UA, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "UpdateProfile",
            Box::new(|_| {
                pb::UpdateProfileRequest {
                    display_name: "Probe".into(),
                }
                .encode_to_vec()
            }),
            [UA, OK, OK, OK, OK, PD, UA, UA, UA],
        ),
        (
            "ChangePassword",
            Box::new(|_| {
                pb::ChangePasswordRequest {
                    current_password: PASSWORD.into(),
                    new_password: "short".into(),
                }
                .encode_to_vec()
            }),
            [UA, IA, IA, IA, IA, PD, UA, UA, UA],
        ),
        (
            "CreateApiKey",
            Box::new(|_| pb::CreateApiKeyRequest::default().encode_to_vec()),
            [UA, PD, IA, IA, IA, PD, UA, UA, UA],
        ),
        (
            "ListApiKeys",
            Box::new(|_| pb::ListApiKeysRequest {}.encode_to_vec()),
            [UA, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "RevokeApiKey",
            Box::new(move |_| {
                pb::RevokeApiKeyRequest {
                    id: spare_key.clone(),
                }
                .encode_to_vec()
            }),
            [UA, NF, OK, NF, NF, PD, UA, UA, UA],
        ),
        (
            "ListUsers",
            Box::new(|_| pb::ListUsersRequest::default().encode_to_vec()),
            [UA, PD, PD, PD, OK, PD, UA, UA, UA],
        ),
        (
            "CreateUser",
            Box::new(|_| pb::CreateUserRequest::default().encode_to_vec()),
            [UA, PD, PD, PD, IA, PD, UA, UA, UA],
        ),
        (
            "SetUserRole",
            Box::new({
                let id = user_probe.clone();
                move |_| {
                    pb::SetUserRoleRequest {
                        user_id: id(),
                        role: Role::Member as i32,
                    }
                    .encode_to_vec()
                }
            }),
            admin_only,
        ),
        (
            "DisableUser",
            Box::new({
                let id = user_probe.clone();
                move |_| pb::DisableUserRequest { user_id: id() }.encode_to_vec()
            }),
            admin_only,
        ),
        (
            "EnableUser",
            Box::new({
                let id = user_probe.clone();
                move |_| pb::EnableUserRequest { user_id: id() }.encode_to_vec()
            }),
            admin_only,
        ),
        (
            "DeleteUser",
            Box::new({
                let id = user_probe.clone();
                move |_| pb::DeleteUserRequest { user_id: id() }.encode_to_vec()
            }),
            admin_only,
        ),
        (
            "ResetPassword",
            Box::new(move |_| {
                pb::ResetPasswordRequest {
                    user_id: user_probe(),
                }
                .encode_to_vec()
            }),
            admin_only,
        ),
        (
            "GetPublicKeys",
            Box::new(|_| pb::GetPublicKeysRequest {}.encode_to_vec()),
            [OK, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "ListModels",
            Box::new(|_| llm::ListModelsRequest {}.encode_to_vec()),
            [UA, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "GetModel",
            Box::new(|_| {
                llm::GetModelRequest {
                    id: "no-such-model".into(),
                }
                .encode_to_vec()
            }),
            [UA, NF, NF, NF, NF, NF, UA, UA, UA],
        ),
        (
            "CountTokens",
            Box::new(|_| {
                llm::CountTokensRequest {
                    model: "no-such-model".into(),
                    input: Some(llm::count_tokens_request::Input::Text("hi".into())),
                }
                .encode_to_vec()
            }),
            [UA, NF, NF, NF, NF, NF, UA, UA, UA],
        ),
        (
            "Generate",
            Box::new(|_| {
                llm::GenerateRequest {
                    model: "no-such-model".into(),
                    input: Some(llm::generate_request::Input::Prompt("hi".into())),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            [UA, PD, NF, NF, NF, NF, UA, UA, UA],
        ),
        (
            "StopGeneration",
            Box::new(|_| {
                llm::StopGenerationRequest {
                    generation_id: "no-such-generation".into(),
                }
                .encode_to_vec()
            }),
            [UA, PD, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "Embed",
            Box::new(|_| {
                llm::EmbedRequest {
                    model: "no-such-model".into(),
                    texts: vec!["hi".into()],
                }
                .encode_to_vec()
            }),
            [UA, PD, NF, NF, NF, NF, UA, UA, UA],
        ),
        (
            "PullModel",
            Box::new(|_| {
                llm::PullModelRequest {
                    source: "ftp://nowhere".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            [UA, PD, PD, PD, IA, PD, UA, UA, UA],
        ),
        (
            "DeleteModel",
            Box::new(|_| {
                llm::DeleteModelRequest {
                    id: "no-such-model".into(),
                }
                .encode_to_vec()
            }),
            admin_only,
        ),
        (
            "LoadModel",
            Box::new(|_| {
                llm::LoadModelRequest {
                    id: "no-such-model".into(),
                }
                .encode_to_vec()
            }),
            admin_only,
        ),
        (
            "UnloadModel",
            Box::new(|_| {
                llm::UnloadModelRequest {
                    id: "no-such-model".into(),
                }
                .encode_to_vec()
            }),
            admin_only,
        ),
        (
            "CreateProvider",
            Box::new(|_| llm::CreateProviderRequest::default().encode_to_vec()),
            [UA, PD, PD, PD, IA, PD, UA, UA, UA],
        ),
        (
            "UpdateProvider",
            Box::new(|_| {
                llm::UpdateProviderRequest {
                    id: "no-such-provider".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            admin_only,
        ),
        (
            "DeleteProvider",
            Box::new(|_| {
                llm::DeleteProviderRequest {
                    id: "no-such-provider".into(),
                }
                .encode_to_vec()
            }),
            admin_only,
        ),
        (
            "ListProviders",
            Box::new(|_| llm::ListProvidersRequest {}.encode_to_vec()),
            [UA, PD, PD, PD, OK, PD, UA, UA, UA],
        ),
        (
            "TestProvider",
            Box::new(|_| {
                llm::TestProviderRequest {
                    id: "no-such-provider".into(),
                }
                .encode_to_vec()
            }),
            admin_only,
        ),
        (
            "SetPrice",
            Box::new(|_| {
                billing::SetPriceRequest {
                    model: String::new(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            [UA, PD, PD, PD, IA, PD, UA, UA, UA],
        ),
        (
            "ListPrices",
            Box::new(|_| billing::ListPricesRequest {}.encode_to_vec()),
            [UA, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "DeletePrice",
            Box::new(|_| {
                billing::DeletePriceRequest {
                    model: "no-such-model".into(),
                }
                .encode_to_vec()
            }),
            admin_only,
        ),
        (
            "GetBalance",
            Box::new(|_| billing::GetBalanceRequest::default().encode_to_vec()),
            [UA, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "AdjustBalance",
            Box::new(|_| billing::AdjustBalanceRequest::default().encode_to_vec()),
            [UA, PD, PD, PD, IA, PD, UA, UA, UA],
        ),
        (
            "Reserve",
            Box::new(|_| billing::ReserveRequest::default().encode_to_vec()),
            [UA, PD, PD, PD, PD, PD, UA, UA, UA],
        ),
        (
            "Settle",
            Box::new(|_| billing::SettleRequest::default().encode_to_vec()),
            [UA, PD, PD, PD, PD, PD, UA, UA, UA],
        ),
        (
            "Release",
            Box::new(|_| billing::ReleaseRequest::default().encode_to_vec()),
            [UA, PD, PD, PD, PD, PD, UA, UA, UA],
        ),
        (
            "ListRuntimes",
            Box::new(|_| sandbox::ListRuntimesRequest {}.encode_to_vec()),
            [UA, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "ListFiles",
            Box::new(|_| sandbox::ListFilesRequest {}.encode_to_vec()),
            [UA, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "ReadFile",
            Box::new(|_| {
                sandbox::ReadFileRequest {
                    path: "missing.txt".into(),
                }
                .encode_to_vec()
            }),
            [UA, NF, NF, NF, NF, NF, UA, UA, UA],
        ),
        (
            "WriteFileChunk",
            Box::new(|_| {
                sandbox::WriteFileChunkRequest {
                    path: "../escape".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            [UA, PD, IA, IA, IA, IA, UA, UA, UA],
        ),
        (
            "DeleteFile",
            Box::new(|_| {
                sandbox::DeleteFileRequest {
                    path: "missing.txt".into(),
                }
                .encode_to_vec()
            }),
            [UA, PD, NF, NF, NF, NF, UA, UA, UA],
        ),
        (
            "Run",
            Box::new(|_| {
                sandbox::RunRequest {
                    runtime: "cobol".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            [UA, PD, IA, IA, IA, IA, UA, UA, UA],
        ),
        (
            "MarkUserDeleted",
            Box::new(|_| billing::MarkUserDeletedRequest::default().encode_to_vec()),
            [UA, PD, PD, PD, PD, PD, UA, UA, UA],
        ),
        (
            "SetQuota",
            Box::new(|_| billing::SetQuotaRequest::default().encode_to_vec()),
            [UA, PD, PD, PD, IA, PD, UA, UA, UA],
        ),
        (
            "GetQuota",
            Box::new(|_| billing::GetQuotaRequest::default().encode_to_vec()),
            [UA, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "ListUsage",
            Box::new(|_| {
                billing::ListUsageRequest {
                    all_users: true,
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            [UA, PD, PD, PD, OK, PD, UA, UA, UA],
        ),
        (
            "ExportUsage",
            Box::new(|_| billing::ExportUsageRequest::default().encode_to_vec()),
            [UA, OK, OK, OK, OK, OK, UA, UA, UA],
        ),
        (
            "Reconcile",
            Box::new(|_| billing::ReconcileRequest {}.encode_to_vec()),
            [UA, PD, PD, PD, OK, PD, UA, UA, UA],
        ),
        (
            "CreateFolder",
            Box::new(|_| chat::CreateFolderRequest::default().encode_to_vec()),
            write_ia,
        ),
        (
            "ListFolders",
            Box::new(|_| chat::ListFoldersRequest {}.encode_to_vec()),
            read_ok,
        ),
        (
            "UpdateFolder",
            Box::new(move |_| {
                chat::UpdateFolderRequest {
                    id: some(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "DeleteFolder",
            Box::new(move |_| chat::DeleteFolderRequest { id: some() }.encode_to_vec()),
            write_nf,
        ),
        (
            "CreateConversation",
            Box::new(|_| {
                chat::CreateConversationRequest {
                    title: "x".repeat(300),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            write_ia,
        ),
        (
            "ListConversations",
            Box::new(|_| chat::ListConversationsRequest::default().encode_to_vec()),
            read_ok,
        ),
        (
            "GetConversation",
            Box::new(move |_| chat::GetConversationRequest { id: some() }.encode_to_vec()),
            read_nf,
        ),
        (
            "UpdateConversation",
            Box::new(move |_| {
                chat::UpdateConversationRequest {
                    id: some(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "DeleteConversation",
            Box::new(move |_| chat::DeleteConversationRequest { id: some() }.encode_to_vec()),
            write_nf,
        ),
        (
            "BatchUpdateConversations",
            Box::new(move |_| {
                chat::BatchUpdateConversationsRequest {
                    conversation_ids: vec![some(), some()],
                    action: Some(chat::batch_update_conversations_request::Action::Archived(
                        true,
                    )),
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "SendMessage",
            Box::new(move |_| {
                chat::SendMessageRequest {
                    conversation_id: some(),
                    content: "hi".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "Regenerate",
            Box::new(move |_| {
                chat::RegenerateRequest {
                    message_id: some(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "EditMessage",
            Box::new(move |_| {
                chat::EditMessageRequest {
                    message_id: some(),
                    content: "x".into(),
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "SwitchBranch",
            Box::new(move |_| chat::SwitchBranchRequest { message_id: some() }.encode_to_vec()),
            write_nf,
        ),
        (
            "StopReply",
            Box::new(move |_| {
                chat::StopReplyRequest {
                    conversation_id: some(),
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "RecordCodeRun",
            Box::new(move |_| {
                chat::RecordCodeRunRequest {
                    message_id: some(),
                    run: Some(chat::CodeRun {
                        language: "python".into(),
                        exit: Some(sandbox::RunExit {
                            status: sandbox::RunStatus::Exited as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "CreateAssistant",
            Box::new(|_| chat::CreateAssistantRequest::default().encode_to_vec()),
            write_ia,
        ),
        (
            "ListAssistants",
            Box::new(|_| chat::ListAssistantsRequest {}.encode_to_vec()),
            read_ok,
        ),
        (
            "GetAssistant",
            Box::new(move |_| chat::GetAssistantRequest { id: some() }.encode_to_vec()),
            read_nf,
        ),
        (
            "UpdateAssistant",
            Box::new(move |_| {
                chat::UpdateAssistantRequest {
                    assistant: Some(chat::Assistant {
                        id: some(),
                        name: "x".into(),
                        ..Default::default()
                    }),
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "DeleteAssistant",
            Box::new(move |_| chat::DeleteAssistantRequest { id: some() }.encode_to_vec()),
            write_nf,
        ),
        (
            "CreateTemplate",
            Box::new(|_| chat::CreateTemplateRequest::default().encode_to_vec()),
            write_ia,
        ),
        (
            "ListTemplates",
            Box::new(|_| chat::ListTemplatesRequest::default().encode_to_vec()),
            read_ok,
        ),
        (
            "UpdateTemplate",
            Box::new(move |_| {
                chat::UpdateTemplateRequest {
                    template: Some(chat::Template {
                        id: some(),
                        name: "x".into(),
                        body: "y".into(),
                        ..Default::default()
                    }),
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "DeleteTemplate",
            Box::new(move |_| chat::DeleteTemplateRequest { id: some() }.encode_to_vec()),
            write_nf,
        ),
        (
            "RenderTemplate",
            Box::new(move |_| {
                chat::RenderTemplateRequest {
                    id: some(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            read_nf,
        ),
        (
            "Search",
            Box::new(|_| {
                chat::SearchRequest {
                    query: "hello".into(),
                    page: None,
                }
                .encode_to_vec()
            }),
            read_ok,
        ),
        (
            "ExportConversations",
            Box::new(|_| chat::ExportConversationsRequest::default().encode_to_vec()),
            read_ok,
        ),
        (
            "BeginUpload",
            Box::new(|_| chat::BeginUploadRequest::default().encode_to_vec()),
            write_ia,
        ),
        (
            "AppendUploadChunk",
            Box::new(move |_| {
                chat::AppendUploadChunkRequest {
                    upload_id: some(),
                    offset: 0,
                    data: vec![1],
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "FinishUpload",
            Box::new(move |_| chat::FinishUploadRequest { upload_id: some() }.encode_to_vec()),
            write_nf,
        ),
        (
            "ImportConversations",
            Box::new(move |_| {
                chat::ImportConversationsRequest {
                    upload_id: some(),
                    source: chat::ImportSource::Chatgpt as i32,
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "CreateCollection",
            Box::new(|_| chat::CreateCollectionRequest::default().encode_to_vec()),
            write_ia,
        ),
        (
            "ListCollections",
            Box::new(|_| chat::ListCollectionsRequest {}.encode_to_vec()),
            read_ok,
        ),
        (
            "UpdateCollection",
            Box::new(move |_| {
                chat::UpdateCollectionRequest {
                    id: some(),
                    name: Some("x".into()),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "DeleteCollection",
            Box::new(move |_| chat::DeleteCollectionRequest { id: some() }.encode_to_vec()),
            write_nf,
        ),
        (
            "IngestDocument",
            Box::new(move |_| {
                chat::IngestDocumentRequest {
                    collection_id: some(),
                    upload_id: some(),
                    format: 0,
                }
                .encode_to_vec()
            }),
            write_nf,
        ),
        (
            "ListDocuments",
            Box::new(move |_| {
                chat::ListDocumentsRequest {
                    collection_id: some(),
                }
                .encode_to_vec()
            }),
            read_nf,
        ),
        (
            "GetChunk",
            Box::new(move |_| {
                chat::GetChunkRequest {
                    id: some(),
                    context: 1,
                }
                .encode_to_vec()
            }),
            read_nf,
        ),
        (
            "DeleteDocument",
            Box::new(move |_| chat::DeleteDocumentRequest { id: some() }.encode_to_vec()),
            write_nf,
        ),
        (
            "SearchKnowledge",
            Box::new(move |_| {
                chat::SearchKnowledgeRequest {
                    collection_ids: vec![some()],
                    query: "anything".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            read_nf,
        ),
        (
            "ResolveApiKey",
            Box::new(move |_| {
                pb::ResolveApiKeyRequest {
                    secret: member_key.clone(),
                }
                .encode_to_vec()
            }),
            [UA, PD, PD, PD, PD, PD, UA, UA, UA],
        ),
    ]
}

/// Every (service, method, server-streaming) of the registered llmesh services, from the
/// descriptor set.
fn registered_methods(services: &BTreeSet<String>) -> Vec<(String, String, bool)> {
    let fds = prost_types::FileDescriptorSet::decode(llmesh_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut out = Vec::new();
    for file in fds.file {
        let package = file.package.clone().unwrap_or_default();
        for service in &file.service {
            let full = format!("{package}.{}", service.name());
            if services.contains(&full) {
                for method in &service.method {
                    out.push((
                        full.clone(),
                        method.name().to_owned(),
                        method.server_streaming(),
                    ));
                }
            }
        }
    }
    out
}

async fn matrix(backend: Backend) {
    let Some(s) = TestServer::start(backend).await else {
        return;
    };
    let services = llmesh_tests::reflected_services(&s.channel).await;
    assert!(
        services.contains("llmesh.auth.v1.AuthService"),
        "{services:?}"
    );
    let methods = registered_methods(&services);
    let f = fixture(&s).await;
    let rows = rows(&f);

    let mut failures = Vec::new();
    for (service, method, streaming) in &methods {
        let Some((_, probe, expected)) = rows.iter().find(|(m, _, _)| m == method) else {
            failures.push(format!(
                "{service}/{method}: no row in the authorization matrix"
            ));
            continue;
        };
        let path = format!("/{service}/{method}");
        for (col, credential) in f.credentials.iter().enumerate() {
            let body = probe(col);
            let request = match credential {
                Some(token) => bearer(token, body),
                None => tonic::Request::new(body),
            };
            let result = if *streaming {
                raw::server_streaming(&s.channel, &path, request)
                    .await
                    .map(|_| ())
            } else {
                raw::unary(&s.channel, &path, request).await.map(|_| ())
            };
            let got = match result {
                Ok(()) => Code::Ok,
                Err(status) => status.code(),
            };
            if got != expected[col] {
                failures.push(format!(
                    "{method} as {}: expected {:?}, got {got:?}",
                    COLUMNS[col], expected[col]
                ));
            }
        }
    }
    for (name, _, _) in &rows {
        if !methods.iter().any(|(_, m, _)| m == name) {
            failures.push(format!("row {name} matches no registered RPC"));
        }
    }
    assert!(
        failures.is_empty(),
        "authorization matrix:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_sqlite() {
    matrix(Backend::Sqlite).await;
}

/// On the Postgres with pgvector: the matrix covers the knowledge RPCs, which need it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_postgres() {
    matrix(Backend::Pgvector).await;
}

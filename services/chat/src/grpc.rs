//! The gRPC adapter of chat, with the access rule of every RPC.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use futures::Stream;
use llmesh_kit::authn::principal;
use llmesh_kit::convert::timestamp;
use llmesh_kit::{Access, ApiError, validate};
use llmesh_proto::chat::v1 as pb;
use llmesh_proto::common::v1::{Money, PageResponse, TokenUsage};
use llmesh_proto::llm::v1 as llm_pb;
use llmesh_proto::sandbox::v1 as sandbox_pb;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::archive::BatchAction;
use crate::service::{ChatService, ConversationPatch, MessageView, NewConversation, ReplyEvent};
use crate::store::{
    Assistant, CodeRun, Conversation, ConversationFilter, Folder, Sampling, Template,
};

pub const SERVICE_NAME: &str = "llmesh.chat.v1.ChatService";

/// Who may call each chat RPC: viewers read, members write.
pub const ACCESS: &[(&str, Access)] = &[
    ("/llmesh.chat.v1.ChatService/CreateFolder", Access::Member),
    ("/llmesh.chat.v1.ChatService/ListFolders", Access::Viewer),
    ("/llmesh.chat.v1.ChatService/UpdateFolder", Access::Member),
    ("/llmesh.chat.v1.ChatService/DeleteFolder", Access::Member),
    (
        "/llmesh.chat.v1.ChatService/CreateConversation",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.ChatService/ListConversations",
        Access::Viewer,
    ),
    (
        "/llmesh.chat.v1.ChatService/GetConversation",
        Access::Viewer,
    ),
    (
        "/llmesh.chat.v1.ChatService/UpdateConversation",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.ChatService/DeleteConversation",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.ChatService/BatchUpdateConversations",
        Access::Member,
    ),
    ("/llmesh.chat.v1.ChatService/SendMessage", Access::Member),
    ("/llmesh.chat.v1.ChatService/Regenerate", Access::Member),
    ("/llmesh.chat.v1.ChatService/EditMessage", Access::Member),
    ("/llmesh.chat.v1.ChatService/SwitchBranch", Access::Member),
    ("/llmesh.chat.v1.ChatService/StopReply", Access::Member),
    ("/llmesh.chat.v1.ChatService/RecordCodeRun", Access::Member),
    (
        "/llmesh.chat.v1.ChatService/CreateAssistant",
        Access::Member,
    ),
    ("/llmesh.chat.v1.ChatService/ListAssistants", Access::Viewer),
    ("/llmesh.chat.v1.ChatService/GetAssistant", Access::Viewer),
    (
        "/llmesh.chat.v1.ChatService/UpdateAssistant",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.ChatService/DeleteAssistant",
        Access::Member,
    ),
    ("/llmesh.chat.v1.ChatService/CreateTemplate", Access::Member),
    ("/llmesh.chat.v1.ChatService/ListTemplates", Access::Viewer),
    ("/llmesh.chat.v1.ChatService/UpdateTemplate", Access::Member),
    ("/llmesh.chat.v1.ChatService/DeleteTemplate", Access::Member),
    ("/llmesh.chat.v1.ChatService/RenderTemplate", Access::Viewer),
];

pub struct GrpcChatAdapter {
    service: Arc<ChatService>,
    currency: String,
}

impl GrpcChatAdapter {
    pub fn new(service: Arc<ChatService>, currency: String) -> Self {
        GrpcChatAdapter { service, currency }
    }

    fn message_pb(&self, v: &MessageView) -> pb::Message {
        let m = &v.message;
        pb::Message {
            id: m.id.clone(),
            conversation_id: m.conversation_id.clone(),
            parent_id: m.parent_id.clone().unwrap_or_default(),
            role: match m.role.as_str() {
                "system" => llm_pb::ChatRole::System,
                "assistant" => llm_pb::ChatRole::Assistant,
                _ => llm_pb::ChatRole::User,
            } as i32,
            content: m.content.clone(),
            model: m.model.clone(),
            state: match m.state.as_str() {
                "stopped" => pb::MessageState::Stopped,
                "failed" => pb::MessageState::Failed,
                _ => pb::MessageState::Complete,
            } as i32,
            usage: Some(TokenUsage {
                prompt_tokens: m.prompt_tokens.max(0) as u32,
                completion_tokens: m.completion_tokens.max(0) as u32,
            }),
            cost: Some(Money {
                micros: m.cost_micros,
                currency: self.currency.clone(),
            }),
            sibling_index: v.sibling_index,
            sibling_count: v.sibling_count,
            sibling_ids: v.sibling_ids.clone(),
            created_at: Some(timestamp(m.created_at)),
            code_runs: v
                .code_runs
                .iter()
                .map(|r| code_run_pb(r, &self.currency))
                .collect(),
            citations: v.citations.iter().map(citation_pb).collect(),
        }
    }

    fn reply_stream(
        &self,
        rx: tokio::sync::mpsc::Receiver<crate::error::Result<ReplyEvent>>,
    ) -> ReplyStream {
        let currency = self.currency.clone();
        let adapter = GrpcChatAdapter {
            service: self.service.clone(),
            currency,
        };
        Box::pin(ReceiverStream::new(rx).map(move |event| {
            let event = event.map_err(Status::from)?;
            Ok(pb::ReplyEvent {
                event: Some(match event {
                    ReplyEvent::UserMessage(v) => {
                        pb::reply_event::Event::UserMessage(adapter.message_pb(&v))
                    }
                    ReplyEvent::Delta(d) => pb::reply_event::Event::Delta(d),
                    ReplyEvent::Citations(list) => {
                        pb::reply_event::Event::Citations(pb::CitationList {
                            citations: list.iter().map(citation_pb).collect(),
                        })
                    }
                    ReplyEvent::AssistantMessage(v) => {
                        pb::reply_event::Event::AssistantMessage(adapter.message_pb(&v))
                    }
                }),
                // Real time, not the service clock: this is for latency measurements.
                sent_at: Some(timestamp(chrono::Utc::now())),
            })
        }))
    }
}

type Reply<T> = Result<Response<T>, Status>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::ReplyEvent, Status>> + Send>>;

pub(crate) fn id(field: &str, value: &str) -> Result<String, ApiError> {
    Ok(validate::id(field, value)?.to_string())
}

fn opt_id(field: &str, value: &str) -> Result<Option<String>, ApiError> {
    if value.is_empty() {
        Ok(None)
    } else {
        id(field, value).map(Some)
    }
}

pub fn sampling_from_pb(s: Option<llm_pb::SamplingParams>) -> Sampling {
    let Some(s) = s else {
        return Sampling::default();
    };
    Sampling {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n,
        seed: s.seed,
        max_tokens: s.max_tokens,
        stop: s.stop,
        logit_bias: s.logit_bias.into_iter().collect(),
    }
}

pub fn sampling_pb(s: &Sampling) -> llm_pb::SamplingParams {
    llm_pb::SamplingParams {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n,
        seed: s.seed,
        max_tokens: s.max_tokens,
        stop: s.stop.clone(),
        // Chat replies always end where the model ends them.
        ignore_eos: None,
        logit_bias: s.logit_bias.iter().map(|(&k, &v)| (k, v)).collect(),
    }
}

fn folder_pb(f: &Folder) -> pb::Folder {
    pb::Folder {
        id: f.id.clone(),
        name: f.name.clone(),
        parent_id: f.parent_id.clone().unwrap_or_default(),
        created_at: Some(timestamp(f.created_at)),
    }
}

fn citation_pb(c: &crate::store::Citation) -> pb::Citation {
    pb::Citation {
        index: c.index,
        chunk_id: c.chunk_id.clone(),
        document_id: c.document_id.clone(),
        document_name: c.document_name.clone(),
        collection_id: c.collection_id.clone(),
        page: c.page,
        headings: c.headings.clone(),
        score: c.score,
        quote: c.quote.clone(),
    }
}

fn conversation_pb(c: &Conversation) -> pb::Conversation {
    pb::Conversation {
        id: c.id.clone(),
        title: c.title.clone(),
        model: c.model.clone(),
        sampling: Some(sampling_pb(&c.sampling)),
        system_prompt: c.system_prompt.clone(),
        assistant_id: c.assistant_id.clone().unwrap_or_default(),
        folder_id: c.folder_id.clone().unwrap_or_default(),
        tags: c.tags.clone(),
        pinned: c.pinned,
        archived: c.archived,
        active_leaf_id: c.active_leaf_id.clone().unwrap_or_default(),
        created_at: Some(timestamp(c.created_at)),
        updated_at: Some(timestamp(c.updated_at)),
        collection_ids: c.collection_ids.clone(),
    }
}

fn assistant_pb(a: &Assistant) -> pb::Assistant {
    pb::Assistant {
        id: a.id.clone(),
        name: a.name.clone(),
        description: a.description.clone(),
        icon: a.icon.clone(),
        system_prompt: a.system_prompt.clone(),
        model: a.model.clone(),
        sampling: Some(sampling_pb(&a.sampling)),
        global: a.global,
        owner_id: a.owner_id.clone(),
        collection_ids: a.collection_ids.clone(),
    }
}

fn assistant_from_pb(a: pb::Assistant) -> Assistant {
    Assistant {
        id: a.id,
        owner_id: String::new(),
        global: a.global,
        name: a.name,
        description: a.description,
        icon: a.icon,
        system_prompt: a.system_prompt,
        model: a.model,
        sampling: sampling_from_pb(a.sampling),
        collection_ids: a.collection_ids,
    }
}

fn template_pb(t: &Template, variables: Vec<String>) -> pb::Template {
    pb::Template {
        id: t.id.clone(),
        name: t.name.clone(),
        category: t.category.clone(),
        body: t.body.clone(),
        variables,
        global: t.global,
        owner_id: t.owner_id.clone(),
    }
}

fn template_from_pb(t: pb::Template) -> Template {
    Template {
        id: t.id,
        owner_id: String::new(),
        global: t.global,
        name: t.name,
        category: t.category,
        body: t.body,
    }
}

fn decode_cursor(token: &str) -> Result<Option<(i64, String)>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ApiError::invalid("page_token is not one this server issued");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (at, id) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some((at.parse().map_err(|_| bad())?, id.to_owned())))
}

fn encode_cursor(c: &Conversation) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        c.updated_at.timestamp_micros(),
        c.id
    ))
}

#[tonic::async_trait]
impl pb::chat_service_server::ChatService for GrpcChatAdapter {
    async fn create_folder(
        &self,
        req: Request<pb::CreateFolderRequest>,
    ) -> Reply<pb::CreateFolderResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let parent = opt_id("parent_id", &r.parent_id)?;
        let folder = self.service.create_folder(&p, &r.name, parent).await?;
        Ok(Response::new(pb::CreateFolderResponse {
            folder: Some(folder_pb(&folder)),
        }))
    }

    async fn list_folders(
        &self,
        req: Request<pb::ListFoldersRequest>,
    ) -> Reply<pb::ListFoldersResponse> {
        let p = principal(&req)?;
        let folders = self.service.folders(&p).await?;
        Ok(Response::new(pb::ListFoldersResponse {
            folders: folders.iter().map(folder_pb).collect(),
        }))
    }

    async fn update_folder(
        &self,
        req: Request<pb::UpdateFolderRequest>,
    ) -> Reply<pb::UpdateFolderResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let folder_id = id("id", &r.id)?;
        let parent = match r.parent_id {
            Some(p) => Some(opt_id("parent_id", &p)?),
            None => None,
        };
        let folder = self
            .service
            .update_folder(&p, &folder_id, r.name, parent)
            .await?;
        Ok(Response::new(pb::UpdateFolderResponse {
            folder: Some(folder_pb(&folder)),
        }))
    }

    async fn delete_folder(
        &self,
        req: Request<pb::DeleteFolderRequest>,
    ) -> Reply<pb::DeleteFolderResponse> {
        let p = principal(&req)?;
        let folder_id = id("id", &req.into_inner().id)?;
        self.service.delete_folder(&p, &folder_id).await?;
        Ok(Response::new(pb::DeleteFolderResponse {}))
    }

    async fn create_conversation(
        &self,
        req: Request<pb::CreateConversationRequest>,
    ) -> Reply<pb::CreateConversationResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let c = self
            .service
            .create_conversation(
                &p,
                NewConversation {
                    title: r.title,
                    model: r.model,
                    assistant_id: opt_id("assistant_id", &r.assistant_id)?,
                    folder_id: opt_id("folder_id", &r.folder_id)?,
                    system_prompt: r.system_prompt,
                    sampling: sampling_from_pb(r.sampling),
                    collection_ids: r.collection_ids,
                },
            )
            .await?;
        Ok(Response::new(pb::CreateConversationResponse {
            conversation: Some(conversation_pb(&c)),
        }))
    }

    async fn list_conversations(
        &self,
        req: Request<pb::ListConversationsRequest>,
    ) -> Reply<pb::ListConversationsResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = r.page.unwrap_or_default();
        let limit = validate::page_size(page.page_size, 50, 200)?;
        let filter = ConversationFilter {
            folder_id: opt_id("folder_id", &r.folder_id)?,
            tag: Some(r.tag).filter(|t| !t.is_empty()),
            pinned: r.pinned,
            archived: r.archived,
            model: Some(r.model).filter(|m| !m.is_empty()),
            after: decode_cursor(&page.page_token)?,
            limit: limit + 1,
        };
        let mut list = self.service.list(&p, filter).await?;
        let more = list.len() as u64 > limit;
        list.truncate(limit as usize);
        let next_page_token = match (more, list.last()) {
            (true, Some(last)) => encode_cursor(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: list.iter().map(conversation_pb).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn get_conversation(
        &self,
        req: Request<pb::GetConversationRequest>,
    ) -> Reply<pb::GetConversationResponse> {
        let p = principal(&req)?;
        let cid = id("id", &req.into_inner().id)?;
        let (c, path) = self.service.active_path(&p, &cid).await?;
        Ok(Response::new(pb::GetConversationResponse {
            conversation: Some(conversation_pb(&c)),
            messages: path.iter().map(|m| self.message_pb(m)).collect(),
        }))
    }

    async fn update_conversation(
        &self,
        req: Request<pb::UpdateConversationRequest>,
    ) -> Reply<pb::UpdateConversationResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let cid = id("id", &r.id)?;
        let folder_id = match r.folder_id {
            Some(f) if !f.is_empty() => Some(id("folder_id", &f)?),
            other => other,
        };
        let c = self
            .service
            .update_conversation(
                &p,
                &cid,
                ConversationPatch {
                    title: r.title,
                    folder_id,
                    tags: r.replace_tags.then_some(r.tags),
                    pinned: r.pinned,
                    archived: r.archived,
                    model: r.model,
                    sampling: r.sampling.map(|s| sampling_from_pb(Some(s))),
                    system_prompt: r.system_prompt,
                    collection_ids: r.collection_ids.map(|c| c.ids),
                },
            )
            .await?;
        Ok(Response::new(pb::UpdateConversationResponse {
            conversation: Some(conversation_pb(&c)),
        }))
    }

    async fn delete_conversation(
        &self,
        req: Request<pb::DeleteConversationRequest>,
    ) -> Reply<pb::DeleteConversationResponse> {
        let p = principal(&req)?;
        let cid = id("id", &req.into_inner().id)?;
        self.service.delete_conversation(&p, &cid).await?;
        Ok(Response::new(pb::DeleteConversationResponse {}))
    }

    async fn batch_update_conversations(
        &self,
        req: Request<pb::BatchUpdateConversationsRequest>,
    ) -> Reply<pb::BatchUpdateConversationsResponse> {
        use pb::batch_update_conversations_request::Action;
        let p = principal(&req)?;
        let r = req.into_inner();
        let ids = r
            .conversation_ids
            .iter()
            .enumerate()
            .map(|(i, c)| id(&format!("conversation_ids[{i}]"), c))
            .collect::<Result<Vec<_>, _>>()?;
        let action = match r.action {
            Some(Action::Archived(v)) => BatchAction::Archive(v),
            Some(Action::Pinned(v)) => BatchAction::Pin(v),
            Some(Action::FolderId(f)) => BatchAction::MoveTo(opt_id("folder_id", &f)?),
            Some(Action::AddTag(t)) => BatchAction::AddTag(t),
            Some(Action::RemoveTag(t)) => BatchAction::RemoveTag(t),
            Some(Action::Delete(true)) => BatchAction::Delete,
            Some(Action::Delete(false)) => {
                return Err(ApiError::invalid("delete must be true when set").into());
            }
            None => {
                return Err(ApiError::invalid(
                    "action: set one of archived, pinned, folder_id, add_tag, remove_tag, delete",
                )
                .into());
            }
        };
        let conversations = self.service.batch_update(&p, &ids, action).await?;
        Ok(Response::new(pb::BatchUpdateConversationsResponse {
            conversations,
        }))
    }

    type SendMessageStream =
        Pin<Box<dyn Stream<Item = Result<pb::SendMessageResponse, Status>> + Send>>;

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Reply<Self::SendMessageStream> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let cid = id("conversation_id", &r.conversation_id)?;
        let parent = opt_id("parent_id", &r.parent_id)?;
        let rx = self
            .service
            .send(
                &p,
                &cid,
                r.content,
                parent,
                Some(r.model).filter(|m| !m.is_empty()),
                r.sampling.map(|s| sampling_from_pb(Some(s))),
            )
            .await?;
        let stream = self
            .reply_stream(rx)
            .map(|e| e.map(|event| pb::SendMessageResponse { event: Some(event) }));
        Ok(Response::new(Box::pin(stream)))
    }

    type RegenerateStream =
        Pin<Box<dyn Stream<Item = Result<pb::RegenerateResponse, Status>> + Send>>;

    async fn regenerate(
        &self,
        req: Request<pb::RegenerateRequest>,
    ) -> Reply<Self::RegenerateStream> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let mid = id("message_id", &r.message_id)?;
        let rx = self
            .service
            .regenerate(
                &p,
                &mid,
                Some(r.model).filter(|m| !m.is_empty()),
                r.sampling.map(|s| sampling_from_pb(Some(s))),
            )
            .await?;
        let stream = self
            .reply_stream(rx)
            .map(|e| e.map(|event| pb::RegenerateResponse { event: Some(event) }));
        Ok(Response::new(Box::pin(stream)))
    }

    type EditMessageStream =
        Pin<Box<dyn Stream<Item = Result<pb::EditMessageResponse, Status>> + Send>>;

    async fn edit_message(
        &self,
        req: Request<pb::EditMessageRequest>,
    ) -> Reply<Self::EditMessageStream> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let mid = id("message_id", &r.message_id)?;
        let rx = self.service.edit(&p, &mid, r.content).await?;
        let stream = self
            .reply_stream(rx)
            .map(|e| e.map(|event| pb::EditMessageResponse { event: Some(event) }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn switch_branch(
        &self,
        req: Request<pb::SwitchBranchRequest>,
    ) -> Reply<pb::SwitchBranchResponse> {
        let p = principal(&req)?;
        let mid = id("message_id", &req.into_inner().message_id)?;
        let (c, path) = self.service.switch_branch(&p, &mid).await?;
        Ok(Response::new(pb::SwitchBranchResponse {
            conversation: Some(conversation_pb(&c)),
            messages: path.iter().map(|m| self.message_pb(m)).collect(),
        }))
    }

    async fn record_code_run(
        &self,
        req: Request<pb::RecordCodeRunRequest>,
    ) -> Reply<pb::RecordCodeRunResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let mid = id("message_id", &r.message_id)?;
        let run = code_run_of(r.run.ok_or_else(|| ApiError::invalid("run is required"))?)?;
        let view = self.service.record_code_run(&p, &mid, run).await?;
        Ok(Response::new(pb::RecordCodeRunResponse {
            message: Some(self.message_pb(&view)),
        }))
    }

    async fn stop_reply(&self, req: Request<pb::StopReplyRequest>) -> Reply<pb::StopReplyResponse> {
        let p = principal(&req)?;
        let cid = id("conversation_id", &req.into_inner().conversation_id)?;
        let stopped = self.service.stop_reply(&p, &cid).await?;
        Ok(Response::new(pb::StopReplyResponse { stopped }))
    }

    async fn create_assistant(
        &self,
        req: Request<pb::CreateAssistantRequest>,
    ) -> Reply<pb::CreateAssistantResponse> {
        let p = principal(&req)?;
        let a = req
            .into_inner()
            .assistant
            .ok_or_else(|| ApiError::invalid("assistant is required"))?;
        let a = self
            .service
            .create_assistant(&p, assistant_from_pb(a))
            .await?;
        Ok(Response::new(pb::CreateAssistantResponse {
            assistant: Some(assistant_pb(&a)),
        }))
    }

    async fn list_assistants(
        &self,
        req: Request<pb::ListAssistantsRequest>,
    ) -> Reply<pb::ListAssistantsResponse> {
        let p = principal(&req)?;
        let list = self.service.assistants(&p).await?;
        Ok(Response::new(pb::ListAssistantsResponse {
            assistants: list.iter().map(assistant_pb).collect(),
        }))
    }

    async fn get_assistant(
        &self,
        req: Request<pb::GetAssistantRequest>,
    ) -> Reply<pb::GetAssistantResponse> {
        let p = principal(&req)?;
        let aid = id("id", &req.into_inner().id)?;
        let a = self.service.assistant(&p, &aid).await?;
        Ok(Response::new(pb::GetAssistantResponse {
            assistant: Some(assistant_pb(&a)),
        }))
    }

    async fn update_assistant(
        &self,
        req: Request<pb::UpdateAssistantRequest>,
    ) -> Reply<pb::UpdateAssistantResponse> {
        let p = principal(&req)?;
        let a = req
            .into_inner()
            .assistant
            .ok_or_else(|| ApiError::invalid("assistant is required"))?;
        id("assistant.id", &a.id)?;
        let a = self
            .service
            .update_assistant(&p, assistant_from_pb(a))
            .await?;
        Ok(Response::new(pb::UpdateAssistantResponse {
            assistant: Some(assistant_pb(&a)),
        }))
    }

    async fn delete_assistant(
        &self,
        req: Request<pb::DeleteAssistantRequest>,
    ) -> Reply<pb::DeleteAssistantResponse> {
        let p = principal(&req)?;
        let aid = id("id", &req.into_inner().id)?;
        self.service.delete_assistant(&p, &aid).await?;
        Ok(Response::new(pb::DeleteAssistantResponse {}))
    }

    async fn create_template(
        &self,
        req: Request<pb::CreateTemplateRequest>,
    ) -> Reply<pb::CreateTemplateResponse> {
        let p = principal(&req)?;
        let t = req
            .into_inner()
            .template
            .ok_or_else(|| ApiError::invalid("template is required"))?;
        let (t, vars) = self
            .service
            .create_template(&p, template_from_pb(t))
            .await?;
        Ok(Response::new(pb::CreateTemplateResponse {
            template: Some(template_pb(&t, vars)),
        }))
    }

    async fn list_templates(
        &self,
        req: Request<pb::ListTemplatesRequest>,
    ) -> Reply<pb::ListTemplatesResponse> {
        let p = principal(&req)?;
        let category = req.into_inner().category;
        let list = self
            .service
            .templates(&p, Some(category.as_str()).filter(|c| !c.is_empty()))
            .await?;
        Ok(Response::new(pb::ListTemplatesResponse {
            templates: list.into_iter().map(|(t, v)| template_pb(&t, v)).collect(),
        }))
    }

    async fn update_template(
        &self,
        req: Request<pb::UpdateTemplateRequest>,
    ) -> Reply<pb::UpdateTemplateResponse> {
        let p = principal(&req)?;
        let t = req
            .into_inner()
            .template
            .ok_or_else(|| ApiError::invalid("template is required"))?;
        id("template.id", &t.id)?;
        let (t, vars) = self
            .service
            .update_template(&p, template_from_pb(t))
            .await?;
        Ok(Response::new(pb::UpdateTemplateResponse {
            template: Some(template_pb(&t, vars)),
        }))
    }

    async fn delete_template(
        &self,
        req: Request<pb::DeleteTemplateRequest>,
    ) -> Reply<pb::DeleteTemplateResponse> {
        let p = principal(&req)?;
        let tid = id("id", &req.into_inner().id)?;
        self.service.delete_template(&p, &tid).await?;
        Ok(Response::new(pb::DeleteTemplateResponse {}))
    }

    async fn render_template(
        &self,
        req: Request<pb::RenderTemplateRequest>,
    ) -> Reply<pb::RenderTemplateResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let tid = id("id", &r.id)?;
        let text = self.service.render_template(&p, &tid, &r.values).await?;
        Ok(Response::new(pb::RenderTemplateResponse { text }))
    }
}

const RUN_STATUS_NAMES: &[(sandbox_pb::RunStatus, &str)] = &[
    (sandbox_pb::RunStatus::Exited, "exited"),
    (sandbox_pb::RunStatus::OutOfFuel, "out_of_fuel"),
    (sandbox_pb::RunStatus::OutOfMemory, "out_of_memory"),
    (sandbox_pb::RunStatus::TimedOut, "timed_out"),
    (sandbox_pb::RunStatus::OutputLimit, "output_limit"),
    (sandbox_pb::RunStatus::Trapped, "trapped"),
    (sandbox_pb::RunStatus::Cancelled, "cancelled"),
];

fn code_run_pb(r: &CodeRun, currency: &str) -> pb::CodeRun {
    let status = RUN_STATUS_NAMES
        .iter()
        .find(|(_, name)| *name == r.status)
        .map_or(sandbox_pb::RunStatus::Unspecified, |(s, _)| *s);
    pb::CodeRun {
        block: r.block,
        language: r.language.clone(),
        code: r.code.clone(),
        stdout: r.stdout.clone(),
        stderr: r.stderr.clone(),
        truncated: r.truncated,
        exit: Some(sandbox_pb::RunExit {
            status: status as i32,
            exit_code: r.exit_code,
            message: r.exit_message.clone(),
            fuel_used: r.fuel_used.max(0) as u64,
            duration_ms: r.duration_ms.max(0) as u64,
            peak_memory_bytes: r.peak_memory_bytes.max(0) as u64,
            cost: Some(Money {
                micros: r.cost_micros,
                currency: currency.to_owned(),
            }),
            ..Default::default()
        }),
        ran_at: Some(timestamp(r.ran_at)),
    }
}

/// A code run as the client sent it (the domain checks its sizes and values).
fn code_run_of(r: pb::CodeRun) -> Result<CodeRun, Status> {
    let exit = r
        .exit
        .ok_or_else(|| ApiError::invalid("run.exit is required"))?;
    let status = sandbox_pb::RunStatus::try_from(exit.status)
        .ok()
        .and_then(|s| RUN_STATUS_NAMES.iter().find(|(x, _)| *x == s))
        .map(|(_, name)| (*name).to_owned())
        .ok_or_else(|| ApiError::invalid("run.exit.status must be set"))?;
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Ok(CodeRun {
        block: r.block,
        language: r.language,
        code: r.code,
        stdout: r.stdout,
        stderr: r.stderr,
        truncated: r.truncated,
        status,
        exit_code: exit.exit_code,
        exit_message: exit.message,
        fuel_used: clamp(exit.fuel_used),
        duration_ms: clamp(exit.duration_ms),
        peak_memory_bytes: clamp(exit.peak_memory_bytes),
        cost_micros: exit.cost.map_or(0, |m| m.micros),
        // Set by the service when it records the run.
        ran_at: chrono::DateTime::UNIX_EPOCH,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/llmesh.chat.v1.ChatService/";

    #[test]
    fn every_rpc_has_an_access_rule() {
        assert_eq!(ACCESS.len(), 26);
        assert!(ACCESS.iter().all(|(path, _)| path.starts_with(P)));
    }
}

//! The gRPC adapter of the chat archive: search, export, chunked uploads, import.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use llmesh_kit::authn::principal;
use llmesh_kit::{Access, ApiError, validate};
use llmesh_proto::chat::v1 as pb;
use llmesh_proto::common::v1::PageResponse;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::archive::{ExportKind, ImportEvent, ImportSource};
use crate::grpc::id;
use crate::service::ChatService;

pub const ARCHIVE_SERVICE_NAME: &str = "llmesh.chat.v1.ChatArchiveService";

/// Who may call each archive RPC: everyone signed in reads their own; members write.
pub const ARCHIVE_ACCESS: &[(&str, Access)] = &[
    ("/llmesh.chat.v1.ChatArchiveService/Search", Access::Viewer),
    (
        "/llmesh.chat.v1.ChatArchiveService/ExportConversations",
        Access::Viewer,
    ),
    (
        "/llmesh.chat.v1.ChatArchiveService/BeginUpload",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.ChatArchiveService/AppendUploadChunk",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.ChatArchiveService/FinishUpload",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.ChatArchiveService/ImportConversations",
        Access::Member,
    ),
];

pub struct GrpcChatArchiveAdapter {
    service: Arc<ChatService>,
}

impl GrpcChatArchiveAdapter {
    pub fn new(service: Arc<ChatService>) -> Self {
        GrpcChatArchiveAdapter { service }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::chat_archive_service_server::ChatArchiveService for GrpcChatArchiveAdapter {
    async fn search(&self, req: Request<pb::SearchRequest>) -> Reply<pb::SearchResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = r.page.unwrap_or_default();
        let limit = validate::page_size(page.page_size, 20, 50)?;
        let offset: u64 = if page.page_token.is_empty() {
            0
        } else {
            page.page_token
                .parse()
                .ok()
                .filter(|o| *o <= 10_000)
                .ok_or_else(|| ApiError::invalid("page_token is not one this server issued"))?
        };
        let mut hits = self.service.search(&p, &r.query, limit + 1, offset).await?;
        let more = hits.len() as u64 > limit;
        hits.truncate(limit as usize);
        let next_page_token = if more {
            (offset + limit).to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::SearchResponse {
            hits: hits
                .into_iter()
                .map(|h| pb::SearchHit {
                    conversation_id: h.conversation_id,
                    conversation_title: h.conversation_title,
                    message_id: h.message_id.unwrap_or_default(),
                    snippet: h.snippet,
                    highlights: h
                        .highlights
                        .into_iter()
                        .map(|(start, end)| pb::Highlight { start, end })
                        .collect(),
                    rank: h.rank,
                })
                .collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    type ExportConversationsStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportConversationsResponse, Status>> + Send>>;

    async fn export_conversations(
        &self,
        req: Request<pb::ExportConversationsRequest>,
    ) -> Reply<Self::ExportConversationsStream> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let selection = match (r.conversation_id.is_empty(), r.conversation_ids.is_empty()) {
            (true, true) => None,
            (false, true) => Some(vec![id("conversation_id", &r.conversation_id)?]),
            (true, false) => Some(
                r.conversation_ids
                    .iter()
                    .enumerate()
                    .map(|(i, c)| id(&format!("conversation_ids[{i}]"), c))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            (false, false) => {
                return Err(ApiError::invalid(
                    "conversation_id and conversation_ids: set one of them, not both",
                )
                .into());
            }
        };
        let format = match pb::ExportFormat::try_from(r.format) {
            Ok(pb::ExportFormat::Markdown) => ExportKind::Markdown,
            Ok(pb::ExportFormat::Csv) => ExportKind::Csv,
            Ok(pb::ExportFormat::Text) => ExportKind::Text,
            Ok(pb::ExportFormat::Json) | Ok(pb::ExportFormat::Unspecified) => ExportKind::Json,
            Err(_) => return Err(ApiError::invalid("format is not a known export format").into()),
        };
        let rx = self.service.export(&p, selection, format).await?;
        let stream = ReceiverStream::new(rx).map(|chunk| {
            chunk
                .map(|chunk| pb::ExportConversationsResponse { chunk })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn begin_upload(
        &self,
        req: Request<pb::BeginUploadRequest>,
    ) -> Reply<pb::BeginUploadResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let (upload_id, max_chunk_bytes) = self
            .service
            .begin_upload(&p, &r.file_name, r.size_bytes, &r.sha256)
            .await?;
        Ok(Response::new(pb::BeginUploadResponse {
            upload_id,
            max_chunk_bytes,
        }))
    }

    async fn append_upload_chunk(
        &self,
        req: Request<pb::AppendUploadChunkRequest>,
    ) -> Reply<pb::AppendUploadChunkResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let upload = id("upload_id", &r.upload_id)?;
        let received_bytes = self
            .service
            .append_chunk(&p, &upload, r.offset, &r.data)
            .await?;
        Ok(Response::new(pb::AppendUploadChunkResponse {
            received_bytes,
        }))
    }

    async fn finish_upload(
        &self,
        req: Request<pb::FinishUploadRequest>,
    ) -> Reply<pb::FinishUploadResponse> {
        let p = principal(&req)?;
        let upload = id("upload_id", &req.into_inner().upload_id)?;
        let size_bytes = self.service.finish_upload(&p, &upload).await?;
        Ok(Response::new(pb::FinishUploadResponse { size_bytes }))
    }

    type ImportConversationsStream =
        Pin<Box<dyn Stream<Item = Result<pb::ImportConversationsResponse, Status>> + Send>>;

    async fn import_conversations(
        &self,
        req: Request<pb::ImportConversationsRequest>,
    ) -> Reply<Self::ImportConversationsStream> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let upload = id("upload_id", &r.upload_id)?;
        let source = match pb::ImportSource::try_from(r.source) {
            Ok(pb::ImportSource::Unspecified) => None,
            Ok(pb::ImportSource::LlmeshJson) => Some(ImportSource::Llmesh),
            Ok(pb::ImportSource::Chatgpt) => Some(ImportSource::ChatGpt),
            Ok(pb::ImportSource::OpenWebui) => Some(ImportSource::OpenWebUi),
            Ok(pb::ImportSource::Librechat) => Some(ImportSource::LibreChat),
            Ok(pb::ImportSource::Typingmind) => Some(ImportSource::TypingMind),
            Ok(pb::ImportSource::Claude) => Some(ImportSource::Claude),
            Ok(pb::ImportSource::Generic) => Some(ImportSource::Generic),
            Err(_) => return Err(ApiError::invalid("source is not a known import source").into()),
        };
        let rx = self.service.import(&p, &upload, source).await?;
        let stream = ReceiverStream::new(rx).map(|event| {
            let event = event.map_err(Status::from)?;
            Ok(pb::ImportConversationsResponse {
                event: Some(match event {
                    ImportEvent::Progress { done, total } => {
                        pb::import_conversations_response::Event::Progress(pb::ImportProgress {
                            done,
                            total,
                        })
                    }
                    ImportEvent::Report {
                        imported,
                        skipped,
                        source,
                        left_out,
                    } => {
                        let list = |v: Vec<(String, String)>| {
                            v.into_iter()
                                .map(|(title, reason)| pb::ImportSkip { title, reason })
                                .collect()
                        };
                        pb::import_conversations_response::Event::Report(pb::ImportReport {
                            imported,
                            skipped: list(skipped),
                            source: match source {
                                ImportSource::Llmesh => pb::ImportSource::LlmeshJson,
                                ImportSource::ChatGpt => pb::ImportSource::Chatgpt,
                                ImportSource::OpenWebUi => pb::ImportSource::OpenWebui,
                                ImportSource::LibreChat => pb::ImportSource::Librechat,
                                ImportSource::TypingMind => pb::ImportSource::Typingmind,
                                ImportSource::Claude => pb::ImportSource::Claude,
                                ImportSource::Generic => pb::ImportSource::Generic,
                            } as i32,
                            left_out: list(left_out),
                        })
                    }
                }),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

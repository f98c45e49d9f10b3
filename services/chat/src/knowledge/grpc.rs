//! The gRPC adapter of the knowledge service.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use llmesh_kit::authn::principal;
use llmesh_kit::convert::timestamp;
use llmesh_kit::{Access, ApiError};
use llmesh_proto::chat::v1 as pb;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::parse::Format;
use super::store::{ChunkRow, CollectionRow, DocumentRow};
use super::{IngestEvent, Knowledge, Mode, Phase};
use crate::grpc::id;

pub const KNOWLEDGE_SERVICE_NAME: &str = "llmesh.chat.v1.KnowledgeService";

/// Who may call each knowledge RPC: everyone signed in reads what they may; members
/// write their own.
pub const KNOWLEDGE_ACCESS: &[(&str, Access)] = &[
    (
        "/llmesh.chat.v1.KnowledgeService/CreateCollection",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.KnowledgeService/ListCollections",
        Access::Viewer,
    ),
    (
        "/llmesh.chat.v1.KnowledgeService/UpdateCollection",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.KnowledgeService/DeleteCollection",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.KnowledgeService/IngestDocument",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.KnowledgeService/ListDocuments",
        Access::Viewer,
    ),
    ("/llmesh.chat.v1.KnowledgeService/GetChunk", Access::Viewer),
    (
        "/llmesh.chat.v1.KnowledgeService/DeleteDocument",
        Access::Member,
    ),
    (
        "/llmesh.chat.v1.KnowledgeService/SearchKnowledge",
        Access::Viewer,
    ),
];

pub struct GrpcKnowledgeAdapter {
    service: Arc<Knowledge>,
}

impl GrpcKnowledgeAdapter {
    pub fn new(service: Arc<Knowledge>) -> Self {
        GrpcKnowledgeAdapter { service }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn collection_pb(c: CollectionRow, caller: &str) -> pb::Collection {
    pb::Collection {
        writable: c.user_id == caller,
        id: c.id,
        name: c.name,
        description: c.description,
        owner_id: c.user_id,
        shared_with: c.shared_with,
        everyone: c.everyone,
        documents: c.documents,
        chunks: c.chunks,
        created_at: Some(timestamp(c.created_at)),
        updated_at: Some(timestamp(c.updated_at)),
    }
}

fn format_pb(f: &str) -> pb::DocumentFormat {
    match Format::parse(f) {
        Some(Format::Text) => pb::DocumentFormat::Text,
        Some(Format::Markdown) => pb::DocumentFormat::Markdown,
        Some(Format::Html) => pb::DocumentFormat::Html,
        Some(Format::Pdf) => pb::DocumentFormat::Pdf,
        Some(Format::Docx) => pb::DocumentFormat::Docx,
        Some(Format::Csv) => pb::DocumentFormat::Csv,
        Some(Format::Code) => pb::DocumentFormat::Code,
        None => pb::DocumentFormat::Unspecified,
    }
}

fn document_pb(d: DocumentRow) -> pb::Document {
    pb::Document {
        format: format_pb(&d.format) as i32,
        id: d.id,
        collection_id: d.collection_id,
        name: d.name,
        size_bytes: d.size_bytes,
        sha256: d.sha256,
        pages: d.pages,
        chunks: d.chunks,
        tokens: d.tokens,
        created_at: Some(timestamp(d.created_at)),
    }
}

fn chunk_pb(c: ChunkRow) -> pb::Chunk {
    pb::Chunk {
        id: c.id,
        document_id: c.document_id,
        document_name: c.document_name,
        collection_id: c.collection_id,
        position: c.position,
        page: c.page,
        headings: c.headings,
        text: c.text,
        tokens: c.tokens,
    }
}

fn phase_pb(p: Phase) -> pb::IngestPhase {
    match p {
        Phase::Parsing => pb::IngestPhase::Parsing,
        Phase::Chunking => pb::IngestPhase::Chunking,
        Phase::Embedding => pb::IngestPhase::Embedding,
        Phase::Indexing => pb::IngestPhase::Indexing,
    }
}

#[tonic::async_trait]
impl pb::knowledge_service_server::KnowledgeService for GrpcKnowledgeAdapter {
    async fn create_collection(
        &self,
        req: Request<pb::CreateCollectionRequest>,
    ) -> Reply<pb::CreateCollectionResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let c = self
            .service
            .create_collection(&p, &r.name, &r.description)
            .await?;
        Ok(Response::new(pb::CreateCollectionResponse {
            collection: Some(collection_pb(c, &p.user_id)),
        }))
    }

    async fn list_collections(
        &self,
        req: Request<pb::ListCollectionsRequest>,
    ) -> Reply<pb::ListCollectionsResponse> {
        let p = principal(&req)?;
        let all = self.service.list_collections(&p).await?;
        Ok(Response::new(pb::ListCollectionsResponse {
            collections: all
                .into_iter()
                .map(|c| collection_pb(c, &p.user_id))
                .collect(),
        }))
    }

    async fn update_collection(
        &self,
        req: Request<pb::UpdateCollectionRequest>,
    ) -> Reply<pb::UpdateCollectionResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let cid = id("id", &r.id)?;
        let c = self
            .service
            .update_collection(
                &p,
                &cid,
                r.name.as_deref(),
                r.description.as_deref(),
                r.shared_with.map(|s| s.user_ids),
                r.everyone,
            )
            .await?;
        Ok(Response::new(pb::UpdateCollectionResponse {
            collection: Some(collection_pb(c, &p.user_id)),
        }))
    }

    async fn delete_collection(
        &self,
        req: Request<pb::DeleteCollectionRequest>,
    ) -> Reply<pb::DeleteCollectionResponse> {
        let p = principal(&req)?;
        let cid = id("id", &req.get_ref().id)?;
        self.service.delete_collection(&p, &cid).await?;
        Ok(Response::new(pb::DeleteCollectionResponse {}))
    }

    type IngestDocumentStream =
        Pin<Box<dyn Stream<Item = Result<pb::IngestDocumentResponse, Status>> + Send>>;

    async fn ingest_document(
        &self,
        req: Request<pb::IngestDocumentRequest>,
    ) -> Reply<Self::IngestDocumentStream> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let cid = id("collection_id", &r.collection_id)?;
        let upload = id("upload_id", &r.upload_id)?;
        let format = match pb::DocumentFormat::try_from(r.format) {
            Ok(pb::DocumentFormat::Unspecified) => None,
            Ok(pb::DocumentFormat::Text) => Some(Format::Text),
            Ok(pb::DocumentFormat::Markdown) => Some(Format::Markdown),
            Ok(pb::DocumentFormat::Html) => Some(Format::Html),
            Ok(pb::DocumentFormat::Pdf) => Some(Format::Pdf),
            Ok(pb::DocumentFormat::Docx) => Some(Format::Docx),
            Ok(pb::DocumentFormat::Csv) => Some(Format::Csv),
            Ok(pb::DocumentFormat::Code) => Some(Format::Code),
            Err(_) => return Err(ApiError::invalid("format is not a known DocumentFormat").into()),
        };
        let rx = self.service.ingest(&p, &cid, &upload, format).await?;
        let stream = ReceiverStream::new(rx).map(|event| {
            let event = match event.map_err(|e| ApiError::from(e).into_status())? {
                IngestEvent::Progress { phase, done, total } => {
                    pb::ingest_document_response::Event::Progress(pb::IngestProgress {
                        phase: phase_pb(phase) as i32,
                        done,
                        total,
                    })
                }
                IngestEvent::Done(d) => {
                    pb::ingest_document_response::Event::Document(document_pb(d))
                }
            };
            Ok(pb::IngestDocumentResponse { event: Some(event) })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_documents(
        &self,
        req: Request<pb::ListDocumentsRequest>,
    ) -> Reply<pb::ListDocumentsResponse> {
        let p = principal(&req)?;
        let cid = id("collection_id", &req.get_ref().collection_id)?;
        let docs = self.service.list_documents(&p, &cid).await?;
        Ok(Response::new(pb::ListDocumentsResponse {
            documents: docs.into_iter().map(document_pb).collect(),
        }))
    }

    async fn get_chunk(&self, req: Request<pb::GetChunkRequest>) -> Reply<pb::GetChunkResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let chunk_id = id("id", &r.id)?;
        let (chunk, around) = self.service.chunk(&p, &chunk_id, r.context).await?;
        Ok(Response::new(pb::GetChunkResponse {
            chunk: Some(chunk_pb(chunk)),
            around: around.into_iter().map(chunk_pb).collect(),
        }))
    }

    async fn delete_document(
        &self,
        req: Request<pb::DeleteDocumentRequest>,
    ) -> Reply<pb::DeleteDocumentResponse> {
        let p = principal(&req)?;
        let did = id("id", &req.get_ref().id)?;
        self.service.delete_document(&p, &did).await?;
        Ok(Response::new(pb::DeleteDocumentResponse {}))
    }

    async fn search_knowledge(
        &self,
        req: Request<pb::SearchKnowledgeRequest>,
    ) -> Reply<pb::SearchKnowledgeResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let mode = match pb::SearchMode::try_from(r.mode) {
            Ok(pb::SearchMode::Unspecified | pb::SearchMode::Hybrid) => Mode::Hybrid,
            Ok(pb::SearchMode::Vector) => Mode::Vector,
            Ok(pb::SearchMode::Text) => Mode::Text,
            Err(_) => return Err(ApiError::invalid("mode is not a known SearchMode").into()),
        };
        let (hits, query_tokens) = self
            .service
            .search(&p, &r.collection_ids, &r.query, r.limit, mode)
            .await?;
        Ok(Response::new(pb::SearchKnowledgeResponse {
            hits: hits
                .into_iter()
                .map(|h| pb::KnowledgeHit {
                    chunk: Some(chunk_pb(h.chunk)),
                    score: h.score,
                    similarity: h.similarity,
                    vector_rank: h.vector_rank,
                    text_rank: h.text_rank,
                    highlight: h.highlight,
                })
                .collect(),
            query_tokens,
        }))
    }
}

//! The gRPC adapter of the sandbox service, with the access rule of every RPC.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use llmesh_kit::authn::principal;
use llmesh_kit::convert::timestamp;
use llmesh_kit::{Access, ApiError};
use llmesh_proto::sandbox::v1 as pb;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::runner::Status as RunStatus;
use crate::runtimes::Availability;
use crate::service::{RunEvent, RunLimits, RunSpec, SandboxService};
use crate::workspace::FileMeta;

pub const SERVICE_NAME: &str = "llmesh.sandbox.v1.SandboxService";

/// Who may call each sandbox RPC: viewers list and read their files, and nothing else.
pub const ACCESS: &[(&str, Access)] = &[
    (
        "/llmesh.sandbox.v1.SandboxService/ListRuntimes",
        Access::Viewer,
    ),
    (
        "/llmesh.sandbox.v1.SandboxService/ListFiles",
        Access::Viewer,
    ),
    ("/llmesh.sandbox.v1.SandboxService/ReadFile", Access::Viewer),
    (
        "/llmesh.sandbox.v1.SandboxService/WriteFileChunk",
        Access::Member,
    ),
    (
        "/llmesh.sandbox.v1.SandboxService/DeleteFile",
        Access::Member,
    ),
    ("/llmesh.sandbox.v1.SandboxService/Run", Access::Member),
];

/// ReadFile's chunk size.
const READ_CHUNK: usize = 64 * 1024;

pub struct GrpcSandboxAdapter {
    service: Arc<SandboxService>,
    /// The currency run costs are reported in.
    currency: String,
}

impl GrpcSandboxAdapter {
    pub fn new(service: Arc<SandboxService>, currency: String) -> Self {
        GrpcSandboxAdapter { service, currency }
    }
}

type Reply<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn file_pb(f: &FileMeta) -> pb::WorkspaceFile {
    pb::WorkspaceFile {
        path: f.path.clone(),
        size_bytes: f.size_bytes,
        modified_at: Some(timestamp(f.modified_at)),
    }
}

fn status_pb(s: RunStatus) -> pb::RunStatus {
    match s {
        RunStatus::Exited => pb::RunStatus::Exited,
        RunStatus::OutOfFuel => pb::RunStatus::OutOfFuel,
        RunStatus::OutOfMemory => pb::RunStatus::OutOfMemory,
        RunStatus::TimedOut => pb::RunStatus::TimedOut,
        RunStatus::OutputLimit => pb::RunStatus::OutputLimit,
        RunStatus::Trapped => pb::RunStatus::Trapped,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    }
}

#[tonic::async_trait]
impl pb::sandbox_service_server::SandboxService for GrpcSandboxAdapter {
    async fn list_runtimes(
        &self,
        _req: Request<pb::ListRuntimesRequest>,
    ) -> Reply<pb::ListRuntimesResponse> {
        let runtimes = self
            .service
            .runtimes()
            .into_iter()
            .map(|r| {
                let (available, status) = match r.availability {
                    Availability::Ready => (true, String::new()),
                    Availability::Preparing(s) | Availability::Unavailable(s) => (false, s),
                };
                pb::Runtime {
                    id: r.id.into(),
                    language: r.language.into(),
                    version: r.version.into(),
                    available,
                    status,
                }
            })
            .collect();
        Ok(Response::new(pb::ListRuntimesResponse { runtimes }))
    }

    async fn list_files(&self, req: Request<pb::ListFilesRequest>) -> Reply<pb::ListFilesResponse> {
        let p = principal(&req)?;
        let (files, used) = self.service.list_files(&p).await?;
        let config = self.service.config();
        Ok(Response::new(pb::ListFilesResponse {
            files: files.iter().map(file_pb).collect(),
            used_bytes: used,
            quota_bytes: config.workspace_quota_bytes,
            max_files: config.workspace_max_files,
        }))
    }

    type ReadFileStream = BoxStream<pb::ReadFileResponse>;

    async fn read_file(&self, req: Request<pb::ReadFileRequest>) -> Reply<Self::ReadFileStream> {
        let p = principal(&req)?;
        let data = self.service.read_file(&p, &req.into_inner().path).await?;
        let chunks: Vec<Result<pb::ReadFileResponse, Status>> = if data.is_empty() {
            vec![Ok(pb::ReadFileResponse { chunk: Vec::new() })]
        } else {
            data.chunks(READ_CHUNK)
                .map(|c| Ok(pb::ReadFileResponse { chunk: c.to_vec() }))
                .collect()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn write_file_chunk(
        &self,
        req: Request<pb::WriteFileChunkRequest>,
    ) -> Reply<pb::WriteFileChunkResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let file = self
            .service
            .write_chunk(&p, &r.path, r.offset, &r.data, r.last)
            .await?;
        Ok(Response::new(pb::WriteFileChunkResponse {
            file: file.as_ref().map(file_pb),
        }))
    }

    async fn delete_file(
        &self,
        req: Request<pb::DeleteFileRequest>,
    ) -> Reply<pb::DeleteFileResponse> {
        let p = principal(&req)?;
        self.service.delete_file(&p, &req.into_inner().path).await?;
        Ok(Response::new(pb::DeleteFileResponse {}))
    }

    type RunStream = BoxStream<pb::RunResponse>;

    async fn run(&self, req: Request<pb::RunRequest>) -> Reply<Self::RunStream> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let l = r.limits.unwrap_or_default();
        let rx = self
            .service
            .run(
                &p,
                RunSpec {
                    runtime: r.runtime,
                    code: r.code,
                    module_path: r.module_path,
                    args: r.args,
                    stdin: r.stdin,
                    limits: RunLimits {
                        fuel: l.fuel,
                        memory_bytes: l.memory_bytes,
                        timeout_ms: u64::from(l.timeout_ms),
                        output_bytes: l.max_output_bytes,
                        files_written: l.max_files_written,
                        written_bytes: l.max_written_bytes,
                    },
                    persist: r.persist,
                },
            )
            .await
            .map_err(ApiError::from)?;
        let currency = self.currency.clone();
        let stream = ReceiverStream::new(rx).map(move |event| {
            let event = match event {
                RunEvent::Stdout(b) => pb::run_response::Event::Stdout(b.to_vec()),
                RunEvent::Stderr(b) => pb::run_response::Event::Stderr(b.to_vec()),
                RunEvent::Exit(result) => pb::run_response::Event::Exit(pb::RunExit {
                    status: status_pb(result.exit.status) as i32,
                    exit_code: result.exit.exit_code,
                    message: result.exit.message,
                    fuel_used: result.exit.fuel_used,
                    duration_ms: result.exit.wall.as_millis() as u64,
                    peak_memory_bytes: result.exit.peak_memory_bytes,
                    changed_paths: result.changed_paths,
                    persisted: result.persisted,
                    cost: Some(llmesh_proto::common::v1::Money {
                        micros: result.cost_micros,
                        currency: currency.clone(),
                    }),
                }),
            };
            Ok(pb::RunResponse { event: Some(event) })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

//! Generated types and gRPC stubs for the llmesh contracts in proto/. No logic lives here.

#![allow(clippy::all, missing_docs)]

/// The encoded `FileDescriptorSet` of every llmesh contract, for server reflection and for
/// tests that enumerate RPCs.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/llmesh_descriptor.bin"));

/// Every method marked `idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT` in proto/,
/// as "/package.Service/Method", sorted: the calls a client may retry after UNAVAILABLE.
pub const RETRY_SAFE_METHODS: &[&str] = include!(concat!(env!("OUT_DIR"), "/llmesh_retry_safe.rs"));

/// Whether a method path is marked safe to retry in proto/.
pub fn retry_safe(path: &str) -> bool {
    RETRY_SAFE_METHODS.binary_search(&path).is_ok()
}

/// Every method that answers with a stream, as "/package.Service/Method", sorted.
pub const STREAMING_METHODS: &[&str] = include!(concat!(env!("OUT_DIR"), "/llmesh_streaming.rs"));

/// Whether a method path answers with a stream.
pub fn streaming(path: &str) -> bool {
    STREAMING_METHODS.binary_search(&path).is_ok()
}

pub mod common {
    pub mod v1 {
        tonic::include_proto!("llmesh.common.v1");
    }
}

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("llmesh.auth.v1");
    }
}

pub mod llm {
    pub mod v1 {
        tonic::include_proto!("llmesh.llm.v1");
    }
}

pub mod billing {
    pub mod v1 {
        tonic::include_proto!("llmesh.billing.v1");
    }
}

pub mod chat {
    pub mod v1 {
        tonic::include_proto!("llmesh.chat.v1");
    }
}

pub mod sandbox {
    pub mod v1 {
        tonic::include_proto!("llmesh.sandbox.v1");
    }
}

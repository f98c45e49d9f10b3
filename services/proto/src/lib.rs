//! Generated types and gRPC stubs for the llmesh contracts in proto/. No logic lives here.

#![allow(clippy::all, missing_docs)]

/// The encoded `FileDescriptorSet` of every llmesh contract, for server reflection and for
/// tests that enumerate RPCs.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/llmesh_descriptor.bin"));

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

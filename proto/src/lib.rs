//! Generated protobuf and gRPC code for konnect: the only wire and persisted schema.
//! The node's `admin` and `raft` layers and the client use it; nothing else should.

pub mod state {
    pub mod v1 {
        tonic::include_proto!("konnect.state.v1");
    }
}

pub mod peer {
    pub mod v1 {
        tonic::include_proto!("konnect.peer.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("konnect.admin.v1");
    }
}

/// Encoded `FileDescriptorSet` of every konnect .proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/konnect_descriptor.bin"));

pub mod json;

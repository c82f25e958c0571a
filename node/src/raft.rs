//! The Raft layer: openraft's type configuration, and construction of a node's Raft instance
//! from its log store, state machine and peer network.
//!
//! Architecture invariant: this layer and `admin` are the only ones that know protobuf types;
//! the command type carried by the log (`Command`) is the protobuf message itself, so what is
//! written to disk is exactly the schema in `proto/`.

pub mod apply;
pub mod codec;
pub mod log_store;
pub mod network;
pub mod peer_service;
pub mod proposer;
pub mod state;
pub mod state_machine;

use std::fmt;

use konnect_proto::state::v1 as pb;

pub type NodeId = u64;

/// What the membership records about each node: where to reach it and which zone it is in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMeta {
    pub peer_addr: String,
    pub admin_addr: String,
    pub zone: String,
    pub proxy_addr: String,
    pub status_addr: String,
}

impl fmt::Display for NodeMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (zone {})", self.peer_addr, self.zone)
    }
}

openraft::declare_raft_types!(
    /// konnect's Raft types: commands and results are the protobuf messages of `state.proto`;
    /// snapshots are files, so building and installing one streams instead of holding it in memory.
    pub TypeConfig:
        D = pb::Command,
        R = pb::CommandResult,
        NodeId = NodeId,
        Node = NodeMeta,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogId = openraft::LogId<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeMeta>;

/// Turns any displayable error into the openraft storage error for `subject`/`verb`.
pub(crate) fn storage_err(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

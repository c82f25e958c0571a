//! Incoming peer traffic on `--peer-addr`: Raft RPCs handed to openraft, bootstrap
//! identification, and writes, read indexes and membership changes forwarded by followers.
//!
//! Every call from a node of another cluster (its `x-konnect-cluster` differs from ours) is
//! refused with FAILED_PRECONDITION before anything else happens.

use konnect_proto::peer::v1 as peer;
use konnect_proto::peer::v1::peer_server::Peer;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use tonic::{Request, Response, Status};

use super::codec::*;
use super::network::ClusterIdentity;
use super::proposer::Proposer;
use super::{NodeId, NodeMeta, Raft};

pub struct PeerService {
    pub node_id: NodeId,
    pub meta: NodeMeta,
    pub raft: Raft,
    pub identity: ClusterIdentity,
    pub proposer: Proposer,
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

fn malformed(e: DecodeError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        req: Request<peer::AppendEntriesRequest>,
    ) -> Result<Response<peer::AppendEntriesResponse>, Status> {
        self.identity.check_member(&req)?;
        let r = req.into_inner();
        let entries = r
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed)?;
        let rpc = AppendEntriesRequest {
            vote: vote_from_pb(&r.vote.unwrap_or_default()),
            prev_log_id: opt_log_id_from_pb(&r.prev_log_id),
            entries,
            leader_commit: opt_log_id_from_pb(&r.leader_commit),
        };
        let resp = self.raft.append_entries(rpc).await.map_err(fatal)?;
        use peer::append_entries_response::Result as R;
        let result = match resp {
            AppendEntriesResponse::Success => R::Success(peer::Empty {}),
            AppendEntriesResponse::PartialSuccess(m) => R::PartialSuccess(peer::PartialSuccess {
                matching: opt_log_id_to_pb(&m),
            }),
            AppendEntriesResponse::Conflict => R::Conflict(peer::Empty {}),
            AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(&v)),
        };
        Ok(Response::new(peer::AppendEntriesResponse {
            result: Some(result),
        }))
    }

    async fn vote(
        &self,
        req: Request<peer::VoteRequest>,
    ) -> Result<Response<peer::VoteResponse>, Status> {
        self.identity.check_member(&req)?;
        let r = req.into_inner();
        let rpc = VoteRequest {
            vote: vote_from_pb(&r.vote.unwrap_or_default()),
            last_log_id: opt_log_id_from_pb(&r.last_log_id),
        };
        let resp = self.raft.vote(rpc).await.map_err(fatal)?;
        Ok(Response::new(peer::VoteResponse {
            vote: Some(vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: opt_log_id_to_pb(&resp.last_log_id),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<peer::InstallSnapshotRequest>,
    ) -> Result<Response<peer::InstallSnapshotResponse>, Status> {
        self.identity.check_member(&req)?;
        let r = req.into_inner();
        let meta = r
            .meta
            .as_ref()
            .map(snapshot_meta_from_pb)
            .ok_or_else(|| Status::invalid_argument("install-snapshot without meta"))?;
        let rpc = InstallSnapshotRequest {
            vote: vote_from_pb(&r.vote.unwrap_or_default()),
            meta,
            offset: r.offset,
            data: r.data,
            done: r.done,
        };
        use peer::install_snapshot_response::Result as R;
        let result = match self.raft.install_snapshot(rpc).await {
            Ok(resp) => R::Vote(vote_to_pb(&resp.vote)),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                let seg = |s: &openraft::SnapshotSegmentId| peer::SnapshotSegment {
                    snapshot_id: s.id.clone(),
                    offset: s.offset,
                };
                R::Mismatch(peer::SnapshotMismatch {
                    expect: Some(seg(&m.expect)),
                    got: Some(seg(&m.got)),
                })
            }
            Err(RaftError::Fatal(e)) => return Err(fatal(e)),
        };
        Ok(Response::new(peer::InstallSnapshotResponse {
            result: Some(result),
        }))
    }

    async fn identify(
        &self,
        req: Request<peer::IdentifyRequest>,
    ) -> Result<Response<peer::IdentifyResponse>, Status> {
        self.identity.check(&req)?;
        let m = self.raft.metrics().borrow().clone();
        let has_raft_state = m.vote.leader_id.term > 0 || m.last_log_index.is_some();
        Ok(Response::new(peer::IdentifyResponse {
            node_id: self.node_id,
            info: Some(node_to_pb(&self.meta)),
            cluster_id: self
                .identity
                .get()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            has_raft_state,
        }))
    }

    async fn forward(
        &self,
        req: Request<peer::ForwardRequest>,
    ) -> Result<Response<peer::ForwardResponse>, Status> {
        self.identity.check_member(&req)?;
        let cmd = req
            .into_inner()
            .command
            .ok_or_else(|| Status::invalid_argument("forward without a command"))?;
        let (log_index, result) = self
            .proposer
            .write_forwarded(cmd)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(peer::ForwardResponse {
            result: Some(result),
            log_index,
        }))
    }

    async fn read_index(
        &self,
        req: Request<peer::ReadIndexRequest>,
    ) -> Result<Response<peer::ReadIndexResponse>, Status> {
        self.identity.check_member(&req)?;
        let index = self
            .proposer
            .read_index_here()
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(peer::ReadIndexResponse { index }))
    }

    async fn change_membership(
        &self,
        req: Request<peer::ChangeMembershipRequest>,
    ) -> Result<Response<peer::ChangeMembershipResponse>, Status> {
        self.identity.check_member(&req)?;
        let change = req
            .into_inner()
            .change
            .ok_or_else(|| Status::invalid_argument("membership change without a change"))?;
        self.proposer
            .change_membership_here(change)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(peer::ChangeMembershipResponse {}))
    }
}

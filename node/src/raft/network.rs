//! Outgoing peer traffic: openraft's `RaftNetwork` over tonic to other nodes' `--peer-addr`,
//! and the shared pool of peer channels that bootstrap and write forwarding also use.
//!
//! Every request carries this node's cluster id (`x-konnect-cluster`) once it has one, so a
//! node of another cluster refuses it. With `--peer-tls-*`, every channel is `https://` with
//! the cluster CA as its only root and this node's certificate as its client identity, and a
//! TLS failure is reported (and logged) as such, saying what to fix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use konnect_proto::peer::v1 as peer;
use konnect_proto::peer::v1::peer_client::PeerClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::SnapshotSegmentId;
use tonic::transport::{Channel, Endpoint};

use super::codec::*;
use super::state::StateReader;
use super::{NodeId, NodeMeta, TypeConfig};
use crate::control_tls::{tls_failure, PeerClientTls};

pub const CLUSTER_HEADER: &str = "x-konnect-cluster";

/// This node's cluster id, known once the InitCluster entry has been applied.
#[derive(Clone)]
pub struct ClusterIdentity {
    reader: StateReader,
    cached: Arc<ArcSwapOption<String>>,
}

impl ClusterIdentity {
    pub fn new(reader: StateReader) -> ClusterIdentity {
        ClusterIdentity {
            reader,
            cached: Arc::new(ArcSwapOption::empty()),
        }
    }

    pub fn get(&self) -> Option<Arc<String>> {
        if let Some(id) = self.cached.load_full() {
            return Some(id);
        }
        // Not cached yet: it may have been applied (or installed by snapshot) since.
        let id = Arc::new(self.reader.cluster_id().ok()??);
        self.cached.store(Some(id.clone()));
        Some(id)
    }

    /// Adds the cluster header to an outgoing request.
    pub fn stamp<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(id) = self.get() {
            if let Ok(v) = id.parse() {
                req.metadata_mut().insert(CLUSTER_HEADER, v);
            }
        }
    }

    /// Refuses a request from a node of another cluster. Used alone for `Identify`, which a
    /// node that is in no cluster yet may call.
    pub fn check<T>(&self, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let theirs = req
            .metadata()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok());
        match (self.get(), theirs) {
            (Some(ours), Some(theirs)) if ours.as_str() != theirs => Err(tonic::Status::failed_precondition(format!(
                "cluster id mismatch: this node belongs to cluster {ours}, the sender to cluster {theirs}"
            ))),
            _ => Ok(()),
        }
    }

    /// Like [`check`](Self::check), and once this node belongs to a cluster the sender must
    /// say it belongs to the same one: Raft traffic, forwarded writes and membership changes
    /// come only from members (which all know the id once the first entry is applied).
    /// Without `--peer-tls-*` this is all that keeps strangers out; with it, only holders of
    /// a certificate from the cluster CA get this far.
    pub fn check_member<T>(&self, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
        self.check(req)?;
        match (self.get(), req.metadata().get(CLUSTER_HEADER)) {
            (Some(ours), None) => Err(tonic::Status::failed_precondition(format!(
                "this node belongs to cluster {ours}; the request carries no cluster id"
            ))),
            _ => Ok(()),
        }
    }
}

/// A TLS failure towards one peer is logged at warn level at most this often.
const TLS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Lazily connected channels to peers, by peer address, shared by every user of the peer port.
#[derive(Clone)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    pub identity: ClusterIdentity,
    connect_timeout: Duration,
    /// `--peer-tls-*`: dial `https://` with mutual TLS; `None`: plain `http://`.
    tls: Option<PeerClientTls>,
    /// When a TLS failure towards each peer was last logged at warn level.
    tls_logged: Arc<Mutex<HashMap<String, Instant>>>,
}

impl PeerChannels {
    pub fn new(
        identity: ClusterIdentity,
        connect_timeout: Duration,
        tls: Option<PeerClientTls>,
    ) -> PeerChannels {
        PeerChannels {
            channels: Arc::new(Mutex::new(HashMap::new())),
            identity,
            connect_timeout,
            tls,
            tls_logged: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn client(&self, peer_addr: &str) -> Result<PeerClient<Channel>, tonic::Status> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(peer_addr) {
            return Ok(PeerClient::new(ch.clone()).max_decoding_message_size(usize::MAX));
        }
        let bad_address = |e: tonic::transport::Error| {
            tonic::Status::invalid_argument(format!("bad peer address {peer_addr:?}: {e}"))
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Endpoint::from_shared(format!("{scheme}://{peer_addr}")).map_err(bad_address)?;
        if let Some(tls) = &self.tls {
            endpoint = tls
                .configure(endpoint, self.connect_timeout)
                .map_err(bad_address)?;
        }
        let ch = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        map.insert(peer_addr.to_string(), ch.clone());
        Ok(PeerClient::new(ch).max_decoding_message_size(usize::MAX))
    }

    /// Says what failed when a call to the peer at `peer_addr` failed in the TLS handshake
    /// (and logs it, at most every `TLS_LOG_EVERY` per peer); other failures pass unchanged.
    pub fn explain(&self, peer_addr: &str, status: tonic::Status) -> tonic::Status {
        let Some(reason) = tls_failure(&status) else {
            return status;
        };
        let message = format!("TLS handshake with the node at {peer_addr} failed: {reason}");
        let now = Instant::now();
        let loud = {
            let mut logged = self.tls_logged.lock().unwrap_or_else(|p| p.into_inner());
            match logged.get(peer_addr) {
                Some(at) if now.duration_since(*at) < TLS_LOG_EVERY => false,
                _ => {
                    logged.insert(peer_addr.to_string(), now);
                    true
                }
            }
        };
        if loud {
            tracing::warn!(peer = %peer_addr, "{message}");
        }
        tonic::Status::unavailable(message)
    }

    /// Builds a request with the cluster header and a deadline.
    pub fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        self.identity.stamp(&mut req);
        req
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerChannels {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeMeta) -> PeerConnection {
        PeerConnection {
            target,
            peer_addr: node.peer_addr.clone(),
            client: self.client(&node.peer_addr),
            channels: self.clone(),
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    target: NodeId,
    peer_addr: String,
    client: Result<PeerClient<Channel>, tonic::Status>,
    channels: PeerChannels,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeMeta, RaftError<NodeId, E>>>;

fn rpc_error<E: std::error::Error>(
    status: tonic::Status,
) -> RPCError<NodeId, NodeMeta, RaftError<NodeId, E>> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl PeerConnection {
    // The error type is the one openraft's `RaftNetwork` methods return; boxing it here would
    // only move the unboxing into each of them.
    #[allow(clippy::result_large_err)]
    fn client<E: std::error::Error>(
        &self,
    ) -> Result<PeerClient<Channel>, RPCError<NodeId, NodeMeta, RaftError<NodeId, E>>> {
        self.client
            .clone()
            .map_err(|s| RPCError::Network(NetworkError::new(&s)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let msg = peer::AppendEntriesRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            prev_log_id: opt_log_id_to_pb(&rpc.prev_log_id),
            entries: rpc.entries.iter().map(entry_to_pb).collect(),
            leader_commit: opt_log_id_to_pb(&rpc.leader_commit),
        };
        let req = self.channels.request(msg, option.hard_ttl());
        let resp = self
            .client()?
            .append_entries(req)
            .await
            .map_err(|s| rpc_error(self.channels.explain(&self.peer_addr, s)))?
            .into_inner();
        use peer::append_entries_response::Result as R;
        Ok(match resp.result {
            Some(R::Success(_)) => AppendEntriesResponse::Success,
            Some(R::PartialSuccess(p)) => {
                AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(&p.matching))
            }
            Some(R::Conflict(_)) => AppendEntriesResponse::Conflict,
            Some(R::HigherVote(v)) => AppendEntriesResponse::HigherVote(vote_from_pb(&v)),
            None => {
                return Err(RPCError::Network(NetworkError::new(
                    &tonic::Status::internal("empty append-entries response"),
                )))
            }
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let msg = peer::InstallSnapshotRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            meta: Some(snapshot_meta_to_pb(&rpc.meta)),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let req = self.channels.request(msg, option.hard_ttl());
        let resp = self
            .client()?
            .install_snapshot(req)
            .await
            .map_err(|s| rpc_error(self.channels.explain(&self.peer_addr, s)))?
            .into_inner();
        use peer::install_snapshot_response::Result as R;
        match resp.result {
            Some(R::Vote(v)) => Ok(InstallSnapshotResponse {
                vote: vote_from_pb(&v),
            }),
            Some(R::Mismatch(m)) => {
                let seg = |s: Option<peer::SnapshotSegment>| {
                    let s = s.unwrap_or_default();
                    SnapshotSegmentId {
                        id: s.snapshot_id,
                        offset: s.offset,
                    }
                };
                Err(RPCError::RemoteError(RemoteError::new(
                    self.target,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                        expect: seg(m.expect),
                        got: seg(m.got),
                    })),
                )))
            }
            None => Err(RPCError::Network(NetworkError::new(
                &tonic::Status::internal("empty install-snapshot response"),
            ))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let msg = peer::VoteRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            last_log_id: opt_log_id_to_pb(&rpc.last_log_id),
        };
        let req = self.channels.request(msg, option.hard_ttl());
        let resp = self
            .client()?
            .vote(req)
            .await
            .map_err(|s| rpc_error(self.channels.explain(&self.peer_addr, s)))?
            .into_inner();
        Ok(VoteResponse {
            vote: vote_from_pb(&resp.vote.unwrap_or_default()),
            vote_granted: resp.vote_granted,
            last_log_id: opt_log_id_from_pb(&resp.last_log_id),
        })
    }
}

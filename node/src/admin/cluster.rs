//! `konnect.admin.v1.Cluster`: init, status and membership changes.

use std::time::{Duration, Instant};

use konnect_proto::admin::v1 as api;
use konnect_proto::admin::v1::cluster_server::Cluster;
use konnect_proto::peer::v1 as peer;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Permission};
use super::{count_request, AdminError};
use crate::bootstrap;
use crate::node::NodeHandle;
use crate::raft::codec::node_to_pb;

pub struct ClusterService {
    pub node: NodeHandle,
    pub auth: Authenticator,
}

impl ClusterService {
    fn members(&self) -> Vec<api::Member> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let last = metrics.last_log_index.unwrap_or(0);
        self.node
            .proposer
            .members()
            .into_iter()
            .map(|(id, (meta, voter))| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id))
                    .map(|m| m.map_or(0, |l| l.index));
                let matched = if id == metrics.id && metrics.state == ServerState::Leader {
                    Some(last)
                } else {
                    matched
                };
                api::Member {
                    node_id: id,
                    info: Some(node_to_pb(&meta)),
                    role: if voter { "voter" } else { "learner" }.into(),
                    matched_index: matched,
                    lag: matched.map(|m| last.saturating_sub(m)),
                }
            })
            .collect()
    }
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn init(
        &self,
        _req: Request<api::InitRequest>,
    ) -> Result<Response<api::InitResponse>, Status> {
        count_request("Init");
        let done = bootstrap::init_cluster(&self.node).await?;
        Ok(Response::new(api::InitResponse {
            cluster_id: done.cluster_id,
            admin_token: done.admin_token,
            members: self.members(),
        }))
    }

    async fn status(
        &self,
        req: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        count_request("Status");
        self.auth.authorize(&req, Permission::Read).await?;
        let m = self.node.raft.metrics().borrow().clone();
        // From disk, purged first (`OnDisk`'s invariant): openraft's metrics can show the log
        // purged past the snapshot while a follower installs one.
        let purged_index = self.node.on_disk.purged.get();
        let snapshot_index = self.node.on_disk.snapshot.get();
        Ok(Response::new(api::StatusResponse {
            cluster_id: self
                .node
                .channels
                .identity
                .get()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            node_id: m.id,
            role: role(m.state).into(),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index,
            purged_index,
            members: self.members(),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }))
    }

    async fn add_node(
        &self,
        req: Request<api::AddNodeRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        count_request("AddNode");
        self.auth.authorize(&req, Permission::Membership).await?;
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(AdminError::invalid("node_id: node ids start at 1").into());
        }
        if r.peer_addr.is_empty() {
            return Err(
                AdminError::invalid("peer_addr: the new node's --peer-addr is required").into(),
            );
        }
        let who = bootstrap::identify(
            &self.node,
            &r.peer_addr,
            Instant::now() + Duration::from_secs(10),
        )
        .await?;
        if who.node_id != r.node_id {
            return Err(AdminError::FailedPrecondition(format!(
                "the node at {} says it is node {}, not {}",
                r.peer_addr, who.node_id, r.node_id
            ))
            .into());
        }
        if !who.cluster_id.is_empty() {
            return Err(AdminError::FailedPrecondition(format!(
                "the node at {} already belongs to cluster {}",
                r.peer_addr, who.cluster_id
            ))
            .into());
        }
        let mut info = who.info.unwrap_or_default();
        info.peer_addr = r.peer_addr.clone();
        self.node
            .proposer
            .change_membership(peer::change_membership_request::Change::Add(
                peer::AddNode {
                    node_id: r.node_id,
                    info: Some(info),
                    learner_only: r.learner_only,
                },
            ))
            .await
            .map_err(AdminError::from)?;
        Ok(Response::new(api::MembershipResponse {
            members: self.members(),
        }))
    }

    async fn remove_node(
        &self,
        req: Request<api::RemoveNodeRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        count_request("RemoveNode");
        self.auth.authorize(&req, Permission::Membership).await?;
        let id = req.into_inner().node_id;
        self.node
            .proposer
            .change_membership(peer::change_membership_request::Change::RemoveNodeId(id))
            .await
            .map_err(AdminError::from)?;
        Ok(Response::new(api::MembershipResponse {
            members: self.members(),
        }))
    }
}

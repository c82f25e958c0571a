//! Forming a cluster: `cluster init` (and `--dev` on first start) asks every node of `--peers`
//! who it is over the peer port, initialises Raft membership with their zones and addresses,
//! and commits the cluster id and the first admin token as the first command.
//!
//! Allowed once per cluster: the InitCluster command is refused by the state machine when a
//! cluster id exists, so two concurrent inits cannot both succeed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use konnect_proto::peer::v1 as peer;
use konnect_proto::state::v1 as pb;
use rand::RngCore;

use crate::admin::auth::new_admin_token;
use crate::admin::{command_outcome, AdminError};
use crate::node::NodeHandle;
use crate::raft::codec::node_from_pb;
use crate::raft::{NodeId, NodeMeta};

/// How long init waits for peers that are still starting.
const PEER_WAIT: Duration = Duration::from_secs(15);

pub struct Initialised {
    pub cluster_id: String,
    /// The first admin token, in clear: shown once, never stored.
    pub admin_token: String,
}

/// Asks the node at `peer_addr` who it is, retrying while it is starting up.
pub async fn identify(
    node: &NodeHandle,
    peer_addr: &str,
    deadline: Instant,
) -> Result<peer::IdentifyResponse, AdminError> {
    loop {
        let mut client = node
            .channels
            .client(peer_addr)
            .map_err(|s| AdminError::invalid(s.message().to_string()))?;
        let req = node
            .channels
            .request(peer::IdentifyRequest {}, Duration::from_secs(3));
        let answer = client
            .identify(req)
            .await
            .map_err(|s| (crate::control_tls::tls_failure(&s).is_some(), s));
        match answer {
            Ok(r) => return Ok(r.into_inner()),
            // A certificate problem does not go away by waiting: say so at once.
            Err((true, s)) => {
                return Err(AdminError::FailedPrecondition(
                    node.channels.explain(peer_addr, s).message().to_string(),
                ))
            }
            Err((_, s)) if s.code() == tonic::Code::FailedPrecondition => {
                return Err(AdminError::FailedPrecondition(format!(
                    "the node at {peer_addr} refused: {}",
                    s.message()
                )))
            }
            Err((_, s)) if Instant::now() >= deadline => {
                return Err(AdminError::Unavailable(format!(
                    "the node at {peer_addr} did not answer on its peer port: {}; is it running, with --peer-tls-* if and only if this node has them?",
                    s.message()
                )))
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn init_cluster(node: &NodeHandle) -> Result<Initialised, AdminError> {
    // A member that has not applied the first entry yet catches up before answering, so
    // "init twice" says so on every node, not only on those that are up to date.
    let has_raft_state = node
        .raft
        .is_initialized()
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    if has_raft_state && node.channels.identity.get().is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(3), node.proposer.linearizable_barrier())
            .await;
    }
    if let Some(id) = node.channels.identity.get() {
        return Err(AdminError::AlreadyExists(format!(
            "the cluster is already initialised (cluster id {id}); init runs once per cluster"
        )));
    }
    let peers = &node.settings.peers;
    if peers.is_empty() {
        return Err(AdminError::FailedPrecondition(
            "this node was started without --peers, so it cannot form a cluster; start it with --peers or add it to an existing cluster with `cluster add-node`".into(),
        ));
    }

    // Learn every member's zone and addresses; refuse nodes that belong elsewhere.
    let deadline = Instant::now() + PEER_WAIT;
    let mut members: BTreeMap<NodeId, NodeMeta> = BTreeMap::new();
    // Each member is known at its --peers address, not the address it binds (a node bound to
    // 0.0.0.0, or known by a DNS name as in a Kubernetes StatefulSet, is reached that way).
    for (id, addr) in peers {
        if *id == node.settings.node_id {
            let mut me = node.meta.clone();
            me.peer_addr = addr.clone();
            members.insert(*id, me);
            continue;
        }
        let who = identify(node, addr, deadline).await?;
        if who.node_id != *id {
            return Err(AdminError::FailedPrecondition(format!(
                "--peers lists node {id} at {addr}, but the node there says it is node {}",
                who.node_id
            )));
        }
        if !who.cluster_id.is_empty() {
            return Err(AdminError::FailedPrecondition(format!(
                "node {id} at {addr} already belongs to cluster {}",
                who.cluster_id
            )));
        }
        let mut meta = node_from_pb(&who.info.unwrap_or_default());
        meta.peer_addr = addr.clone();
        members.insert(*id, meta);
    }

    let initialised = node
        .raft
        .is_initialized()
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    if !initialised {
        if let Err(e) = node.raft.initialize(members).await {
            // Another init raced us on another node; the InitCluster command below decides.
            tracing::warn!(error = %e, "raft membership already initialised");
        }
    }

    let mut cluster_id = [0u8; 16];
    rand::rng().fill_bytes(&mut cluster_id);
    let cluster_id = hex::encode(cluster_id);
    let (admin_token, stored) = new_admin_token("initial-admin", "admin", crate::clock::unix_ms());
    let cmd = pb::Command {
        leader_time_unix_ms: 0,
        request_id: String::new(),
        actor: "cluster-init".into(),
        actor_name: String::new(),
        op: Some(pb::command::Op::InitCluster(pb::InitCluster {
            cluster_id: cluster_id.clone(),
            first_token: Some(stored),
        })),
    };
    let (_, result) = node.proposer.write(cmd).await?;
    command_outcome(result)?;
    tracing::info!(%cluster_id, "cluster initialised");
    Ok(Initialised {
        cluster_id,
        admin_token,
    })
}

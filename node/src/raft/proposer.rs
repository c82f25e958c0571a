//! The way into the replicated state: proposes commands (stamping leader time), forwards them
//! to the leader when this node is a follower, serves linearizable read indexes, and performs
//! membership changes one at a time.
//!
//! Invariant: time enters the log only here, on the leader, as `leader_time_unix_ms`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use konnect_proto::peer::v1 as peer;
use konnect_proto::state::v1 as pb;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use super::network::PeerChannels;
use super::{NodeId, NodeMeta, Raft};

/// Why a write or read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader is reachable ({0}); the cluster may have lost quorum, retry later")]
    NoLeader(String),
    /// This node leads, but its proposal did not commit within the write deadline (seconds):
    /// it cannot reach a quorum. The entry stays in its log and may still commit.
    #[error(
        "this node leads but cannot reach a quorum of the cluster: the write did not commit \
         within {0}s (it may still take effect once the quorum is back); retry later"
    )]
    NoQuorum(u64),
    #[error("{0}")]
    Rejected(String),
    #[error("another membership change is in progress; wait for it to finish and retry")]
    MembershipBusy,
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl ProposeError {
    /// The gRPC status a peer answers with, so the forwarding node can tell the cases apart.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            ProposeError::NoLeader(_) | ProposeError::NoQuorum(_) => {
                tonic::Status::unavailable(self.to_string())
            }
            ProposeError::Rejected(_) => tonic::Status::failed_precondition(self.to_string()),
            ProposeError::MembershipBusy => tonic::Status::aborted(self.to_string()),
            ProposeError::Fatal(_) => tonic::Status::unavailable(self.to_string()),
        }
    }

    fn from_status(s: tonic::Status) -> ProposeError {
        match s.code() {
            tonic::Code::FailedPrecondition => ProposeError::Rejected(s.message().to_string()),
            tonic::Code::Aborted => ProposeError::MembershipBusy,
            _ => ProposeError::NoLeader(s.message().to_string()),
        }
    }
}

/// How long a write keeps trying to find a leader before giving up.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `cluster add-node` waits for a new node to catch up before promoting it.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    channels: PeerChannels,
    applied: watch::Receiver<u64>,
    membership_lock: Arc<Mutex<()>>,
    /// Writes waiting to be proposed by the batcher.
    queue: mpsc::Sender<Pending>,
}

/// One write waiting for the batcher, and where its outcome goes.
struct Pending {
    cmd: pb::Command,
    reply: oneshot::Sender<Result<Attempt<(u64, pb::CommandResult)>, ProposeError>>,
}

/// Most writes grouped into one log entry.
const MAX_BATCH: usize = 256;
/// Largest encoded size of one batch entry (about: the write that crosses it still joins).
/// Kept to what one AppendEntries carries (`log_store::MAX_APPEND_BYTES`), so an entry reaches
/// a follower and is fsynced there within the RPC timeout.
const MAX_BATCH_BYTES: usize = super::log_store::MAX_APPEND_BYTES;
/// Log entries proposed at once; beyond this, writes wait and are grouped.
const MAX_IN_FLIGHT: usize = 4;

/// Group commit: writes that arrive while earlier entries are being committed are proposed
/// together as one `Batch` entry, so one replication round and one fsync serve them all.
/// A lone write on an idle node is proposed at once, unbatched.
async fn run_batcher(raft: Raft, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = first.cmd.encoded_len();
        let mut group = vec![first];
        while group.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.cmd.encoded_len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            propose_group(&raft, group).await;
        });
    }
}

async fn propose_group(raft: &Raft, mut group: Vec<Pending>) {
    let now = crate::clock::unix_ms();
    let single = group.len() == 1;
    let mut cmd = if single {
        group[0].cmd.clone()
    } else {
        pb::Command {
            leader_time_unix_ms: 0,
            actor: "batch".into(),
            actor_name: String::new(),
            request_id: String::new(),
            op: Some(pb::command::Op::Batch(pb::Batch {
                commands: group.iter().map(|p| p.cmd.clone()).collect(),
            })),
        }
    };
    cmd.leader_time_unix_ms = now;
    let outcome = raft.client_write(cmd).await;
    match outcome {
        Ok(resp) => {
            let index = resp.log_id.index;
            if single {
                let p = group.remove(0);
                let _ = p.reply.send(Ok(Attempt::Done((index, resp.data))));
                return;
            }
            let results = match resp.data.result {
                Some(pb::command_result::Result::Batch(b)) => b.results,
                _ => Vec::new(),
            };
            let mut results = results.into_iter();
            for p in group {
                let r = results.next().unwrap_or_default();
                let _ = p.reply.send(Ok(Attempt::Done((index, r))));
            }
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            for p in group {
                let _ = p.reply.send(Ok(Attempt::Forward(f.leader_node.clone())));
            }
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            for p in group {
                let _ = p.reply.send(Err(ProposeError::Rejected(e.to_string())));
            }
        }
        Err(RaftError::Fatal(e)) => {
            for p in group {
                let _ = p.reply.send(Err(ProposeError::Fatal(e.to_string())));
            }
        }
    }
}

enum Attempt<T> {
    Done(T),
    Forward(Option<NodeMeta>),
}

impl Proposer {
    pub fn new(raft: Raft, channels: PeerChannels, applied: watch::Receiver<u64>) -> Proposer {
        let (queue, rx) = mpsc::channel(4096);
        tokio::spawn(run_batcher(raft.clone(), rx));
        Proposer {
            raft,
            channels,
            applied,
            membership_lock: Arc::new(Mutex::new(())),
            queue,
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Proposes on this node if it leads; otherwise says where the leader is.
    async fn write_here(
        &self,
        cmd: pb::Command,
    ) -> Result<Attempt<(u64, pb::CommandResult)>, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { cmd, reply })
            .await
            .map_err(|_| ProposeError::Fatal("the proposer stopped".into()))?;
        answer
            .await
            .map_err(|_| ProposeError::Fatal("the proposer stopped".into()))?
    }

    /// Writes `cmd` through the leader, wherever it is; returns the log index and the result.
    ///
    /// Retrying is safe: a failed forward or a leader change may leave the first attempt
    /// committed, so every attempt carries the same request id and the state machine answers
    /// a repeat with the first result instead of applying it twice.
    pub async fn write(
        &self,
        mut cmd: pb::Command,
    ) -> Result<(u64, pb::CommandResult), ProposeError> {
        if cmd.request_id.is_empty() {
            let mut id = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
            cmd.request_id = hex::encode(id);
        }
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut last_error = String::from("no leader elected");
        loop {
            // A leader cut off from its quorum stays leader (openraft does not step down), and
            // its proposal waits until the quorum is back: bounded here, so the caller gets a
            // clear refusal instead of a call that hangs for the length of the outage.
            let here = tokio::time::timeout_at(deadline.into(), self.write_here(cmd.clone()))
                .await
                .map_err(|_| ProposeError::NoQuorum(WRITE_DEADLINE.as_secs()))??;
            match here {
                Attempt::Done(r) => return Ok(r),
                Attempt::Forward(Some(leader)) => {
                    match self.forward(&leader, cmd.clone()).await {
                        Ok(r) => return Ok(r),
                        // The leader moved or is unreachable: look again.
                        Err(ProposeError::NoLeader(e)) => last_error = e,
                        Err(e) => return Err(e),
                    }
                }
                Attempt::Forward(None) => {}
            }
            if Instant::now() >= deadline {
                return Err(ProposeError::NoLeader(last_error));
            }
            self.wait_for_leader_change(deadline).await;
        }
    }

    /// Handles a write forwarded by a follower: proposes it here, never forwards again.
    pub async fn write_forwarded(
        &self,
        cmd: pb::Command,
    ) -> Result<(u64, pb::CommandResult), ProposeError> {
        match self.write_here(cmd).await? {
            Attempt::Done(r) => Ok(r),
            Attempt::Forward(_) => Err(ProposeError::NoLeader(
                "this node is no longer the leader".into(),
            )),
        }
    }

    async fn forward(
        &self,
        leader: &NodeMeta,
        cmd: pb::Command,
    ) -> Result<(u64, pb::CommandResult), ProposeError> {
        let mut client = self
            .channels
            .client(&leader.peer_addr)
            .map_err(|s| ProposeError::NoLeader(s.message().to_string()))?;
        let req = self
            .channels
            .request(peer::ForwardRequest { command: Some(cmd) }, FORWARD_TIMEOUT);
        let resp = client
            .forward(req)
            .await
            .map_err(|s| ProposeError::from_status(self.channels.explain(&leader.peer_addr, s)))?
            .into_inner();
        Ok((resp.log_index, resp.result.unwrap_or_default()))
    }

    /// Waits (bounded) until a leader is known or the known leader changes.
    async fn wait_for_leader_change(&self, deadline: Instant) {
        let before = self.raft.metrics().borrow().current_leader;
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        let _ = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != before,
                "leader change",
            )
            .await;
    }

    /// Index that a linearizable read must see: confirmed by the leader with a quorum.
    async fn read_index(&self) -> Result<u64, ProposeError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            match self.raft.ensure_linearizable().await {
                Ok(id) => return Ok(id.map_or(0, |l| l.index)),
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                    f,
                ))) => {
                    if let Some(leader) = f.leader_node {
                        let mut client = self
                            .channels
                            .client(&leader.peer_addr)
                            .map_err(|s| ProposeError::NoLeader(s.message().to_string()))?;
                        let req = self
                            .channels
                            .request(peer::ReadIndexRequest {}, FORWARD_TIMEOUT);
                        match client.read_index(req).await {
                            Ok(r) => return Ok(r.into_inner().index),
                            Err(s) if Instant::now() >= deadline => {
                                let s = self.channels.explain(&leader.peer_addr, s);
                                return Err(ProposeError::NoLeader(s.message().to_string()));
                            }
                            Err(_) => {}
                        }
                    }
                }
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(
                    e,
                ))) => {
                    if Instant::now() >= deadline {
                        return Err(ProposeError::NoLeader(e.to_string()));
                    }
                }
                Err(RaftError::Fatal(e)) => return Err(ProposeError::Fatal(e.to_string())),
            }
            if Instant::now() >= deadline {
                return Err(ProposeError::NoLeader(
                    "no leader confirmed a read index".into(),
                ));
            }
            self.wait_for_leader_change(deadline).await;
        }
    }

    /// For a forwarded read-index request: only the leader answers.
    pub async fn read_index_here(&self) -> Result<u64, ProposeError> {
        match self.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map_or(0, |l| l.index)),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Fatal(e.to_string())),
            Err(e) => Err(ProposeError::NoLeader(e.to_string())),
        }
    }

    /// Waits until this node has applied the entry at `index` (a write it just made through
    /// the leader), so a read that follows sees it.
    pub async fn wait_applied(&self, index: u64) -> Result<(), ProposeError> {
        let mut applied = self.applied.clone();
        tokio::time::timeout(WRITE_DEADLINE, applied.wait_for(|a| *a >= index))
            .await
            .map_err(|_| {
                ProposeError::NoLeader(format!("this node did not apply index {index} in time"))
            })?
            .map_err(|_| ProposeError::Fatal("state machine stopped".into()))?;
        Ok(())
    }

    /// Waits until this node has applied everything a linearizable read must see.
    pub async fn linearizable_barrier(&self) -> Result<(), ProposeError> {
        let index = self.read_index().await?;
        let mut applied = self.applied.clone();
        tokio::time::timeout(WRITE_DEADLINE, applied.wait_for(|a| *a >= index))
            .await
            .map_err(|_| {
                ProposeError::NoLeader(format!(
                    "this node did not catch up to index {index} in time"
                ))
            })?
            .map_err(|_| ProposeError::Fatal("state machine stopped".into()))?;
        Ok(())
    }

    /// Adds or removes a node, on the leader, one change at a time.
    pub async fn change_membership(
        &self,
        change: peer::change_membership_request::Change,
    ) -> Result<(), ProposeError> {
        let leader = {
            let m = self.raft.metrics().borrow().clone();
            match m.current_leader {
                Some(id) if id == m.id => None,
                Some(id) => m.membership_config.membership().get_node(&id).cloned(),
                None => return Err(ProposeError::NoLeader("no leader elected".into())),
            }
        };
        match leader {
            None => self.change_membership_here(change).await,
            Some(leader) => {
                let mut client = self
                    .channels
                    .client(&leader.peer_addr)
                    .map_err(|s| ProposeError::NoLeader(s.message().to_string()))?;
                let req = self.channels.request(
                    peer::ChangeMembershipRequest {
                        change: Some(change),
                    },
                    // Adding a node waits for it to catch up, which can take a while.
                    LEARNER_CATCH_UP + Duration::from_secs(30),
                );
                client
                    .change_membership(req)
                    .await
                    .map(|_| ())
                    .map_err(|s| {
                        ProposeError::from_status(self.channels.explain(&leader.peer_addr, s))
                    })
            }
        }
    }

    /// The leader's side of a membership change.
    pub async fn change_membership_here(
        &self,
        change: peer::change_membership_request::Change,
    ) -> Result<(), ProposeError> {
        let _guard = self
            .membership_lock
            .try_lock()
            .map_err(|_| ProposeError::MembershipBusy)?;
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return Err(ProposeError::NoLeader(
                "this node is no longer the leader".into(),
            ));
        }
        if metrics
            .membership_config
            .membership()
            .get_joint_config()
            .len()
            > 1
        {
            return Err(ProposeError::MembershipBusy);
        }
        let map_err = |e: RaftError<NodeId, ClientWriteError<NodeId, NodeMeta>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                ProposeError::NoLeader("leadership moved during the change; retry".into())
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ProposeError::Rejected(e.to_string())
            }
            RaftError::Fatal(e) => ProposeError::Fatal(e.to_string()),
        };
        use peer::change_membership_request::Change;
        match change {
            Change::Add(add) => {
                let info = add.info.unwrap_or_default();
                let meta = super::codec::node_from_pb(&info);
                let voters: Vec<NodeId> =
                    metrics.membership_config.membership().voter_ids().collect();
                if voters.contains(&add.node_id) {
                    return Err(ProposeError::Rejected(format!(
                        "node {} is already a voter",
                        add.node_id
                    )));
                }
                // Blocking: returns once the learner has caught up with the leader's log. A node
                // that dies while catching up must not hold the membership lock forever.
                tokio::time::timeout(LEARNER_CATCH_UP, self.raft.add_learner(add.node_id, meta, true))
                    .await
                    .map_err(|_| {
                        ProposeError::Rejected(format!(
                            "node {} did not catch up within {}s; it stays a learner: retry add-node, or remove-node {}",
                            add.node_id,
                            LEARNER_CATCH_UP.as_secs(),
                            add.node_id
                        ))
                    })?
                    .map_err(map_err)?;
                if !add.learner_only {
                    self.raft
                        .change_membership(
                            ChangeMembers::AddVoterIds([add.node_id].into_iter().collect()),
                            false,
                        )
                        .await
                        .map_err(map_err)?;
                }
            }
            Change::RemoveNodeId(id) => {
                let membership = metrics.membership_config.membership();
                if membership.get_node(&id).is_none() {
                    return Err(ProposeError::Rejected(format!("node {id} is not a member")));
                }
                let voters: Vec<NodeId> = membership.voter_ids().collect();
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(ProposeError::Rejected(format!(
                            "node {id} is the only voter; it cannot be removed"
                        )));
                    }
                    self.raft
                        .change_membership(
                            ChangeMembers::RemoveVoters([id].into_iter().collect()),
                            false,
                        )
                        .await
                        .map_err(map_err)?;
                }
                // Learners (and the demoted voter, if retained) leave the node list too.
                let still_there = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .is_some();
                if still_there {
                    self.raft
                        .change_membership(
                            ChangeMembers::RemoveNodes([id].into_iter().collect()),
                            false,
                        )
                        .await
                        .map_err(map_err)?;
                }
            }
        }
        Ok(())
    }

    /// The current members with their metadata, as the membership config records them.
    pub fn members(&self) -> BTreeMap<NodeId, (NodeMeta, bool)> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| (*id, (n.clone(), voters.contains(id))))
            .collect()
    }
}

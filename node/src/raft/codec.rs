//! Conversions between openraft's types and their protobuf form in `konnect.state.v1` and
//! `konnect.peer.v1`. Used for the persisted log, snapshots and the peer RPCs; one place, so
//! a field added to a message is added here once.

use std::collections::{BTreeMap, BTreeSet};

use konnect_proto::peer::v1 as peer;
use konnect_proto::state::v1 as pb;
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, StoredMembership, Vote};

use super::{NodeId, NodeMeta, TypeConfig};

/// A protobuf message that lacked a field the Raft layer needs.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: missing {field}")]
pub struct DecodeError {
    pub what: &'static str,
    pub field: &'static str,
}

fn missing(what: &'static str, field: &'static str) -> DecodeError {
    DecodeError { what, field }
}

pub fn log_id_to_pb(id: &LogId<NodeId>) -> pb::LogId {
    pb::LogId {
        term: id.leader_id.term,
        leader_node_id: id.leader_id.node_id,
        index: id.index,
    }
}

pub fn log_id_from_pb(id: &pb::LogId) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(id.term, id.leader_node_id), id.index)
}

pub fn opt_log_id_to_pb(id: &Option<LogId<NodeId>>) -> Option<pb::LogId> {
    id.as_ref().map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(id: &Option<pb::LogId>) -> Option<LogId<NodeId>> {
    id.as_ref().map(log_id_from_pb)
}

pub fn vote_to_pb(v: &Vote<NodeId>) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: &pb::Vote) -> Vote<NodeId> {
    if v.committed {
        Vote::new_committed(v.term, v.node_id)
    } else {
        Vote::new(v.term, v.node_id)
    }
}

pub fn node_to_pb(n: &NodeMeta) -> pb::NodeInfo {
    pb::NodeInfo {
        peer_addr: n.peer_addr.clone(),
        admin_addr: n.admin_addr.clone(),
        zone: n.zone.clone(),
        proxy_addr: n.proxy_addr.clone(),
        status_addr: n.status_addr.clone(),
    }
}

pub fn node_from_pb(n: &pb::NodeInfo) -> NodeMeta {
    NodeMeta {
        peer_addr: n.peer_addr.clone(),
        admin_addr: n.admin_addr.clone(),
        zone: n.zone.clone(),
        proxy_addr: n.proxy_addr.clone(),
        status_addr: n.status_addr.clone(),
    }
}

pub fn membership_to_pb(m: &Membership<NodeId, NodeMeta>) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::NodeIdSet {
                ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, node_to_pb(n))).collect(),
    }
}

pub fn membership_from_pb(m: &pb::Membership) -> Membership<NodeId, NodeMeta> {
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .iter()
        .map(|c| c.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<NodeId, NodeMeta> = m
        .nodes
        .iter()
        .map(|(id, n)| (*id, node_from_pb(n)))
        .collect();
    Membership::new(configs, nodes)
}

pub fn stored_membership_to_pb(m: &StoredMembership<NodeId, NodeMeta>) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to_pb(m.log_id()),
        membership: Some(membership_to_pb(m.membership())),
    }
}

pub fn stored_membership_from_pb(m: &pb::StoredMembership) -> StoredMembership<NodeId, NodeMeta> {
    let membership = m
        .membership
        .as_ref()
        .map(membership_from_pb)
        .unwrap_or_else(|| Membership::new(vec![], BTreeMap::new()));
    StoredMembership::new(opt_log_id_from_pb(&m.log_id), membership)
}

pub fn entry_to_pb(e: &openraft::Entry<TypeConfig>) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(cmd) => pb::entry::Payload::Normal(cmd.clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<openraft::Entry<TypeConfig>, DecodeError> {
    let log_id = log_id_from_pb(e.log_id.as_ref().ok_or(missing("log entry", "log_id"))?);
    let payload = match e.payload.ok_or(missing("log entry", "payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Normal(cmd) => EntryPayload::Normal(cmd),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)),
    };
    Ok(openraft::Entry { log_id, payload })
}

pub fn snapshot_meta_to_pb(m: &openraft::SnapshotMeta<NodeId, NodeMeta>) -> peer::SnapshotMeta {
    peer::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(&m.last_log_id),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from_pb(m: &peer::SnapshotMeta) -> openraft::SnapshotMeta<NodeId, NodeMeta> {
    openraft::SnapshotMeta {
        last_log_id: opt_log_id_from_pb(&m.last_log_id),
        last_membership: m
            .last_membership
            .as_ref()
            .map(stored_membership_from_pb)
            .unwrap_or_default(),
        snapshot_id: m.snapshot_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_round_trip_through_protobuf() {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            1,
            NodeMeta {
                peer_addr: "127.0.0.1:7101".into(),
                admin_addr: "127.0.0.1:7201".into(),
                zone: "az-a".into(),
                ..Default::default()
            },
        );
        nodes.insert(2, NodeMeta::default());
        let m = Membership::new(vec![[1, 2].into_iter().collect()], nodes);
        let entries = vec![
            openraft::Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(3, 1), 7),
                payload: EntryPayload::Membership(m),
            },
            openraft::Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(3, 1), 8),
                payload: EntryPayload::Normal(pb::Command {
                    leader_time_unix_ms: 42,
                    actor: "t".into(),
                    actor_name: "n".into(),
                    request_id: "r".into(),
                    op: None,
                }),
            },
        ];
        for e in entries {
            let back = entry_from_pb(entry_to_pb(&e)).unwrap();
            assert_eq!(back, e);
        }
    }
}

//! End to end: three real `konnect` processes form a cluster, replicate writes, survive the
//! leader's kill -9, catch up after restart, and grow and shrink by a fourth node that joins
//! from a snapshot.

mod support;

use std::time::Duration;

use support::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_a_follower_is_readable_on_every_node() {
    let cluster = Cluster::start_initialised(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .unwrap();

    let applied = cluster
        .client_of(follower)
        .apply(
            vec![service("echo", 9001), route("echo", "/echo", "echo")],
            vec![],
        )
        .await
        .expect("apply through a follower");
    assert_eq!(applied.changes.len(), 2);

    for n in &cluster.nodes {
        let r = cluster
            .client_of(n.id)
            .get("Route", "echo", true)
            .await
            .unwrap_or_else(|e| panic!("node {} lacks the route: {e}", n.id));
        assert_eq!(r.revision, applied.revision);
    }

    // Every node reports the same members, with their zones, and the same leader.
    let status = cluster.status(follower).await;
    assert_eq!(status.leader_id, Some(leader));
    let zones: Vec<String> = status
        .members
        .iter()
        .map(|m| m.info.clone().unwrap_or_default().zone)
        .collect();
    assert_eq!(zones, vec!["az-a", "az-b", "az-c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_the_restarted_node_catches_up() {
    let mut cluster = Cluster::start_initialised(3, &[]).await;
    let old_leader = cluster.leader().await;
    cluster
        .client_any()
        .apply(vec![service("before", 9001)], vec![])
        .await
        .expect("first write");

    cluster.node(old_leader).kill9();
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);

    let after = cluster
        .client_any()
        .apply(vec![service("after", 9002)], vec![])
        .await
        .expect("write after failover");

    cluster.node(old_leader).start();
    // A linearizable read on the restarted node waits until it has applied the leader's log.
    let r = cluster
        .client_of(old_leader)
        .get("Service", "after", true)
        .await
        .expect("restarted node catches up");
    assert_eq!(r.revision, after.revision);
    let listed = cluster
        .client_of(old_leader)
        .list("Service", "", false)
        .await
        .unwrap();
    let names: Vec<_> = listed.items.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["after", "before"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_from_a_snapshot_after_log_purge_and_leaves_again() {
    let extra = [
        "--snapshot-after-entries",
        "20",
        "--log-keep-after-snapshot",
        "5",
    ];
    let mut cluster = Cluster::start_initialised(3, &extra).await;
    let client = cluster.client_any();
    for i in 0..60 {
        client
            .apply(vec![service(&format!("svc-{i:03}"), 9000 + i)], vec![])
            .await
            .expect("write");
    }
    let leader = cluster.leader().await;
    wait_for(
        "the leader to purge its log after a snapshot",
        Duration::from_secs(20),
        || async {
            let s = cluster.client_of(leader).status().await.ok()?;
            (s.purged_index.unwrap_or(0) > 5).then_some(())
        },
    )
    .await;

    // Node 4 starts empty, with no --peers: it waits to be added.
    let ports = free_ports(3);
    let mut fourth = NodeProc::new(cluster.dir.path(), 4, "az-d", None, &ports, &extra);
    fourth.start();
    let peer_addr = fourth.peer.clone();
    cluster.nodes.push(fourth);

    let members = client
        .add_node(4, &peer_addr, false)
        .await
        .expect("add node 4");
    assert_eq!(members.members.len(), 4);
    let added = members
        .members
        .iter()
        .find(|m| m.node_id == 4)
        .expect("node 4 listed");
    assert_eq!(added.role, "voter");
    assert_eq!(added.info.as_ref().map(|i| i.zone.as_str()), Some("az-d"));
    // The leader's log no longer holds the first entries, so node 4 can only have caught up
    // from a snapshot; its own status reports it once the install is done.
    wait_for(
        "node 4 to report the snapshot it installed",
        Duration::from_secs(20),
        || async {
            let s4 = cluster.client_of(4).status().await.ok()?;
            (s4.snapshot_index.unwrap_or(0) > 0).then_some(())
        },
    )
    .await;
    let listed = cluster
        .client_of(4)
        .list("Service", "", true)
        .await
        .expect("list on node 4");
    assert_eq!(listed.items.len(), 60);

    let after = client.remove_node(4).await.expect("remove node 4");
    assert_eq!(after.members.len(), 3);
    assert!(after.members.iter().all(|m| m.node_id != 4));
    // The cluster still takes writes with three voters.
    client
        .apply(vec![service("after-removal", 9999)], vec![])
        .await
        .expect("write after removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9_of_the_leader() {
    let mut cluster = Cluster::start_initialised(3, &[]).await;
    let victim = cluster.leader().await;
    let client = cluster.client_any();
    let mut acknowledged = Vec::new();
    for i in 0..80u16 {
        if i == 30 {
            cluster.node(victim).kill9();
        }
        if i == 60 {
            cluster.node(victim).start();
        }
        let name = format!("w-{i:03}");
        match client.apply(vec![service(&name, 9000 + i)], vec![]).await {
            Ok(_) => acknowledged.push(name),
            // Unavailable during the election: the write may or may not have happened.
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "unexpected error: {e}"),
        }
    }
    assert!(
        acknowledged.len() >= 60,
        "too few writes acknowledged: {}",
        acknowledged.len()
    );
    for n in &cluster.nodes {
        let listed = cluster
            .client_of(n.id)
            .list("Service", "", true)
            .await
            .expect("list");
        let names: std::collections::BTreeSet<_> =
            listed.items.iter().map(|r| r.name.clone()).collect();
        for w in &acknowledged {
            assert!(
                names.contains(w),
                "node {} lost acknowledged write {w}",
                n.id
            );
        }
    }
}

/// Nodes that bind their peer port on every interface (as in a container) are known to the
/// cluster by their `--peers` addresses, which is how the others reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_known_by_their_peers_addresses_not_the_addresses_they_bind() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<Vec<u16>> = free_ports(9).chunks(3).map(|c| c.to_vec()).collect();
    let peers = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[i][0]))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut node = NodeProc::new(
            dir.path(),
            i as u64 + 1,
            ZONES[i],
            Some(peers.clone()),
            &ports[i],
            &[],
        );
        node.peer = format!("0.0.0.0:{}", ports[i][0]);
        node.start();
        nodes.push(node);
    }
    let mut cluster = Cluster {
        dir,
        nodes,
        token: None,
        certs: None,
    };
    let init = cluster.client_without_token(0).init().await.expect("init");
    cluster.token = Some(init.admin_token);
    cluster.leader().await;
    let status = cluster.status(2).await;
    for m in &status.members {
        let peer = &m.info.as_ref().unwrap().peer_addr;
        assert_eq!(
            peer,
            &format!("127.0.0.1:{}", ports[m.node_id as usize - 1][0])
        );
    }
    // And they work as a cluster: a write through node 3 is read on node 1.
    cluster
        .client_of(3)
        .apply(
            vec![resource("Consumer", "c", serde_json::json!({}))],
            vec![],
        )
        .await
        .expect("write through a follower");
}

/// A leader that lost both followers stays leader (openraft does not step down), so a write
/// through it can never commit: it must be refused with `UNAVAILABLE` and a message that says
/// why, not wait for the length of the outage. Once the followers are back, writes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_its_quorum_refuses_writes_instead_of_hanging() {
    let mut cluster = Cluster::start_initialised(3, &[]).await;
    let leader = cluster.leader().await;
    let followers: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != leader)
        .collect();
    for &f in &followers {
        cluster.node(f).kill9();
    }
    // Far beyond the node's 10 s write deadline: only a write that hangs reaches it.
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        cluster
            .client_of(leader)
            .apply(vec![service("cut-off", 9001)], vec![]),
    )
    .await
    .expect("a write through a leader without its quorum hangs instead of failing");
    let e = refused.expect_err("a write committed without a quorum");
    assert_eq!(e.code(), Code::Unavailable, "unexpected error: {e}");
    assert!(
        e.to_string().contains("cannot reach a quorum"),
        "the refusal does not say why: {e}"
    );

    for &f in &followers {
        cluster.node(f).start();
    }
    cluster
        .client_any()
        .apply(vec![service("after", 9002)], vec![])
        .await
        .expect("write once the followers are back");
}

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

/// A follower whose data dir fills up stops its Raft (openraft treats a failed log write as
/// fatal). It must not linger as a member that never rejoins: it keeps running and says why
/// it is not ready while the disk is full, then, once the disk takes writes again, exits with
/// an error for its supervisor to restart it, and the restarted node catches up. Regression:
/// it used to stay up with Raft stopped for good, ready to no one and never rejoining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_up_exits_once_it_has_room_again_and_rejoins() {
    let mut cluster = Cluster::start_initialised(3, &[]).await;
    let leader = cluster.leader().await;
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    // Move the victim's data onto a small disk of its own, while it is down.
    cluster.node(victim).kill9();
    let data_dir = cluster.node(victim).data_dir.clone();
    let moved = data_dir.with_extension("moved");
    std::fs::rename(&data_dir, &moved).unwrap();
    std::fs::create_dir_all(&data_dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&data_dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a small tmpfs for the data dir needs root (CI runs as root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(data_dir.clone());
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(moved.join("."))
        .arg(&data_dir)
        .status()
        .unwrap();
    assert!(copied.success());
    cluster.node(victim).start();
    let client = cluster.client_of(leader);
    client
        .apply(vec![service("before-full", 9000)], vec![])
        .await
        .expect("write before the disk fills");

    // Fill the disk to the last byte; writes go on through the leader.
    let filler = data_dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 16];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
    }
    let status_addr = cluster.node(victim).status.clone();
    let mut i = 0u16;
    let writer = &client;
    let reason = wait_for(
        "the full follower to say Raft stopped",
        Duration::from_secs(20),
        || {
            i += 1;
            let (client, addr) = (writer, status_addr.clone());
            async move {
                client
                    .apply(vec![service(&format!("while-full-{i}"), 9001)], vec![])
                    .await
                    .expect("the others stay writable");
                let r = http("GET", &addr, "/readyz", &[], "").await;
                let body = String::from_utf8_lossy(&r.body).to_string();
                (r.status == 503 && body.contains("Raft stopped")).then_some(body)
            }
        },
    )
    .await;
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(
        cluster
            .node(victim)
            .log()
            .contains("Raft stopped: this node keeps proxying"),
        "{}",
        cluster.node(victim).log()
    );
    assert!(
        cluster.node(victim).is_running(),
        "a full disk is no reason to exit: the node keeps proxying"
    );
    // Its admin API sends clients elsewhere (a client with several endpoints moves on).
    let refused = cluster
        .client_of(victim)
        .apply(vec![service("through-the-full-node", 9003)], vec![])
        .await
        .expect_err("a node whose Raft stopped takes no writes");
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(
        refused.to_string().contains("try another node"),
        "{refused}"
    );

    // Room again: it exits by itself, saying why, with an error status.
    std::fs::remove_file(&filler).unwrap();
    let status = cluster
        .node(victim)
        .exited_within(Duration::from_secs(20))
        .await
        .expect("the node exits once its disk takes writes again");
    assert!(!status.success(), "{status}");
    let log = cluster.node(victim).log();
    assert!(
        log.contains("exiting so that a restart rejoins the cluster"),
        "{log}"
    );

    // Restarted (as a supervisor would), it has every write, the ones made while it was out
    // included.
    cluster.node(victim).start();
    client
        .apply(vec![service("after-full", 9002)], vec![])
        .await
        .expect("write after the disk is freed");
    let local = &cluster.client_of(victim);
    wait_for(
        "the restarted follower to catch up",
        Duration::from_secs(20),
        || async move {
            let listed = local.list("Service", "", false).await.ok()?;
            let names: std::collections::BTreeSet<_> =
                listed.items.iter().map(|r| r.name.clone()).collect();
            let every = ["before-full", "while-full-1", "after-full"]
                .iter()
                .all(|n| names.contains(*n));
            every.then_some(())
        },
    )
    .await;
}

//! Bad input gets a specific error and changes nothing: init twice, missing or wrong tokens,
//! stale revisions, invalid specs and references, and a node that belongs to another cluster.

mod support;

use konnect_client::Client;
use support::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_twice_is_refused_and_changes_nothing() {
    let cluster = Cluster::start_initialised(3, &[]).await;
    let before = cluster.status(1).await;
    for i in 0..3 {
        let err = cluster.client_without_token(i).init().await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err}");
        assert!(err.message().contains("already initialised"), "{err}");
    }
    let after = cluster.status(1).await;
    assert_eq!(after.cluster_id, before.cluster_id);
    // The first token still works; no second token was created.
    cluster
        .client_of(2)
        .list("Service", "", false)
        .await
        .expect("first token still valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_tokens_get_the_same_unauthenticated_answer() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let url = cluster.nodes[0].admin_url();
    let none = Client::new(vec![url.clone()], None)
        .unwrap()
        .status()
        .await
        .unwrap_err();
    let wrong = Client::new(vec![url.clone()], Some("kadm_00".into()))
        .unwrap()
        .status()
        .await
        .unwrap_err();
    let almost = {
        let mut t = cluster.token.clone().unwrap();
        t.pop();
        t.push('x');
        Client::new(vec![url], Some(t))
            .unwrap()
            .status()
            .await
            .unwrap_err()
    };
    for e in [&none, &wrong, &almost] {
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        assert_eq!(e.message(), none.message(), "answers must not differ");
    }
    let writes = Client::new(vec![cluster.nodes[0].admin_url()], None)
        .unwrap()
        .apply(vec![service("x", 1)], vec![])
        .await
        .unwrap_err();
    assert_eq!(writes.code(), Code::Unauthenticated);
    assert!(cluster
        .client_of(1)
        .list("", "", false)
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_expected_revision_is_refused_and_changes_nothing() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let c = cluster.client_of(1);
    let created = c.create(service("echo", 9001)).await.expect("create");
    let updated = c
        .update(service("echo", 9002), Some(created.revision))
        .await
        .expect("update at the current revision");
    assert!(updated.revision > created.revision);

    let stale = c
        .update(service("echo", 9003), Some(created.revision))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale}");
    assert!(
        stale.message().contains("changed since you read it"),
        "{stale}"
    );
    let stale_delete = c
        .delete("Service", "echo", Some(created.revision))
        .await
        .unwrap_err();
    assert_eq!(stale_delete.code(), Code::Aborted);

    let now = c.get("Service", "echo", false).await.unwrap();
    assert_eq!(now.revision, updated.revision);
    let again = c.create(service("echo", 9004)).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_and_dangling_references_name_the_field_and_change_nothing() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let c = cluster.client_of(1);

    // A valid service and a route to a service that does not exist: neither is applied.
    let err = c
        .apply(
            vec![
                service("billing-svc", 9001),
                route("billing", "/bill", "bill"),
            ],
            vec![],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.write_index(), Some(1));
    assert_eq!(err.message(), "spec.service: unknown service \"bill\"");

    let mut unknown_kind = service("x", 1);
    unknown_kind.kind = "Servise".into();
    let err = c.apply(vec![unknown_kind], vec![]).await.unwrap_err();
    assert!(err.message().contains("unknown kind \"Servise\""), "{err}");

    let mut typo = service("x", 1);
    typo.spec = Some(
        konnect_proto::json::json_to_struct(
            &serde_json::json!({"targets": [{"url": "http://a:1", "wieght": 5}]}),
        )
        .unwrap(),
    );
    let err = c.apply(vec![typo], vec![]).await.unwrap_err();
    assert!(
        err.message()
            .starts_with("spec.targets[0].wieght: unknown field `wieght`"),
        "{err}"
    );

    assert!(
        c.list("", "", false).await.unwrap().items.is_empty(),
        "nothing may be written"
    );

    // A service still used by a route cannot be deleted, alone or by pruning.
    c.apply(
        vec![service("echo", 9001), route("echo", "/echo", "echo")],
        vec![],
    )
    .await
    .unwrap();
    let err = c.delete("Service", "echo", None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("Route \"echo\" refers to it"),
        "{err}"
    );
    let err = c
        .apply(vec![service("other", 9002)], vec!["Service".into()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(c.list("Service", "", false).await.unwrap().items.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_a_peer_that_belongs_to_another_cluster() {
    // Cluster A: one node, id 3, initialised on its own.
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(9);
    let a_peers = format!("3=127.0.0.1:{}", ports[6]);
    let mut a = NodeProc::new(dir.path(), 3, "az-c", Some(a_peers), &ports[6..9], &[]);
    a.start();
    let a_init = Client::new(vec![a.admin_url()], None)
        .unwrap()
        .init()
        .await
        .unwrap();

    // Cluster B lists A's node as its node 3.
    let b_peers = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        ports[0], ports[3], ports[6]
    );
    let mut b1 = NodeProc::new(
        dir.path(),
        1,
        "az-a",
        Some(b_peers.clone()),
        &ports[0..3],
        &[],
    );
    let mut b2 = NodeProc::new(dir.path(), 2, "az-b", Some(b_peers), &ports[3..6], &[]);
    b1.start();
    b2.start();
    let err = Client::new(vec![b1.admin_url()], None)
        .unwrap()
        .init()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message()
            .contains(&format!("already belongs to cluster {}", a_init.cluster_id)),
        "{err}"
    );
    // Nothing changed: B is still uninitialised, A still has only itself.
    let again = Client::new(vec![b2.admin_url()], None)
        .unwrap()
        .init()
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again}");
    let a_status = Client::new(vec![a.admin_url()], Some(a_init.admin_token))
        .unwrap()
        .status()
        .await
        .unwrap();
    assert_eq!(a_status.members.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_changes_and_refuses_compacted_history() {
    use futures::StreamExt;
    let cluster = Cluster::start_initialised(1, &[]).await;
    let c = cluster.client_of(1);
    let first = c.apply(vec![service("a", 1)], vec![]).await.unwrap();

    let mut stream = c.watch("Service", first.revision - 1).await.expect("watch");
    c.apply(vec![service("b", 2)], vec![]).await.unwrap();
    c.delete("Service", "a", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = stream.next().await.expect("stream open").expect("event");
        seen.push((ev.r#type, ev.resource.unwrap().name));
    }
    use konnect_proto::state::v1::EventType;
    assert_eq!(
        seen,
        vec![
            (EventType::Put as i32, "a".to_string()),
            (EventType::Put as i32, "b".to_string()),
            (EventType::Delete as i32, "a".to_string()),
        ]
    );

    // 11,000 changes push the first ones out of the 10,000-event history.
    for batch in 0..11 {
        let items = (0..1000)
            .map(|i| service(&format!("bulk-{batch}-{i}"), 1))
            .collect();
        c.apply(items, vec![]).await.unwrap();
    }
    let mut old = c.watch("Service", first.revision).await.map(|s| s.boxed());
    let err = match &mut old {
        Err(e) => e.to_string(),
        Ok(s) => s.next().await.expect("an item").unwrap_err().to_string(),
    };
    assert!(err.contains("compacted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_through_everything_and_filter_by_labels() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let c = cluster.client_of(1);
    let items = (0..7)
        .map(|i| {
            let mut s = service(&format!("s{i}"), 9000 + i);
            s.labels.insert(
                "tier".into(),
                if i % 2 == 0 { "gold" } else { "free" }.into(),
            );
            s
        })
        .collect();
    c.apply(items, vec![]).await.unwrap();

    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c.list_page("Service", "", 3, &token, false).await.unwrap();
        pages += 1;
        names.extend(page.items.into_iter().map(|r| r.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, (0..7).map(|i| format!("s{i}")).collect::<Vec<_>>());
    assert!(pages >= 3);

    let gold = c.list("Service", "tier=gold", false).await.unwrap();
    assert_eq!(gold.items.len(), 4);
    let not_gold = c.list("Service", "tier!=gold", false).await.unwrap();
    assert_eq!(not_gold.items.len(), 3);
    let err = c.list("Service", "tier", false).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

//! End to end: rate limits against real konnect processes, counted where it matters: at the
//! upstream.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::upstream::Upstream;
use support::*;

/// The proxy address of each listed node, once it serves `/api` with the limit applied.
async fn warmed_proxies(cluster: &Cluster, ids: impl Iterator<Item = u64>) -> Vec<String> {
    let mut proxies = Vec::new();
    for id in ids {
        let proxy = cluster.proxy_addr(id).await;
        wait_for("the route on the node", Duration::from_secs(10), || async {
            let r = http("GET", &proxy, "/api/warm", &[], "").await;
            (r.status == 200 || r.status == 429).then_some(())
        })
        .await;
        proxies.push(proxy);
    }
    proxies
}

/// Sleeps until just after the next window of `window_ms` opens (leader and test share this
/// machine's clock); returns the window's start (unix ms) and when clients must stop so that
/// `margin_ms` is left before it ends.
async fn enter_next_window(window_ms: u64, margin_ms: u64) -> (u64, Instant) {
    let to_next = window_ms - now_ms() % window_ms;
    let start = now_ms() + to_next;
    tokio::time::sleep(Duration::from_millis(to_next + 150)).await;
    (
        start,
        Instant::now() + Duration::from_millis(window_ms - 150 - margin_ms),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strict_limit_holds_across_three_nodes_hammered_at_many_times_the_limit() {
    const LIMIT: u64 = 30;
    const WINDOW_MS: u64 = 5_000;
    let up = Upstream::start("counted").await;
    let cluster = Cluster::start_initialised(3, &[]).await;
    cluster
        .client_any()
        .apply(
            vec![
                resource("Service", "api", json!({"targets": [{"url": up.url()}]})),
                resource("Route", "api", json!({"paths": ["/api"], "service": "api"})),
                resource(
                    "RateLimit",
                    "per-ip",
                    json!({"applies_to": {"route": "api"}, "key": "ip", "limit": LIMIT, "window": "5s"}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    // Every node has the route and the limit before the measured window.
    let proxies = warmed_proxies(&cluster, 1..=3).await;
    // Measure inside one whole window of (leader) time: start just after it opens, stop
    // before it ends, so every admitted request belongs to it.
    let (window_start_ms, window_end) = enter_next_window(WINDOW_MS, 400).await;
    let (ok, limited, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut clients = Vec::new();
    for c in 0..9 {
        let proxy = proxies[c % 3].clone();
        let (ok, limited, other) = (ok.clone(), limited.clone(), other.clone());
        clients.push(tokio::spawn(async move {
            while Instant::now() < window_end {
                match http("GET", &proxy, "/api/x", &[], "").await.status {
                    200 => ok.fetch_add(1, Ordering::SeqCst),
                    429 => limited.fetch_add(1, Ordering::SeqCst),
                    _ => other.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    // The upstream's own count of the window: what arrived while it was open. (On a loaded
    // machine a request admitted at the window's very end may arrive just after it: counting
    // by arrival keeps it out of this window's count, it never adds one.)
    let admitted = up.arrivals_between(window_start_ms, window_start_ms + WINDOW_MS);
    let (ok, limited, other) = (
        ok.load(Ordering::SeqCst),
        limited.load(Ordering::SeqCst),
        other.load(Ordering::SeqCst),
    );
    assert_eq!(other, 0);
    assert!(admitted <= ok, "only admitted requests reach the upstream");
    assert!(
        ok + limited >= 5 * LIMIT,
        "the clients did not push hard enough: {ok} admitted, {limited} limited"
    );
    eprintln!("strict: {admitted} admitted, {limited} limited, limit {LIMIT}");
    assert!(
        admitted <= LIMIT,
        "overshoot: {admitted} admitted with a limit of {LIMIT}"
    );
    assert!(
        admitted * 10 >= LIMIT * 9,
        "the limit is not usable: only {admitted} of {LIMIT} admitted"
    );

    // A refused request says why, for how long, and what the policy is.
    let r = wait_for("a refusal", Duration::from_secs(10), || async {
        let r = http("GET", &proxies[0], "/api/x", &[], "").await;
        (r.status == 429).then_some(r)
    })
    .await;
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    assert_eq!(r.headers["x-ratelimit-limit"], "30");
    assert_eq!(r.headers["x-ratelimit-remaining"], "0");
    assert_eq!(r.headers["ratelimit-policy"], r#""per-ip";q=30;w=5"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_limits_count_per_node_and_admitted_answers_carry_the_headers() {
    let up = Upstream::start("echo").await;
    let cluster = Cluster::start_initialised(1, &[]).await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("Service", "api", json!({"targets": [{"url": up.url()}]})),
                resource("Route", "api", json!({"paths": ["/api"], "service": "api"})),
                resource(
                    "RateLimit",
                    "tenant",
                    json!({"applies_to": {"global": true}, "key": "header:x-tenant", "limit": 3,
                           "window": "31d", "mode": "local"}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let proxy = cluster.proxy_addr(1).await;
    let first = wait_for("the limit to be live", Duration::from_secs(10), || async {
        let r = http("GET", &proxy, "/api/x", &[("x-tenant", "a")], "").await;
        r.headers.contains_key("x-ratelimit-limit").then_some(r)
    })
    .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-ratelimit-limit"], "3");
    assert_eq!(
        first.headers["ratelimit-policy"],
        r#""tenant";q=3;w=2678400"#
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            http("GET", &proxy, "/api/x", &[("x-tenant", "a")], "")
                .await
                .status,
        );
    }
    // (A 31-day window: a boundary between these requests is as good as impossible.)
    assert_eq!(statuses, [200, 200, 429]);
    // Another tenant has its own count.
    assert_eq!(
        http("GET", &proxy, "/api/x", &[("x-tenant", "b")], "")
            .await
            .status,
        200
    );
    // Bad limits are refused with the field named.
    let err = cluster
        .client_of(1)
        .apply(
            vec![resource(
                "RateLimit",
                "bad",
                json!({"applies_to": {"global": true}, "limit": 0, "window": "1m"}),
            )],
            vec![],
        )
        .await
        .expect_err("limit 0");
    assert!(err.to_string().contains("spec.limit"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_mid_window_neither_resets_nor_overshoots_the_limit() {
    const LIMIT: u64 = 300;
    const WINDOW_MS: u64 = 10_000;
    let up = Upstream::start("counted").await;
    let mut cluster = Cluster::start_initialised(3, &[]).await;
    cluster
        .client_any()
        .apply(
            vec![
                resource("Service", "api", json!({"targets": [{"url": up.url()}]})),
                resource("Route", "api", json!({"paths": ["/api"], "service": "api"})),
                resource(
                    "RateLimit",
                    "all",
                    json!({"applies_to": {"global": true}, "key": "route", "limit": LIMIT, "window": "10s"}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let leader = cluster.leader().await;
    let proxies = warmed_proxies(&cluster, (1..=3).filter(|id| *id != leader)).await;
    let (window_start_ms, window_end) = enter_next_window(WINDOW_MS, 500).await;
    let hits_before = up.hits();
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..6 {
        let proxy = proxies[c % 2].clone();
        let ok = ok.clone();
        clients.push(tokio::spawn(async move {
            while Instant::now() < window_end {
                if http("GET", &proxy, "/api/x", &[], "").await.status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                // Paced, so the window's units are not all taken before the leader dies.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_kill = up.hits() - hits_before;
    cluster.node(leader).kill9();
    for c in clients {
        c.await.unwrap();
    }
    let admitted = up.arrivals_between(window_start_ms, window_start_ms + WINDOW_MS);
    eprintln!(
        "leader kill: {before_kill} admitted before, {admitted} in the window, limit {LIMIT}"
    );
    assert!(admitted <= ok.load(Ordering::SeqCst));
    assert!(
        before_kill < LIMIT,
        "the limit was used up before the kill: nothing was tested"
    );
    assert!(
        admitted <= LIMIT,
        "overshoot after a leader change: {admitted} > {LIMIT}"
    );
    assert!(
        admitted > before_kill,
        "no grants after the new leader took over"
    );
}

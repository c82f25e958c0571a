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
        proxies.push(cluster.proxy_addr(id).await);
    }
    warm(proxies).await
}

/// `proxies`, once each serves `/api` with the limit applied.
async fn warm(proxies: Vec<String>) -> Vec<String> {
    for proxy in &proxies {
        wait_for("the route on the node", Duration::from_secs(10), || async {
            let r = http("GET", proxy, "/api/warm", &[], "").await;
            (r.status == 200 || r.status == 429).then_some(())
        })
        .await;
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

/// What clients hammering through some nodes for one window saw.
struct Hammered {
    /// Requests the upstream received while the window was open.
    admitted: u64,
    /// 200s per proxy (in the order given).
    ok: Vec<u64>,
    limited: u64,
    other: u64,
}

impl Hammered {
    fn ok(&self) -> u64 {
        self.ok.iter().sum()
    }
}

/// `clients` clients, spread over `proxies`, send back to back from just after the next
/// window of `window_ms` opens until `margin_ms` before it ends; the upstream counts what
/// arrived in the window.
async fn hammer_one_window(
    up: &Upstream,
    proxies: &[String],
    clients: usize,
    window_ms: u64,
    margin_ms: u64,
) -> Hammered {
    let (window_start_ms, window_end) = enter_next_window(window_ms, margin_ms).await;
    let ok: Arc<Vec<AtomicU64>> = Arc::new(proxies.iter().map(|_| AtomicU64::new(0)).collect());
    let (limited, other) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let i = c % proxies.len();
        let proxy = proxies[i].clone();
        let (ok, limited, other) = (ok.clone(), limited.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < window_end {
                match http("GET", &proxy, "/api/x", &[], "").await.status {
                    200 => ok[i].fetch_add(1, Ordering::SeqCst),
                    429 => limited.fetch_add(1, Ordering::SeqCst),
                    _ => other.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The upstream's own count of the window: what arrived while it was open. (On a loaded
    // machine a request admitted at the window's very end may arrive just after it: counting
    // by arrival keeps it out of this window's count, it never adds one.)
    let h = Hammered {
        admitted: up.arrivals_between(window_start_ms, window_start_ms + window_ms),
        ok: ok.iter().map(|n| n.load(Ordering::SeqCst)).collect(),
        limited: limited.load(Ordering::SeqCst),
        other: other.load(Ordering::SeqCst),
    };
    assert_eq!(h.other, 0, "only 200 and 429 are expected");
    assert!(
        h.admitted <= h.ok(),
        "only admitted requests reach the upstream"
    );
    h
}

/// The Service, Route (`/api`) and RateLimit `limit` of the tests, applied through any node.
async fn apply_limited_api(cluster: &Cluster, up: &Upstream, limit: serde_json::Value) {
    cluster
        .client_any()
        .apply(
            vec![
                resource("Service", "api", json!({"targets": [{"url": up.url()}]})),
                resource("Route", "api", json!({"paths": ["/api"], "service": "api"})),
                resource("RateLimit", "limit", limit),
            ],
            vec![],
        )
        .await
        .expect("apply");
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
    apply_limited_api(
        &cluster,
        &up,
        json!({"applies_to": {"route": "api"}, "key": "ip", "limit": LIMIT, "window": "5s"}),
    )
    .await;
    // Every node has the route and the limit before the measured window.
    let proxies = warmed_proxies(&cluster, 1..=3).await;
    // Measure inside one whole window of (leader) time: start just after it opens, stop
    // before it ends, so every admitted request belongs to it.
    let h = hammer_one_window(&up, &proxies, 9, WINDOW_MS, 400).await;
    let (admitted, limited) = (h.admitted, h.limited);
    assert!(
        h.ok() + limited >= 5 * LIMIT,
        "the clients did not push hard enough: {} admitted, {limited} limited",
        h.ok()
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
    assert_eq!(r.headers["ratelimit-policy"], r#""limit";q=30;w=5"#);
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
    apply_limited_api(
        &cluster,
        &up,
        json!({"applies_to": {"global": true}, "key": "route", "limit": LIMIT, "window": "10s"}),
    )
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_limit_overshoots_at_most_by_what_the_nodes_may_borrow() {
    const LIMIT: u64 = 30;
    const BORROW: u64 = 2;
    const WINDOW_MS: u64 = 5_000;
    let up = Upstream::start("counted").await;
    let cluster = Cluster::start_initialised(3, &[]).await;
    apply_limited_api(
        &cluster,
        &up,
        json!({"applies_to": {"route": "api"}, "key": "route", "limit": LIMIT, "window": "5s",
               "mode": "fast", "borrow": BORROW}),
    )
    .await;
    let proxies = warmed_proxies(&cluster, 1..=3).await;
    let h = hammer_one_window(&up, &proxies, 9, WINDOW_MS, 400).await;
    eprintln!(
        "fast: {} admitted, {} limited, limit {LIMIT}",
        h.admitted, h.limited
    );
    assert!(h.ok() + h.limited >= 5 * LIMIT, "not pushed hard enough");
    // docs/consistency.md: at most limit + nodes x borrow per window.
    let bound = LIMIT + 3 * BORROW;
    assert!(
        h.admitted <= bound,
        "{} admitted: beyond the bound {bound}",
        h.admitted
    );
    assert!(
        h.admitted * 10 >= LIMIT * 9,
        "the limit is not usable: only {} of {LIMIT} admitted",
        h.admitted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_with_clocks_30_seconds_off_still_agree_on_the_windows() {
    const LIMIT: u64 = 30;
    const WINDOW_MS: u64 = 5_000;
    let up = Upstream::start("counted").await;
    let mut cluster = Cluster::start_initialised(3, &[]).await;
    let leader = cluster.leader().await;
    // Both followers restart with skewed clocks: one ahead of the leader, one behind. (Whole
    // windows of skew, so the test's clock still tells where the leader's windows start.)
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for (id, offset) in followers.iter().zip(["30000", "-30000"]) {
        let node = cluster.node(*id);
        node.kill9();
        node.extra_args
            .extend(["--test-clock-offset-ms".to_string(), offset.to_string()]);
        node.start();
    }
    apply_limited_api(
        &cluster,
        &up,
        json!({"applies_to": {"route": "api"}, "key": "route", "limit": LIMIT, "window": "5s"}),
    )
    .await;
    // Traffic only through the skewed nodes.
    let proxies = warm(
        followers
            .iter()
            .map(|id| cluster.node(*id).started_proxy_addr())
            .collect(),
    )
    .await;
    for _ in 0..2 {
        let h = hammer_one_window(&up, &proxies, 8, WINDOW_MS, 400).await;
        eprintln!(
            "skew: {} admitted ({:?} per node), limit {LIMIT}",
            h.admitted, h.ok
        );
        assert!(h.admitted <= LIMIT, "overshoot: {} > {LIMIT}", h.admitted);
        assert!(
            h.admitted * 10 >= LIMIT * 9,
            "the limit is not usable: only {} of {LIMIT} admitted",
            h.admitted
        );
        assert!(
            h.ok.iter().all(|n| *n > 0),
            "a skewed node admitted nothing: {:?}",
            h.ok
        );
    }
}

/// Sends GET `path` with `x-tenant: tenant` and returns the response once its head (and first
/// body frame, for a stream) has arrived: the request is then in flight until the body ends.
async fn open_request(
    proxy: &str,
    path: &str,
    tenant: &str,
) -> (u16, hyper::HeaderMap, hyper::body::Incoming) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "x")
        .header("x-tenant", tenant)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, mut body) = resp.into_parts();
    if parts.status == 200 {
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first event arrives");
        assert!(first.is_some());
    }
    (parts.status.as_u16(), parts.headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_refuses_beyond_the_requests_in_flight_until_one_finishes() {
    use http_body_util::BodyExt;
    let up = Upstream::start("slow").await;
    let cluster = Cluster::start_initialised(1, &[]).await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("Service", "api", json!({"targets": [{"url": up.url()}]})),
                resource(
                    "Route",
                    "api",
                    json!({"paths": ["/sse", "/api"], "service": "api"}),
                ),
                resource(
                    "ConcurrencyLimit",
                    "two-at-once",
                    json!({"applies_to": {"route": "api"}, "key": "header:x-tenant",
                           "max_in_flight": 2}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let proxy = warm(vec![cluster.proxy_addr(1).await]).await.remove(0);
    // (One Apply is one revision: the route serving means the limit is live too.) Two
    // streams stay open; a third request of the same tenant is refused at once.
    let (first, _, first_body) = open_request(&proxy, "/sse", "a").await;
    let (second, _, second_body) = open_request(&proxy, "/sse", "a").await;
    assert_eq!((first, second), (200, 200));
    let (status, headers, body) = open_request(&proxy, "/api/x", "a").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    let body: serde_json::Value =
        serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "concurrency_limited");
    // Another tenant has its own count.
    assert_eq!(open_request(&proxy, "/api/x", "b").await.0, 200);
    // One stream ends: its place is free again.
    up.release_sse();
    let rest = first_body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: second\n\n");
    let again = wait_for("a freed place", Duration::from_secs(10), || {
        let proxy = proxy.clone();
        async move {
            let r = open_request(&proxy, "/api/x", "a").await;
            (r.0 == 200).then_some(r.0)
        }
    })
    .await;
    assert_eq!(again, 200);
    // (The first stream's place is free, the second's still held: one more is refused.)
    let (held, _, _held_body) = open_request(&proxy, "/sse", "a").await;
    assert_eq!(held, 200);
    assert_eq!(open_request(&proxy, "/api/x", "a").await.0, 429);
    drop(second_body);
    // Bad input names the field.
    let err = cluster
        .client_of(1)
        .apply(
            vec![resource(
                "ConcurrencyLimit",
                "bad",
                json!({"applies_to": {"global": true}, "max_in_flight": 0}),
            )],
            vec![],
        )
        .await
        .expect_err("max_in_flight 0");
    assert!(err.to_string().contains("spec.max_in_flight"), "{err}");
}

/// `konnectctl -o json usage ARGS` against node `id`, parsed.
fn usage_json(cluster: &Cluster, id: u64, args: &[&str]) -> Result<serde_json::Value, String> {
    let node = cluster.nodes.iter().find(|n| n.id == id).unwrap();
    let out = std::process::Command::new(konnectctl_bin())
        .env("KONNECT_ENDPOINT", node.admin_url())
        .env("KONNECT_TOKEN", cluster.token.clone().unwrap())
        .args(["-o", "json", "usage"])
        .args(args)
        .output()
        .expect("run konnectctl");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("json output"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn konnectctl_usage_shows_a_quota_alike_on_every_node_and_idle_units_go_back() {
    let up = Upstream::start("u").await;
    let cluster = Cluster::start_initialised(3, &[]).await;
    apply_limited_api(
        &cluster,
        &up,
        json!({"applies_to": {"route": "api"}, "key": "header:x-tenant", "limit": 10,
               "window": "31d"}),
    )
    .await;
    let proxy = warm(vec![cluster.proxy_addr(2).await]).await.remove(0);
    for _ in 0..3 {
        let r = http("GET", &proxy, "/api/x", &[("x-tenant", "alice")], "").await;
        assert_eq!(r.status, 200);
    }
    let alice = ["--limit", "limit", "--key", "alice"];
    // Asks follow demand: 1 unit, then 2 after the first request, then 4 after the third,
    // so 7 are granted for 3 requests; node 2 holds the 4 it has not used.
    wait_for("the third grant", Duration::from_secs(30), || async {
        let v = usage_json(&cluster, 3, &alice).unwrap();
        (v[0]["used"] == 7).then_some(())
    })
    .await;
    // Once alice is idle on node 2 it gives them back, and every node reports exactly what
    // was admitted.
    let shown = wait_for(
        "unused units to go back",
        Duration::from_secs(30),
        || async {
            let v = usage_json(&cluster, 3, &alice).unwrap();
            (v[0]["used"] == 3).then_some(v)
        },
    )
    .await;
    assert_eq!(shown[0]["remaining"], 7);
    assert_eq!(shown[0]["limit_per_window"], 10);
    assert_eq!(shown[0]["per_node"], json!({"2": 3}));
    let consistent = usage_json(
        &cluster,
        1,
        &["--limit", "limit", "--key", "alice", "--consistent"],
    )
    .unwrap();
    assert_eq!(consistent[0]["used"], 3);
    // Without --key: every key with units in its window (the warm-up's `-` and alice).
    let all = usage_json(&cluster, 1, &["--limit", "limit"]).unwrap();
    let keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["-", "alice"]);
    // A key never seen has used nothing; unknown limits are named.
    assert_eq!(
        usage_json(&cluster, 2, &["--limit", "limit", "--key", "bob"]).unwrap()[0]["remaining"],
        10
    );
    let err = usage_json(&cluster, 2, &["--limit", "nope"]).unwrap_err();
    assert!(err.contains("RateLimit \"nope\" not found"), "{err}");
}

//! End to end through the data plane: real konnect processes proxying to test upstreams.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::upstream::Upstream;
use support::*;

/// A one-node cluster with `resources` applied, and its proxy address.
async fn gateway_with(
    resources: Vec<konnect_proto::admin::v1::ResourceInput>,
    extra: &[&str],
) -> (Cluster, String) {
    let cluster = Cluster::start_initialised(1, extra).await;
    cluster
        .client_of(1)
        .apply(resources, vec![])
        .await
        .expect("apply");
    let proxy = cluster.proxy_addr(1).await;
    (cluster, proxy)
}

/// Waits until the proxy serves `path` with a status other than 404 (config propagated).
async fn until_routed(proxy: &str, path: &str) {
    wait_for("the route to be live", Duration::from_secs(10), || async {
        (http("GET", proxy, path, &[], "").await.status != 404).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_by_weight() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource("Service", "web", json!({"targets": [{"url": a.url(), "weight": 300}, {"url": b.url(), "weight": 100}]})),
            resource("Route", "web", json!({"paths": ["/web"], "service": "web"})),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/web").await;
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..400 {
        assert_eq!(http("GET", &proxy, "/web/x", &[], "").await.status, 200);
    }
    assert_eq!((a.hits() - a0, b.hits() - b0), (300, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_is_ejected_and_traffic_goes_on() {
    let live = Upstream::start("live").await;
    let dead = free_ports(1)[0];
    let (cluster, proxy) = gateway_with(
        vec![
            resource(
                "Service",
                "web",
                json!({
                    "targets": [{"url": live.url()}, {"url": format!("http://127.0.0.1:{dead}")}],
                    "health_check": {"passive": {"consecutive_failures": 2, "ejection": "60s"}}
                }),
            ),
            resource("Route", "web", json!({"paths": ["/"], "service": "web"})),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/").await;
    for _ in 0..40 {
        let r = http("GET", &proxy, "/", &[], "").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // After ejection the dead target is not tried: metrics count exactly the failures that
    // led to it (2), not one per request.
    let metrics = status_metrics(&cluster).await;
    let errors = metric_value(&metrics, "konnect_proxy_upstream_errors_total");
    assert!(
        errors <= 2.0,
        "dead target kept being tried: {errors} errors\n{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "konnect_proxy_target_ejections_total"),
        1.0
    );
}

async fn status_metrics(cluster: &Cluster) -> String {
    let addr = cluster.nodes[0].status.clone();
    let r = http("GET", &addr, "/metrics", &[], "").await;
    String::from_utf8_lossy(&r.body).into_owned()
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of the one sample of `name` whose labels include every `label="value"` given.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|kv| l.contains(kv)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_bytes_and_latency_are_counted_per_route_service_and_status() {
    let up = Upstream::start("u").await;
    let (cluster, proxy) = gateway_with(
        vec![
            service("web", up.addr.port()),
            resource(
                "Route",
                "shop",
                json!({"paths": ["/shop"], "service": "web", "strip_prefix": true}),
            ),
            route("quiet", "/quiet", "web"),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/shop").await;
    let before = status_metrics(&cluster).await;
    let ok = |m: &str| {
        sample(
            m,
            "konnect_proxy_requests_total",
            &[r#"route="shop""#, r#"service="web""#, r#"status="2xx""#],
        )
        .unwrap_or(0.0)
    };
    let (ok0, bytes0) = (
        ok(&before),
        sample(
            &before,
            "konnect_proxy_bytes_sent_total",
            &[r#"route="shop""#],
        )
        .unwrap_or(0.0),
    );
    let mut body_bytes = 0;
    for _ in 0..3 {
        let r = http("GET", &proxy, "/shop/item", &[], "").await;
        assert_eq!(r.status, 200);
        body_bytes += r.body.len();
    }
    assert_eq!(
        http("GET", &proxy, "/shop/status/404", &[], "")
            .await
            .status,
        404
    );
    assert_eq!(
        http("GET", &proxy, "/shop/status/503", &[], "")
            .await
            .status,
        503
    );
    assert_eq!(http("GET", &proxy, "/nowhere", &[], "").await.status, 404);

    // The last request's bytes are counted when its body ends, just after the answer.
    let m = wait_for("the byte counters", Duration::from_secs(5), || async {
        let m = status_metrics(&cluster).await;
        let sent = sample(&m, "konnect_proxy_bytes_sent_total", &[r#"route="shop""#])?;
        (sent - bytes0 >= body_bytes as f64).then_some(m)
    })
    .await;
    assert_eq!(ok(&m) - ok0, 3.0, "{m}");
    let count = |route: &str, service: &str, status: &str| {
        sample(
            &m,
            "konnect_proxy_requests_total",
            &[
                &format!(r#"route="{route}""#),
                &format!(r#"service="{service}""#),
                &format!(r#"status="{status}""#),
            ],
        )
    };
    assert_eq!(count("shop", "web", "4xx"), Some(1.0), "{m}");
    assert_eq!(count("shop", "web", "5xx"), Some(1.0), "{m}");
    assert!(
        count("none", "none", "4xx").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "konnect_proxy_request_duration_seconds_count",
            &[r#"route="shop""#]
        )
        .is_some_and(|n| n >= 5.0),
        "{m}"
    );
    // A route that saw no traffic adds no series (10,000 routes would otherwise flood it).
    assert!(!m.contains(r#"route="quiet""#), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_happen_only_when_resending_is_safe() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource(
                "Service",
                "web",
                json!({
                    "targets": [{"url": up.url()}],
                    "retries": {"count": 2, "on": ["5xx"], "backoff": "1ms"}
                }),
            ),
            resource("Route", "web", json!({"paths": ["/"], "service": "web"})),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/").await;
    // POST is not idempotent: the first 503 is returned as is.
    let post = http("POST", &proxy, "/flaky/2", &[], "payload").await;
    assert_eq!(post.status, 503);
    // GET is retried past the remaining failure, with the client's fields on every attempt.
    let get = http("GET", &proxy, "/flaky/2", &[("x-probe", "kept")], "").await;
    assert_eq!(get.status, 200);
    assert_eq!(
        get.headers.get("x-probe-seen").map(|v| v.as_bytes()),
        Some(&b"kept"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_typed_json_errors_without_the_upstream_address() {
    let slow = Upstream::start("slow").await;
    let dead = free_ports(1)[0];
    let (_c, proxy) = gateway_with(
        vec![
            resource(
                "Service",
                "slow",
                json!({"targets": [{"url": slow.url()}], "timeouts": {"read": "200ms"}}),
            ),
            resource(
                "Service",
                "dead",
                json!({"targets": [{"url": format!("http://127.0.0.1:{dead}")}]}),
            ),
            resource(
                "Route",
                "slow",
                json!({"paths": ["/slow"], "service": "slow"}),
            ),
            resource(
                "Route",
                "dead",
                json!({"paths": ["/dead"], "service": "dead"}),
            ),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/dead").await;

    let started = Instant::now();
    let r = http("GET", &proxy, "/slow/3000", &[], "").await;
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "timeout not enforced"
    );
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");

    let r = http("GET", &proxy, "/dead", &[], "").await;
    assert_eq!(r.status, 502);
    let body = r.json();
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    assert!(
        !String::from_utf8_lossy(&r.body).contains(&dead.to_string()),
        "upstream leaked: {body}"
    );
    assert_eq!(
        body["error"]["request_id"],
        r.headers["x-request-id"].to_str().unwrap()
    );

    let r = http("GET", &proxy, "/nowhere", &[], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"]["message"],
        "no route matches host \"gateway.test\" and path \"/nowhere\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_are_set_and_client_supplied_ones_not_trusted() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource(
                "Service",
                "web",
                json!({"targets": [{"url": format!("{}/base", up.url())}]}),
            ),
            resource(
                "Route",
                "web",
                json!({"paths": ["/api"], "strip_prefix": true, "service": "web"}),
            ),
            resource(
                "Route",
                "changed",
                json!({"paths": ["/changed"], "service": "web",
                       "request": {"headers": {"set": {"x-forwarded-proto": "changed"}}}}),
            ),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/api").await;
    let r = http(
        "GET",
        &proxy,
        "/api/users?id=7",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("x-request-id", "req-123"),
        ],
        "",
    )
    .await;
    let echo = r.json();
    assert_eq!(
        echo["path"], "/base/users",
        "strip_prefix then the target's base path"
    );
    assert_eq!(echo["query"], "id=7");
    let h = &echo["headers"];
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "spoofed XFF must be replaced"
    );
    assert_eq!(h["x-forwarded-host"], "gateway.test");
    assert_eq!(h["x-request-id"], "req-123");
    assert_eq!(h["via"], "1.1 konnect");
    assert!(
        h.get("x-private").is_none(),
        "header named by Connection must not be forwarded"
    );
    assert!(h["traceparent"].as_str().unwrap().starts_with("00-"));
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["host"], up.addr.to_string(), "the target's own Host");
    assert_eq!(echo["repeated"], json!([]), "each field once");
    assert_eq!(r.headers["x-request-id"], "req-123");

    // Without an id of the client's, the target and the client see the one the proxy made:
    // with a body in memory (our HTTP/1.1 client), a streamed one (hyper), and on a route
    // whose request transformation sees (and may change) the proxy's fields.
    for (method, path, body) in [
        ("GET", "/api/a", ""),
        ("POST", "/api/b", "a streamed body"),
        ("GET", "/changed/c", ""),
    ] {
        let r = http(method, &proxy, path, &[("via", "1.0 edge")], body).await;
        assert_eq!(r.status, 200, "{method} {path}");
        let echo = r.json();
        let h = &echo["headers"];
        let id = r.headers["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 32, "{method} {path}");
        assert_eq!(h["x-request-id"], id, "{method} {path}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{method} {path}");
        assert_eq!(h["via"], "1.0 edge, 1.1 konnect", "{method} {path}");
        assert_eq!(h["traceparent"].as_str().unwrap().len(), 55);
        assert_eq!(echo["repeated"], json!([]), "{method} {path}");
        assert_eq!(echo["body_len"], body.len());
        if path.starts_with("/changed") {
            assert_eq!(h["x-forwarded-proto"], "changed", "the transformation wins");
        }
    }

    // Every response has this hop in Via and one X-Request-Id, ours, whatever the target
    // sent: through our server codec (GET) and through hyper (a request with a body).
    for (method, body) in [("GET", ""), ("POST", "a body")] {
        for (respond, via) in [
            (vec![], "1.1 konnect"),
            (
                vec![("x-respond-via", "1.1 origin")],
                "1.1 origin, 1.1 konnect",
            ),
            (vec![("x-respond-request-id", "theirs")], "1.1 konnect"),
        ] {
            let r = http(method, &proxy, "/api/r", &respond, body).await;
            let what = format!("{method} {respond:?}");
            assert_eq!(r.status, 200, "{what}");
            let vias: Vec<_> = r
                .headers
                .get_all("via")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(vias.join(", "), via, "{what}");
            let ids: Vec<_> = r.headers.get_all("x-request-id").iter().collect();
            assert_eq!(ids.len(), 1, "{what}");
            assert_eq!(
                ids[0],
                r.json()["headers"]["x-request-id"].as_str().unwrap(),
                "{what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_reach_the_client_before_the_upstream_finishes() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource("Service", "web", json!({"targets": [{"url": up.url()}]})),
            resource("Route", "web", json!({"paths": ["/sse"], "service": "web"})),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/sse/ready").await;
    let stream = tokio::net::TcpStream::connect(&proxy).await.unwrap();
    up.check_sse_through(stream, "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_on_one_node_takes_effect_on_all_and_removal_gives_404_everywhere() {
    let cluster = Cluster::start_initialised(3, &[]).await;
    config_change_takes_effect_everywhere(&cluster).await;
}

/// Nodes with one core run their whole async runtime on one thread: Raft, the admin API and
/// the proxy still work, and the node says so in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_nodes_with_one_core_each_serves_and_replicates() {
    let cluster = Cluster::start_initialised_on_one_core(3, &[]).await;
    for n in &cluster.nodes {
        assert!(
            n.log().contains("the async runtime runs on one thread"),
            "node {} did not choose the one-thread runtime",
            n.id
        );
    }
    config_change_takes_effect_everywhere(&cluster).await;
}

async fn config_change_takes_effect_everywhere(cluster: &Cluster) {
    let up = Upstream::start("u").await;
    let client = cluster.client_of(2);
    client
        .apply(
            vec![
                resource("Service", "web", json!({"targets": [{"url": up.url()}]})),
                resource("Route", "web", json!({"paths": ["/web"], "service": "web"})),
            ],
            vec![],
        )
        .await
        .unwrap();
    let mut proxies = Vec::new();
    for n in &cluster.nodes {
        proxies.push(cluster.proxy_addr(n.id).await);
    }
    for p in &proxies {
        until_routed(p, "/web").await;
        assert_eq!(http("GET", p, "/web", &[], "").await.status, 200);
    }
    client.delete("Route", "web", None).await.unwrap();
    for p in &proxies {
        wait_for(
            "the route to disappear",
            Duration::from_secs(10),
            || async { (http("GET", p, "/web", &[], "").await.status == 404).then_some(()) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_pointing_at_the_admin_port_is_refused_at_apply() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let admin = cluster.nodes[0].admin.clone();
    let err = cluster
        .client_of(1)
        .apply(
            vec![resource(
                "Service",
                "evil",
                json!({"targets": [{"url": format!("http://{admin}")}]}),
            )],
            vec![],
        )
        .await
        .unwrap_err();
    assert!(err.message().contains("admin port"), "{err}");
    let port = admin.rsplit(':').next().unwrap();
    let err = cluster
        .client_of(1)
        .apply(
            vec![resource(
                "Service",
                "evil",
                json!({"targets": [{"url": format!("http://localhost:{port}")}]}),
            )],
            vec![],
        )
        .await
        .unwrap_err();
    assert!(err.message().contains("admin port"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_oversize_and_slow_requests_are_refused_on_the_wire() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource("Service", "web", json!({"targets": [{"url": up.url()}]})),
            resource(
                "Route",
                "public",
                json!({"paths": ["/public"], "service": "web", "max_body_bytes": 16}),
            ),
        ],
        &[
            "--header-read-timeout-ms",
            "500",
            "--max-header-bytes",
            "4096",
        ],
    )
    .await;
    until_routed(&proxy, "/public").await;
    let hits = up.hits();

    // CL+TE: chunked framing wins (RFC 9112), so the "smuggled" request behind the empty
    // chunked body is a second request of its own, judged by the router: 404, not upstream.
    let both = raw(&proxy, b"POST /public HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(both.starts_with("HTTP/1.1 200"), "CL+TE: {both}");
    assert!(
        both.contains("\"content-length\":\"0\"") || !both.contains("\"content-length\":\"4\""),
        "CL forwarded: {both}"
    );
    assert_eq!(
        both.matches("x-served-by").count(),
        1,
        "smuggled request reached the upstream: {both}"
    );
    assert_eq!(up.hits(), hits + 1);
    let hits = up.hits();
    let dup = raw(
        &proxy,
        b"POST /public HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert!(dup.starts_with("HTTP/1.1 400"), "duplicate CL: {dup}");
    let fold = raw(
        &proxy,
        b"GET /public HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    )
    .await;
    assert!(fold.starts_with("HTTP/1.1 400"), "obs-fold: {fold}");
    let big = format!(
        "GET /public HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let big = raw(&proxy, big.as_bytes()).await;
    assert!(
        big.starts_with("HTTP/1.1 431") || big.is_empty(),
        "oversize header: {big}"
    );
    let body = raw(
        &proxy,
        b"POST /public HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n01234567890123456789",
    )
    .await;
    assert!(body.starts_with("HTTP/1.1 413"), "oversize body: {body}");
    let chunked = raw(&proxy, b"POST /public HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n").await;
    assert!(
        chunked.starts_with("HTTP/1.1 413"),
        "oversize chunked body: {chunked}"
    );
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "//admin",
        "/public/..%2fadmin",
    ] {
        let r = raw(
            &proxy,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 404") || r.starts_with("HTTP/1.1 400"),
            "{path} bypassed: {r}"
        );
    }
    assert_eq!(up.hits(), hits, "no attack reached the upstream");

    // Slowloris: a client that never finishes its headers is cut off.
    let started = Instant::now();
    let slow = raw(&proxy, b"GET /public HTTP/1.1\r\nHost: x\r\n").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow client kept open: {slow}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_rewrite_paths_headers_and_query_on_the_way_through() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource("Service", "web", json!({"targets": [{"url": up.url()}]})),
            resource("Route", "v", json!({
                "paths": ["~^/api/v(?P<ver>\\d+)/(.*)$"],
                "service": "web",
                "request": {
                    "path": "/internal/${ver}/$2",
                    "headers": {"set": {"x-tenant": "acme"}, "remove": ["x-debug"], "rename": {"x-old": "x-new"}},
                    "query": {"add": {"source": "gateway"}, "remove": ["token"]}
                },
                "response": {"headers": {"add": {"x-frame-options": "DENY"}, "remove": ["x-served-by"]}}
            })),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/api/v1/ready").await;
    let r = http(
        "GET",
        &proxy,
        "/api/v2/users/7?token=secret&page=2",
        &[("x-debug", "1"), ("x-old", "o")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["path"], "/internal/2/users/7");
    assert_eq!(echo["query"], "page=2&source=gateway");
    assert_eq!(echo["headers"]["x-tenant"], "acme");
    assert_eq!(echo["headers"]["x-new"], "o");
    assert!(echo["headers"].get("x-debug").is_none() && echo["headers"].get("x-old").is_none());
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert!(!r.headers.contains_key("x-served-by"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_value_with_a_line_break_is_refused_at_apply() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    cluster
        .client_of(1)
        .apply(vec![service("web", 9)], vec![])
        .await
        .unwrap();
    let err = cluster
        .client_of(1)
        .apply(
            vec![resource(
                "Route",
                "r",
                json!({
                    "paths": ["/"], "service": "web",
                    "request": {"headers": {"set": {"x-a": "ok\r\nx-injected: yes"}}}
                }),
            )],
            vec![],
        )
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("spec.request.headers.set.x-a"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_responses_are_served_without_the_upstream_until_they_expire() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource("Service", "web", json!({"targets": [{"url": up.url()}]})),
            resource(
                "Route",
                "web",
                json!({"paths": ["/c"], "service": "web", "cache": {"ttl": "400ms"}}),
            ),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/c/ready").await;
    let first = http("GET", &proxy, "/c/item", &[], "").await;
    assert_eq!(first.headers["x-cache"], "MISS");
    let hits = up.hits();
    let second = http("GET", &proxy, "/c/item", &[], "").await;
    assert_eq!(second.headers["x-cache"], "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(up.hits(), hits, "a hit must not reach the upstream");
    let post = http("POST", &proxy, "/c/item", &[], "x").await;
    assert_eq!(post.headers["x-cache"], "BYPASS");
    // After the TTL the entry is gone and the upstream is asked again.
    wait_for(
        "the cached entry to expire",
        Duration::from_secs(5),
        || async {
            let r = http("GET", &proxy, "/c/other", &[], "").await;
            let again = http("GET", &proxy, "/c/other", &[], "").await;
            (r.headers["x-cache"] == "MISS" && again.headers["x-cache"] == "HIT").then_some(())
        },
    )
    .await;
    let before = up.hits();
    wait_for("the TTL to pass", Duration::from_secs(5), || async {
        (http("GET", &proxy, "/c/other", &[], "").await.headers["x-cache"] == "MISS").then_some(())
    })
    .await;
    assert_eq!(up.hits(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_on_failures_rejects_fast_and_closes_after_a_good_probe() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource("Service", "web", json!({
                "targets": [{"url": up.url()}],
                "retries": {"count": 0},
                "circuit_breaker": {"failure_ratio": 0.5, "window": "10s", "min_requests": 4, "open_for": "300ms", "half_open_probes": 1}
            })),
            resource("Route", "web", json!({"paths": ["/"], "service": "web"})),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/").await;
    for _ in 0..4 {
        assert_eq!(
            http("GET", &proxy, "/status/503", &[], "").await.status,
            503
        );
    }
    let hits = up.hits();
    let rejected = http("GET", &proxy, "/status/200", &[], "").await;
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.json()["error"]["code"], "circuit_open");
    assert_eq!(
        up.hits(),
        hits,
        "an open circuit must not call the upstream"
    );
    // After open_for, one probe goes through; its success closes the circuit.
    wait_for(
        "the circuit to close again",
        Duration::from_secs(5),
        || async {
            (http("GET", &proxy, "/status/200", &[], "").await.status == 200).then_some(())
        },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            http("GET", &proxy, "/status/200", &[], "").await.status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_keep_traffic_off_a_dead_target() {
    let live = Upstream::start("live").await;
    let dead = free_ports(1)[0];
    let (cluster, proxy) = gateway_with(
        vec![
            resource("Service", "web", json!({
                "targets": [{"url": live.url()}, {"url": format!("http://127.0.0.1:{dead}")}],
                "retries": {"count": 0},
                "health_check": {"active": {"path": "/status/200", "interval": "100ms", "timeout": "50ms", "unhealthy_threshold": 1}}
            })),
            resource("Route", "web", json!({"paths": ["/"], "service": "web"})),
        ],
        &[],
    )
    .await;
    wait_for(
        "the dead target to be marked unhealthy",
        Duration::from_secs(10),
        || async {
            let m = status_metrics(&cluster).await;
            m.lines()
                .any(|l| {
                    l.starts_with("konnect_proxy_target_healthy")
                        && l.contains(&dead.to_string())
                        && l.ends_with(" 0")
                })
                .then_some(())
        },
    )
    .await;
    // The health checker can report before the proxy serves the route (seen: 404 here).
    until_routed(&proxy, "/").await;
    for _ in 0..20 {
        assert_eq!(http("GET", &proxy, "/", &[], "").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_route_by_path_segment_or_header_and_reach_the_upstream() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource("Service", "orders", json!({"targets": [{"url": up.url()}]})),
            resource(
                "Route",
                "orders-v1",
                json!({"paths": ["/orders"], "service": "orders", "api_version": {"value": "v1"}}),
            ),
            resource(
                "Route",
                "orders-v2",
                json!({"paths": ["/orders"], "service": "orders",
                "api_version": {"value": "v2", "from": "header"}}),
            ),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/v1/orders").await;
    let v1 = http("GET", &proxy, "/v1/orders/7", &[], "").await.json();
    assert_eq!(v1["path"], "/orders/7");
    assert_eq!(v1["headers"]["x-api-version"], "v1");
    let v2 = http("GET", &proxy, "/orders/7", &[("x-api-version", "v2")], "")
        .await
        .json();
    assert_eq!(v2["path"], "/orders/7");
    assert_eq!(v2["headers"]["x-api-version"], "v2");
    assert_eq!(http("GET", &proxy, "/orders/7", &[], "").await.status, 404);
    assert_eq!(
        http("GET", &proxy, "/v3/orders/7", &[], "").await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_service_moves_traffic_without_touching_its_routes() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let (cluster, proxy) = gateway_with(
        vec![
            resource("Service", "web", json!({"targets": [{"url": old.url()}]})),
            resource("Route", "web", json!({"paths": ["/"], "service": "web"})),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/").await;
    assert_eq!(
        http("GET", &proxy, "/", &[], "").await.headers["x-served-by"],
        "old"
    );
    cluster
        .client_of(1)
        .apply(
            vec![resource(
                "Service",
                "web",
                json!({"targets": [{"url": new.url()}]}),
            )],
            vec![],
        )
        .await
        .unwrap();
    wait_for(
        "traffic to reach the new target",
        Duration::from_secs(10),
        || async {
            (http("GET", &proxy, "/", &[], "").await.headers["x-served-by"] == "new").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_at_its_request_limit_answers_503_busy_at_once() {
    let up = Upstream::start("slow").await;
    let (_c, proxy) = gateway_with(
        vec![
            resource(
                "Service",
                "slow",
                json!({"targets": [{"url": up.url()}], "pool": {"max_requests_per_target": 1}}),
            ),
            resource(
                "Route",
                "slow",
                json!({"paths": ["/slow"], "service": "slow"}),
            ),
        ],
        &[],
    )
    .await;
    until_routed(&proxy, "/slow/0").await;
    let before = up.hits();
    // One request holds the only slot while the upstream takes its time...
    let first = {
        let proxy = proxy.clone();
        tokio::spawn(async move { http("GET", &proxy, "/slow/1500", &[], "").await })
    };
    wait_for(
        "the first request to reach the upstream",
        Duration::from_secs(5),
        || async { (up.hits() > before).then_some(()) },
    )
    .await;
    // ...so a second one is refused without waiting, and never reaches the upstream.
    let busy = http("GET", &proxy, "/slow/0", &[], "").await;
    assert_eq!(busy.status, 503);
    assert_eq!(busy.json()["error"]["code"], "upstream_busy");
    assert!(
        !first.is_finished(),
        "the busy answer waited for the first request"
    );
    assert_eq!(up.hits(), before + 1);
    assert_eq!(first.await.unwrap().status, 200);
    // The slot is free again once the first response is done.
    assert_eq!(http("GET", &proxy, "/slow/0", &[], "").await.status, 200);
}

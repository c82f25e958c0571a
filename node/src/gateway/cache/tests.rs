//! Unit tests of the response cache: what is stored, what is served, for how long, and what
//! the client sees (`X-Cache`, `Age`, the body) on each path.

use std::sync::Mutex as StdMutex;

use futures::channel::mpsc;
use http_body_util::StreamBody;

use super::*;

/// A clock moved by hand, so expiry is tested without sleeping. (Paused tokio time would need
/// tokio's `test-util` feature, which this workspace does not enable.)
#[derive(Clone)]
struct HandClock {
    start: Instant,
    elapsed: Arc<StdMutex<Duration>>,
}

impl HandClock {
    fn new() -> HandClock {
        HandClock {
            start: Instant::now(),
            elapsed: Arc::new(StdMutex::new(Duration::ZERO)),
        }
    }

    fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap() += by;
    }

    fn as_clock(&self) -> Clock {
        let hand = self.clone();
        Arc::new(move || hand.start + *hand.elapsed.lock().unwrap())
    }
}

fn cache_with(spec: CacheSpec) -> (ResponseCache, HandClock) {
    let clock = HandClock::new();
    let cache = ResponseCache::with_clock("users", spec, clock.as_clock());
    (cache, clock)
}

fn default_cache() -> (ResponseCache, HandClock) {
    cache_with(CacheSpec::default())
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn lookup(cache: &ResponseCache, method: Method, path: &str, req: &[(&str, &str)]) -> Lookup {
    cache.lookup(&method, "api.example.com", path, &headers(req))
}

fn expect_hit(lookup: Lookup) -> Response<ProxyBody> {
    match lookup {
        Lookup::Hit(resp) => resp,
        other => panic!("expected a hit, got {other:?}"),
    }
}

fn expect_miss(lookup: Lookup) -> CacheTicket {
    match lookup {
        Lookup::Miss(ticket) => ticket,
        other => panic!("expected a miss, got {other:?}"),
    }
}

fn expect_bypass(lookup: Lookup) -> CacheTicket {
    match lookup {
        Lookup::Bypass(ticket) => ticket,
        other => panic!("expected a bypass, got {other:?}"),
    }
}

/// An upstream response whose body arrives in `chunks`, with no declared length.
fn streamed(status: u16, resp_headers: &[(&str, &str)], chunks: &[&str]) -> Response<ProxyBody> {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from(c.to_string()))))
        .collect();
    respond(
        status,
        resp_headers,
        StreamBody::new(futures::stream::iter(frames)).boxed(),
    )
}

/// An upstream response with a complete body (known length, like `Content-Length`).
fn whole(status: u16, resp_headers: &[(&str, &str)], body: &str) -> Response<ProxyBody> {
    respond(status, resp_headers, full(Bytes::from(body.to_string())))
}

fn respond(status: u16, resp_headers: &[(&str, &str)], body: ProxyBody) -> Response<ProxyBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    *resp.headers_mut() = headers(resp_headers);
    resp
}

async fn body_text(resp: Response<ProxyBody>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Runs a miss for GET `path` through `store` and reads the body to the end, as a client would.
async fn fetch_through(cache: &ResponseCache, path: &str, upstream: Response<ProxyBody>) -> String {
    let ticket = expect_miss(lookup(cache, Method::GET, path, &[]));
    let resp = cache.store(ticket, upstream);
    assert_eq!(resp.headers()[X_CACHE], "MISS");
    body_text(resp).await
}

fn is_cached(cache: &ResponseCache, path: &str) -> bool {
    matches!(lookup(cache, Method::GET, path, &[]), Lookup::Hit(_))
}

#[tokio::test]
async fn miss_then_hit_serves_the_same_body_marked_x_cache_hit() {
    let (cache, _clock) = default_cache();
    let ticket = expect_miss(lookup(&cache, Method::GET, "/users?page=2", &[]));
    let first = cache.store(
        ticket,
        streamed(200, &[("content-type", "application/json")], &["[1,", "2]"]),
    );
    assert_eq!(first.headers()[X_CACHE], "MISS");
    assert_eq!(body_text(first).await, "[1,2]");

    let hit = expect_hit(lookup(&cache, Method::GET, "/users?page=2", &[]));
    assert_eq!(hit.status(), StatusCode::OK);
    assert_eq!(hit.headers()[X_CACHE], "HIT");
    assert_eq!(hit.headers()["age"], "0");
    assert_eq!(hit.headers()["content-type"], "application/json");
    assert_eq!(hit.headers()["content-length"], "5");
    assert_eq!(body_text(hit).await, "[1,2]");
    // Another query string is another resource.
    expect_miss(lookup(&cache, Method::GET, "/users?page=3", &[]));
}

#[tokio::test]
async fn entry_expires_when_its_ttl_has_passed() {
    let (cache, clock) = cache_with(CacheSpec {
        ttl: crate::resources::duration::millis(50),
        ..CacheSpec::default()
    });
    fetch_through(&cache, "/a", whole(200, &[], "x")).await;
    clock.advance(Duration::from_millis(40));
    assert!(is_cached(&cache, "/a"));
    clock.advance(Duration::from_millis(20));
    assert!(!is_cached(&cache, "/a"));
    assert_eq!(
        cache.stored_bytes(),
        0,
        "the expired entry is dropped on lookup"
    );
}

#[tokio::test]
async fn age_header_counts_the_seconds_spent_in_the_cache_plus_the_upstream_age() {
    let (cache, clock) = default_cache();
    fetch_through(&cache, "/a", whole(200, &[("age", "5")], "x")).await;
    clock.advance(Duration::from_secs(3));
    let hit = expect_hit(lookup(&cache, Method::GET, "/a", &[]));
    assert_eq!(hit.headers()["age"], "8");
    // The upstream Age also shortened the lifetime: 60s - 5s.
    clock.advance(Duration::from_secs(53));
    assert!(!is_cached(&cache, "/a"));
}

#[tokio::test]
async fn upstream_no_store_private_no_cache_and_set_cookie_are_not_stored() {
    let refusals: &[(&str, &str)] = &[
        ("cache-control", "no-store"),
        ("cache-control", "private, max-age=60"),
        ("cache-control", "public, no-cache=\"set-cookie\""),
        ("set-cookie", "session=abc"),
        ("vary", "*"),
        ("expires", "0"),
    ];
    for refusal in refusals {
        let (cache, _clock) = default_cache();
        let body = fetch_through(&cache, "/a", whole(200, &[*refusal], "secret")).await;
        assert_eq!(
            body, "secret",
            "the client still gets the response for {refusal:?}"
        );
        assert!(!is_cached(&cache, "/a"), "{refusal:?} must not be stored");
    }
}

#[tokio::test]
async fn status_codes_outside_the_list_are_not_stored() {
    let (cache, _clock) = default_cache();
    fetch_through(&cache, "/a", whole(500, &[], "oops")).await;
    assert!(!is_cached(&cache, "/a"));
    fetch_through(&cache, "/gone", whole(404, &[], "nope")).await;
    assert!(is_cached(&cache, "/gone"));
}

#[tokio::test]
async fn upstream_max_age_shorter_than_the_ttl_wins() {
    let (cache, clock) = default_cache();
    fetch_through(
        &cache,
        "/a",
        whole(200, &[("cache-control", "max-age=1")], "x"),
    )
    .await;
    clock.advance(Duration::from_millis(900));
    assert!(is_cached(&cache, "/a"));
    clock.advance(Duration::from_millis(200));
    assert!(!is_cached(&cache, "/a"));
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_and_the_ttl_caps_both() {
    let (cache, clock) = cache_with(CacheSpec {
        ttl: secs(10),
        ..CacheSpec::default()
    });
    let cc = ("cache-control", "max-age=1, s-maxage=3600");
    fetch_through(&cache, "/a", whole(200, &[cc], "x")).await;
    clock.advance(Duration::from_secs(5));
    assert!(
        is_cached(&cache, "/a"),
        "s-maxage applies to a shared cache, not max-age"
    );
    clock.advance(Duration::from_secs(6));
    assert!(
        !is_cached(&cache, "/a"),
        "the route's ttl is the upper bound"
    );
}

#[tokio::test]
async fn expires_bounds_the_lifetime_when_there_is_no_max_age() {
    let (cache, clock) = default_cache();
    let upstream = whole(
        200,
        &[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:49:47 GMT"),
        ],
        "x",
    );
    fetch_through(&cache, "/a", upstream).await;
    clock.advance(Duration::from_secs(9));
    assert!(is_cached(&cache, "/a"));
    clock.advance(Duration::from_secs(2));
    assert!(!is_cached(&cache, "/a"));
}

#[test]
fn imf_fixdate_parses_to_the_unix_time() {
    let t = parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
    let leap = parse_imf_fixdate("Thu, 29 Feb 2024 00:00:00 GMT").unwrap();
    assert_eq!(
        leap.duration_since(UNIX_EPOCH).unwrap().as_secs(),
        1_709_164_800
    );
    assert!(parse_imf_fixdate("Sunday, 06-Nov-94 08:49:37 GMT").is_none());
    assert!(parse_imf_fixdate("0").is_none());
}

#[tokio::test]
async fn vary_on_accept_encoding_keeps_one_variant_per_encoding() {
    let (cache, _clock) = default_cache();
    for (encoding, body) in [("gzip", "zipped"), ("identity", "plain")] {
        let req = [("accept-encoding", encoding)];
        let ticket = expect_miss(lookup(&cache, Method::GET, "/a", &req));
        let upstream = whole(200, &[("vary", "Accept-Encoding")], body);
        body_text(cache.store(ticket, upstream)).await;
    }
    let gzip = expect_hit(lookup(
        &cache,
        Method::GET,
        "/a",
        &[("accept-encoding", "gzip")],
    ));
    assert_eq!(body_text(gzip).await, "zipped");
    let plain = expect_hit(lookup(
        &cache,
        Method::GET,
        "/a",
        &[("accept-encoding", "identity")],
    ));
    assert_eq!(body_text(plain).await, "plain");
    expect_miss(lookup(
        &cache,
        Method::GET,
        "/a",
        &[("accept-encoding", "br")],
    ));
    expect_miss(lookup(&cache, Method::GET, "/a", &[]));
}

#[tokio::test]
async fn a_new_response_replaces_the_variant_it_would_have_been_served_from() {
    let (cache, _clock) = default_cache();
    fetch_through(&cache, "/a", whole(200, &[], "old")).await;
    let ticket = expect_miss(lookup(
        &cache,
        Method::GET,
        "/a",
        &[("cache-control", "no-cache")],
    ));
    body_text(cache.store(ticket, whole(200, &[], "new"))).await;
    let hit = expect_hit(lookup(&cache, Method::GET, "/a", &[]));
    assert_eq!(body_text(hit).await, "new");
    let one_entry = cache.stored_bytes();
    fetch_through(&cache, "/b", whole(200, &[], "new")).await;
    assert_eq!(
        cache.stored_bytes(),
        2 * one_entry,
        "only one variant of /a remains"
    );
}

#[tokio::test]
async fn body_larger_than_max_body_bytes_passes_through_whole_and_is_not_stored() {
    let (cache, _clock) = cache_with(CacheSpec {
        max_body_bytes: 8,
        ..CacheSpec::default()
    });
    let body = fetch_through(&cache, "/big", streamed(200, &[], &["0123", "4567", "89"])).await;
    assert_eq!(body, "0123456789");
    assert!(!is_cached(&cache, "/big"));

    // Declared too large: not even copied.
    let body = fetch_through(&cache, "/declared", whole(200, &[], "0123456789")).await;
    assert_eq!(body, "0123456789");
    assert!(!is_cached(&cache, "/declared"));

    // Exactly the limit is fine.
    fetch_through(&cache, "/fits", streamed(200, &[], &["0123", "4567"])).await;
    assert!(is_cached(&cache, "/fits"));
}

#[tokio::test]
async fn body_that_fails_midway_is_not_stored() {
    let (cache, _clock) = default_cache();
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"half"))),
        Err("upstream reset".into()),
    ];
    let upstream = respond(
        200,
        &[],
        StreamBody::new(futures::stream::iter(frames)).boxed(),
    );
    let ticket = expect_miss(lookup(&cache, Method::GET, "/a", &[]));
    let result = cache.store(ticket, upstream).into_body().collect().await;
    assert!(result.is_err(), "the client sees the failure");
    assert!(!is_cached(&cache, "/a"));
}

#[tokio::test]
async fn body_abandoned_by_the_client_is_not_stored() {
    let (cache, _clock) = default_cache();
    let ticket = expect_miss(lookup(&cache, Method::GET, "/a", &[]));
    let mut body = cache
        .store(ticket, streamed(200, &[], &["one", "two"]))
        .into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert!(!is_cached(&cache, "/a"));
}

#[tokio::test]
async fn chunks_reach_the_client_as_they_arrive_while_being_copied() {
    let (cache, _clock) = default_cache();
    let (sender, receiver) = mpsc::unbounded::<Result<Frame<Bytes>, BoxError>>();
    let upstream = respond(200, &[], StreamBody::new(receiver).boxed());
    let ticket = expect_miss(lookup(&cache, Method::GET, "/live", &[]));
    let mut body = cache.store(ticket, upstream).into_body();

    sender
        .unbounded_send(Ok(Frame::data(Bytes::from_static(b"first "))))
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(
        frame.into_data().unwrap(),
        "first ",
        "no waiting for the rest"
    );
    assert!(
        !is_cached(&cache, "/live"),
        "not stored before the body completes"
    );

    sender
        .unbounded_send(Ok(Frame::data(Bytes::from_static(b"second"))))
        .unwrap();
    drop(sender);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    let hit = expect_hit(lookup(&cache, Method::GET, "/live", &[]));
    assert_eq!(body_text(hit).await, "first second");
}

#[tokio::test]
async fn head_is_answered_from_a_cached_get_without_a_body() {
    let (cache, _clock) = default_cache();
    fetch_through(
        &cache,
        "/a",
        streamed(200, &[("etag", "\"v1\"")], &["hello"]),
    )
    .await;
    let head = expect_hit(lookup(&cache, Method::HEAD, "/a", &[]));
    assert_eq!(head.headers()["content-length"], "5");
    assert_eq!(head.headers()["etag"], "\"v1\"");
    assert_eq!(body_text(head).await, "");
}

#[tokio::test]
async fn get_is_not_answered_from_a_head_only_entry() {
    let (cache, _clock) = default_cache();
    let ticket = expect_miss(lookup(&cache, Method::HEAD, "/a", &[]));
    let upstream = respond(200, &[("content-length", "5")], empty());
    body_text(cache.store(ticket, upstream)).await;
    let head = expect_hit(lookup(&cache, Method::HEAD, "/a", &[]));
    assert_eq!(head.headers()["content-length"], "5");
    expect_miss(lookup(&cache, Method::GET, "/a", &[]));
}

#[tokio::test]
async fn request_with_authorization_or_no_store_bypasses_the_cache() {
    let (cache, _clock) = default_cache();
    fetch_through(&cache, "/a", whole(200, &[], "public")).await;
    for req in [
        ("authorization", "Bearer t0ken"),
        ("cache-control", "no-store"),
    ] {
        let ticket = expect_bypass(lookup(&cache, Method::GET, "/a", &[req]));
        let resp = cache.store(ticket, whole(200, &[], "mine"));
        assert_eq!(resp.headers()[X_CACHE], "BYPASS");
        assert_eq!(body_text(resp).await, "mine");
    }
    let hit = expect_hit(lookup(&cache, Method::GET, "/a", &[]));
    assert_eq!(
        body_text(hit).await,
        "public",
        "bypassed responses were not stored"
    );
}

#[tokio::test]
async fn no_cache_request_skips_the_entry_but_stores_the_fresh_response() {
    let (cache, _clock) = default_cache();
    fetch_through(&cache, "/a", whole(200, &[], "v1")).await;
    for req in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
    ] {
        let ticket = expect_miss(lookup(&cache, Method::GET, "/a", &[req]));
        body_text(cache.store(ticket, whole(200, &[], "v2"))).await;
    }
    let hit = expect_hit(lookup(&cache, Method::GET, "/a", &[]));
    assert_eq!(body_text(hit).await, "v2");
}

#[tokio::test]
async fn request_max_age_refuses_older_entries() {
    let (cache, clock) = default_cache();
    fetch_through(&cache, "/a", whole(200, &[], "x")).await;
    clock.advance(Duration::from_secs(10));
    expect_hit(lookup(
        &cache,
        Method::GET,
        "/a",
        &[("cache-control", "max-age=10")],
    ));
    expect_miss(lookup(
        &cache,
        Method::GET,
        "/a",
        &[("cache-control", "max-age=9")],
    ));
}

#[tokio::test]
async fn successful_unsafe_request_drops_the_entries_of_its_target() {
    let (cache, _clock) = default_cache();
    fetch_through(&cache, "/a", whole(200, &[], "x")).await;
    let failed = expect_bypass(lookup(&cache, Method::POST, "/a", &[]));
    let resp = cache.store(failed, whole(500, &[], ""));
    assert_eq!(resp.headers()[X_CACHE], "BYPASS");
    assert!(is_cached(&cache, "/a"), "an error response changes nothing");
    let ok = expect_bypass(lookup(&cache, Method::DELETE, "/a", &[]));
    cache.store(ok, whole(204, &[], ""));
    assert!(!is_cached(&cache, "/a"));
    assert_eq!(cache.stored_bytes(), 0);
}

#[tokio::test]
async fn hop_by_hop_and_per_request_headers_are_not_stored() {
    let (cache, _clock) = default_cache();
    let upstream = whole(
        200,
        &[
            ("connection", "x-internal"),
            ("x-internal", "1"),
            ("keep-alive", "timeout=5"),
            ("x-request-id", "first-request"),
            ("x-kept", "yes"),
        ],
        "x",
    );
    fetch_through(&cache, "/a", upstream).await;
    let hit = expect_hit(lookup(&cache, Method::GET, "/a", &[]));
    for gone in ["connection", "x-internal", "keep-alive", "x-request-id"] {
        assert!(!hit.headers().contains_key(gone), "{gone} was replayed");
    }
    assert_eq!(hit.headers()["x-kept"], "yes");
}

#[tokio::test]
async fn eviction_keeps_stored_bytes_within_the_bound_and_drops_the_least_recently_used() {
    let body = "b".repeat(400);
    let (cache, _clock) = cache_with(CacheSpec {
        max_body_bytes: 1000,
        max_total_bytes: 2000,
        ..CacheSpec::default()
    });
    for path in ["/0", "/1", "/2", "/3"] {
        fetch_through(&cache, path, whole(200, &[], &body)).await;
    }
    let per_entry = cache.stored_bytes() / 4;
    assert!(per_entry > 400, "headers and key count too: {per_entry}");
    assert!(
        is_cached(&cache, "/0"),
        "touch /0 so /1 is now the least recently used"
    );
    for path in ["/4", "/5", "/6", "/7", "/8", "/9"] {
        fetch_through(&cache, path, whole(200, &[], &body)).await;
        assert!(
            cache.stored_bytes() <= 2000,
            "{} bytes",
            cache.stored_bytes()
        );
    }
    assert!(is_cached(&cache, "/9"));
    assert!(!is_cached(&cache, "/1"));
    assert!(!is_cached(&cache, "/2"));
}

#[tokio::test]
async fn an_entry_larger_than_the_whole_budget_is_not_stored() {
    let (cache, _clock) = cache_with(CacheSpec {
        max_body_bytes: 100,
        max_total_bytes: 100,
        ..CacheSpec::default()
    });
    fetch_through(
        &cache,
        "/a",
        whole(200, &[("x-padding", &"p".repeat(200))], "x"),
    )
    .await;
    assert!(!is_cached(&cache, "/a"));
    assert_eq!(cache.stored_bytes(), 0);
}

#[tokio::test]
async fn variants_per_key_are_capped() {
    let (cache, _clock) = default_cache();
    for i in 0..(MAX_VARIANTS_PER_KEY + 4) {
        let language = format!("lang-{i}");
        let req = [("accept-language", language.as_str())];
        let ticket = expect_miss(lookup(&cache, Method::GET, "/a", &req));
        body_text(cache.store(ticket, whole(200, &[("vary", "accept-language")], "x"))).await;
    }
    let entries = cache.shared.lock_entries();
    let variants = entries.by_key.values().map(Vec::len).sum::<usize>();
    assert_eq!(variants, MAX_VARIANTS_PER_KEY);
    assert_eq!(entries.recency.len(), MAX_VARIANTS_PER_KEY);
}

#[tokio::test]
async fn lookups_are_counted_per_route_and_result() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let (cache, _clock) = default_cache();
    let ticket = metrics::with_local_recorder(&recorder, || {
        expect_bypass(lookup(&cache, Method::POST, "/a", &[]));
        expect_miss(lookup(&cache, Method::GET, "/a", &[]))
    });
    body_text(cache.store(ticket, whole(200, &[], "x"))).await;
    metrics::with_local_recorder(&recorder, || {
        expect_hit(lookup(&cache, Method::GET, "/a", &[]));
        expect_hit(lookup(&cache, Method::HEAD, "/a", &[]));
    });
    let rendered = handle.render();
    for (result, count) in [("hit", 2), ("miss", 1), ("bypass", 1)] {
        let line = format!(
            "konnect_proxy_cache_lookups_total{{route=\"users\",result=\"{result}\"}} {count}"
        );
        assert!(rendered.contains(&line), "missing {line:?} in:\n{rendered}");
    }
}

#[test]
fn spec_defaults_apply_and_unknown_fields_are_refused() {
    let spec: CacheSpec = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(spec, CacheSpec::default());
    assert_eq!(spec.ttl.0, Duration::from_secs(60));
    assert_eq!(spec.max_body_bytes, 1 << 20);
    assert_eq!(spec.max_total_bytes, 64 << 20);
    assert_eq!(spec.status_codes, vec![200, 203, 204, 301, 404, 410]);
    assert!(spec.validate("spec.cache").is_ok());
    let unknown = serde_json::from_value::<CacheSpec>(serde_json::json!({"tll": "5s"}));
    assert!(unknown.is_err());
    let parsed: CacheSpec = serde_json::from_value(serde_json::json!({"ttl": "250ms"})).unwrap();
    assert_eq!(parsed.ttl.0, Duration::from_millis(250));
}

#[test]
fn validate_names_the_field_that_is_wrong() {
    let field_of = |spec: CacheSpec| spec.validate("spec.cache").unwrap_err().field;
    let zero_ttl = CacheSpec {
        ttl: secs(0),
        ..CacheSpec::default()
    };
    assert_eq!(field_of(zero_ttl), "spec.cache.ttl");
    let body_over_total = CacheSpec {
        max_body_bytes: 10,
        max_total_bytes: 5,
        ..CacheSpec::default()
    };
    assert_eq!(field_of(body_over_total), "spec.cache.max_body_bytes");
    let partial = CacheSpec {
        status_codes: vec![200, 206],
        ..CacheSpec::default()
    };
    assert_eq!(field_of(partial), "spec.cache.status_codes[1]");
    let none = CacheSpec {
        status_codes: vec![],
        ..CacheSpec::default()
    };
    assert_eq!(field_of(none), "spec.cache.status_codes");
}

//! Unit tests of route matching: path normalisation attacks, each specificity rule, and a
//! randomised comparison of `Router::find` against a linear-scan reference.

use std::cmp::Reverse;
use std::sync::OnceLock;

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use regex::Regex;

use super::*;

// === helpers ===

fn route(name: &str) -> RouteRule {
    RouteRule {
        name: name.to_owned(),
        hosts: Vec::new(),
        paths: Vec::new(),
        methods: Vec::new(),
        headers: Vec::new(),
        query: Vec::new(),
        priority: 0,
    }
}

fn prefix(p: &str) -> PathPattern {
    PathPattern::Prefix(p.to_owned())
}

fn exact(p: &str) -> PathPattern {
    PathPattern::Exact(p.to_owned())
}

fn regex(p: &str) -> PathPattern {
    PathPattern::Regex(p.to_owned())
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn condition(name: &str, values: &[&str]) -> (String, Vec<String>) {
    (name.to_owned(), strings(values))
}

/// A request as a test writes it; `path` is raw and gets normalised like the gateway does.
#[derive(Clone)]
struct Request<'t> {
    method: &'t str,
    host: Option<&'t str>,
    path: &'t str,
    query: Option<&'t str>,
    headers: Vec<(&'t str, &'t str)>,
}

fn request<'t>(host: Option<&'t str>, path: &'t str) -> Request<'t> {
    Request {
        method: "GET",
        host,
        path,
        query: None,
        headers: Vec::new(),
    }
}

fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header names are valid"),
            HeaderValue::from_str(value).expect("test header values are valid"),
        );
    }
    map
}

/// Runs `find` and hands the match (with the normalised path it saw) to `inspect`.
fn with_match<T>(
    router: &Router,
    req: &Request<'_>,
    inspect: impl FnOnce(Option<RouteMatch<'_>>, &str) -> T,
) -> T {
    let path = normalize_path(req.path).expect("test request paths are valid");
    let headers = header_map(&req.headers);
    let input = MatchInput {
        method: req.method,
        host: req.host,
        path: &path,
        query: req.query,
        headers: &headers,
    };
    inspect(router.find(&input), &path)
}

fn winner(router: &Router, req: &Request<'_>) -> Option<String> {
    with_match(router, req, |found, _| found.map(|m| m.rule.name.clone()))
}

fn router(rules: Vec<RouteRule>) -> Router {
    Router::new(rules).expect("test rules compile")
}

// === path normalisation ===

#[test]
fn dot_dot_segments_cannot_climb_out_of_a_prefix() {
    assert_eq!(normalize_path("/admin/../secret").unwrap(), "/secret");
    assert_eq!(normalize_path("/public/a/../../secret").unwrap(), "/secret");
    assert_eq!(normalize_path("/../secret").unwrap(), "/secret");
    assert_eq!(normalize_path("/../../../secret").unwrap(), "/secret");
    assert_eq!(normalize_path("/..").unwrap(), "/");
}

#[test]
fn empty_and_dot_segments_are_removed() {
    assert_eq!(normalize_path("//secret").unwrap(), "/secret");
    assert_eq!(normalize_path("/a//b///c").unwrap(), "/a/b/c");
    assert_eq!(normalize_path("/./secret").unwrap(), "/secret");
    assert_eq!(normalize_path("/a/./././b").unwrap(), "/a/b");
    assert_eq!(normalize_path("").unwrap(), "/");
    assert_eq!(normalize_path("/").unwrap(), "/");
    assert_eq!(normalize_path("//").unwrap(), "/");
}

#[test]
fn encoded_dots_are_decoded_before_dot_segments_are_resolved() {
    assert_eq!(normalize_path("/%2e%2e/secret").unwrap(), "/secret");
    assert_eq!(normalize_path("/%2E%2e/secret").unwrap(), "/secret");
    assert_eq!(normalize_path("/admin/.%2E/secret").unwrap(), "/secret");
    assert_eq!(normalize_path("/%2e/secret").unwrap(), "/secret");
    assert_eq!(
        normalize_path("/a/%2E%2E%2f").unwrap_err(),
        PathError::EncodedSlash
    );
}

#[test]
fn encoded_slashes_and_backslashes_are_refused_in_any_case() {
    for raw in ["/a%2fb", "/a%2Fb", "/%2F", "/admin%2f..%2fsecret"] {
        assert_eq!(normalize_path(raw), Err(PathError::EncodedSlash), "{raw}");
    }
    assert_eq!(normalize_path("/a%5cb"), Err(PathError::EncodedBackslash));
    assert_eq!(normalize_path("/a%5Cb"), Err(PathError::EncodedBackslash));
    assert_eq!(normalize_path("/a\\..\\secret"), Err(PathError::Backslash));
    assert_eq!(PathError::EncodedSlash.to_string(), "encoded '/' in path");
}

#[test]
fn unreserved_escapes_are_decoded_and_other_escapes_uppercased() {
    assert_eq!(normalize_path("/%73ecret").unwrap(), "/secret");
    assert_eq!(normalize_path("/%53ecret").unwrap(), "/Secret");
    assert_eq!(normalize_path("/%7euser/%2D%5f").unwrap(), "/~user/-_");
    assert_eq!(normalize_path("/a%3ab%3Ac").unwrap(), "/a%3Ab%3Ac");
    assert_eq!(normalize_path("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    assert_eq!(normalize_path("/a%20b").unwrap(), "/a%20b");
}

#[test]
fn characters_not_allowed_in_a_path_are_escaped_and_sub_delimiters_kept() {
    assert_eq!(normalize_path("/café").unwrap(), "/caf%C3%A9");
    assert_eq!(normalize_path("/a b\"<>").unwrap(), "/a%20b%22%3C%3E");
    assert_eq!(
        normalize_path("/a:b@c!$&'()*+,;=").unwrap(),
        "/a:b@c!$&'()*+,;="
    );
}

#[test]
fn trailing_slash_is_kept_and_dot_endings_become_one() {
    assert_eq!(normalize_path("/a/").unwrap(), "/a/");
    assert_eq!(normalize_path("/a//").unwrap(), "/a/");
    assert_eq!(normalize_path("/a/b/..").unwrap(), "/a/");
    assert_eq!(normalize_path("/a/.").unwrap(), "/a/");
    assert_eq!(normalize_path("/a/b").unwrap(), "/a/b");
}

#[test]
fn relative_asterisk_control_and_malformed_paths_are_refused() {
    assert_eq!(normalize_path("a/b"), Err(PathError::NotAbsolute));
    assert_eq!(normalize_path("*"), Err(PathError::NotAbsolute));
    assert_eq!(normalize_path("http://x/a"), Err(PathError::NotAbsolute));
    for raw in ["/a\0b", "/a\nb", "/a\rb", "/a\tb", "/a\u{7f}", "/a%00b"] {
        assert_eq!(
            normalize_path(raw),
            Err(PathError::ControlCharacter),
            "{raw:?}"
        );
    }
    for raw in ["/a%", "/a%2", "/a%zz", "/a%g0", "/%%41"] {
        assert_eq!(
            normalize_path(raw),
            Err(PathError::MalformedPercentEncoding),
            "{raw}"
        );
    }
}

#[test]
fn a_prefix_route_cannot_be_bypassed_by_spelling_the_path_differently() {
    let router = router(vec![
        RouteRule {
            paths: vec![prefix("/secret")],
            headers: vec![condition("x-admin-token", &["t0ps3cret"])],
            ..route("secret-guarded")
        },
        RouteRule {
            paths: vec![prefix("/secret")],
            ..route("secret-denied")
        },
        RouteRule {
            paths: vec![prefix("/")],
            ..route("public")
        },
    ]);
    for raw in [
        "/secret",
        "/admin/../secret",
        "//secret",
        "/./secret",
        "/%2e%2e/secret",
        "/%2E%2e/secret",
        "/%73ecret",
        "/%73%65%63%72%65%74/x",
        "/public/%2e%2E/secret/",
    ] {
        assert_eq!(
            winner(&router, &request(None, raw)).as_deref(),
            Some("secret-denied"),
            "{raw}"
        );
    }
    for raw in ["/a%2fb", "/a%2Fb", "/public%2f..%2fsecret"] {
        assert!(normalize_path(raw).is_err(), "{raw}");
    }
}

#[test]
fn normalisation_is_a_fixed_point() {
    let mut rng = SplitMix64(7);
    let pieces = [
        "/", "a", ".", "..", "%2e", "%2E", "%61", "%3a", "%C3%A9", "é", " ", "//", "~", "%7E",
    ];
    for _ in 0..5_000 {
        let mut raw = String::from("/");
        for _ in 0..rng.below(8) {
            raw.push_str(pieces[rng.below(pieces.len())]);
        }
        let once = normalize_path(&raw).expect("generated paths are valid");
        assert_eq!(normalize_path(&once).as_ref(), Ok(&once), "{raw}");
    }
}

// === specificity ===

#[test]
fn exact_path_beats_regex_and_regex_beats_prefix() {
    let rules = vec![
        RouteRule {
            paths: vec![prefix("/users")],
            priority: 100,
            ..route("prefix")
        },
        RouteRule {
            paths: vec![regex("^/users/[0-9]+$")],
            priority: 50,
            ..route("regex")
        },
        RouteRule {
            paths: vec![exact("/users/42")],
            ..route("exact")
        },
    ];
    let router = router(rules);
    assert_eq!(
        winner(&router, &request(None, "/users/42")).as_deref(),
        Some("exact")
    );
    assert_eq!(
        winner(&router, &request(None, "/users/7")).as_deref(),
        Some("regex")
    );
    assert_eq!(
        winner(&router, &request(None, "/users/me")).as_deref(),
        Some("prefix")
    );
    assert_eq!(winner(&router, &request(None, "/other")), None);
}

#[test]
fn longer_prefix_beats_shorter_and_trailing_slash_counts() {
    let router = router(vec![
        RouteRule {
            paths: vec![prefix("/")],
            ..route("root")
        },
        RouteRule {
            paths: vec![prefix("/api")],
            ..route("api")
        },
        RouteRule {
            paths: vec![prefix("/api/")],
            ..route("api-slash")
        },
        RouteRule {
            paths: vec![prefix("/api/v1")],
            ..route("api-v1")
        },
        RouteRule { ..route("no-path") },
    ]);
    assert_eq!(
        winner(&router, &request(None, "/api")).as_deref(),
        Some("api")
    );
    assert_eq!(
        winner(&router, &request(None, "/api/")).as_deref(),
        Some("api-slash")
    );
    assert_eq!(
        winner(&router, &request(None, "/api/v2")).as_deref(),
        Some("api-slash")
    );
    assert_eq!(
        winner(&router, &request(None, "/api/v1/x")).as_deref(),
        Some("api-v1")
    );
    assert_eq!(
        winner(&router, &request(None, "/api/v1")).as_deref(),
        Some("api-v1")
    );
    assert_eq!(
        winner(&router, &request(None, "/apiary")).as_deref(),
        Some("root")
    );
}

#[test]
fn prefixes_match_whole_segments_only() {
    let router = router(vec![RouteRule {
        paths: vec![prefix("/api")],
        ..route("api")
    }]);
    for path in ["/api", "/api/", "/api/x/y"] {
        assert_eq!(
            winner(&router, &request(None, path)).as_deref(),
            Some("api"),
            "{path}"
        );
    }
    for path in ["/apix", "/ap", "/", "/x/api"] {
        assert_eq!(winner(&router, &request(None, path)), None, "{path}");
    }
    let slash_router = router_with_prefix("/api/");
    assert_eq!(winner(&slash_router, &request(None, "/api")), None);
    assert_eq!(
        winner(&slash_router, &request(None, "/api/")).as_deref(),
        Some("only")
    );
}

fn router_with_prefix(p: &str) -> Router {
    router(vec![RouteRule {
        paths: vec![prefix(p)],
        ..route("only")
    }])
}

#[test]
fn matched_prefix_length_is_reported_for_strip_prefix() {
    let router = router(vec![
        RouteRule {
            paths: vec![prefix("/api/v1"), exact("/health")],
            ..route("api")
        },
        RouteRule {
            paths: vec![prefix("/static/")],
            ..route("static")
        },
    ]);
    with_match(&router, &request(None, "/api/v1/users"), |found, _| {
        let found = found.expect("prefix matches");
        assert_eq!((found.path_pattern, found.matched_prefix_len), (Some(0), 7));
    });
    with_match(&router, &request(None, "/health"), |found, _| {
        let found = found.expect("exact matches");
        assert_eq!((found.path_pattern, found.matched_prefix_len), (Some(1), 7));
    });
    with_match(&router, &request(None, "/static/app.js"), |found, _| {
        assert_eq!(found.expect("prefix matches").matched_prefix_len, 8);
    });
}

#[test]
fn path_patterns_are_normalised_when_compiled() {
    let router = router(vec![
        RouteRule {
            paths: vec![prefix("/a/./b//c/../")],
            ..route("messy-prefix")
        },
        RouteRule {
            paths: vec![exact("/caf%c3%a9")],
            ..route("encoded-exact")
        },
    ]);
    assert_eq!(
        winner(&router, &request(None, "/a/b/x")).as_deref(),
        Some("messy-prefix")
    );
    assert_eq!(
        winner(&router, &request(None, "/café")).as_deref(),
        Some("encoded-exact")
    );
    assert_eq!(
        winner(&router, &request(None, "/caf%C3%A9")).as_deref(),
        Some("encoded-exact")
    );
}

#[test]
fn exact_host_beats_wildcard_beats_any_host_even_against_a_better_path() {
    let router = router(vec![
        RouteRule {
            paths: vec![exact("/x")],
            priority: 9,
            ..route("any-host-exact-path")
        },
        RouteRule {
            hosts: strings(&["*.example.com"]),
            paths: vec![prefix("/")],
            ..route("wildcard")
        },
        RouteRule {
            hosts: strings(&["api.example.com"]),
            ..route("exact-host")
        },
    ]);
    assert_eq!(
        winner(&router, &request(Some("api.example.com"), "/x")).as_deref(),
        Some("exact-host")
    );
    assert_eq!(
        winner(&router, &request(Some("web.example.com"), "/x")).as_deref(),
        Some("wildcard")
    );
    assert_eq!(
        winner(&router, &request(Some("other.org"), "/x")).as_deref(),
        Some("any-host-exact-path")
    );
    assert_eq!(
        winner(&router, &request(None, "/x")).as_deref(),
        Some("any-host-exact-path")
    );
}

#[test]
fn longer_wildcard_suffix_beats_shorter() {
    let router = router(vec![
        RouteRule {
            hosts: strings(&["*.example.com"]),
            ..route("short")
        },
        RouteRule {
            hosts: strings(&["*.eu.example.com"]),
            ..route("long")
        },
    ]);
    assert_eq!(
        winner(&router, &request(Some("a.eu.example.com"), "/")).as_deref(),
        Some("long")
    );
    assert_eq!(
        winner(&router, &request(Some("a.b.eu.example.com"), "/")).as_deref(),
        Some("long")
    );
    assert_eq!(
        winner(&router, &request(Some("eu.example.com"), "/")).as_deref(),
        Some("short")
    );
    assert_eq!(
        winner(&router, &request(Some("a.us.example.com"), "/")).as_deref(),
        Some("short")
    );
}

#[test]
fn wildcard_host_needs_at_least_one_leading_label() {
    let router = router(vec![RouteRule {
        hosts: strings(&["*.example.com"]),
        ..route("wildcard")
    }]);
    for host in ["a.example.com", "a.b.example.com", "A.Example.Com:8080"] {
        assert_eq!(
            winner(&router, &request(Some(host), "/")).as_deref(),
            Some("wildcard"),
            "{host}"
        );
    }
    for host in [
        "example.com",
        ".example.com",
        "badexample.com",
        "example.com.evil.org",
    ] {
        assert_eq!(winner(&router, &request(Some(host), "/")), None, "{host}");
    }
}

#[test]
fn host_is_case_insensitive_and_its_port_and_trailing_dot_ignored() {
    let router = router(vec![
        RouteRule {
            hosts: strings(&["Api.Example.com"]),
            ..route("api")
        },
        RouteRule {
            hosts: strings(&["[::1]"]),
            ..route("ipv6")
        },
    ]);
    for host in [
        "api.example.com",
        "API.EXAMPLE.COM",
        "api.example.com:8443",
        "Api.Example.Com.:80",
    ] {
        assert_eq!(
            winner(&router, &request(Some(host), "/")).as_deref(),
            Some("api"),
            "{host}"
        );
    }
    assert_eq!(
        winner(&router, &request(Some("[::1]:8080"), "/")).as_deref(),
        Some("ipv6")
    );
    assert_eq!(winner(&router, &request(None, "/")), None);
}

#[test]
fn more_conditions_beat_fewer_before_priority() {
    let router = router(vec![
        RouteRule {
            paths: vec![prefix("/api")],
            priority: 1000,
            ..route("bare")
        },
        RouteRule {
            paths: vec![prefix("/api")],
            methods: strings(&["POST"]),
            ..route("post")
        },
        RouteRule {
            paths: vec![prefix("/api")],
            methods: strings(&["POST"]),
            headers: vec![condition("x-version", &["2"])],
            ..route("post-v2")
        },
    ]);
    let post_v2 = Request {
        method: "POST",
        headers: vec![("x-version", "2")],
        ..request(None, "/api/x")
    };
    assert_eq!(winner(&router, &post_v2).as_deref(), Some("post-v2"));
    let post_v1 = Request {
        headers: vec![("x-version", "1")],
        ..post_v2.clone()
    };
    assert_eq!(winner(&router, &post_v1).as_deref(), Some("post"));
    assert_eq!(
        winner(&router, &request(None, "/api/x")).as_deref(),
        Some("bare")
    );
}

#[test]
fn priority_breaks_ties_and_then_the_smaller_name_wins() {
    let router = router(vec![
        RouteRule {
            paths: vec![prefix("/a")],
            priority: 1,
            ..route("zeta")
        },
        RouteRule {
            paths: vec![prefix("/a")],
            priority: 2,
            ..route("yankee")
        },
        RouteRule {
            paths: vec![prefix("/b")],
            ..route("bravo")
        },
        RouteRule {
            paths: vec![prefix("/b")],
            ..route("alpha")
        },
    ]);
    assert_eq!(
        winner(&router, &request(None, "/a")).as_deref(),
        Some("yankee")
    );
    assert_eq!(
        winner(&router, &request(None, "/b")).as_deref(),
        Some("alpha")
    );
}

#[test]
fn a_rule_matches_only_when_all_its_conditions_hold() {
    let router = router(vec![
        RouteRule {
            hosts: strings(&["api.example.com"]),
            paths: vec![exact("/orders")],
            methods: strings(&["POST", "PUT"]),
            headers: vec![
                condition("content-type", &["application/json", "application/cbor"]),
                condition("X-Tenant", &[]),
            ],
            query: vec![condition("dry run", &["true", "1"])],
            ..route("strict")
        },
        RouteRule {
            paths: vec![prefix("/")],
            ..route("fallback")
        },
    ]);
    let matching = Request {
        method: "PUT",
        headers: vec![("content-type", "application/cbor"), ("x-tenant", "")],
        query: Some("a=b&dry+run=1"),
        ..request(Some("api.example.com"), "/orders")
    };
    assert_eq!(winner(&router, &matching).as_deref(), Some("strict"));
    let percent_encoded_query = Request {
        query: Some("dry%20run=tru%65"),
        ..matching.clone()
    };
    assert_eq!(
        winner(&router, &percent_encoded_query).as_deref(),
        Some("strict")
    );

    let fails = [
        Request {
            method: "GET",
            ..matching.clone()
        },
        Request {
            method: "put",
            ..matching.clone()
        },
        Request {
            host: Some("web.example.com"),
            ..matching.clone()
        },
        Request {
            path: "/orders/",
            ..matching.clone()
        },
        Request {
            query: Some("dry+run=0"),
            ..matching.clone()
        },
        Request {
            query: None,
            ..matching.clone()
        },
        Request {
            headers: vec![("content-type", "Application/JSON"), ("x-tenant", "t")],
            ..matching.clone()
        },
        Request {
            headers: vec![("content-type", "application/json")],
            ..matching.clone()
        },
    ];
    for (i, req) in fails.iter().enumerate() {
        assert_eq!(
            winner(&router, req).as_deref(),
            Some("fallback"),
            "case {i}"
        );
    }
}

#[test]
fn a_header_with_several_field_lines_matches_if_any_line_does() {
    let router = router(vec![RouteRule {
        headers: vec![condition("x-flag", &["on"])],
        ..route("flagged")
    }]);
    let req = Request {
        headers: vec![("x-flag", "off"), ("x-flag", "on")],
        ..request(None, "/")
    };
    assert_eq!(winner(&router, &req).as_deref(), Some("flagged"));
}

#[test]
fn regex_captures_are_returned_named_and_positional() {
    let router = router(vec![RouteRule {
        paths: vec![
            prefix("/unused"),
            regex(r"^/users/(?P<user>[0-9]+)/(posts|comments)(/(?P<item>\d+))?"),
        ],
        ..route("users")
    }]);
    with_match(
        &router,
        &request(None, "/users/42/posts/7/extra"),
        |found, _| {
            let found = found.expect("regex matches");
            assert_eq!(found.path_pattern, Some(1));
            assert_eq!(found.matched_prefix_len, "/users/42/posts/7".len());
            let captures: Vec<_> = found
                .captures
                .iter()
                .map(|c| (c.index, c.name, c.value.as_str()))
                .collect();
            assert_eq!(
                captures,
                vec![
                    (1, Some("user"), "42"),
                    (2, None, "posts"),
                    (3, None, "/7"),
                    (4, Some("item"), "7"),
                ]
            );
        },
    );
    with_match(&router, &request(None, "/users/42/comments"), |found, _| {
        let found = found.expect("regex matches");
        let indexes: Vec<_> = found.captures.iter().map(|c| c.index).collect();
        assert_eq!(
            indexes,
            vec![1, 2],
            "groups that did not take part are left out"
        );
    });
}

#[test]
fn an_unanchored_regex_match_consumes_no_prefix() {
    let router = router(vec![RouteRule {
        paths: vec![regex(r"\.php$")],
        ..route("php")
    }]);
    with_match(&router, &request(None, "/app/index.php"), |found, _| {
        assert_eq!(found.expect("regex matches").matched_prefix_len, 0);
    });
}

#[test]
fn a_rule_without_paths_or_hosts_matches_everything() {
    let router = router(vec![route("catch-all")]);
    assert_eq!(
        winner(&router, &request(Some("x.org"), "/a/b")).as_deref(),
        Some("catch-all")
    );
    assert_eq!(
        winner(&router, &request(None, "/")).as_deref(),
        Some("catch-all")
    );
    assert_eq!(
        winner(&Router::new(Vec::new()).unwrap(), &request(None, "/")),
        None
    );
}

// === compile errors ===

#[test]
fn compile_errors_name_the_route_and_the_bad_value() {
    let error = |rule: RouteRule| Router::new(vec![rule]).unwrap_err().to_string();

    let message = error(RouteRule {
        paths: vec![regex("^/(")],
        ..route("billing")
    });
    assert!(
        message.starts_with("route \"billing\": path regex \"^/(\": "),
        "{message}"
    );

    let message = error(RouteRule {
        paths: vec![prefix("api")],
        ..route("billing")
    });
    assert_eq!(
        message,
        "route \"billing\": path prefix \"api\": must start with '/'"
    );
    let message = error(RouteRule {
        paths: vec![exact("/a%2fb")],
        ..route("billing")
    });
    assert_eq!(
        message,
        "route \"billing\": path exact \"/a%2fb\": encoded '/' in path"
    );

    for host in [
        "",
        "*",
        "*.",
        "a.*.com",
        "api.example.com:8080",
        "a b",
        "..com",
    ] {
        let message = error(RouteRule {
            hosts: strings(&[host]),
            ..route("billing")
        });
        assert!(
            message.starts_with(&format!("route \"billing\": host \"{host}\": ")),
            "{message}"
        );
    }
    let message = error(RouteRule {
        methods: strings(&["get"]),
        ..route("billing")
    });
    assert!(message.contains("uppercase"), "{message}");
    let message = error(RouteRule {
        headers: vec![condition("bad header", &["x"])],
        ..route("billing")
    });
    assert!(message.contains("\"bad header\""), "{message}");
    let message = error(RouteRule {
        query: vec![condition("", &["x"])],
        ..route("billing")
    });
    assert!(message.contains("empty parameter name"), "{message}");

    let duplicate = Router::new(vec![route("a"), route("a")]).unwrap_err();
    assert!(matches!(duplicate, RouterError::DuplicateName { ref route } if route == "a"));
    assert!(matches!(
        Router::new(vec![route("")]).unwrap_err(),
        RouterError::EmptyName { index: 0 }
    ));
}

#[test]
fn router_can_be_shared_across_request_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router>();
}

// === randomised comparison with a linear scan ===

/// Deterministic pseudo-random numbers (SplitMix64), so failures reproduce.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'p>(&mut self, items: &[&'p str]) -> &'p str {
        items[self.below(items.len())]
    }
}

const SEGMENTS: &[&str] = &["a", "b", "api", "v1", "42", "x"];
const REQUEST_HOSTS: &[&str] = &[
    "example.com",
    "api.example.com",
    "A.Api.Example.com:8443",
    "a.api.example.com",
    "b.example.com",
    "other.org",
    "x.other.org",
    "nowhere.net",
];
const HOST_PATTERNS: &[&str] = &[
    "example.com",
    "api.example.com",
    "b.example.com",
    "*.example.com",
    "*.api.example.com",
    "*.org",
];
const REGEXES: &[&str] = &[
    r"^/a/[0-9]+",
    r"^/(?P<first>a|b)/(?P<second>[^/]+)$",
    r"/v1/",
    r"^/api(/.*)?$",
    r"x$",
    r"^/$",
];
const METHODS: &[&str] = &["GET", "POST", "PUT"];
const HEADER_NAMES: &[&str] = &["x-a", "x-b"];
const VALUES: &[&str] = &["1", "2", "two words"];

fn random_path(rng: &mut SplitMix64) -> String {
    let mut path = String::new();
    for _ in 0..rng.below(5) {
        path.push('/');
        path.push_str(rng.pick(SEGMENTS));
    }
    if path.is_empty() || rng.chance(20) {
        path.push('/');
    }
    path
}

fn random_conditions(rng: &mut SplitMix64, names: &[&str]) -> Vec<(String, Vec<String>)> {
    let mut conditions = Vec::new();
    for name in names {
        if rng.chance(20) {
            let values = (0..rng.below(3))
                .map(|_| rng.pick(VALUES).to_owned())
                .collect();
            conditions.push(((*name).to_owned(), values));
        }
    }
    conditions
}

fn random_rule(rng: &mut SplitMix64, index: usize) -> RouteRule {
    let hosts = (0..[0, 0, 1, 1, 2][rng.below(5)])
        .map(|_| rng.pick(HOST_PATTERNS).to_owned())
        .collect();
    let paths = (0..[0, 1, 1, 1, 2][rng.below(5)])
        .map(|_| match rng.below(10) {
            0..=5 => PathPattern::Prefix(random_path(rng)),
            6..=7 => PathPattern::Exact(random_path(rng)),
            _ => PathPattern::Regex(rng.pick(REGEXES).to_owned()),
        })
        .collect();
    let methods = if rng.chance(30) {
        (0..1 + rng.below(2))
            .map(|_| rng.pick(METHODS).to_owned())
            .collect()
    } else {
        Vec::new()
    };
    RouteRule {
        // Names in an order unrelated to the index, so the name tie-break is exercised.
        name: format!("r{}", (index * 7919) % 1000),
        hosts,
        paths,
        methods,
        headers: random_conditions(rng, HEADER_NAMES),
        query: random_conditions(rng, &["q", "r"]),
        priority: rng.below(3) as i32,
    }
}

/// The compiled form of one of [`REGEXES`], compiled once for the whole test run.
fn test_regex(source: &str) -> &'static Regex {
    static COMPILED: OnceLock<Vec<(&'static str, Regex)>> = OnceLock::new();
    let compiled = COMPILED.get_or_init(|| {
        REGEXES
            .iter()
            .map(|r| (*r, Regex::new(r).expect("test regexes compile")))
            .collect()
    });
    compiled
        .iter()
        .find(|(r, _)| *r == source)
        .map(|(_, regex)| regex)
        .expect("random rules use only REGEXES")
}

/// Host pattern rank as the specificity rules state it: (kind, wildcard suffix length).
fn reference_host_rank(pattern: &str, request_host: Option<&str>) -> Option<(u8, usize)> {
    let host = request_host?.split(':').next()?.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            (host.len() > suffix.len() && host.ends_with(suffix)).then_some((1, suffix.len()))
        }
        None => (host == pattern).then_some((2, 0)),
    }
}

/// (path rank, matched prefix length) as the module documentation states them.
fn reference_path_rank(pattern: &PathPattern, path: &str) -> Option<((u8, usize), usize)> {
    match pattern {
        PathPattern::Exact(p) => (path == p).then_some(((3, 0), path.len())),
        PathPattern::Regex(r) => {
            let found = test_regex(r).find(path)?;
            let consumed = if found.start() == 0 { found.end() } else { 0 };
            Some(((2, 0), consumed))
        }
        PathPattern::Prefix(p) => {
            let on_boundary = path == p
                || (path.starts_with(p.as_str())
                    && (p.ends_with('/') || path[p.len()..].starts_with('/')));
            on_boundary.then_some(((1, p.len()), p.len()))
        }
    }
}

fn reference_conditions_hold(rule: &RouteRule, req: &Request<'_>) -> bool {
    let method_ok = rule.methods.is_empty() || rule.methods.iter().any(|m| m == req.method);
    let headers_ok = rule.headers.iter().all(|(name, accepted)| {
        req.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case(name) && (accepted.is_empty() || accepted.iter().any(|a| a == v))
        })
    });
    let pairs: Vec<(String, String)> = req
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| s.replace('+', " ").replace("%20", " ");
            (decode(n), decode(v))
        })
        .collect();
    let query_ok = rule.query.iter().all(|(name, accepted)| {
        pairs
            .iter()
            .any(|(n, v)| n == name && (accepted.is_empty() || accepted.contains(v)))
    });
    method_ok && headers_ok && query_ok
}

/// The winner by brute force: every rule, every host and path, maximum specificity key.
fn reference_find(
    rules: &[RouteRule],
    req: &Request<'_>,
    path: &str,
) -> Option<(usize, Option<usize>, usize)> {
    let mut best = None;
    for (rule_index, rule) in rules.iter().enumerate() {
        if !reference_conditions_hold(rule, req) {
            continue;
        }
        let host_rank = if rule.hosts.is_empty() {
            Some((0, 0))
        } else {
            rule.hosts
                .iter()
                .filter_map(|h| reference_host_rank(h, req.host))
                .max()
        };
        let Some(host_rank) = host_rank else { continue };
        let path_ranks: Vec<(Option<usize>, (u8, usize), usize)> = if rule.paths.is_empty() {
            vec![(None, (0, 0), 0)]
        } else {
            rule.paths
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    reference_path_rank(p, path).map(|(rank, len)| (Some(i), rank, len))
                })
                .collect()
        };
        for (path_index, path_rank, consumed) in path_ranks {
            let key = (
                host_rank,
                path_rank,
                usize::from(!rule.methods.is_empty()) + rule.headers.len() + rule.query.len(),
                rule.priority,
                Reverse(rule.name.clone()),
                Reverse(path_index),
            );
            if best.as_ref().is_none_or(|(best_key, _)| key > *best_key) {
                best = Some((key, (rule_index, path_index, consumed)));
            }
        }
    }
    best.map(|(_, found)| found)
}

fn random_request<'t>(rng: &mut SplitMix64, path: &'t str, query: &'t str) -> Request<'t> {
    let host = if rng.chance(10) {
        None
    } else {
        Some(rng.pick(REQUEST_HOSTS))
    };
    let mut headers = Vec::new();
    for name in HEADER_NAMES {
        if rng.chance(50) {
            headers.push((*name, rng.pick(VALUES)));
        }
    }
    Request {
        method: rng.pick(METHODS),
        host,
        path,
        query: if query.is_empty() { None } else { Some(query) },
        headers,
    }
}

#[test]
fn router_agrees_with_a_linear_scan_on_random_rules_and_requests() {
    for seed in 1..=5u64 {
        let mut rng = SplitMix64(seed);
        let rules: Vec<RouteRule> = (0..200).map(|i| random_rule(&mut rng, i)).collect();
        let router = router(rules.clone());
        for case in 0..1_000 {
            let path = random_path(&mut rng);
            let query = [
                "",
                "q=1",
                "q=2&r=1",
                "r=two+words",
                "q=two%20words&q=1",
                "q&r=2",
            ][rng.below(6)];
            let req = random_request(&mut rng, &path, query);
            with_match(&router, &req, |found, normalized| {
                let expected = reference_find(&rules, &req, normalized);
                let actual = found
                    .as_ref()
                    .map(|m| (m.rule_index, m.path_pattern, m.matched_prefix_len));
                assert_eq!(
                    actual, expected,
                    "seed {seed} case {case}: {} {:?} {normalized} ?{query} {:?}\nrouter chose {:?}\nreference chose {:?}",
                    req.method, req.host, req.headers,
                    found.as_ref().map(|m| m.rule),
                    expected.map(|(i, _, _)| &rules[i]),
                );
                if let Some(found) = found {
                    if let Some(PathPattern::Regex(source)) = found
                        .path_pattern
                        .map(|i| &rules[found.rule_index].paths[i])
                    {
                        let groups = test_regex(source).captures(normalized).expect("it matched");
                        let expected_values: Vec<_> = groups
                            .iter()
                            .skip(1)
                            .flatten()
                            .map(|g| g.as_str())
                            .collect();
                        let values: Vec<_> =
                            found.captures.iter().map(|c| c.value.as_str()).collect();
                        assert_eq!(values, expected_values);
                    }
                }
            });
        }
    }
}

mod normalize_properties {
    //! Property tests of the path normaliser: whatever a client sends, the result is either a
    //! refusal or a canonical path that no spelling trick can move outside of.
    use super::super::normalize_path;
    use proptest::prelude::*;

    /// Path-ish strings: segments of dots, letters, escapes (also of `.` and `/`), slashes and
    /// odd bytes, so that traversal spellings come up often.
    fn pathish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_string()),
            Just("//".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just("%2f".to_string()),
            Just("%5c".to_string()),
            Just("%00".to_string()),
            Just("%".to_string()),
            Just("%4".to_string()),
            Just("\\".to_string()),
            Just("é".to_string()),
            Just(" ".to_string()),
            "[a-z]{1,3}",
            "%[0-9a-fA-F]{2}",
            any::<char>().prop_map(|c| c.to_string()),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn normalised_paths_are_canonical_fixed_points(raw in pathish()) {
            let raw = format!("/{raw}");
            if let Ok(p) = normalize_path(&raw) {
                prop_assert!(p.starts_with('/'), "{p:?}");
                prop_assert!(!p.contains("//"), "{p:?} from {raw:?}");
                prop_assert!(!p.contains('\\'), "{p:?}");
                for seg in p.split('/') {
                    prop_assert!(seg != "." && seg != "..", "dot segment in {p:?} from {raw:?}");
                    let lower = seg.to_ascii_lowercase();
                    prop_assert!(!lower.contains("%2e") && !lower.contains("%2f") && !lower.contains("%5c"),
                        "escaped dot or separator left in {p:?} from {raw:?}");
                }
                prop_assert!(p.bytes().all(|b| b.is_ascii_graphic()), "{p:?}");
                prop_assert_eq!(normalize_path(&p).ok(), Some(p.clone()), "not a fixed point");
            }
        }

        #[test]
        fn arbitrary_input_never_panics(raw in any::<String>()) {
            let _ = normalize_path(&raw);
        }

        /// A path under /public stays under /public unless it really climbs out with `..`:
        /// no escape spelling climbs further than the plain one.
        #[test]
        fn escaped_dots_climb_exactly_like_plain_ones(depth in 0usize..4, tail in "[a-z]{1,4}") {
            let plain = format!("/public/{}{tail}", "../".repeat(depth));
            let escaped = format!("/public/{}{tail}", "%2e%2E/".repeat(depth));
            prop_assert_eq!(normalize_path(&plain).ok(), normalize_path(&escaped).ok());
        }
    }
}

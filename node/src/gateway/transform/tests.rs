//! Unit tests for request and response transformations: header operations and their order,
//! path rewrites with captures, query operations, and validation against injection.

use std::collections::BTreeMap;

use hyper::header::HeaderValue;
use hyper::HeaderMap;
use serde_json::json;

use super::*;

// === Helpers ===

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

fn values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn request_transform(spec: serde_json::Value) -> RequestTransform {
    serde_json::from_value(spec).unwrap()
}

fn numbered(index: usize, value: &str) -> PathCapture<'static> {
    PathCapture {
        index,
        name: None,
        value: value.to_owned(),
    }
}

/// Rewrites `/orig` with `template` and `captures`, no query, no header operations.
fn rewrite(template: &str, captures: &[PathCapture<'_>]) -> Result<String, TransformError> {
    let transform = RequestTransform {
        path: Some(template.to_owned()),
        ..RequestTransform::default()
    };
    let input = RewriteInput {
        route: "billing",
        path: "/orig",
        query: None,
        captures,
    };
    transform
        .apply(&mut HeaderMap::new(), &input)
        .map(|(path, _)| path)
}

/// Applies `ops` to `query` through a request transform without a path template.
fn transform_query(ops: QueryOps, query: Option<&str>) -> Option<String> {
    let transform = RequestTransform {
        query: ops,
        ..RequestTransform::default()
    };
    let input = RewriteInput {
        route: "r",
        path: "/p",
        query,
        captures: &[],
    };
    let (path, query) = transform.apply(&mut HeaderMap::new(), &input).unwrap();
    assert_eq!(path, "/p");
    query
}

fn request_validation_error(spec: serde_json::Value) -> SpecError {
    request_transform(spec)
        .validate("spec.request")
        .expect_err("the spec should be refused")
}

// === Header operations ===

#[test]
fn remove_deletes_every_value_of_the_header() {
    let mut headers = header_map(&[("x-debug", "1"), ("x-debug", "2"), ("x-keep", "k")]);
    let ops = HeaderOps {
        remove: vec!["X-Debug".into()],
        ..HeaderOps::default()
    };
    ops.apply(&mut headers);
    assert!(!headers.contains_key("x-debug"));
    assert_eq!(values(&headers, "x-keep"), ["k"]);
}

#[test]
fn set_replaces_every_value_or_creates_the_header() {
    let mut headers = header_map(&[("x-env", "a"), ("x-env", "b")]);
    let ops = HeaderOps {
        set: map(&[("X-Env", "prod"), ("x-new", "n")]),
        ..HeaderOps::default()
    };
    ops.apply(&mut headers);
    assert_eq!(values(&headers, "x-env"), ["prod"]);
    assert_eq!(values(&headers, "x-new"), ["n"]);
}

#[test]
fn add_appends_a_value_and_keeps_the_existing_ones() {
    let mut headers = header_map(&[("x-tag", "old")]);
    let ops = HeaderOps {
        add: map(&[("X-Tag", "new"), ("x-fresh", "f")]),
        ..HeaderOps::default()
    };
    ops.apply(&mut headers);
    assert_eq!(values(&headers, "x-tag"), ["old", "new"]);
    assert_eq!(values(&headers, "x-fresh"), ["f"]);
}

#[test]
fn rename_moves_every_value_of_a_multi_valued_header() {
    let mut headers = header_map(&[("x-old", "1"), ("x-old", "2"), ("x-old", "3")]);
    let ops = HeaderOps {
        rename: map(&[("X-Old", "X-New")]),
        ..HeaderOps::default()
    };
    ops.apply(&mut headers);
    assert!(!headers.contains_key("x-old"));
    assert_eq!(values(&headers, "x-new"), ["1", "2", "3"]);
}

#[test]
fn rename_replaces_the_values_the_new_name_had() {
    let mut headers = header_map(&[("x-old", "moved"), ("x-new", "stale")]);
    let ops = HeaderOps {
        rename: map(&[("x-old", "x-new")]),
        ..HeaderOps::default()
    };
    ops.apply(&mut headers);
    assert_eq!(values(&headers, "x-new"), ["moved"]);
}

#[test]
fn rename_of_an_absent_header_leaves_the_new_name_alone() {
    let mut headers = header_map(&[("x-new", "kept")]);
    let ops = HeaderOps {
        rename: map(&[("x-old", "x-new")]),
        ..HeaderOps::default()
    };
    ops.apply(&mut headers);
    assert_eq!(values(&headers, "x-new"), ["kept"]);
}

#[test]
fn chained_renames_each_move_the_original_values() {
    let mut headers = header_map(&[("a", "from-a"), ("b", "from-b")]);
    let ops = HeaderOps {
        rename: map(&[("a", "b"), ("b", "c")]),
        ..HeaderOps::default()
    };
    ops.apply(&mut headers);
    assert!(!headers.contains_key("a"));
    assert_eq!(values(&headers, "b"), ["from-a"]);
    assert_eq!(values(&headers, "c"), ["from-b"]);
}

#[test]
fn header_operations_run_in_the_order_remove_rename_set_add() {
    let mut headers = header_map(&[
        ("x-gone", "g"),
        ("x-user", "alice"),
        ("x-user", "bob"),
        ("x-final", "client"),
    ]);
    let ops = HeaderOps {
        // remove runs before rename: the removed header has nothing left to move.
        remove: vec!["x-gone".into()],
        // rename runs before set and add: they act on the renamed header.
        rename: map(&[("x-gone", "x-ghost"), ("x-user", "x-final")]),
        // set replaces the renamed values, then add appends to the result.
        set: map(&[("x-final", "set")]),
        add: map(&[("x-final", "added")]),
    };
    ops.apply(&mut headers);
    assert!(!headers.contains_key("x-gone"));
    assert!(!headers.contains_key("x-ghost"));
    assert!(!headers.contains_key("x-user"));
    assert_eq!(values(&headers, "x-final"), ["set", "added"]);
}

#[test]
fn apply_skips_proxy_managed_and_invalid_entries_of_an_unvalidated_spec() {
    let mut headers = header_map(&[("content-length", "5"), ("host", "a.example")]);
    let ops = HeaderOps {
        remove: vec!["host".into()],
        set: map(&[
            ("content-length", "0"),
            ("x-evil", "a\r\nx-injected: 1"),
            ("bad name", "v"),
        ]),
        add: map(&[("transfer-encoding", "chunked")]),
        rename: map(&[("content-length", "x-length")]),
    };
    ops.apply(&mut headers);
    assert_eq!(values(&headers, "content-length"), ["5"]);
    assert_eq!(values(&headers, "host"), ["a.example"]);
    assert!(!headers.contains_key("x-evil"));
    assert!(!headers.contains_key("x-injected"));
    assert!(!headers.contains_key("transfer-encoding"));
    assert!(!headers.contains_key("x-length"));
}

#[test]
fn response_transform_edits_response_headers() {
    let transform: ResponseTransform = serde_json::from_value(json!({
        "headers": {
            "remove": ["server"],
            "rename": {"x-upstream-id": "x-request-source"},
            "set": {"cache-control": "no-store"},
            "add": {"vary": "accept-encoding"}
        }
    }))
    .unwrap();
    transform.validate("spec.response").unwrap();
    let mut headers = header_map(&[
        ("server", "nginx"),
        ("x-upstream-id", "u1"),
        ("cache-control", "max-age=60"),
        ("vary", "origin"),
    ]);
    transform.apply(&mut headers);
    assert!(!headers.contains_key("server"));
    assert_eq!(values(&headers, "x-request-source"), ["u1"]);
    assert_eq!(values(&headers, "cache-control"), ["no-store"]);
    assert_eq!(values(&headers, "vary"), ["origin", "accept-encoding"]);
}

// === Path rewrite ===

#[test]
fn rewrite_substitutes_numbered_and_named_captures_and_a_literal_dollar() {
    let captures = [
        numbered(1, "users"),
        PathCapture {
            index: 2,
            name: Some("ver"),
            value: "2".into(),
        },
    ];
    assert_eq!(
        rewrite("/api/v${ver}/$1/price$$", &captures).unwrap(),
        "/api/v2/users/price$"
    );
    assert_eq!(rewrite("/$1$2", &captures).unwrap(), "/users2");
}

#[test]
fn a_digit_after_a_numbered_capture_is_literal() {
    assert_eq!(rewrite("/$10", &[numbered(1, "a")]).unwrap(), "/a0");
}

#[test]
fn a_capture_that_did_not_match_expands_to_nothing() {
    assert_eq!(
        rewrite("/a/$3/b${missing}", &[numbered(1, "x")]).unwrap(),
        "/a/b"
    );
}

#[test]
fn without_a_template_the_path_is_forwarded_unchanged() {
    let transform = RequestTransform::default();
    let input = RewriteInput {
        route: "r",
        path: "/after/strip",
        query: Some("a=1"),
        captures: &[],
    };
    let (path, query) = transform.apply(&mut HeaderMap::new(), &input).unwrap();
    assert_eq!(path, "/after/strip");
    assert_eq!(query.as_deref(), Some("a=1"));
}

#[test]
fn a_capture_cannot_inject_a_query_or_a_fragment() {
    let path = rewrite("/items/$1", &[numbered(1, "42?admin=1#top")]).unwrap();
    assert_eq!(path, "/items/42%3Fadmin=1%23top");
    assert!(!path.contains(['?', '#']));
}

#[test]
fn a_capture_with_decoded_crlf_cannot_inject_a_header_line() {
    let path = rewrite("/items/$1", &[numbered(1, "x\r\nx-injected: 1\0")]).unwrap();
    assert_eq!(path, "/items/x%0D%0Ax-injected:%201%00");
    assert!(!path.contains(|c: char| c.is_control() || c == ' '));
}

#[test]
fn a_capture_keeps_its_escapes_and_encodes_a_stray_percent_and_non_ascii() {
    let path = rewrite("/$1", &[numbered(1, "caf%C3%A9-%0d%0a-100%-é")]).unwrap();
    assert_eq!(path, "/caf%C3%A9-%0d%0a-100%25-%C3%A9");
}

#[test]
fn a_capture_cannot_form_a_dot_segment() {
    let error = rewrite("/static/$1/data", &[numbered(1, "..")]).unwrap_err();
    assert!(error.is_caused_by_request());
    assert!(
        matches!(error, TransformError::DotSegment { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("\"billing\""), "{error}");

    let error = rewrite("/static/.$1", &[numbered(1, ".")]).unwrap_err();
    assert!(
        matches!(error, TransformError::DotSegment { .. }),
        "{error}"
    );
}

#[test]
fn a_capture_cannot_start_a_network_path_with_a_double_slash() {
    let path = rewrite("/$1", &[numbered(1, "/evil.example/x")]).unwrap();
    assert_eq!(path, "/evil.example/x");
}

#[test]
fn an_unvalidated_template_that_yields_a_relative_path_is_a_server_error_naming_the_route() {
    let error = rewrite("$1", &[numbered(1, "relative")]).unwrap_err();
    assert!(
        matches!(error, TransformError::NotAbsolute { .. }),
        "{error}"
    );
    assert!(!error.is_caused_by_request());
    assert!(
        error.to_string().starts_with("route \"billing\""),
        "{error}"
    );

    let error = rewrite("/$x", &[]).unwrap_err();
    assert!(
        matches!(error, TransformError::InvalidTemplate { .. }),
        "{error}"
    );
}

#[test]
fn a_failing_rewrite_leaves_the_headers_untouched() {
    let transform = request_transform(json!({
        "path": "/$1/x",
        "headers": {"set": {"x-a": "changed"}}
    }));
    let mut headers = header_map(&[("x-a", "original")]);
    let captures = [numbered(1, "..")];
    let input = RewriteInput {
        route: "r",
        path: "/p",
        query: None,
        captures: &captures,
    };
    assert!(transform.apply(&mut headers, &input).is_err());
    assert_eq!(values(&headers, "x-a"), ["original"]);
}

// === Query operations ===

#[test]
fn query_remove_drops_every_occurrence_and_keeps_the_order_of_the_rest() {
    let ops = QueryOps {
        remove: vec!["token".into()],
        ..QueryOps::default()
    };
    assert_eq!(
        transform_query(ops, Some("b=2&token=x&a=1&token=y&c")).as_deref(),
        Some("b=2&a=1&c")
    );
}

#[test]
fn query_remove_compares_keys_after_decoding() {
    let ops = QueryOps {
        remove: vec!["user_id".into(), "api key".into()],
        ..QueryOps::default()
    };
    assert_eq!(
        transform_query(ops, Some("user%5Fid=1&api+key=2&api%20key=3&user_idx=4")).as_deref(),
        Some("user_idx=4")
    );
}

#[test]
fn query_add_appends_encoded_pairs_after_the_existing_ones() {
    let ops = QueryOps {
        add: map(&[("a b&c", "x=y#z\r\n"), ("plain", "")]),
        ..QueryOps::default()
    };
    assert_eq!(
        transform_query(ops, Some("keep=%20raw+as+sent")).as_deref(),
        Some("keep=%20raw+as+sent&a%20b%26c=x%3Dy%23z%0D%0A&plain=")
    );
}

#[test]
fn query_remove_runs_before_add_so_both_replace_a_parameter() {
    let ops = QueryOps {
        add: map(&[("version", "2")]),
        remove: vec!["version".into()],
    };
    assert_eq!(
        transform_query(ops, Some("version=1&version=3&q=s")).as_deref(),
        Some("q=s&version=2")
    );
}

#[test]
fn query_add_works_without_an_incoming_query() {
    let ops = QueryOps {
        add: map(&[("source", "gateway")]),
        ..QueryOps::default()
    };
    assert_eq!(
        transform_query(ops, None).as_deref(),
        Some("source=gateway")
    );
}

#[test]
fn a_query_left_empty_is_none() {
    let ops = QueryOps {
        remove: vec!["only".into()],
        ..QueryOps::default()
    };
    assert_eq!(transform_query(ops, Some("only=1&only=2")), None);
    assert_eq!(transform_query(QueryOps::default(), Some("")), None);
}

#[test]
fn request_transform_applies_headers_path_and_query_together() {
    let transform = request_transform(json!({
        "headers": {"set": {"x-api-version": "2"}, "remove": ["cookie"]},
        "path": "/v2/${resource}",
        "query": {"add": {"format": "json"}, "remove": ["debug"]}
    }));
    transform.validate("spec.request").unwrap();
    let mut headers = header_map(&[("cookie", "s=1")]);
    let captures = [PathCapture {
        index: 1,
        name: Some("resource"),
        value: "orders".into(),
    }];
    let input = RewriteInput {
        route: "r",
        path: "/v1/orders",
        query: Some("debug=1&page=2"),
        captures: &captures,
    };
    let (path, query) = transform.apply(&mut headers, &input).unwrap();
    assert_eq!(path, "/v2/orders");
    assert_eq!(query.as_deref(), Some("page=2&format=json"));
    assert_eq!(values(&headers, "x-api-version"), ["2"]);
    assert!(!headers.contains_key("cookie"));
}

// === Validation ===

#[test]
fn a_spec_with_every_kind_of_operation_is_accepted() {
    let transform = request_transform(json!({
        "headers": {
            "add": {"x-a": "1"},
            "set": {"X-B": "two words\tand tab"},
            "remove": ["x-c"],
            "rename": {"x-d": "x-e"}
        },
        "path": "/v${ver}/$1/$$/%7E",
        "query": {"add": {"k": ""}, "remove": ["r"]}
    }));
    assert_eq!(transform.validate("spec.request"), Ok(()));
}

#[test]
fn unknown_fields_are_refused_and_missing_ones_default() {
    assert!(serde_json::from_value::<RequestTransform>(json!({"header": {}})).is_err());
    assert!(serde_json::from_value::<HeaderOps>(json!({"append": {}})).is_err());
    assert!(serde_json::from_value::<QueryOps>(json!({"set": {}})).is_err());
    assert!(serde_json::from_value::<ResponseTransform>(json!({"path": "/x"})).is_err());
    assert_eq!(request_transform(json!({})), RequestTransform::default());
}

#[test]
fn crlf_in_a_header_value_is_refused_as_header_injection() {
    for op in ["set", "add"] {
        let error = request_validation_error(json!({
            "headers": {op: {"x-foo": "ok\r\nx-injected: 1"}}
        }));
        assert_eq!(error.field, format!("spec.request.headers.{op}.x-foo"));
        assert!(error.message.contains("header injection"), "{error}");
    }
    let error = request_validation_error(json!({"headers": {"set": {"x-foo": "nul\u{0}"}}}));
    assert!(error.message.contains("header injection"), "{error}");
}

#[test]
fn crlf_in_a_header_name_is_refused_as_header_injection() {
    let error = request_validation_error(json!({
        "headers": {"add": {"x-foo\r\nx-injected": "1"}}
    }));
    assert_eq!(
        error.field,
        "spec.request.headers.add.x-foo\\r\\nx-injected"
    );
    assert!(error.message.contains("header injection"), "{error}");

    let error = request_validation_error(json!({"headers": {"remove": ["a\nb"]}}));
    assert_eq!(error.field, "spec.request.headers.remove[0]");
    assert!(error.message.contains("header injection"), "{error}");

    let error = request_validation_error(json!({"headers": {"rename": {"x-a": "x-b\r\n"}}}));
    assert_eq!(error.field, "spec.request.headers.rename.x-a");
    assert!(error.message.contains("header injection"), "{error}");
}

#[test]
fn other_control_characters_in_a_header_value_are_refused() {
    let error = request_validation_error(json!({"headers": {"set": {"x-foo": "bell\u{7}"}}}));
    assert_eq!(error.field, "spec.request.headers.set.x-foo");
    assert!(error.message.contains("control character"), "{error}");
}

#[test]
fn an_invalid_header_name_is_refused() {
    let error = request_validation_error(json!({"headers": {"set": {"x foo": "1"}}}));
    assert_eq!(error.field, "spec.request.headers.set.x foo");
    assert!(error.message.contains("not a valid header name"), "{error}");
}

#[test]
fn proxy_managed_headers_cannot_be_transformed_by_any_operation() {
    for name in PROXY_MANAGED_HEADERS {
        let upper = name.to_ascii_uppercase();
        for spec in [
            json!({"headers": {"set": {upper.clone(): "x"}}}),
            json!({"headers": {"add": {upper.clone(): "x"}}}),
            json!({"headers": {"remove": [upper.clone()]}}),
            json!({"headers": {"rename": {upper.clone(): "x-other"}}}),
            json!({"headers": {"rename": {"x-other": upper.clone()}}}),
        ] {
            let error = request_validation_error(spec.clone());
            assert!(
                error.message.contains("managed by the proxy"),
                "{spec}: {error}"
            );
        }
    }
    let error = serde_json::from_value::<ResponseTransform>(json!({
        "headers": {"set": {"Transfer-Encoding": "chunked"}}
    }))
    .unwrap()
    .validate("spec.response")
    .unwrap_err();
    assert_eq!(error.field, "spec.response.headers.set.Transfer-Encoding");
}

#[test]
fn the_same_header_listed_twice_in_different_case_is_refused() {
    let error = request_validation_error(json!({"headers": {"set": {"X-A": "1", "x-a": "2"}}}));
    assert!(
        error.field.starts_with("spec.request.headers.set."),
        "{error}"
    );
    assert!(error.message.contains("more than once"), "{error}");

    let error =
        request_validation_error(json!({"headers": {"rename": {"x-a": "x-c", "x-b": "X-C"}}}));
    assert!(error.message.contains("renamed to"), "{error}");

    let error = request_validation_error(json!({"headers": {"rename": {"X-Same": "x-same"}}}));
    assert!(error.message.contains("no effect"), "{error}");
}

#[test]
fn crlf_in_a_path_template_is_refused_as_injection() {
    let error = request_validation_error(json!({"path": "/a\r\nx-injected: 1"}));
    assert_eq!(error.field, "spec.request.path");
    assert!(error.message.contains("injection"), "{error}");
}

#[test]
fn a_path_template_must_be_an_absolute_path_without_query_or_fragment() {
    for template in [
        "a/b", "", "$1", "/a b", "/a?x=1", "/a#top", "/a\u{7}", "/a/../b", "/.",
    ] {
        let error = request_validation_error(json!({"path": template}));
        assert_eq!(error.field, "spec.request.path", "{template:?}");
    }
}

#[test]
fn a_path_template_refuses_malformed_references() {
    for template in [
        "/$0", "/$x", "/$", "/${", "/${1a}", "/${}", "/${a-b}", "/${ver",
    ] {
        let error = request_validation_error(json!({"path": template}));
        assert_eq!(error.field, "spec.request.path", "{template:?}");
    }
    for template in ["/$1", "/$9", "/${ver}", "/${_v2}", "/$$", "/$${x}"] {
        assert_eq!(
            request_transform(json!({"path": template})).validate("spec.request"),
            Ok(()),
            "{template:?}"
        );
    }
}

#[test]
fn query_keys_must_be_non_empty_and_query_text_free_of_line_breaks() {
    let error = request_validation_error(json!({"query": {"add": {"": "v"}}}));
    assert_eq!(error.field, "spec.request.query.add.");
    assert!(error.message.contains("must not be empty"), "{error}");

    let error = request_validation_error(json!({"query": {"add": {"k": "v\r\nx: 1"}}}));
    assert_eq!(error.field, "spec.request.query.add.k");
    assert!(error.message.contains("injection"), "{error}");

    let error = request_validation_error(json!({"query": {"remove": ["ok", "a\nb"]}}));
    assert_eq!(error.field, "spec.request.query.remove[1]");

    let error = request_validation_error(json!({"query": {"remove": [""]}}));
    assert_eq!(error.field, "spec.request.query.remove[0]");
}

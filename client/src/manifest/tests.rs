//! Tests for manifest parsing, the JSON/Struct conversions and the mapping of Apply errors
//! back to documents.

use prost_types::value::Kind as ProtoKind;
use serde_json::json;

use super::*;

fn parse_ok(text: &str) -> Vec<ManifestDoc> {
    parse_manifest("config.yaml", text).expect("manifest should parse")
}

fn parse_errors(text: &str) -> Vec<String> {
    parse_manifest("config.yaml", text)
        .expect_err("manifest should be rejected")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn multi_document_file_yields_every_resource_in_file_order() {
    let docs = parse_ok(
        "kind: Service\nname: echo\nspec:\n  url: http://echo:80\n---\n\
         kind: Route\nname: echo\nlabels:\n  team: edge\nspec:\n  service: echo\n",
    );
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0],
        ManifestDoc {
            doc_number: 1,
            kind: "Service".into(),
            name: "echo".into(),
            labels: BTreeMap::new(),
            spec: json!({"url": "http://echo:80"}),
        }
    );
    assert_eq!(docs[1].doc_number, 2);
    assert_eq!(docs[1].kind, "Route");
    assert_eq!(docs[1].labels.get("team").map(String::as_str), Some("edge"));
}

#[test]
fn empty_documents_are_skipped_but_still_counted() {
    let docs = parse_ok(
        "---\nkind: Service\nname: a\n---\n---\n# only a comment\n---\nkind: Route\nname: b\n---\n",
    );
    let numbers: Vec<usize> = docs.iter().map(|doc| doc.doc_number).collect();
    assert_eq!(numbers, vec![1, 4]);
}

#[test]
fn empty_file_has_no_resources() {
    assert!(parse_ok("").is_empty());
    assert!(parse_ok("# nothing here\n").is_empty());
}

#[test]
fn unknown_top_level_field_names_file_document_and_field() {
    let errors =
        parse_errors("kind: Service\nname: a\n---\nkind: Route\nname: b\nspecs:\n  service: a\n");
    assert_eq!(
        errors,
        vec![
            r#"config.yaml: document 2: unknown field "specs" (expected kind, name, labels, spec)"#
        ]
    );
}

#[test]
fn missing_name_is_reported_with_its_document_number() {
    let errors =
        parse_errors("kind: Service\nname: a\n---\n\n---\nkind: Route\nspec:\n  service: a\n");
    assert_eq!(errors, vec![r#"config.yaml: document 3: missing "name""#]);
}

#[test]
fn missing_kind_is_reported() {
    let errors = parse_errors("name: a\n");
    assert_eq!(errors, vec![r#"config.yaml: document 1: missing "kind""#]);
}

#[test]
fn every_bad_document_is_reported_not_only_the_first() {
    let errors = parse_errors("kind: Service\n---\nname: b\n---\nkind: Route\nname: c\nextra: 1\n");
    assert_eq!(
        errors,
        vec![
            r#"config.yaml: document 1: missing "name""#.to_string(),
            r#"config.yaml: document 2: missing "kind""#.to_string(),
            r#"config.yaml: document 3: unknown field "extra" (expected kind, name, labels, spec)"#
                .to_string(),
        ]
    );
}

#[test]
fn yaml_syntax_error_gives_document_line_and_column() {
    let errors = parse_errors("kind: Service\nname: a\n---\nkind: Route\nname: [b\nspec: {}\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let message = &errors[0];
    assert!(
        message.starts_with("config.yaml: document 2: invalid YAML"),
        "{message}"
    );
    assert!(message.contains("line "), "{message}");
    assert!(message.contains("column "), "{message}");
}

#[test]
fn document_that_is_not_a_mapping_is_rejected() {
    let errors = parse_errors("- kind: Service\n  name: a\n");
    assert_eq!(
        errors,
        vec!["config.yaml: document 1: expected a mapping with fields kind, name, labels, spec; found a list"]
    );
}

#[test]
fn missing_spec_becomes_an_empty_object() {
    let docs = parse_ok("kind: Team\nname: edge\n");
    assert_eq!(docs[0].spec, json!({}));
    let input = docs[0].to_resource_input().expect("object spec");
    assert_eq!(input.spec, Some(prost_types::Struct::default()));
}

#[test]
fn kind_written_in_plural_lowercase_is_canonicalised() {
    let docs = parse_ok("kind: services\nname: a\n");
    assert_eq!(docs[0].kind, "Service");
}

#[test]
fn label_values_must_be_strings() {
    let errors = parse_errors("kind: Service\nname: a\nlabels:\n  tier: 2\n");
    assert_eq!(
        errors,
        vec![
            r#"config.yaml: document 1: labels.tier: label values must be strings; quote it: "2""#
        ]
    );
}

#[test]
fn name_must_be_a_string() {
    let errors = parse_errors("kind: Service\nname: 42\n");
    assert_eq!(
        errors,
        vec![r#"config.yaml: document 1: "name" must be a string, found a number"#]
    );
}

#[test]
fn same_resource_twice_in_one_file_is_rejected() {
    let errors = parse_errors("kind: Route\nname: a\n---\nkind: routes\nname: a\n");
    assert_eq!(
        errors,
        vec![
            r#"config.yaml: document 2: Route "a" is already defined in document 1; each resource may appear once"#
        ]
    );
}

#[test]
fn yaml_anchors_and_merge_keys_are_resolved() {
    let docs = parse_ok(
        "kind: Service\nname: a\nspec:\n  defaults: &d {timeout_ms: 500}\n  \
         primary:\n    <<: *d\n    url: http://a\n",
    );
    assert_eq!(
        docs[0].spec,
        json!({"defaults": {"timeout_ms": 500}, "primary": {"timeout_ms": 500, "url": "http://a"}})
    );
}

#[test]
fn spec_types_survive_the_round_trip_through_struct() {
    let spec = json!({
        "string": "text",
        "integer": 42,
        "negative": -7,
        "float": 1.5,
        "flag": true,
        "nothing": null,
        "list": [1, "two", false, {"nested": [3.25]}],
        "object": {"deep": {"deeper": "yes"}},
    });
    let proto = json_to_struct(&spec).expect("object spec");
    assert_eq!(struct_to_json(&proto), spec);
}

#[test]
fn yaml_spec_types_reach_the_struct_as_written() {
    let docs = parse_ok(
        "kind: Service\nname: a\nspec:\n  port: 8080\n  weight: 0.5\n  tls: false\n  \
         version: \"2\"\n  retry: ~\n",
    );
    assert_eq!(
        docs[0].spec,
        json!({"port": 8080, "weight": 0.5, "tls": false, "version": "2", "retry": null})
    );
    let input = docs[0].to_resource_input().expect("object spec");
    let fields = input.spec.expect("spec is sent").fields;
    assert_eq!(fields["port"].kind, Some(ProtoKind::NumberValue(8080.0)));
    assert_eq!(
        fields["version"].kind,
        Some(ProtoKind::StringValue("2".into()))
    );
}

#[test]
fn whole_float_from_the_server_comes_back_as_an_integer() {
    let proto = json_to_struct(&json!({"whole": 3.0, "big": 1e300, "fraction": 0.25}))
        .expect("object spec");
    let back = struct_to_json(&proto);
    assert_eq!(back["whole"], json!(3));
    assert!(back["whole"].is_i64());
    assert_eq!(back["fraction"], json!(0.25));
    assert!(back["big"].is_f64());
}

#[test]
fn non_finite_number_from_the_server_becomes_null() {
    let mut proto = prost_types::Struct::default();
    proto.fields.insert(
        "nan".into(),
        prost_types::Value {
            kind: Some(ProtoKind::NumberValue(f64::NAN)),
        },
    );
    assert_eq!(struct_to_json(&proto), json!({"nan": null}));
}

#[test]
fn spec_that_is_not_an_object_cannot_become_a_struct() {
    let error = json_to_struct(&json!([1, 2])).expect_err("arrays are not structs");
    assert_eq!(
        error.to_string(),
        "a spec must be a JSON object, found an array"
    );
}

fn rejected_write(index: &str, message: &str) -> ClientError {
    let mut status = tonic::Status::invalid_argument(message);
    status.metadata_mut().insert(
        crate::error::WRITE_INDEX_METADATA_KEY,
        index.parse().expect("ascii metadata"),
    );
    ClientError::from_status("http://127.0.0.1:7201", status)
}

#[test]
fn apply_error_with_write_index_names_document_kind_and_name() {
    let docs = parse_ok(
        "kind: Service\nname: echo\n---\n---\nkind: Route\nname: billing\nspec:\n  service: bill\n",
    );
    let error = rejected_write("1", "spec.service: unknown service \"bill\"");
    assert_eq!(
        explain_apply_error("config.yaml", &docs, &error),
        r#"config.yaml: document 3 (Route "billing"): spec.service: unknown service "bill""#
    );
}

#[test]
fn apply_error_without_write_index_names_the_file() {
    let docs = parse_ok("kind: Service\nname: echo\n");
    let error = ClientError::from_status(
        "http://127.0.0.1:7201",
        tonic::Status::permission_denied("token is read-only"),
    );
    assert_eq!(
        explain_apply_error("config.yaml", &docs, &error),
        "config.yaml: permission denied: token is read-only (from http://127.0.0.1:7201)"
    );
}

#[test]
fn apply_error_with_out_of_range_write_index_still_shows_the_message() {
    let docs = parse_ok("kind: Service\nname: echo\n");
    let error = rejected_write("7", "spec: bad");
    let text = explain_apply_error("config.yaml", &docs, &error);
    assert!(
        text.starts_with("config.yaml: invalid request: spec: bad"),
        "{text}"
    );
}

//! End-to-end tests of the `konnectctl` binary: bad input that must fail before any call, and
//! every command against an in-process mock admin server on a real socket.

mod mock;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use konnect_client::parse_manifest;
use tokio::io::AsyncWriteExt;

use mock::{dead_endpoint, serve, Behaviour, MockNode, ADMIN_TOKEN, LISTED_NAMES};

/// Upper bound for one run of the binary, so a hang fails the test instead of stalling CI.
const RUN_LIMIT: Duration = Duration::from_secs(60);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs konnectctl in `dir` with `args`, feeding `stdin`, without the KONNECT_* variables of
/// the developer's shell.
async fn konnectctl_in(dir: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_konnectctl"))
        .args(args)
        .current_dir(dir)
        .env_remove("KONNECT_ENDPOINT")
        .env_remove("KONNECT_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start konnectctl");
    let mut child_stdin = child.stdin.take().expect("piped stdin");
    child_stdin
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(child_stdin);
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("konnectctl finished in time")
        .expect("konnectctl ran");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn konnectctl(args: &[&str]) -> Run {
    konnectctl_in(&std::env::temp_dir(), args, "").await
}

/// A temporary directory holding `config.yaml` with `manifest`.
fn dir_with_config(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.yaml"), manifest).expect("write config.yaml");
    dir
}

const GOOD_MANIFEST: &str = "kind: Service\nname: echo\nspec:\n  url: http://echo:80\n---\n\
                             kind: routes\nname: echo\nlabels:\n  team: edge\nspec:\n  service: echo\n";

// === bad input, caught before any call ===

#[tokio::test]
async fn apply_with_unknown_field_names_file_document_and_field_and_sends_nothing() {
    let node = MockNode::new(1, Behaviour::Serve);
    let endpoint = serve(node.clone()).await;
    let dir = dir_with_config(
        "kind: Service\nname: echo\n---\nkind: Route\nname: b\nspecs:\n  service: echo\n",
    );

    let run = konnectctl_in(
        dir.path(),
        &["--endpoint", &endpoint, "apply", "-f", "config.yaml"],
        "",
    )
    .await;

    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "error: config.yaml: document 2: unknown field \"specs\" (expected kind, name, labels, spec)\n"
    );
    assert_eq!(run.stdout, "");
    assert_eq!(
        node.calls(),
        0,
        "nothing may be sent when a document is bad"
    );
}

#[tokio::test]
async fn apply_reports_every_bad_document_with_its_number() {
    let dir =
        dir_with_config("kind: Service\nname: a\n---\n---\nkind: Route\nspec: {}\n---\nname: x\n");

    let run = konnectctl_in(dir.path(), &["apply", "-f", "config.yaml"], "").await;

    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "error: config.yaml: document 3: missing \"name\"\nerror: config.yaml: document 4: missing \"kind\"\n"
    );
}

#[tokio::test]
async fn apply_with_yaml_syntax_error_reports_document_line_and_column() {
    let dir = dir_with_config("kind: Service\nname: a\n---\nkind: Route\nname: [b\n");

    let run = konnectctl_in(dir.path(), &["apply", "-f", "config.yaml"], "").await;

    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: config.yaml: document 2: invalid YAML: "),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(" at line "), "{}", run.stderr);
    assert!(run.stderr.contains(" column "), "{}", run.stderr);
}

#[tokio::test]
async fn apply_of_a_file_with_only_empty_documents_is_an_error() {
    let run = konnectctl_in(
        &std::env::temp_dir(),
        &["apply", "-f", "-"],
        "---\n# nothing\n---\n",
    )
    .await;

    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("error: <stdin>: nothing to apply"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn apply_of_a_missing_file_names_the_file() {
    let run = konnectctl(&["apply", "-f", "no-such-config.yaml"]).await;

    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: cannot read manifest no-such-config.yaml: "),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn unreachable_endpoints_are_all_named_and_stdout_stays_empty() {
    let first = dead_endpoint().await;
    let second = dead_endpoint().await;
    let list = format!("{first},{}", second.trim_start_matches("http://"));

    let run = konnectctl(&["--endpoint", &list, "cluster", "init"]).await;

    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with(&format!(
            "error: no endpoint reachable (tried {first}, {second}): "
        )),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn empty_endpoint_list_is_rejected_with_a_hint() {
    let run = konnectctl(&["--endpoint", " , ", "cluster", "status"]).await;

    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("pass --endpoint"), "{}", run.stderr);
}

#[tokio::test]
async fn missing_token_file_is_reported_by_path() {
    let run = konnectctl(&["--token-file", "/no/such/token", "cluster", "status"]).await;

    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: cannot read token file /no/such/token: "),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn the_token_is_never_printed() {
    let secret = "kt_do_not_print_me";
    let node = MockNode::new(1, Behaviour::Reject);
    let endpoint = serve(node).await;
    let dead = dead_endpoint().await;

    let rejected = konnectctl(&["--endpoint", &endpoint, "--token", secret, "get", "routes"]).await;
    let unreachable = konnectctl(&["--endpoint", &dead, "--token", secret, "get", "routes"]).await;
    let help = tokio::time::timeout(
        RUN_LIMIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_konnectctl"))
            .arg("--help")
            .env("KONNECT_TOKEN", secret)
            .output(),
    )
    .await
    .expect("help finished in time")
    .expect("help ran");

    for run in [&rejected, &unreachable] {
        assert_eq!(run.code, 1);
        assert!(!run.stderr.contains(secret), "{}", run.stderr);
        assert!(!run.stdout.contains(secret), "{}", run.stdout);
    }
    assert!(!String::from_utf8_lossy(&help.stdout).contains(secret));
}

// === commands against a mock node ===

#[tokio::test]
async fn cluster_init_prints_only_the_token_on_stdout() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&["--endpoint", &endpoint, "cluster", "init"]).await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{ADMIN_TOKEN}\n"));
    assert!(run.stderr.contains("cluster-1"), "{}", run.stderr);
    assert!(run.stderr.contains("save this token"), "{}", run.stderr);
    assert!(!run.stderr.contains(ADMIN_TOKEN), "{}", run.stderr);
}

#[tokio::test]
async fn cluster_status_shows_the_header_and_the_members_table() {
    let endpoint = serve(MockNode::new(3, Behaviour::Serve)).await;

    let run = konnectctl(&["--endpoint", &endpoint, "cluster", "status"]).await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("cluster id:     cluster-1\nanswering node: 3 (Leader)\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("ID   ZONE     ROLE    PEER ADDR"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("3    zone-a   voter   127.0.0.1:7301"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn cluster_status_as_json_mirrors_the_response() {
    let endpoint = serve(MockNode::new(3, Behaviour::Serve)).await;

    let run = konnectctl(&["--endpoint", &endpoint, "-o", "json", "cluster", "status"]).await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON output");
    assert_eq!(status["node_id"], 3);
    assert_eq!(status["leader_id"], 3);
    assert_eq!(status["snapshot_index"], serde_json::Value::Null);
    assert_eq!(status["members"][0]["info"]["zone"], "zone-a");
}

#[tokio::test]
async fn cluster_add_node_prints_the_members_table() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&[
        "--endpoint",
        &endpoint,
        "cluster",
        "add-node",
        "--id",
        "4",
        "--peer-addr",
        "10.0.0.4:7301",
        "--learner",
    ])
    .await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("ID   ZONE"), "{}", run.stdout);
    assert!(
        run.stderr.contains("node 4 added as a learner"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn apply_prints_one_line_per_change_and_a_summary() {
    let node = MockNode::new(1, Behaviour::Serve);
    let endpoint = serve(node.clone()).await;
    let dir = dir_with_config(GOOD_MANIFEST);

    let run = konnectctl_in(
        dir.path(),
        &[
            "--endpoint",
            &endpoint,
            "apply",
            "-f",
            "config.yaml",
            "--prune",
        ],
        "",
    )
    .await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "Service/echo created\nRoute/echo created\nService/old deleted\nRoute/old deleted\n\
         2 created, 0 updated, 0 unchanged, 2 deleted (revision 42)\n"
    );
    let applied = node.applied();
    assert_eq!(applied.len(), 1, "one Apply call for the whole file");
    assert_eq!(applied[0].prune_kinds, vec!["Service", "Route"]);
    let kinds: Vec<&str> = applied[0]
        .resources
        .iter()
        .map(|r| r.kind.as_str())
        .collect();
    assert_eq!(kinds, vec!["Service", "Route"]);
}

#[tokio::test]
async fn apply_without_prune_sends_no_prune_kinds_and_reads_stdin() {
    let node = MockNode::new(1, Behaviour::Serve);
    let endpoint = serve(node.clone()).await;

    let run = konnectctl_in(
        &std::env::temp_dir(),
        &["--endpoint", &endpoint, "apply", "-f", "-"],
        GOOD_MANIFEST,
    )
    .await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .ends_with("2 created, 0 updated, 0 unchanged, 0 deleted (revision 42)\n"),
        "{}",
        run.stdout
    );
    assert!(node.applied()[0].prune_kinds.is_empty());
}

#[tokio::test]
async fn apply_rejected_by_the_server_names_the_document_kind_and_name() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;
    let dir = dir_with_config(
        "kind: Service\nname: echo\n---\n---\nkind: Route\nname: billing\nspec:\n  service: bill\n",
    );

    let run = konnectctl_in(
        dir.path(),
        &["--endpoint", &endpoint, "apply", "-f", "config.yaml"],
        "",
    )
    .await;

    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "error: config.yaml: document 3 (Route \"billing\"): spec.service: unknown service \"bill\"\n"
    );
    assert_eq!(run.stdout, "");
}

#[tokio::test]
async fn token_file_contents_are_sent_trimmed_as_a_bearer_token() {
    let node = MockNode::new(1, Behaviour::Serve);
    let endpoint = serve(node.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("token"), "  kt_from_file \n").expect("write token");

    let run = konnectctl_in(
        dir.path(),
        &[
            "--endpoint",
            &endpoint,
            "--token-file",
            "token",
            "get",
            "route",
            "a",
        ],
        "",
    )
    .await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        node.authorization_seen(),
        vec![Some("Bearer kt_from_file".to_string())]
    );
}

#[tokio::test]
async fn bare_host_port_endpoint_and_failover_to_the_second_endpoint_work() {
    let dead = dead_endpoint().await;
    let live = serve(MockNode::new(2, Behaviour::Serve)).await;
    let list = format!(
        "{},{}",
        dead.trim_start_matches("http://"),
        live.trim_start_matches("http://")
    );

    let run = konnectctl(&["--endpoint", &list, "get", "services", "echo"]).await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "KIND      NAME   REVISION   LABELS\nService   echo   4          team=edge\n"
    );
}

#[tokio::test]
async fn get_lists_every_page_as_a_table() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&["--endpoint", &endpoint, "get", "routes"]).await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    let names: Vec<&str> = run
        .stdout
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    assert_eq!(names, LISTED_NAMES);
}

#[tokio::test]
async fn get_json_without_name_is_an_array_of_resource_objects() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&[
        "--endpoint",
        &endpoint,
        "get",
        "routes",
        "-o",
        "json",
        "-l",
        "team=edge",
    ])
    .await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    let items: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).expect("JSON array");
    assert_eq!(items.len(), LISTED_NAMES.len());
    assert_eq!(
        items[0],
        serde_json::json!({
            "kind": "Route",
            "name": "a",
            "labels": {"team": "edge"},
            "spec": {"port": 8080, "paths": ["/a"]},
            "revision": 1,
            "create_revision": 1,
            "updated_unix_ms": 1_700_000_000_000u64,
        })
    );
}

#[tokio::test]
async fn get_json_with_name_is_a_single_object() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&[
        "--endpoint",
        &endpoint,
        "-o",
        "json",
        "get",
        "Route",
        "echo",
    ])
    .await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    let item: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON object");
    assert_eq!(item["name"], "echo");
    assert_eq!(item["spec"]["port"], 8080);
}

#[tokio::test]
async fn get_yaml_output_is_a_manifest_apply_accepts() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&["--endpoint", &endpoint, "-o", "yaml", "get", "routes"]).await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    let docs = parse_manifest("get.yaml", &run.stdout).expect("apply accepts get -o yaml");
    assert_eq!(docs.len(), LISTED_NAMES.len());
    assert_eq!(docs[0].kind, "Route");
    assert_eq!(
        docs[0].spec,
        serde_json::json!({"port": 8080, "paths": ["/a"]})
    );
}

#[tokio::test]
async fn get_of_a_missing_resource_says_not_found() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&["--endpoint", &endpoint, "get", "route", "missing"]).await;

    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        format!("error: not found: Route \"missing\" does not exist (from {endpoint})\n")
    );
}

#[tokio::test]
async fn delete_prints_kind_name_and_revision() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&[
        "--endpoint",
        &endpoint,
        "delete",
        "routes",
        "echo",
        "--expected-revision",
        "7",
    ])
    .await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "Route/echo deleted (revision 43)\n");
}

#[tokio::test]
async fn watch_prints_one_line_per_event_and_fails_when_history_is_compacted() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&[
        "--endpoint",
        &endpoint,
        "watch",
        "routes",
        "--from-revision",
        "40",
    ])
    .await;

    assert_eq!(run.stdout, "41 PUT Route/a\n42 DELETE Route/b\n");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("history compacted"), "{}", run.stderr);
}

#[tokio::test]
async fn watch_as_json_prints_one_object_per_line() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;

    let run = konnectctl(&["--endpoint", &endpoint, "-o", "json", "watch", "routes"]).await;

    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 2, "{}", run.stdout);
    // Without --from-revision the watch starts at the current revision.
    assert_eq!(events[0]["revision"], mock::LIST_REVISION + 1);
    assert_eq!(events[0]["type"], "PUT");
    assert_eq!(events[1]["type"], "DELETE");
    assert_eq!(events[1]["resource"]["name"], "b");
}

//! End to end through the command line a user types: `konnectctl` against three real nodes.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use support::*;

struct Ctl {
    endpoint: String,
    token: Option<String>,
    dir: PathBuf,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(konnectctl_bin());
        cmd.current_dir(&self.dir)
            .env_remove("KONNECT_TOKEN")
            .env("KONNECT_ENDPOINT", &self.endpoint);
        if let Some(t) = &self.token {
            cmd.env("KONNECT_TOKEN", t);
        }
        cmd.args(args).output().expect("run konnectctl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "konnectctl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "konnectctl {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}

const CONFIG: &str = r#"kind: Service
name: echo
labels: {team: platform}
spec:
  targets: [{url: "http://127.0.0.1:9001", weight: 100}]
---
kind: Route
name: echo
spec: {paths: ["/echo"], service: echo}
"#;

const BAD_REFERENCE: &str = r#"kind: Service
name: billing-svc
spec: {targets: [{url: "http://127.0.0.1:9002"}]}
---
kind: Route
name: billing
spec: {paths: ["/bill"], service: bill}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_initialises_applies_and_reads_with_konnectctl() {
    let cluster = Cluster::start(3, &[]);
    let endpoints = cluster
        .nodes
        .iter()
        .map(|n| n.admin_url())
        .collect::<Vec<_>>()
        .join(",");
    let dir = cluster.dir.path().to_path_buf();
    let mut ctl = Ctl {
        endpoint: cluster.nodes[0].admin_url(),
        token: None,
        dir: dir.clone(),
    };

    // `cluster init` prints the token alone on stdout, so `$(konnectctl cluster init)` works.
    let token = ctl.ok(&["cluster", "init"]);
    let token = token.trim().to_string();
    assert!(
        token.starts_with("kadm_") && !token.contains(char::is_whitespace),
        "{token:?}"
    );
    assert!(ctl
        .fails(&["cluster", "init"])
        .contains("already initialised"));
    ctl.token = Some(token);
    ctl.endpoint = endpoints;

    let status = ctl.ok(&["cluster", "status"]);
    for zone in ["az-a", "az-b", "az-c"] {
        assert!(status.contains(zone), "status lacks {zone}:\n{status}");
    }

    std::fs::write(dir.join("config.yaml"), CONFIG).unwrap();
    let first = ctl.ok(&["apply", "-f", "config.yaml"]);
    assert!(
        first.contains("Service/echo created") && first.contains("Route/echo created"),
        "{first}"
    );
    let second = ctl.ok(&["apply", "-f", "config.yaml"]);
    assert!(
        second.contains("Service/echo unchanged") && second.contains("Route/echo unchanged"),
        "{second}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["get", "services", "-o", "json"])).unwrap();
    assert_eq!(json[0]["name"], "echo");
    assert_eq!(json[0]["spec"]["targets"][0]["weight"], 100);
    assert_eq!(json[0]["labels"]["team"], "platform");

    // The error names the file, the document and the field; nothing is applied.
    std::fs::write(dir.join("bad.yaml"), BAD_REFERENCE).unwrap();
    let err = ctl.fails(&["apply", "-f", "bad.yaml"]);
    assert!(
        err.contains(
            r#"bad.yaml: document 2 (Route "billing"): spec.service: unknown service "bill""#
        ),
        "{err}"
    );
    std::fs::write(dir.join("broken.yaml"), "kind: Service\nname: [unclosed\n").unwrap();
    let err = ctl.fails(&["apply", "-f", "broken.yaml"]);
    assert!(err.contains("broken.yaml"), "{err}");
    std::fs::write(
        dir.join("typo.yaml"),
        "kind: Service\nname: x\nspec: {targets: [{url: \"http://a:1\"}], retires: 3}\n",
    )
    .unwrap();
    let err = ctl.fails(&["apply", "-f", "typo.yaml"]);
    assert!(
        err.contains("document 1 (Service \"x\"): spec.retires: unknown field `retires`"),
        "{err}"
    );
    let names = ctl.ok(&["get", "services", "-o", "json"]);
    assert!(
        !names.contains("billing-svc") && !names.contains("\"x\""),
        "{names}"
    );

    // --prune removes resources of the file's kinds that the file no longer lists.
    let extra = format!("{CONFIG}---\nkind: Service\nname: extra\nspec: {{targets: [{{url: \"http://127.0.0.1:9003\"}}]}}\n");
    std::fs::write(dir.join("extra.yaml"), extra).unwrap();
    assert!(ctl
        .ok(&["apply", "-f", "extra.yaml"])
        .contains("Service/extra created"));
    let pruned = ctl.ok(&["apply", "-f", "config.yaml", "--prune"]);
    assert!(pruned.contains("Service/extra deleted"), "{pruned}");
    assert!(pruned.contains("Route/echo unchanged"), "{pruned}");

    // A service still used by a route cannot be deleted; the route can.
    let err = ctl.fails(&["delete", "service", "echo"]);
    assert!(err.contains(r#"Route "echo" refers to it"#), "{err}");
    ctl.ok(&["delete", "route", "echo"]);
    let routes = ctl.ok(&["get", "routes", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&routes).unwrap(),
        serde_json::json!([])
    );

    // Without a token, nothing is revealed.
    ctl.token = None;
    let err = ctl.fails(&["get", "services"]);
    assert!(err.contains("token"), "{err}");
}

/// Every manifest under docs/examples applies as it is: the documentation cannot drift from
/// what the admin API accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_example_applies() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let ctl = Ctl {
        endpoint: cluster.nodes[0].admin_url(),
        token: cluster.token.clone(),
        dir: cluster.dir.path().to_path_buf(),
    };
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("docs/examples")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    // echo.yaml first: limits.yaml refers to its route.
    files.sort_by_key(|p| p.file_name() != Some(std::ffi::OsStr::new("echo.yaml")));
    assert!(files.len() >= 4, "{files:?}");
    for file in &files {
        let out = ctl.run(&["apply", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} does not apply:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

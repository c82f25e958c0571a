//! End to end: TLS on the control plane. Certificates come from the real `konnect certs init`;
//! three nodes with admin TLS and peer mTLS form a cluster through `konnectctl --ca`; a client
//! without the CA, a node with a certificate of another CA and a caller without a client
//! certificate are all refused with a reason; `certs init` never overwrites and keeps keys
//! private; TLS flags without their other half, and plain control ports beyond loopback, are
//! called out.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use konnect_proto::peer::v1::peer_client::PeerClient;
use konnect_proto::peer::v1::VoteRequest;
use support::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const CONFIG: &str = r#"kind: Service
name: echo
spec:
  targets: [{url: "http://127.0.0.1:9001", weight: 100}]
---
kind: Route
name: echo
spec: {paths: ["/echo"], service: echo}
"#;

/// Runs konnectctl in `dir` with `args` and, if given, the token; no ambient settings.
fn konnectctl(dir: &Path, args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(konnectctl_bin());
    cmd.current_dir(dir)
        .env_remove("KONNECT_TOKEN")
        .env_remove("KONNECT_ENDPOINT")
        .env_remove("KONNECT_CA")
        .args(args);
    if let Some(t) = token {
        cmd.env("KONNECT_TOKEN", t);
    }
    cmd.output().expect("run konnectctl")
}

fn ctl_ok(dir: &Path, args: &[&str], token: Option<&str>) -> String {
    let out = konnectctl(dir, args, token);
    assert!(
        out.status.success(),
        "konnectctl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn ctl_fails(dir: &Path, args: &[&str], token: Option<&str>) -> String {
    let out = konnectctl(dir, args, token);
    assert!(
        !out.status.success(),
        "konnectctl {args:?} should fail, printed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("UTF-8 output")
}

/// Waits until node `node`'s log contains `text`.
async fn wait_for_log(node: &NodeProc, text: &str) {
    wait_for(
        &format!("node {} to log {text:?}", node.id),
        Duration::from_secs(10),
        || async { node.log().contains(text).then_some(()) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_peer_mtls_and_admin_tls_form_a_cluster_that_konnectctl_drives_with_ca() {
    let cluster = Cluster::start_tls(3, &[]);
    let dir = cluster.dir.path();
    let ca = cluster
        .certs
        .as_ref()
        .expect("TLS mode")
        .ca()
        .display()
        .to_string();

    // With --ca, a bare host:port means https://.
    let token = ctl_ok(
        dir,
        &[
            "--ca",
            &ca,
            "--endpoint",
            &cluster.nodes[0].admin,
            "cluster",
            "init",
        ],
        None,
    );
    let token = token.trim();
    assert!(token.starts_with("kadm_"), "{token:?}");

    for n in &cluster.nodes {
        let status = ctl_ok(
            dir,
            &["--ca", &ca, "--endpoint", &n.admin, "cluster", "status"],
            Some(token),
        );
        assert!(
            status.contains(&format!("answering node: {} (", n.id)),
            "{status}"
        );
        for member in &cluster.nodes {
            assert!(status.contains(&member.peer), "{status}");
        }
    }

    // A write through node 3 (an https:// endpoint this time) reaches every node.
    std::fs::write(dir.join("config.yaml"), CONFIG).unwrap();
    let applied = ctl_ok(
        dir,
        &[
            "--ca",
            &ca,
            "--endpoint",
            &cluster.nodes[2].admin_url(),
            "apply",
            "-f",
            "config.yaml",
        ],
        Some(token),
    );
    assert!(
        applied.contains("Service/echo created") && applied.contains("Route/echo created"),
        "{applied}"
    );
    for n in &cluster.nodes {
        let got = ctl_ok(
            dir,
            &[
                "--ca",
                &ca,
                "--endpoint",
                &n.admin,
                "get",
                "routes",
                "echo",
                "--consistent",
                "-o",
                "json",
            ],
            Some(token),
        );
        let json: serde_json::Value = serde_json::from_str(&got).expect("JSON");
        let route = if json.is_array() { &json[0] } else { &json };
        assert_eq!(route["name"], "echo", "node {}: {got}", n.id);
        assert_eq!(route["spec"]["service"], "echo", "node {}: {got}", n.id);
    }

    // The harness's Rust clients trust the same CA: the nodes agree on one leader.
    let mut cluster = cluster;
    cluster.token = Some(token.to_string());
    let leader = cluster.leader().await;
    assert!((1..=3).contains(&leader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn konnectctl_without_the_ca_is_refused_by_a_tls_admin_port_with_a_clear_message() {
    let cluster = Cluster::start_tls(1, &[]);
    let node = &cluster.nodes[0];
    let dir = cluster.dir.path();
    let https = node.admin_url();

    // Verified against the system's CAs (or none at all): not trusted, pass --ca.
    let err = ctl_fails(dir, &["--endpoint", &https, "cluster", "status"], None);
    assert!(err.contains(&https), "{err}");
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("pass --ca"), "{err}");

    // The CA of another cluster does not do either.
    let other = Certs::init(&dir.join("other-ca"), 1);
    let other_ca = other.ca().display().to_string();
    let err = ctl_fails(
        dir,
        &[
            "--ca",
            &other_ca,
            "--endpoint",
            &node.admin,
            "cluster",
            "status",
        ],
        None,
    );
    assert!(
        err.contains(&format!(
            "TLS handshake with {https} failed: certificate not trusted"
        )),
        "{err}"
    );
    wait_for_log(node, "the client does not trust this node's certificate").await;

    // Plain gRPC to the TLS port fails, and the node says what the client did wrong.
    let plain = format!("http://{}", node.admin);
    ctl_fails(dir, &["--endpoint", &plain, "cluster", "status"], None);
    wait_for_log(node, "the client does not speak TLS").await;

    // --ca with a plain endpoint is a mistake caught before any connection.
    let ca = cluster.certs.as_ref().unwrap().ca().display().to_string();
    let err = ctl_fails(
        dir,
        &["--ca", &ca, "--endpoint", &plain, "cluster", "status"],
        None,
    );
    assert!(err.contains("is plain HTTP"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_of_another_ca_cannot_join_and_strangers_cannot_reach_raft() {
    let cluster = Cluster::start_initialised_tls(3, &[]).await;
    let dir = cluster.dir.path();
    let certs = cluster.certs.as_ref().expect("TLS mode");
    let ca = certs.ca().display().to_string();
    let token = cluster.token.clone().expect("initialised");
    cluster.leader().await;

    // Node 4 has a certificate from a second `certs init`: another CA.
    let other = Certs::init(&dir.join("other-ca"), 4);
    let mut fourth = NodeProc::new(dir, 4, "az-d", None, &free_ports(3), &[]).with_tls(&other, 4);
    fourth.start();

    let endpoints = cluster
        .nodes
        .iter()
        .map(|n| n.admin.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let err = ctl_fails(
        dir,
        &[
            "--ca",
            &ca,
            "--endpoint",
            &endpoints,
            "cluster",
            "add-node",
            "--id",
            "4",
            "--peer-addr",
            &fourth.peer,
        ],
        Some(&token),
    );
    assert!(
        err.contains(&format!(
            "TLS handshake with the node at {} failed: certificate not trusted",
            fourth.peer
        )),
        "{err}\nnode 4 log:\n{}",
        fourth.log()
    );
    wait_for_log(&fourth, "TLS handshake failed").await;

    // Membership is unchanged on every node, and the cluster still takes writes.
    for n in &cluster.nodes {
        let members: Vec<u64> = cluster
            .status(n.id)
            .await
            .members
            .iter()
            .map(|m| m.node_id)
            .collect();
        assert_eq!(members, vec![1, 2, 3], "node {}", n.id);
    }
    cluster
        .client_any()
        .apply(vec![service("after-refusal", 9001)], vec![])
        .await
        .expect("write after the refused join");

    // Raft messages straight to a peer port: without a client certificate, with one from
    // another CA, and in plain gRPC, each is refused, and the node logs why.
    let target = &cluster.nodes[0];
    let ca_pem = std::fs::read(certs.ca()).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let without_cert = vote(&format!("https://{}", target.peer), Some(tls.clone())).await;
    assert!(
        without_cert.is_err(),
        "a vote without a client certificate got through"
    );
    wait_for_log(target, "the client sent no certificate").await;

    let stranger = Identity::from_pem(
        std::fs::read(other.cert(4)).unwrap(),
        std::fs::read(other.key(4)).unwrap(),
    );
    let foreign = vote(
        &format!("https://{}", target.peer),
        Some(tls.identity(stranger)),
    )
    .await;
    assert!(
        foreign.is_err(),
        "a vote with another CA's certificate got through"
    );
    wait_for_log(target, "client certificate not trusted").await;

    let plain = vote(&format!("http://{}", target.peer), None).await;
    assert!(plain.is_err(), "a plain vote got through");
    wait_for_log(target, "the client does not speak TLS").await;
}

/// Sends one Raft vote request to `url`; any failure (connect, handshake, call) is an error.
async fn vote(url: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    PeerClient::new(channel)
        .vote(VoteRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

fn konnect(args: &[&str]) -> Output {
    Command::new(KONNECT)
        .args(args)
        .env_remove("KONNECT_CONFIG")
        .output()
        .expect("run konnect")
}

#[test]
fn certs_init_refuses_to_overwrite_and_writes_keys_only_their_owner_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let out_arg = out.display().to_string();
    let first = konnect(&["certs", "init", "--out", &out_arg, "--nodes", "2"]);
    assert!(first.status.success(), "{first:?}");
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(
        printed.contains("--peer-tls-cert") && printed.contains("konnectctl --ca"),
        "{printed}"
    );
    for name in ["ca-key.pem", "node-1-key.pem", "node-2-key.pem"] {
        let mode = std::fs::metadata(out.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let ca_before = std::fs::read(out.join("ca.pem")).unwrap();

    let again = konnect(&["certs", "init", "--out", &out_arg, "--nodes", "2"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), ca_before);

    // A third node file that does not exist yet does not make the rest replaceable.
    let more = konnect(&["certs", "init", "--out", &out_arg, "--nodes", "3"]);
    assert!(!more.status.success());
    assert!(!out.join("node-3.pem").exists());

    let forced = konnect(&[
        "certs", "init", "--out", &out_arg, "--nodes", "2", "--force",
    ]);
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(std::fs::read(out.join("ca.pem")).unwrap(), ca_before);
}

/// `konnect serve` with `flags`; it must exit at once.
fn serve_refused(dir: &Path, flags: &[&str]) -> Output {
    let data = dir.join("data").display().to_string();
    let key = cluster_key_file(dir).display().to_string();
    let mut args = vec![
        "serve",
        "--secret-key-file",
        &key,
        "--node-id",
        "1",
        "--data-dir",
        &data,
        "--peer-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--status-addr",
        "127.0.0.1:0",
        "--proxy-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(flags);
    let out = konnect(&args);
    assert!(!out.status.success(), "konnect serve {flags:?} started");
    out
}

#[test]
fn tls_flags_without_their_other_half_are_refused_naming_the_missing_flag() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::init(&dir.path().join("certs"), 1);
    let (cert, key, ca) = (
        certs.cert(1).display().to_string(),
        certs.key(1).display().to_string(),
        certs.ca().display().to_string(),
    );
    let cases: [(&[&str], &str); 4] = [
        (&["--admin-tls-cert", &cert], "--admin-tls-key"),
        (&["--admin-tls-key", &key], "--admin-tls-cert"),
        (
            &["--peer-tls-cert", &cert, "--peer-tls-key", &key],
            "--peer-tls-ca",
        ),
        (&["--peer-tls-ca", &ca], "--peer-tls-cert"),
    ];
    for (flags, missing) in cases {
        let out = serve_refused(dir.path(), flags);
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!("error: {missing}: required with")),
            "{flags:?}: {err}"
        );
    }

    // A certificate given as the key: the error names the flag and the file, and what was
    // wrong, and no key material.
    let out = serve_refused(
        dir.path(),
        &[
            "--peer-tls-cert",
            &cert,
            "--peer-tls-key",
            &cert,
            "--peer-tls-ca",
            &ca,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--peer-tls-key {cert}: no private key found in PEM"
        )),
        "{err}"
    );
    let out = serve_refused(
        dir.path(),
        &["--admin-tls-cert", &cert, "--admin-tls-key", &ca],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--admin-tls-key {ca}: no private key found in PEM"
        )),
        "{err}"
    );
    assert!(!err.contains("BEGIN"), "{err}");
}

#[test]
fn plain_control_ports_beyond_loopback_warn_that_tokens_travel_in_clear_text() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let admin = format!("0.0.0.0:{}", ports[0]);
    let peer = format!("0.0.0.0:{}", ports[1]);
    let mut child = Command::new(KONNECT)
        .args(["serve", "--node-id", "1", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--admin-addr", &admin, "--peer-addr", &peer])
        .args(["--status-addr", &format!("127.0.0.1:{}", ports[2])])
        .args(["--proxy-addr", "127.0.0.1:0", "--log", "off"])
        .arg("--secret-key-file")
        .arg(cluster_key_file(dir.path()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn konnect");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let wanted = [
        format!("WARNING: the admin API listens on {admin} without TLS: admin tokens travel in clear text"),
        format!("WARNING: the peer port listens on {peer} without mutual TLS"),
    ];
    while !wanted
        .iter()
        .all(|w| seen.iter().any(|l: &String| l.starts_with(w.as_str())))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no warnings within 20 s; stderr:\n{}", seen.join("\n"));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

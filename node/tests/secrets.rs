//! End to end: secrets at rest. A Certificate's private key (and a Service's upstream client
//! key) is encrypted before it enters the log: it never comes back from the admin API, never
//! appears in any file of any node's data directory or in the nodes' logs, yet the TLS
//! listener of every node serves with it; a node without the right key refuses to start; a
//! key rotation (new key first, rolling restart, `konnectctl secrets rekey`, old key removed)
//! keeps serving.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;

// === helpers ===

/// The konnectctl binary next to the konnect binary (built here when this test runs alone).
fn konnectctl() -> PathBuf {
    let path = PathBuf::from(KONNECT).with_file_name("konnectctl");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "konnect-client", "--bin", "konnectctl"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building konnectctl failed");
    }
    path
}

/// Runs konnectctl against `cluster` (every running node as an endpoint) with `stdin`.
fn ctl(cluster: &Cluster, args: &[&str], stdin: &str) -> Output {
    let endpoints: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.admin_url())
        .collect();
    let mut child = Command::new(konnectctl())
        .env("KONNECT_ENDPOINT", endpoints.join(","))
        .env(
            "KONNECT_TOKEN",
            cluster.token.as_deref().expect("initialised"),
        )
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run konnectctl");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("konnectctl finished")
}

fn ctl_ok(cluster: &Cluster, args: &[&str], stdin: &str) -> String {
    let out = ctl(cluster, args, stdin);
    assert!(
        out.status.success(),
        "konnectctl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A self-signed certificate for `name`: (cert PEM, key PEM, key DER).
fn self_signed(name: &str) -> (String, String, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (
        c.cert.pem(),
        c.signing_key.serialize_pem(),
        c.signing_key.serialize_der(),
    )
}

/// What must never be found at rest or in a log: the whole PEM, each of its base64 body
/// lines, and the DER bytes.
struct Needles {
    pem: String,
    lines: Vec<String>,
    der: Vec<u8>,
}

impl Needles {
    fn of(key_pem: &str, key_der: &[u8]) -> Needles {
        Needles {
            pem: key_pem.to_string(),
            lines: key_pem
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 32)
                .map(str::to_string)
                .collect(),
            der: key_der.to_vec(),
        }
    }

    /// What of the key `bytes` contain, if anything.
    fn found_in(&self, bytes: &[u8]) -> Option<String> {
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        if contains(self.pem.as_bytes()) {
            return Some("the whole PEM".into());
        }
        if let Some(l) = self.lines.iter().find(|l| contains(l.as_bytes())) {
            return Some(format!("the PEM line {l:?}"));
        }
        contains(&self.der).then(|| "the DER key".into())
    }

    /// Panics naming the file when any file under `dir` holds any part of the key.
    fn assert_absent_under(&self, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        let mut files = 0;
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                if let Some(what) = self.found_in(&bytes) {
                    panic!("{} contains {what}", path.display());
                }
            }
        }
        assert!(files >= 3, "{} holds only {files} files", dir.display());
    }

    fn assert_absent_from_logs(&self, cluster: &Cluster) {
        for n in &cluster.nodes {
            if let Some(what) = self.found_in(n.log().as_bytes()) {
                panic!("node {} logged {what}", n.id);
            }
        }
    }
}

/// Connects with TLS asking for `sni`; returns the DER of the certificate presented. A
/// completed TLS 1.3 handshake proves the server signed with the certificate's private key.
async fn presented_certificate(addr: &str, sni: &str, trusted: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(trusted.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let stream = connector.connect(name, tcp).await.ok()?;
    Some(stream.get_ref().1.peer_certificates()?[0].to_vec())
}

/// Waits until the TLS listener at `addr` serves `cert_pem` for `sni`.
async fn wait_served(addr: &str, sni: &str, cert_pem: &str) {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    let presented = wait_for(
        &format!("{addr} to serve the certificate of {sni}"),
        Duration::from_secs(20),
        || async { presented_certificate(addr, sni, cert_pem).await },
    )
    .await;
    assert_eq!(presented, der, "{addr} presented another certificate");
}

/// `konnect_gateway_resources_skipped_total` on a node's /metrics (0 when never counted).
async fn skipped_resources(node: &NodeProc) -> u64 {
    let resp = http("GET", &node.status, "/metrics", &[], "").await;
    String::from_utf8_lossy(&resp.body)
        .lines()
        .filter(|l| l.starts_with("konnect_gateway_resources_skipped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Three nodes, each with its own TLS listener; snapshots after a few entries, so the test
/// can look at snapshot files too. Returns the cluster and each node's TLS address.
async fn three_nodes_with_tls() -> (Cluster, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(12);
    let peers = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[4 * i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    let mut tls = Vec::new();
    for i in 0..3 {
        let tls_addr = format!("127.0.0.1:{}", ports[4 * i + 3]);
        let extra = [
            "--proxy-tls-addr",
            tls_addr.as_str(),
            "--snapshot-after-entries",
            "5",
        ];
        let mut node = NodeProc::new(
            dir.path(),
            i as u64 + 1,
            ZONES[i],
            Some(peers.clone()),
            &ports[4 * i..4 * i + 3],
            &extra,
        );
        // Everything konnect logs, so a leak at debug level is caught too.
        node.log_filter = "warn,konnect=debug".into();
        node.start();
        nodes.push(node);
        tls.push(tls_addr);
    }
    let mut cluster = Cluster {
        dir,
        nodes,
        token: None,
        certs: None,
    };
    let init = cluster
        .client_without_token(0)
        .init()
        .await
        .expect("cluster init");
    cluster.token = Some(init.admin_token);
    (cluster, tls)
}

/// Stops every node and starts it again with `key_file`, one at a time, waiting for a leader
/// after each: a rolling restart.
async fn rolling_restart(cluster: &mut Cluster, key_file: &Path) {
    for i in 0..cluster.nodes.len() {
        let node = &mut cluster.nodes[i];
        node.terminate();
        assert!(node.wait_exit(), "node {} did not stop cleanly", node.id);
        node.secret_key_file = Some(key_file.to_path_buf());
        node.start();
        cluster.leader().await;
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_redacted_served_by_every_node_and_survive_a_key_rotation() {
    let (mut cluster, tls) = three_nodes_with_tls().await;
    let (cert, key, key_der) = self_signed("site.example.com");
    let (client_cert, client_key, client_key_der) = self_signed("konnect-client");
    let needles = [
        Needles::of(&key, &key_der),
        Needles::of(&client_key, &client_key_der),
    ];
    // The search itself works: it finds the key where the key is.
    assert!(needles[0].found_in(format!("x{key}x").as_bytes()).is_some());
    assert!(needles[0].found_in(&key_der).is_some());
    assert!(!needles[0].lines.is_empty());
    let upstream_port = free_ports(1)[0];
    let applied = cluster
        .client_any()
        .apply(
            vec![
                resource(
                    "Certificate",
                    "site",
                    json!({"cert_pem": cert, "key_pem": key, "snis": ["site.example.com"]}),
                ),
                resource(
                    "Service",
                    "mtls",
                    json!({
                        "targets": [{"url": format!("https://127.0.0.1:{upstream_port}")}],
                        "tls": {"verify": false, "client_cert_pem": client_cert, "client_key_pem": client_key}
                    }),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply the certificate");

    // (c) Every node decrypts and serves the certificate by SNI.
    for addr in &tls {
        wait_served(addr, "site.example.com", &cert).await;
    }

    // (a) get and list show <redacted>, never the key.
    for format in ["yaml", "json"] {
        let shown = ctl_ok(&cluster, &["get", "certificate", "site", "-o", format], "");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(needles[0].found_in(shown.as_bytes()).is_none(), "{shown}");
        let listed = ctl_ok(&cluster, &["get", "services", "-o", format], "");
        assert!(listed.contains("<redacted>"), "{listed}");
        assert!(needles[1].found_in(listed.as_bytes()).is_none(), "{listed}");
        assert!(!shown.contains("enc:v1") && !listed.contains("enc:v1"));
    }

    // (g) `get -o yaml | apply -f -` keeps the secret: nothing changes...
    let yaml = ctl_ok(&cluster, &["get", "certificate", "site", "-o", "yaml"], "");
    let reapplied = ctl_ok(&cluster, &["apply", "-f", "-"], &yaml);
    assert!(
        reapplied.contains("Certificate/site unchanged"),
        "{reapplied}"
    );
    // ...and the same round trip with a new label writes a new revision that still serves.
    let labelled = yaml.replacen("labels: {}", "labels:\n  tier: edge", 1);
    assert_ne!(
        labelled, yaml,
        "the YAML has no empty labels to edit:\n{yaml}"
    );
    let relabelled = ctl_ok(&cluster, &["apply", "-f", "-"], &labelled);
    assert!(
        relabelled.contains("Certificate/site updated"),
        "{relabelled}"
    );
    // Applying the same plaintext again is not a change either.
    let again = cluster
        .client_any()
        .apply(
            vec![resource(
                "Service",
                "mtls",
                json!({
                    "targets": [{"url": format!("https://127.0.0.1:{upstream_port}")}],
                    "tls": {"verify": false, "client_cert_pem": client_cert, "client_key_pem": client_key}
                }),
            )],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        again.changes[0].action,
        konnect_proto::state::v1::ChangeAction::Unchanged as i32
    );

    // (b) Push the log past a snapshot on every node, then read every byte at rest.
    for i in 0..6 {
        cluster
            .client_any()
            .apply(vec![service(&format!("filler-{i}"), upstream_port)], vec![])
            .await
            .unwrap();
    }
    for n in &cluster.nodes {
        let id = n.id;
        wait_for(
            &format!("node {id} to snapshot past revision {}", applied.revision),
            Duration::from_secs(30),
            || async {
                let s = cluster.client_of(id).status().await.ok()?;
                (s.snapshot_index? > applied.revision).then_some(())
            },
        )
        .await;
    }
    for addr in &tls {
        wait_served(addr, "site.example.com", &cert).await;
    }
    for n in &cluster.nodes {
        assert!(n.data_dir.join("snapshots/current.snap").exists());
        for needle in &needles {
            needle.assert_absent_under(&n.data_dir);
        }
        assert_eq!(
            skipped_resources(n).await,
            0,
            "node {} left out a resource",
            n.id
        );
    }

    // (e) Rotation: the new key first, the old one kept; rolling restart; rekey.
    let old_key = std::fs::read_to_string(cluster_key_file(cluster.dir.path())).unwrap();
    let new_key = konnect::secrets::new_key_line(Some("next")).unwrap();
    let both = cluster.dir.path().join("both.key");
    write_key_file(&both, &[&new_key, old_key.trim()]);
    rolling_restart(&mut cluster, &both).await;
    let rekeyed = ctl_ok(&cluster, &["secrets", "rekey", "-o", "json"], "");
    let rekeyed: serde_json::Value = serde_json::from_str(&rekeyed).unwrap();
    assert_eq!(rekeyed["rewritten_fields"], 2, "{rekeyed}");
    assert_eq!(rekeyed["primary_key_id"], "next", "{rekeyed}");
    let again = ctl_ok(&cluster, &["secrets", "rekey"], "");
    assert!(
        again.starts_with("0 secret field(s) re-encrypted"),
        "{again}"
    );
    // A node must have applied the rekey before it loses the old key (docs/security.md).
    let revision = rekeyed["revision"].as_u64().unwrap();
    for n in &cluster.nodes {
        let id = n.id;
        wait_for(
            &format!("node {id} to apply the rekey (revision {revision})"),
            Duration::from_secs(20),
            || async {
                let s = cluster.client_of(id).status().await.ok()?;
                (s.applied_index? >= revision).then_some(())
            },
        )
        .await;
    }

    // The old key removed, every node still serves and holds every resource.
    let only_new = cluster.dir.path().join("next.key");
    write_key_file(&only_new, &[&new_key]);
    rolling_restart(&mut cluster, &only_new).await;
    for (n, addr) in cluster.nodes.iter().zip(&tls) {
        wait_served(addr, "site.example.com", &cert).await;
        assert_eq!(
            skipped_resources(n).await,
            0,
            "node {} left out a resource",
            n.id
        );
        for needle in &needles {
            needle.assert_absent_under(&n.data_dir);
        }
    }

    // (f) Nothing of either key was ever logged.
    for needle in &needles {
        needle.assert_absent_from_logs(&cluster);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_without_a_key_or_with_a_key_that_does_not_open_its_secrets() {
    let mut cluster = Cluster::start_initialised(1, &[]).await;
    let (cert, key, key_der) = self_signed("site.example.com");
    cluster
        .client_of(1)
        .apply(
            vec![resource(
                "Certificate",
                "site",
                json!({"cert_pem": cert, "key_pem": key, "snis": ["site.example.com"]}),
            )],
            vec![],
        )
        .await
        .unwrap();
    let node = cluster.node(1);
    node.terminate();
    assert!(node.wait_exit());

    // No key at all: a clear error saying how to make one.
    node.secret_key_file = None;
    let (ok, said) = node.start_expecting_exit();
    assert!(!ok);
    assert!(said.contains("--secret-key-file: required"), "{said}");
    assert!(said.contains("konnect secrets new-key"), "{said}");

    // Another key: the error names the resource and the missing key id.
    let other = cluster.dir.path().join("other.key");
    write_key_file(
        &other,
        &[&konnect::secrets::new_key_line(Some("other")).unwrap()],
    );
    let node = cluster.node(1);
    node.secret_key_file = Some(other);
    let (ok, said) = node.start_expecting_exit();
    assert!(!ok);
    assert!(said.contains("Certificate \"site\""), "{said}");
    assert!(said.contains("key \"test\""), "{said}");
    assert!(said.contains("not in this node's keyring"), "{said}");

    // A key with the right id but other bytes: refused as well, naming the id.
    let impostor = cluster.dir.path().join("impostor.key");
    write_key_file(
        &impostor,
        &[&konnect::secrets::new_key_line(Some("test")).unwrap()],
    );
    let node = cluster.node(1);
    node.secret_key_file = Some(impostor);
    let (ok, said) = node.start_expecting_exit();
    assert!(!ok);
    assert!(said.contains("cannot decrypt with key \"test\""), "{said}");

    // A key file that is not one: the line is named, the content is not.
    let broken = cluster.dir.path().join("broken.key");
    write_key_file(&broken, &["# a comment", "test:c2hvcnQ="]);
    let node = cluster.node(1);
    node.secret_key_file = Some(broken);
    let (ok, said) = node.start_expecting_exit();
    assert!(!ok);
    assert!(said.contains("line 2"), "{said}");
    assert!(said.contains("5 bytes"), "{said}");

    // The right key starts it again.
    let right = cluster_key_file(cluster.dir.path());
    let node = cluster.node(1);
    node.secret_key_file = Some(right);
    node.start();
    cluster.leader().await;
    Needles::of(&key, &key_der).assert_absent_from_logs(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_and_encrypted_values_are_accepted_only_where_they_belong() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let client = cluster.client_of(1);
    let (cert, key, _) = self_signed("site.example.com");
    let cert_spec =
        |key: &str| json!({"cert_pem": cert, "key_pem": key, "snis": ["site.example.com"]});

    // <redacted> for a resource that has no stored key: nothing to keep.
    let e = client
        .apply(
            vec![resource("Certificate", "new", cert_spec("<redacted>"))],
            vec![],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("spec.key_pem"), "{e}");
    assert!(e.to_string().contains("no stored value to keep"), "{e}");

    // The plaintext is checked in full before it is encrypted.
    let (_, other_key, _) = self_signed("other.example.com");
    let e = client
        .apply(
            vec![resource("Certificate", "site", cert_spec(&other_key))],
            vec![],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("spec.key_pem"), "{e}");
    assert!(!e.to_string().contains("PRIVATE KEY"), "{e}");

    // An envelope made by this cluster for another resource does not open for this one.
    client
        .apply(
            vec![resource("Certificate", "site", cert_spec(&key))],
            vec![],
        )
        .await
        .unwrap();
    let keyring = konnect::secrets::Keyring::from_file(
        &cluster_key_file(cluster.dir.path()),
        "--secret-key-file",
    )
    .unwrap();
    let sealed_elsewhere = keyring
        .encrypt(
            &key,
            &konnect::secrets::aad("Certificate", "elsewhere", "key_pem"),
        )
        .unwrap();
    let e = client
        .apply(
            vec![resource(
                "Certificate",
                "copy",
                cert_spec(&sealed_elsewhere),
            )],
            vec![],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.to_string().contains("cannot decrypt with key \"test\""),
        "{e}"
    );
    // One sealed for it is accepted (a backup restored with the same key, say).
    let sealed_here = keyring
        .encrypt(
            &key,
            &konnect::secrets::aad("Certificate", "copy", "key_pem"),
        )
        .unwrap();
    client
        .apply(
            vec![resource("Certificate", "copy", cert_spec(&sealed_here))],
            vec![],
        )
        .await
        .unwrap();
    let stored = client.get("Certificate", "copy", false).await.unwrap();
    let spec = konnect_proto::json::struct_to_json(&stored.spec.unwrap());
    assert_eq!(spec["key_pem"], "<redacted>");
}

//! Test harness: real `konnect` processes on loopback ports, each with its own temporary data
//! directory, driven through the Rust admin client. A failing test prints each node's log.
//!
//! TLS mode (`Cluster::start_tls`): the certificates come from the real `konnect certs init`
//! run into the cluster's temporary directory; every node gets admin TLS and peer mTLS with
//! them, and the harness's clients trust the CA it made.
//! The nodes under one root directory share one secret key file (`<root>/secret.key`).

#![allow(dead_code)]

pub mod llm;
pub mod ports;
pub mod upstream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use ports::free_ports;

use konnect_client::{Client, TrustRoots};
use konnect_proto::admin::v1::{ResourceInput, StatusResponse};

pub const KONNECT: &str = env!("CARGO_BIN_EXE_konnect");

/// The konnectctl binary next to the konnect binary (built by `cargo test --workspace`;
/// built here when a test of this crate runs alone).
pub fn konnectctl_bin() -> PathBuf {
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

/// A cluster CA and node certificates made by the real `konnect certs init`.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Runs `konnect certs init --out DIR --nodes N` and checks that it succeeded.
    pub fn init(dir: &Path, nodes: usize) -> Certs {
        let out = Command::new(KONNECT)
            .args(["certs", "init", "--nodes", &nodes.to_string(), "--out"])
            .arg(dir)
            .output()
            .expect("run konnect certs init");
        assert!(
            out.status.success(),
            "konnect certs init failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }

    pub fn key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}-key.pem"))
    }

    /// The flags of node `id` for admin TLS and peer mTLS with these certificates.
    pub fn node_args(&self, id: u64) -> Vec<String> {
        let (cert, key, ca) = (self.cert(id), self.key(id), self.ca());
        [
            ("--admin-tls-cert", &cert),
            ("--admin-tls-key", &key),
            ("--peer-tls-cert", &cert),
            ("--peer-tls-key", &key),
            ("--peer-tls-ca", &ca),
        ]
        .iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }

    pub fn trust(&self) -> TrustRoots {
        TrustRoots::ca_file(self.ca()).expect("the CA of certs init is usable")
    }
}

pub struct NodeProc {
    pub id: u64,
    pub peer: String,
    pub admin: String,
    pub status: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub extra_args: Vec<String>,
    pub peers: Option<String>,
    pub zone: String,
    /// Set by `with_tls`: the admin port speaks TLS, verified with this CA.
    pub ca: Option<PathBuf>,
    /// Passed as `--secret-key-file`; `None` starts the node without a key.
    pub secret_key_file: Option<PathBuf>,
    /// `--log` filter.
    pub log_filter: String,
    child: Option<Child>,
    /// Runs the node on these CPUs only (`taskset -c`), as a container's CPU limit would.
    pub cpus: Option<String>,
}

/// The key file shared by every node under `root`, made with one fresh key on first use.
pub fn cluster_key_file(root: &Path) -> PathBuf {
    let path = root.join("secret.key");
    if !path.exists() {
        write_key_file(
            &path,
            &[&konnect::secrets::new_key_line(Some("test")).unwrap()],
        );
    }
    path
}

/// Writes key lines (the first is the primary) to a 0600 file.
pub fn write_key_file(path: &Path, lines: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, lines.join("\n") + "\n").expect("write key file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
}

impl NodeProc {
    pub fn new(
        root: &Path,
        id: u64,
        zone: &str,
        peers: Option<String>,
        ports: &[u16],
        extra: &[&str],
    ) -> NodeProc {
        NodeProc {
            id,
            peer: format!("127.0.0.1:{}", ports[0]),
            admin: format!("127.0.0.1:{}", ports[1]),
            status: format!("127.0.0.1:{}", ports[2]),
            data_dir: root.join(format!("node{id}")),
            log_path: root.join(format!("node{id}.log")),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            peers,
            zone: zone.to_string(),
            ca: None,
            secret_key_file: Some(cluster_key_file(root)),
            log_filter: "warn,konnect=info,openraft=warn".into(),
            child: None,
            cpus: None,
        }
    }

    /// Admin TLS and peer mTLS with certificate `cert_id` of `certs` (not yet started).
    pub fn with_tls(mut self, certs: &Certs, cert_id: u64) -> NodeProc {
        self.extra_args.extend(certs.node_args(cert_id));
        self.ca = Some(certs.ca());
        self
    }

    pub fn admin_url(&self) -> String {
        match self.ca {
            Some(_) => format!("https://{}", self.admin),
            None => format!("http://{}", self.admin),
        }
    }

    /// The `konnect serve` command line of this node, output appended to its log.
    pub fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        let mut cmd = match &self.cpus {
            // taskset execs konnect in its place: the child's pid is the node's.
            Some(cpus) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", cpus, KONNECT]);
                cmd
            }
            None => Command::new(KONNECT),
        };
        cmd.arg("serve")
            .args(["--node-id", &self.id.to_string()])
            .args(["--zone", &self.zone])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--peer-addr", &self.peer])
            .args(["--admin-addr", &self.admin])
            .args(["--status-addr", &self.status])
            .args(["--proxy-addr", "127.0.0.1:0"])
            .args(["--log", &self.log_filter])
            // Tests share two cores with compilers and other clusters: timings that tolerate
            // a starved process for a second keep elections from flapping.
            .args(["--heartbeat-ms", "150", "--election-timeout-min-ms", "1000"])
            .args(&self.extra_args)
            .env_remove("KONNECT_TOKEN")
            .env_remove("KONNECT_SECRET_KEY")
            .env_remove("KONNECT_SECRET_KEY_FILE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        if let Some(p) = &self.peers {
            cmd.args(["--peers", p]);
        }
        if let Some(k) = &self.secret_key_file {
            cmd.arg("--secret-key-file").arg(k);
        }
        cmd
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let starts_before = self.starts_logged();
        self.child = Some(self.command().spawn().expect("spawn konnect"));
        self.wait_listening(starts_before);
    }

    /// How many times the node has logged that it started (once its listeners are bound).
    fn starts_logged(&self) -> usize {
        self.log().matches("konnect node started").count()
    }

    /// Starts the node expecting it to refuse: waits up to 20 s for it to exit and returns
    /// whether it exited successfully and what it wrote to its log meanwhile.
    pub fn start_expecting_exit(&mut self) -> (bool, String) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let before = self.log().len();
        let mut child = self.command().spawn().expect("spawn konnect");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for konnect") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {} kept running:\n{}", self.id, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.success(), self.log()[before..].to_string())
    }

    /// Blocks until the admin port accepts connections (the node binds all ports at once).
    /// Waits until the admin port answers and the node has logged this start (which names
    /// its proxy address: tests bind the proxy to port 0, so a restart gets a new one).
    fn wait_listening(&mut self, starts_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.admin).is_err()
            || self.starts_logged() == starts_before
        {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("node {} exited with {status}:\n{}", self.id, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start listening:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the graceful way to stop a node.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }

    /// Waits for the process to exit (after `terminate`) and returns whether it exited cleanly.
    pub fn wait_exit(&mut self) -> bool {
        match self.child.take() {
            Some(mut c) => c.wait().map(|s| s.success()).unwrap_or(false),
            None => false,
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or `None` if it
    /// is still running (or was not started).
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.child.as_mut()?.try_wait().expect("wait for konnect");
            if let Some(status) = status {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The proxy address this node printed when it last started (the cluster's member list
    /// keeps the address of its first start; tests bind the proxy to port 0).
    pub fn started_proxy_addr(&self) -> String {
        self.log()
            .lines()
            .rev()
            .filter(|l| l.contains("konnect node started"))
            .find_map(|l| l.split(" proxy=").nth(1)?.split_whitespace().next())
            .map(str::to_string)
            .expect("the node logged its start")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    pub token: Option<String>,
    /// TLS mode: the certificates every node uses; clients trust their CA.
    pub certs: Option<Certs>,
}

pub const ZONES: [&str; 4] = ["az-a", "az-b", "az-c", "az-d"];

impl Cluster {
    /// Starts `n` nodes that share one `--peers` list (not yet initialised).
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(n, extra, false, None)
    }

    /// `start` with each node on CPU 0 alone, then initialised through node 1.
    pub async fn start_initialised_on_one_core(n: usize, extra: &[&str]) -> Cluster {
        Cluster::initialise(Cluster::start_with(n, extra, false, Some("0"))).await
    }

    /// Like `start`, with admin TLS and peer mTLS on every node, from certificates made by
    /// `konnect certs init` in the cluster's directory.
    pub fn start_tls(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(n, extra, true, None)
    }

    fn start_with(n: usize, extra: &[&str], tls: bool, cpus: Option<&str>) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = tls.then(|| Certs::init(&dir.path().join("certs"), n));
        let ports: Vec<Vec<u16>> = free_ports(3 * n).chunks(3).map(|c| c.to_vec()).collect();
        let peers = (0..n)
            .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[i][0]))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let mut node = NodeProc::new(
                dir.path(),
                id,
                ZONES[i % 4],
                Some(peers.clone()),
                &ports[i],
                extra,
            );
            if let Some(certs) = &certs {
                node = node.with_tls(certs, id);
            }
            node.cpus = cpus.map(str::to_owned);
            node.start();
            nodes.push(node);
        }
        Cluster {
            dir,
            nodes,
            token: None,
            certs,
        }
    }

    /// Starts `n` nodes and initialises them through node 1.
    pub async fn start_initialised(n: usize, extra: &[&str]) -> Cluster {
        Cluster::initialise(Cluster::start(n, extra)).await
    }

    /// `start_tls`, then initialised through node 1.
    pub async fn start_initialised_tls(n: usize, extra: &[&str]) -> Cluster {
        Cluster::initialise(Cluster::start_tls(n, extra)).await
    }

    async fn initialise(mut c: Cluster) -> Cluster {
        let init = c
            .client_without_token(0)
            .init()
            .await
            .expect("cluster init");
        c.token = Some(init.admin_token);
        c
    }

    pub fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    /// A client of `endpoints` with `token`, trusting the cluster CA in TLS mode.
    pub fn client_for(&self, endpoints: Vec<String>, token: Option<String>) -> Client {
        let trust = self
            .certs
            .as_ref()
            .map(Certs::trust)
            .unwrap_or(TrustRoots::System);
        Client::with_trust(endpoints, token, trust).expect("client")
    }

    pub fn client_without_token(&self, index: usize) -> Client {
        self.client_for(vec![self.nodes[index].admin_url()], None)
    }

    /// A client talking only to node `id`.
    pub fn client_of(&self, id: u64) -> Client {
        let n = self.nodes.iter().find(|n| n.id == id).expect("node id");
        self.client_for(vec![n.admin_url()], self.token.clone())
    }

    /// A client that fails over across every running node.
    pub fn client_any(&self) -> Client {
        let eps = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.admin_url())
            .collect();
        self.client_for(eps, self.token.clone())
    }

    /// Waits until every running node agrees on one leader; returns its id.
    pub async fn leader(&self) -> u64 {
        wait_for(
            "all running nodes to agree on a leader",
            Duration::from_secs(20),
            || async {
                let mut seen = BTreeMap::new();
                for n in self.nodes.iter().filter(|n| n.is_running()) {
                    match self.client_of(n.id).status().await {
                        Ok(s) => {
                            seen.insert(n.id, s.leader_id);
                        }
                        Err(_) => return None,
                    }
                }
                let leaders: std::collections::BTreeSet<Option<u64>> =
                    seen.values().copied().collect();
                let agreed = match (leaders.len(), leaders.first()) {
                    (1, Some(Some(l)))
                        if self.nodes.iter().any(|n| n.id == *l && n.is_running()) =>
                    {
                        Some(*l)
                    }
                    _ => None,
                };
                agreed
            },
        )
        .await
    }

    pub async fn status(&self, id: u64) -> StatusResponse {
        self.client_of(id).status().await.expect("status")
    }

    /// The proxy address node `id` advertises (the harness lets the OS pick the port).
    pub async fn proxy_addr(&self, id: u64) -> String {
        let status = self.status(id).await;
        status
            .members
            .iter()
            .find(|m| m.node_id == id)
            .and_then(|m| m.info.as_ref())
            .map(|i| i.proxy_addr.clone())
            .expect("node lists itself")
    }

    pub fn dump_logs(&self) {
        for n in &self.nodes {
            eprintln!("===== node {} log =====\n{}", n.id, n.log());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// Polls `probe` until it yields a value or `timeout` passes (then panics naming `what`).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A resource from a JSON spec.
pub fn resource(kind: &str, name: &str, spec: serde_json::Value) -> ResourceInput {
    ResourceInput {
        kind: kind.into(),
        name: name.into(),
        labels: Default::default(),
        spec: Some(konnect_proto::json::json_to_struct(&spec).unwrap()),
    }
}

pub fn service(name: &str, port: u16) -> ResourceInput {
    ResourceInput {
        kind: "Service".into(),
        name: name.into(),
        labels: Default::default(),
        spec: Some(
            konnect_proto::json::json_to_struct(&serde_json::json!({
                "targets": [{"url": format!("http://127.0.0.1:{port}"), "weight": 100}]
            }))
            .unwrap(),
        ),
    }
}

pub fn route(name: &str, path: &str, service: &str) -> ResourceInput {
    ResourceInput {
        kind: "Route".into(),
        name: name.into(),
        labels: Default::default(),
        spec: Some(
            konnect_proto::json::json_to_struct(
                &serde_json::json!({"paths": [path], "service": service}),
            )
            .unwrap(),
        ),
    }
}

/// A plain HTTP/1.1 response as a test sees it.
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: bytes::Bytes,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Sends one request through the proxy with a fresh connection.
pub async fn http(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to proxy");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Sends raw bytes and returns whatever the server answers before closing (or within 5 s).
pub async fn raw(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

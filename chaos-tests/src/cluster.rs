//! A cluster of real `konnect serve` processes for one chaos run: in network namespaces when
//! this process may create them (`Mode::Netns`), otherwise on loopback ports
//! (`Mode::Loopback`, where only process faults are possible). Owns the processes, their data
//! directories and logs, the cluster's secret key file, and the namespace topology; dropping
//! it kills and removes them all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use konnect_client::Client;
use konnect_proto::admin::v1::StatusResponse;

use crate::net::{self, Resource, Topology};

/// Raft timing for chaos runs: the defaults' shape, a little faster so a scenario sees several
/// elections in a few seconds. A pause or partition meant to outlast an election holds for
/// longer than `ELECTION_TIMEOUT_MAX`.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 500;
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(1000);

/// Zones assigned round-robin, so a 3-node cluster spans three zones.
pub const ZONES: [&str; 3] = ["az-a", "az-b", "az-c"];

/// The Raft timing the nodes of one cluster run with (`--heartbeat-ms`,
/// `--election-timeout-min-ms`, `--election-timeout-max-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl RaftTiming {
    /// The chaos default: nodes on one bridge, no added latency.
    pub const CHAOS: RaftTiming = RaftTiming {
        heartbeat_ms: HEARTBEAT_MS,
        election_timeout_min_ms: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max_ms: ELECTION_TIMEOUT_MAX.as_millis() as u64,
    };
}

/// What to start: each node's zone, how many of them (the first ones) form the cluster at
/// `init` (the rest start with no `--peers` and wait to be added with `add-node`), and the
/// Raft timing.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// One zone per node.
    pub zones: Vec<String>,
    /// The first `initial_members` nodes are listed in `--peers`; invariant: at least 1 and
    /// at most `zones.len()`.
    pub initial_members: usize,
    pub timing: RaftTiming,
}

impl ClusterSpec {
    /// `n` nodes in the zones `ZONES` round-robin, all members, chaos timing.
    pub fn round_robin(n: usize) -> ClusterSpec {
        ClusterSpec {
            zones: (0..n).map(|i| ZONES[i % ZONES.len()].to_string()).collect(),
            initial_members: n,
            timing: RaftTiming::CHAOS,
        }
    }
}

/// Which network the nodes run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeKind {
    /// One network namespace per node; partitions with nftables.
    Netns,
    /// Loopback ports in this namespace; faults limited to kill and pause.
    Loopback,
}

impl std::fmt::Display for ModeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModeKind::Netns => "netns",
            ModeKind::Loopback => "loopback",
        })
    }
}

/// What the caller asks for; `Auto` tries namespaces and falls back to loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRequest {
    Auto,
    Netns,
    Loopback,
}

/// One `konnect serve` process and where it listens.
pub struct Node {
    /// Raft node id, 1-based.
    pub id: u64,
    pub zone: String,
    /// Network namespace to run in (netns mode).
    pub ns: Option<String>,
    pub peer_addr: String,
    pub admin_addr: String,
    pub status_addr: String,
    pub proxy_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// `--secret-key-file`: the same file for every node of the cluster.
    pub secret_key_file: PathBuf,
    /// In the Raft membership: listed in the initial `--peers`, or added since (the harness
    /// sets it after `add-node`). Leader checks and workload clients look at members only.
    pub member: bool,
    /// Listed in the initial `--peers` (and started with it, restarts included).
    in_initial_peers: bool,
    timing: RaftTiming,
    /// `--test-clock-offset-ms` for the next start (node/src/clock.rs): the node reads it
    /// only at start, so a clock fault restarts the node with it. 0: the true clock.
    pub clock_offset_ms: i64,
    /// Extra `konnect serve` arguments (`ClusterOptions::extra_args`).
    pub extra_args: Vec<String>,
    /// Environment for the next start, e.g. `FAILPOINTS` (`faults.rs`); kept across restarts
    /// until changed.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    paused: bool,
}

// === impl Node ===

impl Node {
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Running and not paused: it can answer.
    pub fn is_live(&self) -> bool {
        self.is_running() && !self.paused
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process; `peers` is the initial `--peers` list, which a node that joins later
    /// must not get (it is not in it).
    fn spawn(&mut self, binary: &Path, peers: Option<&str>) -> Result<()> {
        if self.child.is_some() {
            bail!("node {} is already running", self.id);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        // `ip netns exec` and `setpriv` both exec, so the child's pid is konnect's own: kill -9
        // and SIGSTOP reach the node itself. `--pdeathsig KILL` takes the node down if this
        // process dies without running its destructors (SIGKILL, abort).
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.ns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if has_setpriv() {
            argv.extend(["setpriv", "--pdeathsig", "KILL", "--"].map(String::from));
        }
        argv.push(binary.display().to_string());
        argv.extend(
            [
                "serve",
                "--node-id",
                &self.id.to_string(),
                "--zone",
                &self.zone,
                "--data-dir",
                &self.data_dir.display().to_string(),
                "--peer-addr",
                &self.peer_addr,
                "--admin-addr",
                &self.admin_addr,
                "--status-addr",
                &self.status_addr,
                "--proxy-addr",
                &self.proxy_addr,
                "--secret-key-file",
                &self.secret_key_file.display().to_string(),
                "--heartbeat-ms",
                &self.timing.heartbeat_ms.to_string(),
                "--election-timeout-min-ms",
                &self.timing.election_timeout_min_ms.to_string(),
                "--election-timeout-max-ms",
                &self.timing.election_timeout_max_ms.to_string(),
                "--log",
                // Elections and membership at info; one line per applied revision is noise.
                "warn,konnect=info,konnect::state=warn,openraft=warn",
            ]
            .map(String::from),
        );
        if let Some(peers) = peers {
            argv.extend(["--peers".to_string(), peers.to_string()]);
        }
        if self.clock_offset_ms != 0 {
            argv.push(format!("--test-clock-offset-ms={}", self.clock_offset_ms));
        }
        argv.extend(self.extra_args.iter().cloned());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env_remove("FAILPOINTS")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("KONNECT_TOKEN")
            .env_remove("KONNECT_CONFIG")
            .env_remove("KONNECT_SECRET_KEY")
            .env_remove("KONNECT_SECRET_KEY_FILE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn node {}: {}", self.id, argv.join(" ")))?;
        net::register(Resource::Process(child.id()));
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Forgets a process that exited by itself (after `exited` said so), so it can be
    /// started again.
    pub fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            net::unregister(&Resource::Process(child.id()));
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// kill -9: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            net::unregister(&Resource::Process(child.id()));
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing until `resume`.
    pub fn pause(&mut self) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("node {} is not running", self.id))?;
        net::send_signal(pid, libc::SIGSTOP)
            .with_context(|| format!("SIGSTOP node {} (pid {pid})", self.id))?;
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            net::send_signal(pid, libc::SIGCONT)
                .with_context(|| format!("SIGCONT node {} (pid {pid})", self.id))?;
        }
        self.paused = false;
        Ok(())
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process exited by itself (a crash), with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn has_setpriv() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new("setpriv")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Free loopback ports below the ephemeral range (the node tests' finder, shared).
#[path = "../../node/tests/support/ports.rs"]
mod ports;
use ports::free_ports;

/// A private copy of the `konnect` binary (`$TMPDIR/kchaos-<pid>-konnect`), shared by the
/// clusters alive at one time and removed when the last one drops. The copy keeps a rebuild
/// during a run from mixing binaries, or from briefly removing the file under a restart.
#[derive(Debug)]
pub struct KonnectBinary {
    path: PathBuf,
}

impl KonnectBinary {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KonnectBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        net::unregister(&Resource::File(self.path.clone()));
    }
}

/// The binary to copy: `$KONNECT_BIN`, else the one in this build's target directory,
/// rebuilt first with `cargo build -p konnect` when running under cargo (so a test never runs
/// a stale node). Resolved once per process: the build can wait for cargo's lock.
fn konnect_source() -> Result<PathBuf> {
    static SOURCE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    SOURCE
        .get_or_init(|| built_konnect_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The current private copy of the konnect binary, made if no cluster holds one.
pub fn konnect_binary() -> Result<Arc<KonnectBinary>> {
    konnect_binary_with(false)
}

/// The current private copy of the konnect binary, or (`failpoints`) of the one built with
/// `--features failpoints` (`crate::faults::failpoints_konnect_source`).
pub fn konnect_binary_with(failpoints: bool) -> Result<Arc<KonnectBinary>> {
    static CURRENT: Mutex<Weak<KonnectBinary>> = Mutex::new(Weak::new());
    static CURRENT_FAILPOINTS: Mutex<Weak<KonnectBinary>> = Mutex::new(Weak::new());
    let mut current = if failpoints {
        &CURRENT_FAILPOINTS
    } else {
        &CURRENT
    }
    .lock()
    .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(binary) = current.upgrade() {
        return Ok(binary);
    }
    let (source, suffix) = if failpoints {
        (
            crate::faults::failpoints_konnect_source()?,
            "-konnect-failpoints",
        )
    } else {
        (konnect_source()?, "-konnect")
    };
    net::remove_stale_files(&std::env::temp_dir(), suffix);
    let path = std::env::temp_dir().join(format!("{}-{}{suffix}", net::PREFIX, std::process::id()));
    net::register(Resource::File(path.clone()));
    let binary = Arc::new(KonnectBinary { path });
    std::fs::copy(&source, &binary.path)
        .with_context(|| format!("copy {} to {}", source.display(), binary.path.display()))?;
    *current = Arc::downgrade(&binary);
    Ok(binary)
}

fn built_konnect_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KONNECT_BIN") {
        return Ok(PathBuf::from(path));
    }
    cargo_build_konnect(&[])
}

/// Runs `cargo build -p konnect --bin konnect` with `features` (when running under cargo) and
/// returns where the binary is: `target/<profile>/konnect`.
pub(crate) fn cargo_build_konnect(features: &[&str]) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the current executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("executable has no directory"))?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("konnect");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "konnect", "--bin", "konnect"]);
        if !features.is_empty() {
            cmd.args(["--features", &features.join(",")]);
        }
        // Without the variables cargo sets for the running test (CARGO_MANIFEST_DIR,
        // CARGO_PKG_NAME...): build scripts that track them (ring's does) would otherwise see
        // them change between this build and the one `cargo test` just made, and rebuild ring,
        // rustls, tonic and konnect on every alternation (minutes on two cores).
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if is_crate_run_variable(name) {
                cmd.env_remove(name);
            }
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().context("run cargo build -p konnect")?;
        if !status.success() {
            bail!("cargo build -p konnect {features:?} failed");
        }
    }
    if !candidate.is_file() {
        bail!(
            "no konnect binary at {}: run `cargo build -p konnect` or set KONNECT_BIN",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// Whether cargo sets `name` for the crate it runs (a test or a binary), rather than it being
/// the caller's configuration of cargo (`CARGO_HOME`, `CARGO_TARGET_DIR`...).
fn is_crate_run_variable(name: &str) -> bool {
    matches!(
        name,
        "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_MANIFEST_LINKS"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_TARGET_TMPDIR"
            | "CARGO_RUSTC_CURRENT_DIR"
            | "OUT_DIR"
    ) || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
}

/// Makes the cluster's secret key file (`<dir>/secret.key`, mode 0600) with the binary's own
/// `konnect secrets new-key`.
fn write_secret_key(binary: &Path, dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let out = Command::new(binary)
        .args(["secrets", "new-key", "--id", "chaos"])
        .output()
        .with_context(|| format!("run {} secrets new-key", binary.display()))?;
    if !out.status.success() {
        bail!(
            "konnect secrets new-key failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = dir.join("secret.key");
    std::fs::write(&path, &out.stdout).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(path)
}

/// How a cluster's nodes are built and started, beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Run a konnect built with `--features failpoints` (crash points armed per node through
    /// `Node::env`, see `faults.rs`).
    pub failpoints: bool,
    /// Extra `konnect serve` arguments for every node, e.g. `--snapshot-after-entries 40`.
    pub extra_args: Vec<String>,
    /// Put node `index`'s data dir on a tmpfs of this many bytes (root only): `(index, bytes)`.
    pub small_disk: Option<(usize, u64)>,
    /// Start node `index` with `FAILPOINTS` set to this value: `(index, value)`.
    pub failpoints_on: Option<(usize, String)>,
}

/// N konnect processes that form one Raft cluster.
pub struct Cluster {
    // Field order is drop order: processes die before their namespaces go, and before a
    // small disk under a data dir is unmounted.
    pub nodes: Vec<Node>,
    /// The tmpfs under a node's data dir (`ClusterOptions::small_disk`).
    pub small_disk: Option<crate::faults::SmallDisk>,
    topology: Option<Topology>,
    pub mode: ModeKind,
    /// Why namespaces were not used, in loopback mode.
    pub fallback_reason: Option<String>,
    pub token: Option<String>,
    binary: Arc<KonnectBinary>,
    peers: String,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
}

// === impl Cluster ===

impl Cluster {
    /// Starts `n` nodes (not yet initialised) in the requested mode.
    pub async fn start(n: usize, request: ModeRequest) -> Result<Cluster> {
        Cluster::start_with(n, request, &ClusterOptions::default()).await
    }

    /// Starts `n` nodes (not yet initialised) in the requested mode, with `options`.
    pub async fn start_with(
        n: usize,
        request: ModeRequest,
        options: &ClusterOptions,
    ) -> Result<Cluster> {
        let mut cluster = Cluster::create_with(&ClusterSpec::round_robin(n), request, options)?;
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// Starts every node that is not running.
    pub async fn start_all(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                self.start_node(i).await?;
            }
        }
        Ok(())
    }

    /// Sets up the nodes of `spec` (namespaces, data dirs, addresses) without starting them:
    /// something may go between the nodes (`wan::Wan`) before they first talk.
    pub fn create(spec: &ClusterSpec, request: ModeRequest) -> Result<Cluster> {
        Cluster::create_with(spec, request, &ClusterOptions::default())
    }

    /// `create` with `options` (failpoints, extra arguments, a small disk).
    pub fn create_with(
        spec: &ClusterSpec,
        request: ModeRequest,
        options: &ClusterOptions,
    ) -> Result<Cluster> {
        let n = spec.zones.len();
        if spec.initial_members == 0 || spec.initial_members > n {
            bail!(
                "{} initial members of {n} nodes: at least one, at most all",
                spec.initial_members
            );
        }
        let binary = konnect_binary_with(options.failpoints)?;
        let dir = tempfile::Builder::new()
            .prefix("konnect-chaos-")
            .tempdir()
            .context("create a temporary directory")?;
        let (topology, fallback_reason) = match request {
            ModeRequest::Loopback => (None, Some("loopback requested".to_string())),
            ModeRequest::Netns => (Some(Topology::create(n)?), None),
            ModeRequest::Auto => match Topology::create(n) {
                Ok(t) => (Some(t), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            },
        };
        let mode = if topology.is_some() {
            ModeKind::Netns
        } else {
            ModeKind::Loopback
        };
        let secret_key_file = write_secret_key(binary.path(), dir.path())?;
        let mut nodes = Vec::new();
        let ports = free_ports(4 * n);
        for i in 0..n {
            let id = i as u64 + 1;
            let (ns, host, p) = match &topology {
                Some(t) => {
                    let net = &t.nodes()[i];
                    (
                        Some(net.ns.clone()),
                        net.ip.to_string(),
                        [7101, 7201, 7301, 8080],
                    )
                }
                None => (
                    None,
                    "127.0.0.1".to_string(),
                    [
                        ports[4 * i],
                        ports[4 * i + 1],
                        ports[4 * i + 2],
                        ports[4 * i + 3],
                    ],
                ),
            };
            nodes.push(Node {
                id,
                zone: spec.zones[i].clone(),
                ns,
                peer_addr: format!("{host}:{}", p[0]),
                admin_addr: format!("{host}:{}", p[1]),
                status_addr: format!("{host}:{}", p[2]),
                proxy_addr: format!("{host}:{}", p[3]),
                data_dir: dir.path().join(format!("node{id}")),
                log_path: dir.path().join(format!("node{id}.log")),
                secret_key_file: secret_key_file.clone(),
                member: i < spec.initial_members,
                in_initial_peers: i < spec.initial_members,
                timing: spec.timing,
                clock_offset_ms: 0,
                extra_args: options.extra_args.clone(),
                env: Vec::new(),
                child: None,
                paused: false,
            });
        }
        let peers = nodes
            .iter()
            .filter(|n| n.in_initial_peers)
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        let dir_path = dir.path().to_path_buf();
        if let Some((index, value)) = &options.failpoints_on {
            nodes[*index]
                .env
                .push(("FAILPOINTS".to_string(), value.clone()));
        }
        let small_disk = match options.small_disk {
            Some((index, bytes)) => Some(crate::faults::SmallDisk::mount(
                &nodes[index].data_dir,
                bytes,
            )?),
            None => None,
        };
        Ok(Cluster {
            nodes,
            small_disk,
            topology,
            mode,
            fallback_reason,
            token: None,
            binary,
            peers,
            dir: Some(dir),
            dir_path,
        })
    }

    /// Starts `n` nodes and forms the cluster through node 1; waits for a leader.
    pub async fn start_initialised(n: usize, request: ModeRequest) -> Result<Cluster> {
        Cluster::start_initialised_with(n, request, &ClusterOptions::default()).await
    }

    /// `start_initialised` with `options`.
    pub async fn start_initialised_with(
        n: usize,
        request: ModeRequest,
        options: &ClusterOptions,
    ) -> Result<Cluster> {
        let mut cluster = Cluster::start_with(n, request, options).await?;
        cluster.initialise().await?;
        Ok(cluster)
    }

    /// Forms the cluster of the initial members through node 1 (`cluster init`), keeps the
    /// admin token and waits for a leader.
    pub async fn initialise(&mut self) -> Result<()> {
        let init = Client::new(vec![self.nodes[0].admin_url()], None)?
            .init()
            .await
            .context("cluster init")?;
        self.token = Some(init.admin_token);
        self.wait_for_leader(Duration::from_secs(30))
            .await
            .context("first leader election")?;
        Ok(())
    }

    /// The directory holding data dirs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Keeps the data dirs and logs after the cluster is dropped (for a failed run).
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            return dir.keep();
        }
        self.dir_path.clone()
    }

    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    pub fn topology_mut(&mut self) -> Option<&mut Topology> {
        self.topology.as_mut()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Starts (or restarts, after a kill) node `index` and waits until it listens.
    pub async fn start_node(&mut self, index: usize) -> Result<()> {
        let binary = self.binary.clone();
        let peers = self.peers.clone();
        let node = &mut self.nodes[index];
        let initial = node.in_initial_peers;
        node.spawn(binary.path(), initial.then_some(peers.as_str()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(&node.admin_addr)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = node.exited() {
                let tail = node.log_tail(30);
                node.kill9();
                bail!("node {} exited with {status}:\n{tail}", node.id);
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not listen on {} within 20s:\n{}",
                    node.id,
                    node.admin_addr,
                    node.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client of node `index` alone (no failover), so every call is served by that node.
    pub fn client_of(&self, index: usize) -> Result<Client> {
        Ok(Client::new(
            vec![self.nodes[index].admin_url()],
            self.token.clone(),
        )?)
    }

    /// Status of node `index`, or `None` if it does not answer within `timeout`.
    pub async fn status(&self, index: usize, timeout: Duration) -> Option<StatusResponse> {
        if !self.nodes[index].is_live() {
            return None;
        }
        let client = self.client_of(index).ok()?;
        tokio::time::timeout(timeout, client.status())
            .await
            .ok()?
            .ok()
    }

    /// The indexes of the nodes in the Raft membership (see `Node::member`).
    pub fn members(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].member)
            .collect()
    }

    /// The index of the member that says it leads with the highest term, if any answers so.
    pub async fn current_leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in self.members() {
            if let Some(s) = self.status(i, Duration::from_millis(500)).await {
                if s.role == "Leader" && best.is_none_or(|(term, _)| s.term > term) {
                    best = Some((s.term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits until every live member names the same live leader; returns its index.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = std::collections::BTreeSet::new();
            let mut answered = 0;
            for i in self.members() {
                if !self.nodes[i].is_live() {
                    continue;
                }
                match self.status(i, Duration::from_millis(500)).await {
                    Some(s) => {
                        answered += 1;
                        leaders.insert(s.leader_id);
                    }
                    None => {
                        leaders.insert(None);
                    }
                }
            }
            if let (1, Some(Some(id))) = (leaders.len(), leaders.first()) {
                let index = (*id as usize).wrapping_sub(1);
                if answered > 0 && self.nodes.get(index).is_some_and(Node::is_live) {
                    return Ok(index);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no agreed leader within {}s (leaders named by live nodes: {leaders:?})",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Undoes every fault: resumes paused nodes, restarts killed ones, removes drop rules,
    /// restarts nodes whose clock is off with the true clock.
    pub async fn heal_all(&mut self) -> Result<()> {
        if let Some(t) = self.topology.as_mut() {
            t.heal()?;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].clock_offset_ms != 0 {
                self.nodes[i].kill9();
                self.nodes[i].clock_offset_ms = 0;
            }
            if self.nodes[i].is_paused() {
                self.nodes[i].resume()?;
            }
            if !self.nodes[i].is_running() {
                self.start_node(i).await?;
            }
        }
        Ok(())
    }

    /// Fails if a node exited by itself (rather than by our kill -9).
    pub fn check_no_crash(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if let Some(status) = node.exited() {
                let tail = node.log_tail(40);
                node.kill9();
                bail!("node {} exited by itself with {status}:\n{tail}", node.id);
            }
        }
        Ok(())
    }

    /// The last lines of every node's log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "===== node {} ({}) =====\n{}",
                    n.id,
                    n.log_path.display(),
                    n.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Fields drop in declaration order (nodes before the topology) anyway; killing here
        // says it outright: a namespace is removed only after its process is gone. SIGKILL
        // ends a stopped (paused) process too.
        for node in &mut self.nodes {
            node.kill9();
        }
    }
}

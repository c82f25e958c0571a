//! Network namespaces for one chaos run: a hub namespace holding a bridge, one namespace per
//! node joined to it by a veth pair, and an nftables table in each node namespace whose two
//! address sets say which peers that node cannot send to or receive from.
//!
//! Layout for run `R` with subnet `10.77.S.0/24` (S picked so it collides with nothing in the
//! root namespace):
//! ```text
//!   root ns  ck<R> 10.77.S.254 ──veth── [hub ns: br0] ──veth── eth0 10.77.S.1  (node ns 1)
//!                                               │    └──veth── eth0 10.77.S.2  (node ns 2) ...
//! ```
//! The test process stays in the root namespace and reaches every node's admin address
//! through `ck<R>`; partitions are rules between node addresses only, so the test's clients
//! can always reach every node (a client may talk to an isolated leader, which is the point).
//! The bridge lives in its own namespace so the host's firewall (Docker's FORWARD policy,
//! br_netfilter) never sees the bridged traffic.
//!
//! Everything is named `kchaos-<pid>-<R>-…` and removed on drop; `Topology::create` also
//! removes what an earlier run left behind when its process no longer exists. Processes and
//! namespaces are recorded in a process-wide registry so a Ctrl-C handler can remove them
//! (`cleanup_registered`).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;

/// Namespace (and temporary file) names start with this, followed by the owning process id.
pub const PREFIX: &str = "kchaos";

/// One node's place in the topology.
#[derive(Debug, Clone)]
pub struct NodeNet {
    /// Network namespace name (for `ip netns exec`).
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The namespaces, links and firewall tables of one run. Dropping it removes them.
#[derive(Debug)]
pub struct Topology {
    run: String,
    hub: String,
    host_link: String,
    host_ip: Ipv4Addr,
    nodes: Vec<NodeNet>,
    /// Per node (index), the peer indexes it currently drops packets to / from.
    blocked_out: Vec<BTreeSet<usize>>,
    blocked_in: Vec<BTreeSet<usize>>,
}

// === impl Topology ===

impl Topology {
    /// Creates a hub and `n` node namespaces. Fails (leaving nothing behind) when this process
    /// may not create namespaces or `nft` is missing; the caller then falls back to loopback.
    pub fn create(n: usize) -> Result<Topology> {
        if let Some(uid) = effective_uid() {
            if uid != 0 {
                bail!("not root (effective uid {uid}): network namespaces need CAP_NET_ADMIN");
            }
        }
        for tool in ["ip", "nft"] {
            if which(tool).is_none() {
                bail!("`{tool}` not found on PATH (install iproute2 and nftables)");
            }
        }
        remove_stale();
        let mut rng = rand::rng();
        let run = format!("{:06x}", rng.random_range(0..0xff_ffffu32));
        let subnet = pick_subnet(&mut rng)?;
        let hub = format!("{PREFIX}-{}-{run}-hub", std::process::id());
        let mut topology = Topology {
            host_link: format!("ck{run}"),
            host_ip: Ipv4Addr::new(10, 77, subnet, 254),
            run: run.clone(),
            hub: hub.clone(),
            nodes: Vec::new(),
            blocked_out: vec![BTreeSet::new(); n],
            blocked_in: vec![BTreeSet::new(); n],
        };
        // Registered before the first command, so a failure half-way still cleans up.
        register(Resource::Namespace(hub.clone()));
        register(Resource::Link(topology.host_link.clone()));
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let host_link = topology.host_link.clone();
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", "host", "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", "host", "master", "br0", "up"])?;
        let host_cidr = format!("{}/24", topology.host_ip);
        ip(&["addr", "add", &host_cidr, "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        for i in 0..n {
            let ns = format!("{PREFIX}-{}-{run}-n{}", std::process::id(), i + 1);
            register(Resource::Namespace(ns.clone()));
            let node_ip = Ipv4Addr::new(10, 77, subnet, i as u8 + 1);
            let hub_end = format!("n{}", i + 1);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{node_ip}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            // The output chain runs before NAT (-100) and the input chain after it (100), so
            // both see the nodes' own addresses even when `wan::Wan` redirects a node's
            // connections to a latency proxy: a partition then still drops what a node sends
            // to a cut-off peer (its replies through the proxy, too).
            nft(
                &ns,
                "table inet chaos {\n\
                   set blocked_in { type ipv4_addr; }\n\
                   set blocked_out { type ipv4_addr; }\n\
                   chain input { type filter hook input priority 150; policy accept; ip saddr @blocked_in drop; }\n\
                   chain output { type filter hook output priority -150; policy accept; ip daddr @blocked_out drop; }\n\
                 }\n",
            )?;
            topology.nodes.push(NodeNet { ns, ip: node_ip });
        }
        Ok(topology)
    }

    pub fn run_id(&self) -> &str {
        &self.run
    }

    pub fn nodes(&self) -> &[NodeNet] {
        &self.nodes
    }

    /// Each node's index by its address: how a server on the bridge tells which node a
    /// connection comes from.
    pub fn node_index_by_ip(&self) -> std::collections::HashMap<std::net::IpAddr, usize> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (std::net::IpAddr::V4(n.ip), i))
            .collect()
    }

    /// The root namespace's address on the bridge (where the test's clients come from).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// Node `from` (index) stops sending packets to each node in `to`.
    pub fn block_out(&mut self, from: usize, to: &[usize]) -> Result<()> {
        self.block(from, "blocked_out", to)
    }

    /// Node `at` (index) drops every packet arriving from each node in `from`.
    pub fn block_in(&mut self, at: usize, from: &[usize]) -> Result<()> {
        self.block(at, "blocked_in", from)
    }

    /// No packet passes between `a` and any node in `others`, either way.
    pub fn block_both(&mut self, a: usize, others: &[usize]) -> Result<()> {
        self.block_out(a, others)?;
        self.block_in(a, others)?;
        for &o in others {
            self.block_out(o, &[a])?;
            self.block_in(o, &[a])?;
        }
        Ok(())
    }

    /// Removes every drop rule on every node.
    pub fn heal(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            if self.blocked_in[i].is_empty() && self.blocked_out[i].is_empty() {
                continue;
            }
            nft(
                &self.nodes[i].ns,
                "flush set inet chaos blocked_in\nflush set inet chaos blocked_out\n",
            )?;
            self.blocked_in[i].clear();
            self.blocked_out[i].clear();
        }
        Ok(())
    }

    /// Adds the addresses of `peers` to address set `set` in `node`'s namespace.
    fn block(&mut self, node: usize, set: &str, peers: &[usize]) -> Result<()> {
        let peers: Vec<usize> = peers.iter().copied().filter(|&p| p != node).collect();
        if peers.is_empty() {
            return Ok(());
        }
        let addrs: Vec<String> = peers
            .iter()
            .map(|&p| self.nodes[p].ip.to_string())
            .collect();
        nft(
            &self.nodes[node].ns,
            &format!("add element inet chaos {set} {{ {} }}\n", addrs.join(", ")),
        )?;
        let blocked = if set == "blocked_in" {
            &mut self.blocked_in[node]
        } else {
            &mut self.blocked_out[node]
        };
        blocked.extend(peers);
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for node in &self.nodes {
            remove_namespace(&node.ns);
            unregister(&Resource::Namespace(node.ns.clone()));
        }
        remove_namespace(&self.hub);
        unregister(&Resource::Namespace(self.hub.clone()));
        // Normally gone with its peer in the hub; removed here in case the hub lingers.
        let _ = quiet(&["link", "del", &self.host_link]);
        unregister(&Resource::Link(self.host_link.clone()));
    }
}

// === commands ===

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run `ip`")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `ip` and ignores failure (cleanup of things that may already be gone).
fn quiet(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Feeds an nft script to `nft -f -` inside namespace `ns`.
pub(crate) fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run `nft`")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("nft stdin"))?
        .write_all(script.as_bytes())
        .context("write nft script")?;
    let out = child.wait_with_output().context("wait for nft")?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed: {} (script: {})",
            String::from_utf8_lossy(&out.stderr).trim(),
            script.trim()
        );
    }
    Ok(())
}

/// Kills whatever still runs in `ns`, then deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse() {
                let _ = send_signal(pid, libc::SIGKILL);
            }
        }
    }
    let _ = quiet(&["netns", "del", ns]);
}

/// kill(2): sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::other(format!("pid {pid} out of range")))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours; a pid that no longer
    // exists only yields ESRCH.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes namespaces left by chaos runs whose process is gone (a crash or a SIGKILL).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}

/// Removes files in `dir` named `kchaos-<pid><suffix>` whose process is gone.
pub fn remove_stale_files(dir: &std::path::Path, suffix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(suffix))
        else {
            continue;
        };
        if let Ok(pid) = rest.parse::<u32>() {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A third octet for 10.77.S.0/24 that no address or route in the root namespace uses.
fn pick_subnet(rng: &mut impl Rng) -> Result<u8> {
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("ip addr")?;
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .context("ip route")?;
    let used = format!(
        "{}\n{}",
        String::from_utf8_lossy(&addrs.stdout),
        String::from_utf8_lossy(&routes.stdout)
    );
    if used.contains("10.77.0.0/16") {
        bail!("the root namespace routes 10.77.0.0/16 already; refusing to add addresses in it");
    }
    for _ in 0..64 {
        let s: u8 = rng.random_range(1..=250);
        if !used.contains(&format!("10.77.{s}.")) {
            return Ok(s);
        }
    }
    bail!("no free 10.77.S.0/24 subnet found")
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

// === cleanup registry ===

/// Something this process created that must not outlive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Namespace(String),
    Link(String),
    Process(u32),
    File(std::path::PathBuf),
    /// A tmpfs mounted under a node's data dir (`faults::SmallDisk`).
    Mount(std::path::PathBuf),
}

static REGISTRY: Mutex<Vec<Resource>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Resource>> {
    // Entries are plain values; a panic while holding the lock leaves a usable vector.
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn register(resource: Resource) {
    registry().push(resource);
}

pub fn unregister(resource: &Resource) {
    registry().retain(|r| r != resource);
}

/// Kills every registered process and removes every registered namespace, link and file:
/// for a Ctrl-C handler, which exits right after, and for the end of `main`.
pub fn cleanup_registered() {
    let resources: Vec<Resource> = registry().drain(..).collect();
    for r in &resources {
        if let Resource::Process(pid) = r {
            let _ = send_signal(*pid, libc::SIGKILL);
        }
    }
    for r in &resources {
        match r {
            Resource::Namespace(ns) => remove_namespace(ns),
            Resource::Link(link) => {
                let _ = quiet(&["link", "del", link]);
            }
            Resource::File(path) => {
                let _ = std::fs::remove_file(path);
            }
            Resource::Mount(path) => crate::faults::unmount(path),
            Resource::Process(_) => {}
        }
    }
}

//! Faults inside a node rather than around it (issue 8): crash points compiled into a
//! failpoints build of konnect (`node/src/failpoints.rs`), and a full disk under one node's
//! data dir. Each runs under the register and set workload (`scenario.rs` drives it and runs
//! the checks; this file plays the fault), except `crash-mid-shipment`, which runs under the
//! AI ledger workload (`ledger.rs`, using `wait_for_crash` from here).
//!
//! A crash point is armed on one node from its start, in fail-rs syntax with a count of
//! evaluations to skip (`raft::snapshot_before_rename=2*off->return`), so it fires once the
//! workload runs, on its own, at that exact place: the process exits with
//! `CRASH_EXIT_CODE` (86) after one line naming the point. The harness waits for that exit
//! (a run where the point never fires, or the node dies otherwise, FAILs), clears
//! `FAILPOINTS`, restarts the node, and requires it to catch up with the leader.
//!
//! The full disk: the node's data dir is a small tmpfs (root only: `mount -t tmpfs`); while
//! the workloads run, a ballast file fills it to the last byte, for `FULL_FOR`, while a probe
//! sends requests through that node's proxy to an upstream run here; then the ballast goes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::cluster::{self, Cluster, ClusterOptions};
use crate::limits::{service_and_route, Upstream};
use crate::net::{self, Resource};
use crate::scenario::{Outcome, RunOptions};
use crate::workload::{Clock, Stop};

/// Exit status of a node stopped by a crash point (node/src/failpoints.rs).
pub const CRASH_EXIT_CODE: i32 = 86;
/// How long a crash point may take to fire once the workload runs.
const FIRE_WITHIN: Duration = Duration::from_secs(20);
/// How long a crashed node stays down before its restart (longer than an election).
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long a restarted node, or one given its disk back, may take to catch up.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(30);
/// Snapshot often in `crash-before-snapshot`: every this many log entries, keeping few.
const SNAPSHOT_AFTER_ENTRIES: u64 = 30;
const LOG_KEEP_AFTER_SNAPSHOT: u64 = 10;
/// How long `crash-mid-install` pauses n2 (the leader purges its log meanwhile).
const INSTALL_PAUSE: Duration = Duration::from_secs(3);
/// The small disk of `full-disk` (tmpfs; RAM).
const SMALL_DISK_BYTES: u64 = 64 << 20;
/// How long the disk stays full.
const FULL_FOR: Duration = Duration::from_secs(5);
/// The node whose disk fills (index): n3, a follower when the cluster forms through n1.
const FULL_NODE: usize = 2;
/// A node whose Raft stopped on the full disk exits this soon after the disk is freed (it
/// checks every second).
const EXIT_AFTER_FREED_WITHIN: Duration = Duration::from_secs(15);

/// A fault played against the register and set workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterFault {
    /// `crash-after-append`: n1 (the leader when the cluster forms) dies with Raft log entries
    /// durable but not acknowledged.
    CrashAfterAppend,
    /// `crash-before-snapshot`: with a snapshot every `SNAPSHOT_AFTER_ENTRIES` entries, n2
    /// dies with a complete new snapshot file not yet renamed over the current one.
    CrashBeforeSnapshot,
    /// `crash-mid-install`: snapshots as for `CrashBeforeSnapshot`; n2 is paused (SIGSTOP)
    /// until the leader has purged the log it lacks, so that once resumed it gets a snapshot;
    /// it dies with that snapshot installed in its state but its copy not yet renamed over
    /// its current one. After the restart its snapshot must cover its purged log.
    CrashMidInstall,
    /// `full-disk`: n3's data dir (a small tmpfs) fills up for `FULL_FOR`.
    FullDisk,
}

/// A crash point armed on one node: which, where, and after how many evaluations.
#[derive(Debug, Clone, Copy)]
pub struct Arming {
    pub node: usize,
    pub point: &'static str,
    /// Evaluations of the point that pass before the one that fires.
    pub skip: u32,
}

impl Arming {
    /// The node's `FAILPOINTS` value.
    pub fn failpoints(&self) -> String {
        format!("{}={}*off->return", self.point, self.skip)
    }
}

impl RegisterFault {
    /// The crash point this fault arms, if it is one.
    pub fn arming(self) -> Option<Arming> {
        match self {
            // Each append of the leader's log is one evaluation: skip the cluster's setup and
            // a second or so of writes.
            RegisterFault::CrashAfterAppend => Some(Arming {
                node: 0,
                point: "raft::append_after_write_before_ack",
                skip: 120,
            }),
            // Two snapshots go through; the third dies before its rename.
            RegisterFault::CrashBeforeSnapshot => Some(Arming {
                node: 1,
                point: "raft::snapshot_before_rename",
                skip: 2,
            }),
            RegisterFault::CrashMidInstall => Some(Arming {
                node: 1,
                point: "raft::install_before_rename",
                skip: 0,
            }),
            RegisterFault::FullDisk => None,
        }
    }

    /// How the cluster must be built and started for this fault.
    pub fn cluster_options(self) -> ClusterOptions {
        let mut options = ClusterOptions {
            failpoints: self.arming().is_some(),
            failpoints_on: self.arming().map(|a| (a.node, a.failpoints())),
            ..ClusterOptions::default()
        };
        if matches!(
            self,
            RegisterFault::CrashBeforeSnapshot | RegisterFault::CrashMidInstall
        ) {
            options.extra_args = vec![
                "--snapshot-after-entries".into(),
                SNAPSHOT_AFTER_ENTRIES.to_string(),
                "--log-keep-after-snapshot".into(),
                LOG_KEEP_AFTER_SNAPSHOT.to_string(),
            ];
        }
        if self == RegisterFault::FullDisk {
            options.small_disk = Some((FULL_NODE, SMALL_DISK_BYTES));
        }
        options
    }

    /// The plan, for the log and a failure report.
    pub fn plan_text(self) -> String {
        match (self, self.arming()) {
            (RegisterFault::FullDisk, _) => format!(
                "n{}'s data dir on a {} MiB tmpfs; fill it for {}s under the workloads and proxy \
                 traffic through it; free it; it must catch up",
                FULL_NODE + 1,
                SMALL_DISK_BYTES >> 20,
                FULL_FOR.as_secs()
            ),
            (_, Some(a)) => format!(
                "FAILPOINTS={} on n{}{}; wait for it to fire (exit {CRASH_EXIT_CODE}); restart it \
                 without; it must catch up",
                a.failpoints(),
                a.node + 1,
                if self == RegisterFault::CrashMidInstall {
                    format!(
                        "; every node snapshots every {SNAPSHOT_AFTER_ENTRIES} entries, keeping \
                         {LOG_KEEP_AFTER_SNAPSHOT}; n2 paused for {}s first, so it needs a \
                         snapshot",
                        INSTALL_PAUSE.as_secs()
                    )
                } else if self == RegisterFault::CrashBeforeSnapshot {
                    format!(
                        "; every node snapshots every {SNAPSHOT_AFTER_ENTRIES} entries, keeping \
                         {LOG_KEEP_AFTER_SNAPSHOT}"
                    )
                } else {
                    String::new()
                }
            ),
            (_, None) => String::new(),
        }
    }
}

/// Plays `fault` while the register and set clients run (called by `scenario::drive` in place
/// of a nemesis schedule); leaves the cluster whole (every node running). Returns notes for
/// the outcome line.
pub async fn play(
    cluster: &mut Cluster,
    fault: RegisterFault,
    options: &RunOptions,
    outcome: &mut Outcome,
    clock: Clock,
) -> Result<Vec<String>> {
    let phase = |what: &str| {
        if options.verbose {
            eprintln!("chaos:   +{:.1}s {what}", clock.now() as f64 / 1e9);
        }
    };
    match (fault, fault.arming()) {
        (RegisterFault::FullDisk, _) => full_disk(cluster, options, outcome, clock).await,
        (_, Some(arming)) => {
            if fault == RegisterFault::CrashMidInstall {
                // Fall behind the leader's purged log: writes go on through the others.
                tokio::time::sleep(Duration::from_secs(1)).await;
                cluster.nodes[arming.node].pause()?;
                phase(&format!("paused n{}", arming.node + 1));
                tokio::time::sleep(INSTALL_PAUSE).await;
                cluster.nodes[arming.node].resume()?;
                phase(&format!("resumed n{}", arming.node + 1));
            }
            let crash = wait_for_crash(cluster, arming, FIRE_WITHIN).await?;
            let at = clock.now() as f64 / 1e9 - crash.at.elapsed().as_secs_f64();
            outcome.faults.push((at, crash.description(arming)));
            if options.verbose {
                eprintln!(
                    "chaos:   +{:.1}s {}",
                    clock.now() as f64 / 1e9,
                    crash.description(arming)
                );
            }
            tokio::time::sleep(DOWN_FOR).await;
            restart_disarmed(cluster, arming.node).await?;
            // Where the restarted node's state came from: its last published snapshot (the
            // one the crash did not replace) and the log after it. Its snapshot must cover
            // every entry its log no longer has, or it could not bring a follower that far.
            // (The status reads both from disk: openraft's metrics show the log purged past
            // the snapshot while the leader's next snapshot is being installed, which failed
            // this check once in CI with nothing missing on disk.)
            let restarted = cluster.status(arming.node, Duration::from_secs(2)).await;
            if let Some(s) = &restarted {
                if s.purged_index.unwrap_or(0) > s.snapshot_index.unwrap_or(0) {
                    outcome.problems.push(format!(
                        "n{} restarted with its log purged through {} but its snapshot only at \
                         {:?}: entries in between are in neither",
                        arming.node + 1,
                        s.purged_index.unwrap_or(0),
                        s.snapshot_index
                    ));
                }
            }
            let restarted_from = restarted.map(|s| s.snapshot_index);
            if fault == RegisterFault::CrashBeforeSnapshot
                && restarted_from.is_some_and(|s| s.unwrap_or(0) == 0)
            {
                outcome.problems.push(format!(
                    "n{} restarted without a snapshot, though {} were published before the crash",
                    arming.node + 1,
                    arming.skip
                ));
            }
            let (target, took) = wait_caught_up(cluster, arming.node).await?;
            Ok(vec![format!(
                "n{} restarted (snapshot at {}) and applied through the leader's index {target} \
                 in {:.1}s",
                arming.node + 1,
                match restarted_from {
                    Some(Some(index)) => index.to_string(),
                    Some(None) => "none".into(),
                    None => "?".into(),
                },
                took.as_secs_f64()
            )])
        }
        (_, None) => bail!("{fault:?} arms no crash point"),
    }
}

/// What the harness saw of a crash point firing.
#[derive(Debug)]
pub struct Crash {
    /// When the harness saw the process gone.
    pub at: Instant,
    /// The node's role in the last status it answered before.
    pub last_role: String,
}

impl Crash {
    pub fn description(&self, arming: Arming) -> String {
        format!(
            "{} fired on n{} ({}): exit {CRASH_EXIT_CODE}",
            arming.point,
            arming.node + 1,
            self.last_role.to_lowercase()
        )
    }
}

/// Waits (at most `within`) for `arming`'s node to exit at its crash point; fails if it exits
/// otherwise, or not at all. The process is reaped: `restart_disarmed` starts it again.
pub async fn wait_for_crash(
    cluster: &mut Cluster,
    arming: Arming,
    within: Duration,
) -> Result<Crash> {
    let deadline = Instant::now() + within;
    let mut last_role = String::from("unknown role");
    loop {
        let node = &mut cluster.nodes[arming.node];
        if let Some(status) = node.exited() {
            let at = Instant::now();
            let tail = node.log_tail(30);
            node.reap();
            let fired = format!("failpoint {} fired", arming.point);
            if status.code() != Some(CRASH_EXIT_CODE) || !tail.contains(&fired) {
                bail!(
                    "n{} exited with {status} without its crash point {} firing:\n{tail}",
                    arming.node + 1,
                    arming.point
                );
            }
            return Ok(Crash { at, last_role });
        }
        if Instant::now() > deadline {
            bail!(
                "crash point {} armed on n{} did not fire within {}s ({}): the workload never \
                 reached it, or the binary lacks the failpoints feature",
                arming.point,
                arming.node + 1,
                within.as_secs(),
                arming.failpoints()
            );
        }
        if let Some(s) = cluster
            .status(arming.node, Duration::from_millis(200))
            .await
        {
            last_role = s.role;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Restarts node `index` with its crash points cleared.
pub async fn restart_disarmed(cluster: &mut Cluster, index: usize) -> Result<()> {
    cluster.nodes[index].env.retain(|(k, _)| k != "FAILPOINTS");
    cluster
        .start_node(index)
        .await
        .with_context(|| format!("restart n{} without FAILPOINTS", index + 1))
}

/// Waits until node `index` has applied everything the leader had applied when the wait
/// began; returns that index and how long it took.
pub async fn wait_caught_up(cluster: &Cluster, index: usize) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let leader = cluster
        .wait_for_leader(CATCH_UP_WITHIN)
        .await
        .context("no leader to catch up with")?;
    let target = cluster
        .status(leader, Duration::from_secs(2))
        .await
        .and_then(|s| s.applied_index)
        .ok_or_else(|| {
            anyhow!(
                "the leader n{} says nothing of its applied index",
                leader + 1
            )
        })?;
    let mut seen = None;
    while started.elapsed() < CATCH_UP_WITHIN {
        seen = cluster
            .status(index, Duration::from_millis(500))
            .await
            .and_then(|s| s.applied_index);
        if seen.is_some_and(|a| a >= target) {
            return Ok((target, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "n{} did not catch up within {}s: applied {seen:?}, the leader n{} had applied {target}",
        index + 1,
        CATCH_UP_WITHIN.as_secs(),
        leader + 1
    )
}

// === The failpoints build ===

/// The konnect binary built with `--features failpoints`: `$KONNECT_FAILPOINTS_BIN`, else
/// `cargo build -p konnect --features failpoints` (under cargo) copied to
/// `target/<profile>/konnect-failpoints`, after which the default build is made again so
/// `target/<profile>/konnect` stays the binary without crash points (the two builds share the
/// target dir and every dependency; cargo keeps both, so switching only relinks the file).
/// Resolved once per process.
pub fn failpoints_konnect_source() -> Result<PathBuf> {
    static SOURCE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    SOURCE
        .get_or_init(|| build_failpoints().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_failpoints() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KONNECT_FAILPOINTS_BIN") {
        return Ok(PathBuf::from(path));
    }
    if std::env::var_os("CARGO").is_none() {
        bail!(
            "this scenario needs konnect built with crash points: set KONNECT_FAILPOINTS_BIN to \
             a binary from `cargo build -p konnect --features failpoints`, or run under cargo"
        );
    }
    let built = cluster::cargo_build_konnect(&["failpoints"])?;
    let copy = built.with_file_name("konnect-failpoints");
    std::fs::copy(&built, &copy)
        .with_context(|| format!("copy {} to {}", built.display(), copy.display()))?;
    cluster::cargo_build_konnect(&[]).context("rebuild konnect without failpoints")?;
    Ok(copy)
}

// === The small disk ===

/// A tmpfs mounted over a node's data dir for the length of a run; unmounted (lazily, so a
/// process still holding a file cannot keep it) when dropped, and on Ctrl-C.
#[derive(Debug)]
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` over `dir` (created). Needs root.
    pub fn mount(dir: &Path, bytes: u64) -> Result<SmallDisk> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("run mount")?;
        if !out.status.success() {
            bail!(
                "mount a {bytes}-byte tmpfs on {} (needs root): {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        net::register(Resource::Mount(dir.to_path_buf()));
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        unmount(&self.dir);
        net::unregister(&Resource::Mount(self.dir.clone()));
    }
}

/// `umount -l`: detaches the mount now even if a file on it is still open.
pub fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).output();
}

/// Fills the filesystem holding `dir` with `dir/ballast` until a write fails with ENOSPC;
/// returns the bytes written.
fn fill(dir: &Path) -> Result<u64> {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut size = chunk.len();
    loop {
        match file.write(&chunk[..size]) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if size == 1 {
                    break;
                }
                size = (size / 16).max(1);
            }
            Err(e) => return Err(e).with_context(|| format!("write {}", path.display())),
        }
    }
    Ok(written)
}

/// Bytes free on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

// === full-disk ===

/// The route the probe sends through the full node.
const PROBE_ROUTE: &str = "disk-probe";

/// One GET of `path` from `addr` on a new connection: the status and the body.
async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "chaos.test")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One GET through `proxy` on a new connection; the status.
async fn probe_once(proxy: &str, path: &str) -> Result<u16> {
    Ok(http_get(proxy, path).await?.0)
}

/// Counts of a probe's answers.
#[derive(Default)]
struct ProbeCounts {
    ok: AtomicU64,
    other: AtomicU64,
}

/// The full disk: see the module doc. Problems go into `outcome`; an `Err` is a failure to
/// carry the run through.
async fn full_disk(
    cluster: &mut Cluster,
    options: &RunOptions,
    outcome: &mut Outcome,
    clock: Clock,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let phase = |what: &str| {
        if options.verbose {
            eprintln!("chaos:   +{:.1}s {what}", clock.now() as f64 / 1e9);
        }
    };
    let dir = cluster
        .small_disk
        .as_ref()
        .map(|d| d.dir().to_path_buf())
        .ok_or_else(|| anyhow!("full-disk without a small disk"))?;
    let upstream_ip = match cluster.topology() {
        Some(t) => IpAddr::V4(t.host_ip()),
        None => IpAddr::from([127, 0, 0, 1]),
    };
    let upstream = Upstream::start(upstream_ip, HashMap::new()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster
        .client_of(leader)?
        .apply(service_and_route(PROBE_ROUTE, &upstream.url()), vec![])
        .await
        .context("apply the probe's Service and Route")?;
    let proxy = cluster.nodes[FULL_NODE].proxy_addr.clone();
    let path = format!("/{PROBE_ROUTE}/probe");
    let warm_until = Instant::now() + Duration::from_secs(15);
    loop {
        match probe_once(&proxy, &path).await {
            Ok(200) => break,
            last if Instant::now() > warm_until => {
                bail!(
                    "n{} does not proxy {path} within 15s: {last:?}",
                    FULL_NODE + 1
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let free_before = free_bytes(&dir)?;
    let filled_at = clock.now() as f64 / 1e9;
    let ballast = fill(&dir)?;
    let free_after = free_bytes(&dir)?;
    phase(&format!(
        "n{}'s disk full: {} MiB of ballast, {free_after} bytes left",
        FULL_NODE + 1,
        ballast >> 20
    ));
    let counts = Arc::new(ProbeCounts::default());
    let stop = Stop::default();
    let probe = {
        let (counts, stop, proxy, path) =
            (counts.clone(), stop.clone(), proxy.clone(), path.clone());
        tokio::spawn(async move {
            while !stop.is_set() {
                match tokio::time::timeout(Duration::from_secs(2), probe_once(&proxy, &path)).await
                {
                    Ok(Ok(200)) => counts.ok.fetch_add(1, Ordering::SeqCst),
                    _ => counts.other.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let full_until = Instant::now() + FULL_FOR;
    let mut exited = None;
    while Instant::now() < full_until {
        if exited.is_none() {
            if let Some(status) = cluster.nodes[FULL_NODE].exited() {
                exited = Some(status);
                phase(&format!(
                    "n{} exited with {status} on the full disk",
                    FULL_NODE + 1
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.stop();
    probe.await.context("the proxy probe panicked")?;
    let (ok, other) = (
        counts.ok.load(Ordering::SeqCst),
        counts.other.load(Ordering::SeqCst),
    );
    // What the node says of itself while full (it must not be ready if Raft stopped).
    let readyz = match exited {
        None => http_get(&cluster.nodes[FULL_NODE].status_addr, "/readyz")
            .await
            .map(|(status, body)| format!("{status} {}", body.trim()))
            .unwrap_or_else(|e| format!("no answer: {e:#}")),
        Some(_) => "not running".into(),
    };
    let full_log = cluster.nodes[FULL_NODE].log_tail(400);
    std::fs::remove_file(dir.join("ballast")).context("delete the ballast")?;
    let freed = Instant::now();
    phase(&format!(
        "ballast deleted; the probe through n{} got {ok} 200s and {other} other answers; \
         /readyz said {readyz}",
        FULL_NODE + 1
    ));
    outcome.faults.push((
        filled_at,
        format!(
            "fill n{}'s disk ({} MiB free of {} MiB) for {}s",
            FULL_NODE + 1,
            free_before >> 20,
            SMALL_DISK_BYTES >> 20,
            FULL_FOR.as_secs()
        ),
    ));
    if !full_log.contains("No space left on device") {
        outcome.problems.push(format!(
            "n{}'s log does not say its disk is full (\"No space left on device\")",
            FULL_NODE + 1
        ));
    }
    if let Some(status) = exited {
        outcome.problems.push(format!(
            "n{} exited with {status} while its disk was full: it must keep proxying",
            FULL_NODE + 1
        ));
        cluster.nodes[FULL_NODE].reap();
        cluster
            .start_node(FULL_NODE)
            .await
            .with_context(|| format!("restart n{} on the freed disk", FULL_NODE + 1))?;
    } else {
        if ok == 0 || other > 0 {
            outcome.problems.push(format!(
                "n{}'s proxy answered {ok} probes with 200 and {other} otherwise while its disk \
                 was full: it must keep proxying",
                FULL_NODE + 1
            ));
        }
        notes.push(format!(
            "n{} kept proxying on the full disk ({ok} of {} probes 200), /readyz {readyz}",
            FULL_NODE + 1,
            ok + other
        ));
        // Raft stopped on the full disk: the node must exit by itself once space is back, for
        // its supervisor (here, the harness) to restart it (node/src/node.rs).
        if readyz.contains("Raft stopped") {
            let status = loop {
                if let Some(status) = cluster.nodes[FULL_NODE].exited() {
                    break status;
                }
                if freed.elapsed() > EXIT_AFTER_FREED_WITHIN {
                    bail!(
                        "n{}'s Raft stopped on the full disk and the node did not exit within \
                         {}s of the disk being freed: it would never rejoin",
                        FULL_NODE + 1,
                        EXIT_AFTER_FREED_WITHIN.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let exited_after = freed.elapsed();
            let log = cluster.nodes[FULL_NODE].log_tail(40);
            if status.success() || !log.contains("exiting so that a restart rejoins") {
                outcome.problems.push(format!(
                    "n{} exited with {status} after the disk was freed, without saying it \
                     exits to rejoin:\n{log}",
                    FULL_NODE + 1
                ));
            }
            cluster.nodes[FULL_NODE].reap();
            cluster
                .start_node(FULL_NODE)
                .await
                .with_context(|| format!("restart n{} on the freed disk", FULL_NODE + 1))?;
            notes.push(format!(
                "it exited ({status}) {:.1}s after the disk was freed and was restarted",
                exited_after.as_secs_f64()
            ));
        }
    }
    let (target, took) = wait_caught_up(cluster, FULL_NODE).await?;
    notes.push(format!(
        "n{} applied through the leader's index {target} {:.1}s after the disk was freed",
        FULL_NODE + 1,
        took.as_secs_f64()
    ));
    Ok(notes)
}

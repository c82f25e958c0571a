//! Crash points for the chaos tests (issue 8): named places in the node where a test can make
//! the process die at the worst moment, compiled in only with the `failpoints` cargo feature
//! (tikv's fail-rs). The released binary (default features) has none: `crash_point!` expands
//! to nothing and `FAILPOINTS` is ignored with a warning.
//!
//! A failpoints build arms points at start from the environment, in fail-rs's syntax:
//! `FAILPOINTS='raft::append_after_write_before_ack=1*return'`. Actions the chaos harness uses:
//! `return` (the point's own action: the process exits at once with [`CRASH_EXIT_CODE`], no
//! shutdown, no destructors, after one line on stderr naming the point) and `panic` (a panic at
//! the point, which the hook installed by [`arm_from_env`] turns into the same exit: a panic in
//! a tokio task would otherwise kill only that task). fail-rs's other actions (`sleep`,
//! `pause`, `print`, probabilities `20%return`, counts `3*return`) work as documented there.
//!
//! The points (what crashing there tests):
//! - `raft::append_after_write_before_ack` (`raft/log_store.rs`, `append`): the entries are
//!   committed (fsync'd) to the Raft log, openraft has not been told. The node must restart
//!   with them, and an entry it never acknowledged may still be committed by the cluster.
//! - `raft::snapshot_before_rename` (`raft/state_machine.rs`, `Shared::publish`, reached when
//!   a snapshot is built and when one received from the leader is installed): the new snapshot
//!   file is complete and fsync'd as `*.tmp`, not yet renamed over `snapshots/current.snap`.
//!   The node must restart from the previous snapshot and its log, and leave no half state.
//! - `raft::install_before_rename` (`raft/state_machine.rs`, `Shared::install`): a snapshot
//!   received from the leader has replaced the state (committed) and its copy is complete as
//!   `install-*.tmp`, not yet renamed over `current.snap`. The restarted node's state is the
//!   snapshot's while openraft purges its log up to it: its current snapshot must cover that.
//! - `ledger::ship_mid_batch` (`ledger.rs`, `ship_usage`): a batch of usage records has been
//!   committed to Raft as one `ShipUsage` entry and the shipper has not yet moved its cursor
//!   or released the WAL. After the restart the records are still in the WAL and are shipped
//!   again: the state machine must count each exactly once.
//!
//! Invariant: every name armed must be one of [`POINTS`]; an unknown name (a typo) stops the
//! node at start with an error instead of silently never firing.

/// Exit status of a process stopped by a crash point, so a harness can tell it from any
/// other death.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Every crash point compiled into a failpoints build.
pub const POINTS: &[&str] = &[
    "raft::append_after_write_before_ack",
    "raft::snapshot_before_rename",
    "raft::install_before_rename",
    "ledger::ship_mid_batch",
];

/// Marks a crash point: with the `failpoints` feature, a fail-rs point named `$name` whose
/// `return` action ends the process (see the module doc); without it, nothing.
macro_rules! crash_point {
    ($name:literal) => {
        // The closure's type is the enclosing function's result, large or not.
        #[cfg(feature = "failpoints")]
        #[allow(clippy::result_large_err)]
        {
            fail::fail_point!($name, |_| $crate::failpoints::crash($name));
        }
    };
}
pub(crate) use crash_point;

/// Ends the process at crash point `name`: one line on stderr, then `exit` (no unwinding, no
/// destructors, no flush beyond what is already written: like kill -9 for the files).
#[cfg(feature = "failpoints")]
pub fn crash(name: &str) -> ! {
    eprintln!("failpoint {name} fired: exiting with status {CRASH_EXIT_CODE}");
    std::process::exit(CRASH_EXIT_CODE)
}

/// Arms the crash points named in `FAILPOINTS` (failpoints builds; the names armed are
/// returned for the log), or, in a build without them, says that the variable is ignored.
/// Errors name the bad entry.
pub fn arm_from_env() -> Result<Vec<String>, String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(Vec::new());
    };
    if spec.trim().is_empty() {
        return Ok(Vec::new());
    }
    arm(&spec)
}

#[cfg(not(feature = "failpoints"))]
fn arm(_spec: &str) -> Result<Vec<String>, String> {
    eprintln!(
        "warning: FAILPOINTS is set but this konnect was built without the `failpoints` \
         feature: ignored"
    );
    Ok(Vec::new())
}

#[cfg(feature = "failpoints")]
fn arm(spec: &str) -> Result<Vec<String>, String> {
    let mut armed = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            return Err(format!(
                "FAILPOINTS: {entry:?} is not `name=actions` (e.g. \
                 raft::append_after_write_before_ack=return)"
            ));
        };
        let name = name.trim();
        if !POINTS.contains(&name) {
            return Err(format!(
                "FAILPOINTS: no crash point named {name:?}; known: {}",
                POINTS.join(", ")
            ));
        }
        fail::cfg(name, actions.trim())
            .map_err(|e| format!("FAILPOINTS: {name}={actions}: {e}"))?;
        armed.push(format!("{name}={}", actions.trim()));
    }
    // fail-rs's `panic` action panics with "failpoint NAME panic"; in a task or a blocking
    // thread that would end only the task. Make it the same crash as `return`.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(name) = message
            .strip_prefix("failpoint ")
            .and_then(|m| m.strip_suffix(" panic"))
            .filter(|n| POINTS.contains(n))
        {
            crash(name);
        }
        default_hook(info);
    }));
    Ok(armed)
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_bad_actions_are_refused_naming_them() {
        let e = arm("raft::no_such_point=return").unwrap_err();
        assert!(
            e.contains("raft::no_such_point") && e.contains("known:"),
            "{e}"
        );
        let e = arm("raft::snapshot_before_rename").unwrap_err();
        assert!(e.contains("name=actions"), "{e}");
        let e = arm("raft::snapshot_before_rename=explode").unwrap_err();
        assert!(e.contains("explode"), "{e}");
    }
}

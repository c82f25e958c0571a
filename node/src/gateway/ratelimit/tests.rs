//! Unit tests of admission from local units. The grant answers come from a small stand-in for
//! the state machine's rule (never more than the limit per window); the real one is tested in
//! `raft/apply.rs` and end to end in `node/tests/rate_limits.rs`.

use super::*;
use serde_json::json;

fn spec(v: serde_json::Value) -> RateLimitSpec {
    RateLimitSpec::parse(&v).unwrap()
}

#[tokio::test]
async fn local_limits_count_per_window_on_the_node_clock() {
    let (rl, _asks) = RateLimiter::new();
    let s = spec(
        json!({"applies_to": {"global": true}, "key": "ip", "limit": 3, "window": "10s", "mode": "local"}),
    );
    for _ in 0..3 {
        assert!(rl.admit("l", &s, "1.2.3.4", || 21_000).await.is_ok());
    }
    let refused = rl.admit("l", &s, "1.2.3.4", || 21_000).await.unwrap_err();
    assert_eq!(refused.retry_after_s, 9);
    assert_eq!(refused.verdict.remaining, 0);
    // Another key has its own count; the next window starts afresh.
    assert!(rl.admit("l", &s, "5.6.7.8", || 21_000).await.is_ok());
    assert!(rl.admit("l", &s, "1.2.3.4", || 30_000).await.is_ok());
}

/// Answers asks like the state machine: at most `limit` per window of leader time `now`.
async fn serve_grants(mut asks: mpsc::UnboundedReceiver<Ask>, limit: u64, now: u64) {
    let mut used = 0;
    while let Some(ask) = asks.recv().await {
        let granted = ask.units.min(limit - used);
        used += granted;
        ask.allocation.granted(
            Granted {
                granted,
                window_end_ms: now - now % 10_000 + 10_000,
                used,
                refused: false,
            },
            now,
        );
    }
}

#[tokio::test]
async fn strict_limits_admit_exactly_what_was_granted() {
    let (rl, asks) = RateLimiter::new();
    tokio::spawn(serve_grants(asks, 50, 21_000));
    let s = spec(json!({"applies_to": {"global": true}, "limit": 50, "window": "10s"}));
    let mut admitted = 0;
    let mut last = None;
    for _ in 0..80 {
        match rl.admit("s", &s, "alice", || 21_000).await {
            Ok(_) => admitted += 1,
            Err(r) => last = Some(r),
        }
    }
    assert_eq!(admitted, 50, "all of the limit is usable, none beyond it");
    let refused = last.expect("refusals");
    assert_eq!(refused.retry_after_s, 9, "until the window ends");
}

#[tokio::test]
async fn without_grants_strict_limits_follow_on_quorum_loss() {
    for (policy, expect_admitted) in [("fail_closed", 0), ("fail_open", 10), ("local_fallback", 5)]
    {
        let (rl, mut asks) = RateLimiter::new();
        rl.cluster_size.store(2, Ordering::Relaxed);
        // Every ask fails, as when no leader can be reached, and has for longer than an
        // election takes.
        tokio::spawn(async move {
            while let Some(ask) = asks.recv().await {
                ask.allocation.ask_failed(21_000 - QUORUM_LOSS_AFTER_MS);
                ask.allocation.ask_failed(21_000);
            }
        });
        let s = spec(
            json!({"applies_to": {"global": true}, "limit": 10, "window": "10s", "on_quorum_loss": policy}),
        );
        let mut admitted = 0;
        for _ in 0..10 {
            if rl.admit("s", &s, "k", || 21_000).await.is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, expect_admitted, "{policy}");
    }
}

#[tokio::test]
async fn a_short_outage_such_as_an_election_refuses_instead_of_falling_back() {
    let (rl, mut asks) = RateLimiter::new();
    tokio::spawn(async move {
        while let Some(ask) = asks.recv().await {
            ask.allocation.ask_failed(21_000);
        }
    });
    let s = spec(
        json!({"applies_to": {"global": true}, "limit": 10, "window": "10s", "on_quorum_loss": "fail_open"}),
    );
    for _ in 0..3 {
        assert!(rl.admit("s", &s, "k", || 21_000).await.is_err());
    }
}

#[tokio::test]
async fn idle_keys_are_swept_and_hold_nothing() {
    let (rl, asks) = RateLimiter::new();
    tokio::spawn(serve_grants(asks, 1_000, 21_000));
    let s = spec(json!({"applies_to": {"global": true}, "limit": 1000, "window": "10s"}));
    for i in 0..100 {
        let _ = rl.admit("s", &s, &format!("k{i}"), || 21_000).await;
    }
    assert_eq!(rl.len(), 100);
    rl.sweep(45_000);
    assert_eq!(rl.len(), 0);
}

/// Many requests at once while grants arrive and windows turn over: per window, never more
/// admitted than granted (the race a decrement-then-undo would lose).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admissions_never_use_more_units_than_were_granted() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let (rl, mut asks) = RateLimiter::new();
    let clock = Arc::new(AtomicU64::new(20_000));
    let granted_per_window: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    {
        let (clock, granted) = (clock.clone(), granted_per_window.clone());
        tokio::spawn(async move {
            while let Some(ask) = asks.recv().await {
                let now = clock.fetch_add(7, Ordering::SeqCst);
                let end = now - now % 1_000 + 1_000;
                let units = ask.units.min(5);
                *granted.lock().unwrap().entry(end).or_default() += units;
                ask.allocation.granted(
                    Granted {
                        granted: units,
                        window_end_ms: end,
                        used: 0,
                        refused: false,
                    },
                    now,
                );
            }
        });
    }
    let s = spec(json!({"applies_to": {"global": true}, "limit": 1000000, "window": "1s"}));
    let admitted: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (rl, s, clock, admitted) = (rl.clone(), s.clone(), clock.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..2_000 {
                let c = clock.clone();
                if let Ok(v) = rl
                    .admit("s", &s, "k", move || c.fetch_add(1, Ordering::SeqCst))
                    .await
                {
                    *admitted.lock().unwrap().entry(v.window_end_ms).or_default() += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let granted = granted_per_window.lock().unwrap();
    let admitted = admitted.lock().unwrap();
    assert!(admitted.values().sum::<u64>() > 0);
    for (window, n) in admitted.iter() {
        let g = granted.get(window).copied().unwrap_or(0);
        assert!(*n <= g, "window ending {window}: {n} admitted, {g} granted");
    }
}

#[tokio::test]
async fn fast_limits_admit_on_credit_and_repay_it_from_grants() {
    // No answer yet: a fast limit admits `borrow` requests at once, then waits like strict.
    let (rl, _held) = RateLimiter::new();
    let s = spec(
        json!({"applies_to": {"global": true}, "limit": 50, "window": "10s", "mode": "fast", "borrow": 5}),
    );
    let started = tokio::time::Instant::now();
    let mut admitted = 0;
    for _ in 0..6 {
        if rl.admit("f", &s, "k", || 21_000).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "exactly the credit, without grants");
    assert!(
        started.elapsed() >= STRICT_WAIT,
        "the sixth waited for a grant"
    );

    // With grants flowing, the credit is repaid: one node admits exactly the limit.
    let (rl, asks) = RateLimiter::new();
    tokio::spawn(serve_grants(asks, 50, 21_000));
    let mut admitted = 0;
    for _ in 0..80 {
        if rl.admit("f", &s, "k", || 21_000).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 50);
}

#[test]
fn leader_time_is_learnt_from_grants_and_never_underestimated() {
    let (rl, _asks) = RateLimiter::new();
    assert_eq!(rl.leader_now(1_000), 1_000);
    // An ask sent at local 10_000 was granted at leader time 40_050: the leader's clock is at
    // most 30_050 ahead (the ask took some of those 50 ms to arrive).
    rl.learn_leader_time(40_050, 10_000);
    assert_eq!(rl.leader_now(10_100), 40_150);
    // A clock ahead of the leader's: the offset is negative.
    rl.learn_leader_time(10_000, 40_000);
    assert_eq!(rl.leader_now(40_500), 10_500);
}

#[tokio::test]
async fn without_quorum_a_node_keeps_following_on_quorum_loss_across_sweeps() {
    let (rl, mut asks) = RateLimiter::new();
    // Every ask fails, answered here in step with the test's clock.
    let mut fail_asks = |now: u64| {
        while let Ok(ask) = asks.try_recv() {
            ask.allocation.ask_failed(now);
        }
    };
    let s = spec(
        json!({"applies_to": {"global": true}, "limit": 10, "window": "10s", "on_quorum_loss": "fail_open"}),
    );
    assert!(
        rl.admit("s", &s, "k", || 15_000).await.is_err(),
        "no grant: refused"
    );
    fail_asks(15_000);
    assert!(
        rl.admit("s", &s, "k", || 21_000).await.is_ok(),
        "failing for 6 s: falls back"
    );
    fail_asks(21_000);
    // A sweep long after the window keeps the failing allocation: dropping it would forget
    // since when asks fail, and the node would refuse for another 5 s each time.
    rl.sweep(60_000);
    assert_eq!(rl.len(), 1);
    assert!(
        rl.admit("s", &s, "k", || 60_000).await.is_ok(),
        "still falling back"
    );
}

//! Tests of active health checking: the threshold counting on its own, then the checker task
//! against real local HTTP servers that can be switched between 200, 500, never answering and
//! not listening at all. The socket tests use short real intervals and wait for the state a
//! user would observe with a polling deadline; they never sleep as synchronisation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU16;
use std::sync::Mutex;
use std::time::Instant as StdInstant;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;

// === helpers ===

/// What a test server answers: an HTTP status, or `HANG` to never answer.
const HANG: u16 = 0;

/// A local HTTP server whose answer can be switched while it runs.
struct TestServer {
    addr: SocketAddr,
    answer: Arc<AtomicU16>,
    /// (path and query, Host header, status answered) per request, in order.
    seen: Arc<Mutex<Vec<(String, String, u16)>>>,
    accept: JoinHandle<()>,
}

impl TestServer {
    async fn start(answer: u16) -> TestServer {
        TestServer::start_on("127.0.0.1:0".parse().unwrap(), answer).await
    }

    async fn start_on(addr: SocketAddr, answer: u16) -> TestServer {
        TestServer::start_speaking(addr, answer, false).await
    }

    /// A server that speaks HTTP/2 only (h2c, prior knowledge), like a gRPC backend.
    async fn start_h2_only(answer: u16) -> TestServer {
        TestServer::start_speaking("127.0.0.1:0".parse().unwrap(), answer, true).await
    }

    async fn start_speaking(addr: SocketAddr, answer: u16, h2_only: bool) -> TestServer {
        let listener = TcpListener::bind(addr).await.expect("bind the test server");
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(AtomicU16::new(answer));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (answer.clone(), seen.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (a, s) = (a.clone(), s.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (a, s) = (a.clone(), s.clone());
                    async move {
                        let status = a.load(Ordering::SeqCst);
                        let host = req
                            .headers()
                            .get(HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        s.lock().unwrap().push((path, host, status));
                        if status == HANG {
                            std::future::pending::<()>().await;
                        }
                        let mut resp = Response::new(Empty::<Bytes>::new());
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let _ = if h2_only {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                    };
                });
            }
        });
        TestServer {
            addr,
            answer,
            seen,
            accept,
        }
    }

    fn answer(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Requests answered with `status` from the `from`th request on.
    fn answered(&self, status: u16, from: usize) -> usize {
        self.seen.lock().unwrap()[from..]
            .iter()
            .filter(|r| r.2 == status)
            .count()
    }

    /// Stops listening (connections are refused from now on); returns the freed address.
    async fn stop(self) -> SocketAddr {
        self.accept.abort();
        let _ = self.accept.await;
        self.addr
    }

    fn target(&self, base_path: &str) -> TargetUrl {
        TargetUrl::parse(&format!("http://{}{base_path}", self.addr)).unwrap()
    }
}

fn fast_spec(healthy_threshold: u32, unhealthy_threshold: u32) -> ActiveHealthSpec {
    ActiveHealthSpec {
        path: "/healthz".into(),
        // Short for a quick test, yet a timeout long enough that a busy CI machine does not
        // fail probes of a healthy local server.
        interval: Dur(Duration::from_millis(100)),
        timeout: Dur(Duration::from_millis(90)),
        healthy_threshold,
        unhealthy_threshold,
        expected_statuses: Vec::new(),
    }
}

/// Polls `cond` until it holds, failing the test after 10s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = StdInstant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            StdInstant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Drops the state and checks the checker task ends by itself soon after.
async fn assert_task_ends(state: Arc<HealthState>, task: JoinHandle<()>) {
    drop(state);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the checker ended after its HealthState was dropped")
        .expect("the checker did not panic");
}

// === thresholds ===

#[test]
fn verdicts_flip_only_after_consecutive_thresholds() {
    let spec = ActiveHealthSpec {
        healthy_threshold: 2,
        unhealthy_threshold: 3,
        ..ActiveHealthSpec::default()
    };
    let state = HealthState::new(2);
    assert!(
        state.is_healthy(0) && state.is_healthy(1),
        "targets start healthy"
    );
    assert_eq!(state.observe(0, false, &spec), None);
    assert_eq!(state.observe(0, false, &spec), None);
    // A success in between restarts the count.
    assert_eq!(state.observe(0, true, &spec), None);
    assert_eq!(state.observe(0, false, &spec), None);
    assert_eq!(state.observe(0, false, &spec), None);
    assert!(state.is_healthy(0));
    assert_eq!(state.observe(0, false, &spec), Some(false));
    assert!(!state.is_healthy(0));
    assert!(state.is_healthy(1), "other targets are unaffected");
    assert_eq!(state.observe(0, false, &spec), None, "no second transition");
    assert_eq!(state.observe(0, true, &spec), None);
    assert_eq!(state.observe(0, false, &spec), None);
    assert_eq!(state.observe(0, true, &spec), None);
    assert_eq!(state.observe(0, true, &spec), Some(true));
    assert!(state.is_healthy(0));
    assert!(
        state.is_healthy(7),
        "an unknown index is not checked, so healthy"
    );
}

// === the checker against real servers ===

#[tokio::test]
async fn a_failing_target_turns_unhealthy_after_the_threshold_and_recovers() {
    let server = TestServer::start(200).await;
    let state = HealthState::new(1);
    let spec = ActiveHealthSpec {
        path: "/healthz?deep=1".into(),
        ..fast_spec(2, 3)
    };
    let task = spawn_active_checks(
        "billing".into(),
        vec![server.target("/base")],
        spec,
        Arc::downgrade(&state),
        ProbeTransport::default(),
    );

    eventually("the first probe arrives", || server.requests() > 0).await;
    let (path, host, _) = server.seen.lock().unwrap()[0].clone();
    assert_eq!(
        path, "/base/healthz?deep=1",
        "probe path = base path + path"
    );
    assert_eq!(
        host,
        server.addr.to_string(),
        "Host is the target authority"
    );
    assert!(state.is_healthy(0));

    let from = server.requests();
    server.answer(500);
    eventually("the target is unhealthy", || !state.is_healthy(0)).await;
    assert!(
        server.answered(500, from) >= 3,
        "unhealthy only after 3 failed probes"
    );

    let from = server.requests();
    server.answer(204);
    eventually("the target is healthy again", || state.is_healthy(0)).await;
    assert!(
        server.answered(204, from) >= 2,
        "healthy only after 2 good probes"
    );

    assert_task_ends(state, task).await;
}

#[tokio::test]
async fn closed_ports_and_silent_targets_turn_unhealthy_while_others_stay_healthy() {
    let up = TestServer::start(200).await;
    let silent = TestServer::start(HANG).await;
    let closed = TestServer::start(200).await;
    let closed_addr = closed.stop().await;
    let closed_target = TargetUrl::parse(&format!("http://{closed_addr}")).unwrap();
    let state = HealthState::new(3);
    let task = spawn_active_checks(
        "billing".into(),
        vec![up.target(""), closed_target, silent.target("")],
        fast_spec(2, 2),
        Arc::downgrade(&state),
        ProbeTransport::default(),
    );

    let mut up_stayed_healthy = true;
    eventually(
        "the closed port and the silent target are unhealthy",
        || {
            up_stayed_healthy &= state.is_healthy(0);
            !state.is_healthy(1) && !state.is_healthy(2)
        },
    )
    .await;
    assert!(up_stayed_healthy && state.is_healthy(0));

    // Something listens on the closed port again: it recovers.
    let reopened = TestServer::start_on(closed_addr, 200).await;
    eventually("the reopened target is healthy", || state.is_healthy(1)).await;
    assert!(reopened.requests() >= 2);
    assert!(!state.is_healthy(2), "the silent target stays unhealthy");

    assert_task_ends(state, task).await;
}

#[tokio::test]
async fn the_checker_ends_when_its_health_state_is_dropped_even_mid_probe() {
    let silent = TestServer::start(HANG).await;
    let state = HealthState::new(1);
    let task = spawn_active_checks(
        "billing".into(),
        vec![silent.target("")],
        fast_spec(1, 1),
        Arc::downgrade(&state),
        ProbeTransport::default(),
    );
    eventually("a probe is in flight", || silent.requests() > 0).await;
    assert_task_ends(state, task).await;
}

#[tokio::test]
async fn an_http2_service_is_probed_over_http2() {
    let server = TestServer::start_h2_only(200).await;
    let target = || vec![server.target("")];
    // Over HTTP/2, as the Service's traffic goes, the target is healthy...
    let h2 = HealthState::new(1);
    let task = spawn_active_checks(
        "grpc".into(),
        target(),
        fast_spec(1, 1),
        Arc::downgrade(&h2),
        ProbeTransport {
            tls: None,
            protocol: UpstreamProtocol::Http2,
        },
    );
    // Three probes arrived, so at least two were answered and judged (one failure would do).
    eventually("HTTP/2 probes answered", || server.requests() >= 3).await;
    assert!(h2.is_healthy(0));
    assert_task_ends(h2, task).await;
    // ...while an HTTP/1.1 probe of the same target fails: it would have ejected a target
    // that serves every real request.
    let h1 = HealthState::new(1);
    let task = spawn_active_checks(
        "grpc".into(),
        target(),
        fast_spec(1, 1),
        Arc::downgrade(&h1),
        ProbeTransport::default(),
    );
    eventually("an HTTP/1.1 probe fails", || !h1.is_healthy(0)).await;
    assert_task_ends(h1, task).await;
}

#[tokio::test]
async fn a_checker_whose_state_is_already_gone_ends_without_probing() {
    let server = TestServer::start(200).await;
    let state = HealthState::new(1);
    let weak = Arc::downgrade(&state);
    drop(state);
    let task = spawn_active_checks(
        "billing".into(),
        vec![server.target("")],
        fast_spec(1, 1),
        weak,
        ProbeTransport::default(),
    );
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the checker ended")
        .expect("the checker did not panic");
    assert_eq!(server.requests(), 0);
}

// === spec ===

#[test]
fn an_empty_spec_takes_the_documented_defaults() {
    let s: ActiveHealthSpec = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(s, ActiveHealthSpec::default());
    assert_eq!(s.path, "/");
    assert_eq!(s.interval.0, Duration::from_secs(5));
    assert_eq!(s.timeout.0, Duration::from_secs(1));
    assert_eq!((s.healthy_threshold, s.unhealthy_threshold), (2, 3));
    assert!(s.validate("spec.health_check.active").is_ok());
    assert!(s.is_expected(200) && s.is_expected(302) && s.is_expected(399));
    assert!(!s.is_expected(199) && !s.is_expected(404) && !s.is_expected(500));
    let s: ActiveHealthSpec = serde_json::from_value(serde_json::json!({
        "path": "/ready", "interval": "2s", "timeout": "250ms", "expected_statuses": [200, 418]
    }))
    .unwrap();
    assert!(s.is_expected(418) && !s.is_expected(204));
    assert!(s.validate("spec.health_check.active").is_ok());
    assert!(
        serde_json::from_value::<ActiveHealthSpec>(serde_json::json!({"intervall": "1s"})).is_err()
    );
}

#[test]
fn validation_names_the_field_that_is_wrong() {
    let check = |s: ActiveHealthSpec| s.validate("spec.health_check.active").unwrap_err().field;
    let base = ActiveHealthSpec::default;
    let ms = |n| Dur(Duration::from_millis(n));
    for path in ["", "healthz", "/a b"] {
        assert_eq!(
            check(ActiveHealthSpec {
                path: path.into(),
                ..base()
            }),
            "spec.health_check.active.path",
            "{path:?}"
        );
    }
    assert_eq!(
        check(ActiveHealthSpec {
            interval: ms(99),
            timeout: ms(50),
            ..base()
        }),
        "spec.health_check.active.interval"
    );
    for timeout in [0, 5_000, 6_000] {
        assert_eq!(
            check(ActiveHealthSpec {
                timeout: ms(timeout),
                ..base()
            }),
            "spec.health_check.active.timeout",
            "{timeout}ms"
        );
    }
    assert_eq!(
        check(ActiveHealthSpec {
            healthy_threshold: 0,
            ..base()
        }),
        "spec.health_check.active.healthy_threshold"
    );
    assert_eq!(
        check(ActiveHealthSpec {
            unhealthy_threshold: 0,
            ..base()
        }),
        "spec.health_check.active.unhealthy_threshold"
    );
    assert_eq!(
        check(ActiveHealthSpec {
            expected_statuses: vec![200, 99],
            ..base()
        }),
        "spec.health_check.active.expected_statuses[1]"
    );
}

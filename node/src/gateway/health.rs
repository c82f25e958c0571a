//! Active health checks of a Service: a background task sends `GET path` to every target each
//! `interval` (over the Service's own transport: TLS settings, HTTP/1.1 or HTTP/2) and marks a target unhealthy after `unhealthy_threshold` failed probes in a row,
//! healthy again after `healthy_threshold` good ones. The balancer reads the verdicts through
//! `HealthState::is_healthy`, one atomic load per target.
//!
//! Lifetime: the task holds only a `Weak<HealthState>`; the `Upstream` owns the `Arc`. When a
//! config change drops the Upstream, the task's next `upgrade` fails and it ends by itself, so
//! no checker outlives its config snapshot.

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{HeaderValue, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::error::error_chain;
use crate::resources::duration::{secs, Dur};
use crate::resources::service::{TargetUrl, UpstreamProtocol, UpstreamTls};
use crate::resources::SpecError;

// === spec ===

/// `spec.health_check.active` of a Service: probe every target with `GET path`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthSpec {
    /// Path (optionally with a query) requested on each target, after the target's base path;
    /// must start with '/'. Default "/".
    #[serde(default = "default_path")]
    pub path: String,
    /// Time between two probes of a target; at least 100ms. Default 5s.
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// A probe (connect included) that has no response headers by then fails; shorter than
    /// `interval`. Default 1s.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Successful probes in a row that make an unhealthy target healthy again; at least 1.
    /// Default 2.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failed probes in a row that make a healthy target unhealthy; at least 1. Default 3.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Status codes that count as success. Default (empty): 200-399.
    #[serde(default)]
    pub expected_statuses: Vec<u16>,
}

fn default_path() -> String {
    "/".to_string()
}
fn default_interval() -> Dur {
    secs(5)
}
fn default_timeout() -> Dur {
    secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

impl Default for ActiveHealthSpec {
    fn default() -> ActiveHealthSpec {
        ActiveHealthSpec {
            path: default_path(),
            interval: default_interval(),
            timeout: default_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
            expected_statuses: Vec::new(),
        }
    }
}

/// Probing more often than this only adds load.
const MIN_INTERVAL: Dur = Dur(Duration::from_millis(100));

impl ActiveHealthSpec {
    /// Checks the values serde cannot; `field_prefix` is where the spec sits, e.g.
    /// `spec.health_check.active`.
    pub fn validate(&self, field_prefix: &str) -> Result<(), SpecError> {
        let field = |name: &str| format!("{field_prefix}.{name}");
        if !self.path.starts_with('/')
            || self.path.parse::<hyper::http::uri::PathAndQuery>().is_err()
        {
            return Err(SpecError::new(
                field("path"),
                format!("{:?} is not a path: write it like /healthz", self.path),
            ));
        }
        if self.interval < MIN_INTERVAL {
            return Err(SpecError::new(
                field("interval"),
                format!("{:?} is too short: use at least 100ms", self.interval.0),
            ));
        }
        if self.timeout.0.is_zero() || self.timeout >= self.interval {
            return Err(SpecError::new(
                field("timeout"),
                format!(
                    "{:?} must be longer than 0s and shorter than the interval ({:?})",
                    self.timeout.0, self.interval.0
                ),
            ));
        }
        if self.healthy_threshold == 0 {
            return Err(SpecError::new(
                field("healthy_threshold"),
                "must be at least 1",
            ));
        }
        if self.unhealthy_threshold == 0 {
            return Err(SpecError::new(
                field("unhealthy_threshold"),
                "must be at least 1",
            ));
        }
        if let Some((i, s)) = self
            .expected_statuses
            .iter()
            .enumerate()
            .find(|(_, s)| !(100..=599).contains(*s))
        {
            return Err(SpecError::new(
                format!("{field_prefix}.expected_statuses[{i}]"),
                format!("{s} is not an HTTP status code (100-599)"),
            ));
        }
        Ok(())
    }

    /// Whether a probe answered with `status` succeeded.
    pub fn is_expected(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            (200..=399).contains(&status)
        } else {
            self.expected_statuses.contains(&status)
        }
    }
}

// === impl HealthState ===

/// The active-check verdict for each target of one Upstream, by target index.
#[derive(Debug)]
pub struct HealthState {
    targets: Box<[TargetHealth]>,
}

#[derive(Debug)]
struct TargetHealth {
    healthy: AtomicBool,
    /// Probes in a row that succeeded (reset by a failure), and the other way round. Written
    /// only by the checker task; atomics so the state can be shared.
    successes: AtomicU32,
    failures: AtomicU32,
}

impl HealthState {
    /// Every target starts healthy: a new Service gets traffic before its first probe ends.
    pub fn new(targets: usize) -> Arc<HealthState> {
        Arc::new(HealthState {
            targets: (0..targets)
                .map(|_| TargetHealth {
                    healthy: AtomicBool::new(true),
                    successes: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                })
                .collect(),
        })
    }

    /// Whether target `i` passes its active checks. An index this state does not know is
    /// healthy (nothing checks it).
    pub fn is_healthy(&self, i: usize) -> bool {
        self.targets
            .get(i)
            .is_none_or(|t| t.healthy.load(Ordering::Relaxed))
    }

    /// Counts one probe of target `i`; returns the new verdict when this probe changed it.
    fn observe(&self, i: usize, success: bool, spec: &ActiveHealthSpec) -> Option<bool> {
        let t = self.targets.get(i)?;
        if success {
            t.failures.store(0, Ordering::Relaxed);
            let n = t.successes.load(Ordering::Relaxed).saturating_add(1);
            t.successes.store(n, Ordering::Relaxed);
            if !t.healthy.load(Ordering::Relaxed) && n >= spec.healthy_threshold {
                t.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            t.successes.store(0, Ordering::Relaxed);
            let n = t.failures.load(Ordering::Relaxed).saturating_add(1);
            t.failures.store(n, Ordering::Relaxed);
            if t.healthy.load(Ordering::Relaxed) && n >= spec.unhealthy_threshold {
                t.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

// === the checker task ===

type ProbeClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// How probes reach the targets: as the Service's own requests do (its upstream TLS settings
/// for `https://` targets, HTTP/2 for an `http2` Service), so a probe fails exactly when
/// traffic would.
#[derive(Clone, Default)]
pub struct ProbeTransport {
    pub tls: Option<UpstreamTls>,
    pub protocol: UpstreamProtocol,
}

/// Starts probing `targets` (indexed as in `state`) every `spec.interval`, the first round at
/// once. The task ends by itself once `state` can no longer be upgraded. Must be called
/// within a Tokio runtime.
pub fn spawn_active_checks(
    service: String,
    targets: Vec<TargetUrl>,
    spec: ActiveHealthSpec,
    state: Weak<HealthState>,
    transport: ProbeTransport,
) -> JoinHandle<()> {
    tokio::spawn(run_checks(service, targets, spec, state, transport))
}

async fn run_checks(
    service: String,
    targets: Vec<TargetUrl>,
    spec: ActiveHealthSpec,
    state: Weak<HealthState>,
    transport: ProbeTransport,
) {
    let client = match probe_client(spec.timeout.0, &transport) {
        Ok(c) => c,
        Err(e) => {
            // The Service was validated with the same settings: only a broken CA file gets
            // here. Its targets stay as they are (healthy) rather than all failing.
            tracing::error!(service = %service, error = %e, "active health checks cannot start");
            return;
        }
    };
    let labels: Vec<String> = targets.iter().map(target_label).collect();
    let gauges: Vec<metrics::Gauge> = labels
        .iter()
        .map(|target| {
            metrics::gauge!("konnect_proxy_target_healthy",
                "service" => service.clone(), "target" => target.clone())
        })
        .collect();
    if let Some(state) = state.upgrade() {
        for (i, gauge) in gauges.iter().enumerate() {
            gauge.set(if state.is_healthy(i) { 1.0 } else { 0.0 });
        }
    }
    let mut ticker = tokio::time::interval(spec.interval.0);
    // After a stall, probe once and keep the interval rather than bursting to catch up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if state.strong_count() == 0 {
            break;
        }
        // The state is not held across the probes, so dropping the Upstream frees it at once.
        let outcomes =
            futures::future::join_all(targets.iter().map(|t| probe(&client, t, &spec))).await;
        let Some(state) = state.upgrade() else {
            break;
        };
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match state.observe(i, outcome.is_ok(), &spec) {
                Some(true) => {
                    gauges[i].set(1.0);
                    tracing::info!(service = %service, target = %labels[i],
                        successes = spec.healthy_threshold,
                        "target healthy again: active health checks pass");
                }
                Some(false) => {
                    gauges[i].set(0.0);
                    tracing::warn!(service = %service, target = %labels[i],
                        failures = spec.unhealthy_threshold,
                        reason = %outcome.err().unwrap_or_default(),
                        "target unhealthy: active health checks fail; it gets no traffic while others are healthy");
                }
                None => {}
            }
        }
    }
    tracing::debug!(service = %service, "active health checks stopped: the Service's upstream was replaced or removed");
}

/// One connection per probe (no pooling): a probe must prove the target still accepts
/// connections (and completes the TLS handshake), not that an old one is still open.
fn probe_client(timeout: Duration, transport: &ProbeTransport) -> Result<ProbeClient, String> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let connector =
        super::upstream_tls::connector(connector, transport.tls.as_ref(), transport.protocol)?;
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(0)
        .http2_only(transport.protocol == UpstreamProtocol::Http2)
        .build(connector))
}

/// `GET base_path + path` on one target, bounded by `spec.timeout` as a whole. The error says
/// why the probe failed, for the log.
async fn probe(
    client: &ProbeClient,
    target: &TargetUrl,
    spec: &ActiveHealthSpec,
) -> Result<(), String> {
    let authority = target.authority();
    let scheme = if target.https { "https" } else { "http" };
    let uri: Uri = format!("{scheme}://{authority}{}{}", target.base_path, spec.path)
        .parse()
        .map_err(|e| format!("cannot build the probe URI: {e}"))?;
    let mut req = Request::get(uri)
        .body(Empty::new())
        .map_err(|e| format!("cannot build the probe request: {e}"))?;
    if let Ok(host) = HeaderValue::from_str(&authority) {
        req.headers_mut().insert(HOST, host);
    }
    req.headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static("konnect-health-check"));
    match tokio::time::timeout(spec.timeout.0, client.request(req)).await {
        // The body is not read; dropping the response closes the unpooled connection.
        Ok(Ok(resp)) if spec.is_expected(resp.status().as_u16()) => Ok(()),
        Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
        Ok(Err(e)) if e.is_connect() => Err(format!("connect failed: {}", error_chain(&e))),
        Ok(Err(e)) => Err(format!("request failed: {}", error_chain(&e))),
        Err(_) => Err(format!("no answer within {:?}", spec.timeout.0)),
    }
}

/// The target as a URL, for logs and the `target` metric label.
fn target_label(t: &TargetUrl) -> String {
    let scheme = if t.https { "https" } else { "http" };
    format!("{scheme}://{}{}", t.authority(), t.base_path)
}

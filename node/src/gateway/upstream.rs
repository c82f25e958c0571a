//! A Service at run time: its targets with their health, the load balancer, and their
//! connection pool. Lives across config snapshots while the Service's revision is unchanged, so
//! connection pools, in-flight counts and ejections survive unrelated config changes.
//!
//! Passive health (outlier ejection): `consecutive_failures` connect failures, resets,
//! timeouts or 5xx answers in a row take a target out for `ejection`; one success resets
//! the count.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;

use super::balancer::{Balancer, InFlight, TargetView};
use super::circuit::CircuitBreaker;
use super::health::{spawn_active_checks, HealthState, ProbeTransport};
use super::pool::{ConnPool, Http1Connection};
use crate::resources::service::{HashOn, ServiceSpec, TargetUrl, UpstreamProtocol};

pub struct Target {
    pub url: TargetUrl,
    /// What every forwarded URI starts with: the base path for HTTP/1.1 (origin form),
    /// `scheme://authority/base-path` for HTTP/2.
    pub uri_prefix: String,
    /// `scheme://authority`: where connections go.
    pub connect_to: Uri,
    /// The Host header sent to this target (its authority, port included).
    pub host_header: hyper::header::HeaderValue,
    /// The URL as configured, for logs and metrics.
    pub display: String,
    pub in_flight: InFlight,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `Upstream::epoch` until which the target is ejected; 0 when not.
    ejected_until_ms: AtomicU64,
}

pub struct Upstream {
    pub name: String,
    /// Revision of the Service resource this was built from.
    pub revision: u64,
    pub spec: ServiceSpec,
    pub targets: Vec<Target>,
    pub balancer: Balancer,
    pub hash_on: Option<HashOn>,
    pub pool: ConnPool,
    /// Present when the Service configures a circuit breaker.
    pub circuit: Option<CircuitBreaker>,
    /// Present when the Service configures active health checks; only this `Arc` keeps the
    /// probing task alive, so it ends when the Upstream is replaced.
    pub health: Option<Arc<HealthState>>,
    health_task: Option<tokio::task::JoinHandle<()>>,
    epoch: Instant,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(t) = self.health_task.take() {
            t.abort();
        }
    }
}

impl Upstream {
    pub fn new(name: &str, revision: u64, spec: ServiceSpec) -> Result<Upstream, String> {
        let mut targets = Vec::with_capacity(spec.targets.len());
        for t in &spec.targets {
            let url = TargetUrl::parse(&t.url)?;
            let authority = url.authority();
            let host_header = hyper::header::HeaderValue::from_str(&authority).map_err(|_| {
                format!(
                    "invalid URL {:?}: the host is not a valid Host header",
                    t.url
                )
            })?;
            let origin = format!("{}://{authority}", if url.https { "https" } else { "http" });
            let connect_to = Uri::try_from(origin.as_str())
                .map_err(|e| format!("invalid URL {:?}: {e}", t.url))?;
            targets.push(Target {
                uri_prefix: match spec.protocol {
                    UpstreamProtocol::Http1 => url.base_path.clone(),
                    UpstreamProtocol::Http2 => format!("{origin}{}", url.base_path),
                },
                connect_to,
                host_header,
                url,
                display: t.url.clone(),
                in_flight: InFlight::default(),
                consecutive_failures: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
            });
        }
        let keys: Vec<String> = spec.targets.iter().map(|t| t.url.clone()).collect();
        let weights = spec.targets.iter().map(|t| t.weight).collect();
        let balancer = Balancer::new(spec.lb.algorithm, weights, &keys);
        let hash_on = match spec.lb.algorithm {
            crate::resources::service::Algorithm::ConsistentHash => {
                Some(spec.lb.hash_on().map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(spec.timeouts.connect.0));
        connector.set_nodelay(true);
        // The HTTPS wrapper decides by scheme; plain HTTP targets pass through untouched.
        connector.enforce_http(false);
        let connector =
            super::upstream_tls::connector(connector, spec.tls.as_ref(), spec.protocol)?;
        let pool = ConnPool::new(
            connector,
            spec.protocol,
            targets.len(),
            spec.pool.max_idle_per_target,
            spec.pool.idle_timeout.0,
        );
        let circuit = spec
            .circuit_breaker
            .clone()
            .map(|c| CircuitBreaker::new(name, c));
        let (health, health_task) = match &spec.health_check.active {
            Some(active) => {
                let state = HealthState::new(targets.len());
                let task = spawn_active_checks(
                    name.to_string(),
                    targets.iter().map(|t| t.url.clone()).collect(),
                    active.clone(),
                    Arc::downgrade(&state),
                    ProbeTransport {
                        tls: spec.tls.clone(),
                        protocol: spec.protocol,
                    },
                );
                (Some(state), Some(task))
            }
            None => (None, None),
        };
        Ok(Upstream {
            circuit,
            health,
            health_task,
            name: name.to_string(),
            revision,
            spec,
            targets,
            balancer,
            hash_on,
            pool,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records the outcome of one attempt on target `i` for passive health checking.
    pub fn record(&self, i: usize, success: bool) {
        let t = &self.targets[i];
        if success {
            t.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let Some(passive) = &self.spec.health_check.passive else {
            return;
        };
        let n = t.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= passive.consecutive_failures {
            let until = self.now_ms() + passive.ejection.0.as_millis() as u64;
            t.ejected_until_ms.store(until, Ordering::Relaxed);
            t.consecutive_failures.store(0, Ordering::Relaxed);
            metrics::counter!("konnect_proxy_target_ejections_total", "service" => self.name.clone()).increment(1);
            tracing::warn!(service = %self.name, target = %t.display, ejection = ?passive.ejection.0, "target ejected after consecutive failures");
        }
    }

    /// Whether target `i` is ejected. The clock is read only for a target ejected at some
    /// time: every balancer pick asks, and a clock read costs 22 ns on the benchmark VM. An
    /// ejection found over is cleared, unless a newer one replaced it meanwhile.
    pub fn is_ejected(&self, i: usize) -> bool {
        let until = &self.targets[i].ejected_until_ms;
        let at = until.load(Ordering::Relaxed);
        if at == 0 {
            return false;
        }
        if at > self.now_ms() {
            return true;
        }
        let _ = until.compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// Backoff before retry number `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.spec.retries.backoff.0;
        base.saturating_mul(1u32 << (n.saturating_sub(1)).min(10))
    }
}

impl TargetView for Upstream {
    fn available(&self, index: usize) -> bool {
        !self.is_ejected(index) && self.health.as_ref().is_none_or(|h| h.is_healthy(index))
    }

    fn in_flight(&self, index: usize) -> u64 {
        self.targets[index].in_flight.get()
    }

    fn has_capacity(&self, index: usize) -> bool {
        self.spec
            .pool
            .max_requests_per_target
            .is_none_or(|max| self.targets[index].in_flight.get() < max)
    }
}

/// Counts a request in flight on a target for as long as it lives, and holds the HTTP/1.1
/// connection its response is read from.
pub struct InFlightGuard {
    upstream: Arc<Upstream>,
    index: usize,
    /// Goes back to the pool when the response body was read to its end (`finish`), and is
    /// closed otherwise: unread bytes would be taken for the next response.
    pub connection: Option<Http1Connection>,
}

impl InFlightGuard {
    fn new(upstream: Arc<Upstream>, index: usize) -> InFlightGuard {
        upstream.targets[index]
            .in_flight
            .0
            .fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            upstream,
            index,
            connection: None,
        }
    }

    /// The response is over: `body_complete` when its body was read to the end, so the
    /// connection may serve the next request.
    pub fn finish(mut self, body_complete: bool) {
        if let (true, Some(c)) = (body_complete, self.connection.take()) {
            self.upstream.pool.put_back(self.index, c);
        }
    }

    /// Counts the request in, unless the target is at `pool.max_requests_per_target`: the
    /// increment and the check are one atomic step, so concurrent requests never exceed it.
    pub fn try_new(upstream: Arc<Upstream>, index: usize) -> Option<InFlightGuard> {
        let Some(max) = upstream.spec.pool.max_requests_per_target else {
            return Some(InFlightGuard::new(upstream, index));
        };
        let counter = &upstream.targets[index].in_flight.0;
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(InFlightGuard {
            upstream,
            index,
            connection: None,
        })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.upstream.targets[self.index]
            .in_flight
            .0
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ejected_target_comes_back_when_its_ejection_is_over_and_can_be_ejected_again() {
        let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "targets": [{"url": "http://127.0.0.1:9"}, {"url": "http://127.0.0.1:10"}],
            "health_check": {"passive": {"consecutive_failures": 2, "ejection": "200ms"}}
        }))
        .unwrap();
        let up = Upstream::new("web", 1, spec).unwrap();
        assert!(!up.is_ejected(0));
        up.record(0, false);
        assert!(!up.is_ejected(0), "one failure of two");
        up.record(0, false);
        assert!(up.is_ejected(0));
        assert!(!up.is_ejected(1), "only the failing target");
        // The ejection's own length is what is waited for.
        std::thread::sleep(Duration::from_millis(250));
        assert!(!up.is_ejected(0));
        assert!(
            !up.is_ejected(0),
            "asked again after the ejection was cleared"
        );
        up.record(0, false);
        up.record(0, false);
        assert!(up.is_ejected(0), "ejected again after two more failures");
    }
}

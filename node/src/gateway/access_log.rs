//! The access log: one JSON line per request, written by a background task so the request
//! path never waits on disk. When the writer falls behind, lines are dropped and counted
//! (`konnect_proxy_access_log_dropped_total`) rather than slowing traffic.
//!
//! No header values are logged, so credentials in headers cannot leak into the log; the path
//! and query pass through the snapshot's `Redactor` (LogRedaction resources and built-in
//! credential parameters) first.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Default)]
pub struct AccessEntry {
    pub ts: String,
    pub request_id: String,
    pub client_ip: String,
    pub method: String,
    pub host: String,
    pub path: String,
    /// The query string, with credential-like parameters and LogRedaction matches masked.
    pub query: Option<String>,
    pub route: Option<String>,
    pub service: Option<String>,
    pub upstream: Option<String>,
    pub status: u16,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub attempts: u32,
    pub bytes_sent: u64,
    pub complete: bool,
    pub consumer: Option<String>,
    /// How the consumer was identified: `key:<id>`, `jwt:<provider>` or `mtls`.
    pub credential: Option<String>,
    /// `hit`, `miss` or `bypass` on routes with a response cache.
    pub cache: Option<&'static str>,
    pub error: Option<String>,
    /// The matched route's metric handles (not logged): set for every request that matched a
    /// route, whether or not a log is kept, since the route and service fields above are
    /// filled only when it is.
    #[serde(skip)]
    pub route_metrics: Option<std::sync::Arc<super::route_metrics::RouteMetrics>>,
    /// Whether this entry will be written (a log is kept): the descriptive fields, which
    /// cost allocations and clock reads, are filled only then.
    #[serde(skip)]
    pub kept: bool,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for AccessLogTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" => AccessLogTarget::Off,
            "stdout" => AccessLogTarget::Stdout,
            "" => return Err("empty access log target: use off, stdout or a file path".into()),
            path => AccessLogTarget::File(PathBuf::from(path)),
        })
    }
}

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<AccessEntry>>,
}

impl AccessLog {
    pub fn start(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog { tx: None }),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, mut rx) = mpsc::channel::<AccessEntry>(8192);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Some(first) = rx.blocking_recv() {
                    buf.clear();
                    let mut next = Some(first);
                    // Write everything queued in one go.
                    while let Some(e) = next {
                        if serde_json::to_writer(&mut buf, &e).is_ok() {
                            buf.push(b'\n');
                        }
                        next = rx.try_recv().ok();
                    }
                    if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                        metrics::counter!("konnect_proxy_access_log_errors_total").increment(1);
                    }
                }
            })?;
        Ok(AccessLog { tx: Some(tx) })
    }

    /// Whether lines are written at all (`--access-log` is not `off`).
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn record(&self, entry: AccessEntry) {
        if let Some(tx) = &self.tx {
            if tx.try_send(entry).is_err() {
                metrics::counter!("konnect_proxy_access_log_dropped_total").increment(1);
            }
        }
    }
}

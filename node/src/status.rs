//! The HTTP status endpoint on `--status-addr`: `/healthz` (the process answers), `/readyz`
//! (the node belongs to an initialised cluster, knows a leader and has applied its whole
//! local log) and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::NodeHandle;

/// Why the node is not ready, or `None` when it is.
pub fn not_ready_reason(node: &NodeHandle) -> Option<String> {
    if node.channels.identity.get().is_none() {
        return Some("waiting for `konnectctl cluster init` (or to be added to a cluster)".into());
    }
    let m = node.raft.metrics().borrow().clone();
    if let Err(fatal) = &m.running_state {
        return Some(format!(
            "Raft stopped: {fatal}; the node exits once its data dir takes writes again"
        ));
    }
    if m.current_leader.is_none() {
        return Some("no leader known".into());
    }
    let applied = m.last_applied.map_or(0, |l| l.index);
    let last = m.last_log_index.unwrap_or(0);
    if applied < last {
        return Some(format!("applying the log: {applied} of {last}"));
    }
    None
}

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

async fn route(
    node: NodeHandle,
    metrics: PrometheusHandle,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => match not_ready_reason(&node) {
            None => text(
                StatusCode::OK,
                "{\"ready\":true}\n".into(),
                "application/json",
            ),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", serde_json::json!({"ready": false, "reason": why})),
                "application/json",
            ),
        },
        "/metrics" => text(
            StatusCode::OK,
            metrics.render(),
            "text/plain; version=0.0.4",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "{\"error\":\"not found: try /healthz, /readyz or /metrics\"}\n".into(),
            "application/json",
        ),
    })
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    node: NodeHandle,
    metrics: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "status listener accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let node = node.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| route(node.clone(), metrics.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

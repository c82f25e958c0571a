//! A programmable upstream for proxy tests (upstreams are outside konnect, so a test server
//! stands in for them). Paths:
//! - `/...` default: 200 with a JSON echo of method, path, query, headers (and the names that
//!   came more than once), plus `X-Served-By`, and the value of a request's `X-Respond-Via`
//!   or `X-Respond-Request-Id` as the response's `Via` or `X-Request-Id`;
//! - `/status/N`: answers status N;
//! - `/slow/MS`: waits MS milliseconds, then answers 200;
//! - `/flaky/K`: answers 503 to the first K requests on this server, then 200 with the
//!   request's `X-Probe` (when it has one) as `X-Probe-Seen`;
//! - `/sse`: sends one event, waits until the test calls `release_sse()`, sends another, ends.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicU64>,
    /// Arrival time (unix ms, this machine's clock) of every request.
    arrivals: Arc<std::sync::Mutex<Vec<u64>>>,
    sse_release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let flaky = Arc::new(AtomicU64::new(0));
        let sse_release = Arc::new(Notify::new());
        let (h, n, s) = (hits.clone(), name.to_string(), sse_release.clone());
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let arr = arrivals.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, n, f, s) = (h.clone(), n.clone(), flaky.clone(), s.clone());
                let arr = arr.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (h, n, f, s) = (h.clone(), n.clone(), f.clone(), s.clone());
                        let at = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        arr.lock().unwrap().push(at);
                        async move {
                            Ok::<_, std::convert::Infallible>(serve(req, &h, &n, &f, &s).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            hits,
            arrivals,
            sse_release,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn release_sse(&self) {
        self.sse_release.notify_one();
    }

    /// Asks for `/sse` over `io` (a connection to the proxy, HTTP/1.1) and checks that the
    /// first event arrives while this upstream still holds the second back.
    pub async fn check_sse_through<I>(&self, io: I, host: &str)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/sse")
            .header("host", host)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first event arrives while the upstream is still open")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: first\n\n");
        self.release_sse();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "data: second\n\n");
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests that arrived in `[from_ms, to_ms)` (unix ms).
    pub fn arrivals_between(&self, from_ms: u64, to_ms: u64) -> u64 {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|t| (from_ms..to_ms).contains(*t))
            .count() as u64
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(status: u16, body: impl Into<Bytes>, name: &str) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("x-served-by", name)
        .header("content-type", "application/json")
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

async fn serve(
    req: Request<Incoming>,
    hits: &AtomicU64,
    name: &str,
    flaky: &AtomicU64,
    sse: &Arc<Notify>,
) -> Response<BoxBody> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["status", n] => full(n.parse().unwrap_or(500), "{}", name),
        ["slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            full(200, "{\"slow\":true}", name)
        }
        ["flaky", k] => {
            let seen = flaky.fetch_add(1, Ordering::SeqCst);
            if seen < k.parse().unwrap_or(0) {
                full(503, "{\"flaky\":true}", name)
            } else {
                let mut resp = full(200, "{\"flaky\":false}", name);
                if let Some(v) = req.headers().get("x-probe") {
                    resp.headers_mut().insert("x-probe-seen", v.clone());
                }
                resp
            }
        }
        ["ws"] => {
            // Switch protocols, then echo every byte back (what a websocket echo does, minus
            // the framing the proxy never looks at).
            let on_upgrade = hyper::upgrade::on(req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        }
        ["sse"] => {
            let sse = sse.clone();
            let stream = async_stream(sse);
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("x-served-by", name)
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
        _ => {
            let method = req.method().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
                    )
                })
                .collect();
            // Names that came more than once (`headers` keeps only the last value of each).
            let mut repeated: Vec<String> = req
                .headers()
                .keys()
                .filter(|k| req.headers().get_all(*k).iter().count() > 1)
                .map(|k| k.to_string())
                .collect();
            repeated.dedup();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let echo = serde_json::json!({
                "method": method, "path": path, "query": query, "headers": headers,
                "repeated": repeated, "body_len": body.len(), "served_by": name,
            });
            let mut resp = full(200, serde_json::to_vec(&echo).unwrap(), name);
            for (asked, field) in [
                ("x-respond-via", "via"),
                ("x-respond-request-id", "x-request-id"),
            ] {
                if let Some(v) = headers.get(asked).and_then(|v| v.as_str()) {
                    resp.headers_mut()
                        .insert(field, v.parse().expect("a header value"));
                }
            }
            resp
        }
    }
}

fn async_stream(
    release: Arc<Notify>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> {
    futures::stream::unfold(0u8, move |step| {
        let release = release.clone();
        async move {
            match step {
                0 => Some((Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))), 2))
                }
                _ => None,
            }
        }
    })
}

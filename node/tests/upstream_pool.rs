//! End to end: how the proxy keeps its connections to upstream targets, seen from a raw TCP
//! upstream that counts the connections it accepts and notices when one closes.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// An HTTP/1.1 upstream written on the socket: `/big` answers 4 MiB, anything else `ok`.
/// Every connection is kept alive until the proxy closes it.
struct RawUpstream {
    port: u16,
    accepted: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    closed_event: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let closed_event = Arc::new(Notify::new());
        let (a, c, e) = (accepted.clone(), closed.clone(), closed_event.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (c, e) = (c.clone(), e.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                        let Some(end) = head_end else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let body: Vec<u8> = if head.starts_with("GET /big ") {
                            vec![b'x'; 4 << 20]
                        } else {
                            b"ok".to_vec()
                        };
                        let reply =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if stream.write_all(reply.as_bytes()).await.is_err()
                            || stream.write_all(&body).await.is_err()
                        {
                            break;
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    e.notify_one();
                });
            }
        });
        RawUpstream {
            port,
            accepted,
            closed,
            closed_event,
            task,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gateway_to(up: &RawUpstream, pool: serde_json::Value) -> (Cluster, String) {
    let cluster = Cluster::start_initialised(1, &[]).await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource(
                    "Service",
                    "raw",
                    json!({"targets": [{"url": format!("http://127.0.0.1:{}", up.port)}], "pool": pool}),
                ),
                route("raw", "/", "raw"),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let proxy = cluster.proxy_addr(1).await;
    wait_for("the route to be live", Duration::from_secs(10), || async {
        (http("GET", &proxy, "/ok", &[], "").await.status == 200).then_some(())
    })
    .await;
    (cluster, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_connection_serves_requests_one_after_another() {
    let up = RawUpstream::start().await;
    let (_c, proxy) = gateway_to(&up, json!({})).await;
    let before = up.accepted();
    for i in 0..20 {
        let r = http("GET", &proxy, "/ok", &[], "").await;
        assert_eq!((i, r.status, &r.body[..]), (i, 200, &b"ok"[..]));
    }
    assert!(
        up.accepted() <= before + 1,
        "20 requests in a row opened {} upstream connections",
        up.accepted() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_zero_keeps_no_connection_open() {
    let up = RawUpstream::start().await;
    let (_c, proxy) = gateway_to(&up, json!({"max_idle_per_target": 0})).await;
    let before = up.accepted();
    for _ in 0..5 {
        assert_eq!(http("GET", &proxy, "/ok", &[], "").await.status, 200);
    }
    assert_eq!(up.accepted() - before, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_abandoned_mid_body_never_reaches_the_next_request() {
    let up = RawUpstream::start().await;
    let (_c, proxy) = gateway_to(&up, json!({})).await;
    // The client reads the head of a 4 MiB answer and hangs up.
    let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: gateway.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = s.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    // The rest of that body must not be taken for the next answers.
    for _ in 0..5 {
        let r = http("GET", &proxy, "/ok", &[], "").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    let up = RawUpstream::start().await;
    let (_c, proxy) = gateway_to(&up, json!({"idle_timeout": "300ms"})).await;
    assert_eq!(http("GET", &proxy, "/ok", &[], "").await.status, 200);
    // Every connection the proxy opened is closed by it once idle, with no request to
    // notice it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while up.closed.load(Ordering::SeqCst) < up.accepted() {
            up.closed_event.notified().await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} of {} upstream connections still open 10 s after the last request",
            up.accepted() - up.closed.load(Ordering::SeqCst),
            up.accepted()
        )
    });
}

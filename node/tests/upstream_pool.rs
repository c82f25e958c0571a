//! End to end: how the proxy talks HTTP/1.1 to upstream targets (response framing, trailers,
//! answers that come while a request body is still going out) and keeps its connections to
//! them, seen from a raw TCP upstream that counts the connections it accepts and notices when
//! one closes.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// An HTTP/1.1 upstream written on the socket, answering each path with fixed bytes
/// ([`reply`]); it keeps a connection open until the proxy closes it, unless the reply says
/// to close.
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
                    let mut served = 0;
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
                        let (bytes, then) = reply(&head, served);
                        served += 1;
                        if stream.write_all(&bytes).await.is_err() || then == Then::Close {
                            break;
                        }
                        if then == Then::Hold {
                            std::future::pending::<()>().await;
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

/// What the upstream does with a connection after a reply.
#[derive(PartialEq)]
enum Then {
    /// Reads the next request.
    Serve,
    /// Closes it (resetting it when a request body is still unread).
    Close,
    /// Keeps it open without reading another byte, until the test ends.
    Hold,
}

/// The bytes sent for a request head (the connection's `served`-th request, from 0), and
/// what happens to the connection after them.
fn reply(head: &str, served: usize) -> (Vec<u8>, Then) {
    let (method, path) = {
        let mut words = head.split(' ');
        (words.next().unwrap_or(""), words.next().unwrap_or(""))
    };
    let ok = |body: &[u8]| {
        let mut out =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(body);
        }
        out
    };
    match path {
        "/big" => (ok(&vec![b'x'; 4 << 20]), Then::Serve),
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\ntrailer: t\r\n\r\n".to_vec(),
            Then::Serve,
        ),
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil close".to_vec(), Then::Close),
        "/continue" => {
            let mut out = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            out.extend(ok(b"after 100"));
            (out, Then::Serve)
        }
        "/no-content" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), Then::Serve),
        // Both framings: the chunked one counts, and the connection is not trusted again.
        "/both" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n4\r\nboth\r\n0\r\n\r\n".to_vec(),
            Then::Serve,
        ),
        // A second response nobody asked for, right behind the first.
        "/smuggle" => {
            let mut out = ok(b"first");
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled");
            (out, Then::Serve)
        }
        // Trailer fields after the last chunk: one to pass on, and framing, routing and
        // connection fields that have no place in trailers (RFC 9110 6.5.1).
        "/trailers" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n7\r\nchecked\r\n0\r\nX-Checksum: abc\r\nContent-Length: 5\r\nConnection: x\r\nTransfer-Encoding: chunked\r\nHost: elsewhere\r\n\r\n".to_vec(),
            Then::Serve,
        ),
        // An upload refused on sight of its head: the answer goes out, and the connection
        // closes with the body unread (the kernel then resets it).
        "/upload" => (
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!".to_vec(),
            Then::Close,
        ),
        // The same refusal, and then the target neither reads nor closes: only a proxy that
        // watches for the answer while it writes sees it.
        "/upload/held" => (
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\n\r\nwho?!".to_vec(),
            Then::Hold,
        ),
        "/invalid" => (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n".to_vec(), Then::Close),
        "/short" => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort".to_vec(), Then::Close),
        // A connection kept idle, then closed unanswered as a request arrives on it: what a
        // target's keep-alive timeout looks like when it strikes just as the proxy reuses it.
        "/drop-reused" if served > 0 => (Vec::new(), Then::Close),
        _ => (ok(b"ok"), Then::Serve),
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `/upload` route's body limit.
const UPLOAD_LIMIT: usize = 32 << 20;

/// A gateway with one Service for `up` (its `pool` settings) and two Routes: `/` for
/// everything, and `/upload`, whose body limit makes request bodies of unknown length be read
/// whole before they are sent (to the target through the proxy's own HTTP/1.1 codec).
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
                resource(
                    "Route",
                    "upload",
                    json!({"paths": ["/upload"], "service": "raw", "max_body_bytes": UPLOAD_LIMIT}),
                ),
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

/// `method path` through the proxy on a connection of its own: (status, body), or None when
/// the proxy broke the response off.
async fn exchange(proxy: &str, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let req =
        format!("{method} {path} HTTP/1.1\r\nhost: gateway.test\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the proxy answered within 10 s")
        .ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n")?;
            let size = usize::from_str_radix(size, 16).ok()?;
            if size == 0 {
                break;
            }
            out.extend_from_slice(after.get(..size)?.as_bytes());
            rest = after.get(size + 2..)?;
        }
        out
    } else {
        let declared = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok());
        if declared.is_some_and(|n| n != body.len()) && method != "HEAD" {
            return None;
        }
        body.as_bytes().to_vec()
    };
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_responses_are_framed_by_http_1_1_rules_and_never_bleed_into_the_next() {
    let up = RawUpstream::start().await;
    let (_c, proxy) = gateway_to(&up, json!({})).await;
    // (method, path, the answer the client gets: status and body, or None when cut off)
    type Case<'a> = (&'a str, &'a str, Option<(u16, &'a [u8])>);
    let cases: [Case; 8] = [
        ("GET", "/chunked", Some((200, b"hello world"))),
        ("GET", "/until-close", Some((200, b"until close"))),
        ("GET", "/continue", Some((200, b"after 100"))),
        ("GET", "/no-content", Some((204, b""))),
        ("HEAD", "/ok", Some((200, b""))),
        ("GET", "/both", Some((200, b"both"))),
        ("GET", "/smuggle", Some((200, b"first"))),
        // Cut off mid-body: the client must not get a complete-looking answer.
        ("GET", "/short", None),
    ];
    for (method, path, want) in cases {
        let got = exchange(&proxy, method, path).await;
        assert_eq!(got, want.map(|(s, b)| (s, b.to_vec())), "{method} {path}");
        // Whatever came before, the next request gets its own answer.
        assert_eq!(
            exchange(&proxy, "GET", "/ok").await,
            Some((200, b"ok".to_vec())),
            "the request after {method} {path}"
        );
    }
    let invalid = exchange(&proxy, "GET", "/invalid").await;
    assert_eq!(invalid.map(|(s, _)| s), Some(502));
    // A response framed both ways leaves its connection unused afterwards: /both takes the
    // idle connection /ok left, and the next request needs a new one.
    assert_eq!(
        exchange(&proxy, "GET", "/ok").await,
        Some((200, b"ok".to_vec()))
    );
    let before = up.accepted();
    assert_eq!(
        exchange(&proxy, "GET", "/both").await,
        Some((200, b"both".to_vec()))
    );
    assert_eq!(
        exchange(&proxy, "GET", "/ok").await,
        Some((200, b"ok".to_vec()))
    );
    assert_eq!(
        up.accepted(),
        before + 1,
        "the connection after /both was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_on_a_connection_the_target_closes_is_sent_again_once() {
    let up = RawUpstream::start().await;
    let (_c, proxy) = gateway_to(&up, json!({})).await;
    // The proxy's idle connection has served the readiness probes; the target drops it
    // unanswered, and the GET goes again on a new connection.
    assert_eq!(
        exchange(&proxy, "GET", "/drop-reused").await,
        Some((200, b"ok".to_vec()))
    );
    // A POST may have been acted on: it is not sent twice (retries.on is connect_failure).
    assert_eq!(
        exchange(&proxy, "GET", "/ok").await,
        Some((200, b"ok".to_vec()))
    );
    let before = up.accepted();
    assert_eq!(
        exchange(&proxy, "POST", "/drop-reused")
            .await
            .map(|(s, _)| s),
        Some(502)
    );
    assert_eq!(
        up.accepted(),
        before,
        "the POST went out on a second connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_after_a_chunked_upstream_body_reach_an_http2_client() {
    use http_body_util::BodyExt;
    let up = RawUpstream::start().await;
    let (_c, proxy) = gateway_to(&up, json!({})).await;
    // HTTP/2 with prior knowledge (h2c): the downstream side that always carries trailers.
    let stream = tokio::net::TcpStream::connect(&proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let before = up.accepted();
    for _ in 0..2 {
        let req = hyper::Request::get("http://gateway.test/trailers")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("the body within 10 s")
            .expect("the whole body, trailers included");
        let trailers = body.trailers().cloned();
        assert_eq!(&body.to_bytes()[..], b"checked");
        // Only the checksum: the framing, routing and connection fields are not trailers.
        let mut want = hyper::HeaderMap::new();
        want.insert("x-checksum", "abc".parse().unwrap());
        assert_eq!(trailers, Some(want));
    }
    // Read to its end, trailers included, the upstream connection served both (it is the
    // one the readiness probes left idle).
    assert_eq!(
        up.accepted(),
        before,
        "a new upstream connection per response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_an_upload_mid_body_has_its_answer_delivered() {
    let up = RawUpstream::start().await;
    let (_c, proxy) = gateway_to(&up, json!({})).await;
    // 16 MiB of unknown length, read whole by the proxy (the route's limit) and sent as one
    // buffered body: far more than the sockets between the proxy and the target hold, so the
    // target's answer arrives while the proxy is still writing it.
    let body_len = 16 << 20;
    assert!(body_len < UPLOAD_LIMIT);
    // The target answers on sight of the head, then closes (and so resets the connection),
    // or holds it without reading on.
    for (path, answer) in [
        ("/upload", "HTTP/1.1 413 Payload Too Large"),
        ("/upload/held", "HTTP/1.1 401 Unauthorized"),
    ] {
        let stream = tokio::net::TcpStream::connect(&proxy).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            let head = format!(
                "POST {path} HTTP/1.1\r\nhost: gateway.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{body_len:x}\r\n"
            );
            wr.write_all(head.as_bytes()).await?;
            wr.write_all(&vec![b'u'; body_len]).await?;
            wr.write_all(b"\r\n0\r\n\r\n").await?;
            Ok::<_, std::io::Error>(wr)
        });
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut raw))
            .await
            .expect("the proxy answered within 30 s")
            .expect("the answer");
        writer
            .await
            .unwrap()
            .expect("the proxy read the whole body");
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with(answer),
            "{path}: the client got {:?}, not the target's {answer:?}",
            text.lines().next()
        );
        let body = if path == "/upload" {
            "too big!"
        } else {
            "who?!"
        };
        assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text:?}");
    }
    // Whatever state those connections were left in, they serve nothing more.
    assert_eq!(
        exchange(&proxy, "GET", "/ok").await,
        Some((200, b"ok".to_vec()))
    );
}

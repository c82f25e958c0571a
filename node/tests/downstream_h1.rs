//! End to end: how the proxy serves HTTP/1.1 clients (its own codec, node/src/gateway/
//! server_h1.rs, and the hand-over to hyper), seen from a client written on the socket:
//! keep-alive, pipelining, framing, hanging up, idle connections, and clients that stop
//! reading (upgraded WebSocket connections included).

mod support;

use std::time::Duration;

use serde_json::json;
use support::upstream::Upstream;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn gateway_to(target: &str, extra: &[&str]) -> (Cluster, String) {
    gateway_routing(target, extra, json!({"paths": ["/"], "service": "web"})).await
}

/// [`gateway_to`] with a route of the given spec.
async fn gateway_routing(
    target: &str,
    extra: &[&str],
    route: serde_json::Value,
) -> (Cluster, String) {
    let cluster = Cluster::start_initialised(1, extra).await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("Service", "web", json!({"targets": [{"url": target}]})),
                resource("Route", "web", route),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let proxy = cluster.proxy_addr(1).await;
    wait_for("the route to be live", Duration::from_secs(10), || async {
        (http("GET", &proxy, "/live", &[], "").await.status != 404).then_some(())
    })
    .await;
    (cluster, proxy)
}

/// One response read off a connection.
struct Answer {
    status: u16,
    /// The head, lower-cased.
    head: String,
    body: Vec<u8>,
}

/// Reads the next response to a `method` request from `s`, `buf` holding what was read
/// beyond the previous one. Fails the test on a close or a stall.
async fn next_answer(s: &mut TcpStream, buf: &mut Vec<u8>, method: &str) -> Answer {
    async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "the proxy closed mid-answer: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        fill(s, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end + 4);
    let status: u16 = head[9..12].parse().unwrap();
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::trim)
            .map(str::to_owned)
    };
    let mut body = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 {
        // No body.
    } else if let Some(n) = field("content-length") {
        let n: usize = n.parse().unwrap();
        while buf.len() < n {
            fill(s, buf).await;
        }
        body = buf.drain(..n).collect();
    } else {
        assert_eq!(
            field("transfer-encoding").as_deref(),
            Some("chunked"),
            "{head}"
        );
        loop {
            let line = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                fill(s, buf).await;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line]).unwrap(), 16)
                .expect("chunk size");
            while buf.len() < line + 2 + size + 2 {
                fill(s, buf).await;
            }
            body.extend_from_slice(&buf[line + 2..line + 2 + size]);
            buf.drain(..line + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    Answer { status, head, body }
}

fn echoed_path(answer: &Answer) -> String {
    let v: serde_json::Value = serde_json::from_slice(&answer.body).expect("an echo");
    v["path"].as_str().unwrap_or_default().to_string()
}

/// Whether the proxy closes `s` (reads to the end) within `within`.
async fn closes(s: &mut TcpStream, within: Duration) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(within, s.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_close_is_honoured() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_to(&up.url(), &[]).await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    // Three requests in one write; the last asks to close.
    s.write_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut paths = Vec::new();
    for _ in 0..3 {
        let a = next_answer(&mut s, &mut buf, "GET").await;
        assert_eq!(a.status, 200, "{}", a.head);
        assert!(a.head.contains("\r\ndate: "), "no date: {}", a.head);
        paths.push(echoed_path(&a));
    }
    assert_eq!(paths, ["/a", "/b", "/c"]);
    assert!(
        closes(&mut s, Duration::from_secs(10)).await,
        "the connection stayed open after Connection: close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_mid_connection_is_served_and_so_is_the_next() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_to(&up.url(), &[]).await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        echoed_path(&next_answer(&mut s, &mut buf, "GET").await),
        "/first"
    );
    // A body (hyper's part from here on), pipelined with the request behind it.
    s.write_all(b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let second = next_answer(&mut s, &mut buf, "POST").await;
    assert_eq!(
        (second.status, echoed_path(&second)),
        (200, "/second".into())
    );
    let third = next_answer(&mut s, &mut buf, "GET").await;
    assert_eq!((third.status, echoed_path(&third)), (200, "/third".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_no_content_answers_carry_no_body_and_the_connection_goes_on() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_to(&up.url(), &[]).await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = next_answer(&mut s, &mut buf, "HEAD").await;
    assert_eq!(head.status, 200, "{}", head.head);
    let none = next_answer(&mut s, &mut buf, "GET").await;
    assert_eq!(none.status, 204, "{}", none.head);
    assert!(!none.head.contains("content-length"), "{}", none.head);
    assert!(!none.head.contains("transfer-encoding"), "{}", none.head);
    // Had either carried a body, it would be read here as the next head.
    let after = next_answer(&mut s, &mut buf, "GET").await;
    assert_eq!((after.status, echoed_path(&after)), (200, "/after".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_unknown_length_is_sent_chunked_and_the_connection_goes_on() {
    // A target that answers until it closes: the proxy cannot know the length up front.
    let (url, server) = raw_target(
        b"HTTP/1.1 200 OK\r\n\r\nuntil the target closes",
        Then::Close,
    )
    .await;
    let (_c, proxy) = gateway_to(&url, &[]).await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let a = next_answer(&mut s, &mut buf, "GET").await;
        assert!(a.head.contains("transfer-encoding: chunked"), "{}", a.head);
        assert_eq!(a.body, b"until the target closes");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_its_request_upstream() {
    // A target that never answers, and notices when the proxy gives up on it.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (gone_tx, mut gone) = tokio::sync::mpsc::unbounded_channel::<String>();
    let server = tokio::spawn(async move {
        loop {
            let (mut c, _) = target.accept().await.unwrap();
            let (seen_tx, gone_tx) = (seen_tx.clone(), gone_tx.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let line = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        if line.contains("/hang") {
                            let _ = seen_tx.send(line);
                        } else {
                            let _ = c
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                            head.clear();
                            continue;
                        }
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let _ = gone_tx.send(line);
            });
        }
    });
    let (_c, proxy) = gateway_to(&format!("http://127.0.0.1:{port}"), &[]).await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    s.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let arrived = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await;
    assert!(arrived.is_ok(), "the request never reached the target");
    drop(s);
    let dropped = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match gone.recv().await {
                Some(line) if line.contains("/hang") => return,
                Some(_) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(
        dropped.is_ok(),
        "the proxy kept waiting on the target after its client hung up"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let up = Upstream::start("u").await;
    let (_c, proxy) = gateway_to(&up.url(), &["--header-read-timeout-ms", "300"]).await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(next_answer(&mut s, &mut buf, "GET").await.status, 200);
    assert!(
        closes(&mut s, Duration::from_secs(10)).await,
        "an idle client connection was kept open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_answers_are_framed_and_dated() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let proxy = cluster.proxy_addr(1).await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let a = next_answer(&mut s, &mut buf, "GET").await;
        assert_eq!(a.status, 404, "{}", a.head);
        assert!(a.head.contains("\r\ndate: "), "{}", a.head);
        assert!(a.head.contains("\r\ncontent-length: "), "{}", a.head);
        let v: serde_json::Value = serde_json::from_slice(&a.body).expect("JSON");
        assert!(v.to_string().contains("/nowhere"), "{v}");
    }
}

/// What a [`raw_target`] does after an answer.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Reads the connection's next request.
    KeepAlive,
    /// Closes the connection (the end of an answer without a length).
    Close,
}

/// A target on a raw socket that answers each request with `answer`, written as it is: the
/// fields a user's service sends, connection-level ones included.
async fn raw_target(answer: &'static [u8], then: Then) -> (String, tokio::task::JoinHandle<()>) {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", target.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let (mut c, _) = target.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: its head, then the body its Content-Length announces.
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let body: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |n| n.trim().parse().unwrap());
                    while buf.len() < end + body {
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + body);
                    if c.write_all(answer).await.is_err() || then == Then::Close {
                        return;
                    }
                }
            });
        }
    });
    (url, server)
}

/// The values of field `name` in a lower-cased head, in order.
fn values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}:");
    head.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targets_fields_reach_the_client_once_each_and_its_framing_is_the_proxys() {
    // Fields a target commonly sends, with the connection's own among them, a Date of its
    // own, an X-Request-Id of its own and a repeated field.
    let (url, server) = raw_target(
        b"HTTP/1.1 200 OK\r\nServer: target/1\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\
          Content-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
          X-Request-Id: theirs\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
          Content-Type: text/plain\r\n\r\nhello",
        Then::KeepAlive,
    )
    .await;
    let (_c, proxy) = gateway_to(&url, &[]).await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    let mut buf = Vec::new();
    // Our codec serves the GETs; the POST with a body goes through hyper.
    for (method, request) in [
        ("GET", &b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        (
            "POST",
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "GET",
            b"GET /c HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine\r\n\r\n",
        ),
    ] {
        s.write_all(request).await.unwrap();
        let a = next_answer(&mut s, &mut buf, method).await;
        let head = a.head.as_str();
        assert_eq!((a.status, &a.body[..]), (200, &b"hello"[..]), "{head}");
        assert_eq!(values(head, "server"), ["target/1"], "{head}");
        assert_eq!(
            values(head, "date"),
            ["tue, 01 jan 2030 00:00:00 gmt"],
            "{head}"
        );
        assert_eq!(values(head, "content-length"), ["5"], "{head}");
        assert_eq!(values(head, "content-type"), ["text/plain"], "{head}");
        assert_eq!(values(head, "set-cookie"), ["a=1", "b=2"], "{head}");
        assert!(values(head, "keep-alive").is_empty(), "{head}");
        assert!(values(head, "connection").is_empty(), "{head}");
        assert!(values(head, "transfer-encoding").is_empty(), "{head}");
        // Ours, not the target's: the client's own, or one made here.
        let id = values(head, "x-request-id");
        assert_eq!(id.len(), 1, "{head}");
        assert_ne!(id[0], "theirs", "{head}");
        if request.ends_with(b"mine\r\n\r\n") {
            assert_eq!(id[0], "mine", "{head}");
        }
        assert_eq!(values(head, "via"), ["1.1 konnect"], "{head}");
    }
    server.abort();

    // Chunked, with a Content-Length that must be ignored: the client gets the body framed
    // by the proxy, without either of the target's framing fields.
    let (url, server) = raw_target(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\
          X-A: b\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Then::KeepAlive,
    )
    .await;
    let (_c, proxy) = gateway_to(&url, &[]).await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let a = next_answer(&mut s, &mut buf, "GET").await;
        let head = a.head.as_str();
        assert_eq!((a.status, &a.body[..]), (200, &b"hello"[..]), "{head}");
        assert_eq!(values(head, "x-a"), ["b"], "{head}");
        assert!(values(head, "content-length").is_empty(), "{head}");
        assert_eq!(values(head, "transfer-encoding"), ["chunked"], "{head}");
        assert_eq!(values(head, "date").len(), 1, "{head}");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    // A GET: our own HTTP/1.1 codec serves it.
    let got = cut_off_when_not_reading(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_request_body_that_stops_reading_is_cut_off_too() {
    // A request with a body: hyper's HTTP/1.1 server has the connection.
    let got =
        cut_off_when_not_reading(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            .await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_reading_is_cut_off_too() {
    // HTTP/2 with prior knowledge, written by hand so that the client never reads: its
    // windows are opened wide so that flow control does not stop the proxy first.
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let wide = (1u32 << 31) - 1;
    // SETTINGS: INITIAL_WINDOW_SIZE (4) for every stream.
    let mut settings = 4u16.to_be_bytes().to_vec();
    settings.extend_from_slice(&wide.to_be_bytes());
    request.extend(frame(0x4, 0, 0, &settings));
    // WINDOW_UPDATE for the connection, up from its 65,535 bytes.
    request.extend(frame(0x8, 0, 0, &(wide - 65_535).to_be_bytes()));
    // HEADERS, END_STREAM | END_HEADERS: :method GET (static 2), :scheme http (static 6),
    // :path /big and :authority x (names from the static table, values literal).
    let mut block = vec![0x82, 0x86, 0x04, 4];
    block.extend_from_slice(b"/big");
    block.extend_from_slice(&[0x01, 1, b'x']);
    request.extend(frame(0x1, 0x5, 1, &block));
    let got = cut_off_when_not_reading(&request).await;
    // The proxy's first frame is its SETTINGS.
    assert_eq!(got.get(3), Some(&0x4), "{:?}", &got[..got.len().min(16)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stops_reading_is_cut_off_too() {
    // An upgrade: once the target has switched protocols, the proxy splices the client's
    // connection to the target's, and what the target sends goes to the client as it comes.
    let got = cut_off_when_not_reading(
        b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let head = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the switch's head");
    assert!(
        got.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&got[..head])
    );
    // Then the spliced bytes, until the cut.
    assert!(got.len() > head + 4, "nothing came through the splice");
}

/// Sends `request` for a 64 MiB answer (after a switch of protocols when it asks for a
/// WebSocket) and reads nothing. The proxy, started with a 500 ms send timeout, must close
/// the client's connection and the target's with it: the target's writes fail (without a send
/// timeout they would wait for ever), no sooner than the send timeout after the request, and
/// the client then finds its connection closed with less than the body. Returns what the
/// client got.
async fn cut_off_when_not_reading(request: &[u8]) -> Vec<u8> {
    // A target with a response far larger than the socket buffers between it and the client;
    // it reports how its connection ended.
    const BODY: usize = 64 << 20;
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", target.local_addr().unwrap());
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<String>();
    let server = tokio::spawn(async move {
        loop {
            let (mut c, _) = target.accept().await.unwrap();
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let upgrade = String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("\r\nupgrade: websocket\r\n");
                let outcome = async {
                    if upgrade {
                        // Switched: the 64 MiB are the WebSocket's bytes, with no end but ours.
                        c.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                              Upgrade: websocket\r\n\
                              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                        )
                        .await?;
                    } else {
                        c.write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").as_bytes(),
                        )
                        .await?;
                    }
                    let block = vec![b'x'; 1 << 20];
                    for _ in 0..BODY / block.len() {
                        c.write_all(&block).await?;
                    }
                    std::io::Result::Ok(())
                };
                let _ = ended_tx.send(match outcome.await {
                    Ok(()) => "sent it all".to_string(),
                    Err(e) => format!("cut off: {e}"),
                });
            });
        }
    });
    // The route allows WebSockets, for the upgrade; no other request asks for one. With no
    // `upgraded_idle` timeout, nothing but the send timeout ends a stalled splice.
    let (_c, proxy) = gateway_routing(
        &url,
        &["--client-send-timeout-ms", "500"],
        json!({"paths": ["/"], "service": "web", "websocket": true}),
    )
    .await;
    let mut s = TcpStream::connect(&proxy).await.unwrap();
    let sent = std::time::Instant::now();
    s.write_all(request).await.unwrap();
    // The check that the route is live was answered in full on a connection of its own.
    let cut_off = async {
        while let Some(outcome) = ended.recv().await {
            if outcome.starts_with("cut off") {
                return outcome;
            }
        }
        unreachable!("the target runs until aborted")
    };
    tokio::time::timeout(Duration::from_secs(60), cut_off)
        .await
        .expect("the target's connection to be cut off within 60 s");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "cut off {waited:?} after the request, before the send timeout could have passed"
    );
    // What the sockets still held, then the end (a reset would be an end too).
    let mut got = Vec::new();
    let _end = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("the proxy to have closed the client's connection");
    assert!(got.len() < BODY, "the client got the whole body");
    server.abort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_send_timeout_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_konnect"))
        .args([
            "serve",
            "--dev",
            "--client-send-timeout-ms",
            "0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--client-send-timeout-ms"), "{err}");
}

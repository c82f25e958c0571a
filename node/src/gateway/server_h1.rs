//! HTTP/1.1 from clients, our own server codec for the common request: HTTP/1.1 without a
//! body (every GET, and HEAD, DELETE or OPTIONS without one), over TCP or TLS, keep-alive and
//! pipelining included. It reads a head, runs the gateway's handler in the connection's own
//! task, and writes the response, its body streamed as it comes.
//!
//! Why not hyper's server for these: its HTTP/1 connection (dispatcher, per-request timer,
//! body channel, encoder) was a third of the proxy's instructions per request
//! (benches/README.md, "Instructions per request").
//!
//! Everything else goes to hyper for the rest of the connection ([`Served::Handoff`], the
//! bytes already read put back in front): a request with a body (a Content-Length other than
//! 0, or any Transfer-Encoding), an upgrade (websockets), `Expect`, CONNECT, HTTP/1.0, and
//! HTTP/2's prior-knowledge preface. hyper then also owns request-body framing and its
//! defences (Content-Length with Transfer-Encoding, Content-Lengths that differ).
//!
//! What this side enforces:
//! - Heads are parsed by `httparse`: no obs-fold, no bare CR or LF, valid tokens. A head
//!   longer than `max_head_bytes` or with more than [`MAX_HEADERS`] fields gets 431, anything
//!   else malformed 400; both close the connection.
//! - A client must deliver each head within `header_read_timeout` of the server starting to
//!   wait for it, idle keep-alive time included (as with hyper): a slow or silent client is
//!   closed (slowloris).
//! - The response is framed here: by its Content-Length when it has one (a body that runs
//!   short or long closes the connection), else by the body's exact size, else chunked.
//!   There is no body for HEAD, 1xx, 204 and 304.
//! - `Connection: close` from either side, and the drain on shutdown, close the connection
//!   after the response.
//! - A client that closes its connection while its request runs cancels the request (the
//!   handler's future is dropped), as hyper does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Body;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, Notify};
use tokio::time::{Instant, Sleep};

use super::body::{ProxyBody, RequestBody};
use super::h1::{eq_lower, lists_token, parse_decimal};

/// The most header fields accepted in a request head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Body chunks up to this size are copied behind the head (or the previous chunk) so that
/// one write sends both; larger ones are written on their own.
const COALESCE_BYTES: usize = 16 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Limits from the node's flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send a request head, idle keep-alive time included.
    pub header_read_timeout: Duration,
    /// The longest request head read (request line and headers).
    pub max_head_bytes: usize,
}

/// How a connection left this codec.
pub enum Served<I> {
    /// Closed: by the client, after `Connection: close`, an error, or the drain.
    Closed,
    /// A request this codec does not take is at the front of the connection's unread bytes:
    /// hyper serves the rest of the connection.
    Handoff(Rewound<I>),
}

/// Fields a handler adds to its response outside the header map, written after the map's
/// own (the proxy's X-Request-Id and Via: inserting them only to write them out cost more).
/// They must not decide the framing (no Content-Length, Transfer-Encoding or Connection).
pub trait ExtraFields {
    fn write(&self, out: &mut Vec<u8>);
    /// One of them is Date (none is then added).
    fn has_date(&self) -> bool;
}

/// Serves HTTP/1.1 requests on `io` with `handle` until the connection closes or a request
/// needs hyper.
pub async fn serve<I, H, F, X>(
    io: I,
    limits: Limits,
    drain: &mut DrainSignal,
    mut handle: H,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Box<Request<RequestBody>>) -> F,
    F: Future<Output = (Response<ProxyBody>, X)>,
    X: ExtraFields,
{
    let mut conn = Conn {
        io,
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        wbuf: Vec::with_capacity(1024),
        limits,
        timer: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
        drain,
    };
    // The handler's future lives here, in one allocation for the connection (as in hyper):
    // it is kilobytes, and moving it by value for each request cost more than its work.
    let mut in_flight: Pin<Box<Option<F>>> = Box::pin(None);
    loop {
        let (req, asked) = match conn.read_head().await {
            Next::Request(req, asked) => (req, asked),
            Next::NotOurs => {
                return Served::Handoff(Rewound {
                    prefix: conn.rbuf.freeze(),
                    io: conn.io,
                })
            }
            Next::Refuse(status) => {
                conn.refuse(status).await;
                return Served::Closed;
            }
            Next::Closed => return Served::Closed,
        };
        in_flight.set(Some(handle(req)));
        let Some((mut resp, extra)) = conn.run(in_flight.as_mut()).await else {
            return Served::Closed;
        };
        in_flight.set(None);
        let keep_alive = asked.keep_alive && !conn.drain.is_draining();
        let written = conn
            .write_response(&mut resp, &extra, &asked, keep_alive)
            .await;
        // Its body's end (or abandonment) is reported when it is dropped: before the next
        // request is read.
        drop(resp);
        if !matches!(written, Ok(true)) {
            let _ = conn.io.shutdown().await;
            return Served::Closed;
        }
    }
}

struct Conn<'d, I> {
    io: I,
    /// Bytes read and not yet consumed: the start of the next request.
    rbuf: BytesMut,
    /// The response being written; kept between responses for its capacity.
    wbuf: Vec<u8>,
    limits: Limits,
    /// Fires at or before the current head's deadline; see [`head_timeout`].
    timer: Pin<Box<Sleep>>,
    drain: &'d mut DrainSignal,
}

/// What a request's head asked of its response.
struct Asked {
    head: bool,
    keep_alive: bool,
    /// `TE: trailers`: the client takes trailer fields after a chunked body.
    trailers: bool,
}

enum Next {
    Request(Box<Request<RequestBody>>, Asked),
    NotOurs,
    Refuse(StatusCode),
    Closed,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<'_, I> {
    async fn read_head(&mut self) -> Next {
        let mut deadline = None;
        loop {
            if !self.rbuf.is_empty() {
                match parse_request(&self.rbuf) {
                    Parse::Complete(len, req, asked) => {
                        self.rbuf.advance(len);
                        return Next::Request(req, asked);
                    }
                    Parse::NotOurs => return Next::NotOurs,
                    Parse::Invalid(status) => return Next::Refuse(status),
                    Parse::Partial if self.rbuf.len() > self.limits.max_head_bytes => {
                        return Next::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
                    }
                    Parse::Partial => {}
                }
            }
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + self.limits.header_read_timeout);
            let Conn {
                io,
                rbuf,
                timer,
                drain,
                ..
            } = self;
            tokio::select! {
                biased;
                read = poll_fn(|cx| poll_fill(io, rbuf, cx)) => match read {
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) => {}
                },
                () = head_timeout(timer, deadline) => {
                    tracing::debug!("closing a client connection: no request head within the header read timeout");
                    return Next::Closed;
                }
                () = &mut **drain => return Next::Closed,
            }
        }
    }

    /// Runs the request while reading what the client sends meanwhile (its next, pipelined
    /// request), so that it leaving is noticed: None then, and the request is dropped.
    async fn run<F: Future>(&mut self, mut request: Pin<&mut Option<F>>) -> Option<F::Output> {
        poll_fn(|cx| {
            if let Some(request) = request.as_mut().as_pin_mut() {
                if let Poll::Ready(r) = request.poll(cx) {
                    return Poll::Ready(Some(r));
                }
            }
            while self.rbuf.len() < self.limits.max_head_bytes {
                match poll_fill(&mut self.io, &mut self.rbuf, cx) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes the response (borrowed: moving it in would copy its 128 bytes); true when the
    /// connection can take another request.
    async fn write_response(
        &mut self,
        resp: &mut Response<ProxyBody>,
        extra: &impl ExtraFields,
        asked: &Asked,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let status = resp.status();
        // 1xx and 204 have no length at all; HEAD and 304 keep the one they were given.
        let lengthless = status.is_informational() || status == StatusCode::NO_CONTENT;
        let bodiless = lengthless || asked.head || status == StatusCode::NOT_MODIFIED;

        let out = &mut self.wbuf;
        put_status_line(out, status);
        // One pass writes the fields and notes those that decide the framing.
        let (mut declared, mut closing, mut dated) = (None, false, false);
        for (name, value) in resp.headers() {
            if name == CONTENT_LENGTH {
                if lengthless {
                    continue;
                }
                let n = parse_decimal(value.as_bytes().trim_ascii()).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "invalid response Content-Length",
                    )
                })?;
                if declared.is_some_and(|d| d != n) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "response Content-Lengths that differ",
                    ));
                }
                declared = Some(n);
            } else if name == TRANSFER_ENCODING {
                // The framing is ours alone.
                continue;
            } else if name == CONNECTION {
                closing |= lists_token(value.as_bytes(), b"close");
            } else if name == DATE {
                dated = true;
            }
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        extra.write(out);
        let keep_alive = keep_alive && !closing;
        let body = resp.body_mut();
        let mut framing = if bodiless {
            Framing::Nothing
        } else if let Some(n) = declared {
            Framing::Length(n)
        } else if let Some(n) = body.size_hint().exact() {
            put_field(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
            Framing::Length(n)
        } else {
            put_field(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        };
        if !keep_alive && !closing {
            put_field(out, b"connection", b"close");
        }
        if !dated && !extra.has_date() {
            put_date(out);
        }
        out.extend_from_slice(b"\r\n");

        let mut trailers = None;
        if !matches!(framing, Framing::Nothing) {
            // hyper stops polling a body once it says it has ended; so does this loop.
            // Bytes a TLS stream may still hold after a write: flushed before waiting on the
            // body, so that each event of a stream reaches the client as it comes.
            let mut unflushed = false;
            while !body.is_end_stream() {
                let flush_first = unflushed || !self.wbuf.is_empty();
                let step = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending if flush_first => Poll::Ready(Step::Flush),
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
                })
                .await;
                let frame = match step {
                    Step::Flush => {
                        self.send(Wire::Buffer).await?;
                        self.send(Wire::Flush).await?;
                        self.wbuf.clear();
                        unflushed = false;
                        continue;
                    }
                    Step::Frame(None) => break,
                    Step::Frame(Some(Ok(frame))) => frame,
                    Step::Frame(Some(Err(e))) => {
                        // What was sent cannot be completed: close so the client sees that.
                        tracing::debug!(error = %e, "response body failed mid-way; closing the client connection");
                        self.send(Wire::Buffer).await?;
                        self.send(Wire::Flush).await?;
                        return Ok(false);
                    }
                };
                let mut data = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        if let (Ok(t), Framing::Chunked, true) =
                            (frame.into_trailers(), &framing, asked.trailers)
                        {
                            trailers = Some(t);
                        }
                        continue;
                    }
                };
                if data.is_empty() {
                    continue;
                }
                let mut overran = false;
                match &mut framing {
                    Framing::Length(left) => {
                        if data.len() as u64 > *left {
                            data.truncate(*left as usize);
                            overran = true;
                        }
                        *left -= data.len() as u64;
                    }
                    Framing::Chunked => {
                        let mut hex = [0u8; 16];
                        self.wbuf.extend_from_slice(hex_len(data.len(), &mut hex));
                        self.wbuf.extend_from_slice(b"\r\n");
                    }
                    Framing::Nothing => {}
                }
                if data.len() <= COALESCE_BYTES {
                    self.wbuf.extend_from_slice(&data);
                } else {
                    self.send(Wire::Buffer).await?;
                    self.wbuf.clear();
                    self.send(Wire::Data(&data)).await?;
                    unflushed = true;
                }
                if matches!(framing, Framing::Chunked) {
                    self.wbuf.extend_from_slice(b"\r\n");
                }
                if overran {
                    tracing::debug!("response body longer than its Content-Length; closing the client connection");
                    self.send(Wire::Buffer).await?;
                    self.send(Wire::Flush).await?;
                    return Ok(false);
                }
                if self.wbuf.len() >= COALESCE_BYTES {
                    self.send(Wire::Buffer).await?;
                    self.wbuf.clear();
                    unflushed = true;
                }
            }
        }
        let complete = match framing {
            Framing::Length(left) => left == 0,
            Framing::Chunked => {
                self.wbuf.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    put_field(&mut self.wbuf, name.as_str().as_bytes(), value.as_bytes());
                }
                self.wbuf.extend_from_slice(b"\r\n");
                true
            }
            Framing::Nothing => true,
        };
        if !self.wbuf.is_empty() {
            self.send(Wire::Buffer).await?;
        }
        // A no-op on TCP; a TLS stream sends what it still holds.
        self.send(Wire::Flush).await?;
        if !complete {
            tracing::debug!(
                "response body shorter than its Content-Length; closing the client connection"
            );
        }
        Ok(keep_alive && complete)
    }

    /// Answers a head this codec refuses, then closes.
    async fn refuse(&mut self, status: StatusCode) {
        let out = &mut self.wbuf;
        put_status_line(out, status);
        out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n");
        put_date(out);
        out.extend_from_slice(b"\r\n");
        let _ = self.send(Wire::Buffer).await;
        let _ = self.io.shutdown().await;
    }

    /// Writes `what` to the client. A client that stops reading makes this fail with
    /// `TimedOut` (the stream is a [`super::send_timeout::SendTimeout`]), and the caller
    /// closes the connection.
    async fn send(&mut self, what: Wire<'_>) -> io::Result<()> {
        match what {
            Wire::Buffer => self.io.write_all(&self.wbuf).await,
            Wire::Data(data) => self.io.write_all(data).await,
            Wire::Flush => self.io.flush().await,
        }
    }
}

/// What [`Conn::send`] writes.
enum Wire<'a> {
    /// The response bytes gathered in `wbuf`.
    Buffer,
    /// A large body chunk, written on its own.
    Data(&'a [u8]),
    /// Nothing more: what the stream still holds (a TLS stream's last records).
    Flush,
}

enum Framing {
    /// This many bytes are left to send.
    Length(u64),
    Chunked,
    Nothing,
}

enum Step {
    /// The body has nothing yet: send what is waiting first.
    Flush,
    Frame(Option<Result<hyper::body::Frame<Bytes>, super::body::BoxError>>),
}

/// Waits until `deadline`. The timer is re-armed only when it fires before the deadline: a
/// connection moves its deadline with every request, and one wake-up per timeout period
/// costs less than resetting a timer for each.
async fn head_timeout(timer: &mut Pin<Box<Sleep>>, deadline: Instant) {
    loop {
        timer.as_mut().await;
        if timer.deadline() >= deadline {
            return;
        }
        timer.as_mut().reset(deadline);
    }
}

enum Parse {
    /// The request is boxed here and stays in that box to the gateway's `proxy`: it is 232
    /// bytes, and by value it was copied about twelve times on the way (each async call takes
    /// it into its future, and again into its frame), some 350 instructions of `memcpy` per
    /// request against about 50 for the allocation (callgrind, `--dump-instr=yes`).
    Complete(usize, Box<Request<RequestBody>>, Asked),
    Partial,
    NotOurs,
    Invalid(StatusCode),
}

/// Parses the request head at the front of `buf`.
fn parse_request(buf: &[u8]) -> Parse {
    let preface = buf.len().min(H2_PREFACE.len());
    if buf[..preface] == H2_PREFACE[..preface] {
        return if preface == H2_PREFACE.len() {
            Parse::NotOurs
        } else {
            Parse::Partial
        };
    }
    // Not initialised up front: zeroing cost more than the parse.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parse::Invalid(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Err(_) => return Parse::Invalid(StatusCode::BAD_REQUEST),
    };
    if parsed.version != Some(1) {
        return Parse::NotOurs;
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Parse::Invalid(StatusCode::BAD_REQUEST);
    };
    if method == "CONNECT" {
        return Parse::NotOurs;
    }
    let mut asked = Asked {
        head: method == "HEAD",
        keep_alive: true,
        trailers: false,
    };
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        let value = field.value;
        let is = |n: &str| eq_lower(name, n.as_bytes());
        match name.len() {
            14 if is("content-length") && value.trim_ascii() != b"0" => return Parse::NotOurs,
            17 if is("transfer-encoding") => return Parse::NotOurs,
            7 if is("upgrade") => return Parse::NotOurs,
            6 if is("expect") => return Parse::NotOurs,
            10 if is("connection") => asked.keep_alive &= !lists_token(value, b"close"),
            2 if is("te") => asked.trailers |= lists_token(value, b"trailers"),
            _ => {}
        }
    }

    // Values are slices of one copy of the head: the read buffer stays ours to reuse.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let slice = |part: &[u8]| {
        let at = part.as_ptr() as usize - base;
        head.slice(at..at + part.len())
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::Invalid(StatusCode::BAD_REQUEST);
    };
    let Ok(uri) = Uri::from_maybe_shared(slice(target.as_bytes())) else {
        return Parse::Invalid(StatusCode::BAD_REQUEST);
    };
    // Room for the request's own fields only: the proxy's own reach our client's requests
    // outside the map (`headers::UpstreamFields`); a transformation that adds fields grows
    // it. (Room for eight more made a map of 16 slots and 12 entries for every request.)
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parse::Invalid(StatusCode::BAD_REQUEST);
        };
        // SAFETY: httparse accepted the value, so it holds only HTAB, SP, visible ASCII and
        // obs-text bytes: exactly what a HeaderValue allows (hyper relies on the same).
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(slice(field.value)) };
        headers.append(name, value);
    }
    let mut req = Box::new(Request::new(RequestBody::Empty));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Parse::Complete(len, req, asked)
}

/// Starts `out` afresh with the status line.
fn put_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `len` in lower-case hexadecimal, as a chunk size.
fn hex_len(len: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    let mut n = len;
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Writes a `date` field, formatted once a second per thread.
fn put_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        put_field(out, b"date", text.as_bytes());
    });
}

/// Reads more from `io` into `buf`; 0 at the end of the stream.
fn poll_fill<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    super::h1::poll_fill(io, buf, READ_CHUNK, cx)
}

/// A connection handed to hyper with the bytes this codec already read put back in front.
pub struct Rewound<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewound<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewound<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Tells every open client connection to finish, on shutdown, and knows when the last one
/// has. Each connection registers once and waits on a signal of its own: polling it on every
/// request takes no lock shared with other connections (a `watch` channel's would).
#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    next_id: AtomicU64,
    connections: Mutex<Connections>,
    /// Woken when the last connection's signal is dropped.
    all_closed: Notify,
}

#[derive(Default)]
struct Connections {
    /// The signals not yet sent, by connection.
    waiting: HashMap<u64, oneshot::Sender<()>>,
    /// Connections whose [`DrainSignal`] is alive (their task holds it to its end).
    open: usize,
}

impl Drain {
    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A signal for one connection, held by its task until the connection ends.
    pub fn signal(self: &Arc<Self>) -> DrainSignal {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut connections = self.connections();
        connections.open += 1;
        // Checked under the lock `start` takes, so no connection misses the signal.
        if !self.draining.load(Ordering::Relaxed) {
            connections.waiting.insert(id, tx);
        }
        DrainSignal {
            rx,
            id,
            drain: self.clone(),
        }
    }

    /// Signals every connection, and every one registered from now on.
    pub fn start(&self) {
        let mut connections = self.connections();
        self.draining.store(true, Ordering::Relaxed);
        for (_, tx) in connections.waiting.drain() {
            let _ = tx.send(());
        }
    }

    /// Returns once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let woken = self.all_closed.notified();
            let mut woken = std::pin::pin!(woken);
            // Registered before looking, so a close in between is not missed.
            woken.as_mut().enable();
            if self.connections().open == 0 {
                return;
            }
            woken.await;
        }
    }
}

/// Resolves when the node drains; see [`Drain`].
pub struct DrainSignal {
    rx: oneshot::Receiver<()>,
    id: u64,
    drain: Arc<Drain>,
}

impl DrainSignal {
    pub fn is_draining(&self) -> bool {
        self.drain.draining.load(Ordering::Relaxed)
    }
}

impl Future for DrainSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Sent or dropped, both only by `start`.
        Pin::new(&mut self.rx).poll(cx).map(|_| ())
    }
}

impl Drop for DrainSignal {
    fn drop(&mut self) {
        let mut connections = self.drain.connections();
        connections.waiting.remove(&self.id);
        connections.open -= 1;
        if connections.open == 0 {
            self.drain.all_closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &[u8]) -> (usize, Box<Request<RequestBody>>, Asked) {
        match parse_request(head) {
            Parse::Complete(len, req, asked) => (len, req, asked),
            Parse::Partial => panic!("partial"),
            Parse::NotOurs => panic!("not ours"),
            Parse::Invalid(s) => panic!("invalid: {s}"),
        }
    }

    #[test]
    fn a_plain_get_is_ours_with_its_fields_in_order() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next";
        let (len, req, asked) = parsed(raw);
        assert_eq!(len, raw.len() - b"GET /next".len());
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        let values: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert!(asked.keep_alive && !asked.head && !asked.trailers);
        let (_, _, asked) =
            parsed(b"HEAD / HTTP/1.1\r\nConnection: keep-alive, Close\r\nTE: trailers\r\n\r\n");
        assert!(asked.head && !asked.keep_alive && asked.trailers);
    }

    #[test]
    fn requests_with_a_body_an_upgrade_or_another_version_go_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\n\r\n",
            H2_PREFACE,
        ] {
            assert!(
                matches!(parse_request(raw), Parse::NotOurs),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let (_, req, _) = parsed(b"DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(req.method(), Method::DELETE);
    }

    #[test]
    fn malformed_heads_are_refused_and_partial_ones_wait() {
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n"),
            Parse::Invalid(StatusCode::BAD_REQUEST)
        ));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nX A: a\r\n\r\n"),
            Parse::Invalid(StatusCode::BAD_REQUEST)
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(matches!(
            parse_request(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Parse::Invalid(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        ));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parse::Partial
        ));
        assert!(matches!(parse_request(b"PRI * HTTP/2"), Parse::Partial));
    }

    #[tokio::test]
    async fn the_drain_signals_every_connection_and_ends_with_the_last() {
        let drain = Arc::new(Drain::default());
        let (mut first, second) = (drain.signal(), drain.signal());
        drain.start();
        (&mut first).await;
        assert!(first.is_draining());
        // One opened during the drain is told at once.
        let late = drain.signal();
        late.await;
        let mut closed = std::pin::pin!(drain.all_closed());
        assert!(poll_once(closed.as_mut()).is_pending(), "two still open");
        drop(first);
        assert!(poll_once(closed.as_mut()).is_pending(), "one still open");
        drop(second);
        closed.await;
    }

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        let mut buf = [0u8; 16];
        assert_eq!(hex_len(0, &mut buf), b"0");
        assert_eq!(hex_len(255, &mut buf), b"ff");
        assert_eq!(hex_len(4096, &mut buf), b"1000");
    }
}

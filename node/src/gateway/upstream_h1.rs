//! HTTP/1.1 to a target, our own codec, for the common exchange: a request whose body is
//! already in memory (every GET, and the small bodies the gateway buffers for retries) on a
//! pooled connection, read back in the request's own task.
//!
//! Why not hyper's client here: it drives each connection from a task of its own and passes
//! every request and response across channels between the two tasks; with its parsing and
//! encoding that was 30% of the proxy's instructions per request (benches/README.md). Requests
//! that stream their body, ask for a protocol upgrade or go to HTTP/2 targets still use hyper
//! (`pool.rs`).
//!
//! What this side enforces (RFC 9112), since a confused framing here would let one response
//! spill into the next:
//! - The request is framed only by the Content-Length written here (any incoming
//!   Content-Length or Transfer-Encoding header is dropped first).
//! - Response heads are parsed by `httparse` (no obs-fold, no bare CR), at most
//!   [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] headers; 1xx heads are skipped.
//! - Body framing: none for HEAD, 1xx, 204 and 304; else Transfer-Encoding ending in chunked
//!   (any Content-Length then ignored and removed); else one Content-Length (differing values
//!   are an invalid response); else until the upstream closes.
//! - Chunked trailer fields are parsed like a head (`httparse`, at most [`MAX_HEAD_BYTES`]
//!   and [`MAX_HEADERS`] fields, CRLF line ends; anything else makes the body fail) and
//!   passed on as the body's trailers frame, as hyper does, without the fields that only a
//!   head may carry (framing, routing, authentication, connection-specific: see
//!   `allowed_in_trailers`).
//! - A response that arrives while the request is still being written (the target refuses
//!   an upload on sight of its head: 413, 401) is delivered, as with hyper: while the socket
//!   takes no more of the request, the target's answer is read; the rest of the request is
//!   then written alongside the response body as far as the target takes it. When writing
//!   fails (the target answered and reset the connection), a response already received is
//!   still delivered. A request that fits the socket at once costs one write and no read.
//! - A connection goes back to the pool only when the whole request was written and the
//!   whole body read, nothing else arrived after it, the response was HTTP/1.1 without
//!   `Connection: close`, and its framing was unambiguous. Anything else closes it.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use hyper::{HeaderMap, Method, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::BoxError;
use super::h1::{eq_lower, lists_only, lists_token, parse_decimal, Runs, WireFields};
use super::headers::UpstreamFields;
use super::pool::{Io, PoolShared};

/// The largest response head accepted from a target.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields accepted in a response head.
pub const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (size, extensions) in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// An open HTTP/1.1 connection to a target with nothing in flight.
pub struct Connection {
    /// Boxed: a TLS stream is about a kilobyte, and the connection moves in and out of the
    /// pool and into each response body.
    io: Box<TokioIo<Io>>,
    /// Bytes read but not yet consumed; empty whenever the connection is idle.
    buf: BytesMut,
    /// The deadline of the exchange under way, made on the first and moved on by each next
    /// one: a later deadline only updates the registered timer (one atomic step), where a
    /// timer per request cost a registration and a removal under the timer wheel's lock.
    /// Between exchanges it may still go off once, waking a task that then finds nothing.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A request whose body is in memory, ready to be written.
pub struct BufferedRequest<'a> {
    pub method: Method,
    /// Origin form: path and query.
    pub target: String,
    /// The Host field, written first; a Host in `headers` is not written.
    pub host: HeaderValue,
    /// Borrowed: the request's own fields stay with the caller, for another attempt after
    /// this one (a retry, or a connect failure) without a copy.
    pub headers: &'a HeaderMap,
    /// The proxy's own fields, written after `headers`.
    pub added: Option<&'a UpstreamFields<'a>>,
    pub body: Bytes,
    /// The caller reads none of the response's fields: they may stay in wire form
    /// ([`WireFields`], taken with [`UpstreamBody::take_wire_fields`]).
    pub wire_fields: bool,
}

impl Connection {
    pub fn new(io: Io) -> Connection {
        Connection {
            io: Box::new(TokioIo::new(io)),
            buf: BytesMut::new(),
            timer: None,
        }
    }

    /// Whether an idle connection is still usable: the target has neither closed it nor sent
    /// anything unasked. Never waits (a readiness check, a syscall only when the socket
    /// became readable).
    pub fn is_usable(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut *self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Writes the request and reads the response head. The body is read as the caller polls
    /// the response's [`ResponseBody`], which gives the connection back to `pool` (for
    /// `target`) when it may be reused.
    ///
    /// While the target takes no more of the request, its answer is watched for: a final
    /// response that comes before the whole request was written (a 413 or 401 refusing the
    /// upload) is returned at once, and the rest of the request is written alongside the
    /// response body while the target takes it. When writing fails (the target answered and
    /// reset the connection), a response already received is still returned.
    ///
    /// Everything up to the final response head must be done by `deadline`, or the exchange
    /// fails with [`ExchangeError::TimedOut`].
    pub async fn exchange(
        mut self,
        req: &EncodedRequest,
        deadline: std::time::Instant,
        pool: Arc<PoolShared>,
        target: usize,
    ) -> Result<UpstreamResponse, ExchangeError> {
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline.into()),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline.into()))),
        }
        let mut written = 0;
        let sent = poll_fn(|cx| match self.poll_send(req, &mut written, cx) {
            Poll::Pending => self.poll_timed_out(cx),
            ready => ready,
        })
        .await?;
        if !matches!(sent, Sent::All) {
            // Rare; boxed so that it adds nothing to the common case's future.
            return Box::pin(self.finish_cut_short(sent, req, written, pool, target)).await;
        }
        loop {
            let head = self.read_head(req.wire_fields).await?;
            // Informational answers (100 Continue, 103 Early Hints) precede the real one.
            if head.status.is_informational() {
                check_informational(&head)?;
                continue;
            }
            return self.into_response(head, req.head_only, None, pool, target);
        }
    }

    /// The response to a request the target did not take whole (`sent` says why; `written`
    /// bytes of it went out). Nothing more is written except after an early answer, and the
    /// connection is not reused.
    async fn finish_cut_short(
        mut self,
        sent: Sent,
        req: &EncodedRequest,
        written: usize,
        pool: Arc<PoolShared>,
        target: usize,
    ) -> Result<UpstreamResponse, ExchangeError> {
        let (head, unsent) = match sent {
            Sent::Answered(head) => (*head, req.unsent_from(written)),
            sent => {
                let mut read = self.read_head(req.wire_fields).await;
                while let Ok(head) = &read {
                    if !head.status.is_informational() {
                        break;
                    }
                    check_informational(head)?;
                    read = self.read_head(req.wire_fields).await;
                }
                match (sent, read) {
                    // Nothing came back from a target that stopped taking the request: that
                    // failure is the news.
                    (Sent::Failed(write_error), Err(e))
                        if !matches!(e, ExchangeError::Invalid(_) | ExchangeError::TimedOut) =>
                    {
                        return Err(ExchangeError::Io(write_error))
                    }
                    // The target's side ended (the read says how), or it answered before
                    // writing failed.
                    (_, read) => (read?, Bytes::new()),
                }
            }
        };
        self.into_response(head, req.head_only, Some(unsent), pool, target)
    }

    /// Writes the request from byte `written` on; whenever the socket takes no more for now,
    /// reads what the target sent meanwhile, and ends early on a final response head. In the
    /// common case (the socket takes the request at once) this is one write and a flush.
    fn poll_send(
        &mut self,
        req: &EncodedRequest,
        written: &mut usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Sent, ExchangeError>> {
        loop {
            let rest = req.unsent_slice(*written);
            let step = if rest.is_empty() {
                // A TLS stream may hold the last records back until flushed.
                match Pin::new(&mut *self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(Sent::All)),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            } else {
                match Pin::new(&mut *self.io).poll_write(cx, rest) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        *written += n;
                        continue;
                    }
                    other => other.map_ok(|_| ()),
                }
            };
            match step {
                Poll::Ready(Err(e)) => return Poll::Ready(Ok(Sent::Failed(e))),
                Poll::Ready(Ok(())) => continue,
                // The target takes no more for now: it may have answered already.
                Poll::Pending => return self.poll_early_answer(req.wire_fields, cx),
            }
        }
    }

    /// What the target sent while the request was still going out: Pending until a final
    /// response head (1xx ones are skipped) or the end of its side of the connection.
    fn poll_early_answer(
        &mut self,
        wire_fields: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Sent, ExchangeError>> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf, wire_fields)? {
                    if head.status.is_informational() {
                        check_informational(&head)?;
                        continue;
                    }
                    return Poll::Ready(Ok(Sent::Answered(Box::new(head))));
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Poll::Ready(Err(head_too_large()));
                }
            }
            match poll_fill(&mut self.io, &mut self.buf, cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Sent::ReadEnded)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads more from the socket into `buf`; 0 at the end of the stream.
    async fn fill(&mut self) -> Result<usize, ExchangeError> {
        poll_fn(|cx| match poll_fill(&mut self.io, &mut self.buf, cx) {
            Poll::Pending => self.poll_timed_out(cx),
            ready => ready.map_err(ExchangeError::Io),
        })
        .await
    }

    /// Ready with [`ExchangeError::TimedOut`] once the exchange's deadline has passed.
    fn poll_timed_out<T>(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, ExchangeError>> {
        match self
            .timer
            .as_mut()
            .map(|t| std::future::Future::poll(t.as_mut(), cx))
        {
            Some(Poll::Ready(())) => Poll::Ready(Err(ExchangeError::TimedOut)),
            _ => Poll::Pending,
        }
    }

    async fn read_head(&mut self, wire: bool) -> Result<Head, ExchangeError> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf, wire)? {
                    return Ok(head);
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Err(head_too_large());
                }
            }
            let had = self.buf.len();
            if self.fill().await? == 0 {
                return Err(if had == 0 {
                    ExchangeError::ClosedBeforeResponse
                } else {
                    ExchangeError::Invalid("the connection closed inside the response head".into())
                });
            }
        }
    }

    /// The response around its head. `unsent`: what is left of a request the target answered
    /// before taking all of it (empty when nothing more can be written); the connection is
    /// then closed after the response.
    fn into_response(
        self,
        mut head: Head,
        head_only: bool,
        unsent: Option<Bytes>,
        pool: Arc<PoolShared>,
        target: usize,
    ) -> Result<UpstreamResponse, ExchangeError> {
        let mut reusable = unsent.is_none() && head.version == Version::HTTP_11 && !head.close;
        let status = head.status;
        let framing = if head_only
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if head.transfer_encoding {
            if !matches!(head.content_length, Ok(None)) {
                // Both: the length is ignored, and the connection not trusted afterwards.
                if let Fields::Map(headers) = &mut head.fields {
                    headers.remove(CONTENT_LENGTH);
                }
                reusable = false;
            }
            if head.chunked {
                Framing::Chunked(Chunked::Size)
            } else {
                Framing::UntilClose
            }
        } else if let Some(len) = head.content_length.map_err(ExchangeError::Invalid)? {
            Framing::Length(len)
        } else {
            Framing::UntilClose
        };
        if matches!(framing, Framing::UntilClose) {
            reusable = false;
        }
        let (headers, wire) = match head.fields {
            Fields::Map(headers) => (headers, None),
            Fields::Wire(wire) => (HeaderMap::new(), Some(wire)),
        };
        let mut body = ResponseBody {
            wire,
            conn: Some(self),
            unsent: unsent.filter(|rest| !rest.is_empty()).map(Box::new),
            framing,
            reusable,
            pool,
            target,
        };
        body.release_if_done();
        let mut resp = Box::new(Response::new(UpstreamBody::Own(body)));
        *resp.status_mut() = status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

/// How writing a request ended.
enum Sent {
    /// All of it, flushed.
    All,
    /// The target's final response head came before the whole request was written (boxed:
    /// this rare case would make the common one move a larger value).
    Answered(Box<Head>),
    /// The target's side of the connection ended before its answer was complete.
    ReadEnded,
    /// Writing failed; the target may still have answered before that.
    Failed(io::Error),
}

fn head_too_large() -> ExchangeError {
    ExchangeError::Invalid(format!(
        "the response head is larger than {MAX_HEAD_BYTES} bytes"
    ))
}

/// Informational answers are skipped, except a switch of protocols nobody asked for.
fn check_informational(head: &Head) -> Result<(), ExchangeError> {
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ExchangeError::Invalid(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        ));
    }
    Ok(())
}

/// A request as it goes on the wire, kept until its response head arrives so that it can be
/// written again on another connection.
pub struct EncodedRequest {
    /// The head, and the body when small.
    wire: Vec<u8>,
    /// A body too large to copy behind the head, written after it.
    large_body: Option<Bytes>,
    /// The response's fields may stay in wire form (see [`BufferedRequest::wire_fields`];
    /// never for a HEAD, whose answer's Content-Length must pass).
    wire_fields: bool,
    head_only: bool,
    /// Idempotent (RFC 9110 9.2.2): safe to send again when a reused connection closed
    /// before any byte of a response.
    pub resendable: bool,
}

impl EncodedRequest {
    /// The bytes from `written` on that are still to be written (head and small body first,
    /// then a large body), as one slice of either.
    fn unsent_slice(&self, written: usize) -> &[u8] {
        match written.checked_sub(self.wire.len()) {
            None => &self.wire[written..],
            Some(into_body) => self
                .large_body
                .as_ref()
                .map_or(&[][..], |b| b.get(into_body..).unwrap_or_default()),
        }
    }

    /// Everything from `written` on, in one buffer: what is left to write after an early
    /// answer (rare, so a copy of the head's part is fine).
    fn unsent_from(&self, written: usize) -> Bytes {
        match written.checked_sub(self.wire.len()) {
            None => {
                let mut rest = BytesMut::from(&self.wire[written..]);
                if let Some(body) = &self.large_body {
                    rest.extend_from_slice(body);
                }
                rest.freeze()
            }
            Some(into_body) => self
                .large_body
                .as_ref()
                .map_or_else(Bytes::new, |b| b.slice(into_body.min(b.len())..)),
        }
    }
}

impl BufferedRequest<'_> {
    /// The request in HTTP/1.1 wire form, framed by its Content-Length alone.
    pub fn encode(self) -> EncodedRequest {
        let req = self;
        // Sized exactly up front: growing the buffer mid-way cost more than this pass.
        let fields: usize = req
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let mut out = Vec::with_capacity(
            req.method.as_str().len()
                + req.target.len()
                + req.host.len()
                + fields
                + req.added.map_or(0, UpstreamFields::wire_len)
                + 64
                + req.body.len().min(16 * 1024),
        );
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(req.host.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in req.headers {
            // The body here is framed by its length alone; Host is the target's, above.
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == HOST {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(added) = req.added {
            added.write(&mut out);
        }
        if !req.body.is_empty() || method_has_body(&req.method) {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(req.body.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let large_body = if req.body.len() > 16 * 1024 {
            Some(req.body)
        } else {
            out.extend_from_slice(&req.body);
            None
        };
        EncodedRequest {
            wire: out,
            large_body,
            wire_fields: req.wire_fields && req.method != Method::HEAD,
            head_only: req.method == Method::HEAD,
            resendable: super::is_idempotent(&req.method),
        }
    }
}

/// Why an exchange failed after the connection was open.
#[derive(Debug)]
pub enum ExchangeError {
    /// Writing or reading failed (reset, broken pipe).
    Io(io::Error),
    /// The target closed the connection before any byte of a response.
    ClosedBeforeResponse,
    /// The target's answer is not valid HTTP/1.1.
    Invalid(String),
    /// No final response head by the exchange's deadline.
    TimedOut,
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Io(e) => write!(f, "connection error: {e}"),
            ExchangeError::ClosedBeforeResponse => {
                f.write_str("the connection closed before a response")
            }
            ExchangeError::Invalid(why) => write!(f, "invalid response: {why}"),
            ExchangeError::TimedOut => f.write_str("no response before the deadline"),
        }
    }
}

impl std::error::Error for ExchangeError {}

struct Head {
    status: StatusCode,
    version: Version,
    /// Without `Connection` when it only said keep-alive or close, and without `Keep-Alive`:
    /// both concern this connection alone, and the flags below say what they meant.
    fields: Fields,
    /// `Connection: close`: the target closes the connection after this response.
    close: bool,
    /// A Transfer-Encoding field is present.
    transfer_encoding: bool,
    /// The last transfer coding listed is chunked.
    chunked: bool,
    /// The Content-Length, when one is given (every value agreeing), or why it is invalid.
    content_length: Result<Option<u64>, String>,
}

/// A response's fields: in a header map, or as they came ([`WireFields`]).
enum Fields {
    Map(HeaderMap),
    Wire(WireFields),
}

/// Parses a complete head off the front of `buf`, or None when more bytes are needed.
/// `wire`: the fields may stay in wire form, when the response allows it (see
/// [`WireFields`]); else, and when it does not, they go to a header map.
fn parse_head(buf: &mut BytesMut, wire: bool) -> Result<Option<Head>, ExchangeError> {
    // Neither array is initialised up front: zeroing them cost more than the parse.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Invalid(format!(
                "more than {MAX_HEADERS} header fields"
            )))
        }
        Err(e) => return Err(ExchangeError::Invalid(e.to_string())),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
        .map_err(|_| ExchangeError::Invalid("status code out of range".into()))?;
    let version = if parsed.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Header values are slices of the one buffer holding the head: no copy each.
    let base = buf.as_ptr() as usize;
    let mut spans = [const { MaybeUninit::<[usize; 4]>::uninit() }; MAX_HEADERS];
    let mut count = 0;
    let mut close = false;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut content_length = Ok(None);
    // In wire form: the fields that frame the body, and the target's X-Request-Id, are left
    // out (bit i: the i-th span), and those that something must act on send the whole head
    // to a map instead.
    let mut left_out = 0u128;
    let mut wire = wire
        && !(status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED);
    let mut dated = false;
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        let is = |n: &str| eq_lower(name, n.as_bytes());
        match name.len() {
            4 if is("date") => dated = true,
            10 if is("connection") => {
                // The usual value first, without splitting a list.
                if eq_lower(field.value, b"keep-alive") {
                    continue;
                }
                close |= lists_token(field.value, b"close");
                if lists_only(field.value, &[b"keep-alive", b"close"]) {
                    continue;
                }
                // It names fields to remove (`headers::remove_hop_by_hop`).
                wire = false;
            }
            10 if is("keep-alive") => continue,
            12 if is("x-request-id") => left_out |= 1 << count,
            14 if is("content-length") => {
                left_out |= 1 << count;
                if let Ok(found) = &mut content_length {
                    if let Err(why) = add_content_length(found, field.value) {
                        content_length = Err(why);
                    }
                }
            }
            17 if is("transfer-encoding") => {
                left_out |= 1 << count;
                transfer_encoding = true;
                chunked = field
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            // Via is extended; the other hop-by-hop fields are removed.
            3 if is("via") => wire = false,
            // The other hop-by-hop fields of `headers::HOP_BY_HOP` (Connection, Keep-Alive and
            // Transfer-Encoding are settled above), spelled out: a lookup in that list cost
            // about 100 instructions per request. A test checks the two agree.
            2 | 7 | 16 | 18 | 19
                if is("te")
                    || is("trailer")
                    || is("upgrade")
                    || is("proxy-connection")
                    || is("proxy-authenticate")
                    || is("proxy-authorization") =>
            {
                wire = false
            }
            _ => {}
        }
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        spans[count].write([
            name,
            name + field.name.len(),
            value,
            value + field.value.len(),
        ]);
        count += 1;
    }
    let head = buf.split_to(len).freeze();
    // SAFETY: the loop above wrote the first `count` spans (one per parsed header).
    let spans = || {
        spans[..count]
            .iter()
            .map(|span| unsafe { span.assume_init() })
    };
    let mut runs = Runs::default();
    // Each kept field's whole line, from its name to its line end, which must be a CRLF.
    let wire = wire
        && spans()
            .enumerate()
            .filter(|(i, _)| left_out & (1 << i) == 0)
            .all(|(_, [ns, _, _, ve])| {
                match head
                    .get(ve..)
                    .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
                {
                    Some(n) if n > 0 && head[ve + n - 1] == b'\r' => runs.push(ns, ve + n + 1),
                    _ => false,
                }
            });
    let fields = if wire {
        Fields::Wire(WireFields::new(head, runs, dated))
    } else {
        // Room for what the proxy adds to a response (Via, X-Request-Id) without growing.
        let mut headers = HeaderMap::with_capacity(count + 2);
        for [ns, ne, vs, ve] in spans() {
            let name = HeaderName::from_bytes(&head[ns..ne])
                .map_err(|_| ExchangeError::Invalid("invalid header name".into()))?;
            // SAFETY: httparse accepted the value, so it holds only HTAB, SP, visible ASCII
            // and obs-text bytes: exactly what a HeaderValue allows (hyper relies on the
            // same).
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(vs..ve)) };
            headers.append(name, value);
        }
        Fields::Map(headers)
    };
    Ok(Some(Head {
        status,
        version,
        fields,
        close,
        transfer_encoding,
        chunked,
        content_length,
    }))
}

/// Adds one Content-Length field's value to what `found` holds: `Content-Length: 5, 5`, or
/// the field twice, is allowed when every value agrees.
fn add_content_length(found: &mut Option<u64>, value: &[u8]) -> Result<(), String> {
    for part in value.split(|b| *b == b',') {
        let n = parse_decimal(part.trim_ascii()).ok_or_else(|| {
            format!(
                "invalid Content-Length {:?}",
                String::from_utf8_lossy(value)
            )
        })?;
        if found.is_some_and(|f| f != n) {
            return Err("Content-Length values that differ".into());
        }
        *found = Some(n);
    }
    Ok(())
}

/// Methods whose requests carry a body by definition: an empty one is sent as
/// `content-length: 0` (some servers refuse a POST without a length).
fn method_has_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

fn poll_fill(
    io: &mut Box<TokioIo<Io>>,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    super::h1::poll_fill(&mut **io, buf, READ_CHUNK, cx)
}

/// Writes as much of `rest` as the socket takes now; true once the writing is over: all of
/// it written and flushed, or failed (the target answered already; what it does with a
/// request cut short is its business, and the connection is not reused).
fn write_some(io: &mut Box<TokioIo<Io>>, rest: &mut Bytes, cx: &mut Context<'_>) -> bool {
    while !rest.is_empty() {
        match Pin::new(&mut **io).poll_write(cx, rest) {
            Poll::Ready(Ok(n)) if n > 0 => rest.advance(n),
            Poll::Ready(_) => return true,
            Poll::Pending => return false,
        }
    }
    !matches!(Pin::new(&mut **io).poll_flush(cx), Poll::Pending)
}

enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the target closes.
    UntilClose,
    /// The body is over.
    Done,
}

#[derive(Clone, Copy)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes left, then CRLF.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section, up to an empty line; `scanned` bytes of the
    /// buffer are known not to hold its end yet.
    Trailers { scanned: usize },
}

/// A response body read from the target's connection as the client takes it.
pub struct ResponseBody {
    /// The head's fields when they came in wire form (the map is then empty), until taken.
    wire: Option<WireFields>,
    conn: Option<Connection>,
    /// The rest of a request the target answered before taking all of it, written whenever
    /// the body waits for the target (it may want the rest before it sends more). Boxed: it
    /// is rare, and a smaller response costs less in each of its moves (see `RequestBody`).
    unsent: Option<Box<Bytes>>,
    framing: Framing,
    reusable: bool,
    pool: Arc<PoolShared>,
    target: usize,
}

impl ResponseBody {
    /// Once the body is complete: the connection back to the pool when it may serve another
    /// request, else closed.
    fn release_if_done(&mut self) {
        if matches!(self.framing, Framing::Length(0)) {
            self.framing = Framing::Done;
        }
        if !matches!(self.framing, Framing::Done) {
            return;
        }
        if let Some(conn) = self.conn.take() {
            // Bytes after the end of the body were not asked for: do not reuse.
            if self.reusable && conn.buf.is_empty() {
                self.pool.put_back_h1(self.target, conn);
            }
        }
    }

    fn fail(&mut self, why: impl Into<String>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(why.into().into())))
    }

    /// Reads more bytes; an error frame when the connection ends early.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, String>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err("the connection is gone".into()));
        };
        if let Some(rest) = self.unsent.as_mut() {
            if write_some(&mut conn.io, rest, cx) {
                self.unsent = None;
            }
        }
        match poll_fill(&mut conn.io, &mut conn.buf, cx) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(format!("reading the response body: {e}"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.release_if_done();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    let buffered = this.conn.as_ref().map_or(0, |c| c.buf.len());
                    if buffered == 0 {
                        match this.poll_more(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(e)) => return this.fail(e),
                            Poll::Ready(Ok(0)) => {
                                return this.fail(format!(
                                    "the target closed the connection with {left} body bytes still to come"
                                ))
                            }
                            Poll::Ready(Ok(_)) => continue,
                        }
                    }
                    let take = (buffered as u64).min(left) as usize;
                    let data = this.conn.as_mut().map(|c| c.buf.split_to(take).freeze());
                    this.framing = Framing::Length(left - take as u64);
                    this.release_if_done();
                    return Poll::Ready(data.map(|d| Ok(Frame::data(d))));
                }
                Framing::UntilClose if this.conn.as_ref().is_some_and(|c| !c.buf.is_empty()) => {
                    let data = this.conn.as_mut().map(|c| c.buf.split().freeze());
                    return Poll::Ready(data.map(|d| Ok(Frame::data(d))));
                }
                Framing::UntilClose => match this.poll_more(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return this.fail(e),
                    Poll::Ready(Ok(0)) => {
                        this.framing = Framing::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(_)) => {
                        let data = this.conn.as_mut().map(|c| c.buf.split().freeze());
                        return Poll::Ready(data.map(|d| Ok(Frame::data(d))));
                    }
                },
                Framing::Chunked(state) => {
                    let step = match this.conn.as_mut() {
                        Some(conn) => chunk_step(&mut conn.buf, state),
                        None => return this.fail("the connection is gone"),
                    };
                    match step {
                        Ok(ChunkStep::Data(data, next)) => {
                            this.framing = Framing::Chunked(next);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(ChunkStep::Next(next)) => this.framing = Framing::Chunked(next),
                        Ok(ChunkStep::End(trailers)) => {
                            this.framing = Framing::Done;
                            this.release_if_done();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Ok(ChunkStep::NeedMore(resume)) => match this.poll_more(cx) {
                            Poll::Pending => {
                                this.framing = Framing::Chunked(resume);
                                return Poll::Pending;
                            }
                            Poll::Ready(Err(e)) => return this.fail(e),
                            Poll::Ready(Ok(0)) => {
                                return this
                                    .fail("the target closed the connection inside a chunked body")
                            }
                            Poll::Ready(Ok(_)) => this.framing = Framing::Chunked(resume),
                        },
                        Err(why) => return this.fail(format!("invalid chunked body: {why}")),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

enum ChunkStep {
    /// Data to pass on, and the state after it.
    Data(Bytes, Chunked),
    /// Framing consumed; go on in this state.
    Next(Chunked),
    /// The last chunk and the trailer section are read; the trailer fields to pass on, if any.
    End(Option<HeaderMap>),
    /// The buffer ends before the next step; go on in this state once there is more.
    NeedMore(Chunked),
}

/// One step of decoding a chunked body from the front of `buf`.
fn chunk_step(buf: &mut BytesMut, state: Chunked) -> Result<ChunkStep, String> {
    match state {
        Chunked::Size => {
            let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                return Ok(ChunkStep::NeedMore(state));
            };
            // chunk-size [ ; extensions ]: the extensions are ignored.
            let size = line
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!(
                    "chunk size {:?} is not hexadecimal",
                    String::from_utf8_lossy(size)
                ));
            }
            let n = size.iter().fold(0u64, |n, d| {
                n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
            });
            Ok(ChunkStep::Next(if n == 0 {
                Chunked::Trailers { scanned: 0 }
            } else {
                Chunked::Data(n)
            }))
        }
        Chunked::Data(left) => {
            if buf.is_empty() {
                return Ok(ChunkStep::NeedMore(state));
            }
            let take = (buf.len() as u64).min(left) as usize;
            let data = buf.split_to(take).freeze();
            let next = if take as u64 == left {
                Chunked::DataEnd
            } else {
                Chunked::Data(left - take as u64)
            };
            Ok(ChunkStep::Data(data, next))
        }
        Chunked::DataEnd => {
            if buf.len() < 2 {
                return Ok(ChunkStep::NeedMore(state));
            }
            if &buf[..2] != b"\r\n" {
                return Err("chunk data is not followed by CRLF".into());
            }
            buf.advance(2);
            Ok(ChunkStep::Next(Chunked::Size))
        }
        Chunked::Trailers { scanned } => {
            // Usually no trailers: the section is just its closing empty line.
            if buf.len() < 2 {
                return Ok(ChunkStep::NeedMore(state));
            }
            if &buf[..2] == b"\r\n" {
                buf.advance(2);
                return Ok(ChunkStep::End(None));
            }
            // Else field lines, then the empty line: the section ends at the first CRLFCRLF.
            let from = scanned.saturating_sub(3);
            let Some(at) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(format!(
                        "the trailer section is larger than {MAX_HEAD_BYTES} bytes"
                    ));
                }
                return Ok(ChunkStep::NeedMore(Chunked::Trailers {
                    scanned: buf.len(),
                }));
            };
            let end = from + at + 4;
            if end > MAX_HEAD_BYTES {
                return Err(format!(
                    "the trailer section is larger than {MAX_HEAD_BYTES} bytes"
                ));
            }
            let section = buf.split_to(end);
            let trailers = parse_trailers(&section)?;
            Ok(ChunkStep::End((!trailers.is_empty()).then_some(trailers)))
        }
    }
}

/// The trailer fields of a complete trailer section (field lines and the empty line after
/// them), without those that may not be trailers. Parsed like a head: `httparse` (no obs-fold,
/// no bare CR), at most [`MAX_HEADERS`] fields; a bare LF is refused too.
fn parse_trailers(section: &[u8]) -> Result<HeaderMap, String> {
    if section
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || section[i - 1] != b'\r'))
    {
        return Err("trailer line not ended by CRLF".into());
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((len, fields))) if len == section.len() => fields,
        Ok(_) => return Err("malformed trailer section".into()),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("more than {MAX_HEADERS} trailer fields"))
        }
        Err(e) => return Err(format!("invalid trailer section: {e}")),
    };
    let mut trailers = HeaderMap::new();
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| format!("invalid trailer field name {:?}", field.name))?;
        if !allowed_in_trailers(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| format!("invalid value for trailer field {name}"))?;
        // By reference: a second caller of `append::<HeaderName>` made the compiler stop
        // inlining it into `parse_head`, every response's path (+90 instructions per request
        // under callgrind); trailers are rare.
        trailers.append(&name, value);
    }
    Ok(trailers)
}

/// Whether a field may come as a trailer. Dropped: those that frame, route or authenticate
/// the message, control its handling or describe its content, which the head alone settles
/// (RFC 9110 6.5.1; the fields hyper's HTTP/1.1 server refuses to send as trailers), and the
/// hop-by-hop ones (HTTP/2 refuses those outright).
fn allowed_in_trailers(name: &HeaderName) -> bool {
    use hyper::header::{
        AUTHORIZATION, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE, HOST,
        MAX_FORWARDS, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE, TE, TRAILER, UPGRADE,
    };
    !matches!(
        *name,
        CONTENT_LENGTH
            | TRANSFER_ENCODING
            | TRAILER
            | TE
            | CONNECTION
            | UPGRADE
            | HOST
            | AUTHORIZATION
            | PROXY_AUTHENTICATE
            | PROXY_AUTHORIZATION
            | CACHE_CONTROL
            | CONTENT_ENCODING
            | CONTENT_RANGE
            | CONTENT_TYPE
            | MAX_FORWARDS
            | SET_COOKIE
    ) && name != "keep-alive"
        && name != "proxy-connection"
}

/// Takes one CRLF-terminated line off `buf` (without the CRLF), None when it is not all
/// there yet. A bare LF or a line longer than `max` is an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, String> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) => {
            if end == 0 || buf[end - 1] != b'\r' {
                return Err("line not ended by CRLF".into());
            }
            let line = buf.split_to(end + 1).freeze();
            Ok(Some(line.slice(..end - 1)))
        }
        None if buf.len() > max => Err(format!("line longer than {max} bytes")),
        None => Ok(None),
    }
}

/// A target's response, boxed where it is made (by our client; hyper's when it comes): it is
/// 256 bytes, and by value it was copied about ten times on its way out of the nested async
/// calls to the gateway (about 300 instructions of `memcpy` per request; callgrind,
/// `--dump-instr=yes`).
pub type UpstreamResponse = Box<Response<UpstreamBody>>;

/// A response from either client: ours, or hyper's for the exchanges it still does.
pub enum UpstreamBody {
    Own(ResponseBody),
    Hyper(Incoming),
}

impl UpstreamBody {
    /// The response's fields when our client kept them in wire form (its header map is then
    /// empty of them): the caller passes them on or puts them in the map.
    pub fn take_wire_fields(&mut self) -> Option<WireFields> {
        match self {
            UpstreamBody::Own(b) => b.wire.take(),
            UpstreamBody::Hyper(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Own(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Own(b) => b.is_end_stream(),
            UpstreamBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Own(b) => b.size_hint(),
            UpstreamBody::Hyper(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Content-Length of a whole header map, as `parse_head` works it out field by field.
    fn content_length(headers: &HeaderMap) -> Result<Option<u64>, String> {
        let mut found = None;
        for value in headers.get_all(CONTENT_LENGTH) {
            add_content_length(&mut found, value.as_bytes())?;
        }
        Ok(found)
    }

    /// The body and trailers of a chunked body, fed `step` bytes at a time.
    fn decode_in_steps(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), String> {
        let mut buf = BytesMut::new();
        let mut pending = wire.chunks(step);
        let mut state = Chunked::Size;
        let mut out = Vec::new();
        loop {
            match chunk_step(&mut buf, state)? {
                ChunkStep::Data(d, next) => {
                    out.extend_from_slice(&d);
                    state = next;
                }
                ChunkStep::Next(next) => state = next,
                ChunkStep::End(trailers) => return Ok((out, trailers)),
                ChunkStep::NeedMore(resume) => {
                    state = resume;
                    buf.extend_from_slice(pending.next().ok_or("incomplete")?);
                }
            }
        }
    }

    fn decode(wire: &[u8]) -> Result<Vec<u8>, String> {
        decode_in_steps(wire, wire.len().max(1)).map(|(body, _)| body)
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        assert_eq!(
            decode(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n").unwrap(),
            b"hello world"
        );
        assert_eq!(decode(b"0\r\n\r\n").unwrap(), b"");
    }

    #[test]
    fn trailer_fields_come_after_the_data_whatever_the_reads() {
        let wire = b"4\r\ndata\r\n0\r\nX-Checksum: abc\r\nx-more: 1\r\nX-Checksum: def\r\n\r\n";
        // Every split of the section across reads finds the same end.
        for step in 1..=wire.len() {
            let (body, trailers) = decode_in_steps(wire, step).unwrap();
            assert_eq!(body, b"data");
            let trailers = trailers.expect("trailers");
            let sums: Vec<_> = trailers.get_all("x-checksum").iter().collect();
            assert_eq!(sums, ["abc", "def"]);
            assert_eq!(trailers["x-more"], "1");
        }
        assert_eq!(decode_in_steps(b"0\r\n\r\n", 1).unwrap().1, None);
    }

    #[test]
    fn trailer_fields_that_only_a_head_may_carry_are_dropped() {
        let wire = b"0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nHost: x\r\nTrailer: a\r\nKeep-Alive: 1\r\nSet-Cookie: a=b\r\nX-Kept: yes\r\n\r\n";
        let trailers = decode_in_steps(wire, wire.len()).unwrap().1.unwrap();
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["x-kept"], "yes");
        // Nothing left but dropped fields: no trailers at all.
        let wire = b"0\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(decode_in_steps(wire, wire.len()).unwrap().1, None);
    }

    #[test]
    fn malformed_or_oversized_trailer_sections_are_errors() {
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("0\r\n{many}\r\n");
        let huge = format!("0\r\nx-big: {}\r\n\r\n", "v".repeat(MAX_HEAD_BYTES));
        let endless = format!("0\r\nx-big: {}", "v".repeat(MAX_HEAD_BYTES + 1));
        for wire in [
            &b"0\r\nno colon\r\n\r\n"[..],
            b"0\r\nx-a: 1\r\n folded\r\n\r\n",
            b"0\r\nx-a: 1\nx-b: 2\r\n\r\n",
            b"0\r\nx-a: b\rc\r\n\r\n",
            b"0\r\nx a: 1\r\n\r\n",
            many.as_bytes(),
            huge.as_bytes(),
        ] {
            assert!(
                decode(wire).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(wire)
            );
        }
        // Too long without an end: refused before the whole of it arrived.
        let err = decode_in_steps(endless.as_bytes(), 1024).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn malformed_chunked_bodies_are_errors_not_guesses() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode(wire).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn response_heads_parse_into_slices_of_one_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\nx-a: c\r\n\r\nokNEXT"[..],
        );
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.status, 200);
        let Fields::Map(headers) = head.fields else {
            panic!("wire form not asked for")
        };
        assert_eq!(headers.get_all("x-a").iter().count(), 2);
        assert_eq!(content_length(&headers).unwrap(), Some(2));
        assert_eq!(&buf[..], b"okNEXT");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut partial, true).unwrap().is_none());
        let mut folded = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n"[..]);
        assert!(parse_head(&mut folded, true).is_err());
    }

    /// Parses `head` asking for wire form: the fields as written back out when it was kept,
    /// None when they went to a map. Checks that the map made from the wire form (for hyper)
    /// holds what a map made from the head holds, less the fields left out.
    fn wire_form(head: &str) -> Option<(String, bool, bool)> {
        let mut buf = BytesMut::from(head.as_bytes());
        let parsed = parse_head(&mut buf, true).unwrap().unwrap();
        let Fields::Wire(w) = parsed.fields else {
            return None;
        };
        let mut out = Vec::new();
        w.write(&mut out);
        let dated = w.has_date();
        let mut from_wire = HeaderMap::new();
        w.insert_into(&mut from_wire);
        let Fields::Map(mut from_head) = parse_head(&mut BytesMut::from(head.as_bytes()), false)
            .unwrap()
            .unwrap()
            .fields
        else {
            panic!("a map was asked for")
        };
        for left_out in ["content-length", "transfer-encoding", "x-request-id"] {
            from_head.remove(left_out);
        }
        assert_eq!(from_wire, from_head, "{head}");
        Some((String::from_utf8(out).unwrap(), dated, parsed.chunked))
    }

    #[test]
    fn fields_stay_in_wire_form_without_those_that_frame_the_body() {
        let (out, dated, chunked) = wire_form(
            "HTTP/1.1 200 OK\r\nServer: t\r\nDate: x\r\nContent-Length: 2\r\n\
             Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\n\
             Content-Type: text/plain\r\nX-Spaced:\t a  b \r\nX-Empty:\r\n\r\n",
        )
        .unwrap();
        // Lines are copied as they came, spaces around values included.
        assert_eq!(
            out,
            "Server: t\r\nDate: x\r\nContent-Type: text/plain\r\nX-Spaced:\t a  b \r\nX-Empty:\r\n"
        );
        assert!(dated);
        assert!(!chunked);
        let (out, dated, chunked) =
            wire_form("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nX-A: b\r\n\r\n")
                .unwrap();
        assert_eq!(out, "X-A: b\r\n");
        assert!(!dated);
        assert!(chunked);
    }

    #[test]
    fn fields_something_must_act_on_go_to_a_map() {
        for head in [
            "HTTP/1.1 200 OK\r\nVia: 1.1 other\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nProxy-Authenticate: Basic\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTrailer: x-sum\r\n\r\n",
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTE: trailers\r\n\r\n",
            "HTTP/1.1 200 OK\r\nProxy-Connection: keep-alive\r\n\r\n",
            "HTTP/1.1 200 OK\r\nPROXY-AUTHORIZATION: x\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            // A line ended by a bare LF is not copied as it came.
            "HTTP/1.1 200 OK\r\nX-A: b\nX-B: c\r\n\r\n",
            // Four runs of lines: more than a wire form holds.
            "HTTP/1.1 200 OK\r\nA: 1\r\nContent-Length: 0\r\nB: 2\r\nConnection: keep-alive\r\n\
             C: 3\r\nX-Request-Id: r\r\nD: 4\r\n\r\n",
        ] {
            assert!(wire_form(head).is_none(), "{head}");
        }
        // Every hop-by-hop field the proxy removes keeps the head out of wire form, in any case.
        for name in &super::super::headers::HOP_BY_HOP {
            let value = if *name == CONNECTION { "x-other" } else { "x" };
            for spelled in [
                name.as_str().to_string(),
                name.as_str().to_ascii_uppercase(),
            ] {
                let head =
                    format!("HTTP/1.1 200 OK\r\n{spelled}: {value}\r\nContent-Length: 0\r\n\r\n");
                let kept = wire_form(&head).map(|(out, ..)| out);
                // Connection and Keep-Alive fields that only concern this connection, and the
                // framing, are left out of the wire form instead.
                if *name == hyper::header::TRANSFER_ENCODING || name.as_str() == "keep-alive" {
                    assert!(kept.is_some_and(|out| out.is_empty()), "{head}");
                } else {
                    assert!(kept.is_none(), "{head}");
                }
            }
        }
        // The answer to a HEAD request keeps its Content-Length: never in wire form.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"[..]);
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        assert!(matches!(head.fields, Fields::Map(m) if m.contains_key(CONTENT_LENGTH)));
    }

    #[test]
    fn content_lengths_must_agree_and_be_decimal() {
        let mut h = HeaderMap::new();
        h.append(CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
        assert_eq!(content_length(&h).unwrap(), Some(5));
        h.append(CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert!(content_length(&h).is_err());
        let mut h = HeaderMap::new();
        h.append(CONTENT_LENGTH, HeaderValue::from_static("+5"));
        assert!(content_length(&h).is_err());
    }
}

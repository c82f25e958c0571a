//! Connections to a Service's targets, kept open for reuse. Requests whose body is in memory
//! go to HTTP/1.1 targets through our own codec (`upstream_h1.rs`) on pooled sockets; requests
//! that stream a body or ask for an upgrade, and all HTTP/2, go through hyper's
//! connection-level client (`hyper::client::conn`), pooled here too.
//!
//! Why not hyper-util's pooled `Client`: for every request it hashes a pool key (scheme and
//! authority) with SipHash, looks it up under a lock, boxes several futures and, when a
//! response body is still streaming, spawns a task only to wait until the connection is free
//! again. Under callgrind that was 16% of the proxy's instructions per request
//! (benches/README.md). Here connections are indexed by target, a request takes the most
//! recently used idle one, and it goes back when the response body has been read to its end.
//!
//! Invariants:
//! - An HTTP/1.1 connection is in one place at a time: its target's idle list, or the one
//!   request using it (ours: inside the response body; hyper's: with the target's in-flight
//!   slot, `upstream::InFlightGuard`). It goes back only when the response body was read to
//!   the end; otherwise it is closed, so the next response can never start inside the last.
//! - An idle socket of ours is checked before reuse (closed by the target, or bytes nobody
//!   asked for: it is dropped), without waiting.
//! - A request that a reused connection refused before writing anything (the upstream closed
//!   it while idle) is sent on another connection: it never reached the upstream, so sending
//!   it again is safe whatever the method. On our own connections the closing is seen only
//!   after the write (no byte of a response came back): then only an idempotent request is
//!   sent again, once.
//! - HTTP/2: one multiplexed connection per target, shared by all requests, replaced once it
//!   closes.
//! - At most `pool.max_idle_per_target` idle connections are kept per target, each for at most
//!   `pool.idle_timeout` (checked when taken, and by a sweeper task so unused ones close).

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper::{HeaderMap, Request, Response, Uri};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use super::body::{IdleTimeout, ProxyBody};
use super::error::error_chain;
use super::upstream_h1::{self, BufferedRequest, ExchangeError, UpstreamBody, UpstreamResponse};
use crate::resources::service::UpstreamProtocol;

pub type Http1Connection = http1::SendRequest<ProxyBody>;
type Connector = HttpsConnector<HttpConnector>;
pub type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Why a request could not be exchanged with a target.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (TCP, TLS or the HTTP/2 handshake failed). Nothing was
    /// sent; a request that owned its headers (hyper's) gives them back for another attempt
    /// to reuse. Our own codec's only borrowed them.
    Connect {
        detail: String,
        headers: Option<HeaderMap>,
    },
    /// The client stalled while its body streamed to the target (`timeouts.idle`): not the
    /// target's failure.
    BodyStalled,
    /// The exchange failed once connected: reset, closed early, or an invalid response.
    Failed(String),
    /// No response head before the attempt's deadline (`timeouts.read`, within
    /// `timeouts.total`).
    TimedOut,
}

/// The connections of one Service, per target (same order as `Upstream::targets`).
pub struct ConnPool {
    connector: Connector,
    protocol: UpstreamProtocol,
    shared: Arc<PoolShared>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

/// What responses still being read need to give their connection back.
pub struct PoolShared {
    targets: Vec<TargetConns>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Default)]
struct TargetConns {
    /// Our own HTTP/1.1 connections not in use, the most recently used last.
    idle_own: Mutex<Vec<Idle<upstream_h1::Connection>>>,
    /// hyper's HTTP/1.1 connections not in use, the most recently used last.
    idle: Mutex<Vec<Idle<Http1Connection>>>,
    /// The shared HTTP/2 connection.
    shared: Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can leave a list half-changed, so a panic elsewhere does not poison it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for ConnPool {
    fn drop(&mut self) {
        if let Some(t) = self.sweeper.take() {
            t.abort();
        }
    }
}

impl ConnPool {
    /// A pool for `targets` targets. Outside a Tokio runtime (unit tests) there is no sweeper;
    /// idle connections then expire only when next taken.
    pub fn new(
        connector: Connector,
        protocol: UpstreamProtocol,
        targets: usize,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> ConnPool {
        let shared = Arc::new(PoolShared {
            targets: (0..targets).map(|_| TargetConns::default()).collect(),
            max_idle,
            idle_timeout,
        });
        let sweeper = tokio::runtime::Handle::try_current()
            .ok()
            .map(|rt| rt.spawn(sweep_idle(Arc::downgrade(&shared))));
        ConnPool {
            connector,
            protocol,
            shared,
            sweeper,
        }
    }

    /// Whether [`ConnPool::exchange`] can carry requests to these targets (HTTP/1.1 ones).
    pub fn takes_buffered(&self) -> bool {
        self.protocol == UpstreamProtocol::Http1
    }

    /// Sends a request whose body is in memory to `target` (at `origin`) with our own
    /// HTTP/1.1 codec, on an idle connection of ours or a new one. The connection goes back
    /// to the pool when the response body has been read to its end.
    ///
    /// Everything up to the response head must be done by `deadline`, connecting included.
    /// `now`: the caller's reading of the clock, to judge how long idle connections waited.
    pub async fn exchange(
        &self,
        target: usize,
        origin: &Uri,
        req: BufferedRequest<'_>,
        now: Instant,
        deadline: Instant,
    ) -> Result<UpstreamResponse, SendError> {
        let (conn, reused) = match self.take_idle_own(target, now) {
            Some(c) => (c, true),
            None => match self.open_own_by(origin, deadline).await? {
                Ok(conn) => (conn, false),
                // The caller still has the fields (they were borrowed).
                Err(detail) => {
                    return Err(SendError::Connect {
                        detail,
                        headers: None,
                    })
                }
            },
        };
        let req = req.encode();
        let first = conn
            .exchange(&req, deadline, self.shared.clone(), target)
            .await;
        let result = match first {
            // The target closed a connection it had kept idle just as the request went out
            // (it read nothing, or dropped it unanswered): an idempotent request goes again,
            // once, on a new connection.
            Err(ExchangeError::ClosedBeforeResponse) if reused && req.resendable => {
                match self.open_own_by(origin, deadline).await? {
                    Ok(conn) => {
                        conn.exchange(&req, deadline, self.shared.clone(), target)
                            .await
                    }
                    Err(detail) => {
                        return Err(SendError::Failed(format!(
                            "a reused connection closed before a response, and a new one failed: {detail}"
                        )))
                    }
                }
            }
            other => other,
        };
        result.map_err(|e| match e {
            ExchangeError::TimedOut => SendError::TimedOut,
            e => SendError::Failed(e.to_string()),
        })
    }

    /// Opens a connection for our own codec, unless `deadline` passes first.
    async fn open_own_by(
        &self,
        origin: &Uri,
        deadline: Instant,
    ) -> Result<Result<upstream_h1::Connection, String>, SendError> {
        // Boxed, and the stream boxed inside it: connecting (TCP, then TLS) is kilobytes of
        // future and a TLS stream a kilobyte more, room that every request's future (held per
        // client connection) would carry while almost all of them take a pooled connection.
        Box::pin(async move {
            tokio::time::timeout_at(deadline.into(), self.open(origin))
                .await
                .map(|opened| opened.map(upstream_h1::Connection::new))
                .map_err(|_| SendError::TimedOut)
        })
        .await
    }

    fn take_idle_own(&self, target: usize, now: Instant) -> Option<upstream_h1::Connection> {
        let mut idle = lock(&self.shared.targets[target].idle_own);
        while let Some(mut c) = idle.pop() {
            if now.saturating_duration_since(c.since) >= self.shared.idle_timeout {
                // The rest were idle even longer.
                idle.clear();
                return None;
            }
            if c.connection.is_usable() {
                return Some(c.connection);
            }
        }
        None
    }

    /// Sends `req` (its URI in origin form for HTTP/1.1, absolute for HTTP/2) to the target
    /// `target`, reachable at `origin` (`scheme://authority`), with hyper. With HTTP/1.1 the
    /// connection comes back with the response: give it to [`ConnPool::put_back`] once the
    /// body has been read to its end, or drop it.
    pub async fn send(
        &self,
        target: usize,
        origin: &Uri,
        req: Request<ProxyBody>,
    ) -> Result<(Response<UpstreamBody>, Option<Http1Connection>), SendError> {
        match self.send_with_hyper(target, origin, req).await {
            Ok((resp, conn)) => Ok((resp.map(UpstreamBody::Hyper), conn)),
            Err(HyperSendError::Connect(detail, req)) => Err(SendError::Connect {
                detail,
                headers: Some(req.into_parts().0.headers),
            }),
            Err(HyperSendError::Request(e)) if caused_by_stalled_body(&e) => {
                Err(SendError::BodyStalled)
            }
            Err(HyperSendError::Request(e)) => Err(SendError::Failed(error_chain(&e))),
        }
    }

    async fn send_with_hyper(
        &self,
        target: usize,
        origin: &Uri,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<hyper::body::Incoming>, Option<Http1Connection>), HyperSendError> {
        let conns = &self.shared.targets[target];
        loop {
            let (result, reused) = match self.protocol {
                UpstreamProtocol::Http1 => {
                    let (mut connection, reused) = match self.take_idle(conns) {
                        Some(c) => (c, true),
                        None => match self.connect_http1(origin).await {
                            Ok(c) => (c, false),
                            Err(detail) => {
                                return Err(HyperSendError::Connect(detail, Box::new(req)))
                            }
                        },
                    };
                    // A connection just opened is ready once its task has run; a reused one
                    // is ready at once, or closed.
                    if let Err(e) = connection.ready().await {
                        if reused {
                            continue;
                        }
                        return Err(HyperSendError::Connect(error_chain(&e), Box::new(req)));
                    }
                    match connection.try_send_request(req).await {
                        Ok(resp) => return Ok((resp, Some(connection))),
                        Err(e) => (e, reused),
                    }
                }
                UpstreamProtocol::Http2 => {
                    let (mut connection, reused) = match self.shared_http2(conns) {
                        Some(c) => (c, true),
                        None => match self.connect_http2(conns, origin).await {
                            Ok(c) => (c, false),
                            Err(detail) => {
                                return Err(HyperSendError::Connect(detail, Box::new(req)))
                            }
                        },
                    };
                    match connection.try_send_request(req).await {
                        Ok(resp) => return Ok((resp, None)),
                        Err(e) => {
                            if reused {
                                // Refused streams or a GOAWAY: the next request connects anew.
                                lock(&conns.shared).take();
                            }
                            (e, reused)
                        }
                    }
                }
            };
            let mut error = result;
            match error.take_message() {
                // Never written: safe to send on another connection (each retry here takes
                // a different idle connection, then a new one, so this ends).
                Some(unsent) if reused => req = unsent,
                _ => return Err(HyperSendError::Request(error.into_error())),
            }
        }
    }

    /// Keeps an HTTP/1.1 connection whose last response was read to its end for the next
    /// request to `target`, unless it closed or the target already has enough idle ones.
    pub fn put_back(&self, target: usize, connection: Http1Connection) {
        if connection.is_closed() {
            return;
        }
        let mut idle = lock(&self.shared.targets[target].idle);
        if idle.len() < self.shared.max_idle {
            idle.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }

    fn take_idle(&self, conns: &TargetConns) -> Option<Http1Connection> {
        let mut idle = lock(&conns.idle);
        while let Some(c) = idle.pop() {
            if c.since.elapsed() >= self.shared.idle_timeout {
                // The rest were idle even longer.
                idle.clear();
                return None;
            }
            if !c.connection.is_closed() {
                return Some(c.connection);
            }
        }
        None
    }

    fn shared_http2(&self, conns: &TargetConns) -> Option<http2::SendRequest<ProxyBody>> {
        let shared = lock(&conns.shared);
        shared.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// A new connection to `origin`, or why there is none.
    async fn open(&self, origin: &Uri) -> Result<Io, String> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| error_chain(&*e))?;
        connector
            .call(origin.clone())
            .await
            .map_err(|e| error_chain(&*e))
    }

    async fn connect_http1(&self, origin: &Uri) -> Result<Http1Connection, String> {
        let io = self.open(origin).await?;
        let (connection, driver) = http1::handshake(io).await.map_err(|e| error_chain(&e))?;
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                tracing::debug!(error = %error_chain(&e), "upstream connection ended with an error");
            }
        });
        Ok(connection)
    }

    async fn connect_http2(
        &self,
        conns: &TargetConns,
        origin: &Uri,
    ) -> Result<http2::SendRequest<ProxyBody>, String> {
        let io = self.open(origin).await?;
        let (mut connection, driver) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| error_chain(&e))?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %error_chain(&e), "upstream HTTP/2 connection ended with an error");
            }
        });
        connection.ready().await.map_err(|e| error_chain(&e))?;
        // Concurrent first requests may each open one; the last stays shared, the others
        // close when their requests end.
        *lock(&conns.shared) = Some(connection.clone());
        Ok(connection)
    }
}

impl PoolShared {
    /// Keeps one of our HTTP/1.1 connections whose last response was read to its end (and
    /// found reusable by `upstream_h1`) for the next request to `target`, unless the target
    /// already has enough idle ones.
    pub fn put_back_h1(&self, target: usize, connection: upstream_h1::Connection) {
        let mut idle = lock(&self.targets[target].idle_own);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }
}

/// hyper's side of a failed send.
enum HyperSendError {
    /// Not connected; the request is unsent.
    Connect(String, Box<Request<ProxyBody>>),
    Request(hyper::Error),
}

/// Whether the request body's idle timeout (the client stalled) is what ended the exchange.
fn caused_by_stalled_body(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<IdleTimeout>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Closes idle connections older than `idle_timeout` (dropping an idle socket, or the last
/// handle of an idle hyper connection, closes it) and ones the target closed, until the pool
/// is gone.
async fn sweep_idle(shared: Weak<PoolShared>) {
    let Some(idle_timeout) = shared.upgrade().map(|s| s.idle_timeout) else {
        return;
    };
    let period = (idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        tokio::time::sleep(period).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for t in &shared.targets {
            lock(&t.idle).retain(|c| c.since.elapsed() < idle_timeout && !c.connection.is_closed());
            lock(&t.idle_own)
                .retain_mut(|c| c.since.elapsed() < idle_timeout && c.connection.is_usable());
        }
    }
}

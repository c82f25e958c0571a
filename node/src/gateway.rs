//! The request lifecycle of the data plane, phase by phase (docs/request-lifecycle.md draws
//! it): accept (TLS by SNI when on the TLS listener) -> `normalize` -> `match_route` ->
//! `cache_lookup` -> `limit_body` -> `prepare_upstream_request` -> `transform_request` ->
//! circuit breaker -> `forward` (pick target, send, retry when safe) -> websocket splice or
//! `prepare_response` (with `transform_response`) -> cache store -> `log`.
//!
//! Architecture invariant: nothing here awaits Raft or disk. Config comes from the
//! `GatewaySnapshot` loaded once per request; the access log is handed to a background writer.

pub mod access_log;
pub mod auth;
pub mod balancer;
pub mod body;
pub mod cache;
pub mod circuit;
pub mod concurrency;
pub mod error;
pub mod h1;
pub mod headers;
pub mod health;
pub mod jwt;
pub mod pool;
pub mod ratelimit;
pub mod redact;
pub mod route_metrics;
pub mod router;
pub mod send_timeout;
pub mod server_h1;
pub mod tls;
pub mod transform;
pub mod upstream;
pub mod upstream_h1;
pub mod upstream_tls;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{HeaderValue, CONTENT_LENGTH, HOST, UPGRADE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;

use access_log::{AccessEntry, AccessLog};
use body::{full, MeteredBody, ProxyBody, RequestBody};
use error::GatewayError;
use pool::SendError;
use route_metrics::RouteMetrics;
use send_timeout::SendTimeout;
use upstream::{InFlightGuard, Upstream};
use upstream_h1::UpstreamBody;

use crate::resources::route::VersionSource;
use crate::resources::service::{HashOn, RetryOn, UpstreamProtocol};
use crate::state::{GatewaySnapshot, SharedSnapshot};

/// Data-plane settings that come from flags, not from the replicated config.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Clients whose X-Forwarded-* headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// A client must send its request headers within this time (slowloris defence).
    pub header_read_timeout: Duration,
    /// A client that takes none of a response for this long has its connection closed.
    pub client_send_timeout: Duration,
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM.
    pub drain_timeout: Duration,
}

pub struct Gateway {
    snapshot: SharedSnapshot,
    settings: GatewaySettings,
    access_log: AccessLog,
    limiter: Arc<ratelimit::RateLimiter>,
    concurrency: concurrency::ConcurrencyLimiter,
    ai: Arc<crate::ai::AiContext>,
}

/// Longest pause in an AI answer's body (providers think before the next tokens).
const AI_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest AI request body when the route sets no `max_body_bytes`.
const AI_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// Bodies up to this size are buffered when a retry could need them again.
const REPLAYABLE_BODY_BYTES: usize = 64 * 1024;

impl Gateway {
    pub fn new(
        snapshot: SharedSnapshot,
        settings: GatewaySettings,
        access_log: AccessLog,
        limiter: Arc<ratelimit::RateLimiter>,
        ai: Arc<crate::ai::AiContext>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            snapshot,
            settings,
            access_log,
            limiter,
            concurrency: concurrency::ConcurrencyLimiter::default(),
            ai,
        })
    }

    /// Phase `ai`: reads the whole request body (up to the route's `max_body_bytes`, else
    /// 16 MiB) and answers from the route's models.
    async fn serve_ai(
        &self,
        snapshot: &GatewaySnapshot,
        route: &crate::state::RouteEntry,
        path: &str,
        req: Request<RequestBody>,
        caller: Option<&auth::Caller>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let limit = route.spec.max_body_bytes.unwrap_or(AI_MAX_BODY_BYTES);
        let request_id = req
            .headers()
            .get(headers::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (parts, incoming) = req.into_parts();
        let body = http_body_util::Limited::new(incoming, limit as usize)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    GatewayError::PayloadTooLarge { limit }
                } else {
                    GatewayError::BadRequest(format!("the request body could not be read: {e}"))
                }
            })?
            .to_bytes();
        let route_models = route.spec.ai.as_ref().map_or(&[][..], |a| &a.models[..]);
        Ok(crate::ai::handler::serve(
            &self.ai,
            &snapshot.ai,
            crate::ai::handler::AiRequest {
                method: &parts.method,
                path,
                body,
                caller,
                request_id: &request_id,
                route_models,
            },
        )
        .await)
    }

    /// Whether a RateLimit or ConcurrencyLimit scoped by `applies_to` counts this request.
    fn limit_applies(
        applies_to: &crate::resources::rate_limit::AppliesTo,
        route: &crate::state::RouteEntry,
        caller: Option<&auth::Caller>,
    ) -> bool {
        use crate::resources::rate_limit::AppliesTo;
        let consumer = caller.map(|c| &c.consumer);
        match applies_to {
            AppliesTo::Global(on) => *on,
            AppliesTo::Route(n) => *n == route.name,
            AppliesTo::Service(n) => route.upstream.as_ref().is_some_and(|u| u.name == *n),
            AppliesTo::Consumer(n) => consumer.is_some_and(|c| c.name == *n),
            AppliesTo::Team(n) => consumer.is_some_and(|c| c.team.as_deref() == Some(n)),
            AppliesTo::Group(g) => consumer.is_some_and(|c| c.groups.contains(g)),
        }
    }

    /// The value a limit counts this request under; `-` when the request has none (no
    /// consumer on a public route, no such header). Borrowed where the value exists already:
    /// no allocation per request for it.
    fn limit_key<'a>(
        &self,
        key: &crate::resources::rate_limit::LimitKey,
        route: &'a crate::state::RouteEntry,
        caller: Option<&'a auth::Caller>,
        client: SocketAddr,
        headers: &'a hyper::HeaderMap,
        ip: &'a std::cell::OnceCell<IpText>,
    ) -> std::borrow::Cow<'a, str> {
        use crate::resources::rate_limit::LimitKey;
        use std::borrow::Cow;
        let consumer = caller.map(|c| &c.consumer);
        match key {
            LimitKey::Consumer => consumer.map(|c| Cow::Borrowed(c.name.as_str())),
            LimitKey::Team => consumer.and_then(|c| c.team.as_deref().map(Cow::Borrowed)),
            LimitKey::Credential => caller.map(|c| Cow::Borrowed(c.credential.label.as_str())),
            LimitKey::Ip => Some(Cow::Borrowed(
                ip.get_or_init(|| IpText::new(self.client_ip(client.ip(), headers)))
                    .as_str(),
            )),
            LimitKey::Route => Some(Cow::Borrowed(route.name.as_str())),
            LimitKey::Header(h) => headers
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| match v.char_indices().nth(256) {
                    Some((cut, _)) => Cow::Borrowed(&v[..cut]),
                    None => Cow::Borrowed(v),
                }),
        }
        .unwrap_or(Cow::Borrowed("-"))
    }

    /// Phase `concurrency_limit`: every ConcurrencyLimit that applies must have room; the
    /// places taken are held by the caller until the response is done.
    fn concurrency_limit(
        &self,
        snapshot: &GatewaySnapshot,
        route: &crate::state::RouteEntry,
        caller: Option<&auth::Caller>,
        client: SocketAddr,
        headers: &hyper::HeaderMap,
        places: &mut Vec<concurrency::InFlightPlace>,
    ) -> Result<(), GatewayError> {
        let ip = std::cell::OnceCell::new();
        for limit in snapshot.concurrency_limits.iter() {
            if !Self::limit_applies(&limit.spec.applies_to, route, caller) {
                continue;
            }
            let key = self.limit_key(&limit.key, route, caller, client, headers, &ip);
            match self
                .concurrency
                .try_enter(&limit.name, &key, limit.spec.max_in_flight)
            {
                Some(place) => places.push(place),
                None => {
                    return Err(GatewayError::ConcurrencyLimited {
                        limit: limit.name.clone(),
                        max: limit.spec.max_in_flight,
                    })
                }
            }
        }
        Ok(())
    }

    /// Phase `rate_limit`: every RateLimit that applies must admit the request. Returns the
    /// verdict with the least left (for the response headers), or the refusal.
    async fn rate_limit(
        &self,
        snapshot: &GatewaySnapshot,
        route: &crate::state::RouteEntry,
        caller: Option<&auth::Caller>,
        client: SocketAddr,
        headers: &hyper::HeaderMap,
    ) -> Result<Option<ratelimit::Verdict>, GatewayError> {
        if snapshot.rate_limits.is_empty() {
            return Ok(None);
        }
        use std::borrow::Cow;
        // The client address as text, made at most once and only if a limit is keyed by it.
        let ip = std::cell::OnceCell::new();
        let mut admitted: Vec<(&str, Cow<str>, ratelimit::Verdict)> = Vec::new();
        let mut tightest: Option<ratelimit::Verdict> = None;
        for limit in snapshot.rate_limits.iter() {
            if !Self::limit_applies(&limit.spec.applies_to, route, caller) {
                continue;
            }
            let key = self.limit_key(&limit.key, route, caller, client, headers, &ip);
            match self
                .limiter
                .admit(&limit.name, &limit.spec, &key, crate::clock::unix_ms)
                .await
            {
                Ok(v) => {
                    if tightest.as_ref().is_none_or(|t| v.remaining < t.remaining) {
                        tightest = Some(v.clone());
                    }
                    admitted.push((&limit.name, key, v));
                }
                Err(refused) => {
                    for (name, key, v) in &admitted {
                        self.limiter.refund(name, key, v);
                    }
                    return Err(GatewayError::RateLimited(Box::new(refused)));
                }
            }
        }
        Ok(tightest)
    }

    /// Accepts connections until `shutdown` turns true, then drains in-flight requests for up
    /// to `drain_timeout`. With `tls`, every connection first completes a TLS handshake
    /// (certificate chosen by SNI from the config snapshot, ALPN h2 or http/1.1) within the
    /// header read timeout.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_read_timeout)
            // hyper's read buffer (at least 8 KiB) caps the head; `proxy` enforces the exact limit.
            .max_buf_size(self.settings.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(self.settings.max_header_bytes as u32);
        let builder = Arc::new(builder);
        let drain = Arc::new(server_h1::Drain::default());
        loop {
            let (stream, client) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy accept failed");
                        continue;
                    }
                },
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let _ = stream.set_nodelay(true);
            // Under TLS too: every protocol served on the connection gets the bound.
            let stream = SendTimeout::new(stream, self.settings.client_send_timeout);
            let gw = self.clone();
            let builder = builder.clone();
            // Held by the connection's task to its end: the drain waits for the last one.
            let signal = drain.signal();
            let tls = tls.clone();
            tokio::spawn(async move {
                let Some(acceptor) = tls else {
                    let peer = Peer {
                        addr: client,
                        addr_text: IpText::new(client.ip()),
                        tls: false,
                        cert: None,
                    };
                    return gw.serve_connection(stream, peer, &builder, signal).await;
                };
                let handshake =
                    tokio::time::timeout(gw.settings.header_read_timeout, acceptor.accept(stream));
                let stream = match handshake.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(client = %client, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                // Verified by rustls against --proxy-client-ca when one is set.
                let cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| auth::ClientCert::from_der(leaf))
                    .map(Arc::new);
                let peer = Peer {
                    addr: client,
                    addr_text: IpText::new(client.ip()),
                    tls: true,
                    cert,
                };
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    gw.serve_with_hyper(stream, peer, &builder, signal).await;
                } else {
                    gw.serve_connection(stream, peer, &builder, signal).await;
                }
            });
        }
        drop(listener);
        drain.start();
        tokio::select! {
            () = drain.all_closed() => tracing::info!("proxy drained"),
            _ = tokio::time::sleep(self.settings.drain_timeout) => {
                tracing::warn!(timeout = ?self.settings.drain_timeout, "proxy drain timed out; closing remaining connections");
            }
        }
    }

    /// Serves one client connection: HTTP/1.1 requests without a body through our own codec
    /// (`server_h1.rs`), and the rest of the connection through hyper from the first request
    /// that codec does not take.
    async fn serve_connection<I>(
        self: Arc<Self>,
        io: I,
        peer: Peer,
        builder: &auto::Builder<TokioExecutor>,
        mut drain: server_h1::DrainSignal,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = server_h1::Limits {
            header_read_timeout: self.settings.header_read_timeout,
            max_head_bytes: self.settings.max_header_bytes.max(8192),
        };
        let served = server_h1::serve(io, limits, &mut drain, |req| {
            self.clone().handle(req, &peer)
        })
        .await;
        if let server_h1::Served::Handoff(io) = served {
            self.serve_with_hyper(io, peer, builder, drain).await;
        }
    }

    /// Serves a connection with hyper (HTTP/2, upgrades, request bodies), finishing it
    /// gracefully when the node drains.
    async fn serve_with_hyper<I>(
        self: Arc<Self>,
        io: I,
        peer: Peer,
        builder: &auto::Builder<TokioExecutor>,
        mut drain: server_h1::DrainSignal,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let gw = self.clone();
            let peer = peer.clone();
            async move {
                let (mut resp, fields) = gw
                    .handle(
                        Box::new(req.map(|body| RequestBody::Hyper(Box::new(body)))),
                        &peer,
                    )
                    .await;
                fields.insert_into(resp.headers_mut());
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = &mut drain => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }

    fn client_ip(&self, peer: std::net::IpAddr, headers: &hyper::HeaderMap) -> std::net::IpAddr {
        if self.settings.trusted_proxies.is_empty() {
            return peer;
        }
        headers::client_ip(peer, headers, &self.settings.trusted_proxies)
    }

    /// `req` is boxed: see `server_h1::Parse::Complete`.
    async fn handle(
        self: Arc<Self>,
        mut req: Box<Request<RequestBody>>,
        peer: &Peer,
    ) -> (Response<ProxyBody>, headers::ResponseFields) {
        let client = peer.addr;
        let started = Instant::now();
        let snapshot = self.snapshot.load_full();
        let request_id = headers::request_id(req.headers_mut());
        let made_request_id = request_id.made();
        // The descriptive fields cost allocations and a clock read: only when a log is kept.
        let mut entry = if self.access_log.is_enabled() {
            AccessEntry {
                kept: true,
                ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                request_id: request_id.as_str().to_string(),
                client_ip: client.ip().to_string(),
                method: req.method().to_string(),
                host: request_host(req.headers().get(HOST), req.uri())
                    .map(Cow::into_owned)
                    .unwrap_or_default(),
                path: snapshot.redactor.text(req.uri().path()).into_owned(),
                query: req.uri().query().map(|q| snapshot.redactor.query(q)),
                ..Default::default()
            }
        } else {
            AccessEntry::default()
        };
        let mut held = Held::default();
        let result = self
            .proxy(&snapshot, req, peer, made_request_id, &mut entry, &mut held)
            .await;
        let (mut resp, idle, via, wire) = match result {
            Ok(p) => (p.resp, p.idle, p.via, p.wire),
            Err(e) => {
                entry.error = Some(match e.log_detail() {
                    Some(d) => format!("{}: {d}", e.code()),
                    None => e.code().to_string(),
                });
                if let (Some(d), false) = (e.log_detail(), e.is_auth_failure()) {
                    let route = entry.route_metrics.as_ref().map_or("none", |m| m.route());
                    tracing::warn!(request_id = request_id.as_str(), route, error = %d, "{}", e);
                }
                (
                    e.into_response(request_id.as_str()),
                    Duration::from_secs(60),
                    false,
                    None,
                )
            }
        };
        // Ours replaces a target's; it is added with Via, outside the map (a target's fields
        // still in wire form are written without theirs).
        resp.headers_mut().remove(headers::X_REQUEST_ID);
        entry.status = resp.status().as_u16();
        let elapsed = started.elapsed();
        entry.latency_ms = elapsed.as_secs_f64() * 1000.0;
        // A matched route counts through its own handles; a request without one (no route, or
        // refused before matching) under route "none".
        let route_metrics = entry.route_metrics.take();
        match &route_metrics {
            Some(m) => {
                m.requests(entry.status).increment(1);
                m.duration().record(elapsed.as_secs_f64());
            }
            None => {
                metrics::counter!("konnect_proxy_requests_total",
                    "route" => "none", "service" => "none", "status" => RouteMetrics::class(entry.status))
                .increment(1);
                metrics::histogram!("konnect_proxy_request_duration_seconds", "route" => "none")
                    .record(elapsed.as_secs_f64());
            }
        }

        // Log when the body is done (or abandoned), with the bytes actually sent. The entry
        // goes with the body only when a log is kept: it is hundreds of bytes, which every
        // move of the body (into its box, out at the end) would copy. (Not `bool::then`: its
        // closure would take the entry, a 376-byte copy, whether it runs or not.)
        let logged = if entry.kept {
            Some((Box::new(entry), self.access_log.clone()))
        } else {
            None
        };
        // The body is wrapped in place: taking the response apart and putting it together
        // again would copy its 128 bytes twice.
        let body = std::mem::replace(resp.body_mut(), body::empty());
        let metered = MeteredBody::new(body, idle, move |bytes, complete| {
            // The request leaves its target and its concurrency limits when its body is done.
            held.release(complete);
            match &route_metrics {
                Some(m) => m.bytes_sent().increment(bytes),
                None => metrics::counter!("konnect_proxy_bytes_sent_total", "route" => "none")
                    .increment(bytes),
            }
            if let Some((mut entry, log)) = logged {
                entry.bytes_sent = bytes;
                entry.complete = complete;
                log.record(*entry);
            }
        });
        *resp.body_mut() = BodyExt::boxed(metered);
        (resp, headers::ResponseFields::new(request_id, via, wire))
    }

    // The request's parts and what it carries out (log entry, held places) are separate
    // borrows on purpose: bundling them would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    async fn proxy(
        &self,
        snapshot: &GatewaySnapshot,
        mut req: Box<Request<RequestBody>>,
        peer: &Peer,
        made_request_id: Option<[u8; 32]>,
        entry: &mut AccessEntry,
        held: &mut Held,
    ) -> Result<Proxied, GatewayError> {
        let (client, tls, client_cert) = (peer.addr, peer.tls, peer.cert.as_deref());
        // Phase: normalize. (A request with a body reaches here through hyper, whose parser
        // settles its framing per RFC 9112: with both Transfer-Encoding and Content-Length,
        // chunked wins and Content-Length is removed; conflicting Content-Length values are
        // refused with 400. The upstream request is re-framed by our client, so no ambiguous
        // framing is ever forwarded.)
        let head_bytes = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
            + req.uri().authority().map_or(0, |a| a.as_str().len())
            + req
                .headers()
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if head_bytes > self.settings.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge {
                limit: self.settings.max_header_bytes,
            });
        }
        // The path borrows this copy (a reference count: the URI's text is shared), so the
        // request can still be taken apart while the path is in use.
        let uri = req.uri().clone();
        let path = router::normalize_path(uri.path())
            .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        let logged = self.access_log.is_enabled();
        if logged {
            entry.path = snapshot.redactor.text(&path).into_owned();
        }
        // Borrows a copy of the field (a reference count), like the path.
        let host_field = req.headers().get(HOST).cloned();
        let host = request_host(host_field.as_ref(), &uri);

        // Phase: match_route.
        let found = snapshot
            .router
            .find(&router::MatchInput {
                method: req.method().as_str(),
                host: host.as_deref(),
                path: &path,
                query: req.uri().query(),
                headers: req.headers(),
            })
            .ok_or_else(|| GatewayError::NoRoute {
                host: host.as_deref().unwrap_or_default().to_owned(),
                path: path.to_string(),
            })?;
        let route = &snapshot.routes[found.rule_index];
        entry.route_metrics = Some(route.metrics.clone());
        if logged {
            entry.route = Some(route.name.clone());
            entry.service = route.upstream.as_ref().map(|u| u.name.clone());
        }

        // Phases: restrict_ip, authenticate, authorize (routes with access rules).
        let caller = match &route.access {
            Some(access) => {
                if !(access.ip_allow.is_empty() && access.ip_deny.is_empty()) {
                    auth::restrict_ip(access, self.client_ip(client.ip(), req.headers()))?;
                }
                let caller = match &access.auth {
                    Some(a) => {
                        auth::authenticate(
                            a,
                            &snapshot.identities,
                            req.headers(),
                            req.uri().query(),
                            client_cert,
                            crate::clock::unix_ms(),
                        )
                        .await?
                    }
                    None => None,
                };
                auth::authorize(access, caller.as_ref())?;
                if let (Some(c), true) = (&caller, self.access_log.is_enabled()) {
                    entry.consumer = Some(c.consumer.name.clone());
                    entry.credential = Some(c.credential.label.clone());
                }
                caller
            }
            None => None,
        };

        // Phase: concurrency_limit (places held until the response is done).
        if !snapshot.concurrency_limits.is_empty() {
            self.concurrency_limit(
                snapshot,
                route,
                caller.as_ref(),
                client,
                req.headers(),
                &mut held.places,
            )?;
        }

        // Phase: rate_limit (every RateLimit that applies; cached answers count too).
        let limited = self
            .rate_limit(snapshot, route, caller.as_ref(), client, req.headers())
            .await?;

        // An AI route answers here, from its providers (phase `ai`).
        let upstream = match &route.upstream {
            Some(u) => u.clone(),
            None => {
                if let Some(Ok(id)) = made_request_id.map(|id| HeaderValue::from_bytes(&id)) {
                    req.headers_mut().insert(headers::X_REQUEST_ID, id);
                }
                let prefix = found.matched_prefix_len.min(path.len());
                // Boxed: its future is kilobytes, room every proxied request would carry.
                let mut resp = Box::pin(self.serve_ai(
                    snapshot,
                    route,
                    &path[prefix..],
                    *req,
                    caller.as_ref(),
                ))
                .await?;
                if let Some(v) = &limited {
                    ratelimit_headers(resp.headers_mut(), v);
                }
                return Ok(Proxied {
                    resp,
                    idle: AI_IDLE_TIMEOUT,
                    via: false,
                    wire: None,
                });
            }
        };

        // Phase: cache_lookup (routes that opt in). Responses of routes with credentials are
        // cached per consumer: one consumer never gets another's answer.
        let cache_ticket = match &route.cache {
            Some(cache) => {
                let mut key = match req.uri().query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                };
                if let Some(c) = &caller {
                    key = format!("{}\0{key}", c.consumer.name);
                }
                match cache.lookup(
                    req.method(),
                    host.as_deref().unwrap_or(""),
                    &key,
                    req.headers(),
                ) {
                    cache::Lookup::Hit(mut resp) => {
                        entry.cache = Some("hit");
                        if let Some(v) = &limited {
                            ratelimit_headers(resp.headers_mut(), v);
                        }
                        // The stored copy has this hop in its Via already.
                        return Ok(Proxied {
                            resp,
                            idle: upstream.spec.timeouts.idle.0,
                            via: false,
                            wire: None,
                        });
                    }
                    cache::Lookup::Miss(t) => {
                        entry.cache = Some("miss");
                        Some(t)
                    }
                    cache::Lookup::Bypass(t) => {
                        entry.cache = Some("bypass");
                        Some(t)
                    }
                }
            }
            None => None,
        };

        // Phase: limit_body (and buffer small bodies so a retry can resend them).
        let method = req.method().clone();
        let retries_allowed = upstream.spec.retries.count > 0
            && (is_idempotent(&method) || upstream.spec.retries.allow_non_idempotent);
        let upgrade = headers::requested_upgrade(req.headers());
        if upgrade.is_some() && !route.spec.websocket {
            return Err(GatewayError::UpgradeNotAllowed);
        }
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut *req));
        let (mut parts, incoming) = req.into_parts();
        // Phase: validate_request (media type first, the body once read).
        let read_whole = route.access.as_ref().is_some_and(|a| a.needs_body());
        if let Some(access) = &route.access {
            use hyper::body::Body as _;
            auth::check_content_type(access, &parts.headers, !incoming.is_end_stream())?;
        }
        let body_limit = match (route.spec.max_body_bytes, read_whole) {
            (None, true) => Some(crate::resources::access::DEFAULT_SCHEMA_BODY_LIMIT),
            (limit, _) => limit,
        };
        let body = limit_body(
            &parts,
            incoming,
            body_limit,
            retries_allowed,
            read_whole,
            upstream.spec.timeouts.idle.0,
        )
        .await?;
        if let (Some(access), ForwardBody::Buffered(bytes)) = (&route.access, &body) {
            if read_whole {
                auth::check_schema(access, bytes)?;
            }
        }
        if let Some(access) = &route.access {
            if let Some(query) = auth::prepare_identity_headers(
                access,
                caller.as_ref(),
                &mut parts.headers,
                parts.uri.query(),
            ) {
                let mut uri = parts.uri.clone().into_parts();
                let pq = match &query {
                    Some(q) => format!("{}?{q}", parts.uri.path()),
                    None => parts.uri.path().to_string(),
                };
                uri.path_and_query = pq.parse().ok();
                if let Ok(u) = Uri::from_parts(uri) {
                    parts.uri = u;
                }
            }
        }

        // Phase: prepare_upstream_request.
        let version_segment = match &route.spec.api_version {
            Some(v) if v.from == VersionSource::PathSegment => v.value.len() + 1,
            _ => 0,
        };
        let cut = if route.spec.strip_prefix {
            found.matched_prefix_len
        } else {
            version_segment
        };
        let forwarded_path = {
            let rest = &path[cut.min(path.len())..];
            if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            }
        };
        let client_trusted = headers::is_trusted(client.ip(), &self.settings.trusted_proxies);
        headers::remove_hop_by_hop(&mut parts.headers);
        let added = headers::UpstreamFields::prepare(
            &mut parts.headers,
            &peer.addr_text,
            client_trusted,
            host.as_deref(),
            if tls { "https" } else { "http" },
            made_request_id,
        );
        // A transformation, or a hash on a header, sees the request as the target will: the
        // added fields in the map. Otherwise they go straight into the head our client writes
        // (borrowed there: wrapping them in an Option would copy them).
        let added = if route.spec.request.is_some()
            || matches!(upstream.hash_on, Some(HashOn::Header(_)))
        {
            added.insert_into(&mut parts.headers);
            None
        } else {
            Some(&added)
        };
        if let Some(v) = &route.spec.api_version {
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(v.header.as_bytes()),
                HeaderValue::from_str(&v.value),
            ) {
                parts.headers.insert(name, value);
            }
        }
        if let Some(protocol) = &upgrade {
            headers::restore_upgrade(&mut parts.headers, protocol.clone());
        }
        // Phase: transform_request (the route's own changes have the last word).
        let (forwarded_path, forwarded_query) = match &route.spec.request {
            Some(t) => t
                .apply(
                    &mut parts.headers,
                    &transform::RewriteInput {
                        route: &route.name,
                        path: &forwarded_path,
                        query: parts.uri.query(),
                        captures: &found.captures,
                    },
                )
                .map_err(|e| {
                    if e.is_caused_by_request() {
                        GatewayError::BadRequest(
                            "the rewritten path would contain a '.' or '..' segment".into(),
                        )
                    } else {
                        GatewayError::Internal(e.to_string())
                    }
                })?,
            None => (forwarded_path, parts.uri.query().map(str::to_owned)),
        };
        let hash_key = upstream
            .hash_on
            .as_ref()
            .map(|h| hash_key(h, &parts.headers, client));

        // Phase: forward.
        // The circuit breaker judges the whole exchange (retries included), as clients see it.
        let permit = match &upstream.circuit {
            Some(c) => Some(c.try_acquire().ok_or_else(|| GatewayError::CircuitOpen {
                service: upstream.name.clone(),
            })?),
            None => None,
        };
        let result = forward(
            &upstream,
            &mut parts,
            added,
            // Nothing here reads the target's fields unless the route transforms or caches
            // the response.
            route.spec.response.is_none() && route.cache.is_none(),
            &forwarded_path,
            forwarded_query.as_deref(),
            body,
            hash_key.as_deref(),
            retries_allowed,
            entry,
            &mut held.target,
        )
        .await;
        if let Some(permit) = permit {
            match &result {
                Ok(resp) => permit.record(!matches!(
                    resp.status(),
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                )),
                Err(
                    GatewayError::UpstreamConnect { .. }
                    | GatewayError::UpstreamReset { .. }
                    | GatewayError::UpstreamTimeout { .. }
                    | GatewayError::NoHealthyTarget,
                ) => permit.record(false),
                // Our own errors say nothing about the upstream.
                Err(_) => drop(permit),
            }
        }
        let mut resp = result?;

        // A switched protocol: splice the two upgraded connections together.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let (Some(client_upgrade), Some(protocol)) = (client_upgrade, upgrade) {
                return Ok(Proxied {
                    resp: splice_upgrade(
                        client_upgrade,
                        *resp,
                        protocol,
                        std::mem::take(held),
                        upstream.spec.timeouts.upgraded_idle.as_ref().map(|d| d.0),
                    ),
                    idle: upstream.spec.timeouts.idle.0,
                    via: false,
                    wire: None,
                });
            }
        }

        // Phase: prepare_response, in the response's box.
        // The target's fields, when our client kept them in wire form (asked for above when
        // the route neither transforms nor caches the response; nothing hop-by-hop among
        // them, no Via), go to the client as they are.
        let wire = resp.body_mut().take_wire_fields();
        let rheaders = resp.headers_mut();
        headers::remove_hop_by_hop(rheaders);
        // This hop goes into the map when something reads the response's fields after this
        // (its transformation, the cache) or a Via is there to extend; otherwise the server
        // writes it with the response (`ResponseFields`), which costs less than inserting it.
        let via_outside = route.spec.response.is_none()
            && route.cache.is_none()
            && !rheaders.contains_key(hyper::header::VIA);
        if !via_outside {
            headers::add_via(rheaders);
        }
        if let Some(t) = &route.spec.response {
            t.apply(rheaders);
        }
        // The target's request slot (in-flight count) and its connection, in `held.target`
        // since `forward`, are held until the body is done: `handle` meters the body (one
        // layer for both).
        let resp = resp.map(BodyExt::boxed);
        let mut resp = match (&route.cache, cache_ticket) {
            (Some(cache), Some(ticket)) => cache.store(ticket, resp),
            _ => resp,
        };
        if let Some(v) = &limited {
            ratelimit_headers(resp.headers_mut(), v);
        }
        Ok(Proxied {
            resp,
            idle: upstream.spec.timeouts.idle.0,
            via: via_outside,
            wire,
        })
    }
}

/// A response from `proxy`, and what `handle` still has to do for it.
struct Proxied {
    resp: Response<ProxyBody>,
    /// The longest pause allowed between its body's chunks.
    idle: Duration,
    /// This hop is still to be added to its Via, outside the header map.
    via: bool,
    /// The target's fields, when they are passed on in wire form (not in `resp`'s map).
    wire: Option<h1::WireFields>,
}

/// What a request holds until its response body is done (or dropped).
#[derive(Default)]
struct Held {
    /// Places in the concurrency limits that count it.
    places: Vec<concurrency::InFlightPlace>,
    /// Its target's request slot, and the connection its response is read from.
    target: Option<InFlightGuard>,
}

impl Held {
    /// Gives everything back: the connection to its pool when `body_complete`.
    fn release(self, body_complete: bool) {
        if let Some(target) = self.target {
            target.finish(body_complete);
        }
    }
}

/// Who is at the other end of a client connection (each request gets a copy).
#[derive(Clone)]
struct Peer {
    addr: SocketAddr,
    /// `addr`'s IP as text (for X-Forwarded-For), made once per connection.
    addr_text: IpText,
    /// Whether the connection came in on the TLS listener.
    tls: bool,
    /// The client's certificate, verified against `--proxy-client-ca` when one is set.
    cert: Option<Arc<auth::ClientCert>>,
}

/// An upgraded connection's half that notes when bytes last went through it (ms after
/// `started`, shared by both halves), for `timeouts.upgraded_idle`.
struct Active<T> {
    io: T,
    last: Arc<AtomicU64>,
    started: Instant,
}

impl<T> Active<T> {
    fn new(io: T, last: Arc<AtomicU64>, started: Instant) -> Active<T> {
        Active { io, last, started }
    }

    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Active<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Active<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A client address as text in a buffer on the stack: the `ip` key of a limit, made without
/// a heap allocation on every request.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl IpText {
    pub fn new(ip: std::net::IpAddr) -> IpText {
        use std::io::Write;
        let mut buf = [0u8; 46];
        if let std::net::IpAddr::V4(v4) = ip {
            // The common case without the formatting machinery: four numbers and dots.
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let mut text = itoa::Buffer::new();
                let digits = text.format(octet).as_bytes();
                buf[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
            }
            return IpText { buf, len };
        }
        let mut out = std::io::Cursor::new(&mut buf[..]);
        // The longest address (IPv4-mapped IPv6 with a full tail) is 45 bytes: it fits.
        let _ = write!(out, "{ip}");
        let len = out.position() as usize;
        IpText { buf, len }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    /// The text's bytes, without the UTF-8 check `as_str` makes: for writing it into a head
    /// (X-Forwarded-For), on every request.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// `RateLimit-Policy` and `RateLimit` (IETF httpapi draft) and the common `X-RateLimit-*`.
/// On every admitted request, so nothing here allocates more than the one `RateLimit` value:
/// the policy is made once per limit, numbers are formatted without a `String`.
pub fn ratelimit_headers(headers: &mut hyper::HeaderMap, v: &ratelimit::Verdict) {
    use hyper::header::HeaderName;
    let mut rl = bytes::BytesMut::with_capacity(v.limit_name.len() + 32);
    rl.extend_from_slice(b"\"");
    rl.extend_from_slice(v.limit_name.as_bytes());
    rl.extend_from_slice(b"\";r=");
    rl.extend_from_slice(itoa::Buffer::new().format(v.remaining).as_bytes());
    rl.extend_from_slice(b";t=");
    rl.extend_from_slice(itoa::Buffer::new().format(v.reset_s).as_bytes());
    headers.insert(
        HeaderName::from_static("ratelimit-policy"),
        v.policy_header.clone(),
    );
    if let Ok(value) = HeaderValue::from_maybe_shared(rl.freeze()) {
        headers.insert(HeaderName::from_static("ratelimit"), value);
    }
    headers.insert(HeaderName::from_static("x-ratelimit-limit"), v.limit.into());
    headers.insert(
        HeaderName::from_static("x-ratelimit-remaining"),
        v.remaining.into(),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-reset"),
        v.reset_s.into(),
    );
}

/// Answers 101 to the client and, once both sides have switched, copies bytes both ways
/// until either closes. The target counts as in flight for the whole session.
fn splice_upgrade(
    client_upgrade: hyper::upgrade::OnUpgrade,
    mut resp: Response<UpstreamBody>,
    protocol: HeaderValue,
    held: Held,
    idle: Option<Duration>,
) -> Response<ProxyBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        // The target's slot and the concurrency places, until the splice ends.
        let _held = held;
        let (client, server) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "protocol upgrade did not complete");
                return;
            }
        };
        let activity = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut client = Active::new(TokioIo::new(client), activity.clone(), started);
        let mut server = Active::new(TokioIo::new(server), activity.clone(), started);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
        let watchdog = async {
            let Some(idle) = idle else {
                return std::future::pending().await;
            };
            // Sleeps until `idle` after the last byte; wakes early only to look again.
            loop {
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                let quiet_until = started + last + idle;
                if Instant::now() >= quiet_until {
                    return idle;
                }
                tokio::time::sleep_until(quiet_until.into()).await;
            }
        };
        tokio::select! {
            r = copy => if let Err(e) = r {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            },
            idle = watchdog => tracing::debug!(?idle, "upgraded connection closed: idle"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::restore_upgrade(&mut parts.headers, protocol);
    headers::add_via(&mut parts.headers);
    Response::from_parts(parts, body::empty())
}

/// Whether `target` can be written as an HTTP/1.1 request-target: no spaces or control
/// characters (a rewritten path is checked here, since our codec writes it as it is).
fn is_request_target(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| b > b' ' && b != 0x7f)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Host from the Host header (HTTP/1.1) or the URI authority (HTTP/2), without the port.
fn request_host<'a>(field: Option<&'a HeaderValue>, uri: &'a Uri) -> Option<Cow<'a, str>> {
    // A Host field that is not text gives way to the URI's authority (always ASCII).
    let (raw, (end, upper)) = match field.and_then(|h| host_scan(h.as_bytes()).map(|s| (h, s))) {
        Some((h, scan)) => (h.as_bytes(), scan),
        None => {
            let authority = uri.authority()?.as_str().as_bytes();
            (authority, host_scan(authority)?)
        }
    };
    // SAFETY: `host_scan` accepted only ASCII bytes.
    let host = unsafe { std::str::from_utf8_unchecked(&raw[..end]) };
    // Most clients send it in lower case already: then no copy.
    Some(match upper {
        true => Cow::Owned(host.to_ascii_lowercase()),
        false => Cow::Borrowed(host),
    })
}

/// One pass over a Host value: where the host ends (before `:port`; `[v6]:port` keeps its
/// brackets) and whether it has an upper-case letter; None when it is not text (visible
/// ASCII, space and tab, as `HeaderValue::to_str` allows).
fn host_scan(raw: &[u8]) -> Option<(usize, bool)> {
    let (mut last_colon, mut first_bracket, mut upper) = (None, None, false);
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b':' => last_colon = Some(i),
            b']' if first_bracket.is_none() => first_bracket = Some(i),
            b'A'..=b'Z' => upper = true,
            b'\t' | b' '..=b'~' => {}
            _ => return None,
        }
    }
    let end = if raw.first() == Some(&b'[') {
        first_bracket.map_or(raw.len(), |b| b + 1)
    } else {
        last_colon.unwrap_or(raw.len())
    };
    // Upper case after the end (in the port) does not count.
    let upper = upper && raw[..end].iter().any(u8::is_ascii_uppercase);
    Some((end, upper))
}

/// The request body as it will be forwarded: checked against the route's limit, and
/// buffered when small and a retry may need to resend it.
enum ForwardBody {
    Buffered(Bytes),
    Streaming(ProxyBody),
}

async fn limit_body(
    parts: &hyper::http::request::Parts,
    incoming: RequestBody,
    limit: Option<u64>,
    want_replay: bool,
    read_whole: bool,
    idle: Duration,
) -> Result<ForwardBody, GatewayError> {
    use hyper::body::Body as _;
    // A client that stops sending its body for longer than the Service's idle timeout is cut
    // off (408 when nothing was forwarded yet), so a stalled upload cannot hold a connection
    // and an upstream slot for ever.
    let stalled = |e: &body::BoxError| e.is::<body::IdleTimeout>();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(limit), Some(len)) = (limit, declared) {
        if len > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
    }
    if incoming.is_end_stream() {
        return Ok(ForwardBody::Buffered(Bytes::new()));
    }
    let incoming = body::MeteredBody::new(incoming, idle, |_, _| {});
    let small = declared.is_some_and(|n| n <= REPLAYABLE_BODY_BYTES as u64);
    match limit {
        // Unknown length under a limit: read up to the limit, refusing more.
        Some(limit) if read_whole || declared.is_none() || (want_replay && small) => {
            let collected = Limited::new(incoming, limit as usize)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        GatewayError::PayloadTooLarge { limit }
                    } else if stalled(&e) {
                        GatewayError::RequestBodyTimeout { idle }
                    } else {
                        GatewayError::BadRequest(format!("reading the request body failed: {e}"))
                    }
                })?;
            Ok(ForwardBody::Buffered(collected.to_bytes()))
        }
        _ if want_replay && small => {
            let collected = incoming.collect().await.map_err(|e| {
                if stalled(&e) {
                    GatewayError::RequestBodyTimeout { idle }
                } else {
                    GatewayError::BadRequest(format!("reading the request body failed: {e}"))
                }
            })?;
            Ok(ForwardBody::Buffered(collected.to_bytes()))
        }
        _ => Ok(ForwardBody::Streaming(incoming.boxed())),
    }
}

fn hash_key(on: &HashOn, headers: &hyper::HeaderMap, client: SocketAddr) -> Vec<u8> {
    match on {
        HashOn::ClientIp => client.ip().to_string().into_bytes(),
        HashOn::Header(name) => headers
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        HashOn::Cookie(name) => headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

/// One attempt's request, for the client that carries it (`pool.rs`).
enum Outgoing<'a> {
    /// A body in memory to an HTTP/1.1 target: our own codec.
    Own(upstream_h1::BufferedRequest<'a>),
    /// A streamed body, an upgrade, or HTTP/2: hyper.
    Hyper(Request<ProxyBody>),
}

/// Why one attempt failed, in the terms of `retries.on`.
enum AttemptError {
    Connect(String),
    Reset(String),
    Timeout,
}

/// Sends the request to a target, retrying on another target when the failure is listed in
/// `retries.on` and resending is safe. Returns the response, and puts the request slot it
/// holds on its target in `slot` (hold it until the body is done; not in the result, which
/// would then be 296 bytes: callgrind counted 64 instructions in memcpy per move of it, 29
/// for moves of 136-256 bytes; `benches/proxy/instructions.sh` with `--dump-instr=yes`).
/// `wire_fields`: the caller reads none of the response's fields, so our client may keep
/// them in wire form (`h1::WireFields`).
#[allow(clippy::too_many_arguments)]
async fn forward(
    upstream: &Arc<Upstream>,
    parts: &mut hyper::http::request::Parts,
    added: Option<&headers::UpstreamFields<'_>>,
    wire_fields: bool,
    path: &str,
    query: Option<&str>,
    body: ForwardBody,
    hash_key: Option<&[u8]>,
    retries_allowed: bool,
    entry: &mut AccessEntry,
    slot: &mut Option<InFlightGuard>,
) -> Result<upstream_h1::UpstreamResponse, GatewayError> {
    let spec = &upstream.spec;
    let deadline = spec.timeouts.total.map(|t| Instant::now() + t.0);
    let (replay, mut streaming) = match body {
        ForwardBody::Buffered(b) => (Some(b), None),
        ForwardBody::Streaming(s) => (None, Some(s)),
    };
    let max_attempts = if retries_allowed && replay.is_some() {
        spec.retries.count + 1
    } else {
        1
    };
    let retries_after_sending = spec
        .retries
        .on
        .iter()
        .any(|on| *on != RetryOn::ConnectFailure);
    // Targets already tried, kept on the stack: at most 11 attempts (`retries.count` <= 10).
    let mut tried = [usize::MAX; 11];
    let mut tried_len = 0;
    let mut last_error = GatewayError::NoHealthyTarget;
    for attempt in 1..=max_attempts {
        if attempt > 1 {
            tokio::time::sleep(upstream.backoff(attempt - 1)).await;
        }
        // Pick a target and take one of its request slots (`pool.max_requests_per_target`);
        // another request may take the last slot between the two, so pick again a few times.
        let mut picked = None;
        for _ in 0..=upstream.targets.len() {
            let Some(i) = upstream
                .balancer
                .pick(upstream.as_ref(), hash_key, &tried[..tried_len])
            else {
                break;
            };
            if let Some(guard) = InFlightGuard::try_new(upstream.clone(), i) {
                picked = Some((i, guard));
                break;
            }
        }
        let Some((i, mut in_flight)) = picked else {
            return Err(if upstream.spec.pool.max_requests_per_target.is_some() {
                GatewayError::UpstreamBusy {
                    service: upstream.name.clone(),
                }
            } else {
                GatewayError::NoHealthyTarget
            });
        };
        if let Some(slot) = tried.get_mut(tried_len) {
            *slot = i;
            tried_len += 1;
        }
        let target = &upstream.targets[i];
        if entry.kept {
            entry.upstream = Some(target.display.clone());
        }
        entry.attempts = attempt;

        let mut uri = String::with_capacity(
            target.uri_prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        uri.push_str(&target.uri_prefix);
        uri.push_str(path);
        if let Some(q) = query {
            uri.push('?');
            uri.push_str(q);
        }
        // A body in memory to an HTTP/1.1 target (the common case) goes through our own
        // codec in this task, which borrows the headers; a streamed body, an upgrade or
        // HTTP/2 through hyper.
        let outgoing = match &replay {
            Some(body)
                if upstream.pool.takes_buffered() && !parts.headers.contains_key(UPGRADE) =>
            {
                if !is_request_target(&uri) {
                    return Err(GatewayError::BadRequest(
                        "cannot build the upstream URI: it contains spaces or control characters"
                            .into(),
                    ));
                }
                Outgoing::Own(upstream_h1::BufferedRequest {
                    method: parts.method.clone(),
                    target: std::mem::take(&mut uri),
                    host: target.host_header.clone(),
                    headers: &parts.headers,
                    added,
                    body: body.clone(),
                    wire_fields,
                })
            }
            _ => {
                // hyper's request takes the headers unless another attempt may follow one
                // that reached the upstream: a connect failure gives the unsent request's
                // headers back (below), so only retries on resets, timeouts or 5xx answers
                // need a copy.
                let mut headers = if attempt < max_attempts && retries_after_sending {
                    parts.headers.clone()
                } else {
                    std::mem::take(&mut parts.headers)
                };
                let body = match (&replay, streaming.take()) {
                    (Some(b), _) => full(b.clone()),
                    (None, Some(s)) => s,
                    (None, None) => {
                        return Err(GatewayError::Internal("request body already sent".into()))
                    }
                };
                // From the String itself: no copy of the text.
                let uri = Uri::try_from(std::mem::take(&mut uri)).map_err(|e| {
                    GatewayError::BadRequest(format!("cannot build the upstream URI: {e}"))
                })?;
                let mut req = Request::builder()
                    .method(parts.method.clone())
                    .uri(uri)
                    .version(match spec.protocol {
                        UpstreamProtocol::Http1 => hyper::Version::HTTP_11,
                        UpstreamProtocol::Http2 => hyper::Version::HTTP_2,
                    })
                    .body(body)
                    .map_err(|e| GatewayError::Internal(e.to_string()))?;
                headers.insert(HOST, target.host_header.clone());
                if let Some(added) = added {
                    added.insert_into(&mut headers);
                }
                *req.headers_mut() = std::mem::take(&mut headers);
                Outgoing::Hyper(req)
            }
        };

        // Timed for the log alone.
        let sent = entry.kept.then(Instant::now);
        // The read timeout (within the total one) bounds the attempt up to the response head.
        let now = Instant::now();
        let mut wait_until = now + spec.timeouts.read.0;
        if let Some(d) = deadline {
            wait_until = wait_until.min(d);
        }
        let sent_result = match outgoing {
            // Our client keeps the deadline with the connection's own timer.
            Outgoing::Own(req) => {
                upstream
                    .pool
                    .exchange(i, &target.connect_to, req, now, wait_until)
                    .await
            }
            // Boxed: hyper's exchange is kilobytes of future, which every request's future
            // (held per client connection) would otherwise make room for.
            Outgoing::Hyper(req) => match tokio::time::timeout_at(
                wait_until.into(),
                Box::pin(upstream.pool.send(i, &target.connect_to, req)),
            )
            .await
            {
                Ok(Ok((resp, connection))) => {
                    in_flight.connection = connection;
                    Ok(Box::new(resp))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(SendError::TimedOut),
            },
        };
        if let Some(sent) = sent {
            entry.upstream_latency_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        }
        let failure = match sent_result {
            Ok(resp) => {
                let status = resp.status();
                let failed = matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                );
                upstream.record(i, !failed);
                let more = attempt < max_attempts
                    && failed
                    && spec.retries.on.contains(&RetryOn::Status5xx)
                    && deadline.is_none_or(|d| Instant::now() < d);
                if !more {
                    *slot = Some(in_flight);
                    return Ok(resp);
                }
                metrics::counter!("konnect_proxy_retries_total", "service" => upstream.name.clone()).increment(1);
                continue;
            }
            Err(SendError::Connect { detail, headers }) => {
                if let Some(headers) = headers {
                    parts.headers = headers;
                }
                AttemptError::Connect(detail)
            }
            // The client stalled while its body streamed to the upstream: not the upstream's
            // failure, and nothing to retry.
            Err(SendError::BodyStalled) => {
                return Err(GatewayError::RequestBodyTimeout {
                    idle: spec.timeouts.idle.0,
                })
            }
            Err(SendError::Failed(detail)) => AttemptError::Reset(detail),
            Err(SendError::TimedOut) => AttemptError::Timeout,
        };
        let (retry_on, err) = match failure {
            AttemptError::Connect(detail) => (
                RetryOn::ConnectFailure,
                GatewayError::UpstreamConnect {
                    upstream: target.display.clone(),
                    detail,
                },
            ),
            AttemptError::Reset(detail) => (
                RetryOn::Reset,
                GatewayError::UpstreamReset {
                    upstream: target.display.clone(),
                    detail,
                },
            ),
            AttemptError::Timeout => (
                RetryOn::Timeout,
                GatewayError::UpstreamTimeout {
                    upstream: target.display.clone(),
                },
            ),
        };
        upstream.record(i, false);
        metrics::counter!("konnect_proxy_upstream_errors_total", "service" => upstream.name.clone(), "kind" => err.code())
            .increment(1);
        last_error = err;
        let retryable =
            spec.retries.on.contains(&retry_on) && deadline.is_none_or(|d| Instant::now() < d);
        if !retryable {
            break;
        }
        if attempt < max_attempts {
            metrics::counter!("konnect_proxy_retries_total", "service" => upstream.name.clone())
                .increment(1);
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_as_text_fit_the_stack_buffer() {
        for ip in [
            "192.168.10.200",
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "::1",
            "2001:db8:85a3:1234:5678:8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::ffff:255.255.255.255",
        ] {
            let addr: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(addr).as_str(), addr.to_string());
        }
    }

    #[test]
    fn request_host_is_the_lower_case_name_without_the_port() {
        let host = |h: &str| {
            let req = Request::builder().header(HOST, h).body(()).unwrap();
            request_host(req.headers().get(HOST), req.uri()).map(Cow::into_owned)
        };
        assert_eq!(
            host("API.Example.com:8080").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(host("example.com").as_deref(), Some("example.com"));
        assert_eq!(host("[::1]:8443").as_deref(), Some("[::1]"));
        assert_eq!(host("[2001:DB8::1]").as_deref(), Some("[2001:db8::1]"));
        let h2 = Request::builder()
            .uri("https://Api.Example.com:443/x")
            .body(())
            .unwrap();
        assert_eq!(
            request_host(h2.headers().get(HOST), h2.uri()).as_deref(),
            Some("api.example.com")
        );
        let none = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(request_host(none.headers().get(HOST), none.uri()), None);
        // A Host field that is not text gives way to the URI's authority.
        let odd = Request::builder()
            .uri("http://Auth.example:81/x")
            .header(HOST, HeaderValue::from_bytes(b"h\xe9llo").unwrap())
            .body(())
            .unwrap();
        assert_eq!(
            request_host(odd.headers().get(HOST), odd.uri()).as_deref(),
            Some("auth.example")
        );
        assert_eq!(host("x.example:ABC").as_deref(), Some("x.example"));
    }

    #[test]
    fn rate_limit_headers_carry_the_policy_and_what_is_left() {
        let mut headers = hyper::HeaderMap::new();
        let v = ratelimit::Verdict::for_test("free-tier", 100, 60, 42, 17);
        ratelimit_headers(&mut headers, &v);
        let h = |n: &str| headers[n].to_str().unwrap().to_string();
        assert_eq!(h("ratelimit-policy"), "\"free-tier\";q=100;w=60");
        assert_eq!(h("ratelimit"), "\"free-tier\";r=42;t=17");
        assert_eq!(
            (
                h("x-ratelimit-limit"),
                h("x-ratelimit-remaining"),
                h("x-ratelimit-reset")
            ),
            ("100".into(), "42".into(), "17".into())
        );
    }
}

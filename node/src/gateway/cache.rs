//! Opt-in response caching per route (`spec.cache`): GET and HEAD responses kept in memory on
//! each node, fresh for a TTL bounded by the upstream's Cache-Control, selected by Vary, evicted
//! least-recently-used beyond a byte budget, and marked `X-Cache: HIT|MISS|BYPASS`.
//!
//! The gateway asks `ResponseCache::lookup` after `match_route`: a hit is answered at once; a
//! miss or bypass yields a `CacheTicket` that goes back to `ResponseCache::store` together with
//! the upstream response after `prepare_response`. `store` decides whether the response may be
//! kept and, if so, copies the body on the side while it streams to the client; the entry is
//! inserted only when the body has completed.
//!
//! Caching rules (RFC 9111 for a shared cache, simplified):
//! - Only GET and HEAD are looked up. A HEAD may be answered from a cached GET (headers only);
//!   a GET is never answered from a HEAD-only entry.
//! - Requests carrying `Authorization` or `Cache-Control: no-store` bypass the cache (neither
//!   served nor stored). `Cache-Control: no-cache`, `max-age=0` or `Pragma: no-cache` skip the
//!   lookup but the fresh response may be stored. A request `max-age=N` only accepts entries
//!   at most N seconds old. `min-fresh`, `max-stale` and `only-if-cached` are ignored.
//! - A response is stored when its status is in `status_codes`, it has no `Set-Cookie`, its
//!   Cache-Control has none of `no-store`, `private`, `no-cache` (also in their field-qualified
//!   forms), its `Vary` is not `*`, and its body fits `max_body_bytes`. Its lifetime is the
//!   route's `ttl`, lowered by `s-maxage`, else `max-age`, else `Expires` minus `Date`
//!   (IMF-fixdate only; any other or invalid date counts as already expired), then lowered by
//!   the upstream's `Age`. Nothing else is heuristic: without those headers the `ttl` applies.
//! - Stale entries are never served and never revalidated (no conditional requests); they are
//!   dropped when a lookup or insert meets them, or by LRU eviction.
//! - A non-error response (2xx, 3xx) to an unsafe method (POST, PUT, DELETE, ...) drops this
//!   node's entries for the same host and path (RFC 9111 section 4.4). Other nodes keep theirs
//!   until they expire: the cache is per node by design, so the request path never waits on Raft.
//! - Hop-by-hop headers, `Age`, `X-Cache` and `X-Request-Id` are not stored; `Age` is computed
//!   on each hit. Concurrent misses for the same key all go upstream (no request coalescing).
//!
//! Architecture invariant: nothing here awaits; the entry table sits behind one `Mutex` that is
//! only held for map operations, never across an await or while a body is polled.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, DATE,
    EXPIRES, PRAGMA, SET_COOKIE, VARY,
};
use hyper::http::response::Parts;
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use super::body::{empty, full, BoxError, ProxyBody};
use super::headers::{remove_hop_by_hop, X_REQUEST_ID};
use crate::resources::duration::{secs, Dur};
use crate::resources::SpecError;

/// Response header telling the client whether the cache answered: `HIT`, `MISS` or `BYPASS`.
pub const X_CACHE: &str = "x-cache";

/// Longest `ttl` accepted: a year (also keeps `Instant + ttl` far from overflow).
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Most variants (distinct Vary values) kept for one host, path and method class; beyond it
/// the least recently used variant of that key goes, so a lookup never scans a long list.
const MAX_VARIANTS_PER_KEY: usize = 16;

/// Bytes charged per stored header (and per Vary value) on top of its name and value, for the
/// map's own bookkeeping (the same allowance HTTP/2 uses for its header table).
const HEADER_OVERHEAD_BYTES: u64 = 32;

/// Largest delta-seconds honoured in `max-age`/`s-maxage`/`Age` (RFC 9111 section 1.2.2).
const MAX_DELTA_SECONDS: u64 = 1 << 31;

// === CacheSpec ===

/// `spec.cache` of a Route: turns on response caching for the route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Longest time a response is served from the cache. When the upstream sends `s-maxage`,
    /// `max-age` or `Expires`, the shorter lifetime wins. Default 60s; at most 365 days.
    #[serde(default = "default_ttl")]
    pub ttl: Dur,
    /// Responses with a larger body, in bytes, pass through and are not stored. Default
    /// 1048576 (1 MiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Memory this route's cache may use on each node, in bytes (body, headers and key of each
    /// entry); the least recently used entries are evicted beyond it. Default 67108864 (64 MiB).
    #[serde(default = "default_max_total_bytes")]
    pub max_total_bytes: u64,
    /// Response status codes that may be stored. Default [200, 203, 204, 301, 404, 410].
    #[serde(default = "default_status_codes")]
    pub status_codes: Vec<u16>,
}

fn default_ttl() -> Dur {
    secs(60)
}
fn default_max_body_bytes() -> u64 {
    1024 * 1024
}
fn default_max_total_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_status_codes() -> Vec<u16> {
    vec![200, 203, 204, 301, 404, 410]
}

impl Default for CacheSpec {
    fn default() -> CacheSpec {
        CacheSpec {
            ttl: default_ttl(),
            max_body_bytes: default_max_body_bytes(),
            max_total_bytes: default_max_total_bytes(),
            status_codes: default_status_codes(),
        }
    }
}

impl CacheSpec {
    /// Checks the values serde cannot; `field_prefix` is where the spec sits (`spec.cache`).
    pub fn validate(&self, field_prefix: &str) -> Result<(), SpecError> {
        if self.ttl.0.is_zero() || self.ttl.0 > MAX_TTL {
            return Err(SpecError::new(
                format!("{field_prefix}.ttl"),
                format!(
                    "ttl {:?} must be more than 0s and at most 365 days",
                    self.ttl.0
                ),
            ));
        }
        if self.max_total_bytes == 0 {
            return Err(SpecError::new(
                format!("{field_prefix}.max_total_bytes"),
                "must be more than 0 (remove `cache` to turn caching off)",
            ));
        }
        if self.max_body_bytes > self.max_total_bytes {
            return Err(SpecError::new(
                format!("{field_prefix}.max_body_bytes"),
                format!(
                    "{} is more than max_total_bytes ({}): such a body could never be stored",
                    self.max_body_bytes, self.max_total_bytes
                ),
            ));
        }
        if self.status_codes.is_empty() {
            return Err(SpecError::new(
                format!("{field_prefix}.status_codes"),
                "list at least one status code (default [200, 203, 204, 301, 404, 410])",
            ));
        }
        for (i, &code) in self.status_codes.iter().enumerate() {
            let why = match code {
                206 => Some("partial content (206) cannot be cached: ranges are not combined"),
                304 => Some("304 answers a conditional request and has no body to cache"),
                200..=599 => None,
                _ => Some("only final status codes 200-599 can be cached"),
            };
            if let Some(why) = why {
                return Err(SpecError::new(
                    format!("{field_prefix}.status_codes[{i}]"),
                    format!("{code}: {why}"),
                ));
            }
        }
        Ok(())
    }
}

// === Lookup and CacheTicket ===

/// The cache's answer to a request.
#[derive(Debug)]
pub enum Lookup {
    /// A fresh stored response, ready to send (`X-Cache: HIT`, `Age` set).
    Hit(Response<ProxyBody>),
    /// Not found (or revalidation was asked for): forward, then give the response and this
    /// ticket to `ResponseCache::store`, which may keep it.
    Miss(CacheTicket),
    /// The request may not use the cache: forward, then give the response and this ticket to
    /// `ResponseCache::store`, which marks it `X-Cache: BYPASS` and never keeps it.
    Bypass(CacheTicket),
}

/// What `store` needs to know about the request a response answers.
#[derive(Debug)]
pub struct CacheTicket {
    purpose: TicketPurpose,
}

#[derive(Debug)]
enum TicketPurpose {
    /// The response may be stored under `key`; the variant is chosen from `request_headers`
    /// by the names in the response's Vary.
    Store {
        key: PrimaryKey,
        request_headers: HeaderMap,
    },
    /// Never stored. `invalidates` is the host and path-and-query of an unsafe request, whose
    /// non-error response drops the entries stored for them.
    Bypass {
        invalidates: Option<(String, String)>,
    },
}

/// GET and HEAD responses are kept apart: a HEAD entry has no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MethodClass {
    Get,
    Head,
}

/// Where entries are found first; `Variant::vary` then picks among them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PrimaryKey {
    class: MethodClass,
    host: String,
    path_and_query: String,
}

impl PrimaryKey {
    fn with_class(&self, class: MethodClass) -> PrimaryKey {
        PrimaryKey {
            class,
            ..self.clone()
        }
    }
}

// === ResponseCache ===

/// The response cache of one route on this node. Cheap to share (`Arc`), `Send + Sync`.
pub struct ResponseCache {
    shared: Arc<Shared>,
}

/// State reachable from both the cache and the bodies still copying into it.
struct Shared {
    /// Route name, the `route` label of the metrics.
    route: String,
    spec: CacheSpec,
    /// `tokio::time::Instant::now` in production (so paused tokio time also pauses the cache);
    /// tests substitute a hand-moved clock.
    clock: Clock,
    entries: Mutex<Entries>,
}

type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("route", &self.shared.route)
            .field("spec", &self.shared.spec)
            .field("stored_bytes", &self.stored_bytes())
            .finish()
    }
}

impl ResponseCache {
    /// An empty cache for the route named `route` (used as the metrics label). The spec is
    /// expected to have passed `CacheSpec::validate`.
    pub fn new(route: impl Into<String>, spec: CacheSpec) -> ResponseCache {
        ResponseCache::with_clock(route, spec, Arc::new(Instant::now))
    }

    fn with_clock(route: impl Into<String>, spec: CacheSpec, clock: Clock) -> ResponseCache {
        ResponseCache {
            shared: Arc::new(Shared {
                route: route.into(),
                spec,
                clock,
                entries: Mutex::new(Entries::default()),
            }),
        }
    }

    pub fn spec(&self) -> &CacheSpec {
        &self.shared.spec
    }

    /// Bytes currently charged against `max_total_bytes`.
    pub fn stored_bytes(&self) -> u64 {
        self.shared.lock_entries().total_bytes
    }

    /// Looks the request up. `host` is the request's host without port, `path_and_query` the
    /// (normalised) path plus `?query` when there is one: together they must determine what
    /// the upstream is asked for.
    pub fn lookup(
        &self,
        method: &Method,
        host: &str,
        path_and_query: &str,
        req_headers: &HeaderMap,
    ) -> Lookup {
        let class = match *method {
            Method::GET => MethodClass::Get,
            Method::HEAD => MethodClass::Head,
            _ => {
                let unsafe_method = !matches!(*method, Method::OPTIONS | Method::TRACE);
                let invalidates =
                    unsafe_method.then(|| (host.to_string(), path_and_query.to_string()));
                return self.bypass(invalidates);
            }
        };
        // A shared cache must not reuse answers to authorized requests (RFC 9111 section 3.5);
        // bypassing them entirely also keeps one consumer's answer from another.
        if req_headers.contains_key(AUTHORIZATION) {
            return self.bypass(None);
        }
        let wants = RequestDirectives::parse(req_headers);
        if wants.no_store {
            return self.bypass(None);
        }
        let key = PrimaryKey {
            class,
            host: host.to_string(),
            path_and_query: path_and_query.to_string(),
        };
        if !wants.no_cache {
            if let Some(resp) = self.find(&key, req_headers, wants.max_age) {
                self.count_lookup("hit");
                return Lookup::Hit(resp);
            }
        }
        self.count_lookup("miss");
        Lookup::Miss(CacheTicket {
            purpose: TicketPurpose::Store {
                key,
                request_headers: req_headers.clone(),
            },
        })
    }

    /// Takes the upstream response to a request that was looked up, marks it `X-Cache: MISS`
    /// or `BYPASS`, and, when it may be stored, returns it with a body that copies the bytes
    /// on the side while they stream to the client. The entry is inserted when that body
    /// completes; a body that fails, is abandoned or outgrows `max_body_bytes` is not stored.
    pub fn store(&self, ticket: CacheTicket, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        let (key, request_headers) = match ticket.purpose {
            TicketPurpose::Bypass { invalidates } => {
                let non_error = parts.status.is_success() || parts.status.is_redirection();
                if let (Some((host, path_and_query)), true) = (invalidates, non_error) {
                    self.shared
                        .lock_entries()
                        .invalidate(&host, &path_and_query);
                }
                parts
                    .headers
                    .insert(X_CACHE, HeaderValue::from_static("BYPASS"));
                return Response::from_parts(parts, body);
            }
            TicketPurpose::Store {
                key,
                request_headers,
            } => (key, request_headers),
        };
        let now = self.shared.now();
        let plan = self.plan_storage(&parts, &body, key.class);
        let mut stored_headers = parts.headers.clone();
        parts
            .headers
            .insert(X_CACHE, HeaderValue::from_static("MISS"));
        let plan = match plan {
            Ok(plan) => plan,
            Err(reason) => {
                tracing::debug!(route = %self.shared.route, reason, "response not cached");
                return Response::from_parts(parts, body);
            }
        };

        remove_hop_by_hop(&mut stored_headers);
        for name in [AGE.as_str(), X_CACHE, X_REQUEST_ID.as_str()] {
            stored_headers.remove(name);
        }
        let vary = plan
            .vary_names
            .into_iter()
            .map(|name| {
                let value = request_header_value(&request_headers, &name);
                (name, value)
            })
            .collect();
        let pending = PendingEntry {
            key,
            vary,
            status: parts.status,
            headers: stored_headers,
            received_at: now,
            initial_age: plan.initial_age,
            expires_at: now + plan.fresh_for,
        };
        // hyper never polls a body that says it has ended, so an empty one is stored now.
        if body.is_end_stream() {
            self.shared.insert(pending, Bytes::new());
            return Response::from_parts(parts, body);
        }
        let tee = TeeBody {
            inner: body,
            capture: Some(Capture {
                chunks: Vec::new(),
                len: 0,
                limit: self.shared.spec.max_body_bytes,
                pending,
                shared: self.shared.clone(),
            }),
        };
        Response::from_parts(parts, tee.boxed())
    }

    fn bypass(&self, invalidates: Option<(String, String)>) -> Lookup {
        self.count_lookup("bypass");
        Lookup::Bypass(CacheTicket {
            purpose: TicketPurpose::Bypass { invalidates },
        })
    }

    fn count_lookup(&self, result: &'static str) {
        metrics::counter!("konnect_proxy_cache_lookups_total",
            "route" => self.shared.route.clone(), "result" => result)
        .increment(1);
    }

    /// A fresh stored response for the request, built outside the lock.
    fn find(
        &self,
        key: &PrimaryKey,
        req_headers: &HeaderMap,
        max_age: Option<Duration>,
    ) -> Option<Response<ProxyBody>> {
        let now = self.shared.now();
        // A HEAD is answered from the GET entry when there is one, else from a HEAD entry.
        let classes: &[MethodClass] = match key.class {
            MethodClass::Get => &[MethodClass::Get],
            MethodClass::Head => &[MethodClass::Get, MethodClass::Head],
        };
        let found = {
            let mut entries = self.shared.lock_entries();
            classes.iter().find_map(|&class| {
                entries.find_fresh(&key.with_class(class), req_headers, now, max_age)
            })
        }?;
        let age = found.age_at(now);
        let mut headers = found.headers.clone();
        headers.insert(AGE, HeaderValue::from(age.as_secs()));
        headers.insert(X_CACHE, HeaderValue::from_static("HIT"));
        let body = match key.class {
            MethodClass::Get => full(found.body.clone()),
            MethodClass::Head => empty(),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = found.status;
        *resp.headers_mut() = headers;
        Some(resp)
    }

    /// Whether a response may be stored, and for how long; `Err` says why not.
    fn plan_storage(
        &self,
        parts: &Parts,
        body: &ProxyBody,
        class: MethodClass,
    ) -> Result<StoragePlan, &'static str> {
        let spec = &self.shared.spec;
        if !spec.status_codes.contains(&parts.status.as_u16()) {
            return Err("status not in cache.status_codes");
        }
        let headers = &parts.headers;
        if headers.contains_key(SET_COOKIE) {
            return Err("response sets a cookie");
        }
        let directives = Directives::parse(headers.get_all(CACHE_CONTROL).iter());
        if directives.has("no-store") || directives.has("private") || directives.has("no-cache") {
            return Err("response Cache-Control forbids storing (no-store, private or no-cache)");
        }
        let vary_names = vary_names(headers).ok_or("response varies on * or a bad header name")?;
        if class == MethodClass::Get {
            let declared = headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let too_large = declared.is_some_and(|n| n > spec.max_body_bytes)
                || body.size_hint().lower() > spec.max_body_bytes;
            if too_large {
                return Err("body larger than cache.max_body_bytes");
            }
        }

        let upstream_lifetime = directives
            .delta_seconds("s-maxage")
            .or_else(|| directives.delta_seconds("max-age"))
            .or_else(|| lifetime_from_expires(headers));
        let lifetime = match upstream_lifetime {
            Some(l) => l.min(spec.ttl.0),
            None => spec.ttl.0,
        };
        let initial_age = headers
            .get(AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_delta_seconds)
            .unwrap_or(Duration::ZERO);
        let fresh_for = lifetime.saturating_sub(initial_age);
        if fresh_for.is_zero() {
            return Err("response is already stale (max-age, Expires or Age)");
        }
        Ok(StoragePlan {
            fresh_for,
            initial_age,
            vary_names,
        })
    }
}

/// The outcome of `plan_storage` for a storable response.
struct StoragePlan {
    /// Time from now until the entry goes stale; more than zero, at most `spec.ttl`.
    fresh_for: Duration,
    /// The upstream's `Age`, added to the time spent here when a hit reports its age.
    initial_age: Duration,
    vary_names: Vec<HeaderName>,
}

impl Shared {
    fn now(&self) -> Instant {
        (self.clock)()
    }

    /// The entry table. A panic while it was held may have broken its invariants, so a
    /// poisoned table is emptied (losing cached responses only) rather than trusted.
    fn lock_entries(&self) -> MutexGuard<'_, Entries> {
        match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                *guard = Entries::default();
                self.entries.clear_poison();
                guard
            }
        }
    }

    /// Inserts a completed response, unless it is stale by now or larger than the whole budget.
    fn insert(&self, pending: PendingEntry, body: Bytes) {
        let PendingEntry {
            key,
            vary,
            status,
            mut headers,
            received_at,
            initial_age,
            expires_at,
        } = pending;
        // The stored body is complete, so its length is known even if it was sent chunked
        // (Transfer-Encoding was dropped with the other hop-by-hop headers). A HEAD entry keeps
        // the upstream's Content-Length (that of the GET); 204 and 304 must not carry one.
        let may_carry_length = !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
        if key.class == MethodClass::Get && may_carry_length {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let size = entry_size(&key, &vary, &headers, &body);
        if size > self.spec.max_total_bytes {
            return;
        }
        let now = self.now();
        if expires_at <= now {
            return;
        }
        let response = Arc::new(CachedResponse {
            status,
            headers,
            body,
            received_at,
            initial_age,
        });
        let variant = Variant {
            vary,
            response,
            expires_at,
            size,
            last_used: 0,
        };
        self.lock_entries()
            .insert(key, variant, now, self.spec.max_total_bytes);
    }
}

/// Bytes charged for one entry: body, headers, key and Vary values, each header with
/// `HEADER_OVERHEAD_BYTES` of bookkeeping.
fn entry_size(
    key: &PrimaryKey,
    vary: &[(HeaderName, Option<Vec<u8>>)],
    headers: &HeaderMap,
    body: &Bytes,
) -> u64 {
    let header_bytes: u64 = headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len()) as u64 + HEADER_OVERHEAD_BYTES)
        .sum();
    let vary_bytes: u64 = vary
        .iter()
        .map(|(name, value)| {
            (name.as_str().len() + value.as_ref().map_or(0, Vec::len)) as u64
                + HEADER_OVERHEAD_BYTES
        })
        .sum();
    body.len() as u64
        + header_bytes
        + vary_bytes
        + (key.host.len() + key.path_and_query.len()) as u64
}

// === Entries ===

/// A stored response, shared between the table and the hits being built from it.
struct CachedResponse {
    status: StatusCode,
    /// End-to-end headers only; no `Age`, `X-Cache` or `X-Request-Id`.
    headers: HeaderMap,
    /// Empty for HEAD entries.
    body: Bytes,
    received_at: Instant,
    initial_age: Duration,
}

impl CachedResponse {
    fn age_at(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.received_at)
    }
}

/// One stored response of a primary key.
struct Variant {
    /// The secondary key: each header named by the response's Vary, with the value the
    /// storing request had (`None`: absent). A request matches when all values are equal.
    vary: Vec<(HeaderName, Option<Vec<u8>>)>,
    response: Arc<CachedResponse>,
    expires_at: Instant,
    /// What this variant adds to `Entries::total_bytes`.
    size: u64,
    /// Its key in `Entries::recency`; set by `Entries::insert`.
    last_used: u64,
}

impl Variant {
    fn matches(&self, req_headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, stored)| request_header_value(req_headers, name) == *stored)
    }
}

/// The table of one route's cache with least-recently-used order.
///
/// Invariants, kept by every method here (and only these methods mutate the fields):
/// - `total_bytes` is the sum of `size` over all variants;
/// - `recency` has exactly one element per variant, `last_used -> its primary key`, and every
///   `last_used` is unique (ticks only grow);
/// - `by_key` holds no empty list, and no list longer than `MAX_VARIANTS_PER_KEY`;
/// - after `insert`, `total_bytes <= max_total_bytes`.
#[derive(Default)]
struct Entries {
    by_key: HashMap<Arc<PrimaryKey>, Vec<Variant>>,
    recency: BTreeMap<u64, Arc<PrimaryKey>>,
    next_tick: u64,
    total_bytes: u64,
}

impl Entries {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// The freshest matching variant, marked as just used; expired variants of the key are
    /// dropped on the way. `max_age` is the request's limit on the entry's age.
    fn find_fresh(
        &mut self,
        key: &PrimaryKey,
        req_headers: &HeaderMap,
        now: Instant,
        max_age: Option<Duration>,
    ) -> Option<Arc<CachedResponse>> {
        self.remove_where(key, |v| v.expires_at <= now);
        let shared_key = self.by_key.get_key_value(key)?.0.clone();
        let tick = self.tick();
        let variants = self.by_key.get_mut(key)?;
        // Newest first: a later store for the same secondary key replaced the older one anyway.
        let variant = variants.iter_mut().rev().find(|v| v.matches(req_headers))?;
        if max_age.is_some_and(|limit| variant.response.age_at(now) > limit) {
            return None;
        }
        let previous = std::mem::replace(&mut variant.last_used, tick);
        let response = variant.response.clone();
        self.recency.remove(&previous);
        self.recency.insert(tick, shared_key);
        Some(response)
    }

    /// Stores a variant (its `last_used` is assigned here), replacing the one the same request
    /// would have been served from, then evicts least recently used variants until the
    /// budget holds.
    fn insert(
        &mut self,
        key: PrimaryKey,
        mut variant: Variant,
        now: Instant,
        max_total_bytes: u64,
    ) {
        let storing_request_values = |v: &Variant| {
            v.expires_at <= now
                || (v.vary.len() == variant.vary.len()
                    && v.vary
                        .iter()
                        .zip(&variant.vary)
                        .all(|((n1, v1), (n2, v2))| n1 == n2 && v1 == v2))
        };
        self.remove_where(&key, storing_request_values);
        if self
            .by_key
            .get(&key)
            .is_some_and(|list| list.len() >= MAX_VARIANTS_PER_KEY)
        {
            let oldest = self
                .by_key
                .get(&key)
                .and_then(|list| list.iter().map(|v| v.last_used).min());
            if let Some(oldest) = oldest {
                self.remove_where(&key, |v| v.last_used == oldest);
            }
        }
        while self.total_bytes + variant.size > max_total_bytes {
            if !self.evict_least_recently_used() {
                break;
            }
        }
        if self.total_bytes + variant.size > max_total_bytes {
            return; // `Shared::insert` checked size <= max_total_bytes; this is a safety net.
        }
        variant.last_used = self.tick();
        let key = match self.by_key.get_key_value(&key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(key),
        };
        self.recency.insert(variant.last_used, key.clone());
        self.total_bytes += variant.size;
        self.by_key.entry(key).or_default().push(variant);
    }

    /// Drops the least recently used variant; false when the table is empty.
    fn evict_least_recently_used(&mut self) -> bool {
        let Some((tick, key)) = self
            .recency
            .first_key_value()
            .map(|(tick, key)| (*tick, key.clone()))
        else {
            return false;
        };
        self.remove_where(&key, |v| v.last_used == tick);
        true
    }

    /// Drops the GET and HEAD entries of a target after an unsafe request changed it.
    fn invalidate(&mut self, host: &str, path_and_query: &str) {
        for class in [MethodClass::Get, MethodClass::Head] {
            let key = PrimaryKey {
                class,
                host: host.to_string(),
                path_and_query: path_and_query.to_string(),
            };
            self.remove_where(&key, |_| true);
        }
    }

    /// Removes the variants of `key` for which `doomed` holds, keeping every invariant.
    fn remove_where(&mut self, key: &PrimaryKey, doomed: impl Fn(&Variant) -> bool) {
        let Some(variants) = self.by_key.get_mut(key) else {
            return;
        };
        let mut freed = 0;
        variants.retain(|v| {
            if doomed(v) {
                freed += v.size;
                self.recency.remove(&v.last_used);
                false
            } else {
                true
            }
        });
        if variants.is_empty() {
            self.by_key.remove(key);
        }
        self.total_bytes -= freed;
    }
}

// === TeeBody ===

/// A response whose headers were accepted for storing, waiting for its body.
struct PendingEntry {
    key: PrimaryKey,
    vary: Vec<(HeaderName, Option<Vec<u8>>)>,
    status: StatusCode,
    headers: HeaderMap,
    received_at: Instant,
    initial_age: Duration,
    expires_at: Instant,
}

/// Passes the upstream body through unchanged, frame by frame, keeping a copy of the data
/// (`Bytes` clones share the buffer) until it ends; then the entry is inserted.
struct TeeBody {
    inner: ProxyBody,
    /// `None` once the copy was given up (error, trailers, over the limit) or inserted.
    capture: Option<Capture>,
}

struct Capture {
    chunks: Vec<Bytes>,
    /// Sum of the lengths of `chunks`; never more than `limit`.
    len: u64,
    limit: u64,
    pending: PendingEntry,
    shared: Arc<Shared>,
}

impl TeeBody {
    fn complete(&mut self) {
        let Some(capture) = self.capture.take() else {
            return;
        };
        let body = match capture.chunks.len() {
            0 => Bytes::new(),
            1 => capture.chunks[0].clone(),
            _ => {
                let mut joined = BytesMut::with_capacity(capture.len as usize);
                for chunk in &capture.chunks {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        };
        capture.shared.insert(capture.pending, body);
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(capture) = &mut this.capture {
                    match frame.data_ref() {
                        Some(data) => {
                            capture.len += data.len() as u64;
                            if capture.len > capture.limit {
                                this.capture = None;
                            } else {
                                capture.chunks.push(data.clone());
                            }
                        }
                        // Trailers are not stored; a response that needs them is not cached.
                        None => this.capture = None,
                    }
                }
                // hyper stops polling once a body says it has ended; complete now.
                if this.inner.is_end_stream() {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.capture = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.complete();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === Header parsing ===

/// Cache-Control directives: lowercase names with their unquoted arguments.
struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    fn parse<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Directives {
        let mut list = Vec::new();
        for value in values {
            let Ok(text) = value.to_str() else { continue };
            for item in split_list(text) {
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"').to_string())),
                    None => (item, None),
                };
                if !name.is_empty() {
                    list.push((name.to_ascii_lowercase(), arg));
                }
            }
        }
        Directives(list)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// The first `name=N` as a duration; present but not a number counts as 0 (stale).
    fn delta_seconds(&self, name: &str) -> Option<Duration> {
        let (_, arg) = self.0.iter().find(|(n, _)| n == name)?;
        Some(
            arg.as_deref()
                .and_then(parse_delta_seconds)
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// What the request asks of the cache.
struct RequestDirectives {
    no_store: bool,
    /// Do not answer from the cache (the response may still be stored).
    no_cache: bool,
    /// Only entries at most this old may answer.
    max_age: Option<Duration>,
}

impl RequestDirectives {
    fn parse(headers: &HeaderMap) -> RequestDirectives {
        let cc = Directives::parse(headers.get_all(CACHE_CONTROL).iter());
        // Pragma counts only without Cache-Control (RFC 9111 section 5.4, HTTP/1.0 clients).
        let pragma_no_cache = !headers.contains_key(CACHE_CONTROL)
            && Directives::parse(headers.get_all(PRAGMA).iter()).has("no-cache");
        let max_age = cc.delta_seconds("max-age");
        RequestDirectives {
            no_store: cc.has("no-store"),
            no_cache: cc.has("no-cache") || pragma_no_cache || max_age == Some(Duration::ZERO),
            max_age,
        }
    }
}

/// Elements of a comma-separated header value, trimmed, empty ones skipped.
fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `delta-seconds`: digits only; values beyond 2^31 are capped there.
fn parse_delta_seconds(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = text.parse::<u64>().unwrap_or(MAX_DELTA_SECONDS);
    Some(Duration::from_secs(n.min(MAX_DELTA_SECONDS)))
}

/// The header names a response's Vary lists, lowercased; `None` for `*` or a bad name.
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(VARY) {
        let text = value.to_str().ok()?;
        for item in split_list(text) {
            if item == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(item.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// A request header's value for the secondary key: all its field lines joined by ", ".
fn request_header_value(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut joined = trim_bytes(first.as_bytes()).to_vec();
    for value in values {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(trim_bytes(value.as_bytes()));
    }
    Some(joined)
}

fn trim_bytes(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// `Expires` minus `Date` (or minus now without a valid Date). An Expires that is not an
/// IMF-fixdate (`0`, `-1`, the obsolete formats) means already expired: zero.
fn lifetime_from_expires(headers: &HeaderMap) -> Option<Duration> {
    let expires = headers.get(EXPIRES)?;
    let Some(expires) = expires.to_str().ok().and_then(parse_imf_fixdate) else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_imf_fixdate)
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// Parses `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 section 5.6.7).
fn parse_imf_fixdate(text: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut fields = text.split_ascii_whitespace();
    let weekday = fields.next()?.strip_suffix(',')?;
    let day: u32 = fields.next()?.parse().ok()?;
    let month_name = fields.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as u32 + 1;
    let year: i64 = fields.next()?.parse().ok()?;
    let mut clock = fields.next()?.split(':');
    let hour: u64 = clock.next()?.parse().ok()?;
    let minute: u64 = clock.next()?.parse().ok()?;
    let second: u64 = clock.next()?.parse().ok()?;
    if weekday.len() != 3
        || fields.next()? != "GMT"
        || fields.next().is_some()
        || clock.next().is_some()
        || !(1..=31).contains(&day)
        || !(1000..=9999).contains(&year)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    // Dates before 1970 are long expired; the epoch stands for them.
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests;

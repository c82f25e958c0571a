//! Proxy headers: hop-by-hop removal (RFC 9110 section 7.6.1), X-Forwarded-* trusted only
//! from configured proxies, Via, X-Request-Id and W3C traceparent.

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::h1::WireFields;

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the legacy `keep-alive` and
/// `proxy-connection`), as names built at compile time.
pub(super) static HOP_BY_HOP: [HeaderName; 9] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
];

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const VIA_VALUE: &str = "1.1 konnect";
/// This hop after the Via a request arrived with.
const VIA_APPENDED: &[u8] = b", 1.1 konnect";

/// Removes hop-by-hop headers, including those the Connection header names. `TE: trailers`
/// survives: gRPC needs it end to end and HTTP/2 allows exactly that value.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present notes which hop-by-hop ones are there (standard
    // names compare as small integers); most messages carry none, or only `Connection`.
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = hop_by_hop_index(k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let has = |name: &HeaderName| hop_by_hop_index(name).is_some_and(|i| present & (1 << i) != 0);
    let wants_trailers = has(&hyper::header::TE)
        && headers
            .get_all(hyper::header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    // `Connection: keep-alive` (or close), the usual value, names nothing more to remove.
    let names_others = |v: &HeaderValue| {
        let v = v.as_bytes();
        !v.eq_ignore_ascii_case(b"keep-alive") && !v.eq_ignore_ascii_case(b"close")
    };
    if has(&hyper::header::CONNECTION)
        && headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(names_others)
    {
        let named: Vec<HeaderName> = headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `Connection: keep-alive` (or close) names nothing more to remove.
            .filter(|n| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(n))
                    && !n.eq_ignore_ascii_case("close")
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if wants_trailers {
        headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Where `name` is in [`HOP_BY_HOP`]. Most fields are none of them, and their length alone
/// (a field compare each otherwise, on every message both ways) rules them out.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    match name.len() {
        2 | 7 | 10 | 16..=19 => HOP_BY_HOP.iter().position(|h| h.as_str() == name),
        _ => None,
    }
}

/// The protocol a request asks to switch to (`Upgrade: websocket` with `Connection: upgrade`).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    // Most requests have no Upgrade: one lookup of a standard name settles it.
    let protocol = headers.get(hyper::header::UPGRADE)?;
    let connection_upgrade = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    connection_upgrade.then(|| protocol.clone())
}

/// Puts back the two headers that carry a protocol upgrade across the proxy.
pub fn restore_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    headers.insert(hyper::header::UPGRADE, protocol);
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address: the connection's peer, or, when the peer is a trusted proxy, the
/// rightmost X-Forwarded-For hop that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for v in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(v) = v.to_str() else { return client };
        for hop in v.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !is_trusted(ip, trusted) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

/// The fields this proxy adds to a request on its way to a target: X-Forwarded-For, -Proto
/// and -Host, Via, traceparent and, when the proxy made it, X-Request-Id.
///
/// [`UpstreamFields::prepare`] works them out once per request and takes out of the
/// request's header map the client's values they replace. Our HTTP/1.1 client then writes
/// them straight into the request head ([`UpstreamFields::write`]): inserting them into the
/// map, only for the encoder to read them out again, was about a tenth of the proxy's
/// instructions per request (3,000 of 30,300, benches/README.md). Requests that go through hyper (HTTP/2, streamed bodies, upgrades) and routes
/// with request transformations get them in the map instead ([`UpstreamFields::insert_into`]),
/// where a transformation still has the last word. Either way the target sees the same fields.
pub struct UpstreamFields<'a> {
    forwarded_for: ForwardedFor,
    /// None when a trusted proxy's X-Forwarded-Proto stays in the map.
    proto: Option<&'static str>,
    /// The host the client asked for; None when a trusted proxy's X-Forwarded-Host stays in
    /// the map, or when there is none to give.
    host: Option<&'a str>,
    /// The Via the request arrived with (taken out of the map), extended by this hop.
    prior_via: Option<HeaderValue>,
    /// `00-<trace id>-<this hop's span id>-<flags>`.
    traceparent: [u8; TRACEPARENT_LEN],
    /// Set when the proxy made the request's id (the client sent none, or no sane one).
    request_id: Option<[u8; 32]>,
}

enum ForwardedFor {
    /// The client's address alone (the client is not a trusted proxy, or sent none).
    Client(super::IpText),
    /// A trusted proxy's list, extended by the address it connected from.
    Extended(HeaderValue),
}

const TRACEPARENT_LEN: usize = 55;

/// Bits of [`UpstreamFields::prepare`]'s one pass over the request's field names.
const HAS_FORWARDED_FOR: u8 = 1;
const HAS_FORWARDED_PROTO: u8 = 2;
const HAS_FORWARDED_HOST: u8 = 4;
const HAS_VIA: u8 = 8;
const HAS_TRACEPARENT: u8 = 16;

impl<'a> UpstreamFields<'a> {
    /// X-Forwarded-* values the client sent are kept (and extended) only when the client is
    /// a trusted proxy; otherwise they are replaced, so nobody can spoof an address. A valid
    /// traceparent keeps its trace with this hop as the new parent; another starts a trace.
    /// `request_id` is the id the proxy made, if it made one.
    pub fn prepare(
        headers: &mut HeaderMap,
        client: &super::IpText,
        trusted: bool,
        original_host: Option<&'a str>,
        proto: &'static str,
        request_id: Option<[u8; 32]>,
    ) -> UpstreamFields<'a> {
        // One pass over the few names present (by length first) instead of a lookup per
        // field: most requests carry none of these.
        let mut present = 0u8;
        for name in headers.keys() {
            present |= match name.as_str().len() {
                3 if *name == hyper::header::VIA => HAS_VIA,
                11 if *name == TRACEPARENT => HAS_TRACEPARENT,
                15 if *name == X_FORWARDED_FOR => HAS_FORWARDED_FOR,
                16 if *name == X_FORWARDED_HOST => HAS_FORWARDED_HOST,
                17 if *name == X_FORWARDED_PROTO => HAS_FORWARDED_PROTO,
                _ => 0,
            };
        }
        let has = |bit: u8| present & bit != 0;
        let forwarded_for = match has(HAS_FORWARDED_FOR) {
            false => ForwardedFor::Client(*client),
            true => {
                let prior = headers.remove(&X_FORWARDED_FOR);
                let extended = prior
                    .filter(|_| trusted)
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .filter(|p| !p.trim().is_empty())
                    .and_then(|p| HeaderValue::from_str(&format!("{p}, {}", client.as_str())).ok());
                match extended {
                    Some(v) => ForwardedFor::Extended(v),
                    None => ForwardedFor::Client(*client),
                }
            }
        };
        let proto = match (trusted, has(HAS_FORWARDED_PROTO)) {
            (true, true) => None,
            (false, true) => {
                headers.remove(&X_FORWARDED_PROTO);
                Some(proto)
            }
            (_, false) => Some(proto),
        };
        let host = match (trusted, has(HAS_FORWARDED_HOST)) {
            (true, true) => None,
            (false, true) => {
                headers.remove(&X_FORWARDED_HOST);
                original_host
            }
            (_, false) => original_host,
        }
        // The request's own host, lower-cased: visible ASCII unless the URI was odd.
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b > b' ' && b != 0x7f));
        let prior_via = match has(HAS_VIA) {
            true => headers.remove(hyper::header::VIA),
            false => None,
        };
        let traceparent = new_traceparent(match has(HAS_TRACEPARENT) {
            true => headers.remove(&TRACEPARENT),
            false => None,
        });
        UpstreamFields {
            forwarded_for,
            proto,
            host,
            prior_via,
            traceparent,
            request_id,
        }
    }

    /// Each field in the order they are written: its name, the name as written (`name: `),
    /// and its value in one or two parts.
    fn each(&self, mut field: impl FnMut(&HeaderName, &'static [u8], &[u8], &[u8])) {
        match &self.forwarded_for {
            ForwardedFor::Client(ip) => {
                field(&X_FORWARDED_FOR, b"x-forwarded-for: ", ip.as_bytes(), b"")
            }
            ForwardedFor::Extended(v) => {
                field(&X_FORWARDED_FOR, b"x-forwarded-for: ", v.as_bytes(), b"")
            }
        }
        if let Some(proto) = self.proto {
            field(
                &X_FORWARDED_PROTO,
                b"x-forwarded-proto: ",
                proto.as_bytes(),
                b"",
            );
        }
        if let Some(host) = self.host {
            field(
                &X_FORWARDED_HOST,
                b"x-forwarded-host: ",
                host.as_bytes(),
                b"",
            );
        }
        match &self.prior_via {
            Some(prior) => field(
                &hyper::header::VIA,
                b"via: ",
                prior.as_bytes(),
                VIA_APPENDED,
            ),
            None => field(&hyper::header::VIA, b"via: ", VIA_VALUE.as_bytes(), b""),
        }
        field(&TRACEPARENT, b"traceparent: ", &self.traceparent, b"");
        if let Some(id) = &self.request_id {
            field(&X_REQUEST_ID, b"x-request-id: ", id, b"");
        }
    }

    /// How many bytes [`UpstreamFields::write`] adds.
    pub fn wire_len(&self) -> usize {
        let mut len = 0;
        self.each(|_, prefix, value, more| len += prefix.len() + value.len() + more.len() + 2);
        len
    }

    /// Appends the fields to an HTTP/1.1 head being written.
    pub fn write(&self, out: &mut Vec<u8>) {
        self.each(|_, prefix, value, more| {
            out.extend_from_slice(prefix);
            out.extend_from_slice(value);
            if !more.is_empty() {
                out.extend_from_slice(more);
            }
            out.extend_from_slice(b"\r\n");
        });
    }

    /// Sets the fields in a header map.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        self.each(|name, _, value, more| {
            let value = match more.is_empty() {
                true => HeaderValue::from_bytes(value),
                false => HeaderValue::from_bytes(&[value, more].concat()),
            };
            // Every value was checked when it was made: none fails here.
            if let Ok(value) = value {
                headers.insert(name.clone(), value);
            }
        });
    }
}

/// The fields this proxy adds to every response it gives: X-Request-Id, and this hop in Via
/// when `proxy` left that to the end. The server codec writes them after the response's own
/// fields (inserting them into the map, only to write them out, cost more than the writing);
/// hyper's responses get them in the map ([`ResponseFields::insert_into`]).
pub struct ResponseFields {
    request_id: RequestId,
    via: bool,
    /// The target's own fields, when they came through in wire form: written first (they
    /// hold no X-Request-Id of theirs).
    wire: Option<WireFields>,
}

impl ResponseFields {
    /// `via`: this hop is still to be added to Via. The response must not carry an
    /// X-Request-Id of its own (ours replaces it). `wire`: the target's fields, when the
    /// response's map does not hold them.
    pub fn new(request_id: RequestId, via: bool, wire: Option<WireFields>) -> ResponseFields {
        ResponseFields {
            request_id,
            via,
            wire,
        }
    }

    /// Sets the fields in a response's header map.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        if let Some(wire) = self.wire {
            wire.insert_into(headers);
        }
        headers.insert(X_REQUEST_ID, self.request_id.to_header_value());
        if self.via {
            add_via(headers);
        }
    }
}

impl super::server_h1::ExtraFields for ResponseFields {
    fn has_date(&self) -> bool {
        self.wire.as_ref().is_some_and(WireFields::has_date)
    }

    fn write(&self, out: &mut Vec<u8>) {
        if let Some(wire) = &self.wire {
            wire.write(out);
        }
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(self.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.via {
            out.extend_from_slice(b"via: 1.1 konnect\r\n");
        }
    }
}

/// A traceparent for the next hop: the incoming trace (when `incoming` is a valid W3C
/// traceparent) with a new span id as the parent, or a new trace.
fn new_traceparent(incoming: Option<HeaderValue>) -> [u8; TRACEPARENT_LEN] {
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let mut span = [0u8; 8];
    random_id_bytes(&mut span);
    hex_into(&span, &mut value[36..52]);
    match incoming
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    {
        Some((trace_id, flags)) => {
            value[3..35].copy_from_slice(trace_id.as_bytes());
            value[53..55].copy_from_slice(flags.as_bytes());
        }
        None => {
            let mut trace = [0u8; 16];
            random_id_bytes(&mut trace);
            hex_into(&trace, &mut value[3..35]);
        }
    }
    value
}

/// Appends this proxy to Via.
pub fn add_via(headers: &mut HeaderMap) {
    // One lookup for both cases: most messages arrive without a Via.
    match headers.entry(hyper::header::VIA) {
        hyper::header::Entry::Vacant(e) => {
            e.insert(HeaderValue::from_static(VIA_VALUE));
        }
        hyper::header::Entry::Occupied(mut e) => {
            if let Some(v) = e
                .get()
                .to_str()
                .ok()
                .and_then(|prior| HeaderValue::from_str(&format!("{prior}, {VIA_VALUE}")).ok())
            {
                e.insert(v);
            }
        }
    }
}

/// Fills `out` with random bytes for ids (X-Request-Id, trace and span ids), from a fast
/// generator per thread seeded by the OS. They must not collide, and need not be secret:
/// W3C Trace Context asks for random trace ids, not unpredictable ones.
fn random_id_bytes(out: &mut [u8]) {
    use rand::{RngCore, SeedableRng};
    thread_local! {
        static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::rngs::SmallRng::from_os_rng());
    }
    IDS.with_borrow_mut(|rng| rng.fill_bytes(out));
}

/// Lower-case hex of `raw` into `out` (twice as long).
fn hex_into(raw: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in raw.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// The request's id: the client's X-Request-Id when it is a sane token, else a new one (32
/// hex digits). A client's value that was not sane is taken out of the map: a new id reaches
/// the target through [`UpstreamFields`].
pub fn request_id(headers: &mut HeaderMap) -> RequestId {
    // A scan of the few names present, by length first, costs less than hashing this one.
    let given = headers
        .iter()
        .find(|(name, _)| name.as_str().len() == 12 && *name == X_REQUEST_ID)
        .map(|(_, id)| id);
    if let Some(id) = given {
        let b = id.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return RequestId::Given(id.clone());
        }
        headers.remove(&X_REQUEST_ID);
    }
    let mut raw = [0u8; 16];
    random_id_bytes(&mut raw);
    let mut text = [0u8; 32];
    hex_into(&raw, &mut text);
    RequestId::Made(text)
}

/// A request's id: the client's, or one this proxy made (then the request does not carry it
/// yet). A made one is kept inline: making it allocates nothing, and the copies that go to
/// the target and the response are 32 bytes each.
#[derive(Clone)]
pub enum RequestId {
    /// The client's value, a sane token (ASCII).
    Given(HeaderValue),
    /// 32 lower-case hex digits.
    Made([u8; 32]),
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Given(v) => v.as_bytes(),
            RequestId::Made(text) => text,
        }
    }

    /// The id as text (both kinds are ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The id the request lacks, for [`UpstreamFields::prepare`].
    pub fn made(&self) -> Option<[u8; 32]> {
        match self {
            RequestId::Given(_) => None,
            RequestId::Made(text) => Some(*text),
        }
    }

    pub fn to_header_value(&self) -> HeaderValue {
        match self {
            RequestId::Given(v) => v.clone(),
            // Hex digits: always a valid value.
            RequestId::Made(text) => HeaderValue::from_bytes(text)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        }
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` -> (trace id, flags).
fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let mut split = v.trim().split('-');
    let parts: [&str; 4] = std::array::from_fn(|_| split.next().unwrap_or(""));
    if split.next().is_some() {
        return None;
    }
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if parts[0] != "00" || !hex(parts[1], 32) || !hex(parts[2], 16) || !hex(parts[3], 2) {
        return None;
    }
    if parts[1].bytes().all(|b| b == b'0') || parts[2].bytes().all(|b| b == b'0') {
        return None;
    }
    Some((parts[1], parts[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request's fields as the target gets them through hyper (the map) and through our
    /// HTTP/1.1 client (written out), which must agree.
    fn upstream_fields(
        mut h: HeaderMap,
        trusted: bool,
        host: Option<&str>,
        made_id: Option<[u8; 32]>,
    ) -> HeaderMap {
        let fields = UpstreamFields::prepare(
            &mut h,
            &crate::gateway::IpText::new("10.0.0.9".parse().unwrap()),
            trusted,
            host,
            "http",
            made_id,
        );
        let mut written = Vec::new();
        fields.write(&mut written);
        assert_eq!(written.len(), fields.wire_len());
        let mut from_wire = h.clone();
        for line in std::str::from_utf8(&written)
            .unwrap()
            .split_terminator("\r\n")
        {
            let (name, value) = line.split_once(": ").unwrap();
            from_wire.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        fields.insert_into(&mut h);
        assert_eq!(h, from_wire);
        h
    }

    #[test]
    fn forwarded_for_from_untrusted_clients_is_replaced_not_extended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let h = upstream_fields(h, false, Some("api.example.com"), None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["via"], "1.1 konnect");
        assert!(!h.contains_key(&X_REQUEST_ID));

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("via", HeaderValue::from_static("1.1 edge"));
        let h = upstream_fields(h, true, None, None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x-forwarded-host"));
        assert_eq!(h["via"], "1.1 edge, 1.1 konnect");
        assert_eq!(h.get_all("via").iter().count(), 1);

        // An untrusted client's Host goes on; a made id goes upstream.
        let h = upstream_fields(
            HeaderMap::new(),
            false,
            Some("shop.example"),
            Some(*b"0123456789abcdef0123456789abcdef"),
        );
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h[&X_REQUEST_ID], "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic eA=="),
        );
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));

        // Named by Connection alone, with odd spacing and case.
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Keep-Alive ,X-Internal"),
        );
        h.insert("x-internal", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["accept", "te"]
        );
        assert_eq!(h["te"], "trailers");

        // Nothing hop-by-hop: nothing changes.
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        let id = request_id(&mut h);
        let text = id.as_str();
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(id.made().as_ref().map(|m| &m[..]), Some(text.as_bytes()));
        assert_eq!(id.to_header_value(), text);
        assert_ne!(request_id(&mut HeaderMap::new()).as_str(), text);

        let mut h = HeaderMap::new();
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123.x:y_z"));
        let kept = request_id(&mut h);
        assert_eq!((kept.as_str(), kept.made()), ("abc-123.x:y_z", None));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("no spaces allowed"));
        let made = request_id(&mut h);
        assert_eq!(made.as_str().len(), 32);
        assert!(made.made().is_some());
        assert!(!h.contains_key(&X_REQUEST_ID));
    }

    #[test]
    fn traceparent_keeps_the_trace_and_replaces_the_parent() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let h = upstream_fields(h, false, None, None);
        let v = h["traceparent"].to_str().unwrap();
        assert!(v.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!v.contains("00f067aa0ba902b7"));
        assert!(v.ends_with("-01"));
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("garbage"));
        let h = upstream_fields(h, false, None, None);
        let v = h["traceparent"].to_str().unwrap();
        assert_eq!(v.len(), 55);
        assert!(parse_traceparent(v).is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}

//! Proxy headers: hop-by-hop removal (RFC 9110 section 7.6.1), X-Forwarded-* trusted only
//! from configured proxies, Via, X-Request-Id and W3C traceparent.

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use rand::RngCore;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub const X_REQUEST_ID: &str = "x-request-id";
const VIA_VALUE: &str = "1.1 konnect";

/// Removes hop-by-hop headers, including those the Connection header names. `TE: trailers`
/// survives: gRPC needs it end to end and HTTP/2 allows exactly that value.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let wants_trailers = headers
        .get_all(hyper::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    if wants_trailers {
        headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The protocol a request asks to switch to (`Upgrade: websocket` with `Connection: upgrade`).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if connection_upgrade {
        headers.get(hyper::header::UPGRADE).cloned()
    } else {
        None
    }
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
    for v in headers.get_all("x-forwarded-for").iter().rev() {
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

/// Sets X-Forwarded-For/Proto/Host. Values the client sent are kept (and extended) only when
/// the client is a trusted proxy; otherwise they are replaced, so nobody can spoof an address.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    trusted: bool,
    original_host: Option<&str>,
    proto: &'static str,
) {
    let xff = match (
        trusted,
        headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
    ) {
        (true, Some(prior)) if !prior.trim().is_empty() => format!("{prior}, {client}"),
        _ => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !trusted || !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !trusted || !headers.contains_key("x-forwarded-host") {
        match original_host.and_then(|h| HeaderValue::from_str(h).ok()) {
            Some(h) => {
                headers.insert("x-forwarded-host", h);
            }
            None => {
                headers.remove("x-forwarded-host");
            }
        }
    }
}

/// Appends this proxy to Via.
pub fn add_via(headers: &mut HeaderMap) {
    let via = match headers
        .get(hyper::header::VIA)
        .and_then(|v| v.to_str().ok())
    {
        Some(prior) => format!("{prior}, {VIA_VALUE}"),
        None => VIA_VALUE.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&via) {
        headers.insert(hyper::header::VIA, v);
    }
}

/// The request's id: the client's X-Request-Id when it is a sane token, else a new one.
pub fn request_id(headers: &mut HeaderMap) -> String {
    if let Some(id) = headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        if !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return id.to_string();
        }
    }
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let id = hex::encode(raw);
    headers.insert(
        X_REQUEST_ID,
        HeaderValue::from_str(&id).expect("hex is a valid header value"),
    );
    id
}

/// Keeps a valid W3C traceparent (with this hop as the new parent span) or starts a trace.
pub fn propagate_traceparent(headers: &mut HeaderMap) {
    let mut span = [0u8; 8];
    rand::rng().fill_bytes(&mut span);
    let span = hex::encode(span);
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let value = match incoming {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span}-{flags}"),
        None => {
            let mut trace = [0u8; 16];
            rand::rng().fill_bytes(&mut trace);
            format!("00-{}-{span}-01", hex::encode(trace))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("traceparent", v);
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` -> (trace id, flags).
fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if parts.len() != 4
        || parts[0] != "00"
        || !hex(parts[1], 32)
        || !hex(parts[2], 16)
        || !hex(parts[3], 2)
    {
        return None;
    }
    if parts[1].bytes().all(|b| b == b'0') || parts[2].bytes().all(|b| b == b'0') {
        return None;
    }
    Some((parts[1].to_string(), parts[3].to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_from_untrusted_clients_is_replaced_not_extended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        set_forwarded(
            &mut h,
            "10.0.0.9".parse().unwrap(),
            false,
            Some("api.example.com"),
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "api.example.com");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(&mut h, "10.0.0.9".parse().unwrap(), true, None, "http");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn traceparent_keeps_the_trace_and_replaces_the_parent() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        propagate_traceparent(&mut h);
        let v = h["traceparent"].to_str().unwrap();
        assert!(v.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!v.contains("00f067aa0ba902b7"));
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("garbage"));
        propagate_traceparent(&mut h);
        assert!(parse_traceparent(h["traceparent"].to_str().unwrap()).is_some());
    }
}

//! The gateway's one error type. Each error knows its HTTP status, a stable machine-readable
//! code and a message that is safe to show the client; which upstream failed goes to the log,
//! never into the response.

use bytes::Bytes;
use hyper::{Response, StatusCode};

use super::body::{full, ProxyBody};

/// An error and its causes on one line (`outer: inner: root`), for logs: hyper's and the
/// connectors' errors say the useful part (refused, reset, certificate) only in their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("protocol upgrades (websocket) are not enabled on this route")]
    UpgradeNotAllowed,
    #[error("request headers are larger than the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("no route matches host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("request body is larger than this route's limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// The client paused longer than the Service's `timeouts.idle` while sending its body.
    #[error("the request body stalled: nothing arrived for {}s", .idle.as_secs())]
    RequestBodyTimeout { idle: std::time::Duration },
    #[error("no healthy target is available for this route")]
    NoHealthyTarget,
    #[error("the service is failing and its circuit breaker is open; retry later")]
    CircuitOpen { service: String },
    /// Every target is at `pool.max_requests_per_target`.
    #[error("the service is at its connection limit; retry later")]
    UpstreamBusy { service: String },
    #[error("the upstream could not be reached")]
    UpstreamConnect { upstream: String, detail: String },
    #[error("the upstream closed the connection before answering")]
    UpstreamReset { upstream: String, detail: String },
    #[error("the upstream did not answer in time")]
    UpstreamTimeout { upstream: String },
    /// Missing or invalid credentials. `reason` goes to the log only.
    #[error("valid credentials are required for this route")]
    Unauthorized { reason: &'static str, invalid: bool },
    /// The caller is known but not allowed here. `reason` goes to the log only.
    #[error("you are not allowed to use this route")]
    Forbidden { reason: &'static str },
    #[error("the request body's content type is not accepted here (accepted: {allowed})")]
    UnsupportedMediaType { allowed: String },
    #[error("the request body does not match the route's schema at {location:?}: {message}")]
    SchemaViolation { location: String, message: String },
    /// A RateLimit refused the request (429).
    #[error("rate limit {:?} exceeded: {} requests per {}s; retry in {}s", .0.verdict.limit_name, .0.verdict.limit, .0.verdict.window_s, .0.retry_after_s)]
    RateLimited(Box<super::ratelimit::Refused>),
    /// A ConcurrencyLimit is full (429).
    #[error("concurrency limit {limit:?} reached: at most {max} requests in flight at once; retry shortly")]
    ConcurrencyLimited { limit: String, max: u64 },
    #[error("internal error")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::UpgradeNotAllowed => StatusCode::BAD_REQUEST,
            GatewayError::NoRoute { .. } => StatusCode::NOT_FOUND,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::NoHealthyTarget
            | GatewayError::CircuitOpen { .. }
            | GatewayError::UpstreamBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamConnect { .. } | GatewayError::UpstreamReset { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden { .. } => StatusCode::FORBIDDEN,
            GatewayError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::SchemaViolation { .. } => StatusCode::BAD_REQUEST,
            GatewayError::RateLimited(_) | GatewayError::ConcurrencyLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable code for clients and for the access log.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::HeadersTooLarge { .. } => "headers_too_large",
            GatewayError::UpgradeNotAllowed => "upgrade_not_allowed",
            GatewayError::NoRoute { .. } => "no_route",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::RequestBodyTimeout { .. } => "request_body_timeout",
            GatewayError::NoHealthyTarget => "no_healthy_target",
            GatewayError::CircuitOpen { .. } => "circuit_open",
            GatewayError::UpstreamBusy { .. } => "upstream_busy",
            GatewayError::UpstreamConnect { .. } => "upstream_unreachable",
            GatewayError::UpstreamReset { .. } => "upstream_reset",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::Unauthorized { .. } => "unauthorized",
            GatewayError::Forbidden { .. } => "forbidden",
            GatewayError::UnsupportedMediaType { .. } => "unsupported_media_type",
            GatewayError::SchemaViolation { .. } => "schema_violation",
            GatewayError::RateLimited(_) => "rate_limited",
            GatewayError::ConcurrencyLimited { .. } => "concurrency_limited",
            GatewayError::Internal(_) => "internal",
        }
    }

    /// The upstream involved and what went wrong, for the log only.
    pub fn log_detail(&self) -> Option<String> {
        match self {
            GatewayError::UpstreamConnect { upstream, detail }
            | GatewayError::UpstreamReset { upstream, detail } => {
                Some(format!("{upstream}: {detail}"))
            }
            GatewayError::UpstreamTimeout { upstream } => Some(upstream.clone()),
            GatewayError::CircuitOpen { service } | GatewayError::UpstreamBusy { service } => {
                Some(format!("service {service}"))
            }
            GatewayError::Internal(d) => Some(d.clone()),
            GatewayError::Unauthorized { reason, .. } | GatewayError::Forbidden { reason } => {
                Some((*reason).to_string())
            }
            _ => None,
        }
    }

    /// Auth failures are expected traffic: their reason is logged at debug, not warn.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            GatewayError::Unauthorized { .. } | GatewayError::Forbidden { .. }
        )
    }

    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": {
                "status": self.status().as_u16(),
                "code": self.code(),
                "message": self.to_string(),
                "request_id": request_id,
            }
        });
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        let mut resp = Response::new(full(Bytes::from(bytes)));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        if let GatewayError::RateLimited(r) = &self {
            super::ratelimit_headers(resp.headers_mut(), &r.verdict);
            if let Ok(v) = hyper::header::HeaderValue::from_str(&r.retry_after_s.to_string()) {
                resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
        }
        if let GatewayError::ConcurrencyLimited { .. } = &self {
            resp.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        if let GatewayError::Unauthorized { invalid, .. } = &self {
            let challenge = if *invalid {
                r#"Bearer realm="konnect", error="invalid_token""#
            } else {
                r#"Bearer realm="konnect""#
            };
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static(challenge),
            );
        }
        resp
    }
}

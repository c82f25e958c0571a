//! `ClientError`: what went wrong in an admin API call, keeping the gRPC code, the server's
//! message, the endpoint that answered and, for `Apply`, which resource the server rejected.

use std::error::Error as StdError;
use std::fmt;

use tonic::Code;

/// Metadata key on an error status: the 0-based index, into the resources sent in one
/// `Apply`, of the resource the server rejected.
pub const WRITE_INDEX_METADATA_KEY: &str = "x-konnect-write-index";
/// Metadata key on an error status: the dotted path of the offending field (`spec.service`).
/// The server also starts its message with it.
pub const FIELD_METADATA_KEY: &str = "x-konnect-field";

/// An admin API call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint list was empty.
    #[error("no admin endpoint given: pass --endpoint host:port (or set KONNECT_ENDPOINT)")]
    NoEndpoints,

    /// An endpoint is not a usable URL.
    #[error("invalid endpoint {endpoint:?}: {reason} (expected a URL like http://127.0.0.1:7201)")]
    InvalidEndpoint { endpoint: String, reason: String },

    /// The token cannot be sent as an HTTP header value.
    #[error(
        "the admin token contains characters that cannot be sent in a header \
         (only visible ASCII is allowed): check the token you passed"
    )]
    InvalidToken,

    /// The `--ca` file cannot be used.
    #[error("--ca {path}: {reason}")]
    InvalidCa { path: String, reason: String },

    /// TLS cannot be set up for an `https://` endpoint (no CA to verify it with).
    #[error("cannot set up TLS for {endpoint}: {reason}")]
    TlsSetup { endpoint: String, reason: String },

    /// Every endpoint failed, each in the TLS handshake (an untrusted certificate, a plain
    /// server): the first one is reported, since the fix is the same for all.
    #[error("TLS handshake with {endpoint} failed: {reason}")]
    Tls { endpoint: String, reason: String },

    /// Every endpoint failed at the transport level or answered `Unavailable`.
    #[error(
        "no endpoint reachable (tried {}): {}",
        tried.join(", "),
        describe_failures(failures)
    )]
    Unreachable {
        /// Every endpoint tried, in order.
        tried: Vec<String>,
        /// Why each endpoint failed, in the same order.
        failures: Vec<EndpointFailure>,
    },

    /// An endpoint answered with an error status (not a transport failure).
    #[error("{} (from {endpoint})", describe_status(*code, message))]
    Status {
        /// The endpoint that answered.
        endpoint: String,
        code: Code,
        message: String,
        /// For `Apply`: the position of the rejected resource in the request.
        write_index: Option<usize>,
        /// The offending field (`spec.service`), when the server named one.
        field: Option<String>,
    },

    /// A watch stream ended with an error after it had started.
    #[error("watch stream from {endpoint} broke: {}", describe_status(*code, message))]
    StreamBroken {
        endpoint: String,
        code: Code,
        message: String,
    },
}

/// Why one endpoint could not serve a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFailure {
    pub endpoint: String,
    /// The gRPC code when the endpoint answered (`Unavailable`), `None` when it could not be
    /// reached at all.
    pub code: Option<Code>,
    pub reason: String,
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.reason)
    }
}

fn describe_failures(failures: &[EndpointFailure]) -> String {
    let parts: Vec<String> = failures.iter().map(ToString::to_string).collect();
    format!(
        "{}; check the endpoint list and that the nodes are running",
        parts.join("; ")
    )
}

// === impl ClientError ===

impl ClientError {
    /// Builds the error for a status an endpoint answered with, reading the
    /// `x-konnect-write-index` metadata when present.
    pub fn from_status(endpoint: impl Into<String>, status: tonic::Status) -> Self {
        let write_index = status
            .metadata()
            .get(WRITE_INDEX_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<usize>().ok());
        let field = status
            .metadata()
            .get(FIELD_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
            .filter(|field| !field.is_empty());
        ClientError::Status {
            endpoint: endpoint.into(),
            code: status.code(),
            message: status_message(&status),
            write_index,
            field,
        }
    }

    /// The gRPC code: the server's for `Status`, `Unavailable` when nothing answered,
    /// `InvalidArgument` for bad local input.
    pub fn code(&self) -> Code {
        match self {
            ClientError::NoEndpoints
            | ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidToken
            | ClientError::InvalidCa { .. }
            | ClientError::TlsSetup { .. } => Code::InvalidArgument,
            ClientError::Unreachable { .. } | ClientError::Tls { .. } => Code::Unavailable,
            ClientError::Status { code, .. } | ClientError::StreamBroken { code, .. } => *code,
        }
    }

    /// The server's message for `Status` and `StreamBroken`; the full description otherwise.
    pub fn message(&self) -> String {
        match self {
            ClientError::Status { message, .. } | ClientError::StreamBroken { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        }
    }

    /// The endpoint that answered, when one did.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            ClientError::Status { endpoint, .. } | ClientError::StreamBroken { endpoint, .. } => {
                Some(endpoint)
            }
            ClientError::InvalidEndpoint { endpoint, .. }
            | ClientError::TlsSetup { endpoint, .. }
            | ClientError::Tls { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }

    /// For a rejected `Apply`: the 0-based position of the offending resource.
    pub fn write_index(&self) -> Option<usize> {
        match self {
            ClientError::Status { write_index, .. } => *write_index,
            _ => None,
        }
    }

    /// The offending field (`spec.service`), when the server named one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Status { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

/// The status message followed by the chain of underlying errors (for transport failures the
/// status message alone is often just "transport error").
pub(crate) fn status_message(status: &tonic::Status) -> String {
    let mut message = status.message().to_string();
    let mut source = StdError::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    if message.is_empty() {
        message = "no message from the server".to_string();
    }
    message
}

/// An error and its causes on one line: `transport error: tcp connect error: refused`.
pub(crate) fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// One sentence for a status: what kind of failure, then the server's words.
fn describe_status(code: Code, message: &str) -> String {
    let what = match code {
        Code::Ok => "no error",
        Code::Cancelled => "cancelled",
        Code::Unknown => "server error",
        Code::InvalidArgument => "invalid request",
        Code::DeadlineExceeded => "timed out",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "rejected",
        Code::Aborted => "conflict",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not supported by this server",
        Code::Internal => "internal server error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "not authenticated",
    };
    // "not found: Route \"a\" not found" says it twice.
    if message.to_lowercase().contains(what) {
        message.to_string()
    } else {
        format!("{what}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_error_keeps_code_message_endpoint_and_write_index() {
        let mut status = tonic::Status::invalid_argument("spec.service: unknown service \"bill\"");
        status.metadata_mut().insert(
            WRITE_INDEX_METADATA_KEY,
            "1".parse().expect("ascii metadata"),
        );
        status.metadata_mut().insert(
            FIELD_METADATA_KEY,
            "spec.service".parse().expect("ascii metadata"),
        );
        let error = ClientError::from_status("http://a:1", status);
        assert_eq!(error.field(), Some("spec.service"));
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(error.message(), "spec.service: unknown service \"bill\"");
        assert_eq!(error.endpoint(), Some("http://a:1"));
        assert_eq!(error.write_index(), Some(1));
    }

    #[test]
    fn garbage_write_index_metadata_is_ignored() {
        let mut status = tonic::Status::invalid_argument("bad");
        status
            .metadata_mut()
            .insert(WRITE_INDEX_METADATA_KEY, "two".parse().expect("ascii"));
        assert_eq!(
            ClientError::from_status("http://a:1", status).write_index(),
            None
        );
    }

    #[test]
    fn permission_denied_reads_as_a_sentence() {
        let error = ClientError::from_status(
            "http://a:1",
            tonic::Status::permission_denied("token is read-only"),
        );
        assert_eq!(
            error.to_string(),
            "permission denied: token is read-only (from http://a:1)"
        );
    }

    #[test]
    fn message_that_already_names_the_failure_is_not_prefixed_twice() {
        let error = ClientError::from_status(
            "http://a:1",
            tonic::Status::not_found("Route \"a\" not found"),
        );
        assert_eq!(error.to_string(), "Route \"a\" not found (from http://a:1)");
    }

    #[test]
    fn unreachable_lists_every_endpoint_tried() {
        let error = ClientError::Unreachable {
            tried: vec!["http://a".into(), "http://b".into()],
            failures: vec![
                EndpointFailure {
                    endpoint: "http://a".into(),
                    code: None,
                    reason: "connection refused".into(),
                },
                EndpointFailure {
                    endpoint: "http://b".into(),
                    code: Some(Code::Unavailable),
                    reason: "no leader".into(),
                },
            ],
        };
        let text = error.to_string();
        assert!(
            text.starts_with("no endpoint reachable (tried http://a, http://b): http://a: connection refused; http://b: no leader"),
            "{text}"
        );
        assert_eq!(error.code(), Code::Unavailable);
    }
}

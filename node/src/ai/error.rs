//! The AI endpoints' one error type, rendered in the caller's format: OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` or Anthropic's
//! `{"type": "error", "error": {"type", "message"}}`, with the matching status. A provider's
//! own refusal (a 400 about the prompt, say) is passed on with its status and message.

use super::quota::{QuotaKind, QuotaRefusal};
use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::gateway::body::{full, ProxyBody};

/// The API the caller speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFormat {
    OpenAi,
    Anthropic,
}

#[derive(Debug, thiserror::Error)]
pub enum AiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    #[error("the model `{0}` does not exist or you do not have access to it")]
    ModelNotFound(String),
    #[error("there is no prompt template `{0}`")]
    PromptNotFound(String),
    #[error("no AI endpoint at {0}: use chat/completions, messages, embeddings, models or prompts/<name>")]
    UnknownEndpoint(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unsupported(String),
    /// Every target failed (connection, timeout, 429 or 5xx). The detail goes to the log.
    #[error("no provider of model `{model}` could answer; retry later")]
    ProvidersUnavailable {
        model: String,
        status: StatusCode,
        detail: String,
    },
    /// The provider refused the request (a 4xx other than 429): its status and message.
    #[error("{message}")]
    Provider {
        status: StatusCode,
        message: String,
        kind: String,
    },
    #[error("the provider's answer could not be read: {0}")]
    BadProviderAnswer(String),
    /// The call's usage record could not be made durable (a full or failing disk): the answer
    /// is withheld rather than handed out uncounted. The detail goes to the log.
    #[error("the call could not be recorded in the usage ledger; retry later")]
    UsageNotRecorded(String),
    /// A blocking Budget or a TokenLimit has no room for the call's worst case.
    #[error("{}", quota_message(.0))]
    QuotaExceeded(QuotaRefusal),
}

fn quota_message(r: &QuotaRefusal) -> String {
    let resets = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.resets_at_ms),
    );
    match (r.kind, r.too_large) {
        (QuotaKind::Budget, true) => format!(
            "this call's worst-case cost is more than the whole budget `{}`; ask for fewer output tokens (max_tokens)",
            r.name
        ),
        (QuotaKind::Budget, false) => format!(
            "budget `{}` is exhausted for this period; it resets at {resets}",
            r.name
        ),
        (QuotaKind::TokenLimit, true) => format!(
            "this call may use up to {} tokens, more than token limit `{}` allows per window ({}); ask for fewer output tokens (max_tokens)",
            r.requested, r.name, r.limit
        ),
        (QuotaKind::TokenLimit, false) => format!(
            "token limit `{}` reached for `{}`: {} tokens per window, {} requested; try again in {}s",
            r.name, r.key, r.limit, r.requested, r.retry_after_s
        ),
    }
}

impl AiError {
    pub fn status(&self) -> StatusCode {
        match self {
            AiError::BadRequest { .. } | AiError::Unsupported(_) => StatusCode::BAD_REQUEST,
            AiError::ModelNotFound(_)
            | AiError::UnknownEndpoint(_)
            | AiError::PromptNotFound(_) => StatusCode::NOT_FOUND,
            AiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AiError::ProvidersUnavailable { status, .. } => *status,
            AiError::Provider { status, .. } => *status,
            AiError::BadProviderAnswer(_) => StatusCode::BAD_GATEWAY,
            AiError::UsageNotRecorded(_) => StatusCode::SERVICE_UNAVAILABLE,
            AiError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// OpenAI's error `type` and `code`.
    fn openai_type_and_code(&self) -> (&str, Option<&str>) {
        match self {
            AiError::BadRequest { .. } | AiError::Unsupported(_) => ("invalid_request_error", None),
            AiError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            AiError::PromptNotFound(_) => ("invalid_request_error", Some("prompt_not_found")),
            AiError::UnknownEndpoint(_) | AiError::MethodNotAllowed(_) => {
                ("invalid_request_error", Some("unknown_url"))
            }
            AiError::ProvidersUnavailable { status, .. } if *status == 429 => {
                ("rate_limit_error", Some("rate_limit_exceeded"))
            }
            AiError::ProvidersUnavailable { .. } | AiError::BadProviderAnswer(_) => {
                ("api_error", Some("provider_unavailable"))
            }
            AiError::Provider { kind, .. } => (kind.as_str(), None),
            AiError::UsageNotRecorded(_) => ("api_error", Some("usage_not_recorded")),
            AiError::QuotaExceeded(r) => match r.kind {
                QuotaKind::Budget => ("insufficient_quota", Some("budget_exceeded")),
                // What OpenAI answers when tokens per minute run out.
                QuotaKind::TokenLimit => ("tokens", Some("rate_limit_exceeded")),
            },
        }
    }

    /// Anthropic's error `type` for the status.
    fn anthropic_type(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 405 | 413 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        }
    }

    /// For the node's log only: which provider failed and how.
    pub fn log_detail(&self) -> Option<&str> {
        match self {
            AiError::ProvidersUnavailable { detail, .. } | AiError::UsageNotRecorded(detail) => {
                Some(detail)
            }
            _ => None,
        }
    }

    pub fn into_response(self, format: ApiFormat, request_id: &str) -> Response<ProxyBody> {
        let status = self.status();
        let message = self.to_string();
        let body = match format {
            ApiFormat::OpenAi => {
                let (kind, code) = self.openai_type_and_code();
                let param = match &self {
                    AiError::BadRequest { param, .. } => param.clone(),
                    AiError::ModelNotFound(_) => Some("model".into()),
                    _ => None,
                };
                json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
            }
            ApiFormat::Anthropic => json!({
                "type": "error",
                "error": {"type": self.anthropic_type(), "message": message},
                "request_id": request_id,
            }),
        };
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        let mut resp = Response::new(full(Bytes::from(bytes)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        if let AiError::QuotaExceeded(r) = &self {
            resp.headers_mut()
                .insert(hyper::header::RETRY_AFTER, r.retry_after_s.into());
        }
        resp
    }
}

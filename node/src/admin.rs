//! The gRPC admin API on `--admin-addr`: cluster operations, the resource store and secrets
//! at rest (rekey).
//!
//! `AdminError` is this layer's one error type, and `impl From<AdminError> for tonic::Status`
//! is the one place that maps errors to gRPC codes. Messages say what was wrong and what to
//! do; they never contain a token or a secret.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod keys;
pub mod limits;
pub mod resources;
pub mod secrets;
pub mod usage;

use konnect_proto::state::v1 as pb;
use pb::ErrorCode;

use crate::raft::proposer::ProposeError;
use crate::store::StoreError;

/// Metadata key naming which resource of an Apply failed (0-based index into the request).
pub const WRITE_INDEX_HEADER: &str = "x-konnect-write-index";
/// Metadata key naming the failing field (`spec.service`).
pub const FIELD_HEADER: &str = "x-konnect-field";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("a valid admin token is required (authorization: Bearer <token>)")]
    Unauthenticated,
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{message}")]
    Invalid {
        message: String,
        write_index: Option<u32>,
        field: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A compare-and-set lost: the resource changed since it was read.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdminError {
    pub fn invalid(message: impl Into<String>) -> AdminError {
        AdminError::Invalid {
            message: message.into(),
            write_index: None,
            field: String::new(),
        }
    }

    /// The error a failed command (validated in the state machine) stands for.
    pub fn from_command(e: pb::CommandError) -> AdminError {
        let message = if e.field.is_empty() {
            e.message
        } else {
            format!("{}: {}", e.field, e.message)
        };
        match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified) {
            ErrorCode::Invalid | ErrorCode::Unspecified => AdminError::Invalid {
                message,
                write_index: e.write_index,
                field: e.field,
            },
            ErrorCode::NotFound => AdminError::NotFound(message),
            ErrorCode::AlreadyExists | ErrorCode::AlreadyInitialized => {
                AdminError::AlreadyExists(message)
            }
            ErrorCode::RevisionMismatch => AdminError::Conflict(message),
            ErrorCode::InUse => AdminError::FailedPrecondition(message),
        }
    }
}

impl From<ProposeError> for AdminError {
    fn from(e: ProposeError) -> AdminError {
        match e {
            ProposeError::NoLeader(_) | ProposeError::NoQuorum(_) => {
                AdminError::Unavailable(e.to_string())
            }
            ProposeError::Rejected(m) => AdminError::FailedPrecondition(m),
            ProposeError::MembershipBusy => AdminError::Conflict(e.to_string()),
            // This node's Raft stopped (a storage failure, logged once when it did): another
            // node can serve the call, and a client with several endpoints moves on to it.
            ProposeError::Fatal(_) => AdminError::Unavailable(format!(
                "{e}; this node takes no part in the cluster until it restarts: try another node"
            )),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> AdminError {
        AdminError::Internal(e.to_string())
    }
}

impl From<AdminError> for tonic::Status {
    fn from(e: AdminError) -> tonic::Status {
        let code = match &e {
            AdminError::Unauthenticated => tonic::Code::Unauthenticated,
            AdminError::PermissionDenied(_) => tonic::Code::PermissionDenied,
            AdminError::Invalid { .. } => tonic::Code::InvalidArgument,
            AdminError::NotFound(_) => tonic::Code::NotFound,
            AdminError::AlreadyExists(_) => tonic::Code::AlreadyExists,
            AdminError::Conflict(_) => tonic::Code::Aborted,
            AdminError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            AdminError::Unavailable(_) => tonic::Code::Unavailable,
            AdminError::Internal(_) => tonic::Code::Internal,
        };
        metrics::counter!("konnect_admin_errors_total", "code" => format!("{code:?}")).increment(1);
        if let AdminError::Internal(m) = &e {
            tracing::error!(error = %m, "admin request failed");
        }
        let mut status = tonic::Status::new(code, e.to_string());
        if let AdminError::Invalid {
            write_index, field, ..
        } = &e
        {
            if let Some(i) = write_index {
                if let Ok(v) = i.to_string().parse() {
                    status.metadata_mut().insert(WRITE_INDEX_HEADER, v);
                }
            }
            if let Ok(v) = field.parse() {
                if !field.is_empty() {
                    status.metadata_mut().insert(FIELD_HEADER, v);
                }
            }
        }
        status
    }
}

/// Counts one admin request by method.
pub fn count_request(method: &'static str) {
    metrics::counter!("konnect_admin_requests_total", "method" => method).increment(1);
}

/// Proposes one command on behalf of `actor` and returns its outcome (a failed command is
/// an error).
pub async fn propose(
    node: &crate::node::NodeHandle,
    request_id: String,
    actor: &pb::AdminToken,
    op: pb::command::Op,
) -> Result<pb::command_result::Result, AdminError> {
    let cmd = pb::Command {
        leader_time_unix_ms: 0,
        request_id,
        actor: actor.id.clone(),
        actor_name: actor.name.clone(),
        op: Some(op),
    };
    let (_, result) = node.proposer.write(cmd).await?;
    command_outcome(result)
}

/// The outcome of a proposed command, or the error it stands for.
pub fn command_outcome(r: pb::CommandResult) -> Result<pb::command_result::Result, AdminError> {
    match r.result {
        Some(pb::command_result::Result::Error(e)) => Err(AdminError::from_command(e)),
        Some(ok) => Ok(ok),
        None => Err(AdminError::Internal("command produced no result".into())),
    }
}

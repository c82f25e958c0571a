//! Admin API authentication and authorisation: `authorization: Bearer <token>` checked against
//! the SHA-256 hashes in the replicated state, then the token's role against what the call
//! needs. Missing and wrong tokens get the same answer, so a caller learns nothing about which
//! tokens exist.
//!
//! Roles (the one table of who may do what is [`Role::allows`]):
//! - `viewer`: read the cluster status and resources (secrets are always redacted).
//! - `editor`: also write configuration and manage consumers' API keys, but not set secret
//!   fields, manage admin tokens, read the audit log or change membership.
//! - `admin`: everything.

use konnect_proto::state::v1 as pb;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AdminError;
use crate::raft::proposer::Proposer;
use crate::raft::state::StateReader;

/// Prefix of admin tokens, so a leaked one is recognisable (secret scanners, logs review).
pub const TOKEN_PREFIX: &str = "kadm_";

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Cluster status, resource get/list/watch, key listings.
    Read,
    /// Resource writes that set no secret field; consumers' API keys.
    Write,
    /// Resource writes that set a secret field (private keys, credentials); rekeying.
    WriteSecrets,
    /// Admin tokens and the audit log.
    ManageAccess,
    /// Adding and removing nodes.
    Membership,
}

impl Permission {
    fn describe(self) -> &'static str {
        match self {
            Permission::Read => "read the configuration",
            Permission::Write => "change the configuration",
            Permission::WriteSecrets => "set secret fields",
            Permission::ManageAccess => "manage admin tokens or read the audit log",
            Permission::Membership => "change cluster membership",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn allows(self, p: Permission) -> bool {
        match self {
            Role::Admin => true,
            Role::Editor => matches!(p, Permission::Read | Permission::Write),
            Role::Viewer => p == Permission::Read,
        }
    }
}

#[derive(Clone)]
pub struct Authenticator {
    reader: StateReader,
    proposer: Proposer,
}

/// How long a node that does not know a token yet waits to catch up with the leader.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

impl Authenticator {
    pub fn new(reader: StateReader, proposer: Proposer) -> Authenticator {
        Authenticator { reader, proposer }
    }

    /// The token the request presents, if it is a known one. A token this node does not know
    /// may have been created an instant ago on the leader (right after `cluster init`, say):
    /// before refusing, the node catches up through a read-index barrier and looks again.
    pub async fn check<T>(&self, req: &tonic::Request<T>) -> Result<pb::AdminToken, AdminError> {
        let hash = presented_hash(req)?;
        if let Some(t) = self.reader.token_by_hash(&hash)? {
            return Ok(t);
        }
        if tokio::time::timeout(CATCH_UP, self.proposer.linearizable_barrier())
            .await
            .is_ok_and(|r| r.is_ok())
        {
            if let Some(t) = self.reader.token_by_hash(&hash)? {
                return Ok(t);
            }
        }
        Err(AdminError::Unauthenticated)
    }
}

impl Authenticator {
    /// The caller's token, if it is known and its role allows `needed`.
    pub async fn authorize<T>(
        &self,
        req: &tonic::Request<T>,
        needed: Permission,
    ) -> Result<pb::AdminToken, AdminError> {
        let token = self.check(req).await?;
        require(&token, needed)?;
        Ok(token)
    }
}

/// Refuses a token whose role does not allow `needed` (an unknown role allows nothing).
pub fn require(token: &pb::AdminToken, needed: Permission) -> Result<(), AdminError> {
    if Role::parse(&token.role).is_some_and(|r| r.allows(needed)) {
        return Ok(());
    }
    Err(AdminError::PermissionDenied(format!(
        "token {:?} has the {} role, which may not {}",
        token.name,
        token.role,
        needed.describe()
    )))
}

/// SHA-256 of the bearer token the request carries.
fn presented_hash<T>(req: &tonic::Request<T>) -> Result<Vec<u8>, AdminError> {
    let presented = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(AdminError::Unauthenticated)?;
    Ok(Sha256::digest(presented.as_bytes()).to_vec())
}

/// A new random admin token (256 bits) and its stored form (hash only).
pub fn new_admin_token(name: &str, role: &str, now_unix_ms: u64) -> (String, pb::AdminToken) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    let stored = pb::AdminToken {
        id: hex::encode(id),
        name: name.to_string(),
        role: role.to_string(),
        secret_sha256: Sha256::digest(token.as_bytes()).to_vec(),
        created_unix_ms: now_unix_ms,
    };
    (token, stored)
}

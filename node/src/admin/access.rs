//! `konnect.admin.v1.Tokens` and `konnect.admin.v1.Audit`: who may use the admin API, and
//! what they changed. Both need the admin role.

use konnect_proto::admin::v1 as api;
use konnect_proto::admin::v1::audit_server::Audit;
use konnect_proto::admin::v1::tokens_server::Tokens;
use konnect_proto::state::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::{new_admin_token, Authenticator, Permission, Role};
use super::resources::scoped_request_id;
use super::{count_request, propose, AdminError};
use crate::node::NodeHandle;

pub struct TokenService {
    pub node: NodeHandle,
    pub auth: Authenticator,
}

pub struct AuditService {
    pub node: NodeHandle,
    pub auth: Authenticator,
}

fn token_info(t: &pb::AdminToken) -> api::TokenInfo {
    api::TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.clone(),
        created_unix_ms: t.created_unix_ms,
    }
}

#[tonic::async_trait]
impl Tokens for TokenService {
    async fn create(
        &self,
        req: Request<api::CreateTokenRequest>,
    ) -> Result<Response<api::CreateTokenResponse>, Status> {
        count_request("Tokens.Create");
        let caller = self.auth.authorize(&req, Permission::ManageAccess).await?;
        let request_id = scoped_request_id(&req, &caller);
        let r = req.into_inner();
        if Role::parse(&r.role).is_none() {
            return Err(AdminError::Invalid {
                message: format!("unknown role {:?}: use admin, editor or viewer", r.role),
                write_index: None,
                field: "role".into(),
            }
            .into());
        }
        let (secret, stored) = new_admin_token(&r.name, &r.role, crate::clock::unix_ms());
        let outcome = propose(
            &self.node,
            request_id,
            &caller,
            pb::command::Op::CreateToken(pb::CreateAdminToken {
                token: Some(stored.clone()),
            }),
        )
        .await?;
        let pb::command_result::Result::Token(done) = outcome else {
            return Err(AdminError::Internal("unexpected command result".into()).into());
        };
        // A retried request is answered with the first attempt's token, which this call never
        // saw: say so rather than hand out a secret that was not stored.
        if done.token.as_ref().map(|t| &t.id) != Some(&stored.id) {
            return Err(AdminError::FailedPrecondition(
                "this request was already applied and its token shown then; revoke it if it was lost (`tokens list`) and create another".into(),
            )
            .into());
        }
        Ok(Response::new(api::CreateTokenResponse {
            token: secret,
            info: Some(token_info(&stored)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListTokensRequest>,
    ) -> Result<Response<api::ListTokensResponse>, Status> {
        count_request("Tokens.List");
        self.auth.authorize(&req, Permission::ManageAccess).await?;
        let mut tokens: Vec<api::TokenInfo> = self
            .node
            .reader
            .tokens()
            .map_err(AdminError::from)?
            .iter()
            .map(token_info)
            .collect();
        tokens.sort_by_key(|t| t.created_unix_ms);
        Ok(Response::new(api::ListTokensResponse { tokens }))
    }

    async fn revoke(
        &self,
        req: Request<api::RevokeTokenRequest>,
    ) -> Result<Response<api::RevokeTokenResponse>, Status> {
        count_request("Tokens.Revoke");
        let caller = self.auth.authorize(&req, Permission::ManageAccess).await?;
        let request_id = scoped_request_id(&req, &caller);
        let id = req.into_inner().id;
        let outcome = propose(
            &self.node,
            request_id,
            &caller,
            pb::command::Op::RevokeToken(pb::RevokeAdminToken { id }),
        )
        .await?;
        let pb::command_result::Result::Token(done) = outcome else {
            return Err(AdminError::Internal("unexpected command result".into()).into());
        };
        Ok(Response::new(api::RevokeTokenResponse {
            revision: done.revision,
        }))
    }
}

const DEFAULT_AUDIT_PAGE: usize = 100;
const MAX_AUDIT_PAGE: usize = 1000;

#[tonic::async_trait]
impl Audit for AuditService {
    async fn list(
        &self,
        req: Request<api::ListAuditRequest>,
    ) -> Result<Response<api::ListAuditResponse>, Status> {
        count_request("Audit.List");
        self.auth.authorize(&req, Permission::ManageAccess).await?;
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => DEFAULT_AUDIT_PAGE,
            n => n.min(MAX_AUDIT_PAGE),
        };
        let actor = r.actor;
        let keep =
            |e: &pb::AuditEntry| actor.is_empty() || e.actor == actor || e.actor_name == actor;
        let entries = if r.newest_first {
            self.node
                .reader
                .audit_newest(limit, keep)
                .map_err(AdminError::from)?
        } else {
            self.node
                .reader
                .audit_after(r.after_revision, limit, keep)
                .map_err(AdminError::from)?
        };
        Ok(Response::new(api::ListAuditResponse { entries }))
    }
}

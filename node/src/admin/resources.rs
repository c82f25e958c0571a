//! `konnect.admin.v1.Resources`: apply, create, update, delete, get, list and watch resources.
//!
//! Writes become one Raft command each (an Apply of many resources is one command, applied
//! atomically); the state machine validates them. Reads are served from this node's applied
//! state, or linearizably (`consistent`) after a read-index barrier through the leader.

use std::pin::Pin;

use futures::Stream;
use konnect_proto::admin::v1 as api;
use konnect_proto::admin::v1::resources_server::Resources;
use konnect_proto::state::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::auth::{require, Authenticator, Permission};
use super::{count_request, AdminError};
use crate::node::NodeHandle;
use crate::raft::state::{History, LabelSelector};
use crate::resources;

const DEFAULT_PAGE: usize = 500;
const MAX_PAGE: usize = 5000;

pub struct ResourceService {
    pub node: NodeHandle,
    pub auth: Authenticator,
}

fn known_kind(kind: &str) -> Result<(), AdminError> {
    if resources::kind(kind).is_some() {
        Ok(())
    } else {
        Err(AdminError::invalid(format!(
            "unknown kind {kind:?} (known kinds: {})",
            resources::known_kind_names()
        )))
    }
}

/// Refuses writes of kinds made by their own service (API keys) and, for callers whose role
/// may not set secrets, writes that set a secret field (sending `<redacted>` back keeps the
/// stored value and needs no such right).
fn check_writes(
    token: &pb::AdminToken,
    inputs: &[api::ResourceInput],
    prune_kinds: &[String],
) -> Result<(), AdminError> {
    for kind in inputs.iter().map(|i| &i.kind).chain(prune_kinds) {
        if let Some(how) = resources::managed_by(kind) {
            return Err(AdminError::invalid(format!(
                "{kind} resources cannot be written or pruned here: {how}"
            )));
        }
    }
    for input in inputs {
        let Some(spec) = &input.spec else { continue };
        let spec = konnect_proto::json::struct_to_json(spec);
        for path in resources::secret_fields(&input.kind) {
            let value = path.split('.').try_fold(&spec, |v, part| v.get(part));
            let sets = match value {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::String(s)) => s != resources::REDACTED,
                Some(_) => true,
            };
            if sets {
                require(token, Permission::WriteSecrets).map_err(|_| {
                    AdminError::PermissionDenied(format!(
                        "{} {:?} sets the secret field spec.{path}; token {:?} has the {} role, which may not set secrets (send {} to keep the stored value)",
                        input.kind, input.name, token.name, token.role, resources::REDACTED
                    ))
                })?;
            }
        }
    }
    Ok(())
}

fn to_write(input: api::ResourceInput, expected_revision: Option<u64>) -> pb::ResourceWrite {
    pb::ResourceWrite {
        kind: input.kind,
        name: input.name,
        labels: input.labels,
        spec: input.spec,
        expected_revision,
    }
}

impl ResourceService {
    /// Proposes a write under `request_id` (see [`scoped_request_id`]).
    async fn propose(
        &self,
        request_id: String,
        actor: &pb::AdminToken,
        op: pb::command::Op,
    ) -> Result<pb::ApplyResult, AdminError> {
        match super::propose(&self.node, request_id, actor, op).await? {
            pb::command_result::Result::Apply(a) => Ok(a),
            _ => Err(AdminError::Internal("unexpected command result".into())),
        }
    }

    /// Writes one resource and returns it as stored, read on this node after its own apply
    /// (so a follower answers with the write, not with what it had before).
    async fn write_one(
        &self,
        request_id: String,
        token: &pb::AdminToken,
        input: api::ResourceInput,
        expected_revision: Option<u64>,
    ) -> Result<pb::Resource, AdminError> {
        let (kind, name) = (input.kind.clone(), input.name.clone());
        let op = pb::command::Op::Apply(pb::ApplyResources {
            writes: vec![to_write(input, expected_revision)],
            prune_kinds: vec![],
        });
        let done = self.propose(request_id, token, op).await?;
        self.node.proposer.wait_applied(done.revision).await?;
        self.get_stored(&kind, &name)
    }

    async fn read_barrier(&self, consistent: bool) -> Result<(), AdminError> {
        if consistent {
            self.node.proposer.linearizable_barrier().await?;
        }
        Ok(())
    }

    fn get_stored(&self, kind: &str, name: &str) -> Result<pb::Resource, AdminError> {
        self.node
            .reader
            .get_resource(kind, name)?
            .map(redact)
            .ok_or_else(|| AdminError::NotFound(format!("{kind} {name:?} not found")))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<api::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Resources for ResourceService {
    async fn apply(
        &self,
        req: Request<api::ApplyRequest>,
    ) -> Result<Response<api::ApplyResponse>, Status> {
        count_request("Apply");
        let token = self.auth.authorize(&req, Permission::Write).await?;
        check_writes(&token, &req.get_ref().resources, &req.get_ref().prune_kinds)?;
        let request_id = scoped_request_id(&req, &token);
        let r = req.into_inner();
        if r.resources.is_empty() && r.prune_kinds.is_empty() {
            return Err(AdminError::invalid("nothing to apply: no resources given").into());
        }
        let writes = r.resources.into_iter().map(|i| to_write(i, None)).collect();
        let result = self
            .propose(
                request_id,
                &token,
                pb::command::Op::Apply(pb::ApplyResources {
                    writes,
                    prune_kinds: r.prune_kinds,
                }),
            )
            .await?;
        Ok(Response::new(api::ApplyResponse {
            changes: result.changes,
            revision: result.revision,
        }))
    }

    async fn create(
        &self,
        req: Request<api::CreateRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        count_request("Create");
        let token = self.auth.authorize(&req, Permission::Write).await?;
        check_writes(&token, req.get_ref().resource.as_slice(), &[])?;
        let request_id = scoped_request_id(&req, &token);
        let input = req
            .into_inner()
            .resource
            .ok_or_else(|| AdminError::invalid("resource is required"))?;
        let written = self
            .write_one(request_id, &token, input, Some(0))
            .await
            .map_err(|e| match e {
                // A create that finds the resource present is "already exists", not a CAS conflict.
                AdminError::Conflict(m) => AdminError::AlreadyExists(m),
                e => e,
            })?;
        Ok(Response::new(written))
    }

    async fn update(
        &self,
        req: Request<api::UpdateRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        count_request("Update");
        let token = self.auth.authorize(&req, Permission::Write).await?;
        check_writes(&token, req.get_ref().resource.as_slice(), &[])?;
        let request_id = scoped_request_id(&req, &token);
        let r = req.into_inner();
        let input = r
            .resource
            .ok_or_else(|| AdminError::invalid("resource is required"))?;
        let (kind, name) = (input.kind.clone(), input.name.clone());
        known_kind(&kind)?;
        if r.expected_revision.is_none() {
            // Update replaces an existing resource; use Create or Apply to make a new one.
            self.get_stored(&kind, &name)?;
        }
        let written = self
            .write_one(request_id, &token, input, r.expected_revision)
            .await?;
        Ok(Response::new(written))
    }

    async fn delete(
        &self,
        req: Request<api::DeleteRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        count_request("Delete");
        let token = self.auth.authorize(&req, Permission::Write).await?;
        let request_id = scoped_request_id(&req, &token);
        let r = req.into_inner();
        let result = self
            .propose(
                request_id,
                &token,
                pb::command::Op::Delete(pb::DeleteResource {
                    kind: r.kind,
                    name: r.name,
                    expected_revision: r.expected_revision,
                }),
            )
            .await?;
        Ok(Response::new(api::DeleteResponse {
            revision: result.revision,
        }))
    }

    async fn get(&self, req: Request<api::GetRequest>) -> Result<Response<pb::Resource>, Status> {
        count_request("Get");
        self.auth.authorize(&req, Permission::Read).await?;
        let r = req.into_inner();
        known_kind(&r.kind)?;
        self.read_barrier(r.consistent).await?;
        Ok(Response::new(self.get_stored(&r.kind, &r.name)?))
    }

    async fn list(
        &self,
        req: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        count_request("List");
        self.auth.authorize(&req, Permission::Read).await?;
        let r = req.into_inner();
        if !r.kind.is_empty() {
            known_kind(&r.kind)?;
        }
        let selector = LabelSelector::parse(&r.label_selector).map_err(AdminError::invalid)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(
                hex::decode(&r.page_token)
                    .map_err(|_| AdminError::invalid("page_token is not one this server issued"))?,
            )
        };
        let limit = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        self.read_barrier(r.consistent).await?;
        let page = self
            .node
            .reader
            .list_resources(&r.kind, &selector, after.as_deref(), limit)
            .map_err(AdminError::from)?;
        Ok(Response::new(api::ListResponse {
            items: page.items.into_iter().map(redact).collect(),
            next_page_token: page.next_key.map(hex::encode).unwrap_or_default(),
            revision: page.revision,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<api::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        count_request("Watch");
        self.auth.authorize(&req, Permission::Read).await?;
        let r = req.into_inner();
        if !r.kind.is_empty() {
            known_kind(&r.kind)?;
        }
        let reader = self.node.reader.clone();
        let mut applied = self.node.applied.clone();
        // From "now" when no revision is given.
        let mut cursor = if r.from_revision == 0 {
            reader.applied_revision().map_err(AdminError::from)?
        } else {
            r.from_revision
        };
        if let History::Compacted { compacted_revision } = reader
            .events_after(cursor, &r.kind, 0)
            .map_err(AdminError::from)?
        {
            return Err(compacted(cursor, compacted_revision).into());
        }
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                applied.borrow_and_update();
                match reader.events_after(cursor, &r.kind, usize::MAX) {
                    Ok(History::Events(events, complete_to)) => {
                        for (revision, ev) in events {
                            let msg = api::WatchEvent {
                                r#type: ev.r#type,
                                resource: ev.resource.map(redact),
                                revision,
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                        }
                        // Everything up to what the read saw applied has been sent.
                        cursor = cursor.max(complete_to);
                    }
                    Ok(History::Compacted { compacted_revision }) => {
                        let _ = tx
                            .send(Err(compacted(cursor, compacted_revision).into()))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(AdminError::from(e).into())).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Replaces the secret fields of a resource's spec with `<redacted>`: every resource leaving
/// the admin API goes through here.
fn redact(mut r: pb::Resource) -> pb::Resource {
    let secrets = resources::secret_fields(&r.kind);
    if let Some(spec) = r.spec.as_mut() {
        for path in secrets {
            redact_path(spec, path);
        }
    }
    r
}

/// Replaces the value at a dotted path (`tls.client_key_pem`) when it is present.
fn redact_path(spec: &mut prost_types::Struct, path: &str) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let Some(v) = spec.fields.get_mut(head) else {
        return;
    };
    match (rest, &mut v.kind) {
        (None, Some(prost_types::value::Kind::NullValue(_))) => {}
        (None, _) => {
            *v = prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(
                    resources::REDACTED.into(),
                )),
            }
        }
        (Some(rest), Some(prost_types::value::Kind::StructValue(inner))) => {
            redact_path(inner, rest)
        }
        _ => {}
    }
}

/// The client's `x-konnect-request-id` (the same on every retry of one logical write),
/// scoped to the caller's token, so a retried write applies once.
pub(super) fn scoped_request_id<T>(req: &Request<T>, actor: &pb::AdminToken) -> String {
    req.metadata()
        .get("x-konnect-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(|v| format!("{}/{v}", actor.id))
        .unwrap_or_default()
}

fn compacted(from: u64, compacted_revision: u64) -> AdminError {
    AdminError::FailedPrecondition(format!(
        "revision {from} is compacted: history starts after revision {compacted_revision}; list again and watch from the list's revision"
    ))
}

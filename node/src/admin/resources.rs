//! `konnect.admin.v1.Resources`: apply, create, update, delete, get, list and watch resources.
//!
//! Writes become one Raft command each (an Apply of many resources is one command, applied
//! atomically); the state machine validates them. Before a write is proposed, its secret
//! fields (`resources::secret_fields`) are validated as plaintext here and replaced by
//! envelopes encrypted with the primary key (`seal_secrets`): plaintext secrets never enter
//! the log or the state. Reads are served from this node's applied state, or linearizably
//! (`consistent`) after a read-index barrier through the leader, with every secret shown as
//! `<redacted>`.

use std::pin::Pin;

use futures::Stream;
use konnect_proto::admin::v1 as api;
use konnect_proto::admin::v1::resources_server::Resources;
use konnect_proto::json::struct_to_json;
use konnect_proto::state::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::auth::{require, Authenticator, Permission};
use super::{count_request, AdminError};
use crate::node::NodeHandle;
use crate::raft::state::{History, LabelSelector};
use crate::resources;
use crate::secrets;

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
    /// Replaces the secret fields of `writes` by envelopes, after checking each such spec in
    /// full with its plaintext (the state machine can only check the rest). Per field:
    /// plaintext is encrypted with the primary key (or keeps the stored envelope when that
    /// holds the same value, so re-applying a manifest changes nothing); `<redacted>` keeps
    /// the stored envelope, and then the write only applies if the resource is still at the
    /// revision read; an envelope is kept if this node's keyring opens it for this resource
    /// and field.
    async fn seal_secrets(&self, writes: &mut [pb::ResourceWrite]) -> Result<(), AdminError> {
        for (i, w) in writes.iter_mut().enumerate() {
            let fields = resources::secret_fields(&w.kind);
            let (Some(def), Some(spec)) = (resources::kind(&w.kind), w.spec.as_mut()) else {
                continue;
            };
            let mut plain = struct_to_json(spec);
            let invalid = |field: String, message: String| AdminError::Invalid {
                message: format!("{field}: {message}"),
                write_index: Some(i as u32),
                field,
            };
            let mut present = false;
            for field in fields {
                let value = field
                    .split('.')
                    .try_fold(&plain, |v, part| v.get(part))
                    .filter(|v| !v.is_null());
                match value {
                    None => {}
                    Some(v) if v.is_string() => present = true,
                    // Refused here, so that not even a malformed secret reaches the log.
                    Some(_) => {
                        return Err(invalid(
                            format!("spec.{field}"),
                            "must be a string (PEM)".into(),
                        ))
                    }
                }
            }
            if !present {
                continue;
            }
            resources::validate_name(&w.name)
                .and_then(|_| resources::validate_labels(&w.labels))
                .map_err(|e| invalid(e.field, e.message))?;
            let mut stored: Option<Option<pb::Resource>> = None;
            let mut kept_stored_revision = None;
            let mut sealed: Vec<(&str, String)> = Vec::new();
            for field in fields {
                let Some(value) = secrets::field_str(&plain, field).map(str::to_string) else {
                    continue;
                };
                let aad = secrets::aad(&w.kind, &w.name, field);
                let (plaintext, envelope) = if value == resources::REDACTED {
                    // Keep what is stored: read it as of now (through the leader), since a
                    // user round-tripping `get | apply` may ask any node.
                    if stored.is_none() {
                        self.node.proposer.linearizable_barrier().await?;
                        stored = Some(self.node.reader.get_resource(&w.kind, &w.name)?);
                    }
                    let current = stored.as_ref().and_then(|r| r.as_ref());
                    let kept = current
                        .and_then(|r| r.spec.as_ref())
                        .map(struct_to_json)
                        .and_then(|s| secrets::field_str(&s, field).map(str::to_string))
                        .filter(|v| v != resources::REDACTED)
                        .ok_or_else(|| {
                            invalid(
                                format!("spec.{field}"),
                                format!(
                                    "is {} but {} {:?} has no stored value to keep; send the secret itself",
                                    resources::REDACTED,
                                    w.kind,
                                    w.name
                                ),
                            )
                        })?;
                    kept_stored_revision = current.map(|r| r.revision);
                    let plaintext = if secrets::is_envelope(&kept) {
                        self.node.keyring.decrypt(&kept, &aad).map_err(|e| {
                            invalid(
                                format!("spec.{field}"),
                                format!("the stored value cannot be opened on this node: {e}"),
                            )
                        })?
                    } else {
                        kept.clone()
                    };
                    (plaintext, kept)
                } else if secrets::is_envelope(&value) {
                    let plaintext = self.node.keyring.decrypt(&value, &aad).map_err(|e| {
                        invalid(
                            format!("spec.{field}"),
                            format!(
                                "an encrypted value is accepted only if this node's keys open it for this resource and field: {e}"
                            ),
                        )
                    })?;
                    (plaintext, value)
                } else {
                    let same_as_stored = self
                        .node
                        .reader
                        .get_resource(&w.kind, &w.name)?
                        .and_then(|r| r.spec)
                        .map(|s| struct_to_json(&s))
                        .and_then(|s| secrets::field_str(&s, field).map(str::to_string))
                        .filter(|old| {
                            secrets::is_envelope(old)
                                && self.node.keyring.decrypt(old, &aad).ok().as_deref()
                                    == Some(value.as_str())
                        });
                    let envelope = match same_as_stored {
                        Some(old) => old,
                        None => self
                            .node
                            .keyring
                            .encrypt(&value, &aad)
                            .map_err(|e| AdminError::Internal(e.to_string()))?,
                    };
                    (value, envelope)
                };
                set_secret_json(&mut plain, field, plaintext);
                sealed.push((field, envelope));
            }
            (def.validate)(&plain).map_err(|e| invalid(e.field, e.message))?;
            for (field, envelope) in sealed {
                set_path(spec, field, &envelope);
            }
            if w.expected_revision.is_none() {
                w.expected_revision = kept_stored_revision;
            }
        }
        Ok(())
    }

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
        let mut writes = vec![to_write(input, expected_revision)];
        self.seal_secrets(&mut writes).await?;
        let op = pb::command::Op::Apply(pb::ApplyResources {
            writes,
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
        let mut writes: Vec<pb::ResourceWrite> =
            r.resources.into_iter().map(|i| to_write(i, None)).collect();
        self.seal_secrets(&mut writes).await?;
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

/// Replaces the secret fields of a resource's spec (plaintext or encrypted) with
/// `<redacted>`: every resource leaving the admin API goes through here.
pub(super) fn redact(mut r: pb::Resource) -> pb::Resource {
    let secrets = resources::secret_fields(&r.kind);
    if let Some(spec) = r.spec.as_mut() {
        for path in secrets {
            set_path(spec, path, resources::REDACTED);
        }
    }
    r
}

/// Replaces the value at a dotted path (`tls.client_key_pem`) with a string when a non-null
/// value is present there.
pub(super) fn set_path(spec: &mut prost_types::Struct, path: &str, value: &str) {
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
                kind: Some(prost_types::value::Kind::StringValue(value.into())),
            }
        }
        (Some(rest), Some(prost_types::value::Kind::StructValue(inner))) => {
            set_path(inner, rest, value)
        }
        _ => {}
    }
}

/// Sets the string at a dotted path of a JSON spec where a string already is.
fn set_secret_json(spec: &mut serde_json::Value, path: &str, value: String) {
    if let Some(slot) = path
        .split('.')
        .try_fold(spec, |v, part| v.get_mut(part))
        .filter(|v| v.is_string())
    {
        *slot = serde_json::Value::String(value);
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

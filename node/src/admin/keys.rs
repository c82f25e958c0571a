//! `konnect.admin.v1.Keys`: consumers' API keys. The node generates each key (256 random bits),
//! returns it once, and stores it as an `ApiKey` resource holding only its SHA-256 and prefix.
//! Revoking deletes that resource; rotating issues a new key and shortens the old one's life to
//! the overlap, in one atomic write.

use konnect_proto::admin::v1 as api;
use konnect_proto::admin::v1::keys_server::Keys;
use konnect_proto::json::{json_to_struct, struct_to_json};
use konnect_proto::state::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Permission};
use super::resources::scoped_request_id;
use super::{count_request, propose, AdminError};
use crate::node::NodeHandle;
use crate::raft::state::LabelSelector;
use crate::resources::api_key::{self, ApiKeySpec};

pub struct KeyService {
    pub node: NodeHandle,
    pub auth: Authenticator,
}

const KIND: &str = "ApiKey";

/// Accepts a key id, its prefix (`knk_<id>`) or the whole key, and returns the id.
fn key_id(given: &str) -> Result<String, AdminError> {
    let given = given.trim();
    let rest = given.strip_prefix(api_key::KEY_PREFIX).unwrap_or(given);
    let id: String = rest.chars().take(api_key::ID_HEX).collect();
    if id.len() != api_key::ID_HEX || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AdminError::invalid(format!(
            "{:?} is not a key id: give the {} hex characters after {} (as `keys list` shows)",
            given.chars().take(20).collect::<String>(),
            api_key::ID_HEX,
            api_key::KEY_PREFIX
        )));
    }
    Ok(id)
}

fn expires(in_secs: Option<u64>, now: u64) -> Result<Option<u64>, AdminError> {
    match in_secs {
        None => Ok(None),
        Some(0) => Err(AdminError::invalid(
            "expires_in_secs must be positive (leave it out for a key that never expires)",
        )),
        Some(s) => Ok(Some(now.saturating_add(s.saturating_mul(1000)))),
    }
}

fn write_for(new: &api_key::NewKey, spec: &ApiKeySpec) -> pb::ResourceWrite {
    let json = serde_json::json!({
        "consumer": spec.consumer,
        "prefix": new.prefix,
        "sha256": new.sha256_hex,
        "created_unix_ms": spec.created_unix_ms,
        "expires_unix_ms": spec.expires_unix_ms,
        "description": spec.description,
    });
    pb::ResourceWrite {
        kind: KIND.into(),
        name: new.id.clone(),
        labels: Default::default(),
        spec: json_to_struct(&json).ok(),
        expected_revision: Some(0),
    }
}

fn info(r: &pb::Resource, last_used: Option<u64>) -> Option<api::ApiKeyInfo> {
    let spec = ApiKeySpec::parse(&struct_to_json(r.spec.as_ref()?)).ok()?;
    Some(api::ApiKeyInfo {
        id: r.name.clone(),
        prefix: spec.prefix,
        consumer: spec.consumer,
        created_unix_ms: spec.created_unix_ms,
        expires_unix_ms: spec.expires_unix_ms,
        last_used_unix_ms: last_used.filter(|t| *t > 0),
        description: spec.description,
    })
}

impl KeyService {
    /// Proposes the writes and checks that the stored key is the one generated here: a retried
    /// request (same request id) is answered with the first attempt's result, whose key this
    /// call never saw and must not pretend to return.
    async fn create_key(
        &self,
        request_id: String,
        token: &pb::AdminToken,
        writes: Vec<pb::ResourceWrite>,
        new: &api_key::NewKey,
    ) -> Result<api::CreateKeyResponse, AdminError> {
        let outcome = propose(
            &self.node,
            request_id,
            token,
            pb::command::Op::Apply(pb::ApplyResources {
                writes,
                prune_kinds: vec![],
            }),
        )
        .await
        .map_err(|e| match e {
            AdminError::Conflict(m) if m.contains(&new.id) => {
                AdminError::AlreadyExists(format!("key id {} is taken; try again", new.id))
            }
            e => e,
        })?;
        let pb::command_result::Result::Apply(done) = outcome else {
            return Err(AdminError::Internal("unexpected command result".into()));
        };
        self.node.proposer.wait_applied(done.revision).await?;
        let stored = self.node.reader.get_resource(KIND, &new.id)?.filter(|r| {
            r.spec
                .as_ref()
                .and_then(|s| struct_to_json(s).get("sha256").cloned())
                .is_some_and(|h| h == new.sha256_hex.as_str())
        });
        let Some(stored) = stored else {
            return Err(AdminError::FailedPrecondition(
                "this request was already applied and its key shown then; it is not stored again. \
                 Revoke that key if it was lost (`keys list`) and create a new one"
                    .into(),
            ));
        };
        Ok(api::CreateKeyResponse {
            key: new.key.clone(),
            info: info(&stored, None),
            revision: done.revision,
        })
    }
}

#[tonic::async_trait]
impl Keys for KeyService {
    async fn create(
        &self,
        req: Request<api::CreateKeyRequest>,
    ) -> Result<Response<api::CreateKeyResponse>, Status> {
        count_request("Keys.Create");
        let token = self.auth.authorize(&req, Permission::Write).await?;
        let request_id = scoped_request_id(&req, &token);
        let r = req.into_inner();
        if r.consumer.is_empty() {
            return Err(AdminError::invalid("consumer: name the consumer the key is for").into());
        }
        let now = crate::clock::unix_ms();
        let new = api_key::generate();
        let spec = ApiKeySpec {
            consumer: r.consumer,
            prefix: new.prefix.clone(),
            sha256: new.sha256_hex.clone(),
            created_unix_ms: now,
            expires_unix_ms: expires(r.expires_in_secs, now)?,
            description: r.description,
        };
        let writes = vec![write_for(&new, &spec)];
        Ok(Response::new(
            self.create_key(request_id, &token, writes, &new).await?,
        ))
    }

    async fn list(
        &self,
        req: Request<api::ListKeysRequest>,
    ) -> Result<Response<api::ListKeysResponse>, Status> {
        count_request("Keys.List");
        self.auth.authorize(&req, Permission::Read).await?;
        let consumer = req.into_inner().consumer;
        let last_used = self
            .node
            .reader
            .api_keys_last_used()
            .map_err(AdminError::from)?;
        let mut keys = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .node
                .reader
                .list_resources(KIND, &LabelSelector::default(), after.as_deref(), 5000)
                .map_err(AdminError::from)?;
            for r in &page.items {
                if let Some(i) = info(r, last_used.get(&r.name).copied()) {
                    if consumer.is_empty() || i.consumer == consumer {
                        keys.push(i);
                    }
                }
            }
            match page.next_key {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        keys.sort_by(|a, b| {
            (&a.consumer, a.created_unix_ms).cmp(&(&b.consumer, b.created_unix_ms))
        });
        Ok(Response::new(api::ListKeysResponse { keys }))
    }

    async fn revoke(
        &self,
        req: Request<api::RevokeKeyRequest>,
    ) -> Result<Response<api::RevokeKeyResponse>, Status> {
        count_request("Keys.Revoke");
        let token = self.auth.authorize(&req, Permission::Write).await?;
        let request_id = scoped_request_id(&req, &token);
        let id = key_id(&req.into_inner().id)?;
        let outcome = propose(
            &self.node,
            request_id,
            &token,
            pb::command::Op::Delete(pb::DeleteResource {
                kind: KIND.into(),
                name: id.clone(),
                expected_revision: None,
            }),
        )
        .await
        .map_err(|e| match e {
            AdminError::NotFound(_) => AdminError::NotFound(format!("no API key with id {id}")),
            e => e,
        })?;
        let pb::command_result::Result::Apply(done) = outcome else {
            return Err(AdminError::Internal("unexpected command result".into()).into());
        };
        Ok(Response::new(api::RevokeKeyResponse {
            revision: done.revision,
        }))
    }

    async fn rotate(
        &self,
        req: Request<api::RotateKeyRequest>,
    ) -> Result<Response<api::CreateKeyResponse>, Status> {
        count_request("Keys.Rotate");
        let token = self.auth.authorize(&req, Permission::Write).await?;
        let request_id = scoped_request_id(&req, &token);
        let r = req.into_inner();
        let id = key_id(&r.id)?;
        let old = self
            .node
            .reader
            .get_resource(KIND, &id)
            .map_err(AdminError::from)?
            .ok_or_else(|| AdminError::NotFound(format!("no API key with id {id}")))?;
        let mut old_json = struct_to_json(&old.spec.clone().unwrap_or_default());
        let old_spec =
            ApiKeySpec::parse(&old_json).map_err(|e| AdminError::Internal(e.to_string()))?;
        let now = crate::clock::unix_ms();
        // The old key stops at the end of the overlap, or earlier if it was to expire anyway.
        let overlap_end = now.saturating_add(r.overlap_secs.saturating_mul(1000));
        let old_expires = old_spec
            .expires_unix_ms
            .map_or(overlap_end, |e| e.min(overlap_end));
        old_json["expires_unix_ms"] = old_expires.into();
        let new = api_key::generate();
        let spec = ApiKeySpec {
            consumer: old_spec.consumer.clone(),
            prefix: new.prefix.clone(),
            sha256: new.sha256_hex.clone(),
            created_unix_ms: now,
            expires_unix_ms: expires(r.expires_in_secs, now)?,
            description: old_spec.description.clone(),
        };
        let writes = vec![
            write_for(&new, &spec),
            pb::ResourceWrite {
                kind: KIND.into(),
                name: id,
                labels: old.labels.clone(),
                spec: json_to_struct(&old_json).ok(),
                expected_revision: Some(old.revision),
            },
        ];
        Ok(Response::new(
            self.create_key(request_id, &token, writes, &new).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_taken_from_ids_prefixes_or_whole_keys() {
        let k = api_key::generate();
        assert_eq!(key_id(&k.id).unwrap(), k.id);
        assert_eq!(key_id(&k.prefix).unwrap(), k.id);
        assert_eq!(key_id(&k.key).unwrap(), k.id);
        let e = key_id(&format!("{}zz", &k.key[..10]))
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&k.key[10..]), "{e}");
        assert!(key_id("short").is_err());
    }
}

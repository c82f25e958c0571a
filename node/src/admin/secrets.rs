//! `konnect.admin.v1.Secrets`: `Rekey` re-encrypts every stored secret field under this
//! node's primary key, the step of a key rotation between "every node holds the new key as
//! primary and the old one" and "the old key is removed" (docs/security.md).
//!
//! The new envelopes are made here, outside the state machine (they need randomness), and
//! written as one Apply whose writes carry each resource's revision (compare-and-set), so a
//! resource changed meanwhile is not overwritten with an older spec; on such a conflict the
//! plan is made again once.

use konnect_proto::admin::v1 as api;
use konnect_proto::admin::v1::secrets_server::Secrets;
use konnect_proto::json::struct_to_json;
use konnect_proto::state::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Permission};
use super::resources::set_path;
use super::{count_request, AdminError};
use crate::node::NodeHandle;
use crate::resources;
use crate::secrets;

pub struct SecretsService {
    pub node: NodeHandle,
    pub auth: Authenticator,
}

/// The writes a rekey needs and how many fields they re-encrypt.
struct RekeyPlan {
    writes: Vec<pb::ResourceWrite>,
    fields: u32,
}

impl SecretsService {
    /// Reads every resource with secret fields and re-encrypts those not under the primary
    /// key. Fails, naming the resource and key id, when one cannot be decrypted here.
    fn plan(&self) -> Result<RekeyPlan, AdminError> {
        let keyring = &self.node.keyring;
        let kinds: Vec<&str> = resources::KINDS
            .iter()
            .map(|k| k.name)
            .filter(|k| !resources::secret_fields(k).is_empty())
            .collect();
        let (_, stored) = self.node.reader.resources_of_kinds(&kinds)?;
        let mut plan = RekeyPlan {
            writes: Vec::new(),
            fields: 0,
        };
        for r in stored.into_iter().flatten() {
            let Some(mut spec) = r.spec.clone() else {
                continue;
            };
            let json = struct_to_json(&spec);
            let mut changed = 0;
            for field in resources::secret_fields(&r.kind) {
                let Some(value) = secrets::field_str(&json, field) else {
                    continue;
                };
                if secrets::envelope_key_id(value) == Some(keyring.primary_id()) {
                    continue;
                }
                let aad = secrets::aad(&r.kind, &r.name, field);
                let plaintext = if secrets::is_envelope(value) {
                    keyring.decrypt(value, &aad).map_err(|e| {
                        AdminError::FailedPrecondition(format!(
                            "{} {:?} spec.{field}: {e}; every node needs the old and the new key until the rekey is done",
                            r.kind, r.name
                        ))
                    })?
                } else {
                    // Stored before encryption at rest: encrypt it now.
                    value.to_string()
                };
                let envelope = keyring
                    .encrypt(&plaintext, &aad)
                    .map_err(|e| AdminError::Internal(e.to_string()))?;
                set_path(&mut spec, field, &envelope);
                changed += 1;
            }
            if changed > 0 {
                plan.fields += changed;
                plan.writes.push(pb::ResourceWrite {
                    kind: r.kind,
                    name: r.name,
                    labels: r.labels,
                    spec: Some(spec),
                    expected_revision: Some(r.revision),
                });
            }
        }
        Ok(plan)
    }

    async fn write(&self, actor: &pb::AdminToken, plan: RekeyPlan) -> Result<u64, AdminError> {
        // No request id: a retry after a conflict is a new write with a new plan.
        let op = pb::command::Op::Apply(pb::ApplyResources {
            writes: plan.writes,
            prune_kinds: vec![],
        });
        match super::propose(&self.node, String::new(), actor, op).await? {
            pb::command_result::Result::Apply(a) => Ok(a.revision),
            _ => Err(AdminError::Internal("unexpected command result".into())),
        }
    }
}

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn rekey(
        &self,
        req: Request<api::RekeyRequest>,
    ) -> Result<Response<api::RekeyResponse>, Status> {
        count_request("Rekey");
        let token = self.auth.authorize(&req, Permission::WriteSecrets).await?;
        let primary_key_id = self.node.keyring.primary_id().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Plan on the latest state, so what was written just before is rekeyed too.
            self.node
                .proposer
                .linearizable_barrier()
                .await
                .map_err(AdminError::from)?;
            let plan = self.plan()?;
            let fields = plan.fields;
            if plan.writes.is_empty() {
                return Ok(Response::new(api::RekeyResponse {
                    rewritten_fields: 0,
                    primary_key_id,
                    revision: 0,
                }));
            }
            match self.write(&token, plan).await {
                Ok(revision) => {
                    tracing::info!(
                        fields,
                        revision,
                        primary = %primary_key_id,
                        "secret fields re-encrypted"
                    );
                    return Ok(Response::new(api::RekeyResponse {
                        rewritten_fields: fields,
                        primary_key_id,
                        revision,
                    }));
                }
                Err(AdminError::Conflict(_)) if attempt == 1 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

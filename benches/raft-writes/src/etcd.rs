//! etcd's side: one write is one `KV.Put` of the same Service, as JSON (about 100 bytes), to a
//! new key, over etcd's v3 gRPC API; proto/etcdserverpb/rpc.proto holds the subset we speak.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::konnect::{resource_name, service_spec};
use crate::load::Seq;
use crate::Roles;

mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The key of write `seq` in run `run_id`.
fn key(run_id: &str, seq: Seq) -> String {
    match seq {
        Seq::WarmUp(connection) => format!("/bench/{run_id}/warm/{connection}"),
        Seq::Timed { client, seq } => format!("/bench/{run_id}/{client}/{seq}"),
    }
}

/// One client connection (a tonic `Channel` is one HTTP/2 connection).
#[derive(Clone)]
pub struct Writer {
    kv: KvClient<Channel>,
    run_id: String,
}

// === impl Writer ===

impl Writer {
    pub async fn connect(endpoint: &str, run_id: &str) -> Result<Writer> {
        Ok(Writer {
            kv: KvClient::new(connect(endpoint).await?),
            run_id: run_id.to_string(),
        })
    }

    fn request(&self, seq: Seq) -> pb::PutRequest {
        let value = serde_json::json!({
            "kind": "Service",
            "name": resource_name(&self.run_id, seq),
            "spec": service_spec(),
        });
        pb::PutRequest {
            key: key(&self.run_id, seq).into_bytes(),
            value: value.to_string().into_bytes(),
        }
    }

    pub async fn write(&mut self, seq: Seq) -> Result<(), String> {
        self.kv
            .put(self.request(seq))
            .await
            .map(|_| ())
            .map_err(|s| format!("etcd Put failed: {:?}: {}", s.code(), s.message()))
    }

    pub fn request_bytes(&self) -> usize {
        self.request(Seq::Timed { client: 0, seq: 0 }).encoded_len()
    }
}

async fn connect(endpoint: &str) -> Result<Channel> {
    Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("invalid etcd endpoint {endpoint:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot connect to etcd at {endpoint}"))
}

/// Waits until every member names the same leader (by member id) and returns its URL.
pub async fn find_leader(endpoints: &[String], wait: Duration) -> Result<Roles> {
    let deadline = Instant::now() + wait;
    loop {
        let last = match leader_once(endpoints).await {
            Ok(Some(roles)) => return Ok(roles),
            Ok(None) => "the members do not agree on a leader yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("etcd has no settled leader after {wait:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn leader_once(endpoints: &[String]) -> Result<Option<Roles>> {
    let mut leader_id = None;
    let mut members = Vec::new();
    for endpoint in endpoints {
        let status = MaintenanceClient::new(connect(endpoint).await?)
            .status(pb::StatusRequest {})
            .await
            .with_context(|| format!("Maintenance.Status at {endpoint}"))?
            .into_inner();
        if status.leader == 0 || leader_id.is_some_and(|l| l != status.leader) {
            return Ok(None);
        }
        leader_id = Some(status.leader);
        let member_id = status.header.map(|h| h.member_id).unwrap_or_default();
        members.push((member_id, endpoint.clone()));
    }
    let leader = members.iter().find(|(id, _)| Some(*id) == leader_id);
    let follower = members.iter().find(|(id, _)| Some(*id) != leader_id);
    Ok(match (leader, follower) {
        (Some((_, leader)), Some((_, follower))) => Some(Roles {
            leader: leader.clone(),
            follower: follower.clone(),
        }),
        _ => None,
    })
}

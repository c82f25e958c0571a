//! konnect's side: one write is one `Resources.Apply` of one small Service with a new name,
//! sent through `konnect-client` exactly as `konnectctl apply` would send it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use konnect_client::admin::ApplyRequest;
use konnect_client::{Client, ResourceInput};
use prost::Message;

use crate::load::Seq;
use crate::Roles;

/// The spec every benchmark Service carries; the etcd side stores the same resource as JSON.
pub fn service_spec() -> serde_json::Value {
    serde_json::json!({"targets": [{"url": "http://127.0.0.1:9001", "weight": 100}]})
}

/// The resource name of write `seq` in run `run_id`.
pub fn resource_name(run_id: &str, seq: Seq) -> String {
    match seq {
        Seq::WarmUp(connection) => format!("bench-{run_id}-warm-{connection}"),
        Seq::Timed { client, seq } => format!("bench-{run_id}-{client}-{seq}"),
    }
}

/// One admin connection (a `Client` with a single endpoint keeps one HTTP/2 connection).
#[derive(Clone)]
pub struct Writer {
    client: Arc<Client>,
    spec: prost_types::Struct,
    run_id: Arc<str>,
}

// === impl Writer ===

impl Writer {
    pub async fn connect(endpoint: &str, token: Option<String>, run_id: &str) -> Result<Writer> {
        if token.is_none() {
            bail!("konnect needs the admin token: pass --token or set KONNECT_TOKEN");
        }
        let client = Client::connect(vec![endpoint.to_string()], token)
            .await
            .with_context(|| format!("cannot connect to konnect at {endpoint}"))?;
        let spec = konnect_proto::json::json_to_struct(&service_spec())
            .expect("the benchmark spec is a JSON object");
        Ok(Writer {
            client: Arc::new(client),
            spec,
            run_id: run_id.into(),
        })
    }

    fn input(&self, seq: Seq) -> ResourceInput {
        ResourceInput {
            kind: "Service".into(),
            name: resource_name(&self.run_id, seq),
            labels: Default::default(),
            spec: Some(self.spec.clone()),
        }
    }

    pub async fn write(&mut self, seq: Seq) -> Result<(), String> {
        self.client
            .apply(vec![self.input(seq)], vec![])
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn request_bytes(&self) -> usize {
        ApplyRequest {
            resources: vec![self.input(Seq::Timed { client: 0, seq: 0 })],
            prune_kinds: vec![],
        }
        .encoded_len()
    }
}

/// Forms the cluster through one node; returns the first admin token.
pub async fn init(endpoint: &str) -> Result<String> {
    let client = Client::new(vec![endpoint.to_string()], None)?;
    let response = client
        .init()
        .await
        .with_context(|| format!("Cluster.Init at {endpoint} failed"))?;
    Ok(response.admin_token)
}

/// Waits until every node names the same leader, which leads a cluster of all `endpoints`.
pub async fn find_leader(
    endpoints: &[String],
    token: Option<String>,
    wait: Duration,
) -> Result<Roles> {
    let deadline = Instant::now() + wait;
    loop {
        let last = match leader_once(endpoints, token.clone()).await {
            Ok(Some(roles)) => return Ok(roles),
            Ok(None) => "the nodes do not agree on a leader yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("konnect has no settled leader after {wait:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn leader_once(endpoints: &[String], token: Option<String>) -> Result<Option<Roles>> {
    let mut leader_id = None;
    let mut leader_status = None;
    for endpoint in endpoints {
        let status = Client::new(vec![endpoint.clone()], token.clone())?
            .status()
            .await?;
        let Some(id) = status.leader_id else {
            return Ok(None);
        };
        if leader_id.is_some_and(|l| l != id) {
            return Ok(None);
        }
        leader_id = Some(id);
        if status.node_id == id {
            leader_status = Some(status);
        }
    }
    let Some(status) = leader_status else {
        return Ok(None);
    };
    if status.members.len() != endpoints.len() {
        return Ok(None);
    }
    let admin_url = |id: u64| {
        status
            .members
            .iter()
            .find(|m| m.node_id == id)
            .and_then(|m| m.info.as_ref())
            .map(|info| format!("http://{}", info.admin_addr))
    };
    let leader = admin_url(status.node_id).context("the leader is not among its members")?;
    let follower = status
        .members
        .iter()
        .find(|m| m.node_id != status.node_id)
        .and_then(|m| admin_url(m.node_id))
        .context("the cluster has no follower")?;
    Ok(Some(Roles { leader, follower }))
}

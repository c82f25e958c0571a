//! The Raft stage: K shippers send `ShipUsage` commands to the cluster's leader as fast as it
//! applies them, each acting as a node of its own (node id `node_base + k`, one incarnation per
//! run) with consecutive sequence numbers, exactly as a follower's usage shipper does: through
//! the peer port's `Forward` RPC (`Peer.Forward`, with the `x-konnect-cluster` header), which
//! the leader proposes through its batcher and answers once the entry is applied.
//!
//! A shipment that fails (error or time-out) is sent again with the same sequence numbers (to
//! wherever the leader is then, if the old one says it no longer leads); the state machine
//! skips what it already counted, so the records counted are exactly those the
//! acknowledgements say (`counted_through`). After the deadline each shipper finishes the
//! shipment it has in hand, so nothing is in flight when the run ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use konnect_client::Client;
use konnect_proto::peer::v1 as peer;
use konnect_proto::peer::v1::peer_client::PeerClient;
use konnect_proto::state::v1 as pb;
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::common::{per, process_cpu, record, unix_ms, Latencies};

/// The metadata every peer call carries once the cluster exists.
const CLUSTER_HEADER: &str = konnect::raft::network::CLUSTER_HEADER;

pub struct ShipArgs {
    /// Admin endpoint of any node (to find the leader and its peer address).
    pub endpoint: String,
    pub token: Option<String>,
    pub shippers: usize,
    pub batch: usize,
    pub duration: Duration,
    pub timeout: Duration,
    /// First fake node id; shipper k is `node_base + k`.
    pub node_base: u64,
    /// The incarnation of every shipper in this run.
    pub incarnation: u64,
    pub consumers: u64,
}

/// The leader's peer port, with the cluster id its calls must carry.
#[derive(Clone)]
struct Leader {
    client: PeerClient<Channel>,
    peer_addr: Arc<str>,
    cluster_id: Arc<str>,
    timeout: Duration,
}

impl Leader {
    async fn find(endpoint: &str, token: Option<String>, timeout: Duration) -> Result<Leader> {
        let status = Client::new(vec![endpoint.to_string()], token)?
            .status()
            .await
            .with_context(|| format!("Status at {endpoint} failed"))?;
        let leader_id = status.leader_id.context("the cluster has no leader")?;
        let peer_addr = status
            .members
            .iter()
            .find(|m| m.node_id == leader_id)
            .and_then(|m| m.info.as_ref())
            .map(|info| info.peer_addr.clone())
            .context("the leader is not among the members")?;
        let channel = Endpoint::from_shared(format!("http://{peer_addr}"))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to the leader's peer port {peer_addr}"))?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let id = client
            .identify(peer::IdentifyRequest {})
            .await
            .context("Peer.Identify at the leader failed")?
            .into_inner();
        if id.cluster_id.is_empty() {
            bail!("the leader ({peer_addr}) belongs to no cluster yet");
        }
        eprintln!(
            "usage-ledger ship: leader node {} at peer port {peer_addr}, cluster {}",
            id.node_id, id.cluster_id
        );
        Ok(Leader {
            client,
            peer_addr: peer_addr.into(),
            cluster_id: id.cluster_id.into(),
            timeout,
        })
    }

    /// One `ShipUsage` through `Peer.Forward`; the state machine's answer.
    async fn ship(&mut self, command: pb::ShipUsage) -> Result<pb::ShipUsageResult, String> {
        let mut req = tonic::Request::new(peer::ForwardRequest {
            command: Some(pb::Command {
                actor: "system".into(),
                op: Some(pb::command::Op::ShipUsage(command)),
                ..Default::default()
            }),
        });
        req.set_timeout(self.timeout);
        let id = self.cluster_id.parse().map_err(|_| "bad cluster id")?;
        req.metadata_mut().insert(CLUSTER_HEADER, id);
        let answer = self
            .client
            .forward(req)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        match answer.result.and_then(|r| r.result) {
            Some(pb::command_result::Result::ShipUsage(r)) => Ok(r),
            other => Err(format!("the shipment was refused: {other:?}")),
        }
    }
}

/// The records `first_seq ..= first_seq + n - 1` of one fake node.
fn shipment(
    node_id: u64,
    incarnation: u64,
    first_seq: u64,
    n: usize,
    consumers: u64,
) -> pb::ShipUsage {
    let now = unix_ms();
    pb::ShipUsage {
        node_id,
        incarnation,
        first_seq,
        records: (0..n as u64)
            .map(|i| record(node_id, first_seq + i, consumers, now))
            .collect(),
    }
}

/// What one shipper (or, merged, all of them) saw.
#[derive(Default)]
struct Shipper {
    /// Records the state machine has counted for this shipper's node (its mark).
    counted: u64,
    /// Of those, counted during the timed part (the warm-up's are not).
    counted_timed: u64,
    duplicates: u64,
    shipments: u64,
    errors: u64,
    first_error: Option<String>,
    /// The last shipment failed and the deadline for retrying it passed: its records may or
    /// may not be counted.
    unsettled: u64,
    /// Times a shipper found the leader elsewhere after a refusal, as a follower's shipper
    /// would (its next forward goes to the new leader).
    leader_moves: u64,
    latencies: Latencies,
    finished: Option<Instant>,
}

impl Shipper {
    fn merge(&mut self, one: Shipper) {
        self.counted += one.counted;
        self.counted_timed += one.counted_timed;
        self.duplicates += one.duplicates;
        self.shipments += one.shipments;
        self.errors += one.errors;
        self.unsettled += one.unsettled;
        self.leader_moves += one.leader_moves;
        if self.first_error.is_none() {
            self.first_error = one.first_error;
        }
        self.latencies.extend(one.latencies);
        self.finished = self.finished.max(one.finished);
    }
}

/// Runs the stage; returns the output line.
pub async fn run(args: ShipArgs) -> Result<String> {
    if args.shippers == 0 || args.batch == 0 {
        bail!("--shippers and --batch must be at least 1");
    }
    let leader = Leader::find(&args.endpoint, args.token.clone(), args.timeout).await?;
    let sample = shipment(
        args.node_base,
        args.incarnation,
        1,
        args.batch,
        args.consumers,
    );
    let entry_bytes = sample.encoded_len();
    let record_bytes = sample.records[0].encoded_len();
    let (incarnation, batch, consumers) = (args.incarnation, args.batch, args.consumers);

    // Warm-up, before the clock: each shipper's first shipment (its first rows, the
    // connection's windows). Its records are counted in the ledger, not in the rate.
    let warm_ups = (0..args.shippers).map(|k| {
        let mut leader = leader.clone();
        let node_id = args.node_base + k as u64;
        async move {
            leader
                .ship(shipment(node_id, incarnation, 1, batch, consumers))
                .await
                .map_err(|e| anyhow::anyhow!("the warm-up shipment of node {node_id} failed: {e}"))
        }
    });
    let warm: Vec<pb::ShipUsageResult> = futures::future::try_join_all(warm_ups).await?;

    let cpu = process_cpu();
    let start = Instant::now();
    let deadline = start + args.duration;
    // Past this, a shipper stops retrying a failed last shipment (and says so).
    let hard_deadline = deadline + Duration::from_secs(60);
    let tasks: Vec<_> = warm
        .into_iter()
        .enumerate()
        .map(|(k, first)| {
            let mut leader = leader.clone();
            let node_id = args.node_base + k as u64;
            let (endpoint, token, timeout) =
                (args.endpoint.clone(), args.token.clone(), args.timeout);
            tokio::spawn(async move {
                let mut mine = Shipper {
                    counted: first.counted_through,
                    ..Default::default()
                };
                let mut failed_last = false;
                let mut looked_for_leader = Instant::now();
                loop {
                    let now = Instant::now();
                    if now >= hard_deadline {
                        mine.unsettled += u64::from(failed_last);
                        break;
                    }
                    // After the deadline, only a failed shipment is sent again.
                    if now >= deadline && !failed_last {
                        break;
                    }
                    let sent = Instant::now();
                    let result = leader
                        .ship(shipment(
                            node_id,
                            incarnation,
                            mine.counted + 1,
                            batch,
                            consumers,
                        ))
                        .await;
                    match result {
                        Ok(r) => {
                            mine.shipments += 1;
                            mine.duplicates += r.duplicates;
                            mine.counted_timed += r.counted;
                            mine.counted = r.counted_through;
                            mine.latencies.push(sent.elapsed());
                            failed_last = false;
                        }
                        Err(e) => {
                            // Sent again with the same sequence numbers: if it was applied
                            // after all, the state machine skips them and moves the mark on.
                            mine.errors += 1;
                            let unavailable = e.starts_with("Unavailable");
                            mine.first_error.get_or_insert(e);
                            failed_last = true;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            // No longer the leader (or gone): ask where the leader is now, at
                            // most once a second.
                            if unavailable && looked_for_leader.elapsed() >= Duration::from_secs(1)
                            {
                                looked_for_leader = Instant::now();
                                if let Ok(found) =
                                    Leader::find(&endpoint, token.clone(), timeout).await
                                {
                                    if found.peer_addr != leader.peer_addr {
                                        mine.leader_moves += 1;
                                    }
                                    leader = found;
                                }
                            }
                        }
                    }
                }
                mine.finished = Some(Instant::now());
                mine
            })
        })
        .collect();
    let mut all = Shipper::default();
    for task in tasks {
        all.merge(task.await.context("a shipper task panicked")?);
    }
    let cpu = process_cpu().saturating_sub(cpu);
    if let Some(e) = &all.first_error {
        eprintln!("usage-ledger ship: first failed shipment: {e}");
    }
    let secs = (all.finished.unwrap_or(start) - start).as_secs_f64();
    let timed = all.counted_timed as f64;
    Ok(format!(
        "stage=ship shippers={} batch={batch} record_bytes={record_bytes} entry_bytes={entry_bytes} \
         elapsed_s={secs:.3} shipments={} records_timed={} records_per_sec={:.1} \
         records_counted={} duplicates={} {} errors={} unsettled={} leader_moves={} client_cpu_us_per_record={}",
        args.shippers,
        all.shipments,
        all.counted_timed,
        timed / secs,
        all.counted,
        all.duplicates,
        all.latencies.fields(),
        all.errors,
        all.unsettled,
        all.leader_moves,
        per(cpu.as_secs_f64() * 1e6, timed),
    ))
}

//! An in-process mock of a konnect node's admin API (Cluster and Resources services) on a
//! real local socket, for testing the client and `konnectctl` without a cluster.

// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use konnect_client::admin::cluster_server::{Cluster, ClusterServer};
use konnect_client::admin::resources_server::{Resources, ResourcesServer};
use konnect_client::admin::{
    AddNodeRequest, ApplyRequest, ApplyResponse, CreateRequest, DeleteRequest, DeleteResponse,
    GetRequest, InitRequest, InitResponse, ListRequest, ListResponse, Member, MembershipResponse,
    RemoveNodeRequest, StatusRequest, StatusResponse, UpdateRequest, WatchEvent, WatchRequest,
};
use konnect_client::state::{ChangeAction, EventType, NodeInfo, Resource, ResourceChange};
use konnect_client::{json_to_struct, WRITE_INDEX_METADATA_KEY};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The token `Cluster.Init` hands out.
pub const ADMIN_TOKEN: &str = "kt_mock_admin_token_0123456789";
/// Names `List` returns, two per page.
pub const LISTED_NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const PAGE_SIZE: usize = 2;
/// The revision the first `List` page reports; later pages report later revisions.
pub const LIST_REVISION: u64 = 100;
/// Apply rejects any resource with this name, naming its position in `x-konnect-write-index`.
pub const REJECTED_NAME: &str = "billing";

/// How a mock node answers every call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Behaviour {
    Serve,
    /// Answers `Unavailable`, as a node without a leader would.
    Unavailable,
    /// Rejects every call with `InvalidArgument` and write index 1.
    Reject,
}

#[derive(Clone)]
pub struct MockNode {
    pub node_id: u64,
    behaviour: Behaviour,
    calls: Arc<AtomicU32>,
    authorization_seen: Arc<Mutex<Vec<Option<String>>>>,
    applied: Arc<Mutex<Vec<ApplyRequest>>>,
}

impl MockNode {
    pub fn new(node_id: u64, behaviour: Behaviour) -> MockNode {
        MockNode {
            node_id,
            behaviour,
            calls: Arc::new(AtomicU32::new(0)),
            authorization_seen: Arc::new(Mutex::new(Vec::new())),
            applied: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The `authorization` header of every call, in order.
    pub fn authorization_seen(&self) -> Vec<Option<String>> {
        self.authorization_seen.lock().expect("test lock").clone()
    }

    /// Every Apply request received.
    pub fn applied(&self) -> Vec<ApplyRequest> {
        self.applied.lock().expect("test lock").clone()
    }

    /// Records the call, then fails it unless the node serves.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        self.authorization_seen
            .lock()
            .expect("test lock")
            .push(authorization);
        match self.behaviour {
            Behaviour::Serve => Ok(()),
            Behaviour::Unavailable => Err(Status::unavailable("no leader elected yet")),
            Behaviour::Reject => Err(rejected_write(1)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![Member {
            node_id: self.node_id,
            info: Some(NodeInfo {
                peer_addr: "127.0.0.1:7301".into(),
                admin_addr: "127.0.0.1:7201".into(),
                zone: "zone-a".into(),
                ..NodeInfo::default()
            }),
            role: "voter".into(),
            matched_index: Some(12),
            lag: Some(0),
        }]
    }
}

fn rejected_write(index: usize) -> Status {
    let mut status = Status::invalid_argument("spec.service: unknown service \"bill\"");
    status.metadata_mut().insert(
        WRITE_INDEX_METADATA_KEY,
        index.to_string().parse().expect("ascii digits"),
    );
    status
}

pub fn resource(kind: &str, name: &str, revision: u64) -> Resource {
    Resource {
        kind: kind.into(),
        name: name.into(),
        labels: [("team".to_string(), "edge".to_string())]
            .into_iter()
            .collect(),
        spec: Some(
            json_to_struct(&serde_json::json!({"port": 8080, "paths": ["/a"]}))
                .expect("object spec"),
        ),
        revision,
        create_revision: 1,
        updated_unix_ms: 1_700_000_000_000,
    }
}

#[tonic::async_trait]
impl Cluster for MockNode {
    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        self.admit(&request)?;
        Ok(Response::new(InitResponse {
            cluster_id: "cluster-1".into(),
            admin_token: ADMIN_TOKEN.into(),
            members: self.members(),
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.admit(&request)?;
        Ok(Response::new(StatusResponse {
            cluster_id: "cluster-1".into(),
            node_id: self.node_id,
            role: "Leader".into(),
            leader_id: Some(self.node_id),
            term: 2,
            last_log_index: Some(12),
            applied_index: Some(12),
            members: self.members(),
            ..StatusResponse::default()
        }))
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.admit(&request)?;
        Ok(Response::new(MembershipResponse {
            members: self.members(),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.admit(&request)?;
        Ok(Response::new(MembershipResponse {
            members: self.members(),
        }))
    }
}

#[tonic::async_trait]
impl Resources for MockNode {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        self.applied
            .lock()
            .expect("test lock")
            .push(request.clone());
        if let Some(index) = request
            .resources
            .iter()
            .position(|resource| resource.name == REJECTED_NAME)
        {
            return Err(rejected_write(index));
        }
        let mut changes: Vec<ResourceChange> = request
            .resources
            .iter()
            .map(|resource| ResourceChange {
                kind: resource.kind.clone(),
                name: resource.name.clone(),
                action: ChangeAction::Created as i32,
                revision: 42,
            })
            .collect();
        for kind in &request.prune_kinds {
            changes.push(ResourceChange {
                kind: kind.clone(),
                name: "old".into(),
                action: ChangeAction::Deleted as i32,
                revision: 42,
            });
        }
        Ok(Response::new(ApplyResponse {
            changes,
            revision: 42,
        }))
    }

    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<Resource>, Status> {
        self.admit(&request)?;
        Ok(Response::new(resource("Service", "created", 1)))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<Resource>, Status> {
        self.admit(&request)?;
        Ok(Response::new(resource("Service", "updated", 2)))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.admit(&request)?;
        Ok(Response::new(DeleteResponse { revision: 43 }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Resource>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        if request.name == "missing" {
            return Err(Status::not_found(format!(
                "{} \"missing\" does not exist",
                request.kind
            )));
        }
        Ok(Response::new(resource(&request.kind, &request.name, 4)))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let start: usize = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| Status::invalid_argument("bad page token"))?
        };
        let page_size = match request.page_size {
            0 => PAGE_SIZE,
            size => size as usize,
        };
        let end = (start + page_size).min(LISTED_NAMES.len());
        let items = LISTED_NAMES[start..end]
            .iter()
            .map(|name| resource(&request.kind, name, 1))
            .collect();
        Ok(Response::new(ListResponse {
            items,
            next_page_token: if end < LISTED_NAMES.len() {
                end.to_string()
            } else {
                String::new()
            },
            revision: LIST_REVISION + start as u64,
        }))
    }

    type WatchStream = tokio_stream::Iter<std::vec::IntoIter<Result<WatchEvent, Status>>>;

    /// Two events after `from_revision`, then a `FailedPrecondition` ("compacted") error.
    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.admit(&request)?;
        let from = request.into_inner().from_revision;
        let events = vec![
            Ok(WatchEvent {
                r#type: EventType::Put as i32,
                resource: Some(resource("Route", "a", from + 1)),
                revision: from + 1,
            }),
            Ok(WatchEvent {
                r#type: EventType::Delete as i32,
                resource: Some(resource("Route", "b", from + 2)),
                revision: from + 2,
            }),
            Err(Status::failed_precondition("history compacted")),
        ];
        Ok(Response::new(tokio_stream::iter(events)))
    }
}

/// Serves `node` on a fresh local port; returns its endpoint (`http://127.0.0.1:PORT`).
pub async fn serve(node: MockNode) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let address = listener.local_addr().expect("bound address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClusterServer::new(node.clone()))
            .add_service(ResourcesServer::new(node))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{address}")
}

/// An endpoint nothing listens on: the port was bound, then released.
pub async fn dead_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let address = listener.local_addr().expect("bound address");
    drop(listener);
    format!("http://{address}")
}

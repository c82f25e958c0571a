//! `Client`: typed calls to a konnect cluster's admin API that fail over between endpoints and
//! carry the admin token.
//!
//! Each call starts at the endpoint that answered last. A transport failure (cannot connect,
//! connection reset) or an `Unavailable` answer moves the call to the next endpoint; any other
//! answer, including an application error, is final. Writes retried on another endpoint after
//! `Unavailable` are safe for `Apply`, `Update` with a revision, and `Delete` with a revision;
//! a retried `Create` may report `AlreadyExists` for a resource the first attempt created.
//!
//! `https://` endpoints speak TLS, verifying the node's certificate against `TrustRoots` (the
//! system's CAs, or the cluster CA of `--ca`). When every endpoint fails in the handshake the
//! error says so (`ClientError::Tls`) instead of calling the nodes unreachable.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use konnect_proto::admin::v1::audit_client::AuditClient;
use konnect_proto::admin::v1::cluster_client::ClusterClient;
use konnect_proto::admin::v1::keys_client::KeysClient;
use konnect_proto::admin::v1::resources_client::ResourcesClient;
use konnect_proto::admin::v1::secrets_client::SecretsClient;
use konnect_proto::admin::v1::tokens_client::TokensClient;
use konnect_proto::admin::v1::{
    AddNodeRequest, ApplyRequest, ApplyResponse, CreateRequest, DeleteRequest, DeleteResponse,
    GetRequest, InitRequest, InitResponse, ListRequest, ListResponse, MembershipResponse,
    RekeyRequest, RekeyResponse, RemoveNodeRequest, ResourceInput, StatusRequest, StatusResponse,
    UpdateRequest, WatchEvent, WatchRequest,
};
use konnect_proto::admin::v1::{
    CreateKeyRequest, CreateKeyResponse, CreateTokenRequest, CreateTokenResponse, ListAuditRequest,
    ListAuditResponse, ListKeysRequest, ListKeysResponse, ListTokensRequest, ListTokensResponse,
    RevokeKeyRequest, RevokeKeyResponse, RevokeTokenRequest, RevokeTokenResponse, RotateKeyRequest,
};
use konnect_proto::state::v1::Resource;
use rustls::client::danger::ServerCertVerifier;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use crate::error::{error_chain, status_message, EndpointFailure};
use crate::tls::{tls_failure, TrustRoots};
use crate::ClientError;

/// How long to wait for a TCP/HTTP2 connection to one endpoint before trying the next.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on idle connections, so a vanished node is noticed (important for watches).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A stream of watch events; ends with an error item if the stream breaks.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, ClientError>>;

/// Every resource matched by a `list`, and the revision the list was read at (watch from it
/// to follow changes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResourceList {
    pub items: Vec<Resource>,
    /// The revision of the first page; later pages may be read at a later revision, so
    /// watching from this one can replay a change but never misses one.
    pub revision: u64,
}

/// A connection to a konnect cluster's admin API.
pub struct Client {
    endpoints: Vec<Endpoint>,
    /// One cached channel per endpoint, created on first use. tonic channels reconnect by
    /// themselves, so a cached channel stays usable after its node restarts.
    channels: Mutex<Vec<Option<Channel>>>,
    /// Index of the endpoint that answered last; calls start there.
    current: AtomicUsize,
    auth: BearerToken,
    /// The CAs `https://` endpoints are verified against.
    trust: TrustRoots,
}

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Clone)]
struct BearerToken(Option<MetadataValue<Ascii>>);

type AuthorizedChannel = InterceptedService<Channel, BearerToken>;

// === impl Client ===

impl Client {
    /// Validates the endpoints and the token, then connects to the first endpoint that
    /// answers (trying each in order). Fails when no endpoint can be reached.
    pub async fn connect(
        endpoints: Vec<String>,
        token: Option<String>,
    ) -> Result<Client, ClientError> {
        Client::connect_with_trust(endpoints, token, TrustRoots::System).await
    }

    /// Like `connect`, verifying `https://` endpoints against `trust`.
    pub async fn connect_with_trust(
        endpoints: Vec<String>,
        token: Option<String>,
        trust: TrustRoots,
    ) -> Result<Client, ClientError> {
        let client = Client::with_trust(endpoints, token, trust)?;
        client.connect_any().await?;
        Ok(client)
    }

    /// Like `connect` but does not touch the network until the first call. An empty token
    /// counts as none. `https://` endpoints are verified against the system's CAs.
    pub fn new(endpoints: Vec<String>, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_trust(endpoints, token, TrustRoots::System)
    }

    /// Like `new`, verifying `https://` endpoints against `trust` (`--ca`).
    pub fn with_trust(
        endpoints: Vec<String>,
        token: Option<String>,
        trust: TrustRoots,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        // Built once, for the first https:// endpoint (reading the system's CAs takes a while).
        let mut verifier = None;
        let endpoints = endpoints
            .into_iter()
            .map(|address| configure_endpoint(&address, &trust, &mut verifier))
            .collect::<Result<Vec<_>, _>>()?;
        let auth = match token.filter(|token| !token.trim().is_empty()) {
            None => BearerToken(None),
            Some(token) => {
                let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| ClientError::InvalidToken)?;
                value.set_sensitive(true);
                BearerToken(Some(value))
            }
        };
        Ok(Client {
            channels: Mutex::new(vec![None; endpoints.len()]),
            endpoints,
            current: AtomicUsize::new(0),
            auth,
            trust,
        })
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(endpoint_name).collect()
    }

    /// The endpoint the next call starts at (the one that answered last).
    pub fn current_endpoint(&self) -> String {
        endpoint_name(&self.endpoints[self.current_index()])
    }

    // --- Cluster service ---

    /// Forms the cluster; the response carries the first admin token, shown only once.
    pub async fn init(&self) -> Result<InitResponse, ClientError> {
        self.call(|channel| async move { self.cluster(channel).init(InitRequest {}).await })
            .await
    }

    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call(|channel| async move { self.cluster(channel).status(StatusRequest {}).await })
            .await
    }

    /// Adds a node (as a learner, promoted to voter once caught up unless `learner_only`).
    pub async fn add_node(
        &self,
        node_id: u64,
        peer_addr: &str,
        learner_only: bool,
    ) -> Result<MembershipResponse, ClientError> {
        let request = AddNodeRequest {
            node_id,
            peer_addr: peer_addr.to_string(),
            learner_only,
        };
        self.call(|channel| {
            let request = request.clone();
            async move { self.cluster(channel).add_node(request).await }
        })
        .await
    }

    pub async fn remove_node(&self, node_id: u64) -> Result<MembershipResponse, ClientError> {
        self.call(|channel| async move {
            self.cluster(channel)
                .remove_node(RemoveNodeRequest { node_id })
                .await
        })
        .await
    }

    // --- Resources service ---

    /// Applies `resources` atomically; with `prune_kinds`, also deletes resources of those
    /// kinds that are not in `resources`. A rejected resource is named by
    /// `ClientError::write_index`.
    pub async fn apply(
        &self,
        resources: Vec<ResourceInput>,
        prune_kinds: Vec<String>,
    ) -> Result<ApplyResponse, ClientError> {
        let request = ApplyRequest {
            resources,
            prune_kinds,
        };
        let id = new_request_id();
        self.call(|channel| {
            let request = with_request_id(request.clone(), &id);
            async move { self.resources(channel).apply(request).await }
        })
        .await
    }

    /// Creates one resource; fails with `AlreadyExists` if it exists.
    pub async fn create(&self, resource: ResourceInput) -> Result<Resource, ClientError> {
        let request = CreateRequest {
            resource: Some(resource),
        };
        let id = new_request_id();
        self.call(|channel| {
            let request = with_request_id(request.clone(), &id);
            async move { self.resources(channel).create(request).await }
        })
        .await
    }

    /// Replaces one resource; with `expected_revision`, only if it is unchanged since.
    pub async fn update(
        &self,
        resource: ResourceInput,
        expected_revision: Option<u64>,
    ) -> Result<Resource, ClientError> {
        let request = UpdateRequest {
            resource: Some(resource),
            expected_revision,
        };
        let id = new_request_id();
        self.call(|channel| {
            let request = with_request_id(request.clone(), &id);
            async move { self.resources(channel).update(request).await }
        })
        .await
    }

    pub async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected_revision: Option<u64>,
    ) -> Result<DeleteResponse, ClientError> {
        let request = DeleteRequest {
            kind: kind.to_string(),
            name: name.to_string(),
            expected_revision,
        };
        let id = new_request_id();
        self.call(|channel| {
            let request = with_request_id(request.clone(), &id);
            async move { self.resources(channel).delete(request).await }
        })
        .await
    }

    /// Reads one resource; `consistent` confirms leadership with a quorum first.
    pub async fn get(
        &self,
        kind: &str,
        name: &str,
        consistent: bool,
    ) -> Result<Resource, ClientError> {
        let request = GetRequest {
            kind: kind.to_string(),
            name: name.to_string(),
            consistent,
        };
        self.call(|channel| {
            let request = request.clone();
            async move { self.resources(channel).get(request).await }
        })
        .await
    }

    /// Lists every matching resource, following page tokens until the last page. An empty
    /// `kind` lists every kind; `label_selector` is `key=value,key!=value`.
    pub async fn list(
        &self,
        kind: &str,
        label_selector: &str,
        consistent: bool,
    ) -> Result<ResourceList, ClientError> {
        let mut list = ResourceList::default();
        let mut page_token = String::new();
        let mut first_page = true;
        loop {
            let page = self
                .list_page(kind, label_selector, 0, &page_token, consistent)
                .await?;
            if first_page {
                list.revision = page.revision;
                first_page = false;
            }
            list.items.extend(page.items);
            if page.next_page_token.is_empty() {
                return Ok(list);
            }
            if page.next_page_token == page_token {
                return Err(ClientError::Status {
                    endpoint: self.current_endpoint(),
                    code: Code::Internal,
                    message: format!(
                        "the server returned page token {:?} twice; stopping to avoid a loop",
                        page.next_page_token
                    ),
                    write_index: None,
                    field: None,
                });
            }
            page_token = page.next_page_token;
        }
    }

    /// One page of a list; `page_size` 0 means the server's default.
    pub async fn list_page(
        &self,
        kind: &str,
        label_selector: &str,
        page_size: u32,
        page_token: &str,
        consistent: bool,
    ) -> Result<ListResponse, ClientError> {
        let request = ListRequest {
            kind: kind.to_string(),
            label_selector: label_selector.to_string(),
            page_size,
            page_token: page_token.to_string(),
            consistent,
        };
        self.call(|channel| {
            let request = request.clone();
            async move { self.resources(channel).list(request).await }
        })
        .await
    }

    /// Streams changes after `from_revision`, then live changes. An empty `kind` watches
    /// every kind. Fails over only while opening the stream; once open, a broken stream ends
    /// with a `ClientError::StreamBroken` item and the caller may watch again from the last
    /// revision it saw.
    pub async fn watch(&self, kind: &str, from_revision: u64) -> Result<WatchStream, ClientError> {
        let request = WatchRequest {
            kind: kind.to_string(),
            from_revision,
        };
        let (stream, endpoint) = self
            .call_on_any(|channel| {
                let request = request.clone();
                async move { self.resources(channel).watch(request).await }
            })
            .await?;
        Ok(stream
            .map(move |item| {
                item.map_err(|status| ClientError::StreamBroken {
                    endpoint: endpoint.clone(),
                    code: status.code(),
                    message: status_message(&status),
                })
            })
            .boxed())
    }

    // --- Keys, Tokens and Audit services ---

    /// Creates an API key for `consumer`; the answer holds the key, shown only this once.
    pub async fn create_key(
        &self,
        consumer: &str,
        expires_in_secs: Option<u64>,
        description: &str,
    ) -> Result<CreateKeyResponse, ClientError> {
        let request = CreateKeyRequest {
            consumer: consumer.to_string(),
            expires_in_secs,
            description: description.to_string(),
        };
        let id = new_request_id();
        self.call(|channel| {
            let request = with_request_id(request.clone(), &id);
            async move { self.keys(channel).create(request).await }
        })
        .await
    }

    pub async fn list_keys(&self, consumer: &str) -> Result<ListKeysResponse, ClientError> {
        let request = ListKeysRequest {
            consumer: consumer.to_string(),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { self.keys(channel).list(request).await }
        })
        .await
    }

    pub async fn revoke_key(&self, id: &str) -> Result<RevokeKeyResponse, ClientError> {
        let request = RevokeKeyRequest { id: id.to_string() };
        let rid = new_request_id();
        self.call(|channel| {
            let request = with_request_id(request.clone(), &rid);
            async move { self.keys(channel).revoke(request).await }
        })
        .await
    }

    /// Issues a new key for the same consumer; the old one keeps working for `overlap_secs`.
    pub async fn rotate_key(
        &self,
        id: &str,
        overlap_secs: u64,
        expires_in_secs: Option<u64>,
    ) -> Result<CreateKeyResponse, ClientError> {
        let request = RotateKeyRequest {
            id: id.to_string(),
            overlap_secs,
            expires_in_secs,
        };
        let rid = new_request_id();
        self.call(|channel| {
            let request = with_request_id(request.clone(), &rid);
            async move { self.keys(channel).rotate(request).await }
        })
        .await
    }

    /// Creates an admin token; the answer holds the token, shown only this once.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
    ) -> Result<CreateTokenResponse, ClientError> {
        let request = CreateTokenRequest {
            name: name.to_string(),
            role: role.to_string(),
        };
        let id = new_request_id();
        self.call(|channel| {
            let request = with_request_id(request.clone(), &id);
            async move { self.tokens(channel).create(request).await }
        })
        .await
    }

    pub async fn list_tokens(&self) -> Result<ListTokensResponse, ClientError> {
        self.call(|channel| async move { self.tokens(channel).list(ListTokensRequest {}).await })
            .await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<RevokeTokenResponse, ClientError> {
        let request = RevokeTokenRequest { id: id.to_string() };
        let rid = new_request_id();
        self.call(|channel| {
            let request = with_request_id(request.clone(), &rid);
            async move { self.tokens(channel).revoke(request).await }
        })
        .await
    }

    pub async fn list_audit(
        &self,
        request: ListAuditRequest,
    ) -> Result<ListAuditResponse, ClientError> {
        self.call(|channel| {
            let request = request.clone();
            async move { self.audit(channel).list(request).await }
        })
        .await
    }

    // --- Limits service ---

    /// What a strict or fast RateLimit has used in its current window: one key, or a page of
    /// the keys with units granted.
    pub async fn limit_usage(
        &self,
        request: konnect_proto::admin::v1::LimitUsageRequest,
    ) -> Result<konnect_proto::admin::v1::LimitUsageResponse, ClientError> {
        self.call(|channel| {
            let request = request.clone();
            async move {
                konnect_proto::admin::v1::limits_client::LimitsClient::with_interceptor(
                    channel,
                    self.auth.clone(),
                )
                .usage(request)
                .await
            }
        })
        .await
    }

    // --- Usage service ---

    /// Spend from the AI cost ledger, grouped and filtered as the request says.
    pub async fn query_spend(
        &self,
        request: konnect_proto::admin::v1::QuerySpendRequest,
    ) -> Result<konnect_proto::admin::v1::QuerySpendResponse, ClientError> {
        self.call(|channel| {
            let request = request.clone();
            async move {
                konnect_proto::admin::v1::usage_client::UsageClient::with_interceptor(
                    channel,
                    self.auth.clone(),
                )
                .query_spend(request)
                .await
            }
        })
        .await
    }

    /// Every Budget's spend, reservations and what is left in its current period.
    pub async fn budgets(
        &self,
        consistent: bool,
    ) -> Result<konnect_proto::admin::v1::BudgetsResponse, ClientError> {
        self.call(|channel| async move {
            konnect_proto::admin::v1::usage_client::UsageClient::with_interceptor(
                channel,
                self.auth.clone(),
            )
            .budgets(konnect_proto::admin::v1::BudgetsRequest { consistent })
            .await
        })
        .await
    }

    // --- Secrets service ---

    /// Re-encrypts every stored secret under the answering node's primary key. Safe to
    /// retry: a second run finds nothing left to rewrite.
    pub async fn rekey(&self) -> Result<RekeyResponse, ClientError> {
        self.call(|channel| async move {
            SecretsClient::with_interceptor(channel, self.auth.clone())
                .rekey(RekeyRequest {})
                .await
        })
        .await
    }

    // --- failover ---

    fn cluster(&self, channel: Channel) -> ClusterClient<AuthorizedChannel> {
        ClusterClient::with_interceptor(channel, self.auth.clone())
    }

    fn resources(&self, channel: Channel) -> ResourcesClient<AuthorizedChannel> {
        ResourcesClient::with_interceptor(channel, self.auth.clone())
    }

    fn keys(&self, channel: Channel) -> KeysClient<AuthorizedChannel> {
        KeysClient::with_interceptor(channel, self.auth.clone())
    }

    fn tokens(&self, channel: Channel) -> TokensClient<AuthorizedChannel> {
        TokensClient::with_interceptor(channel, self.auth.clone())
    }

    fn audit(&self, channel: Channel) -> AuditClient<AuthorizedChannel> {
        AuditClient::with_interceptor(channel, self.auth.clone())
    }

    async fn call<T, F, Fut>(&self, rpc: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_on_any(rpc).await.map(|(response, _)| response)
    }

    /// Runs `rpc` on each endpoint in turn, starting at the current one, until one answers
    /// with anything but a transport failure or `Unavailable`. Returns the answer and the
    /// endpoint that gave it.
    async fn call_on_any<T, F, Fut>(&self, mut rpc: F) -> Result<(T, String), ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = self.current_index();
        let count = self.endpoints.len();
        let mut failures = Failures::default();
        for step in 0..count {
            let index = (start + step) % count;
            let name = endpoint_name(&self.endpoints[index]);
            let channel = match self.channel(index).await {
                Ok(channel) => channel,
                Err(error) => {
                    failures.push(name, None, &error, &self.trust);
                    continue;
                }
            };
            match rpc(channel).await {
                Ok(response) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok((response.into_inner(), name));
                }
                Err(status) if is_endpoint_failure(&status) => {
                    failures.push(name, Some(status.code()), &status, &self.trust);
                }
                Err(status) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Err(ClientError::from_status(name, status));
                }
            }
        }
        Err(failures.into_error())
    }

    /// Connects to the first reachable endpoint, starting at the current one.
    async fn connect_any(&self) -> Result<(), ClientError> {
        let start = self.current_index();
        let count = self.endpoints.len();
        let mut failures = Failures::default();
        for step in 0..count {
            let index = (start + step) % count;
            match self.channel(index).await {
                Ok(_) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(());
                }
                Err(error) => failures.push(
                    endpoint_name(&self.endpoints[index]),
                    None,
                    &error,
                    &self.trust,
                ),
            }
        }
        Err(failures.into_error())
    }

    /// The cached channel to endpoint `index`, connecting (within `CONNECT_TIMEOUT`) if there
    /// is none yet.
    async fn channel(&self, index: usize) -> Result<Channel, tonic::transport::Error> {
        if let Some(channel) = self.lock_channels()[index].clone() {
            return Ok(channel);
        }
        let channel = self.endpoints[index].connect().await?;
        self.lock_channels()[index] = Some(channel.clone());
        Ok(channel)
    }

    fn lock_channels(&self) -> std::sync::MutexGuard<'_, Vec<Option<Channel>>> {
        // The lock is never held across an await or a panic-prone call, so a poisoned lock
        // still holds a consistent vector.
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current_index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.endpoints.len()
    }
}

fn configure_endpoint(
    address: &str,
    trust: &TrustRoots,
    verifier: &mut Option<Arc<dyn ServerCertVerifier>>,
) -> Result<Endpoint, ClientError> {
    let invalid = |error: tonic::transport::Error| ClientError::InvalidEndpoint {
        endpoint: address.to_string(),
        reason: error_chain(&error),
    };
    let mut endpoint = Endpoint::from_shared(address.to_string()).map_err(invalid)?;
    if endpoint.uri().scheme_str() == Some("https") {
        let verifier = match verifier {
            Some(v) => v.clone(),
            None => {
                let built = trust.verifier().map_err(|reason| ClientError::TlsSetup {
                    endpoint: address.to_string(),
                    reason,
                })?;
                verifier.insert(built).clone()
            }
        };
        endpoint = endpoint
            .tls_config_with_verifier(ClientTlsConfig::new().timeout(CONNECT_TIMEOUT), verifier)
            .map_err(invalid)?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

fn endpoint_name(endpoint: &Endpoint) -> String {
    endpoint.uri().to_string().trim_end_matches('/').to_string()
}

/// Why each endpoint failed one call, and whether every failure was a TLS handshake.
#[derive(Default)]
struct Failures {
    all: Vec<EndpointFailure>,
    /// The TLS failures, as (endpoint, reason).
    tls: Vec<(String, String)>,
}

impl Failures {
    fn push(
        &mut self,
        endpoint: String,
        code: Option<Code>,
        error: &(dyn std::error::Error + 'static),
        trust: &TrustRoots,
    ) {
        let reason = match tls_failure(error, trust) {
            Some(reason) => {
                self.tls.push((endpoint.clone(), reason.clone()));
                format!("TLS handshake failed: {reason}")
            }
            None => match error.downcast_ref::<tonic::Status>() {
                Some(status) => status_message(status),
                None => error_chain(error),
            },
        };
        self.all.push(EndpointFailure {
            endpoint,
            code,
            reason,
        });
    }

    fn into_error(self) -> ClientError {
        if !self.tls.is_empty() && self.tls.len() == self.all.len() {
            let (endpoint, reason) = self.tls.into_iter().next().expect("not empty");
            return ClientError::Tls { endpoint, reason };
        }
        ClientError::Unreachable {
            tried: self.all.iter().map(|f| f.endpoint.clone()).collect(),
            failures: self.all,
        }
    }
}

// === impl BearerToken ===

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Whether a failed call says "this endpoint is unusable now" (try the next one) rather than
/// giving the server's answer. Besides `Unavailable`, a status that tonic made locally from a
/// broken connection counts, whatever its code: it carries a source error (a server's answer
/// never does). The node went away mid-call; hyper reports a connection closed under a call as
/// `Cancelled`, other breaks as `Unknown`.
fn is_endpoint_failure(status: &tonic::Status) -> bool {
    status.code() == Code::Unavailable || std::error::Error::source(status).is_some()
}

/// Metadata key carrying a write's id: the same on every attempt of one logical write, so a
/// write retried on another endpoint after its first attempt took effect is applied once.
pub const REQUEST_ID_METADATA_KEY: &str = "x-konnect-request-id";

fn new_request_id() -> String {
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn with_request_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = id.parse() {
        request
            .metadata_mut()
            .insert(REQUEST_ID_METADATA_KEY, value);
    }
    request
}

//! The immutable configuration snapshot the gateway reads, and the task that rebuilds it
//! whenever an applied Raft entry changed a gateway resource (Service, Route, Certificate).
//! Secret fields are stored encrypted; they are decrypted here, into the snapshot only.
//!
//! Architecture invariant: the request path only ever does `snapshot.load_full()`: one atomic
//! pointer read, no lock, no Raft, no disk. A request keeps the `Arc` it loaded, so in-flight
//! requests finish on the snapshot they started with while new ones see the new config.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;
use konnect_proto::json::struct_to_json;
use tokio::sync::watch;

use crate::ai::AiConfig;
use crate::gateway::auth::{
    ConsumerEntry, Credential, Identities, JwtEntry, KeyEntry, RouteAccess,
};
use crate::gateway::cache::ResponseCache;
use crate::gateway::jwt::JwtVerifier;
use crate::gateway::redact::Redactor;
use crate::gateway::route_metrics::RouteMetrics;
use crate::gateway::router::{RouteRule, Router};
use crate::gateway::tls::CertStore;
use crate::gateway::upstream::Upstream;
use crate::raft::state::{History, StateReader};
use crate::resources::api_key::ApiKeySpec;
use crate::resources::budget::BudgetSpec;
use crate::resources::certificate::CertificateSpec;
use crate::resources::concurrency_limit::ConcurrencyLimitSpec;
use crate::resources::consumer::ConsumerSpec;
use crate::resources::jwt_provider::JwtProviderSpec;
use crate::resources::log_redaction::LogRedactionSpec;
use crate::resources::model::ModelSpec;
use crate::resources::model_price::ModelPriceSpec;
use crate::resources::prompt_template::PromptTemplateSpec;
use crate::resources::provider::ProviderSpec;
use crate::resources::rate_limit::{LimitKey, RateLimitSpec};
use crate::resources::route::RouteSpec;
use crate::resources::service::ServiceSpec;
use crate::resources::token_limit::TokenLimitSpec;
use crate::secrets::Keyring;
use konnect_proto::state::v1 as pb;
use rustls::sign::CertifiedKey;

/// Shortest time between two snapshot builds: under a stream of config writes the gateway
/// follows within this delay instead of rebuilding once per write.
const REBUILD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Kinds whose changes require a new snapshot.
const GATEWAY_KINDS: &[&str] = &[
    "Service",
    "Route",
    "Certificate",
    "Consumer",
    "ApiKey",
    "JwtProvider",
    "LogRedaction",
    "RateLimit",
    "ConcurrencyLimit",
    "Provider",
    "Model",
    "PromptTemplate",
    "ModelPrice",
    "Budget",
    "TokenLimit",
];

/// One route as the gateway uses it: rule index `i` of the router is `routes[i]`.
pub struct RouteEntry {
    pub name: String,
    pub spec: RouteSpec,
    /// The Service the route forwards to; `None` for an AI route (`spec.ai`).
    pub upstream: Option<Arc<Upstream>>,
    /// The route's response cache, kept across snapshots while the route is unchanged.
    pub cache: Option<Arc<ResponseCache>>,
    /// Credentials, ACL, IP lists and body checks; `None` for a public route.
    pub access: Option<Arc<RouteAccess>>,
    /// Its request, latency and byte counters, registered on first use.
    pub metrics: Arc<RouteMetrics>,
}

pub struct GatewaySnapshot {
    /// Applied revision the snapshot was built at.
    pub revision: u64,
    pub router: Arc<Router>,
    pub routes: Vec<RouteEntry>,
    /// TLS certificates of the proxy listener, by SNI name.
    pub certificates: CertStore,
    /// Consumers and their credentials.
    pub identities: Arc<Identities>,
    /// What access and call logs must mask.
    pub redactor: Arc<Redactor>,
    /// Every RateLimit, checked in order on each request they apply to.
    pub rate_limits: Arc<Vec<LimitEntry>>,
    /// Every ConcurrencyLimit (per node), checked on each request they apply to.
    pub concurrency_limits: Arc<Vec<ConcurrencyEntry>>,
    /// Providers and Models of the AI routes.
    pub ai: Arc<AiConfig>,
}

/// One ConcurrencyLimit as the gateway uses it.
pub struct ConcurrencyEntry {
    pub name: String,
    pub spec: ConcurrencyLimitSpec,
    pub key: LimitKey,
}

/// One RateLimit as the gateway uses it.
pub struct LimitEntry {
    pub name: String,
    pub spec: RateLimitSpec,
    pub key: LimitKey,
}

impl GatewaySnapshot {
    pub fn empty() -> GatewaySnapshot {
        GatewaySnapshot {
            revision: 0,
            router: Arc::new(Router::new(Vec::new()).expect("an empty router always compiles")),
            routes: Vec::new(),
            certificates: CertStore::default(),
            identities: Arc::new(Identities::default()),
            redactor: Arc::new(Redactor::default()),
            rate_limits: Arc::new(Vec::new()),
            concurrency_limits: Arc::new(Vec::new()),
            ai: Arc::new(AiConfig::default()),
        }
    }
}

pub type SharedSnapshot = Arc<ArcSwap<GatewaySnapshot>>;

/// What a changed resource is now: its current state, or gone.
type Change = ((String, String), Option<pb::Resource>);

/// A route as parsed and compiled: (revision, spec, router rule, access rules).
type BuiltRoute = (u64, RouteSpec, RouteRule, Option<Arc<RouteAccess>>);

/// Builds snapshots. It keeps the parsed config between builds and, after the first, applies
/// only the resources that changed: a write to one Service costs one parse, not a re-read of
/// every Service and Route. Upstreams (pools, health) and caches are reused while their
/// resource's revision is unchanged; the router is recompiled only when a Route changed.
pub struct SnapshotBuilder {
    reader: StateReader,
    services: BTreeMap<String, Arc<Upstream>>,
    /// Route name -> (revision, parsed spec, compiled rule, compiled access rules).
    routes: BTreeMap<String, BuiltRoute>,
    consumers: BTreeMap<String, ConsumerSpec>,
    /// ApiKey name -> spec.
    keys: BTreeMap<String, ApiKeySpec>,
    /// ApiKey name -> when this node last accepted it; survives rebuilds.
    key_usage: HashMap<String, Arc<AtomicU64>>,
    /// JwtProvider name -> (revision, verifier); a verifier (and its JWKS cache) lives while
    /// its provider is unchanged.
    jwt: BTreeMap<String, (u64, Arc<JwtVerifier>)>,
    identities: Arc<Identities>,
    redactions: BTreeMap<String, LogRedactionSpec>,
    redactor: Arc<Redactor>,
    limits: BTreeMap<String, RateLimitSpec>,
    rate_limits: Arc<Vec<LimitEntry>>,
    concurrency: BTreeMap<String, ConcurrencyLimitSpec>,
    concurrency_limits: Arc<Vec<ConcurrencyEntry>>,
    /// Provider name -> spec (secrets decrypted); Model name -> spec.
    providers: BTreeMap<String, ProviderSpec>,
    models: BTreeMap<String, ModelSpec>,
    prompts: BTreeMap<String, PromptTemplateSpec>,
    prices: BTreeMap<String, ModelPriceSpec>,
    budgets: BTreeMap<String, BudgetSpec>,
    token_limits: BTreeMap<String, TokenLimitSpec>,
    ai: Arc<AiConfig>,
    /// Certificate name -> (SNI names, key).
    certs: BTreeMap<String, (Vec<String>, Arc<CertifiedKey>)>,
    /// Route name -> (route revision, cache).
    caches: HashMap<String, (u64, Arc<ResponseCache>)>,
    router: Arc<Router>,
    /// Decrypts the secret fields (certificate keys, upstream client keys).
    keyring: Arc<Keyring>,
}

/// A stored resource's spec as JSON with its secret fields decrypted. The error names the
/// field and the key id, never the value.
fn plain_spec(keyring: &Keyring, r: &pb::Resource) -> Result<serde_json::Value, String> {
    let mut spec = struct_to_json(&r.spec.clone().unwrap_or_default());
    crate::secrets::decrypt_spec(keyring, &r.kind, &r.name, &mut spec)
        .map_err(|e| e.to_string())?;
    Ok(spec)
}

/// A stored secret this node cannot decrypt, found by [`check_stored_secrets`].
#[derive(Debug, thiserror::Error)]
pub enum StoredSecretError {
    #[error("cannot read the stored resources: {0}")]
    Read(String),
    /// `resource` is `Kind "name"`.
    #[error("{resource}: {error}; {}", what_to_do(&.error.error))]
    Undecryptable {
        resource: String,
        error: Box<crate::secrets::FieldError>,
    },
}

/// The fix for a stored secret that does not decrypt.
fn what_to_do(e: &crate::secrets::SecretError) -> String {
    match e {
        crate::secrets::SecretError::UnknownKey { key_id, .. } => format!(
            "start this node with a keyring that holds key {key_id:?} (--secret-key-file or KONNECT_SECRET_KEY)"
        ),
        crate::secrets::SecretError::Undecryptable { key_id } => format!(
            "this node's key {key_id:?} is not the key the value was encrypted with; use the cluster's key file"
        ),
        _ => "the stored value is damaged; apply the resource again".to_string(),
    }
}

/// Checks that every stored secret field opens with `keyring`, so a node never serves
/// without its secrets. Returns the resources whose secrets are still plaintext (written
/// before encryption at rest), as `Kind "name"`.
pub fn check_stored_secrets(
    reader: &StateReader,
    keyring: &Keyring,
) -> Result<Vec<String>, StoredSecretError> {
    let kinds: Vec<&str> = crate::resources::KINDS
        .iter()
        .map(|k| k.name)
        .filter(|k| !crate::resources::secret_fields(k).is_empty())
        .collect();
    let (_, stored) = reader
        .resources_of_kinds(&kinds)
        .map_err(|e| StoredSecretError::Read(e.to_string()))?;
    let mut plaintext = Vec::new();
    for r in stored.iter().flatten() {
        let mut spec = struct_to_json(&r.spec.clone().unwrap_or_default());
        for field in crate::resources::secret_fields(&r.kind) {
            if crate::secrets::field_str(&spec, field)
                .is_some_and(|v| !crate::secrets::is_envelope(v))
            {
                plaintext.push(format!("{} {:?}", r.kind, r.name));
            }
        }
        if let Err(error) = crate::secrets::decrypt_spec(keyring, &r.kind, &r.name, &mut spec) {
            return Err(StoredSecretError::Undecryptable {
                resource: format!("{} {:?}", r.kind, r.name),
                error: Box::new(error),
            });
        }
    }
    plaintext.dedup();
    Ok(plaintext)
}

fn skip(kind: &str, name: &str, e: String) {
    metrics::counter!("konnect_gateway_resources_skipped_total", "kind" => kind.to_string())
        .increment(1);
    tracing::error!(kind, name, error = %e, "resource left out of the gateway config");
}

impl SnapshotBuilder {
    pub fn new(reader: StateReader, keyring: Arc<Keyring>) -> SnapshotBuilder {
        SnapshotBuilder {
            reader,
            keyring,
            services: BTreeMap::new(),
            routes: BTreeMap::new(),
            certs: BTreeMap::new(),
            consumers: BTreeMap::new(),
            keys: BTreeMap::new(),
            key_usage: HashMap::new(),
            jwt: BTreeMap::new(),
            identities: Arc::new(Identities::default()),
            redactions: BTreeMap::new(),
            redactor: Arc::new(Redactor::default()),
            limits: BTreeMap::new(),
            rate_limits: Arc::new(Vec::new()),
            concurrency: BTreeMap::new(),
            concurrency_limits: Arc::new(Vec::new()),
            providers: BTreeMap::new(),
            models: BTreeMap::new(),
            prompts: BTreeMap::new(),
            prices: BTreeMap::new(),
            budgets: BTreeMap::new(),
            token_limits: BTreeMap::new(),
            ai: Arc::new(AiConfig::default()),
            caches: HashMap::new(),
            router: Arc::new(Router::new(Vec::new()).expect("an empty router always compiles")),
        }
    }

    /// Reads every gateway resource in one transaction and builds from scratch.
    pub fn build(&mut self) -> Result<GatewaySnapshot, String> {
        let (revision, kinds) = self
            .reader
            .resources_of_kinds(GATEWAY_KINDS)
            .map_err(|e| e.to_string())?;
        let mut changes: Vec<Change> = Vec::new();
        for present in &kinds {
            for r in present {
                changes.push(((r.kind.clone(), r.name.clone()), Some(r.clone())));
            }
        }
        // Everything not present any more is removed.
        let mut known: Vec<(String, String)> = Vec::new();
        known.extend(
            self.services
                .keys()
                .map(|n| ("Service".to_string(), n.clone())),
        );
        known.extend(self.routes.keys().map(|n| ("Route".to_string(), n.clone())));
        known.extend(
            self.certs
                .keys()
                .map(|n| ("Certificate".to_string(), n.clone())),
        );
        known.extend(
            self.consumers
                .keys()
                .map(|n| ("Consumer".to_string(), n.clone())),
        );
        known.extend(self.keys.keys().map(|n| ("ApiKey".to_string(), n.clone())));
        known.extend(
            self.jwt
                .keys()
                .map(|n| ("JwtProvider".to_string(), n.clone())),
        );
        known.extend(
            self.redactions
                .keys()
                .map(|n| ("LogRedaction".to_string(), n.clone())),
        );
        known.extend(
            self.limits
                .keys()
                .map(|n| ("RateLimit".to_string(), n.clone())),
        );
        known.extend(
            self.concurrency
                .keys()
                .map(|n| ("ConcurrencyLimit".to_string(), n.clone())),
        );
        known.extend(
            self.providers
                .keys()
                .map(|n| ("Provider".to_string(), n.clone())),
        );
        known.extend(self.models.keys().map(|n| ("Model".to_string(), n.clone())));
        known.extend(
            self.prompts
                .keys()
                .map(|n| ("PromptTemplate".to_string(), n.clone())),
        );
        known.extend(
            self.prices
                .keys()
                .map(|n| ("ModelPrice".to_string(), n.clone())),
        );
        known.extend(
            self.budgets
                .keys()
                .map(|n| ("Budget".to_string(), n.clone())),
        );
        known.extend(
            self.token_limits
                .keys()
                .map(|n| ("TokenLimit".to_string(), n.clone())),
        );
        for key in known {
            if !changes.iter().any(|(k, _)| *k == key) {
                changes.push((key, None));
            }
        }
        self.apply(revision, changes, true)
    }

    /// Applies the current state of the `changed` resources only.
    pub fn update(
        &mut self,
        changed: &BTreeSet<(String, String)>,
    ) -> Result<GatewaySnapshot, String> {
        let keys: Vec<(String, String)> = changed.iter().cloned().collect();
        let (revision, current) = self.reader.resources_at(&keys).map_err(|e| e.to_string())?;
        let changes = keys.into_iter().zip(current).collect();
        self.apply(revision, changes, false)
    }

    fn apply(
        &mut self,
        revision: u64,
        changes: Vec<Change>,
        full: bool,
    ) -> Result<GatewaySnapshot, String> {
        let mut routes_changed = full;
        let mut identities_changed = full;
        let mut redactions_changed = full;
        let mut limits_changed = full;
        let mut ai_changed = full;
        for ((kind, name), resource) in changes {
            match (kind.as_str(), resource) {
                ("Service", None) => {
                    self.services.remove(&name);
                }
                ("Service", Some(r)) => {
                    if self
                        .services
                        .get(&name)
                        .is_some_and(|u| u.revision == r.revision)
                    {
                        continue;
                    }
                    let built = plain_spec(&self.keyring, &r)
                        .and_then(|spec| ServiceSpec::parse(&spec).map_err(|e| e.to_string()))
                        .and_then(|spec| Upstream::new(&name, r.revision, spec));
                    match built {
                        Ok(u) => {
                            self.services.insert(name, Arc::new(u));
                        }
                        Err(e) => {
                            self.services.remove(&name);
                            skip("Service", &name, e);
                        }
                    }
                }
                ("Route", None) => {
                    routes_changed |= self.routes.remove(&name).is_some();
                }
                ("Route", Some(r)) => {
                    if self
                        .routes
                        .get(&name)
                        .is_some_and(|(rev, ..)| *rev == r.revision)
                    {
                        continue;
                    }
                    routes_changed = true;
                    let parsed = RouteSpec::parse(&struct_to_json(&r.spec.unwrap_or_default()))
                        .map_err(|e| e.to_string())
                        .and_then(|spec| spec.to_rule(&name).map(|rule| (spec, rule)))
                        .and_then(|(spec, rule)| {
                            RouteAccess::compile(
                                spec.auth.as_ref(),
                                spec.acl.as_ref(),
                                spec.ip_restriction.as_ref(),
                                spec.validate.as_ref(),
                            )
                            .map(|access| (spec, rule, access.map(Arc::new)))
                        });
                    match parsed {
                        Ok((spec, rule, access)) => {
                            self.routes.insert(name, (r.revision, spec, rule, access));
                        }
                        Err(e) => {
                            self.routes.remove(&name);
                            skip("Route", &name, e);
                        }
                    }
                }
                ("Certificate", None) => {
                    self.certs.remove(&name);
                }
                ("Certificate", Some(r)) => {
                    let key = plain_spec(&self.keyring, &r).and_then(|spec| {
                        CertificateSpec::parse(&spec)
                            .and_then(|spec| spec.certified_key().map(|k| (spec.snis, k)))
                            .map_err(|e| e.to_string())
                    });
                    match key {
                        Ok(entry) => {
                            self.certs.insert(name, entry);
                        }
                        Err(e) => {
                            self.certs.remove(&name);
                            skip("Certificate", &name, e);
                        }
                    }
                }
                ("Consumer", r) => {
                    identities_changed = true;
                    self.consumers.remove(&name);
                    if let Some(r) = r {
                        match ConsumerSpec::parse(&struct_to_json(&r.spec.unwrap_or_default())) {
                            Ok(spec) => {
                                self.consumers.insert(name, spec);
                            }
                            Err(e) => skip("Consumer", &name, e.to_string()),
                        }
                    }
                }
                ("ApiKey", r) => {
                    identities_changed = true;
                    self.keys.remove(&name);
                    if let Some(r) = r {
                        match ApiKeySpec::parse(&struct_to_json(&r.spec.unwrap_or_default())) {
                            Ok(spec) => {
                                self.keys.insert(name, spec);
                            }
                            Err(e) => skip("ApiKey", &name, e.to_string()),
                        }
                    }
                }
                ("RateLimit", r) => {
                    limits_changed = true;
                    self.limits.remove(&name);
                    if let Some(r) = r {
                        match RateLimitSpec::parse(&struct_to_json(&r.spec.unwrap_or_default())) {
                            Ok(spec) => {
                                self.limits.insert(name, spec);
                            }
                            Err(e) => skip("RateLimit", &name, e.to_string()),
                        }
                    }
                }
                ("Provider", r) => {
                    ai_changed = true;
                    self.providers.remove(&name);
                    if let Some(r) = r {
                        match plain_spec(&self.keyring, &r)
                            .and_then(|spec| ProviderSpec::parse(&spec).map_err(|e| e.to_string()))
                        {
                            Ok(spec) => {
                                self.providers.insert(name, spec);
                            }
                            Err(e) => skip("Provider", &name, e),
                        }
                    }
                }
                ("Model", r) => {
                    ai_changed = true;
                    self.models.remove(&name);
                    if let Some(r) = r {
                        match ModelSpec::parse(&struct_to_json(&r.spec.unwrap_or_default())) {
                            Ok(spec) => {
                                self.models.insert(name, spec);
                            }
                            Err(e) => skip("Model", &name, e.to_string()),
                        }
                    }
                }
                ("ModelPrice", r) => {
                    ai_changed = true;
                    self.prices.remove(&name);
                    if let Some(r) = r {
                        match ModelPriceSpec::parse(&struct_to_json(&r.spec.unwrap_or_default())) {
                            Ok(spec) => {
                                self.prices.insert(name, spec);
                            }
                            Err(e) => skip("ModelPrice", &name, e.to_string()),
                        }
                    }
                }
                ("TokenLimit", r) => {
                    ai_changed = true;
                    self.token_limits.remove(&name);
                    if let Some(r) = r {
                        match TokenLimitSpec::parse(&struct_to_json(&r.spec.unwrap_or_default())) {
                            Ok(spec) => {
                                self.token_limits.insert(name, spec);
                            }
                            Err(e) => skip("TokenLimit", &name, e.to_string()),
                        }
                    }
                }
                ("Budget", r) => {
                    ai_changed = true;
                    self.budgets.remove(&name);
                    if let Some(r) = r {
                        match BudgetSpec::parse(&struct_to_json(&r.spec.unwrap_or_default())) {
                            Ok(spec) => {
                                self.budgets.insert(name, spec);
                            }
                            Err(e) => skip("Budget", &name, e.to_string()),
                        }
                    }
                }
                ("PromptTemplate", r) => {
                    ai_changed = true;
                    self.prompts.remove(&name);
                    if let Some(r) = r {
                        match PromptTemplateSpec::parse(&struct_to_json(
                            &r.spec.unwrap_or_default(),
                        )) {
                            Ok(spec) => {
                                self.prompts.insert(name, spec);
                            }
                            Err(e) => skip("PromptTemplate", &name, e.to_string()),
                        }
                    }
                }
                ("ConcurrencyLimit", r) => {
                    limits_changed = true;
                    self.concurrency.remove(&name);
                    if let Some(r) = r {
                        match ConcurrencyLimitSpec::parse(&struct_to_json(
                            &r.spec.unwrap_or_default(),
                        )) {
                            Ok(spec) => {
                                self.concurrency.insert(name, spec);
                            }
                            Err(e) => skip("ConcurrencyLimit", &name, e.to_string()),
                        }
                    }
                }
                ("LogRedaction", r) => {
                    redactions_changed = true;
                    self.redactions.remove(&name);
                    if let Some(r) = r {
                        match LogRedactionSpec::parse(&struct_to_json(&r.spec.unwrap_or_default()))
                        {
                            Ok(spec) => {
                                self.redactions.insert(name, spec);
                            }
                            Err(e) => skip("LogRedaction", &name, e.to_string()),
                        }
                    }
                }
                ("JwtProvider", None) => {
                    identities_changed |= self.jwt.remove(&name).is_some();
                }
                ("JwtProvider", Some(r)) => {
                    if self
                        .jwt
                        .get(&name)
                        .is_some_and(|(rev, _)| *rev == r.revision)
                    {
                        continue;
                    }
                    identities_changed = true;
                    let built = plain_spec(&self.keyring, &r)
                        .and_then(|spec| JwtProviderSpec::parse(&spec).map_err(|e| e.to_string()))
                        .and_then(|spec| JwtVerifier::new(&name, spec));
                    match built {
                        Ok(v) => {
                            self.jwt.insert(name, (r.revision, v));
                        }
                        Err(e) => {
                            self.jwt.remove(&name);
                            skip("JwtProvider", &name, e);
                        }
                    }
                }
                _ => {}
            }
        }
        if identities_changed {
            self.identities = Arc::new(self.build_identities());
        }
        if limits_changed {
            self.rate_limits = Arc::new(
                self.limits
                    .iter()
                    .filter_map(|(name, spec)| {
                        Some(LimitEntry {
                            name: name.clone(),
                            key: spec.key().ok()?,
                            spec: spec.clone(),
                        })
                    })
                    .collect(),
            );
            self.concurrency_limits = Arc::new(
                self.concurrency
                    .iter()
                    .filter_map(|(name, spec)| {
                        Some(ConcurrencyEntry {
                            name: name.clone(),
                            key: spec.key().ok()?,
                            spec: spec.clone(),
                        })
                    })
                    .collect(),
            );
        }
        if ai_changed {
            self.ai = Arc::new(AiConfig::new(
                &self.providers,
                &self.models,
                &self.prompts,
                &self.prices,
                &self.budgets,
                &self.token_limits,
            ));
        }
        if redactions_changed || routes_changed {
            // Query parameters that routes read API keys from are masked too.
            let key_params: Vec<String> = self
                .routes
                .values()
                .filter_map(|(_, spec, ..)| spec.auth.as_ref()?.key_query.clone())
                .collect();
            let specs: Vec<LogRedactionSpec> = self.redactions.values().cloned().collect();
            match Redactor::new(&specs, &key_params) {
                Ok(r) => self.redactor = Arc::new(r),
                Err(e) => skip("LogRedaction", "*", e),
            }
        }

        // Routes whose service is missing are left out (the state machine keeps references
        // intact; this only guards a corrupt state). Rule i of the router is entry i.
        type Usable<'a> = (&'a String, &'a BuiltRoute, Option<Arc<Upstream>>);
        let usable: Vec<Usable> = self
            .routes
            .iter()
            .filter_map(|(name, route)| match self.services.get(&route.1.service) {
                Some(u) => Some((name, route, Some(u.clone()))),
                None if route.1.ai.is_some() => Some((name, route, None)),
                None => {
                    skip(
                        "Route",
                        name,
                        format!("unknown service {:?}", route.1.service),
                    );
                    None
                }
            })
            .collect();
        if routes_changed || usable.len() != self.routes.len() {
            let rules = usable
                .iter()
                .map(|(_, (_, _, rule, _), _)| rule.clone())
                .collect();
            self.router = Arc::new(Router::new(rules).map_err(|e| e.to_string())?);
        }
        let mut caches = HashMap::new();
        let mut entries = Vec::with_capacity(usable.len());
        for (name, (rev, spec, _, access), upstream) in usable {
            let cache = spec.cache.as_ref().map(|c| {
                let cache = match self.caches.get(name) {
                    Some((r, cache)) if r == rev => cache.clone(),
                    _ => Arc::new(ResponseCache::new(name.clone(), c.clone())),
                };
                caches.insert(name.clone(), (*rev, cache.clone()));
                cache
            });
            let metrics = Arc::new(RouteMetrics::new(
                name,
                upstream.as_ref().map(|u| u.name.as_str()),
            ));
            entries.push(RouteEntry {
                metrics,
                name: name.clone(),
                spec: spec.clone(),
                upstream,
                cache,
                access: access.clone(),
            });
        }
        self.caches = caches;
        let mut certificates = CertStore::default();
        for (snis, key) in self.certs.values() {
            for sni in snis {
                certificates.insert(sni, key.clone());
            }
        }
        Ok(GatewaySnapshot {
            revision,
            router: self.router.clone(),
            routes: entries,
            certificates,
            identities: self.identities.clone(),
            redactor: self.redactor.clone(),
            rate_limits: self.rate_limits.clone(),
            concurrency_limits: self.concurrency_limits.clone(),
            ai: self.ai.clone(),
        })
    }

    /// Consumers, their keys and subjects, and the JWT verifiers, as one lookup structure.
    fn build_identities(&mut self) -> Identities {
        let mut ids = Identities::default();
        for (name, spec) in &self.consumers {
            let entry = Arc::new(ConsumerEntry::new(
                name.clone(),
                spec.team.clone(),
                spec.groups.clone(),
            ));
            ids.consumers.insert(name.clone(), entry.clone());
            for subject in std::iter::once(name).chain(&spec.jwt_subjects) {
                ids.by_jwt_subject.insert(subject.clone(), entry.clone());
            }
            for subject in std::iter::once(name).chain(&spec.mtls_subjects) {
                ids.by_mtls_subject.insert(subject.clone(), entry.clone());
            }
        }
        let mut usage = HashMap::with_capacity(self.keys.len());
        for (name, spec) in &self.keys {
            let (Some(hash), Some(consumer)) = (spec.hash(), ids.consumers.get(&spec.consumer))
            else {
                continue;
            };
            let last_used = self
                .key_usage
                .get(name)
                .cloned()
                .unwrap_or_else(|| Arc::new(AtomicU64::new(0)));
            usage.insert(name.clone(), last_used.clone());
            ids.keys.insert(
                hash,
                KeyEntry {
                    id: name.clone(),
                    consumer: consumer.clone(),
                    credential: Credential::api_key(name),
                    expires_unix_ms: spec.expires_unix_ms,
                    last_used,
                },
            );
        }
        self.key_usage = usage;
        ids.jwt = self
            .jwt
            .iter()
            .map(|(n, (_, v))| {
                (
                    n.clone(),
                    JwtEntry {
                        verifier: v.clone(),
                        credential: Credential::jwt(n),
                    },
                )
            })
            .collect();
        ids
    }
}

/// Builds the first snapshot now and keeps `shared` current as entries are applied.
pub fn spawn_snapshot_updates(
    reader: StateReader,
    mut applied: watch::Receiver<u64>,
    keyring: Arc<Keyring>,
) -> SharedSnapshot {
    let mut builder = SnapshotBuilder::new(reader.clone(), keyring.clone());
    let first = builder.build().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot build the gateway configuration; serving none until it changes");
        GatewaySnapshot::empty()
    });
    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(first));
    let out = shared.clone();
    tokio::spawn(async move {
        let mut cursor = shared.load().revision;
        loop {
            applied.borrow_and_update();
            // What changed since the last build: nothing, some resources, or unknown (the
            // watch history no longer reaches back that far: build from scratch).
            let work = match reader.events_after(cursor, "", usize::MAX) {
                Ok(History::Events(events, complete_to)) => {
                    let changed: BTreeSet<(String, String)> = events
                        .iter()
                        .filter_map(|(_, ev)| ev.resource.as_ref())
                        .filter(|r| GATEWAY_KINDS.contains(&r.kind.as_str()))
                        .map(|r| (r.kind.clone(), r.name.clone()))
                        .collect();
                    if changed.is_empty() {
                        cursor = cursor.max(complete_to);
                        None
                    } else {
                        Some((Some(changed), complete_to))
                    }
                }
                Ok(History::Compacted { .. }) => Some((None, 0)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read config changes");
                    None
                }
            };
            if let Some((changed, read_to)) = work {
                let started = std::time::Instant::now();
                // Off the async workers, and at most once per REBUILD_INTERVAL however fast
                // writes arrive (changes in between are picked up by the next build).
                let joined = tokio::task::spawn_blocking(move || {
                    let built = match &changed {
                        Some(changed) => builder.update(changed),
                        None => builder.build(),
                    };
                    (builder, built)
                })
                .await;
                let built = match joined {
                    Ok((b, built)) => {
                        builder = b;
                        built
                    }
                    Err(e) => {
                        // A bug, not bad config: start over with a full build from the state.
                        tracing::error!(error = %e, "gateway config build panicked; rebuilding from scratch");
                        metrics::counter!("konnect_gateway_snapshot_errors_total").increment(1);
                        builder = SnapshotBuilder::new(reader.clone(), keyring.clone());
                        builder.build()
                    }
                };
                match built {
                    Ok(snapshot) => {
                        // An update read the changes up to `read_to`: entries applied since
                        // (the build may have seen their state, not their events) are read
                        // as events next time round; a full build covers all it read.
                        cursor = if read_to == 0 {
                            snapshot.revision
                        } else {
                            read_to
                        };
                        metrics::gauge!("konnect_gateway_config_revision")
                            .set(snapshot.revision as f64);
                        metrics::histogram!("konnect_gateway_snapshot_build_seconds")
                            .record(started.elapsed().as_secs_f64());
                        tracing::debug!(
                            revision = snapshot.revision,
                            routes = snapshot.routes.len(),
                            "gateway config updated"
                        );
                        shared.store(Arc::new(snapshot));
                    }
                    Err(e) => {
                        // Only a read failure gets here; try again on the next change.
                        metrics::counter!("konnect_gateway_snapshot_errors_total").increment(1);
                        tracing::error!(error = %e, "gateway config update failed; keeping the previous one");
                    }
                }
                tokio::time::sleep_until((started + REBUILD_INTERVAL).into()).await;
            }
            if applied.changed().await.is_err() {
                return;
            }
        }
    });
    out
}

/// Reports, in one `TouchApiKeys` command per `interval` (`--key-usage-report-ms`), the keys
/// this node accepted since the last report: `keys list` shows "last used" to within that, at
/// the cost of at most one Raft entry per node per interval. Never on the request path; a
/// failed report is retried with the next one.
pub async fn report_key_usage(
    snapshot: SharedSnapshot,
    proposer: crate::raft::proposer::Proposer,
    interval: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reported: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let current = snapshot.load_full();
        let mut touched = std::collections::BTreeMap::new();
        for key in current.identities.keys.values() {
            let used = key.last_used.load(std::sync::atomic::Ordering::Relaxed);
            if used > 0 && reported.get(&key.id).is_none_or(|r| used > *r) {
                touched.insert(key.id.clone(), used);
            }
        }
        if touched.is_empty() {
            continue;
        }
        let cmd = pb::Command {
            actor: "system".into(),
            op: Some(pb::command::Op::TouchKeys(pb::TouchApiKeys {
                last_used_unix_ms: touched.clone(),
            })),
            ..Default::default()
        };
        match proposer.write(cmd).await {
            Ok(_) => {
                reported.retain(|id, _| current.identities.keys.values().any(|k| &k.id == id));
                reported.extend(touched);
            }
            Err(e) => tracing::debug!(error = %e, "API key usage not reported; will retry"),
        }
    }
}

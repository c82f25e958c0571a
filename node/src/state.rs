//! The immutable configuration snapshot the gateway reads, and the task that rebuilds it
//! whenever an applied Raft entry changed a gateway resource (Service, Route).
//!
//! Architecture invariant: the request path only ever does `snapshot.load_full()`: one atomic
//! pointer read, no lock, no Raft, no disk. A request keeps the `Arc` it loaded, so in-flight
//! requests finish on the snapshot they started with while new ones see the new config.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use konnect_proto::json::struct_to_json;
use tokio::sync::watch;

use crate::gateway::cache::ResponseCache;
use crate::gateway::router::{PathPattern, RouteRule, Router};
use crate::gateway::tls::CertStore;
use crate::gateway::upstream::Upstream;
use crate::raft::state::{History, LabelSelector, StateReader};
use crate::resources::certificate::CertificateSpec;
use crate::resources::route::{parse_path, PathSpec, RouteSpec, VersionSource};
use crate::resources::service::ServiceSpec;

/// Shortest time between two snapshot builds: under a stream of config writes the gateway
/// follows within this delay instead of rebuilding once per write.
const REBUILD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Kinds whose changes require a new snapshot.
const GATEWAY_KINDS: &[&str] = &["Service", "Route", "Certificate"];

/// One route as the gateway uses it: rule index `i` of the router is `routes[i]`.
pub struct RouteEntry {
    pub name: String,
    pub spec: RouteSpec,
    pub upstream: Arc<Upstream>,
    /// The route's response cache, kept across snapshots while the route is unchanged.
    pub cache: Option<Arc<ResponseCache>>,
}

pub struct GatewaySnapshot {
    /// Applied revision the snapshot was built at.
    pub revision: u64,
    pub router: Router,
    pub routes: Vec<RouteEntry>,
    /// TLS certificates of the proxy listener, by SNI name.
    pub certificates: CertStore,
}

impl GatewaySnapshot {
    pub fn empty() -> GatewaySnapshot {
        GatewaySnapshot {
            revision: 0,
            router: Router::new(Vec::new()).expect("an empty router always compiles"),
            routes: Vec::new(),
            certificates: CertStore::default(),
        }
    }
}

pub type SharedSnapshot = Arc<ArcSwap<GatewaySnapshot>>;

/// Builds snapshots, reusing upstreams (and their pools and health) whose Service is unchanged.
pub struct SnapshotBuilder {
    reader: StateReader,
    upstreams: HashMap<String, Arc<Upstream>>,
    /// Route name -> (route revision, cache).
    caches: HashMap<String, (u64, Arc<ResponseCache>)>,
}

impl SnapshotBuilder {
    pub fn new(reader: StateReader) -> SnapshotBuilder {
        SnapshotBuilder {
            reader,
            upstreams: HashMap::new(),
            caches: HashMap::new(),
        }
    }

    pub fn build(&mut self) -> Result<GatewaySnapshot, String> {
        let all = LabelSelector::default();
        let services = self
            .reader
            .list_resources("Service", &all, None, usize::MAX)
            .map_err(|e| e.to_string())?;
        let routes = self
            .reader
            .list_resources("Route", &all, None, usize::MAX)
            .map_err(|e| e.to_string())?;
        let revision = services.revision.max(routes.revision);

        let mut upstreams = HashMap::with_capacity(services.items.len());
        for s in services.items {
            let reuse = self
                .upstreams
                .get(&s.name)
                .filter(|u| u.revision == s.revision)
                .cloned();
            let upstream = match reuse {
                Some(u) => u,
                None => {
                    let spec = ServiceSpec::parse(&struct_to_json(&s.spec.unwrap_or_default()))
                        .map_err(|e| format!("Service {:?}: {e}", s.name))?;
                    Arc::new(
                        Upstream::new(&s.name, s.revision, spec)
                            .map_err(|e| format!("Service {:?}: {e}", s.name))?,
                    )
                }
            };
            upstreams.insert(s.name.clone(), upstream);
        }

        let mut rules = Vec::with_capacity(routes.items.len());
        let mut entries = Vec::with_capacity(routes.items.len());
        let mut caches = HashMap::new();
        for r in routes.items {
            let spec = RouteSpec::parse(&struct_to_json(&r.spec.unwrap_or_default()))
                .map_err(|e| format!("Route {:?}: {e}", r.name))?;
            let Some(upstream) = upstreams.get(&spec.service).cloned() else {
                // The state machine keeps references intact; this only guards a corrupt state.
                return Err(format!(
                    "Route {:?}: unknown service {:?}",
                    r.name, spec.service
                ));
            };
            rules.push(route_rule(&r.name, &spec)?);
            let cache = spec.cache.as_ref().map(|c| {
                let cache = match self.caches.get(&r.name) {
                    Some((rev, cache)) if *rev == r.revision => cache.clone(),
                    _ => Arc::new(ResponseCache::new(r.name.clone(), c.clone())),
                };
                caches.insert(r.name.clone(), (r.revision, cache.clone()));
                cache
            });
            entries.push(RouteEntry {
                name: r.name,
                spec,
                upstream,
                cache,
            });
        }
        let router = Router::new(rules).map_err(|e| e.to_string())?;
        let mut certificates = CertStore::default();
        let certs = self
            .reader
            .list_resources("Certificate", &all, None, usize::MAX)
            .map_err(|e| e.to_string())?;
        for c in certs.items {
            let spec = CertificateSpec::parse(&struct_to_json(&c.spec.unwrap_or_default()))
                .map_err(|e| format!("Certificate {:?}: {e}", c.name))?;
            let key = spec
                .certified_key()
                .map_err(|e| format!("Certificate {:?}: {e}", c.name))?;
            for name in &spec.snis {
                certificates.insert(name, key.clone());
            }
        }
        self.upstreams = upstreams;
        self.caches = caches;
        Ok(GatewaySnapshot {
            revision,
            router,
            routes: entries,
            certificates,
        })
    }
}

fn route_rule(name: &str, spec: &RouteSpec) -> Result<RouteRule, String> {
    // A path-segment version is matched as part of the path: `/orders` serving `v2` matches
    // `/v2/orders`. A header version is one more header condition.
    let version_prefix = match &spec.api_version {
        Some(v) if v.from == VersionSource::PathSegment => format!("/{}", v.value),
        _ => String::new(),
    };
    let mut paths = spec
        .paths
        .iter()
        .map(|p| {
            parse_path(p).map(|p| match p {
                PathSpec::Prefix(s) if s == "/" && !version_prefix.is_empty() => {
                    PathPattern::Prefix(version_prefix.clone())
                }
                PathSpec::Prefix(s) => PathPattern::Prefix(format!("{version_prefix}{s}")),
                PathSpec::Exact(s) => PathPattern::Exact(format!("{version_prefix}{s}")),
                PathSpec::Regex(s) => PathPattern::Regex(s),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("Route {name:?}: {e}"))?;
    if paths.is_empty() && !version_prefix.is_empty() {
        paths.push(PathPattern::Prefix(version_prefix.clone()));
    }
    let mut headers: Vec<(String, Vec<String>)> = spec
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(v) = spec
        .api_version
        .as_ref()
        .filter(|v| v.from == VersionSource::Header)
    {
        headers.push((v.header.to_ascii_lowercase(), vec![v.value.clone()]));
    }
    Ok(RouteRule {
        name: name.to_string(),
        hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        paths,
        methods: spec.methods.clone(),
        headers,
        query: spec
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        priority: spec.priority,
    })
}

/// Builds the first snapshot now and keeps `shared` current as entries are applied.
pub fn spawn_snapshot_updates(
    reader: StateReader,
    mut applied: watch::Receiver<u64>,
) -> SharedSnapshot {
    let mut builder = SnapshotBuilder::new(reader.clone());
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
            let rebuild = match reader.events_after(cursor, "", usize::MAX) {
                Ok(History::Events(events, complete_to)) => {
                    let relevant = events.iter().any(|(_, ev)| {
                        ev.resource
                            .as_ref()
                            .is_some_and(|r| GATEWAY_KINDS.contains(&r.kind.as_str()))
                    });
                    if !relevant {
                        cursor = cursor.max(complete_to);
                    }
                    relevant
                }
                Ok(History::Compacted { .. }) => true,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read config changes");
                    false
                }
            };
            if rebuild {
                let started = std::time::Instant::now();
                // Building reads and parses the whole gateway config: keep it off the async
                // workers, and at most once per REBUILD_INTERVAL however fast writes arrive
                // (changes in between are picked up by the next build).
                let (b, built) = match tokio::task::spawn_blocking(move || {
                    let built = builder.build();
                    (builder, built)
                })
                .await
                {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::error!(error = %e, "gateway config build panicked; config updates stop");
                        return;
                    }
                };
                builder = b;
                match built {
                    Ok(snapshot) => {
                        cursor = snapshot.revision;
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
                        metrics::counter!("konnect_gateway_snapshot_errors_total").increment(1);
                        tracing::error!(error = %e, "gateway config rejected; keeping the previous one");
                        cursor = reader.applied_revision().unwrap_or(cursor);
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

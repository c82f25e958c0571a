//! Wires a node together: reads the control-plane TLS files, loads the secret keys, opens the
//! stores (refusing to start when a stored secret cannot be decrypted), starts Raft, binds the
//! peer, admin and status listeners (TLS on the admin and peer ports when configured),
//! bootstraps `--dev` mode, and owns shutdown (SIGINT/SIGTERM, or Raft stopped for good).
//!
//! Raft stops for good when its storage fails (openraft treats every storage error as fatal:
//! a full disk under the Raft log is the common one). The node then keeps proxying with the
//! configuration it has, says why it is not ready (`/readyz`), and waits until its data dir
//! takes writes again; then it shuts down like on SIGTERM and exits with an error, for its
//! supervisor to restart it: a new process reopens the stores and rejoins the cluster. A node
//! that stayed up with Raft stopped would never rejoin by itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use konnect_proto::admin::v1::audit_server::AuditServer;
use konnect_proto::admin::v1::cluster_server::ClusterServer;
use konnect_proto::admin::v1::keys_server::KeysServer;
use konnect_proto::admin::v1::limits_server::LimitsServer;
use konnect_proto::admin::v1::resources_server::ResourcesServer;
use konnect_proto::admin::v1::secrets_server::SecretsServer;
use konnect_proto::admin::v1::tokens_server::TokensServer;
use konnect_proto::admin::v1::usage_server::UsageServer;
use konnect_proto::peer::v1::peer_server::PeerServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::admin::access::{AuditService, TokenService};
use crate::admin::auth::Authenticator;
use crate::admin::cluster::ClusterService;
use crate::admin::keys::KeyService;
use crate::admin::resources::ResourceService;
use crate::admin::secrets::SecretsService;
use crate::config::{SecretKeySource, Settings};
use crate::gateway::access_log::AccessLog;
use crate::gateway::{Gateway, GatewaySettings};
use crate::raft::log_store::{LogStore, OnDisk};
use crate::raft::network::{ClusterIdentity, PeerChannels};
use crate::raft::peer_service::PeerService;
use crate::raft::proposer::Proposer;
use crate::raft::state::StateReader;
use crate::raft::state_machine::StateMachine;
use crate::raft::{NodeMeta, Raft};
use crate::secrets::Keyring;
use crate::{bootstrap, status, telemetry};

/// Everything the admin API and the status endpoint need from the running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub settings: Arc<Settings>,
    pub meta: NodeMeta,
    pub raft: Raft,
    pub proposer: Proposer,
    pub reader: StateReader,
    pub channels: PeerChannels,
    /// Last applied log index, updated after every apply.
    pub applied: watch::Receiver<u64>,
    /// The cluster data keys: the admin write path encrypts secret fields with the primary.
    pub keyring: Arc<Keyring>,
    /// How far the snapshot on disk reaches, and the log purged from disk (admin status).
    pub on_disk: OnDisk,
}

/// A startup failure, said in terms of the setting or file involved.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Tls(#[from] crate::control_tls::TlsFileError),
    #[error("data dir {path}: {message}")]
    DataDir { path: PathBuf, message: String },
    #[error("{flag} {addr}: cannot listen: {source}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("dev bootstrap: {0}")]
    Bootstrap(String),
    /// The secret keys cannot be loaded, or do not open what the state holds.
    #[error("secrets: {0}")]
    Secrets(String),
    /// Raft stopped on an error (a storage failure, e.g. a full disk); the node exited once
    /// its data dir took writes again, so that a restart rejoins the cluster.
    #[error(
        "raft stopped: {0}; the data dir takes writes again: exiting so that a restart \
         rejoins the cluster"
    )]
    RaftStopped(String),
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { flag, addr, source })
}

fn raft_config(s: &Settings) -> Result<openraft::Config, StartError> {
    openraft::Config {
        cluster_name: "konnect".into(),
        heartbeat_interval: s.heartbeat.as_millis() as u64,
        election_timeout_min: s.election_timeout_min.as_millis() as u64,
        election_timeout_max: s.election_timeout_max.as_millis() as u64,
        // Per snapshot chunk; chunks are a few MB, so allow a slow disk or link.
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(s.snapshot_after_entries),
        max_in_snapshot_log_to_keep: s.log_keep_after_snapshot,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> Result<(), StartError> {
    if settings.test_clock_offset_ms != 0 {
        crate::clock::set_offset_ms(settings.test_clock_offset_ms);
        tracing::warn!(
            offset_ms = settings.test_clock_offset_ms,
            "test hook: this node's clock is shifted"
        );
    }
    // TLS files first: a wrong path or a key that does not fit stops the node before it
    // touches its data directory or any port.
    let admin_tls = match &settings.admin_tls {
        Some(files) => Some(crate::control_tls::admin_acceptor(files)?),
        None => None,
    };
    let peer_tls = match &settings.peer_tls {
        Some(files) => Some(crate::control_tls::peer_tls(files, settings.peer_addr)?),
        None => None,
    };
    let metrics_handle = telemetry::init_metrics().map_err(StartError::Metrics)?;
    let data_dir = settings.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|e| StartError::DataDir {
        path: data_dir.clone(),
        message: e.to_string(),
    })?;
    let store_err = |e: crate::store::StoreError| StartError::DataDir {
        path: data_dir.clone(),
        message: e.to_string(),
    };
    let keyring = Arc::new(load_keyring(&settings.secret_keys)?);
    let log_store = LogStore::open(&data_dir.join("raft-log.redb")).map_err(store_err)?;
    let (state_machine, reader, applied) = StateMachine::open(&data_dir).map_err(store_err)?;
    let log_store = log_store.with_snapshot_floor(state_machine.snapshot_floor());
    let on_disk = OnDisk {
        snapshot: state_machine.snapshot_floor(),
        purged: log_store.purged(),
    };
    // Refuse to serve a configuration whose secrets this node cannot open.
    let plaintext = crate::state::check_stored_secrets(&reader, &keyring)
        .map_err(|e| StartError::Secrets(e.to_string()))?;
    if !plaintext.is_empty() {
        tracing::warn!(
            resources = %plaintext.join(", "),
            "secret fields stored unencrypted (written before encryption at rest); run `konnectctl secrets rekey` to encrypt them"
        );
    }

    // Bind everything before starting Raft, so a port clash fails fast and clearly.
    let peer_listener = bind("--peer-addr", settings.peer_addr).await?;
    let admin_listener = bind("--admin-addr", settings.admin_addr).await?;
    let status_listener = bind("--status-addr", settings.status_addr).await?;
    let proxy_listener = bind("--proxy-addr", settings.proxy_addr).await?;
    let proxy_tls_listener = match settings.proxy_tls_addr {
        Some(a) => Some(bind("--proxy-tls-addr", a).await?),
        None => None,
    };
    // With port 0 the OS picks; advertise what was bound.
    let proxy_addr = proxy_listener.local_addr().unwrap_or(settings.proxy_addr);
    warn_if_exposed(&settings, admin_tls.is_some(), peer_tls.is_some());

    let identity = ClusterIdentity::new(reader.clone());
    let (peer_acceptor, peer_client_tls) = match peer_tls {
        Some(t) => (Some(t.acceptor), Some(t.client)),
        None => (None, None),
    };
    let channels = PeerChannels::new(identity.clone(), Duration::from_secs(2), peer_client_tls);
    let raft = Raft::new(
        settings.node_id,
        Arc::new(raft_config(&settings)?),
        channels.clone(),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;
    telemetry::spawn_raft_metrics(raft.clone());

    let meta = NodeMeta {
        peer_addr: settings.peer_addr.to_string(),
        admin_addr: settings.admin_addr.to_string(),
        zone: settings.zone.clone(),
        proxy_addr: proxy_addr.to_string(),
        status_addr: settings.status_addr.to_string(),
    };
    let proposer = Proposer::new(raft.clone(), channels.clone(), applied.clone());
    let node = NodeHandle {
        settings: Arc::new(settings.clone()),
        meta: meta.clone(),
        raft: raft.clone(),
        proposer: proposer.clone(),
        reader: reader.clone(),
        channels: channels.clone(),
        applied,
        keyring: keyring.clone(),
        on_disk,
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let peer = PeerService {
        node_id: settings.node_id,
        meta: meta.clone(),
        raft: raft.clone(),
        identity: identity.clone(),
        proposer: proposer.clone(),
    };
    let peer_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            PeerServer::new(peer)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        );
    let peer_task = match peer_acceptor {
        Some(acceptor) => tokio::spawn(peer_router.serve_with_incoming_shutdown(
            crate::control_tls::incoming(peer_listener, acceptor, "peer"),
            stopped(shutdown_rx.clone()),
        )),
        None => tokio::spawn(peer_router.serve_with_incoming_shutdown(
            TcpIncoming::from(peer_listener).with_nodelay(Some(true)),
            stopped(shutdown_rx.clone()),
        )),
    };

    let auth = Authenticator::new(reader.clone(), proposer.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ClusterServer<ClusterService>>()
        .await;
    health_reporter
        .set_serving::<ResourcesServer<ResourceService>>()
        .await;
    health_reporter
        .set_serving::<SecretsServer<SecretsService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(konnect_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Raft(format!("reflection: {e}")))?;
    let admin_router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ClusterServer::new(ClusterService {
            node: node.clone(),
            auth: auth.clone(),
        }))
        .add_service(ResourcesServer::new(ResourceService {
            node: node.clone(),
            auth: auth.clone(),
        }))
        .add_service(SecretsServer::new(SecretsService {
            node: node.clone(),
            auth: auth.clone(),
        }))
        .add_service(KeysServer::new(KeyService {
            node: node.clone(),
            auth: auth.clone(),
        }))
        .add_service(TokensServer::new(TokenService {
            node: node.clone(),
            auth: auth.clone(),
        }))
        .add_service(AuditServer::new(AuditService {
            node: node.clone(),
            auth: auth.clone(),
        }))
        .add_service(LimitsServer::new(crate::admin::limits::LimitService {
            node: node.clone(),
            auth: auth.clone(),
        }))
        .add_service(UsageServer::new(crate::admin::usage::UsageService {
            node: node.clone(),
            auth,
        }));
    let admin_task = match admin_tls {
        Some(acceptor) => tokio::spawn(admin_router.serve_with_incoming_shutdown(
            crate::control_tls::incoming(admin_listener, acceptor, "admin"),
            stopped(shutdown_rx.clone()),
        )),
        None => tokio::spawn(admin_router.serve_with_incoming_shutdown(
            TcpIncoming::from(admin_listener).with_nodelay(Some(true)),
            stopped(shutdown_rx.clone()),
        )),
    };
    let status_task = tokio::spawn(status::serve(
        status_listener,
        node.clone(),
        metrics_handle,
        shutdown_rx.clone(),
    ));

    let access_log = AccessLog::start(&settings.access_log).map_err(|e| StartError::DataDir {
        path: PathBuf::from(format!("{:?}", settings.access_log)),
        message: format!("cannot open the access log: {e}"),
    })?;
    let wal_dir = settings.data_dir.join("usage-wal");
    let ledger = Arc::new(
        crate::ledger::Ledger::open(&wal_dir, settings.node_id).map_err(|e| {
            StartError::DataDir {
                path: wal_dir.clone(),
                message: format!("cannot open the usage WAL: {e}"),
            }
        })?,
    );
    tokio::spawn(crate::ledger::ship_usage(
        ledger.clone(),
        proposer.clone(),
        reader.clone(),
        settings.usage_retention,
        shutdown_rx.clone(),
    ));
    let ai_usage = crate::ai::usage::UsageLog::start(&settings.ai_usage_log, Some(ledger))
        .map_err(|e| StartError::DataDir {
            path: PathBuf::from(format!("{:?}", settings.ai_usage_log)),
            message: format!("cannot open the AI usage log: {e}"),
        })?;

    let snapshot =
        crate::state::spawn_snapshot_updates(reader.clone(), node.applied.clone(), keyring.clone());
    tokio::spawn(crate::state::report_key_usage(
        snapshot.clone(),
        proposer.clone(),
        settings.key_usage_report,
        shutdown_rx.clone(),
    ));
    let (limiter, grant_asks) = crate::gateway::ratelimit::RateLimiter::new();
    let ai = Arc::new(
        crate::ai::AiContext::new(
            ai_usage,
            settings.node_id,
            settings.zone.clone(),
            limiter.clone(),
        )
        .map_err(|e| StartError::Raft(format!("AI provider client: {e}")))?,
    );
    tokio::spawn(crate::grants::ship_grants(
        grant_asks,
        limiter.clone(),
        ai.quotas.clone(),
        proposer.clone(),
        raft.clone(),
        settings.node_id,
        shutdown_rx.clone(),
    ));
    let gateway = Gateway::new(
        snapshot.clone(),
        GatewaySettings {
            trusted_proxies: settings.trusted_proxies.clone(),
            header_read_timeout: settings.header_read_timeout,
            client_send_timeout: settings.client_send_timeout,
            max_header_bytes: settings.max_header_bytes,
            drain_timeout: settings.drain_timeout,
        },
        access_log,
        limiter.clone(),
        ai,
    );
    let (proxy_stop_tx, proxy_stop_rx) = watch::channel(false);
    let proxy_tls_task = match proxy_tls_listener {
        Some(listener) => {
            let client_ca = match &settings.proxy_client_ca {
                Some(path) => Some(std::fs::read(path).map_err(|e| StartError::DataDir {
                    path: path.clone(),
                    message: format!("cannot read --proxy-client-ca: {e}"),
                })?),
                None => None,
            };
            let acceptor = crate::gateway::tls::acceptor(snapshot.clone(), client_ca.as_deref())
                .map_err(|e| match &settings.proxy_client_ca {
                    Some(path) => StartError::DataDir {
                        path: path.clone(),
                        message: format!("--proxy-client-ca: {e}"),
                    },
                    None => StartError::Raft(format!("TLS setup: {e}")),
                })?;
            Some(tokio::spawn(gateway.clone().serve(
                listener,
                Some(acceptor),
                proxy_stop_rx.clone(),
            )))
        }
        None => None,
    };
    let proxy_task = tokio::spawn(gateway.serve(proxy_listener, None, proxy_stop_rx));

    tracing::info!(
        node_id = settings.node_id,
        proxy = %proxy_addr,
        zone = %settings.zone,
        peer = %settings.peer_addr,
        peer_tls = settings.peer_tls.is_some(),
        admin = %settings.admin_addr,
        admin_tls = settings.admin_tls.is_some(),
        status = %settings.status_addr,
        "konnect node started"
    );
    if settings.dev {
        dev_bootstrap(&node).await?;
    } else if identity.get().is_none() {
        tracing::info!("not part of a cluster yet: run `konnectctl cluster init` once the nodes of --peers are up");
    }

    let raft_stopped = tokio::select! {
        _ = wait_for_signal() => None,
        stopped = wait_until_raft_stopped(&raft, &settings.data_dir) => Some(stopped),
    };
    tracing::info!("shutting down: draining proxied requests");
    // Proxy first: stop accepting, let in-flight requests finish, then stop the control plane.
    let _ = proxy_stop_tx.send(true);
    let _ = proxy_task.await;
    if let Some(t) = proxy_tls_task {
        let _ = t.await;
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::join!(peer_task, admin_task, status_task);
    let _ = raft.shutdown().await;
    match raft_stopped {
        Some(error) => Err(StartError::RaftStopped(error)),
        None => Ok(()),
    }
}

/// How often a node whose Raft stopped checks whether its data dir takes writes again.
const WRITABLE_PROBE_EVERY: Duration = Duration::from_secs(1);
/// What a probe writes (and fsyncs, and removes): room for a few Raft log commits.
const WRITABLE_PROBE_BYTES: usize = 1 << 20;

/// Returns once Raft has stopped on an error and `data_dir` takes writes again; the error.
/// Logs the stop once, saying what the node does meanwhile.
async fn wait_until_raft_stopped(raft: &Raft, data_dir: &std::path::Path) -> String {
    let mut watch = raft.metrics();
    let error = loop {
        if let Err(fatal) = &watch.borrow_and_update().running_state {
            break fatal.to_string();
        }
        if watch.changed().await.is_err() {
            break "the Raft core is gone".to_string();
        }
    };
    tracing::error!(
        %error,
        data_dir = %data_dir.display(),
        "Raft stopped: this node keeps proxying with the configuration it has, but takes no \
         part in the cluster and is not ready; once its data dir takes writes again it exits \
         so that its supervisor restarts it and it rejoins"
    );
    metrics::gauge!("konnect_raft_stopped").set(1.0);
    let probe = data_dir.join(".writable-probe");
    loop {
        let path = probe.clone();
        let writable = tokio::task::spawn_blocking(move || write_probe(&path))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        if writable {
            tracing::error!(data_dir = %data_dir.display(), "the data dir takes writes again: exiting so that a restart rejoins the cluster");
            return error;
        }
        tokio::time::sleep(WRITABLE_PROBE_EVERY).await;
    }
}

/// Writes, fsyncs and removes `path`: whether the filesystem takes writes.
fn write_probe(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let result = std::fs::File::create(path).and_then(|mut f| {
        f.write_all(&vec![0u8; WRITABLE_PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(path);
    result
}

/// Tokens on a plain admin port, and Raft traffic on a plain peer port, travel in clear
/// text: say so loudly, in the log and on stderr, when either listens beyond loopback.
fn warn_if_exposed(settings: &Settings, admin_tls: bool, peer_tls: bool) {
    if !admin_tls && !settings.admin_addr.ip().is_loopback() {
        let message = format!(
            "the admin API listens on {} without TLS: admin tokens travel in clear text and anyone who can reach the port can try them; set --admin-tls-cert and --admin-tls-key (see `konnect certs init`), or bind --admin-addr to loopback",
            settings.admin_addr
        );
        tracing::warn!(admin_addr = %settings.admin_addr, "{message}");
        eprintln!("WARNING: {message}");
    }
    if !peer_tls && !settings.peer_addr.ip().is_loopback() {
        let message = format!(
            "the peer port listens on {} without mutual TLS: Raft messages and forwarded writes travel in clear text and anyone who can reach the port can send them; set --peer-tls-cert, --peer-tls-key and --peer-tls-ca (see `konnect certs init`), or keep the port on a private network",
            settings.peer_addr
        );
        tracing::warn!(peer_addr = %settings.peer_addr, "{message}");
        eprintln!("WARNING: {message}");
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `--dev`: initialise a one-node cluster on first start and tell the user where to go next.
async fn dev_bootstrap(node: &NodeHandle) -> Result<(), StartError> {
    let token_file = node.settings.data_dir.join("admin-token");
    if node.channels.identity.get().is_none() {
        let done = bootstrap::init_cluster(node)
            .await
            .map_err(|e| StartError::Bootstrap(e.to_string()))?;
        write_secret_file(&token_file, &done.admin_token).map_err(|e| StartError::DataDir {
            path: token_file.clone(),
            message: e.to_string(),
        })?;
    }
    let s = &node.settings;
    let token_note = if token_file.exists() {
        format!("{} (mode 0600)", token_file.display())
    } else {
        format!(
            "{} is missing: it was deleted after the first start",
            token_file.display()
        )
    };
    let (scheme, ca_flag) = match &s.admin_tls {
        Some(_) => (
            "https",
            " --ca <the CA that signed --admin-tls-cert>".to_string(),
        ),
        None => ("http", String::new()),
    };
    println!(
        "konnect is running in development mode (one node, data in {data})\n\
         \n  proxy             http://{proxy}\
         \n  admin API (gRPC)  {scheme}://{admin}\
         \n  status            http://{status}/readyz   http://{status}/metrics\
         \n  admin token       {token_note}\
         \n  secret key        {secret_key}\
         \n\nNext, try:\
         \n  konnectctl --endpoint {scheme}://{admin}{ca_flag} --token-file {token} cluster status\
         \n  konnectctl --endpoint {scheme}://{admin}{ca_flag} --token-file {token} apply -f docs/examples/echo.yaml\n",
        data = s.data_dir.display(),
        admin = s.admin_addr,
        proxy = node.meta.proxy_addr,
        status = s.status_addr,
        token = token_file.display(),
        secret_key = match &s.secret_keys {
            SecretKeySource::DevFile(path) => format!(
                "{} (mode 0600; development only: keep production keys apart from the data)",
                path.display()
            ),
            SecretKeySource::File(path) => format!("from {}", path.display()),
            SecretKeySource::Env(_) => format!("from {}", crate::secrets::KEY_ENV),
        },
    );
    Ok(())
}

/// The keyring from the configured source; `--dev` makes its key file on first start.
fn load_keyring(source: &SecretKeySource) -> Result<Keyring, StartError> {
    let keyring = match source {
        SecretKeySource::File(path) => {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        file = %path.display(),
                        "the secret key file is readable by other users; chmod 600 it"
                    );
                }
            }
            Keyring::from_file(path, "--secret-key-file")
        }
        SecretKeySource::Env(text) => Keyring::parse(&text.0, crate::secrets::KEY_ENV),
        SecretKeySource::DevFile(path) => {
            if !path.exists() {
                let line =
                    crate::secrets::new_key_line(Some("dev")).map_err(StartError::Secrets)?;
                write_secret_file(path, &line).map_err(|e| StartError::DataDir {
                    path: path.clone(),
                    message: format!("cannot write the development secret key: {e}"),
                })?;
                tracing::info!(file = %path.display(), "made a secret key for development mode");
            }
            Keyring::from_file(path, "--dev key file")
        }
    }
    .map_err(|e| StartError::Secrets(e.to_string()))?;
    tracing::info!(
        primary = keyring.primary_id(),
        keys = %keyring.key_ids().join(", "),
        "secret keys loaded"
    );
    Ok(keyring)
}

/// Writes `contents` to a new file readable only by its owner.
fn write_secret_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

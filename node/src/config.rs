//! Every setting of `konnect serve`, documented where it is declared. Each is a flag, an
//! environment variable (`KONNECT_*`) and a key of the TOML file given with `--config`;
//! flags and environment win over the file, the file wins over the defaults written here.
//! docs/configuration.md repeats these words (a test checks that every flag is listed there).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Settings as given on the command line, in the environment or in the TOML file.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings, keys spelled like the flags with `_` for `-`
    /// (`node_id = 1`). Flags and environment variables override it.
    #[arg(long, env = "KONNECT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Development mode: a single node that initialises itself, keeps data in ./konnect-data
    /// (unless --data-dir), writes the admin token to a 0600 file there and prints where to go
    /// next.
    #[arg(long, env = "KONNECT_DEV")]
    #[serde(default)]
    pub dev: bool,

    /// This node's id, a positive integer unique in the cluster. Required unless --dev.
    #[arg(long, env = "KONNECT_NODE_ID")]
    pub node_id: Option<u64>,

    /// Availability zone (or region) of this node, shown in `cluster status`. Default: "default".
    #[arg(long, env = "KONNECT_ZONE")]
    pub zone: Option<String>,

    /// Directory for the Raft log, the replicated state and snapshots. Default: ./konnect-data.
    #[arg(long, env = "KONNECT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address for node-to-node traffic (Raft, bootstrap, write forwarding); other nodes
    /// dial it. A non-loopback address without --peer-tls-cert gets a warning at start.
    /// Default: 127.0.0.1:7101.
    #[arg(long, env = "KONNECT_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,

    /// Address of the gRPC admin API (konnectctl). A non-loopback address without
    /// --admin-tls-cert gets a warning at start. Default: 127.0.0.1:7201 (loopback only).
    #[arg(long, env = "KONNECT_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// PEM certificate (chain) the admin API presents; with --admin-tls-key the admin port
    /// speaks TLS only (`konnectctl --ca`). Both or neither. Default: none (plain gRPC).
    #[arg(long, env = "KONNECT_ADMIN_TLS_CERT", value_name = "FILE")]
    pub admin_tls_cert: Option<PathBuf>,

    /// PEM private key of --admin-tls-cert. Both or neither.
    #[arg(long, env = "KONNECT_ADMIN_TLS_KEY", value_name = "FILE")]
    pub admin_tls_key: Option<PathBuf>,

    /// PEM certificate (chain) of this node on the peer port, presented to peers both as
    /// server and as client; issued by --peer-tls-ca. With --peer-tls-key and --peer-tls-ca
    /// the peer port requires mutual TLS. All three or none; every node of a cluster alike.
    /// Default: none (plain gRPC).
    #[arg(long, env = "KONNECT_PEER_TLS_CERT", value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,

    /// PEM private key of --peer-tls-cert. All three peer TLS flags or none.
    #[arg(long, env = "KONNECT_PEER_TLS_KEY", value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,

    /// PEM file of the cluster CA (one or more certificates): the only roots trusted on the
    /// peer port, for peers' server and client certificates alike. All three peer TLS flags
    /// or none.
    #[arg(long, env = "KONNECT_PEER_TLS_CA", value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,

    /// Address the gateway serves proxied traffic on. Default: 127.0.0.1:8080.
    #[arg(long, env = "KONNECT_PROXY_ADDR")]
    pub proxy_addr: Option<SocketAddr>,

    /// Address of the proxy's TLS listener (HTTPS, h2 by ALPN), serving the Certificate
    /// resources by SNI. Default: none (no TLS listener).
    #[arg(long, env = "KONNECT_PROXY_TLS_ADDR")]
    pub proxy_tls_addr: Option<SocketAddr>,

    /// PEM file of CA certificates that client certificates on the TLS proxy listener are
    /// verified against (mutual TLS). A client may still connect without a certificate;
    /// routes with `auth.mtls` then identify consumers by the certificate's subject. Needs
    /// --proxy-tls-addr. Default: none (client certificates are not asked for).
    #[arg(long, env = "KONNECT_PROXY_CLIENT_CA")]
    pub proxy_client_ca: Option<PathBuf>,

    /// How often, in milliseconds, this node reports which API keys it accepted (what
    /// `konnectctl keys list` shows as last used): one Raft entry per interval at most, never
    /// one per request. Default: 60000.
    #[arg(long, env = "KONNECT_KEY_USAGE_REPORT_MS")]
    pub key_usage_report_ms: Option<u64>,

    /// Address of the HTTP status endpoint (/healthz, /readyz, /metrics). Default: 127.0.0.1:7301.
    #[arg(long, env = "KONNECT_STATUS_ADDR")]
    pub status_addr: Option<SocketAddr>,

    /// The initial cluster: `ID=HOST:PORT` peer addresses, comma separated, this node included
    /// (`1=10.0.0.1:7101,2=10.0.0.2:7101,3=10.0.0.3:7101`). `konnectctl cluster init` forms the
    /// cluster from this list, and the nodes reach each other at these addresses (host names
    /// such as a StatefulSet's `konnect-0.konnect:7101` work; a node bound to 0.0.0.0 is listed
    /// by a reachable name on its port). A node that will join later with `cluster add-node`
    /// needs none.
    #[arg(long, env = "KONNECT_PEERS")]
    pub peers: Option<String>,

    /// Leader heartbeat interval in milliseconds; also the Raft RPC timeout. Default: 100.
    /// Same zone: 50-100. Across regions: at least 3x the largest round-trip time to any
    /// member, learners included (docs/multi-zone.md).
    #[arg(long, env = "KONNECT_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,

    /// Lower bound of the randomised election timeout in milliseconds. Default: 600.
    /// Same zone: 300-1000. Across regions: at least 10x the round-trip time.
    #[arg(long, env = "KONNECT_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,

    /// Upper bound of the randomised election timeout in milliseconds. Default: twice the
    /// lower bound.
    #[arg(long, env = "KONNECT_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,

    /// Build a snapshot after this many log entries since the last one. Default: 5000.
    #[arg(long, env = "KONNECT_SNAPSHOT_AFTER_ENTRIES")]
    pub snapshot_after_entries: Option<u64>,

    /// Log entries kept after a snapshot, so slightly lagging followers catch up from the log
    /// instead of a snapshot. Default: 1000.
    #[arg(long, env = "KONNECT_LOG_KEEP_AFTER_SNAPSHOT")]
    pub log_keep_after_snapshot: Option<u64>,

    /// Clients whose X-Forwarded-For/Proto/Host headers are believed: CIDRs, comma separated
    /// (`10.0.0.0/8,192.168.1.7/32`). From anyone else those headers are replaced. Default: none.
    #[arg(long, env = "KONNECT_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,

    /// Where the proxy's access log goes: `stdout`, `off`, or a file path (appended to).
    /// One JSON line per request. Default: off.
    #[arg(long, env = "KONNECT_ACCESS_LOG")]
    pub access_log: Option<String>,

    /// Where the AI gateway writes one usage record per call (JSON lines: consumer, model,
    /// provider, tokens, cost in micro-USD): a file path (appended to) or `off`.
    /// Default: <data-dir>/ai-usage.jsonl.
    #[arg(long, env = "KONNECT_AI_USAGE_LOG")]
    pub ai_usage_log: Option<String>,

    /// How long usage records stay in the node's usage WAL (<data-dir>/usage-wal) after the
    /// cluster has counted them, for per-call inspection: a duration such as `7d`, `12h`, or
    /// `0s` to delete them as soon as they are counted. Uncounted records are never deleted.
    /// Default: 7d.
    #[arg(long, env = "KONNECT_USAGE_RETENTION")]
    pub usage_retention: Option<String>,

    /// A client must send its request headers within this many milliseconds, or the connection
    /// is closed (slowloris defence). Default: 10000.
    #[arg(long, env = "KONNECT_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,

    /// A client that takes none of a response for this many milliseconds (it stopped reading)
    /// has its connection closed, and the request's upstream connection with it; the time
    /// counts from each write that has to wait, not over the whole response (nginx's
    /// `send_timeout`). Every client connection: HTTP/1.1, HTTP/2, TLS, upgraded WebSocket.
    /// Default: 60000.
    #[arg(long, env = "KONNECT_CLIENT_SEND_TIMEOUT_MS")]
    pub client_send_timeout_ms: Option<u64>,

    /// Largest request head (request line plus headers) in bytes; larger ones are refused.
    /// Default: 65536.
    #[arg(long, env = "KONNECT_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,

    /// On SIGTERM, in-flight proxied requests may finish for up to this many milliseconds.
    /// Default: 30000.
    #[arg(long, env = "KONNECT_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,

    /// Test hook: shifts this node's wall clock by this many milliseconds (negative: behind),
    /// to show that nodes with skewed clocks still agree on rate-limit windows. Never set it
    /// in production.
    #[arg(
        long,
        env = "KONNECT_TEST_CLOCK_OFFSET_MS",
        hide = true,
        allow_hyphen_values = true
    )]
    pub test_clock_offset_ms: Option<i64>,

    /// File with the cluster data keys that encrypt secrets at rest (TLS private keys,
    /// upstream credentials): one `<key-id>:<base64 of 32 bytes>` per line, the first one
    /// encrypts, all decrypt; `#` starts a comment. Make a key with `konnect secrets new-key`;
    /// every node needs the same keys. Instead of a file, KONNECT_SECRET_KEY may hold the key
    /// lines themselves (separated by newlines or `,`). Required: a node without a key refuses
    /// to start. Default: none, except with --dev (<data-dir>/secret-key, made on first
    /// start).
    #[arg(long, env = "KONNECT_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,

    /// Log filter in `tracing` syntax (`info`, `konnect=debug,openraft=warn`). Default: info
    /// for konnect, warn for libraries.
    #[arg(long, env = "KONNECT_LOG")]
    pub log: Option<String>,

    /// Log line format: `text` or `json`. Default: text.
    #[arg(long, env = "KONNECT_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// A setting that cannot be used, named by its flag.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

fn bad(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        message: message.into(),
    }
}

/// Where the cluster data keys come from (`secrets::Keyring`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretKeySource {
    /// `--secret-key-file`.
    File(PathBuf),
    /// The key lines of `KONNECT_SECRET_KEY`.
    Env(KeyText),
    /// `--dev` without either: this file in the data directory, made on first start.
    DevFile(PathBuf),
}

/// Key lines read from the environment; `{:?}` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyText(pub String);

impl std::fmt::Debug for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyText(<redacted>)")
    }
}

/// Picks the key source: the file or the variable (not both), else the dev file with
/// `--dev`; otherwise says how to make a key.
pub fn secret_key_source(
    file: Option<PathBuf>,
    env: Option<String>,
    dev: bool,
    data_dir: &std::path::Path,
) -> Result<SecretKeySource, ConfigError> {
    let env = env.filter(|e| !e.trim().is_empty());
    match (file, env) {
        (Some(_), Some(_)) => Err(bad(
            "--secret-key-file",
            format!(
                "both --secret-key-file and {} are set; give the keys one way",
                crate::secrets::KEY_ENV
            ),
        )),
        (Some(f), None) => Ok(SecretKeySource::File(f)),
        (None, Some(e)) => Ok(SecretKeySource::Env(KeyText(e))),
        (None, None) if dev => Ok(SecretKeySource::DevFile(data_dir.join("secret-key"))),
        (None, None) => Err(bad(
            "--secret-key-file",
            format!(
                "required: the cluster data key that encrypts secrets at rest. Make one with \
                 `konnect secrets new-key > konnect.key` (mode 0600; every node needs the same \
                 file) and start with `--secret-key-file konnect.key`, or put the key line in \
                 {}",
                crate::secrets::KEY_ENV
            ),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings resolved to concrete values and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dev: bool,
    pub node_id: u64,
    pub zone: String,
    pub data_dir: PathBuf,
    pub peer_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// `--admin-tls-cert` and `--admin-tls-key`: the admin port speaks TLS.
    pub admin_tls: Option<TlsFiles>,
    /// `--peer-tls-*`: the peer port requires mutual TLS with the cluster CA.
    pub peer_tls: Option<PeerTlsFiles>,
    pub proxy_addr: SocketAddr,
    pub proxy_tls_addr: Option<SocketAddr>,
    pub proxy_client_ca: Option<PathBuf>,
    pub key_usage_report: Duration,
    pub status_addr: SocketAddr,
    pub peers: BTreeMap<u64, String>,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub snapshot_after_entries: u64,
    pub log_keep_after_snapshot: u64,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub access_log: crate::gateway::access_log::AccessLogTarget,
    pub ai_usage_log: crate::ai::usage::UsageLogTarget,
    pub usage_retention: Duration,
    pub header_read_timeout: Duration,
    pub client_send_timeout: Duration,
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
    /// `--test-clock-offset-ms` (0 unless a test shifts this node's clock).
    pub test_clock_offset_ms: i64,
    pub secret_keys: SecretKeySource,
    pub log: String,
    pub log_format: LogFormat,
}

/// A certificate chain and its private key, as PEM files (read at start by `control_tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The peer port's mutual TLS: this node's certificate and key, and the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// `--admin-tls-cert` and `--admin-tls-key`: both or neither.
fn admin_tls(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (Some(_), None) => Err(bad(
            "--admin-tls-key",
            "required with --admin-tls-cert (give both, or neither for a plain admin port)",
        )),
        (None, Some(_)) => Err(bad(
            "--admin-tls-cert",
            "required with --admin-tls-key (give both, or neither for a plain admin port)",
        )),
    }
}

/// `--peer-tls-cert`, `--peer-tls-key` and `--peer-tls-ca`: all three or none.
fn peer_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<PeerTlsFiles>, ConfigError> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(PeerTlsFiles { cert, key, ca })),
        (cert, key, ca) => {
            let given: Vec<&str> = [
                ("--peer-tls-cert", cert.is_some()),
                ("--peer-tls-key", key.is_some()),
                ("--peer-tls-ca", ca.is_some()),
            ]
            .iter()
            .filter(|(_, set)| *set)
            .map(|(flag, _)| *flag)
            .collect();
            let missing = if cert.is_none() {
                "--peer-tls-cert"
            } else if key.is_none() {
                "--peer-tls-key"
            } else {
                "--peer-tls-ca"
            };
            Err(bad(
                missing,
                format!(
                    "required with {} (mutual TLS on the peer port needs all three of \
                     --peer-tls-cert, --peer-tls-key and --peer-tls-ca, or none)",
                    given.join(" and ")
                ),
            ))
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("built-in default address is valid")
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (id, a) = item
            .split_once('=')
            .ok_or_else(|| bad("--peers", format!("{item:?} is not ID=HOST:PORT")))?;
        let id: u64 = id.trim().parse().map_err(|_| {
            bad(
                "--peers",
                format!("{item:?}: node id {id:?} is not a positive integer"),
            )
        })?;
        if id == 0 {
            return Err(bad("--peers", format!("{item:?}: node ids start at 1")));
        }
        let a = a.trim();
        let (host, port) = a
            .rsplit_once(':')
            .ok_or_else(|| bad("--peers", format!("{item:?}: address {a:?} has no port")))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad(
                "--peers",
                format!("{item:?}: address {a:?} is not HOST:PORT"),
            ));
        }
        if peers.insert(id, a.to_string()).is_some() {
            return Err(bad("--peers", format!("node {id} is listed twice")));
        }
    }
    Ok(peers)
}

impl ServeArgs {
    /// Reads the `--config` file, if any, and fills in what flags and environment left unset.
    pub fn with_file(self) -> Result<ServeArgs, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
        let file: ServeArgs = toml::from_str(&text)
            .map_err(|e| bad("--config", format!("{}: {e}", path.display())))?;
        Ok(ServeArgs {
            config: self.config,
            dev: self.dev || file.dev,
            node_id: self.node_id.or(file.node_id),
            zone: self.zone.or(file.zone),
            data_dir: self.data_dir.or(file.data_dir),
            peer_addr: self.peer_addr.or(file.peer_addr),
            admin_addr: self.admin_addr.or(file.admin_addr),
            admin_tls_cert: self.admin_tls_cert.or(file.admin_tls_cert),
            admin_tls_key: self.admin_tls_key.or(file.admin_tls_key),
            peer_tls_cert: self.peer_tls_cert.or(file.peer_tls_cert),
            peer_tls_key: self.peer_tls_key.or(file.peer_tls_key),
            peer_tls_ca: self.peer_tls_ca.or(file.peer_tls_ca),
            proxy_addr: self.proxy_addr.or(file.proxy_addr),
            proxy_tls_addr: self.proxy_tls_addr.or(file.proxy_tls_addr),
            proxy_client_ca: self.proxy_client_ca.or(file.proxy_client_ca),
            key_usage_report_ms: self.key_usage_report_ms.or(file.key_usage_report_ms),
            status_addr: self.status_addr.or(file.status_addr),
            peers: self.peers.or(file.peers),
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms),
            election_timeout_min_ms: self
                .election_timeout_min_ms
                .or(file.election_timeout_min_ms),
            election_timeout_max_ms: self
                .election_timeout_max_ms
                .or(file.election_timeout_max_ms),
            snapshot_after_entries: self.snapshot_after_entries.or(file.snapshot_after_entries),
            log_keep_after_snapshot: self
                .log_keep_after_snapshot
                .or(file.log_keep_after_snapshot),
            trusted_proxies: self.trusted_proxies.or(file.trusted_proxies),
            access_log: self.access_log.or(file.access_log),
            ai_usage_log: self.ai_usage_log.or(file.ai_usage_log),
            usage_retention: self.usage_retention.or(file.usage_retention),
            header_read_timeout_ms: self.header_read_timeout_ms.or(file.header_read_timeout_ms),
            client_send_timeout_ms: self.client_send_timeout_ms.or(file.client_send_timeout_ms),
            max_header_bytes: self.max_header_bytes.or(file.max_header_bytes),
            drain_timeout_ms: self.drain_timeout_ms.or(file.drain_timeout_ms),
            test_clock_offset_ms: self.test_clock_offset_ms.or(file.test_clock_offset_ms),
            secret_key_file: self.secret_key_file.or(file.secret_key_file),
            log: self.log.or(file.log),
            log_format: self.log_format.or(file.log_format),
        })
    }

    /// Applies defaults and checks the combination.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let a = self.with_file()?;
        let node_id = match (a.node_id, a.dev) {
            (Some(0), _) => return Err(bad("--node-id", "node ids start at 1")),
            (Some(id), _) => id,
            (None, true) => 1,
            (None, false) => {
                return Err(bad(
                    "--node-id",
                    "required (or use --dev for a single-node trial)",
                ))
            }
        };
        let peer_addr = a.peer_addr.unwrap_or_else(|| addr("127.0.0.1:7101"));
        let mut peers = match &a.peers {
            Some(p) => parse_peers(p)?,
            None => BTreeMap::new(),
        };
        if a.dev && peers.is_empty() {
            peers.insert(node_id, peer_addr.to_string());
        }
        if let Some(listed) = peers.get(&node_id) {
            // The --peers entry is how the other nodes reach this one. A node bound to every
            // interface (0.0.0.0, as in a container) may be listed by any name or address on
            // its port; one bound to a single address must be listed at that address.
            let listed_port = listed.rsplit_once(':').map(|(_, p)| p);
            let consistent = if peer_addr.ip().is_unspecified() {
                listed_port == Some(peer_addr.port().to_string().as_str())
            } else {
                listed == &peer_addr.to_string()
            };
            if !consistent {
                return Err(bad(
                    "--peers",
                    format!("lists node {node_id} at {listed}, but --peer-addr is {peer_addr}"),
                ));
            }
        } else if !peers.is_empty() {
            return Err(bad(
                "--peers",
                format!("does not list this node ({node_id})"),
            ));
        }
        let heartbeat_ms = a.heartbeat_ms.unwrap_or(100);
        let min = a.election_timeout_min_ms.unwrap_or(600);
        let max = a.election_timeout_max_ms.unwrap_or(min * 2);
        if heartbeat_ms == 0 {
            return Err(bad("--heartbeat-ms", "must be at least 1"));
        }
        if min <= heartbeat_ms {
            return Err(bad(
                "--election-timeout-min-ms",
                format!(
                    "{min} must exceed the heartbeat ({heartbeat_ms} ms), ideally by 3x or more"
                ),
            ));
        }
        if max <= min {
            return Err(bad(
                "--election-timeout-max-ms",
                format!("{max} must exceed the minimum election timeout ({min} ms)"),
            ));
        }
        let log_format = match a.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(bad(
                    "--log-format",
                    format!("{other:?} is not text or json"),
                ))
            }
        };
        let admin_tls = admin_tls(a.admin_tls_cert.clone(), a.admin_tls_key.clone())?;
        let peer_tls = peer_tls(
            a.peer_tls_cert.clone(),
            a.peer_tls_key.clone(),
            a.peer_tls_ca.clone(),
        )?;
        let snapshot_after_entries = a.snapshot_after_entries.unwrap_or(5000);
        if snapshot_after_entries == 0 {
            return Err(bad("--snapshot-after-entries", "must be at least 1"));
        }
        let trusted_proxies = match &a.trusted_proxies {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| {
                    x.parse::<ipnet::IpNet>()
                        .or_else(|_| x.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            bad(
                                "--trusted-proxies",
                                format!("{x:?} is not a CIDR or IP address"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let access_log = a
            .access_log
            .as_deref()
            .unwrap_or("off")
            .parse()
            .map_err(|e: String| bad("--access-log", e))?;
        let max_header_bytes = a.max_header_bytes.unwrap_or(64 * 1024);
        if a.proxy_client_ca.is_some() && a.proxy_tls_addr.is_none() {
            return Err(bad(
                "--proxy-client-ca",
                "client certificates are only asked for on the TLS listener: set --proxy-tls-addr too",
            ));
        }
        if a.key_usage_report_ms.is_some_and(|ms| ms < 100) {
            return Err(bad("--key-usage-report-ms", "must be at least 100"));
        }
        if a.client_send_timeout_ms == Some(0) {
            return Err(bad(
                "--client-send-timeout-ms",
                "must be at least 1 (0 would close every connection whose client is slower than the proxy)",
            ));
        }
        if max_header_bytes < 1024 {
            return Err(bad("--max-header-bytes", "must be at least 1024"));
        }
        let data_dir = a.data_dir.unwrap_or_else(|| PathBuf::from("konnect-data"));
        let ai_usage_log = match a.ai_usage_log.as_deref() {
            Some("off") => crate::ai::usage::UsageLogTarget::Off,
            Some("") => return Err(bad("--ai-usage-log", "empty: use off or a file path")),
            Some(path) => crate::ai::usage::UsageLogTarget::File(PathBuf::from(path)),
            None => crate::ai::usage::UsageLogTarget::File(data_dir.join("ai-usage.jsonl")),
        };
        let usage_retention = match a.usage_retention.as_deref() {
            None => Duration::from_secs(7 * 86_400),
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                bad(
                    "--usage-retention",
                    format!("{text:?} is not a duration such as 7d or 12h: {e}"),
                )
            })?,
        };
        let secret_keys = secret_key_source(
            a.secret_key_file,
            std::env::var(crate::secrets::KEY_ENV).ok(),
            a.dev,
            &data_dir,
        )?;
        Ok(Settings {
            secret_keys,
            trusted_proxies,
            access_log,
            ai_usage_log,
            usage_retention,
            header_read_timeout: Duration::from_millis(a.header_read_timeout_ms.unwrap_or(10_000)),
            client_send_timeout: Duration::from_millis(a.client_send_timeout_ms.unwrap_or(60_000)),
            max_header_bytes,
            drain_timeout: Duration::from_millis(a.drain_timeout_ms.unwrap_or(30_000)),
            test_clock_offset_ms: a.test_clock_offset_ms.unwrap_or(0),
            dev: a.dev,
            node_id,
            zone: a.zone.unwrap_or_else(|| {
                if a.dev {
                    "dev".into()
                } else {
                    "default".into()
                }
            }),
            data_dir,
            peer_addr,
            admin_addr: a.admin_addr.unwrap_or_else(|| addr("127.0.0.1:7201")),
            admin_tls,
            peer_tls,
            proxy_addr: a.proxy_addr.unwrap_or_else(|| addr("127.0.0.1:8080")),
            proxy_tls_addr: a.proxy_tls_addr,
            proxy_client_ca: a.proxy_client_ca.clone(),
            key_usage_report: Duration::from_millis(a.key_usage_report_ms.unwrap_or(60_000)),
            status_addr: a.status_addr.unwrap_or_else(|| addr("127.0.0.1:7301")),
            peers,
            heartbeat: Duration::from_millis(heartbeat_ms),
            election_timeout_min: Duration::from_millis(min),
            election_timeout_max: Duration::from_millis(max),
            snapshot_after_entries,
            log_keep_after_snapshot: a.log_keep_after_snapshot.unwrap_or(1000),
            log: a.log.unwrap_or_else(|| "warn,konnect=info".into()),
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_list_errors_name_the_bad_item() {
        assert_eq!(parse_peers("1=127.0.0.1:7101, 2=h:7102").unwrap().len(), 2);
        let e = parse_peers("1=127.0.0.1").unwrap_err().to_string();
        assert!(e.contains("\"1=127.0.0.1\""), "{e}");
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1=a:1,1=b:2")
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, "node_id = 2\nzone = \"az-b\"\nheartbeat_ms = 50\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            zone: Some("az-c".into()),
            secret_key_file: Some("k".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.node_id, 2);
        assert_eq!(s.zone, "az-c");
        assert_eq!(s.heartbeat, Duration::from_millis(50));
    }

    #[test]
    fn admin_tls_needs_both_halves_and_the_error_names_the_missing_one() {
        let args = |cert: Option<&str>, key: Option<&str>| ServeArgs {
            node_id: Some(1),
            admin_tls_cert: cert.map(PathBuf::from),
            admin_tls_key: key.map(PathBuf::from),
            secret_key_file: Some("k".into()),
            ..Default::default()
        };
        let e = args(Some("c.pem"), None).resolve().unwrap_err();
        assert_eq!(e.setting, "--admin-tls-key", "{e}");
        let e = args(None, Some("k.pem")).resolve().unwrap_err();
        assert_eq!(e.setting, "--admin-tls-cert", "{e}");
        assert_eq!(args(None, None).resolve().unwrap().admin_tls, None);
        let s = args(Some("c.pem"), Some("k.pem")).resolve().unwrap();
        assert_eq!(
            s.admin_tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
    }

    #[test]
    fn peer_tls_needs_all_three_and_the_error_names_a_missing_one() {
        let args = |cert: bool, key: bool, ca: bool| ServeArgs {
            node_id: Some(1),
            peer_tls_cert: cert.then(|| "n.pem".into()),
            peer_tls_key: key.then(|| "n-key.pem".into()),
            peer_tls_ca: ca.then(|| "ca.pem".into()),
            secret_key_file: Some("k".into()),
            ..Default::default()
        };
        let e = args(true, true, false).resolve().unwrap_err();
        assert_eq!(e.setting, "--peer-tls-ca", "{e}");
        assert!(
            e.to_string()
                .contains("required with --peer-tls-cert and --peer-tls-key"),
            "{e}"
        );
        assert_eq!(
            args(false, true, true).resolve().unwrap_err().setting,
            "--peer-tls-cert"
        );
        assert_eq!(
            args(true, false, false).resolve().unwrap_err().setting,
            "--peer-tls-key"
        );
        assert!(args(false, false, false)
            .resolve()
            .unwrap()
            .peer_tls
            .is_none());
        assert!(args(true, true, true).resolve().unwrap().peer_tls.is_some());
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, "node-idd = 2\n").unwrap();
        let e = ServeArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_node_needs_a_secret_key_unless_dev_makes_one() {
        let dir = std::path::Path::new("/data");
        let e = secret_key_source(None, None, false, dir).unwrap_err();
        assert_eq!(e.setting, "--secret-key-file");
        assert!(e.message.contains("konnect secrets new-key"), "{e}");
        assert_eq!(
            secret_key_source(None, Some(" ".into()), true, dir).unwrap(),
            SecretKeySource::DevFile(dir.join("secret-key"))
        );
        assert_eq!(
            secret_key_source(Some("k".into()), None, true, dir).unwrap(),
            SecretKeySource::File("k".into())
        );
        let from_env = secret_key_source(None, Some("a:b".into()), false, dir).unwrap();
        assert!(!format!("{from_env:?}").contains("a:b"));
        assert!(secret_key_source(Some("k".into()), Some("a:b".into()), false, dir).is_err());
    }
}

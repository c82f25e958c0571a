//! TLS for the control plane: the admin port (server TLS, `--admin-tls-*`) and the peer port
//! (mutual TLS with the cluster CA, `--peer-tls-*`).
//!
//! The PEM files are read once at start; every error names the flag and the file and says
//! what was wrong, never what a key contains. The rustls configs use the ring provider, like
//! the proxy's TLS listener. `incoming` accepts TLS connections for tonic and logs each failed
//! handshake with its reason (throttled per client address); `tls_failure` finds the rustls
//! error behind a failed outgoing call, so the caller can say what to fix.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint, Identity};

use crate::config::{PeerTlsFiles, TlsFiles};

/// A client must finish its TLS handshake within this time, or the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The same failed handshake from the same address is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A TLS file that cannot be used: `--peer-tls-key /x/y: no private key found in PEM`.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {message}", path.display())]
pub struct TlsFileError {
    pub flag: &'static str,
    pub path: PathBuf,
    pub message: String,
}

fn file_error(flag: &'static str, path: &Path, message: impl Into<String>) -> TlsFileError {
    TlsFileError {
        flag,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === PEM files ===

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| file_error(flag, path, format!("cannot read: {e}")))
}

/// The certificates of a PEM file, in order (a chain: the node's certificate first).
fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, format!("not a valid PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no certificate found in PEM"));
    }
    Ok(certs)
}

/// The private key of a PEM file. Errors never quote the file: it holds a secret.
fn private_key(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => file_error(
            flag,
            path,
            "no private key found in PEM (expected a PKCS#8, PKCS#1 or SEC1 key)",
        ),
        _ => file_error(flag, path, "not a valid PEM private key (malformed PEM)"),
    })
}

fn root_store(
    flag: &'static str,
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<Arc<RootCertStore>, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| file_error(flag, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its key, read and checked against each other.
struct KeyedChain {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

fn keyed_chain(
    cert_flag: &'static str,
    cert: &Path,
    key_flag: &'static str,
    key: &Path,
) -> Result<KeyedChain, TlsFileError> {
    let cert_pem = read(cert_flag, cert)?;
    let chain = certificates(cert_flag, cert, &cert_pem)?;
    let key_pem = read(key_flag, key)?;
    let private = private_key(key_flag, key, &key_pem)?;
    Ok(KeyedChain {
        chain,
        key: private,
        cert_pem,
        key_pem,
    })
}

/// A rustls server config for `chain` (ALPN h2, for gRPC), mapping key problems to the flag.
fn server_config(
    keyed: KeyedChain,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    key_flag: &'static str,
    key_path: &Path,
    cert_flag: &'static str,
) -> Result<ServerConfig, TlsFileError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error(key_flag, key_path, format!("TLS setup: {e}")))?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(keyed.chain, keyed.key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => file_error(
                key_flag,
                key_path,
                format!("this key does not belong to the certificate of {cert_flag}"),
            ),
            other => file_error(key_flag, key_path, format!("unusable key: {other}")),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

// === admin port ===

/// The acceptor of the admin port: TLS with the `--admin-tls-cert` certificate, no client
/// certificates (callers prove themselves with a token).
pub fn admin_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsFileError> {
    let keyed = keyed_chain(
        "--admin-tls-cert",
        &files.cert,
        "--admin-tls-key",
        &files.key,
    )?;
    let config = server_config(
        keyed,
        None,
        "--admin-tls-key",
        &files.key,
        "--admin-tls-cert",
    )?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

// === peer port ===

/// Mutual TLS on the peer port: the acceptor for incoming peer calls, and what outgoing
/// peer channels need.
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub client: PeerClientTls,
}

/// How this node dials peers: `https://`, the cluster CA as the only root, and this node's
/// certificate as its client identity. Holds the key: never printed.
#[derive(Clone)]
pub struct PeerClientTls {
    identity: Identity,
    verifier: Arc<dyn ServerCertVerifier>,
}

impl PeerClientTls {
    /// Turns a `https://` endpoint into one that speaks mutual TLS with the cluster CA.
    pub fn configure(
        &self,
        endpoint: Endpoint,
        handshake_timeout: Duration,
    ) -> Result<Endpoint, tonic::transport::Error> {
        endpoint.tls_config_with_verifier(
            ClientTlsConfig::new()
                .identity(self.identity.clone())
                .timeout(handshake_timeout),
            self.verifier.clone(),
        )
    }
}

/// Reads the peer TLS files and checks them together: the key belongs to the certificate,
/// the certificate is issued by the CA and is valid for `advertised` (the address peers
/// dial), both as a server and as a client. A node that would be refused by its peers
/// refuses to start instead, saying why.
pub fn peer_tls(files: &PeerTlsFiles, advertised: SocketAddr) -> Result<PeerTls, TlsFileError> {
    let keyed = keyed_chain("--peer-tls-cert", &files.cert, "--peer-tls-key", &files.key)?;
    let ca_pem = read("--peer-tls-ca", &files.ca)?;
    let ca_certs = certificates("--peer-tls-ca", &files.ca, &ca_pem)?;
    let roots = root_store("--peer-tls-ca", &files.ca, ca_certs)?;
    let ca_error = |e: rustls::server::VerifierBuilderError| {
        file_error("--peer-tls-ca", &files.ca, format!("unusable CA: {e}"))
    };
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(ca_error)?;
    let server_verifier: Arc<dyn ServerCertVerifier> =
        WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(ca_error)?;

    let (end_entity, intermediates) = keyed
        .chain
        .split_first()
        .expect("certificates() returns at least one");
    let now = UnixTime::now();
    let not_from_ca = |e: rustls::Error| {
        file_error(
            "--peer-tls-cert",
            &files.cert,
            format!(
                "peers would refuse it: {} (checked against --peer-tls-ca {})",
                describe_certificate_error(&e),
                files.ca.display()
            ),
        )
    };
    client_verifier
        .verify_client_cert(end_entity, intermediates, now)
        .map_err(not_from_ca)?;
    if !advertised.ip().is_unspecified() {
        let name = ServerName::IpAddress(advertised.ip().into());
        server_verifier
            .verify_server_cert(end_entity, intermediates, &name, &[], now)
            .map_err(not_from_ca)?;
    }

    let identity = Identity::from_pem(&keyed.cert_pem, &keyed.key_pem);
    let config = server_config(
        keyed,
        Some(client_verifier),
        "--peer-tls-key",
        &files.key,
        "--peer-tls-cert",
    )?;
    Ok(PeerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        client: PeerClientTls {
            identity,
            verifier: server_verifier,
        },
    })
}

// === accepting ===

/// TLS connections accepted on `listener`, for tonic's `serve_with_incoming_shutdown`.
/// Handshakes run concurrently, each bounded by `HANDSHAKE_TIMEOUT`; a failed one is logged
/// with the client's address and the reason, and the connection dropped. The accept loop
/// ends when the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    port: &'static str,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let throttle = Arc::new(LogThrottle::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(port, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tx, acceptor, throttle) = (tx.clone(), acceptor.clone(), throttle.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        let reason = match find_rustls_error(&e) {
                            Some(tls) => describe_incoming_failure(port, tls),
                            None => e.to_string(),
                        };
                        throttle.log(port, remote, &reason);
                    }
                    Err(_) => throttle.log(
                        port,
                        remote,
                        &format!(
                            "the client did not finish the handshake within {} s",
                            HANDSHAKE_TIMEOUT.as_secs()
                        ),
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Logs a failed handshake at warn level once per address and reason every `LOG_EVERY`
/// (a misconfigured peer retries several times a second), at debug level otherwise.
#[derive(Default)]
struct LogThrottle {
    last: Mutex<HashMap<(IpAddr, String), Instant>>,
}

impl LogThrottle {
    fn log(&self, port: &'static str, remote: SocketAddr, reason: &str) {
        let now = Instant::now();
        let loud = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.len() > 1024 {
                last.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
            }
            match last.get(&(remote.ip(), reason.to_string())) {
                Some(at) if now.duration_since(*at) < LOG_EVERY => false,
                _ => {
                    last.insert((remote.ip(), reason.to_string()), now);
                    true
                }
            }
        };
        if loud {
            tracing::warn!(port, client = %remote, "TLS handshake failed: {reason}");
        } else {
            tracing::debug!(port, client = %remote, "TLS handshake failed: {reason}");
        }
    }
}

// === explaining failures ===

/// The rustls error somewhere in `error`'s chain, if a TLS failure caused it. rustls errors
/// travel inside `io::Error`s, whose `source()` skips them, so each `io::Error` is opened.
pub fn find_rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref()) {
                return Some(tls);
            }
        }
        current = e.source();
    }
    None
}

/// What went wrong with a certificate, in words, with rustls's name for it in brackets.
fn describe_certificate_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "certificate not trusted: it was not issued by the cluster CA of --peer-tls-ca (UnknownIssuer)".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("certificate not valid for the address dialled ({c}); issue it with that IP in `konnect certs init --hosts`")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("certificate expired ({c})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("certificate not valid yet ({c}); check the clocks")
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!("certificate not made for this use ({c}); node certificates need the serverAuth and clientAuth purposes, as `konnect certs init` makes them")
            }
            other => format!("bad certificate ({other})"),
        },
        other => other.to_string(),
    }
}

/// Why an incoming handshake on `port` failed, from the server's side.
fn describe_incoming_failure(port: &str, e: &rustls::Error) -> String {
    match e {
        rustls::Error::NoCertificatesPresented => format!(
            "the client sent no certificate; the {port} port requires one issued by --peer-tls-ca"
        ),
        rustls::Error::InvalidCertificate(_) => {
            format!("client {}", describe_certificate_error(e))
        }
        rustls::Error::InvalidMessage(_) if port == "admin" => "the client does not speak TLS (konnectctl with an http:// endpoint?); the admin port requires TLS: use https:// and --ca".into(),
        rustls::Error::InvalidMessage(_) => format!(
            "the client does not speak TLS (a node without --peer-tls-cert?); the {port} port requires TLS, so every node of the cluster needs peer TLS"
        ),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA | AlertDescription::BadCertificate),
        ) if port == "admin" => format!(
            "the client does not trust this node's certificate (alert {alert:?}); give konnectctl --ca with the CA that signed --admin-tls-cert"
        ),
        rustls::Error::AlertReceived(alert) => describe_alert(*alert),
        other => other.to_string(),
    }
}

fn describe_alert(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::UnknownCA | AlertDescription::BadCertificate => format!(
            "the other side does not trust this node's certificate (alert {alert:?}); are both certificates issued by the same cluster CA?"
        ),
        AlertDescription::CertificateRequired => format!(
            "the other side requires a client certificate (alert {alert:?}); give this node --peer-tls-cert"
        ),
        other => format!("the other side ended the handshake (alert {other:?})"),
    }
}

/// Why an outgoing call to a peer failed at the TLS level, from the dialling side, or
/// `None` when the failure was not about TLS.
pub fn tls_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    let tls = find_rustls_error(error)?;
    Some(match tls {
        rustls::Error::InvalidCertificate(_) => describe_certificate_error(tls),
        rustls::Error::AlertReceived(alert) => describe_alert(*alert),
        rustls::Error::InvalidMessage(_) => {
            "it does not answer with TLS (is it running without --peer-tls-cert? every node of a cluster needs peer TLS, or none)".into()
        }
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    /// A CA and node 1 from `konnect certs init`, the way users make them.
    fn pki(hosts: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init(&crate::certs::InitArgs {
            out: dir.path().to_path_buf(),
            nodes: 2,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            days: 30,
            force: false,
        })
        .unwrap();
        Pki { dir }
    }

    impl Pki {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn files(&self, cert: &str, key: &str, ca: &str) -> PeerTlsFiles {
            PeerTlsFiles {
                cert: self.path(cert),
                key: self.path(key),
                ca: self.path(ca),
            }
        }
    }

    fn err(r: Result<PeerTls, TlsFileError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn node_certificates_from_certs_init_are_accepted_for_their_addresses() {
        let p = pki(&["10.0.0.7"]);
        let files = p.files("node-1.pem", "node-1-key.pem", "ca.pem");
        assert!(peer_tls(&files, "127.0.0.1:7101".parse().unwrap()).is_ok());
        assert!(peer_tls(&files, "10.0.0.7:7101".parse().unwrap()).is_ok());
        assert!(peer_tls(&files, "0.0.0.0:7101".parse().unwrap()).is_ok());
        let admin = TlsFiles {
            cert: p.path("node-1.pem"),
            key: p.path("node-1-key.pem"),
        };
        assert!(admin_acceptor(&admin).is_ok());
    }

    #[test]
    fn a_certificate_not_valid_for_the_peer_address_is_refused_at_start() {
        let p = pki(&[]);
        let e = err(peer_tls(
            &p.files("node-1.pem", "node-1-key.pem", "ca.pem"),
            "10.9.9.9:7101".parse().unwrap(),
        ));
        assert!(e.starts_with("--peer-tls-cert "), "{e}");
        assert!(e.contains("not valid for the address"), "{e}");
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused_at_start() {
        let ours = pki(&[]);
        let theirs = pki(&[]);
        let files = PeerTlsFiles {
            cert: theirs.path("node-1.pem"),
            key: theirs.path("node-1-key.pem"),
            ca: ours.path("ca.pem"),
        };
        let e = err(peer_tls(&files, "127.0.0.1:7101".parse().unwrap()));
        assert!(e.contains("UnknownIssuer"), "{e}");
    }

    #[test]
    fn file_errors_name_the_flag_the_file_and_the_problem() {
        let p = pki(&[]);
        // A certificate where the key should be.
        let e = err(peer_tls(
            &p.files("node-1.pem", "node-1.pem", "ca.pem"),
            "127.0.0.1:1".parse().unwrap(),
        ));
        let key_path = p.path("node-1.pem");
        assert_eq!(
            e,
            format!(
                "--peer-tls-key {}: no private key found in PEM (expected a PKCS#8, PKCS#1 or SEC1 key)",
                key_path.display()
            )
        );
        // A key where the CA should be.
        let e = err(peer_tls(
            &p.files("node-1.pem", "node-1-key.pem", "node-1-key.pem"),
            "127.0.0.1:1".parse().unwrap(),
        ));
        assert!(e.starts_with("--peer-tls-ca "), "{e}");
        assert!(e.ends_with("no certificate found in PEM"), "{e}");
        // The key of another node.
        let e = err(peer_tls(
            &p.files("node-1.pem", "node-2-key.pem", "ca.pem"),
            "127.0.0.1:1".parse().unwrap(),
        ));
        assert!(e.starts_with("--peer-tls-key "), "{e}");
        assert!(e.contains("does not belong to the certificate"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        // A missing file.
        let e = err(peer_tls(
            &p.files("nope.pem", "node-1-key.pem", "ca.pem"),
            "127.0.0.1:1".parse().unwrap(),
        ));
        assert!(e.starts_with("--peer-tls-cert "), "{e}");
        assert!(e.contains("cannot read"), "{e}");
        // The admin pair reports its own flags.
        let e = admin_acceptor(&TlsFiles {
            cert: p.path("node-1-key.pem"),
            key: p.path("node-1-key.pem"),
        })
        .err()
        .expect("a key is no certificate")
        .to_string();
        assert!(e.starts_with("--admin-tls-cert "), "{e}");
    }

    #[test]
    fn rustls_errors_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let reason = tls_failure(&io).expect("a TLS failure");
        assert!(reason.starts_with("certificate not trusted"), "{reason}");
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(tls_failure(&plain).is_none());
    }
}

//! TLS to the admin API: which certificate authorities the client trusts on `https://`
//! endpoints (`TrustRoots`: the system's CA store, or the cluster CA given with `--ca`), and
//! what a failed handshake means, in words that say what to do.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::ClientError;

/// The certificate authorities trusted on `https://` endpoints.
#[derive(Debug, Clone, Default)]
pub enum TrustRoots {
    /// The operating system's CA store (for a node whose certificate a public or company CA
    /// issued).
    #[default]
    System,
    /// Only the CA certificates of a PEM file, such as the cluster CA of `konnect certs init`.
    CaFile {
        path: PathBuf,
        certs: Vec<CertificateDer<'static>>,
    },
}

impl TrustRoots {
    /// Reads a PEM file of one or more CA certificates (`--ca`).
    pub fn ca_file(path: impl AsRef<Path>) -> Result<TrustRoots, ClientError> {
        let path = path.as_ref();
        let invalid = |reason: String| ClientError::InvalidCa {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("not a valid PEM file: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("no certificate found in PEM".into()));
        }
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
        }
        Ok(TrustRoots::CaFile {
            path: path.to_path_buf(),
            certs,
        })
    }

    /// The verifier of server certificates, or why there is none (no system CAs).
    pub(crate) fn verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, String> {
        let mut roots = RootCertStore::empty();
        match self {
            TrustRoots::System => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(
                        "no system CA certificates found to verify it; pass --ca FILE (or set KONNECT_CA) with the CA that signed the node's certificate".into(),
                    );
                }
            }
            TrustRoots::CaFile { certs, .. } => {
                for cert in certs {
                    // Checked in `ca_file`.
                    let _ = roots.add(cert.clone());
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map(|v| v as Arc<dyn ServerCertVerifier>)
            .map_err(|e| format!("cannot use the trusted CAs: {e}"))
    }

    /// How the trusted CAs are named in messages.
    fn describe(&self) -> String {
        match self {
            TrustRoots::System => "the system's CA store".into(),
            TrustRoots::CaFile { path, .. } => format!("--ca {}", path.display()),
        }
    }
}

/// The rustls error somewhere in `error`'s chain. rustls errors travel inside `io::Error`s,
/// whose `source()` skips them, so each `io::Error` is opened.
fn find_rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
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

/// Why the TLS handshake with an admin endpoint failed and what to do, or `None` when the
/// failure was not about TLS.
pub(crate) fn tls_failure(error: &(dyn StdError + 'static), trust: &TrustRoots) -> Option<String> {
    let tls = find_rustls_error(error)?;
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => match trust {
            TrustRoots::System => "certificate not trusted; pass --ca FILE (or set KONNECT_CA) with the CA that signed the node's certificate (ca.pem of `konnect certs init`)".into(),
            TrustRoots::CaFile { .. } => format!(
                "certificate not trusted: it was not issued by a CA of {}",
                trust.describe()
            ),
        },
        rustls::Error::InvalidCertificate(
            c @ (CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
        ) => format!(
            "the certificate is not valid for this address ({c}); use a host name or IP it lists, or make it with that address in `konnect certs init --hosts`"
        ),
        rustls::Error::InvalidCertificate(
            c @ (CertificateError::Expired | CertificateError::ExpiredContext { .. }),
        ) => format!("the certificate has expired ({c})"),
        rustls::Error::InvalidCertificate(c) => format!("bad certificate ({c})"),
        rustls::Error::InvalidMessage(_) => {
            "the server did not answer with TLS; if the node runs without --admin-tls-cert, use an http:// endpoint".into()
        }
        rustls::Error::AlertReceived(alert @ AlertDescription::CertificateRequired) => format!(
            "the server requires a client certificate (alert {alert:?}); is this the peer port instead of the admin port?"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("the server ended the handshake (alert {alert:?})")
        }
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untrusted_certificate_says_to_pass_ca() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let reason = tls_failure(&io, &TrustRoots::System).expect("a TLS failure");
        assert!(
            reason.starts_with("certificate not trusted; pass --ca"),
            "{reason}"
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(tls_failure(&plain, &TrustRoots::System).is_none());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not pem\n").expect("write");
        let error = TrustRoots::ca_file(&path).expect_err("no certificate");
        assert_eq!(
            error.to_string(),
            format!("--ca {}: no certificate found in PEM", path.display())
        );
        let missing = TrustRoots::ca_file(dir.path().join("nope.pem")).expect_err("missing");
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }
}

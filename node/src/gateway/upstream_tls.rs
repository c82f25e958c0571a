//! TLS to `https://` targets: the rustls client configuration a Service's `tls` settings ask
//! for (trust roots, SNI, client certificate, ALPN), and the HTTPS connector around it. The
//! same function validates the settings at apply, so what is accepted always connects.

use std::sync::Arc;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::resources::service::{UpstreamProtocol, UpstreamTls};

/// A TLS setting that cannot be used: (field under `spec.tls`, why). Key material is never
/// quoted.
pub type TlsSettingError = (&'static str, String);

/// The client configuration for `tls`, or which field is wrong.
/// ALPN (http/1.1 or h2, from the Service's `protocol`) is added by the connector builder.
pub fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, TlsSettingError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("verify", e.to_string()))?;
    let builder = if tls.verify {
        builder.with_root_certificates(roots(tls.ca_pem.as_deref())?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    };
    let config = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = client_chain(cert)?;
            if crate::secrets::is_envelope(key) {
                return Err((
                    "client_key_pem",
                    "the key is still encrypted (internal error: decrypt before use)".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
                (
                    "client_key_pem",
                    "not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_string(),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                (
                    "client_key_pem",
                    format!("the key cannot be used with the client certificate: {e}"),
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err((
                "client_key_pem",
                "a client certificate needs its key".into(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                "client_cert_pem",
                "a client key needs its certificate".into(),
            ))
        }
    };
    if let Some(sni) = &tls.sni {
        ServerName::try_from(sni.clone())
            .map_err(|_| ("sni", format!("{sni:?} is not a host name")))?;
    }
    Ok(config)
}

/// Checks everything but the client key, which is encrypted (the stored form of a Service):
/// trust roots, SNI and the client certificate chain.
pub fn check_without_client_key(tls: &UpstreamTls) -> Result<(), TlsSettingError> {
    match &tls.client_cert_pem {
        Some(cert) => {
            client_chain(cert)?;
        }
        None => {
            return Err((
                "client_cert_pem",
                "a client key needs its certificate".into(),
            ))
        }
    }
    let without_identity = UpstreamTls {
        client_cert_pem: None,
        client_key_pem: None,
        ..tls.clone()
    };
    client_config(&without_identity).map(|_| ())
}

fn client_chain(cert: &str) -> Result<Vec<CertificateDer<'static>>, TlsSettingError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "client_cert_pem",
                format!("not a PEM certificate chain: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(("client_cert_pem", "no certificate found in the PEM".into()));
    }
    Ok(chain)
}

fn roots(ca_pem: Option<&str>) -> Result<RootCertStore, TlsSettingError> {
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| ("ca_pem", format!("not a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ("ca_pem", format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(("ca_pem", "no certificate found in the PEM".into()));
            }
        }
        None => {
            // The system's CA store; unreadable entries are skipped, as browsers do.
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}

/// The HTTPS-or-HTTP connector for a Service.
pub fn connector(
    http: HttpConnector,
    tls: Option<&UpstreamTls>,
    protocol: UpstreamProtocol,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let default_tls = UpstreamTls {
        verify: true,
        ca_pem: None,
        sni: None,
        client_cert_pem: None,
        client_key_pem: None,
    };
    let settings = tls.unwrap_or(&default_tls);
    let config = client_config(settings).map_err(|(field, m)| format!("spec.tls.{field}: {m}"))?;
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let builder = match &settings.sni {
        Some(sni) => {
            let name = ServerName::try_from(sni.clone()).map_err(|e| e.to_string())?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    Ok(match protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
    })
}

/// `verify: false`: accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

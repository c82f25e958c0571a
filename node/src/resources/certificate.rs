//! `kind: Certificate`: a PEM certificate chain and its private key, served by the proxy's TLS
//! listener for the SNI names listed. The key is a secret: the admin API never shows it.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::{parse_spec, KindDef, SpecError};

pub const KIND: KindDef = KindDef {
    name: "Certificate",
    validate: |spec| CertificateSpec::parse(spec).map(|_| ()),
    references: |_| Vec::new(),
};

/// Spec fields that are secrets: replaced by `<redacted>` in every admin API answer.
pub const SECRET_FIELDS: &[&str] = &["key_pem"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// The certificate chain in PEM, leaf first.
    pub cert_pem: String,
    /// The private key in PEM (PKCS#8, PKCS#1 or SEC1). Secret.
    pub key_pem: String,
    /// Host names this certificate answers for; `*.example.com` covers one label.
    pub snis: Vec<String>,
}

impl CertificateSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<CertificateSpec, SpecError> {
        let c: CertificateSpec = parse_spec(spec)?;
        c.certified_key()?;
        if c.snis.is_empty() {
            return Err(SpecError::new(
                "spec.snis",
                "at least one SNI name is required",
            ));
        }
        for (i, name) in c.snis.iter().enumerate() {
            let bare = name.strip_prefix("*.").unwrap_or(name);
            if bare.is_empty()
                || bare.starts_with('.')
                || !bare
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.'))
            {
                return Err(SpecError::new(
                    format!("spec.snis[{i}]"),
                    format!("{name:?} is not a host name (a leading '*.' wildcard is allowed)"),
                ));
            }
        }
        Ok(c)
    }

    /// The chain and key, checked to belong together, ready for rustls.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, SpecError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    SpecError::new("spec.cert_pem", format!("not a PEM certificate chain: {e}"))
                })?;
        if chain.is_empty() {
            return Err(SpecError::new(
                "spec.cert_pem",
                "no certificate found in the PEM",
            ));
        }
        // Never echo the key material in an error.
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|_| {
            SpecError::new(
                "spec.key_pem",
                "not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            )
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            SpecError::new(
                "spec.key_pem",
                format!("the key cannot be used with this certificate: {e}"),
            )
        })?;
        Ok(Arc::new(certified))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn a_certificate_needs_a_matching_key_and_names() {
        let (cert, key) = pair("api.example.com");
        let ok = serde_json::json!({"cert_pem": cert, "key_pem": key, "snis": ["api.example.com"]});
        assert!(CertificateSpec::parse(&ok).is_ok());

        let (_, other_key) = pair("other.example.com");
        let mismatch = serde_json::json!({"cert_pem": cert, "key_pem": other_key, "snis": ["api.example.com"]});
        let e = CertificateSpec::parse(&mismatch).unwrap_err();
        assert_eq!(e.field, "spec.key_pem");
        assert!(
            !e.message.contains("PRIVATE KEY"),
            "key material leaked: {e}"
        );

        let garbage = serde_json::json!({"cert_pem": "nope", "key_pem": key, "snis": ["a"]});
        assert_eq!(
            CertificateSpec::parse(&garbage).unwrap_err().field,
            "spec.cert_pem"
        );
    }
}

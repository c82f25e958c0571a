//! `kind: Certificate`: a PEM certificate chain and its private key, served by the proxy's TLS
//! listener for the SNI names listed. The key is a secret: the admin API never shows it, and
//! the state stores it encrypted (`secrets.rs`), so `parse` accepts an encrypted key without
//! looking inside; the admin write path checked the plaintext before encrypting it.

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

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// The certificate chain in PEM, leaf first.
    pub cert_pem: String,
    /// The private key in PEM (PKCS#8, PKCS#1 or SEC1). Secret.
    pub key_pem: String,
    /// Host names this certificate answers for; `*.example.com` covers one label.
    pub snis: Vec<String>,
}

impl std::fmt::Debug for CertificateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log line, even through `{:?}`.
        f.debug_struct("CertificateSpec")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &crate::resources::REDACTED)
            .field("snis", &self.snis)
            .finish()
    }
}

impl CertificateSpec {
    /// Parses and checks a spec. An encrypted `key_pem` (an `enc:v1:` envelope) is accepted
    /// as it is: only the chain is checked then, since `apply` holds no key.
    pub fn parse(spec: &serde_json::Value) -> Result<CertificateSpec, SpecError> {
        let c: CertificateSpec = parse_spec(spec)?;
        if crate::secrets::is_envelope(&c.key_pem) {
            c.chain()?;
        } else {
            c.certified_key()?;
        }
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

    /// The certificate chain, leaf first.
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, SpecError> {
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
        Ok(chain)
    }

    /// The chain and key, checked to belong together, ready for rustls. Needs the plaintext
    /// key: the caller decrypts first.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, SpecError> {
        let chain = self.chain()?;
        if crate::secrets::is_envelope(&self.key_pem) {
            return Err(SpecError::new(
                "spec.key_pem",
                "the key is still encrypted (internal error: decrypt before use)",
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

    #[test]
    fn an_encrypted_key_is_accepted_unread_while_the_chain_is_still_checked() {
        let (cert, key) = pair("api.example.com");
        let stored = serde_json::json!({"cert_pem": cert, "key_pem": "enc:v1:k1:AAAA", "snis": ["api.example.com"]});
        let c = CertificateSpec::parse(&stored).unwrap();
        // Using it needs the plaintext.
        assert_eq!(c.certified_key().unwrap_err().field, "spec.key_pem");
        let bad_chain =
            serde_json::json!({"cert_pem": "nope", "key_pem": "enc:v1:k1:AAAA", "snis": ["a"]});
        assert_eq!(
            CertificateSpec::parse(&bad_chain).unwrap_err().field,
            "spec.cert_pem"
        );
        let plain =
            serde_json::json!({"cert_pem": cert, "key_pem": key, "snis": ["api.example.com"]});
        let shown = format!("{:?}", CertificateSpec::parse(&plain).unwrap());
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}

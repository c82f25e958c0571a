//! `kind: ApiKey`: one consumer's API key, as stored: a SHA-256 hash and a short prefix.
//!
//! Keys are made by the node (`konnectctl keys create`, the admin `Keys` service), never
//! written by hand: the Resources API refuses to create or change this kind, so a stored key
//! hash always comes from 256 random bits. The key itself is shown once and never stored; its
//! hash is not a secret (nothing can be learnt from a SHA-256 of 256 random bits), so it is
//! neither encrypted nor redacted.

use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{parse_spec, KindDef, Reference, SpecError};

pub const KIND: KindDef = KindDef {
    name: "ApiKey",
    validate: |spec| ApiKeySpec::parse(spec).map(|_| ()),
    references: |spec| match ApiKeySpec::parse(spec) {
        Ok(k) => vec![Reference {
            kind: "Consumer",
            name: k.consumer,
            field: "spec.consumer".into(),
        }],
        Err(_) => Vec::new(),
    },
};

/// Every key starts with this, so leaked keys are recognisable (secret scanners, log reviews).
pub const KEY_PREFIX: &str = "knk_";
/// Hex characters of the random part (256 bits).
const SECRET_HEX: usize = 64;
/// Hex characters after the prefix that name the key (its id): 48 bits, shown in listings.
pub const ID_HEX: usize = 12;
/// Length of a whole key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + SECRET_HEX;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// The Consumer the key identifies.
    pub consumer: String,
    /// How the key begins (`knk_` and the id).
    pub prefix: String,
    /// SHA-256 of the whole key, hex.
    pub sha256: String,
    /// When the key was made (the admin node's clock).
    #[serde(default)]
    pub created_unix_ms: u64,
    /// After this instant the key is refused. Default: never.
    #[serde(default)]
    pub expires_unix_ms: Option<u64>,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
}

impl ApiKeySpec {
    pub fn parse(spec: &serde_json::Value) -> Result<ApiKeySpec, SpecError> {
        let k: ApiKeySpec = parse_spec(spec)?;
        if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SpecError::new("spec.sha256", "must be 64 hex characters"));
        }
        if !k.prefix.starts_with(KEY_PREFIX) || k.prefix.len() != KEY_PREFIX.len() + ID_HEX {
            return Err(SpecError::new(
                "spec.prefix",
                format!("must be {KEY_PREFIX} followed by {ID_HEX} hex characters"),
            ));
        }
        Ok(k)
    }

    /// The hash as bytes (validated to be 64 hex characters).
    pub fn hash(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut out).ok()?;
        Some(out)
    }
}

/// A freshly generated key.
pub struct NewKey {
    /// The whole key, to show once.
    pub key: String,
    /// Its id (the resource name).
    pub id: String,
    pub prefix: String,
    pub sha256_hex: String,
}

pub fn generate() -> NewKey {
    let mut secret = [0u8; SECRET_HEX / 2];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
    let id = key[KEY_PREFIX.len()..KEY_PREFIX.len() + ID_HEX].to_string();
    NewKey {
        prefix: format!("{KEY_PREFIX}{id}"),
        sha256_hex: hex::encode(Sha256::digest(key.as_bytes())),
        id,
        key,
    }
}

/// Whether a presented credential has the shape of one of our keys (checked before hashing,
/// so other bearer tokens cost nothing).
pub fn looks_like_key(s: &str) -> bool {
    s.len() == KEY_LEN
        && s.starts_with(KEY_PREFIX)
        && s.as_bytes()[KEY_PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_hexdigit())
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_256_random_bits_and_a_stable_shape() {
        let a = generate();
        let b = generate();
        assert_ne!(a.key, b.key);
        assert!(looks_like_key(&a.key));
        assert!(a.key.starts_with(&a.prefix));
        assert_eq!(hex::encode(hash_key(&a.key)), a.sha256_hex);
        let spec =
            serde_json::json!({"consumer": "alice", "prefix": a.prefix, "sha256": a.sha256_hex});
        assert!(ApiKeySpec::parse(&spec).unwrap().hash().is_some());
        assert!(!looks_like_key("knk_short"));
        let mut bad = a.key.clone();
        bad.pop();
        bad.push('z');
        assert!(!looks_like_key(&bad));
    }
}

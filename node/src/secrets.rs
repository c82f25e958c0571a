//! Secrets at rest: the cluster data keys (`Keyring`) and the envelope that a secret spec field
//! (a Certificate's `key_pem`, a Service's `tls.client_key_pem`) is stored as in the
//! replicated state: `enc:v1:<key-id>:<base64url(nonce || ciphertext+tag)>`, ChaCha20-Poly1305
//! with a random 96-bit nonce and `<kind>/<name>/<field>` as associated data, so a ciphertext
//! moved to another resource or field does not decrypt.
//!
//! Keys come from `--secret-key-file` or `KONNECT_SECRET_KEY`: one `<key-id>:<base64 of 32
//! bytes>` per line (or per `,` in the variable), `#` comments allowed. The first key is the
//! primary: it encrypts; every key decrypts. Encryption happens in the admin write path (it
//! needs randomness, which `apply` must not use); decryption where the gateway snapshot is
//! built. Errors name key ids, resources and fields, never key material or plaintext.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Prefix of every encrypted value; what follows is `<key-id>:<payload>`.
pub const ENVELOPE_PREFIX: &str = "enc:v1:";

/// Length of a data key in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// Environment variable holding the keys themselves (instead of `--secret-key-file`).
pub const KEY_ENV: &str = "KONNECT_SECRET_KEY";

/// Base64 for key lines: standard alphabet, padding optional.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Something wrong with the keys or an encrypted value. Never carries key bytes or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A line of the key file or variable that cannot be used.
    #[error("{source_name} line {line}: {message}")]
    KeyLine {
        source_name: String,
        line: usize,
        message: String,
    },
    #[error("{source_name}: no keys found; make one with `konnect secrets new-key`")]
    NoKeys { source_name: String },
    #[error("{source_name}: cannot read: {message}")]
    Unreadable {
        source_name: String,
        message: String,
    },
    #[error("encrypted with key {key_id:?}, which is not in this node's keyring (keys: {known})")]
    UnknownKey { key_id: String, known: String },
    #[error(
        "cannot decrypt with key {key_id:?}: the value was altered, was encrypted with another key of that id, or belongs to another resource or field"
    )]
    Undecryptable { key_id: String },
    #[error("not an encrypted value ({ENVELOPE_PREFIX}<key-id>:<data>)")]
    Malformed,
    #[error("the system random number generator failed")]
    Random,
}

// === impl Keyring ===

/// One named data key.
struct DataKey {
    id: String,
    key: LessSafeKey,
}

/// The data keys this node holds; the first is the primary.
pub struct Keyring {
    keys: Vec<DataKey>,
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids only: key bytes never reach a log line.
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl Keyring {
    /// Parses key lines: `<key-id>:<base64 of 32 bytes>`, one per line or separated by `,`;
    /// blank lines and `#` comments are ignored. `source_name` names the origin in errors
    /// (`--secret-key-file /etc/konnect/key`, `KONNECT_SECRET_KEY`).
    pub fn parse(text: &str, source_name: &str) -> Result<Keyring, SecretError> {
        let mut keys: Vec<DataKey> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let bad = |message: String| SecretError::KeyLine {
                source_name: source_name.to_string(),
                line,
                message,
            };
            let content = raw.split('#').next().unwrap_or_default();
            for item in content.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let Some((id, encoded)) = item.split_once(':') else {
                    return Err(bad("expected <key-id>:<base64 of 32 bytes>".into()));
                };
                let id = id.trim();
                validate_key_id(id).map_err(bad)?;
                let bytes = KEY_BASE64
                    .decode(encoded.trim())
                    .map_err(|_| bad(format!("key {id:?} is not valid base64")))?;
                if bytes.len() != KEY_LEN {
                    return Err(bad(format!(
                        "key {id:?} is {} bytes; keys are {KEY_LEN} bytes (256 bits): make one with `konnect secrets new-key`",
                        bytes.len()
                    )));
                }
                if keys.iter().any(|k| k.id == id) {
                    return Err(bad(format!("key id {id:?} appears twice")));
                }
                let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
                    .map_err(|_| bad(format!("key {id:?} cannot be used")))?;
                keys.push(DataKey {
                    id: id.to_string(),
                    key: LessSafeKey::new(unbound),
                });
            }
        }
        if keys.is_empty() {
            return Err(SecretError::NoKeys {
                source_name: source_name.to_string(),
            });
        }
        Ok(Keyring {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Reads and parses a key file; `flag` names where the path came from in errors
    /// (`--secret-key-file`).
    pub fn from_file(path: &std::path::Path, flag: &str) -> Result<Keyring, SecretError> {
        let source_name = format!("{flag} {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| SecretError::Unreadable {
            source_name: source_name.clone(),
            message: e.to_string(),
        })?;
        Keyring::parse(&text, &source_name)
    }

    /// The id of the key that encrypts.
    pub fn primary_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    pub fn contains(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.id == key_id)
    }

    /// Encrypts `plaintext` under the primary key, bound to `aad` (see [`aad`]).
    pub fn encrypt(&self, plaintext: &str, aad: &str) -> Result<String, SecretError> {
        let primary = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut buf = plaintext.as_bytes().to_vec();
        primary
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretError::Random)?;
        let mut payload = Vec::with_capacity(NONCE_LEN + buf.len());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&buf);
        Ok(format!(
            "{ENVELOPE_PREFIX}{}:{}",
            primary.id,
            URL_SAFE_NO_PAD.encode(payload)
        ))
    }

    /// Decrypts an envelope made by [`Keyring::encrypt`] with the same `aad`.
    pub fn decrypt(&self, envelope: &str, aad: &str) -> Result<String, SecretError> {
        let (key_id, payload) = split_envelope(envelope).ok_or(SecretError::Malformed)?;
        let key =
            self.keys
                .iter()
                .find(|k| k.id == key_id)
                .ok_or_else(|| SecretError::UnknownKey {
                    key_id: key_id.to_string(),
                    known: self.key_ids().join(", "),
                })?;
        let undecryptable = || SecretError::Undecryptable {
            key_id: key_id.to_string(),
        };
        let mut bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| undecryptable())?;
        if bytes.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(undecryptable());
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| undecryptable())?;
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut sealed)
            .map_err(|_| undecryptable())?;
        String::from_utf8(plain.to_vec()).map_err(|_| undecryptable())
    }
}

/// Key ids: 1-64 of `A-Z a-z 0-9 . _ -` (no `:` or `,`, which separate).
fn validate_key_id(id: &str) -> Result<(), String> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Ok(())
    } else {
        Err(format!(
            "key id {id:?} must be 1-64 letters, digits, '.', '_' or '-'"
        ))
    }
}

// === envelopes ===

/// Whether a stored value is an encrypted envelope (rather than plaintext).
pub fn is_envelope(value: &str) -> bool {
    value.starts_with(ENVELOPE_PREFIX)
}

/// The key id an envelope names, if it is one.
pub fn envelope_key_id(value: &str) -> Option<&str> {
    split_envelope(value).map(|(id, _)| id)
}

fn split_envelope(value: &str) -> Option<(&str, &str)> {
    let rest = value.strip_prefix(ENVELOPE_PREFIX)?;
    let (id, payload) = rest.split_once(':')?;
    (!id.is_empty() && !payload.is_empty()).then_some((id, payload))
}

/// The associated data binding a secret to its place: `<kind>/<name>/<field path>`.
pub fn aad(kind: &str, name: &str, field: &str) -> String {
    format!("{kind}/{name}/{field}")
}

/// A fresh key line for a key file: `<id>:<base64 of 32 random bytes>`. Without an id, a
/// random one (`key-<8 hex digits>`).
pub fn new_key_line(id: Option<&str>) -> Result<String, String> {
    let rng = SystemRandom::new();
    let id = match id {
        Some(id) => {
            validate_key_id(id)?;
            id.to_string()
        }
        None => {
            let mut suffix = [0u8; 4];
            rng.fill(&mut suffix)
                .map_err(|_| SecretError::Random.to_string())?;
            format!("key-{}", hex::encode(suffix))
        }
    };
    let mut key = [0u8; KEY_LEN];
    rng.fill(&mut key)
        .map_err(|_| SecretError::Random.to_string())?;
    Ok(format!(
        "{id}:{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

// === secret fields of a spec ===

/// A secret field of a spec that cannot be decrypted: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {error}")]
pub struct FieldError {
    pub field: &'static str,
    pub error: SecretError,
}

/// The string at a dotted path of a JSON spec (`tls.client_key_pem`), if there is one.
pub fn field_str<'a>(spec: &'a serde_json::Value, path: &str) -> Option<&'a str> {
    path.split('.')
        .try_fold(spec, |v, part| v.get(part))
        .and_then(serde_json::Value::as_str)
}

fn field_mut<'a>(spec: &'a mut serde_json::Value, path: &str) -> Option<&'a mut serde_json::Value> {
    path.split('.').try_fold(spec, |v, part| v.get_mut(part))
}

/// Replaces every envelope in the secret fields of a `kind` spec by its plaintext. A
/// plaintext value (stored before encryption existed) is left as it is.
pub fn decrypt_spec(
    keyring: &Keyring,
    kind: &str,
    name: &str,
    spec: &mut serde_json::Value,
) -> Result<(), FieldError> {
    for field in crate::resources::secret_fields(kind) {
        let Some(value) = field_mut(spec, field) else {
            continue;
        };
        let Some(text) = value.as_str().filter(|s| is_envelope(s)) else {
            continue;
        };
        let plain = keyring
            .decrypt(text, &aad(kind, name, field))
            .map_err(|error| FieldError { field, error })?;
        *value = serde_json::Value::String(plain);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(lines: &str) -> Keyring {
        Keyring::parse(lines, "test").unwrap()
    }

    fn key_line(id: &str) -> String {
        new_key_line(Some(id)).unwrap()
    }

    #[test]
    fn a_value_round_trips_and_the_envelope_names_the_primary_key() {
        let ring = ring_of(&format!("{}\n{}\n", key_line("new"), key_line("old")));
        let env = ring
            .encrypt("-----BEGIN PRIVATE KEY-----", "Certificate/a/key_pem")
            .unwrap();
        assert!(env.starts_with("enc:v1:new:"), "{env}");
        assert!(!env.contains("PRIVATE"));
        assert_eq!(envelope_key_id(&env), Some("new"));
        assert_eq!(
            ring.decrypt(&env, "Certificate/a/key_pem").unwrap(),
            "-----BEGIN PRIVATE KEY-----"
        );
        // Two encryptions of one value differ (random nonce).
        assert_ne!(
            env,
            ring.encrypt("-----BEGIN PRIVATE KEY-----", "Certificate/a/key_pem")
                .unwrap()
        );
    }

    #[test]
    fn a_ciphertext_moved_to_another_resource_or_field_does_not_decrypt() {
        let ring = ring_of(&key_line("k1"));
        let env = ring.encrypt("secret", "Certificate/a/key_pem").unwrap();
        for other in ["Certificate/b/key_pem", "Service/a/tls.client_key_pem"] {
            let e = ring.decrypt(&env, other).unwrap_err();
            assert_eq!(
                e,
                SecretError::Undecryptable {
                    key_id: "k1".into()
                }
            );
        }
    }

    #[test]
    fn a_tampered_ciphertext_does_not_decrypt() {
        let ring = ring_of(&key_line("k1"));
        let env = ring.encrypt("secret value", "x").unwrap();
        let (head, payload) = env.rsplit_once(':').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("{head}:{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert!(matches!(
            ring.decrypt(&tampered, "x"),
            Err(SecretError::Undecryptable { .. })
        ));
        let truncated = format!("{head}:{}", URL_SAFE_NO_PAD.encode(&bytes[..10]));
        assert!(ring.decrypt(&truncated, "x").is_err());
        assert_eq!(ring.decrypt("enc:v1:k1", "x"), Err(SecretError::Malformed));
    }

    #[test]
    fn an_unknown_key_id_is_named_with_the_known_ones() {
        let old = ring_of(&key_line("old"));
        let env = old.encrypt("secret", "x").unwrap();
        let new = ring_of(&key_line("new"));
        let e = new.decrypt(&env, "x").unwrap_err();
        assert_eq!(
            e,
            SecretError::UnknownKey {
                key_id: "old".into(),
                known: "new".into()
            }
        );
        assert!(e.to_string().contains("\"old\""), "{e}");
        // Same id, different key bytes: refused, naming the id.
        let impostor = ring_of(&key_line("old"));
        assert_eq!(
            impostor.decrypt(&env, "x").unwrap_err(),
            SecretError::Undecryptable {
                key_id: "old".into()
            }
        );
    }

    #[test]
    fn bad_key_lines_are_refused_with_their_line_number() {
        let good = key_line("a");
        let cases = [
            (format!("# keys\n{good}\nnocolon\n"), 3, "expected"),
            (format!("{good}\n\nb:not*base64\n"), 3, "base64"),
            (format!("{good}\n{good}\n"), 2, "twice"),
            ("bad id:AAAA\n".to_string(), 1, "key id"),
            (
                format!("{good}\nshort:{}\n", KEY_BASE64.encode([7u8; 16])),
                2,
                "16 bytes",
            ),
        ];
        for (text, line, needle) in cases {
            match Keyring::parse(&text, "--secret-key-file k") {
                Err(e @ SecretError::KeyLine { line: l, .. }) => {
                    assert_eq!(l, line, "{e}");
                    assert!(e.to_string().contains(needle), "{e}");
                    assert!(e.to_string().starts_with("--secret-key-file k line"), "{e}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            Keyring::parse("# nothing\n\n", "KONNECT_SECRET_KEY"),
            Err(SecretError::NoKeys { .. })
        ));
    }

    #[test]
    fn key_errors_never_show_key_material() {
        let short = KEY_BASE64.encode([9u8; 31]);
        let e = Keyring::parse(&format!("k:{short}"), "env").unwrap_err();
        assert!(!e.to_string().contains(&short), "{e}");
        assert!(e.to_string().contains("31 bytes"), "{e}");
    }

    #[test]
    fn the_variable_form_separates_keys_with_commas_and_the_first_is_primary() {
        let text = format!("{} , {}", key_line("second-gen"), key_line("first-gen"));
        let ring = ring_of(&text);
        assert_eq!(ring.primary_id(), "second-gen");
        assert_eq!(ring.key_ids(), vec!["second-gen", "first-gen"]);
        assert!(format!("{ring:?}").contains("second-gen"));
    }

    #[test]
    fn decrypt_spec_restores_nested_secret_fields_and_names_a_failing_one() {
        let ring = ring_of(&key_line("k"));
        let env = ring
            .encrypt("KEY", &aad("Service", "s", "tls.client_key_pem"))
            .unwrap();
        let mut spec = serde_json::json!({"tls": {"client_key_pem": env}});
        decrypt_spec(&ring, "Service", "s", &mut spec).unwrap();
        assert_eq!(field_str(&spec, "tls.client_key_pem"), Some("KEY"));

        let mut moved = serde_json::json!({"tls": {"client_key_pem": env}});
        let e = decrypt_spec(&ring, "Service", "other", &mut moved).unwrap_err();
        assert_eq!(e.field, "tls.client_key_pem");
    }
}

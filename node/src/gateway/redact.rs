//! Log redaction: masks credentials and the values named by LogRedaction resources in what the
//! access log (and, later, AI call logs) write. Built once per snapshot; applying it costs
//! nothing when a string has nothing to mask.

use std::borrow::Cow;
use std::collections::HashSet;

use regex::{Regex, RegexSet};

use crate::resources::log_redaction::LogRedactionSpec;

/// Header values never logged in clear, whatever the config says.
const BUILT_IN_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];
/// Query parameters whose values are never logged in clear.
const BUILT_IN_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "id_token",
    "password",
    "secret",
    "signature",
    "sig",
];
const DEFAULT_REPLACEMENT: &str = "[redacted]";

/// konnect's own credentials (API keys, admin tokens) are recognisable by their prefix and are
/// masked wherever they appear, whatever the parameter or field is called.
fn own_credential() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?:knk|kadm)_[0-9a-fA-F]{8,}").expect("valid regex"))
}

pub struct Redactor {
    headers: HashSet<String>,
    params: HashSet<String>,
    /// Bare field names masked at any depth.
    any_depth: HashSet<String>,
    /// Dotted paths from the top of a JSON document.
    paths: Vec<Vec<String>>,
    patterns: Option<(RegexSet, Vec<Regex>)>,
    replacement: String,
}

impl Default for Redactor {
    fn default() -> Redactor {
        Redactor::new(&[], &[]).expect("built-in rules compile")
    }
}

impl Redactor {
    /// The built-in rules plus every LogRedaction spec, plus `extra_params` (query parameters
    /// that routes read keys from).
    pub fn new(specs: &[LogRedactionSpec], extra_params: &[String]) -> Result<Redactor, String> {
        let mut r = Redactor {
            headers: BUILT_IN_HEADERS.iter().map(|s| s.to_string()).collect(),
            params: BUILT_IN_PARAMS.iter().map(|s| s.to_string()).collect(),
            any_depth: HashSet::new(),
            paths: Vec::new(),
            patterns: None,
            replacement: DEFAULT_REPLACEMENT.into(),
        };
        r.params
            .extend(extra_params.iter().map(|p| p.to_ascii_lowercase()));
        let mut patterns = Vec::new();
        for spec in specs {
            r.headers
                .extend(spec.headers.iter().map(|h| h.to_ascii_lowercase()));
            r.params
                .extend(spec.query_params.iter().map(|p| p.to_ascii_lowercase()));
            for f in &spec.json_fields {
                if f.contains('.') {
                    r.paths.push(f.split('.').map(str::to_string).collect());
                } else {
                    r.any_depth.insert(f.clone());
                }
            }
            patterns.extend(spec.patterns.iter().cloned());
            if let Some(rep) = &spec.replacement {
                r.replacement = rep.clone();
            }
        }
        if !patterns.is_empty() {
            let set = RegexSet::new(&patterns).map_err(|e| e.to_string())?;
            let each = patterns
                .iter()
                .map(|p| Regex::new(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            r.patterns = Some((set, each));
        }
        Ok(r)
    }

    /// `s` with konnect's own credentials and every pattern match masked.
    pub fn text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let s: Cow<'a, str> = if s.contains("knk_") || s.contains("kadm_") {
            match own_credential().replace_all(s, regex::NoExpand(&self.replacement)) {
                Cow::Owned(o) => Cow::Owned(o),
                Cow::Borrowed(_) => Cow::Borrowed(s),
            }
        } else {
            Cow::Borrowed(s)
        };
        let Some((set, each)) = &self.patterns else {
            return s;
        };
        let hits = set.matches(&s);
        if !hits.matched_any() {
            return s;
        }
        let mut out = s.into_owned();
        for i in hits.iter() {
            out = each[i]
                .replace_all(&out, regex::NoExpand(&self.replacement))
                .into_owned();
        }
        Cow::Owned(out)
    }

    /// A query string with the values of sensitive parameters masked, then patterns applied.
    pub fn query(&self, q: &str) -> String {
        let masked: Vec<Cow<str>> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if self.is_secret_param(k) => {
                    Cow::Owned(format!("{k}={}", self.replacement))
                }
                _ => Cow::Borrowed(kv),
            })
            .collect();
        self.text(&masked.join("&")).into_owned()
    }

    fn is_secret_param(&self, k: &str) -> bool {
        let decoded = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
        self.params.contains(&decoded.to_ascii_lowercase())
    }

    /// A header value as it may be logged.
    pub fn header<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if self.headers.contains(&name.to_ascii_lowercase()) {
            Cow::Owned(self.replacement.clone())
        } else {
            self.text(value)
        }
    }

    /// Masks the configured fields and pattern matches of a JSON document in place.
    pub fn json(&self, v: &mut serde_json::Value) {
        for path in &self.paths {
            mask_path(v, path, &self.replacement);
        }
        self.walk(v);
    }

    fn walk(&self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if self.any_depth.contains(k) {
                        *child = serde_json::Value::String(self.replacement.clone());
                    } else {
                        self.walk(child);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| self.walk(i)),
            serde_json::Value::String(s) => {
                if let Cow::Owned(masked) = self.text(s) {
                    *s = masked;
                }
            }
            _ => {}
        }
    }
}

fn mask_path(v: &mut serde_json::Value, path: &[String], replacement: &str) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    match v {
        serde_json::Value::Object(map) => {
            if let Some(child) = map.get_mut(head) {
                if rest.is_empty() {
                    *child = serde_json::Value::String(replacement.to_string());
                } else {
                    mask_path(child, rest, replacement);
                }
            }
        }
        // A path goes through arrays: `items.card` masks `card` in every item.
        serde_json::Value::Array(items) => {
            for i in items {
                mask_path(i, path, replacement);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pci() -> Redactor {
        let spec = LogRedactionSpec {
            headers: vec!["X-Card".into()],
            query_params: vec!["card".into()],
            json_fields: vec!["password".into(), "payment.card.number".into()],
            patterns: vec![r"\b\d(?:[ -]?\d){12,15}\b".into()],
            replacement: None,
        };
        Redactor::new(&[spec], &["k".into()]).unwrap()
    }

    #[test]
    fn credentials_are_masked_without_any_config() {
        let r = Redactor::default();
        let key = crate::resources::api_key::generate().key;
        assert_eq!(
            r.query(&format!("custom={key}&a=1")),
            "custom=[redacted]&a=1"
        );
        assert_eq!(r.text(&format!("/x/{key}/y")), "/x/[redacted]/y");
        assert_eq!(r.header("Authorization", "Bearer abc"), "[redacted]");
        assert_eq!(r.header("accept", "text/html"), "text/html");
        assert_eq!(
            r.query("a=1&apikey=knk_123&Token=x&b=2"),
            "a=1&apikey=[redacted]&Token=[redacted]&b=2"
        );
        assert_eq!(r.query("a=1&flag"), "a=1&flag");
    }

    #[test]
    fn configured_fields_and_patterns_are_masked_everywhere() {
        let r = pci();
        assert_eq!(r.query("k=s3cret&card=x"), "k=[redacted]&card=[redacted]");
        assert_eq!(
            r.text("/pay/4111 1111 1111 1111/receipt"),
            "/pay/[redacted]/receipt"
        );
        assert_eq!(r.header("x-card", "whatever"), "[redacted]");
        let mut doc = json!({
            "user": {"password": "hunter2", "name": "alice"},
            "payment": {"card": {"number": "x", "exp": "12/30"}},
            "note": "card 4111-1111-1111-1111 please",
            "items": [{"password": "p"}]
        });
        r.json(&mut doc);
        assert_eq!(doc["user"]["password"], "[redacted]");
        assert_eq!(doc["user"]["name"], "alice");
        assert_eq!(doc["payment"]["card"]["number"], "[redacted]");
        assert_eq!(doc["payment"]["card"]["exp"], "12/30");
        assert_eq!(doc["note"], "card [redacted] please");
        assert_eq!(doc["items"][0]["password"], "[redacted]");
    }

    #[test]
    fn specs_with_bad_rules_are_refused_with_the_field() {
        let bad = |v| LogRedactionSpec::parse(&v).unwrap_err().field;
        assert_eq!(bad(json!({"patterns": ["("]})), "spec.patterns[0]");
        assert_eq!(bad(json!({"patterns": ["x*"]})), "spec.patterns[0]");
        assert_eq!(bad(json!({"headers": ["a b"]})), "spec.headers[0]");
        assert_eq!(bad(json!({"json_fields": ["a..b"]})), "spec.json_fields[0]");
    }
}

//! `kind: RateLimit`: at most `limit` requests per `window` for each value of `key`, across the
//! whole cluster (`strict`) or per node (`local`).
//!
//! `strict` is held by the Raft state machine: it grants units of each (limit, key, window) to
//! nodes in batches and never more than the limit in total (`raft/apply.rs`, grants), and the
//! nodes admit requests from what they were granted (`gateway/ratelimit.rs`).

use serde::Deserialize;

use super::duration::Dur;
use super::{parse_spec, KindDef, Reference, SpecError};

pub const KIND: KindDef = KindDef {
    name: "RateLimit",
    validate: |spec| RateLimitSpec::parse(spec).map(|_| ()),
    references: |spec| match RateLimitSpec::parse(spec) {
        Ok(r) => r.applies_to.reference().into_iter().collect(),
        Err(_) => Vec::new(),
    },
};

/// Shortest and longest windows: 1 s up to 31 days (monthly quotas).
pub const MIN_WINDOW_MS: u64 = 1_000;
pub const MAX_WINDOW_MS: u64 = 31 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Which requests the limit counts: `{route: NAME}`, `{service: NAME}`, `{consumer: NAME}`,
    /// `{team: NAME}`, `{group: NAME}` or `{global: true}`.
    pub applies_to: AppliesTo,
    /// What the limit is counted per: `consumer`, `credential`, `team`, `ip`, `route`, or
    /// `header:<name>`. Default `consumer`. Requests without that value (no consumer on a
    /// public route, no such header) share one bucket named `-`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Requests allowed per window, at least 1.
    pub limit: u64,
    /// The window, 1s to 31d. Windows are aligned to the leader's clock (a `1m` window starts
    /// at each whole minute of leader time), so all nodes count the same window.
    pub window: Dur,
    /// `strict` (default): never more than `limit` per window across the cluster; a request
    /// that finds no local allocation waits up to 100 ms for one, then gets 429.
    /// `fast`: like `strict`, but a node without units admits at once on credit, up to
    /// `borrow` requests, and repays from its next grants: never more than
    /// limit + nodes x borrow per window (docs/consistency.md), and no request waits.
    /// `local`: `limit` per window on each node, no coordination (N nodes admit up to
    /// N x limit).
    #[serde(default)]
    pub mode: Mode,
    /// `fast` only: requests one node may admit ahead of its grants (its credit), from 1 to
    /// `limit`. Default: 1% of the limit, at least 1.
    #[serde(default)]
    pub borrow: Option<u64>,
    /// What a node does in `strict` mode when it cannot get grants (no quorum):
    /// `local_fallback` (default: admit up to limit / cluster size per window locally),
    /// `fail_open` (admit) or `fail_closed` (429).
    #[serde(default)]
    pub on_quorum_loss: OnQuorumLoss,
}

fn default_key() -> String {
    "consumer".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Strict,
    Fast,
    Local,
}

impl Mode {
    /// Held by the state machine's grants (`strict` and `fast`), not per node.
    pub fn is_granted(self) -> bool {
        matches!(self, Mode::Strict | Mode::Fast)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnQuorumLoss {
    #[default]
    LocalFallback,
    FailOpen,
    FailClosed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AppliesTo {
    Route(String),
    Service(String),
    Consumer(String),
    Team(String),
    Group(String),
    Global(bool),
}

impl AppliesTo {
    /// Refuses `global: false`, which would apply to nothing.
    pub fn check(&self) -> Result<(), SpecError> {
        if *self == AppliesTo::Global(false) {
            return Err(SpecError::new(
                "spec.applies_to.global",
                "global: false applies to nothing; use global: true or another scope",
            ));
        }
        Ok(())
    }

    pub fn reference(&self) -> Option<Reference> {
        let (kind, name) = match self {
            AppliesTo::Route(n) => ("Route", n),
            AppliesTo::Service(n) => ("Service", n),
            AppliesTo::Consumer(n) => ("Consumer", n),
            AppliesTo::Team(n) => ("Team", n),
            AppliesTo::Group(_) | AppliesTo::Global(_) => return None,
        };
        Some(Reference {
            kind,
            name: name.clone(),
            field: format!("spec.applies_to.{}", kind.to_lowercase()),
        })
    }
}

/// What a limit is counted per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Consumer,
    Credential,
    Team,
    Ip,
    Route,
    Header(String),
}

impl RateLimitSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<RateLimitSpec, SpecError> {
        let r: RateLimitSpec = parse_spec(spec)?;
        if r.limit == 0 {
            return Err(SpecError::new(
                "spec.limit",
                "must be at least 1 (to block everything, use an ACL)",
            ));
        }
        let ms = r.window.0.as_millis();
        if ms < MIN_WINDOW_MS as u128 || ms > MAX_WINDOW_MS as u128 || !ms.is_multiple_of(1000) {
            return Err(SpecError::new(
                "spec.window",
                "must be whole seconds from 1s to 31d",
            ));
        }
        r.applies_to.check()?;
        r.key().map_err(|m| SpecError::new("spec.key", m))?;
        match (r.mode, r.borrow) {
            (Mode::Fast, Some(b)) if b == 0 || b > r.limit => {
                return Err(SpecError::new(
                    "spec.borrow",
                    format!("must be from 1 to the limit ({})", r.limit),
                ))
            }
            (Mode::Strict | Mode::Local, Some(_)) => {
                return Err(SpecError::new(
                    "spec.borrow",
                    "only a `fast` limit borrows; remove it or set mode: fast",
                ))
            }
            _ => {}
        }
        Ok(r)
    }

    /// Requests a node may admit on credit: `borrow` for `fast` limits, 0 otherwise.
    pub fn borrow(&self) -> u64 {
        match self.mode {
            Mode::Fast => self.borrow.unwrap_or((self.limit / 100).max(1)),
            Mode::Strict | Mode::Local => 0,
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.window.0.as_millis() as u64
    }

    pub fn key(&self) -> Result<LimitKey, String> {
        parse_key(&self.key)
    }
}

/// Parses what a limit is counted per: `consumer`, `credential`, `team`, `ip`, `route` or
/// `header:<name>`.
pub fn parse_key(key: &str) -> Result<LimitKey, String> {
    Ok(match key {
        "consumer" => LimitKey::Consumer,
        "credential" => LimitKey::Credential,
        "team" => LimitKey::Team,
        "ip" => LimitKey::Ip,
        "route" => LimitKey::Route,
        other => match other.strip_prefix("header:") {
            Some(h) if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                LimitKey::Header(h.to_ascii_lowercase())
            }
            _ => {
                return Err(format!(
                "unknown key {other:?}: use consumer, credential, team, ip, route or header:<name>"
            ))
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_limit_names_its_scope_key_and_window() {
        let r = RateLimitSpec::parse(&json!({
            "applies_to": {"route": "echo"}, "key": "header:X-Tenant", "limit": 100, "window": "1m"
        }))
        .unwrap();
        assert_eq!(r.window_ms(), 60_000);
        assert_eq!(r.key().unwrap(), LimitKey::Header("x-tenant".into()));
        assert_eq!(r.mode, Mode::Strict);
        assert_eq!(r.borrow(), 0);
        let fast = |extra: serde_json::Value| {
            let mut v = json!({"applies_to": {"global": true}, "limit": 1000, "window": "1m",
                               "mode": "fast"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            RateLimitSpec::parse(&v).unwrap().borrow()
        };
        assert_eq!(fast(json!({})), 10, "1% of the limit");
        assert_eq!(fast(json!({"limit": 5})), 1, "at least one");
        assert_eq!(fast(json!({"borrow": 3})), 3);
        let refs = (KIND.references)(
            &json!({"applies_to": {"route": "echo"}, "limit": 1, "window": "1s"}),
        );
        assert_eq!((refs[0].kind, refs[0].name.as_str()), ("Route", "echo"));
    }

    #[test]
    fn bad_limits_are_refused_with_the_field() {
        let bad = |v: serde_json::Value| RateLimitSpec::parse(&v).unwrap_err().field;
        let base = |extra: serde_json::Value| {
            let mut v = json!({"applies_to": {"global": true}, "limit": 10, "window": "1m"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        assert_eq!(bad(base(json!({"limit": 0}))), "spec.limit");
        assert_eq!(bad(base(json!({"limit": -5}))), "spec.limit");
        assert_eq!(bad(base(json!({"window": "500ms"}))), "spec.window");
        assert_eq!(bad(base(json!({"window": "32d"}))), "spec.window");
        assert_eq!(bad(base(json!({"key": "tenant"}))), "spec.key");
        assert_eq!(bad(base(json!({"mode": "eventual"}))), "spec.mode");
        assert_eq!(
            bad(base(json!({"mode": "fast", "borrow": 0}))),
            "spec.borrow"
        );
        assert_eq!(
            bad(base(json!({"mode": "fast", "borrow": 11}))),
            "spec.borrow"
        );
        assert_eq!(bad(base(json!({"borrow": 2}))), "spec.borrow");
        assert_eq!(
            bad(base(json!({"applies_to": {"global": false}}))),
            "spec.applies_to.global"
        );
    }
}

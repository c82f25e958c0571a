//! `kind: TokenLimit`: at most `tokens` model tokens (input + output) per `window` for each
//! consumer (or team, key, or everyone) on the calls it covers, across the whole cluster.
//!
//! ```yaml
//! kind: TokenLimit
//! name: gpt-tpm
//! spec: {applies_to: {model: gpt}, key: consumer, tokens: 100000, window: 1m}
//! ```
//!
//! Enforced like blocking Budgets (`ai/quota.rs`): a call's worst-case tokens are reserved
//! from the node's grant of the (limit, key, window) before it is forwarded and settled to
//! the tokens it used after; the state machine never grants more than `tokens` per window.

use serde::Deserialize;

use super::budget::{scope_reference, RawScope, Scope};
use super::duration::Dur;
use super::{parse_spec, KindDef, SpecError};

pub const KIND: KindDef = KindDef {
    name: "TokenLimit",
    validate: |spec| TokenLimitSpec::parse(spec).map(|_| ()),
    references: |spec| {
        TokenLimitSpec::parse(spec)
            .ok()
            .and_then(|t| scope_reference(&t.scope))
            .into_iter()
            .collect()
    },
};

/// Shortest and longest windows: 1 s to 1 day.
const MIN_WINDOW_MS: u64 = 1_000;
const MAX_WINDOW_MS: u64 = 86_400_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenLimit {
    applies_to: RawScope,
    #[serde(default)]
    key: Option<String>,
    tokens: i64,
    #[serde(default)]
    window: Option<Dur>,
    #[serde(default)]
    on_quorum_loss: Option<String>,
}

/// What a token limit is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKey {
    /// Each consumer on its own (anonymous calls share one count, `-`).
    Consumer,
    Team,
    /// Each API key on its own.
    Key,
    /// One count for every call covered.
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLimitSpec {
    pub scope: Scope,
    pub key: TokenKey,
    /// Input + output tokens per window, at least 1.
    pub tokens: u64,
    /// Windows of leader time, aligned like RateLimit windows (a `1m` window starts at each
    /// whole minute). Default 1m.
    pub window_ms: u64,
    /// Without quorum: `fail_open` (default: the limit protects providers, not money, so
    /// calls go on once the node's grant is used) or `fail_closed`.
    pub fail_open: bool,
}

impl TokenLimitSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<TokenLimitSpec, SpecError> {
        let raw: RawTokenLimit = parse_spec(spec)?;
        let scope = raw.applies_to.scope("one TokenLimit each")?;
        let key = match raw.key.as_deref() {
            None | Some("consumer") => TokenKey::Consumer,
            Some("team") => TokenKey::Team,
            Some("key") => TokenKey::Key,
            Some("global") => TokenKey::Global,
            Some(other) => {
                return Err(SpecError::new(
                    "spec.key",
                    format!("{other:?}: use consumer, team, key or global"),
                ))
            }
        };
        if raw.tokens < 1 {
            return Err(SpecError::new(
                "spec.tokens",
                format!("{}: must be at least 1", raw.tokens),
            ));
        }
        let window = raw
            .window
            .map_or(std::time::Duration::from_secs(60), |d| d.0);
        let window_ms = window.as_millis() as u64;
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) || window.subsec_nanos() != 0 {
            return Err(SpecError::new(
                "spec.window",
                "must be whole seconds from 1s to 24h",
            ));
        }
        let fail_open = match raw.on_quorum_loss.as_deref() {
            None | Some("fail_open") => true,
            Some("fail_closed") => false,
            Some(other) => {
                return Err(SpecError::new(
                    "spec.on_quorum_loss",
                    format!("{other:?}: use fail_open or fail_closed"),
                ))
            }
        };
        Ok(TokenLimitSpec {
            scope,
            key,
            tokens: raw.tokens as u64,
            window_ms,
            fail_open,
        })
    }

    /// The window (start, end) in unix ms that leader time `now_ms` falls in.
    pub fn window_bounds(&self, now_ms: u64) -> (u64, u64) {
        let start = now_ms - now_ms % self.window_ms;
        (start, start + self.window_ms)
    }

    /// The value a call is counted under, from who made it.
    pub fn key_of<'a>(&self, team: &'a str, consumer: &'a str, key_id: &'a str) -> &'a str {
        let v = match self.key {
            TokenKey::Consumer => consumer,
            TokenKey::Team => team,
            TokenKey::Key => key_id,
            TokenKey::Global => return "",
        };
        if v.is_empty() {
            "-"
        } else {
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_token_limit_counts_tokens_per_key_and_window() {
        let t = TokenLimitSpec::parse(&json!({"applies_to": {"model": "gpt"}, "tokens": 100000}))
            .unwrap();
        assert_eq!(
            (t.scope.clone(), t.key, t.tokens, t.window_ms, t.fail_open),
            (
                Scope::Model("gpt".into()),
                TokenKey::Consumer,
                100_000,
                60_000,
                true
            )
        );
        assert_eq!(t.window_bounds(125_000), (120_000, 180_000));
        assert_eq!(t.key_of("research", "alice", "abc"), "alice");
        assert_eq!(t.key_of("research", "", "abc"), "-");
        for (spec, want) in [
            (
                json!({"applies_to": {"model": "gpt"}, "tokens": 0}),
                "spec.tokens: 0: must be at least 1",
            ),
            (
                json!({"applies_to": {"model": "gpt"}, "tokens": -5}),
                "spec.tokens: -5",
            ),
            (
                json!({"applies_to": {"model": "gpt"}, "tokens": 5, "window": "2d"}),
                "spec.window",
            ),
            (
                json!({"applies_to": {"model": "gpt"}, "tokens": 5, "key": "ip"}),
                "spec.key: \"ip\"",
            ),
            (
                json!({"applies_to": {}, "tokens": 5}),
                "spec.applies_to: name one scope",
            ),
        ] {
            let e = TokenLimitSpec::parse(&spec).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}

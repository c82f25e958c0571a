//! `kind: Budget`: a cap on AI spend per calendar period (UTC) for one scope: a team, a
//! consumer, an API key, a model, or everything (`global`).
//!
//! ```yaml
//! kind: Budget
//! name: research-monthly
//! spec: {applies_to: {team: research}, limit_usd: "250.00", period: month, action: block}
//! ```
//!
//! `block` budgets are enforced before a call is forwarded (its worst-case cost is reserved
//! from the cluster-wide grant of the budget, `ai/quota.rs`); `alert` budgets are only
//! counted, with an audit entry when their period's spend crosses the limit. Several budgets
//! may apply to one call: all of them do.

use serde::Deserialize;

use super::{parse_spec, KindDef, Reference, SpecError};

pub const KIND: KindDef = KindDef {
    name: "Budget",
    validate: |spec| BudgetSpec::parse(spec).map(|_| ()),
    references,
};

fn references(spec: &serde_json::Value) -> Vec<Reference> {
    BudgetSpec::parse(spec)
        .ok()
        .and_then(|b| scope_reference(&b.scope))
        .into_iter()
        .collect()
}

/// Largest limit: a trillion dollars (keeps every sum of micro-USD far from overflow).
const MAX_LIMIT_MICROS: u64 = 1_000_000_000_000 * 1_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    applies_to: RawScope,
    /// Dollars as a decimal string (`"250.00"`), at most six decimals (micro-USD).
    limit_usd: serde_json::Value,
    period: String,
    #[serde(default = "block")]
    action: String,
    #[serde(default)]
    on_quorum_loss: Option<String>,
}

fn block() -> String {
    "block".into()
}

/// `applies_to` as written: one of its fields set (checked by [`RawScope::scope`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    team: Option<String>,
    consumer: Option<String>,
    /// An API key's id (as `konnectctl keys list` shows it).
    key: Option<String>,
    model: Option<String>,
    global: Option<bool>,
}

/// Whose calls a budget counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Team(String),
    Consumer(String),
    /// An API key id.
    Key(String),
    /// The model name callers ask for.
    Model(String),
    Global,
}

impl RawScope {
    /// The one scope named; `several` says what to write instead of naming two.
    pub fn scope(self, several: &str) -> Result<Scope, SpecError> {
        let mut scopes = Vec::new();
        for (name, value) in [
            ("team", self.team.map(Scope::Team)),
            ("consumer", self.consumer.map(Scope::Consumer)),
            ("key", self.key.map(Scope::Key)),
            ("model", self.model.map(Scope::Model)),
        ] {
            if let Some(scope) = value {
                if scope.value().trim().is_empty() {
                    return Err(SpecError::new(
                        format!("spec.applies_to.{name}"),
                        "must not be empty",
                    ));
                }
                scopes.push(scope);
            }
        }
        match self.global {
            Some(true) => scopes.push(Scope::Global),
            Some(false) => return Err(SpecError::new(
                "spec.applies_to.global",
                "only `global: true` is meaningful; name a team, consumer, key or model instead",
            )),
            None => {}
        }
        match scopes.len() {
            1 => Ok(scopes.remove(0)),
            0 => Err(SpecError::new(
                "spec.applies_to",
                "name one scope: team, consumer, key, model, or global: true",
            )),
            _ => Err(SpecError::new(
                "spec.applies_to",
                format!("name exactly one scope (for several, write {several}: all apply)"),
            )),
        }
    }
}

/// The resource a scope names, for referential integrity.
pub fn scope_reference(scope: &Scope) -> Option<Reference> {
    let (kind, field) = match scope {
        Scope::Team(_) => ("Team", "spec.applies_to.team"),
        Scope::Consumer(_) => ("Consumer", "spec.applies_to.consumer"),
        Scope::Model(_) => ("Model", "spec.applies_to.model"),
        Scope::Key(_) | Scope::Global => return None,
    };
    Some(Reference {
        kind,
        name: scope.value().to_string(),
        field: field.into(),
    })
}

impl Scope {
    /// `team`, `consumer`, `key`, `model` or `global`.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Team(_) => "team",
            Scope::Consumer(_) => "consumer",
            Scope::Key(_) => "key",
            Scope::Model(_) => "model",
            Scope::Global => "global",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Scope::Team(v) | Scope::Consumer(v) | Scope::Key(v) | Scope::Model(v) => v,
            Scope::Global => "",
        }
    }

    /// Whether a call by (team, consumer, key id, model) counts against this scope.
    pub fn covers(&self, team: &str, consumer: &str, key_id: &str, model: &str) -> bool {
        match self {
            Scope::Team(t) => t == team,
            Scope::Consumer(c) => c == consumer,
            Scope::Key(k) => k == key_id,
            Scope::Model(m) => m == model,
            Scope::Global => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    /// Monday to Sunday (ISO weeks).
    Week,
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Calls that would exceed the budget are refused with 429.
    Block,
    /// Only counted: an audit entry when the period's spend crosses the limit.
    Alert,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSpec {
    pub scope: Scope,
    pub limit_micros: u64,
    pub period: Period,
    pub action: Action,
    /// Without a quorum a node spends what it holds of the budget; beyond that it refuses
    /// (`fail_closed`, the default: the budget is never exceeded) or lets calls through
    /// uncounted against it (`fail_open`).
    pub fail_open: bool,
}

impl BudgetSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<BudgetSpec, SpecError> {
        let raw: RawBudget = parse_spec(spec)?;
        let scope = raw.applies_to.scope("one Budget each")?;
        let limit_micros = parse_usd(&raw.limit_usd)?;
        let period = match raw.period.as_str() {
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            other => {
                return Err(SpecError::new(
                    "spec.period",
                    format!("{other:?}: use day, week or month"),
                ))
            }
        };
        let action = match raw.action.as_str() {
            "block" => Action::Block,
            "alert" => Action::Alert,
            other => {
                return Err(SpecError::new(
                    "spec.action",
                    format!("{other:?}: use block or alert"),
                ))
            }
        };
        let fail_open = match raw.on_quorum_loss.as_deref() {
            None | Some("fail_closed") => false,
            Some("fail_open") => true,
            Some(other) => {
                return Err(SpecError::new(
                    "spec.on_quorum_loss",
                    format!("{other:?}: use fail_closed or fail_open"),
                ))
            }
        };
        Ok(BudgetSpec {
            scope,
            limit_micros,
            period,
            action,
            fail_open,
        })
    }

    /// The period (start, end) in unix ms, UTC, that `now_ms` falls in.
    pub fn period_bounds(&self, now_ms: u64) -> (u64, u64) {
        period_bounds(self.period, now_ms)
    }
}

/// Dollars as a decimal string with at most six decimals, to integer micro-USD. A JSON number
/// is refused: `0.1` is not exact in binary floating point, and money must be.
fn parse_usd(value: &serde_json::Value) -> Result<u64, SpecError> {
    let field = "spec.limit_usd";
    let text = match value {
        serde_json::Value::String(s) => s.trim(),
        _ => {
            return Err(SpecError::new(
                field,
                "write the amount as a string of dollars, e.g. \"250.00\"",
            ))
        }
    };
    let bad = || {
        SpecError::new(
            field,
            format!("{text:?} is not an amount of dollars such as \"250.00\" (at most 6 decimals)"),
        )
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if text.starts_with('-') {
        return Err(SpecError::new(field, format!("{text:?}: must be positive")));
    }
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 6
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let frac_micros: u64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    let micros = whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac_micros))
        .filter(|m| *m <= MAX_LIMIT_MICROS)
        .ok_or_else(|| SpecError::new(field, format!("{text:?}: at most one trillion dollars")))?;
    if micros == 0 {
        return Err(SpecError::new(
            field,
            "must be more than zero (delete the Budget to lift it)",
        ));
    }
    Ok(micros)
}

/// Days since 1970-01-01 to (year, month).
fn year_month(days: i64) -> (i64, u32) {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// (year, month) to days since 1970-01-01 of its first day.
fn first_day(y: i64, m: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const DAY_MS: u64 = 86_400_000;

/// The calendar period (UTC) that `now_ms` falls in, as (start, end) unix ms.
pub fn period_bounds(period: Period, now_ms: u64) -> (u64, u64) {
    let day = now_ms / DAY_MS;
    match period {
        Period::Day => (day * DAY_MS, (day + 1) * DAY_MS),
        Period::Week => {
            // 1970-01-01 was a Thursday: Monday is 3 days later in the cycle.
            let monday = day - (day + 3) % 7;
            (monday * DAY_MS, (monday + 7) * DAY_MS)
        }
        Period::Month => {
            let (y, m) = year_month(day as i64);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                first_day(y, m) as u64 * DAY_MS,
                first_day(ny, nm) as u64 * DAY_MS,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(spec: serde_json::Value) -> String {
        BudgetSpec::parse(&spec).unwrap_err().to_string()
    }

    #[test]
    fn a_budget_names_one_scope_an_exact_amount_and_a_calendar_period() {
        let b = BudgetSpec::parse(&json!({"applies_to": {"team": "research"},
            "limit_usd": "250.00", "period": "month"}))
        .unwrap();
        assert_eq!(b.scope, Scope::Team("research".into()));
        assert_eq!(b.limit_micros, 250_000_000);
        assert_eq!((b.action, b.fail_open), (Action::Block, false));
        let b = BudgetSpec::parse(&json!({"applies_to": {"global": true},
            "limit_usd": "0.000001", "period": "day", "action": "alert"}))
        .unwrap();
        assert_eq!(
            (b.scope, b.limit_micros, b.action),
            (Scope::Global, 1, Action::Alert)
        );
        assert_eq!(
            BudgetSpec::parse(&json!({"applies_to": {"key": "ab12cd34ef56"},
                "limit_usd": " 12 ", "period": "week"}))
            .unwrap()
            .limit_micros,
            12_000_000
        );

        for (spec, want) in [
            (
                json!({"applies_to": {"team": "r"}, "limit_usd": "-5", "period": "day"}),
                "spec.limit_usd: \"-5\": must be positive",
            ),
            (
                json!({"applies_to": {"team": "r"}, "limit_usd": "12.3456789", "period": "day"}),
                "at most 6 decimals",
            ),
            (
                json!({"applies_to": {"team": "r"}, "limit_usd": "1e3", "period": "day"}),
                "is not an amount of dollars",
            ),
            (
                json!({"applies_to": {"team": "r"}, "limit_usd": 250.0, "period": "day"}),
                "write the amount as a string",
            ),
            (
                json!({"applies_to": {"team": "r"}, "limit_usd": "0.00", "period": "day"}),
                "must be more than zero",
            ),
            (
                json!({"applies_to": {"team": "r"}, "limit_usd": "99999999999999", "period": "day"}),
                "at most one trillion",
            ),
            (
                json!({"applies_to": {"project": "x"}, "limit_usd": "1", "period": "day"}),
                "unknown field `project`",
            ),
            (
                json!({"applies_to": {}, "limit_usd": "1", "period": "day"}),
                "spec.applies_to: name one scope",
            ),
            (
                json!({"applies_to": {"team": "a", "model": "b"}, "limit_usd": "1", "period": "day"}),
                "name exactly one scope",
            ),
            (
                json!({"applies_to": {"team": "r"}, "limit_usd": "1", "period": "year"}),
                "spec.period: \"year\": use day, week or month",
            ),
            (
                json!({"applies_to": {"team": "r"}, "limit_usd": "1", "period": "day", "action": "warn"}),
                "spec.action",
            ),
        ] {
            let e = err(spec);
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn periods_are_utc_calendar_days_iso_weeks_and_months() {
        // 2026-11-25T13:00:00Z, a Wednesday.
        let now = 1_795_611_600_000;
        let day = |d: &str| {
            humantime::parse_rfc3339(&format!("{d}T00:00:00Z"))
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        assert_eq!(
            period_bounds(Period::Day, now),
            (day("2026-11-25"), day("2026-11-26"))
        );
        assert_eq!(
            period_bounds(Period::Week, now),
            (day("2026-11-23"), day("2026-11-30"))
        );
        assert_eq!(
            period_bounds(Period::Month, now),
            (day("2026-11-01"), day("2026-12-01"))
        );
        assert_eq!(
            period_bounds(Period::Month, day("2026-12-31") + 1),
            (day("2026-12-01"), day("2027-01-01"))
        );
        assert_eq!(
            period_bounds(Period::Month, day("2028-02-29")),
            (day("2028-02-01"), day("2028-03-01"))
        );
        // The last millisecond of a period is in it; the next is not.
        let (start, end) = period_bounds(Period::Week, now);
        assert_eq!(period_bounds(Period::Week, end - 1), (start, end));
        assert_eq!(period_bounds(Period::Week, end).0, end);
    }
}

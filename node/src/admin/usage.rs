//! `konnect.admin.v1.Usage`: spend queries over the AI cost ledger's aggregates (per day, team,
//! consumer, model, provider and zone), read from this node's replica of the state, so every
//! node gives the same answer once it has applied the same entries.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use konnect_proto::admin::v1 as api;
use konnect_proto::admin::v1::usage_server::Usage;
use konnect_proto::state::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Permission};
use super::{count_request, AdminError};
use crate::node::NodeHandle;

pub struct UsageService {
    pub node: NodeHandle,
    pub auth: Authenticator,
}

/// What `group_by` may name, besides the stored dimensions.
const GROUPS: [&str; 7] = [
    "day", "month", "team", "consumer", "model", "provider", "zone",
];
/// Most groups one answer holds: a query that would return more must be narrowed.
const MAX_GROUPS: usize = 100_000;

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (UTC).
fn parse_day(field: &str, text: &str) -> Result<u32, AdminError> {
    let at = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).map_err(|_| {
        AdminError::invalid(format!("{field}: {text:?} is not a date (YYYY-MM-DD)"))
    })?;
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AdminError::invalid(format!("{field}: {text:?} is before 1970")))?
        .as_secs();
    Ok((secs / 86_400) as u32)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_name(day: u32) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(day as u64 * 86_400);
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_string()
}

fn add(total: &mut api::SpendTotals, row: &pb::SpendRow) {
    total.requests = total.requests.saturating_add(row.requests);
    total.failed = total.failed.saturating_add(row.failed);
    total.input_tokens = total.input_tokens.saturating_add(row.input_tokens);
    total.output_tokens = total.output_tokens.saturating_add(row.output_tokens);
    total.cached_tokens = total.cached_tokens.saturating_add(row.cached_tokens);
    total.cost_micros = total.cost_micros.saturating_add(row.cost_micros);
}

#[tonic::async_trait]
impl Usage for UsageService {
    async fn query_spend(
        &self,
        req: Request<api::QuerySpendRequest>,
    ) -> Result<Response<api::QuerySpendResponse>, Status> {
        count_request("Usage.QuerySpend");
        self.auth.authorize(&req, Permission::Read).await?;
        let r = req.into_inner();
        let first = match r.since.as_str() {
            "" => 0,
            s => parse_day("since", s)?,
        };
        let last = match r.until.as_str() {
            "" => u32::MAX,
            s => parse_day("until", s)?,
        };
        if first > last {
            return Err(AdminError::invalid(format!(
                "since ({}) is after until ({})",
                r.since, r.until
            ))
            .into());
        }
        for (i, g) in r.group_by.iter().enumerate() {
            if !GROUPS.contains(&g.as_str()) {
                return Err(AdminError::invalid(format!(
                    "group_by: unknown dimension {g:?}; use {}",
                    GROUPS.join(", ")
                ))
                .into());
            }
            if r.group_by[..i].contains(g) {
                return Err(AdminError::invalid(format!("group_by: {g:?} named twice")).into());
            }
        }
        // Filters on the stored dimensions, in their key order; "-" means "none recorded".
        let filters: [Option<&str>; 5] = [&r.team, &r.consumer, &r.model, &r.provider, &r.zone]
            .map(|f| match f.as_str() {
                "" => None,
                "-" => Some(""),
                f => Some(f),
            });
        if r.consistent {
            self.node
                .proposer
                .linearizable_barrier()
                .await
                .map_err(AdminError::from)?;
        }
        let mut groups: BTreeMap<Vec<String>, api::SpendTotals> = BTreeMap::new();
        let mut total = api::SpendTotals::default();
        let mut too_many = false;
        self.node
            .reader
            .for_each_spend_row(first, last, |day, dims, row| {
                if filters
                    .iter()
                    .zip(&dims)
                    .any(|(f, d)| f.is_some_and(|f| f != d))
                {
                    return;
                }
                add(&mut total, &row);
                let key: Vec<String> = r
                    .group_by
                    .iter()
                    .map(|g| match g.as_str() {
                        "day" => day_name(day),
                        "month" => day_name(day)[..7].to_string(),
                        other => {
                            let i = crate::raft::state::SPEND_DIMENSIONS
                                .iter()
                                .position(|d| *d == other)
                                .unwrap_or(0);
                            dims[i].clone()
                        }
                    })
                    .collect();
                if !groups.contains_key(&key) && groups.len() >= MAX_GROUPS {
                    too_many = true;
                    return;
                }
                add(groups.entry(key).or_default(), &row);
            })
            .map_err(AdminError::from)?;
        if too_many {
            return Err(AdminError::invalid(format!(
                "more than {MAX_GROUPS} groups: narrow the dates, filter, or group by less"
            ))
            .into());
        }
        Ok(Response::new(api::QuerySpendResponse {
            group_by: r.group_by,
            rows: groups
                .into_iter()
                .map(|(values, totals)| api::SpendGroup {
                    values,
                    totals: Some(totals),
                })
                .collect(),
            total: Some(total),
        }))
    }

    async fn budgets(
        &self,
        req: Request<api::BudgetsRequest>,
    ) -> Result<Response<api::BudgetsResponse>, Status> {
        count_request("Usage.Budgets");
        self.auth.authorize(&req, Permission::Read).await?;
        if req.get_ref().consistent {
            self.node
                .proposer
                .linearizable_barrier()
                .await
                .map_err(AdminError::from)?;
        }
        Ok(Response::new(api::BudgetsResponse {
            budgets: self.budget_statuses()?,
        }))
    }
}

impl UsageService {
    /// Every Budget's standing in the period it is in now (leader time, as far as this node
    /// knows it).
    fn budget_statuses(&self) -> Result<Vec<api::BudgetStatus>, AdminError> {
        use crate::resources::budget::{Action, BudgetSpec, Period};
        let reader = &self.node.reader;
        let now = crate::clock::unix_ms().max(reader.leader_time()?);
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = reader.list_resources(
                "Budget",
                &crate::raft::state::LabelSelector::default(),
                after.as_deref(),
                1000,
            )?;
            for r in &page.items {
                let spec = BudgetSpec::parse(&konnect_proto::json::struct_to_json(
                    &r.spec.clone().unwrap_or_default(),
                ))
                .map_err(|e| AdminError::Internal(format!("stored Budget {:?}: {e}", r.name)))?;
                let (start, end) = spec.period_bounds(now);
                let spent = reader.budget_spend(&r.name, start)?;
                let granted = match (spec.action, reader.budget_grant_row(&r.name)?) {
                    (Action::Block, Some(row)) if row.window_start_unix_ms == start => row.granted,
                    _ => 0,
                };
                let reserved = granted.saturating_sub(spent.cost_micros);
                out.push(api::BudgetStatus {
                    name: r.name.clone(),
                    scope: spec.scope.kind().into(),
                    scope_value: spec.scope.value().into(),
                    period: match spec.period {
                        Period::Day => "day",
                        Period::Week => "week",
                        Period::Month => "month",
                    }
                    .into(),
                    action: match spec.action {
                        Action::Block => "block",
                        Action::Alert => "alert",
                    }
                    .into(),
                    limit_micros: spec.limit_micros,
                    spent_micros: spent.cost_micros,
                    reserved_micros: reserved,
                    remaining_micros: spec
                        .limit_micros
                        .saturating_sub(spent.cost_micros)
                        .saturating_sub(reserved),
                    period_start_unix_ms: start,
                    period_end_unix_ms: end,
                    requests: spent.requests,
                });
            }
            match page.next_key {
                Some(k) => after = Some(k),
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(parse_day("since", "1970-01-02").unwrap(), 1);
        let d = parse_day("since", "2026-11-01").unwrap();
        assert_eq!(day_name(d), "2026-11-01");
        assert_eq!(day_name(d + 30), "2026-12-01");
        for bad in ["2026-13-01", "yesterday", "2026-11-01T00:00:00Z", ""] {
            let e = parse_day("since", bad).unwrap_err().to_string();
            assert!(e.contains("since") && e.contains("YYYY-MM-DD"), "{e}");
        }
    }
}

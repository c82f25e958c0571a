//! `konnectctl spend` (the AI cost ledger's aggregates, grouped and filtered, as a table, JSON,
//! YAML or CSV) and `konnectctl budgets` (each Budget's spent, reserved and remaining). Money
//! arrives as integer micro-USD and is printed exactly (six decimals).

use std::time::SystemTime;

use anyhow::Context as _;
use clap::Args;
use konnect_proto::admin::v1::{QuerySpendRequest, SpendTotals};
use serde::Serialize;

use super::output::{print_stdout, print_structured, render_table, OutputFormat};
use super::Context;

#[derive(Args)]
pub struct SpendArgs {
    /// Dimensions to group by, comma-separated, in column order: day, month, team, consumer,
    /// model, provider, zone. Without it: the totals alone.
    #[arg(long, value_delimiter = ',')]
    group_by: Vec<String>,
    /// First day counted (YYYY-MM-DD, UTC). Default: the first day of this month.
    #[arg(long)]
    since: Option<String>,
    /// Last day counted, included (YYYY-MM-DD, UTC). Default: no end.
    #[arg(long)]
    until: Option<String>,
    /// Only this team's calls (`-` for calls of no team).
    #[arg(long)]
    team: Option<String>,
    /// Only this consumer's calls (`-` for anonymous calls).
    #[arg(long)]
    consumer: Option<String>,
    /// Only calls to this model (the name callers ask for).
    #[arg(long)]
    model: Option<String>,
    /// Only calls served by this Provider.
    #[arg(long)]
    provider: Option<String>,
    /// Only calls served in this zone.
    #[arg(long)]
    zone: Option<String>,
    /// Confirm through the leader that the answer is current.
    #[arg(long)]
    consistent: bool,
}

/// `YYYY-MM-01` of the current month (UTC).
fn first_of_this_month() -> String {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    format!("{}-01", &now[..7])
}

/// Exact dollars of an amount in micro-USD: `12.345678`.
pub fn usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[derive(Serialize)]
struct RowView {
    #[serde(flatten)]
    groups: serde_json::Map<String, serde_json::Value>,
    requests: u64,
    failed: u64,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    cost_usd: String,
    cost_micros: u64,
}

impl RowView {
    fn new(group_by: &[String], values: &[String], t: &SpendTotals) -> RowView {
        RowView {
            groups: group_by
                .iter()
                .zip(values)
                .map(|(g, v)| (g.clone(), serde_json::Value::String(v.clone())))
                .collect(),
            requests: t.requests,
            failed: t.failed,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            cached_tokens: t.cached_tokens,
            cost_usd: usd(t.cost_micros),
            cost_micros: t.cost_micros,
        }
    }
}

#[derive(Serialize)]
struct SpendView {
    since: String,
    until: Option<String>,
    rows: Vec<RowView>,
    total: RowView,
}

pub async fn spend(context: &Context, a: SpendArgs) -> anyhow::Result<()> {
    let since = a.since.unwrap_or_else(first_of_this_month);
    let client = context.connect().await?;
    let answer = client
        .query_spend(QuerySpendRequest {
            since: since.clone(),
            until: a.until.clone().unwrap_or_default(),
            group_by: a.group_by.clone(),
            team: a.team.unwrap_or_default(),
            consumer: a.consumer.unwrap_or_default(),
            model: a.model.unwrap_or_default(),
            provider: a.provider.unwrap_or_default(),
            zone: a.zone.unwrap_or_default(),
            consistent: a.consistent,
        })
        .await?;
    let total = answer.total.unwrap_or_default();
    let group_by = answer.group_by;
    // An empty value is a call without one (no team, an anonymous caller).
    let shown = |v: &String| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.clone()
        }
    };
    match context.output {
        OutputFormat::Table => {
            let mut header: Vec<String> = group_by.iter().map(|g| g.to_uppercase()).collect();
            header.extend(
                [
                    "REQUESTS",
                    "FAILED",
                    "INPUT TOKENS",
                    "OUTPUT TOKENS",
                    "COST (USD)",
                ]
                .map(String::from),
            );
            let line = |values: Vec<String>, t: &SpendTotals| {
                let mut row = values;
                row.extend([
                    t.requests.to_string(),
                    t.failed.to_string(),
                    t.input_tokens.to_string(),
                    t.output_tokens.to_string(),
                    usd(t.cost_micros),
                ]);
                row
            };
            let mut rows: Vec<Vec<String>> = answer
                .rows
                .iter()
                .map(|r| {
                    line(
                        r.values.iter().map(shown).collect(),
                        &r.totals.unwrap_or_default(),
                    )
                })
                .collect();
            if !group_by.is_empty() {
                let mut label = vec![String::new(); group_by.len()];
                label[0] = "TOTAL".into();
                rows.push(line(label, &total));
            } else {
                rows.push(line(Vec::new(), &total));
            }
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            print_stdout(&render_table(&header, rows))
        }
        OutputFormat::Csv => {
            let mut out = csv::Writer::from_writer(Vec::new());
            let mut header = group_by.clone();
            header.extend(
                [
                    "requests",
                    "failed",
                    "input_tokens",
                    "output_tokens",
                    "cached_tokens",
                    "cost_usd",
                    "cost_micros",
                ]
                .map(String::from),
            );
            out.write_record(&header)?;
            for r in &answer.rows {
                let t = r.totals.unwrap_or_default();
                let mut record: Vec<String> = r.values.clone();
                record.extend([
                    t.requests.to_string(),
                    t.failed.to_string(),
                    t.input_tokens.to_string(),
                    t.output_tokens.to_string(),
                    t.cached_tokens.to_string(),
                    usd(t.cost_micros),
                    t.cost_micros.to_string(),
                ]);
                out.write_record(&record)?;
            }
            let bytes = out.into_inner().context("cannot write CSV")?;
            print_stdout(&String::from_utf8_lossy(&bytes))
        }
        format => print_structured(
            format,
            &SpendView {
                since,
                until: a.until,
                rows: answer
                    .rows
                    .iter()
                    .map(|r| RowView::new(&group_by, &r.values, &r.totals.unwrap_or_default()))
                    .collect(),
                total: RowView::new(&[], &[], &total),
            },
        ),
    }
}

#[derive(Args)]
pub struct BudgetsArgs {
    /// Confirm through the leader that the answer is current.
    #[arg(long)]
    consistent: bool,
}

#[derive(Serialize)]
struct BudgetView {
    name: String,
    scope: String,
    applies_to: String,
    period: String,
    action: String,
    period_start: String,
    period_end: String,
    limit_usd: String,
    spent_usd: String,
    reserved_usd: String,
    remaining_usd: String,
    requests: u64,
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// `konnectctl budgets`: every Budget in its current period.
pub async fn budgets(context: &Context, a: BudgetsArgs) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let answer = client.budgets(a.consistent).await?;
    let views: Vec<BudgetView> = answer
        .budgets
        .into_iter()
        .map(|b| BudgetView {
            applies_to: if b.scope_value.is_empty() {
                b.scope.clone()
            } else {
                format!("{} {}", b.scope, b.scope_value)
            },
            name: b.name,
            scope: b.scope,
            period: b.period,
            action: b.action,
            period_start: time(b.period_start_unix_ms),
            period_end: time(b.period_end_unix_ms),
            limit_usd: usd(b.limit_micros),
            spent_usd: usd(b.spent_micros),
            reserved_usd: usd(b.reserved_micros),
            remaining_usd: usd(b.remaining_micros),
            requests: b.requests,
        })
        .collect();
    if context.output != OutputFormat::Table {
        return print_structured(context.output, &views);
    }
    if views.is_empty() {
        eprintln!("no budgets: add one with `kind: Budget` (see docs/ledger.md)");
        return Ok(());
    }
    let rows = views
        .into_iter()
        .map(|v| {
            vec![
                v.name,
                v.applies_to,
                format!("{} ({})", v.period, v.action),
                v.limit_usd,
                v.spent_usd,
                v.reserved_usd,
                v.remaining_usd,
                v.period_end,
            ]
        })
        .collect();
    print_stdout(&render_table(
        &[
            "NAME",
            "APPLIES TO",
            "PERIOD",
            "LIMIT (USD)",
            "SPENT",
            "RESERVED",
            "REMAINING",
            "RESETS",
        ],
        rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_exact() {
        assert_eq!(usd(0), "0.000000");
        assert_eq!(usd(1), "0.000001");
        assert_eq!(usd(250_000_000), "250.000000");
        assert_eq!(usd(12_345_678), "12.345678");
    }
}

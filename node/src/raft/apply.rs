//! Deterministic application of state-machine commands to the replicated state.
//!
//! Invariant: everything here is a pure function of (current state, log index, command). No
//! clock, no randomness, no I/O other than the state's own write transaction; time comes from
//! the leader-stamped `leader_time_unix_ms` of the command. Every replica applying the same log
//! therefore holds the same bytes.
//!
//! A command that fails validation (bad spec, stale revision, dangling reference) changes
//! nothing and returns a `CommandError`; the entry still counts as applied.

use std::collections::BTreeSet;

use konnect_proto::json::struct_to_json;
use konnect_proto::state::v1 as pb;
use pb::command_result::Result as Outcome;
use pb::{ChangeAction, ErrorCode};
use prost::Message;

use super::state::*;
use crate::resources;
use crate::store::{StoreError, WriteTxn};

type Applied = Result<pb::CommandResult, StoreError>;

fn ok(r: Outcome) -> pb::CommandResult {
    pb::CommandResult { result: Some(r) }
}

fn fail(code: ErrorCode, message: impl Into<String>) -> pb::CommandResult {
    fail_at(code, None, "", message)
}

fn fail_at(
    code: ErrorCode,
    write_index: Option<usize>,
    field: &str,
    message: impl Into<String>,
) -> pb::CommandResult {
    ok(Outcome::Error(pb::CommandError {
        code: code as i32,
        message: message.into(),
        write_index: write_index.map(|i| i as u32),
        field: field.to_string(),
    }))
}

/// Applies one command carried by the log entry at `index`.
pub fn apply_command(txn: &mut WriteTxn, index: u64, cmd: &pb::Command) -> Applied {
    // Leader time never goes backwards in the state, even across a leader change with skew.
    let last_time = u64_value(txn.get(SM_META, KEY_LEADER_TIME)?);
    let now = last_time.max(cmd.leader_time_unix_ms);
    txn.put(SM_META, KEY_LEADER_TIME, &now.to_be_bytes())?;

    // A retried write (same request id) gets the answer of its first application. Rate-limit
    // grants, key-usage reports and usage shipments are not remembered: applying one twice is
    // harmless (a grant still never exceeds the limit, a report is a maximum, a shipment is
    // deduplicated by its sequence numbers), and at their rate they would crowd admin writes
    // out of the request memory.
    let remembered = !cmd.request_id.is_empty()
        && !matches!(
            cmd.op,
            Some(pb::command::Op::Grants(_))
                | Some(pb::command::Op::TouchKeys(_))
                | Some(pb::command::Op::ShipUsage(_))
        );
    if remembered {
        if let Some(bytes) = txn.get(REQUESTS, cmd.request_id.as_bytes())? {
            return decode(&bytes, "remembered result");
        }
    }
    let result = match &cmd.op {
        None => fail(ErrorCode::Invalid, "empty command"),
        Some(pb::command::Op::Batch(batch)) => {
            let mut results = Vec::with_capacity(batch.commands.len());
            for sub in &batch.commands {
                if matches!(sub.op, Some(pb::command::Op::Batch(_))) {
                    results.push(fail(ErrorCode::Invalid, "batches do not nest"));
                    continue;
                }
                let mut sub = sub.clone();
                sub.leader_time_unix_ms = now;
                results.push(apply_command(txn, index, &sub)?);
            }
            ok(Outcome::Batch(pb::BatchResult { results }))
        }
        Some(pb::command::Op::InitCluster(init)) => init_cluster(txn, init)?,
        Some(pb::command::Op::Apply(a)) => apply_resources(txn, index, now, a)?,
        Some(pb::command::Op::Delete(d)) => delete_resource(txn, index, now, d)?,
        Some(pb::command::Op::CreateToken(c)) => create_token(txn, index, c)?,
        Some(pb::command::Op::RevokeToken(r)) => revoke_token(txn, index, r)?,
        Some(pb::command::Op::TouchKeys(t)) => touch_keys(txn, index, t)?,
        Some(pb::command::Op::Grants(g)) => grant(txn, now, g)?,
        Some(pb::command::Op::ShipUsage(u)) => ship_usage(txn, u)?,
    };
    audit(txn, index, now, cmd, &result)?;
    if remembered {
        remember_request(txn, &cmd.request_id, &result)?;
    }
    Ok(result)
}

/// Records a request id and its result; forgets the oldest beyond [`REQUEST_MEMORY`].
fn remember_request(
    txn: &mut WriteTxn,
    id: &str,
    result: &pb::CommandResult,
) -> Result<(), StoreError> {
    let seq = u64_value(txn.get(SM_META, KEY_REQUEST_SEQ)?) + 1;
    txn.put(SM_META, KEY_REQUEST_SEQ, &seq.to_be_bytes())?;
    txn.put(REQUESTS, id.as_bytes(), &result.encode_to_vec())?;
    txn.put(REQUEST_ORDER, &crate::store::u64_key(seq), id.as_bytes())?;
    let mut count = u64_value(txn.get(SM_META, KEY_REQUEST_COUNT)?) + 1;
    if count > REQUEST_MEMORY {
        let excess = (count - REQUEST_MEMORY) as usize;
        for (k, old_id) in txn.range(REQUEST_ORDER, .., excess)? {
            txn.delete(REQUESTS, &old_id)?;
            txn.delete(REQUEST_ORDER, &k)?;
            count -= 1;
        }
    }
    txn.put(SM_META, KEY_REQUEST_COUNT, &count.to_be_bytes())
}

fn init_cluster(txn: &mut WriteTxn, init: &pb::InitCluster) -> Applied {
    if let Some(existing) = txn.get(SM_META, KEY_CLUSTER_ID)? {
        return Ok(fail(
            ErrorCode::AlreadyInitialized,
            format!(
                "the cluster is already initialised (cluster id {})",
                String::from_utf8_lossy(&existing)
            ),
        ));
    }
    let Some(token) = &init.first_token else {
        return Ok(fail(ErrorCode::Invalid, "init without a first admin token"));
    };
    txn.put(SM_META, KEY_CLUSTER_ID, init.cluster_id.as_bytes())?;
    txn.put(ADMIN_TOKENS, &token.secret_sha256, &token.encode_to_vec())?;
    Ok(ok(Outcome::InitCluster(pb::InitClusterResult {
        cluster_id: init.cluster_id.clone(),
    })))
}

const ROLES: &[&str] = &["admin", "editor", "viewer"];

fn create_token(txn: &mut WriteTxn, index: u64, c: &pb::CreateAdminToken) -> Applied {
    let Some(token) = &c.token else {
        return Ok(fail(ErrorCode::Invalid, "no token given"));
    };
    if !ROLES.contains(&token.role.as_str()) {
        return Ok(fail_at(
            ErrorCode::Invalid,
            None,
            "role",
            format!(
                "unknown role {:?} (use admin, editor or viewer)",
                token.role
            ),
        ));
    }
    if let Err(e) = resources::validate_name(&token.name) {
        return Ok(fail_at(ErrorCode::Invalid, None, "name", e.message));
    }
    if token.secret_sha256.len() != 32 {
        return Ok(fail(ErrorCode::Invalid, "a token hash is 32 bytes"));
    }
    for (_, v) in txn.range(ADMIN_TOKENS, .., usize::MAX)? {
        let t: pb::AdminToken = decode(&v, "admin token")?;
        if t.id == token.id || t.secret_sha256 == token.secret_sha256 {
            return Ok(fail(
                ErrorCode::AlreadyExists,
                format!("a token with id {} already exists", t.id),
            ));
        }
        if t.name == token.name {
            return Ok(fail(
                ErrorCode::AlreadyExists,
                format!("a token named {:?} already exists (id {})", t.name, t.id),
            ));
        }
    }
    txn.put(ADMIN_TOKENS, &token.secret_sha256, &token.encode_to_vec())?;
    let mut shown = token.clone();
    shown.secret_sha256.clear();
    Ok(ok(Outcome::Token(pb::TokenResult {
        token: Some(shown),
        revision: index,
    })))
}

fn revoke_token(txn: &mut WriteTxn, index: u64, r: &pb::RevokeAdminToken) -> Applied {
    let all: Vec<(Vec<u8>, pb::AdminToken)> = txn
        .range(ADMIN_TOKENS, .., usize::MAX)?
        .into_iter()
        .map(|(k, v)| decode(&v, "admin token").map(|t| (k, t)))
        .collect::<Result<_, _>>()?;
    let Some((key, token)) = all.iter().find(|(_, t)| t.id == r.id) else {
        return Ok(fail(
            ErrorCode::NotFound,
            format!("no admin token with id {:?}", r.id),
        ));
    };
    if token.role == "admin" && all.iter().filter(|(_, t)| t.role == "admin").count() == 1 {
        return Ok(fail(
            ErrorCode::InUse,
            format!(
                "token {} ({:?}) is the last admin token; create another admin token first",
                token.id, token.name
            ),
        ));
    }
    txn.delete(ADMIN_TOKENS, key)?;
    let mut shown = token.clone();
    shown.secret_sha256.clear();
    Ok(ok(Outcome::Token(pb::TokenResult {
        token: Some(shown),
        revision: index,
    })))
}

/// Records when keys were last used: the latest time wins, for keys that still exist.
fn touch_keys(txn: &mut WriteTxn, index: u64, t: &pb::TouchApiKeys) -> Applied {
    for (name, at) in &t.last_used_unix_ms {
        if txn.get(RESOURCES, &resource_key("ApiKey", name))?.is_none() {
            continue;
        }
        let prior = u64_value(txn.get(API_KEY_LAST_USED, name.as_bytes())?);
        if *at > prior {
            txn.put(API_KEY_LAST_USED, name.as_bytes(), &at.to_be_bytes())?;
        }
    }
    Ok(ok(Outcome::Apply(pb::ApplyResult {
        changes: Vec::new(),
        revision: index,
    })))
}

/// Finished grant windows deleted per command at most (bounded work per entry; a backlog is
/// worked off by the next ones).
const GRANT_GC_PER_COMMAND: usize = 1000;

/// Grants units of strict rate limits. Invariant (what makes `strict` exact): for every
/// (limit, key, window), the units granted to all nodes together never exceed the limit. The
/// window is the one the leader-stamped `now` falls in, aligned to multiples of the window
/// length, so every replica computes the same window whatever the nodes' clocks say.
fn grant(txn: &mut WriteTxn, now: u64, g: &pb::GrantRequests) -> Applied {
    // Rows of finished windows go first, oldest first.
    let expired = txn.range(
        GRANT_EXPIRY,
        ..crate::store::u64_key(now.saturating_add(1)).as_slice(),
        GRANT_GC_PER_COMMAND,
    )?;
    for (k, _) in expired {
        txn.delete(GRANT_EXPIRY, &k)?;
        let row_key = &k[8..];
        if let Some(b) = txn.get(GRANTS, row_key)? {
            let row: pb::GrantRow = decode(&b, "grant row")?;
            if row.window_end_unix_ms <= now {
                txn.delete(GRANTS, row_key)?;
            }
        }
    }
    // Per (kind, name): the limit and the window `now` falls in, or why nothing is granted.
    let mut figures: std::collections::HashMap<(&str, &str), GrantFigures> =
        std::collections::HashMap::new();
    let mut results = Vec::with_capacity(g.asks.len());
    for ask in &g.asks {
        let id = (ask.kind.as_str(), ask.limit.as_str());
        if let std::collections::hash_map::Entry::Vacant(e) = figures.entry(id) {
            e.insert(grant_figures(txn, ask, now)?);
        }
        let (limit, start, end) = match &figures[&id] {
            Ok(f) => *f,
            Err(e) => {
                results.push(pb::GrantResult {
                    error: e.clone(),
                    ..Default::default()
                });
                continue;
            }
        };
        let spec = GrantLimit { limit };
        let row_key = grant_row_key(&ask.kind, &ask.limit, &ask.key);
        let mut row: pb::GrantRow = match txn.get(GRANTS, &row_key)? {
            Some(b) => decode(&b, "grant row")?,
            None => pb::GrantRow::default(),
        };
        if ask.release > 0
            && row.window_start_unix_ms == start
            && row.window_end_unix_ms == ask.release_window_end_unix_ms
        {
            // Units given back: at most what this node holds of the window, so the sum over
            // nodes stays the granted total and no node's share goes below zero.
            let held = row.per_node.entry(g.node_id).or_default();
            let back = ask.release.min(*held);
            *held -= back;
            if *held == 0 {
                row.per_node.remove(&g.node_id);
            }
            row.granted -= back.min(row.granted);
            txn.put(GRANTS, &row_key, &row.encode_to_vec())?;
        }
        if ask.units == 0 {
            results.push(pb::GrantResult {
                granted: 0,
                window_start_unix_ms: row.window_start_unix_ms,
                window_end_unix_ms: row.window_end_unix_ms,
                used: row.granted,
                limit: spec.limit,
                error: String::new(),
            });
            continue;
        }
        if row.window_start_unix_ms != start {
            // A new window: what was granted in the old one is gone with it.
            if row.window_end_unix_ms != 0 {
                let mut old = crate::store::u64_key(row.window_end_unix_ms).to_vec();
                old.extend_from_slice(&row_key);
                txn.delete(GRANT_EXPIRY, &old)?;
            }
            row = pb::GrantRow {
                window_start_unix_ms: start,
                window_end_unix_ms: end,
                ..Default::default()
            };
            let mut expiry = crate::store::u64_key(end).to_vec();
            expiry.extend_from_slice(&row_key);
            txn.put(GRANT_EXPIRY, &expiry, &[])?;
        }
        let granted = ask.units.min(spec.limit.saturating_sub(row.granted));
        row.granted += granted;
        if granted > 0 {
            *row.per_node.entry(g.node_id).or_default() += granted;
        }
        txn.put(GRANTS, &row_key, &row.encode_to_vec())?;
        results.push(pb::GrantResult {
            granted,
            window_start_unix_ms: start,
            window_end_unix_ms: end,
            used: row.granted,
            limit: spec.limit,
            error: String::new(),
        });
    }
    Ok(ok(Outcome::Grants(pb::GrantResults {
        results,
        leader_time_unix_ms: now,
    })))
}

/// Folds a node's shipped usage records into the ledger, each exactly once.
///
/// Invariant: a record counts iff its sequence number is above the (node, incarnation) mark,
/// and the mark rises to the last record counted in the same transaction; so however often a
/// range is shipped, each record of it is counted once. A range starting above mark + 1 would
/// leave records uncounted for good: it is refused, and the node ships from the mark again.
fn ship_usage(txn: &mut WriteTxn, u: &pb::ShipUsage) -> Applied {
    let mark_key = usage_mark_key(u.node_id, u.incarnation);
    let mark = u64_value(txn.get(USAGE_MARKS, &mark_key)?);
    let result = |counted, duplicates, through, budgets_exceeded| {
        ok(Outcome::ShipUsage(pb::ShipUsageResult {
            counted_through: through,
            counted,
            duplicates,
            budgets_exceeded,
        }))
    };
    if u.first_seq == 0 {
        return Ok(fail(
            ErrorCode::Invalid,
            "usage sequence numbers start at 1",
        ));
    }
    if u.first_seq > mark + 1 {
        return Ok(fail(
            ErrorCode::Invalid,
            format!(
                "usage records {}..{} of node {} incarnation {} were never shipped; ship from {}",
                mark + 1,
                u.first_seq - 1,
                u.node_id,
                u.incarnation,
                mark + 1
            ),
        ));
    }
    let skip = ((mark + 1 - u.first_seq) as usize).min(u.records.len());
    let fresh = &u.records[skip..];
    if fresh.is_empty() {
        return Ok(result(0, skip as u64, mark, Vec::new()));
    }
    // Records of one shipment fall into few rows: add them up first, then read and write
    // each row once, in key order.
    let mut rows: std::collections::BTreeMap<Vec<u8>, pb::SpendRow> = Default::default();
    for r in fresh {
        let day = (r.started_unix_ms / 86_400_000) as u32;
        let key = spend_key(day, [&r.team, &r.consumer, &r.model, &r.provider, &r.zone]);
        add_spend(rows.entry(key).or_default(), r);
    }
    for (key, add) in rows {
        let mut row: pb::SpendRow = match txn.get(SPEND, &key)? {
            Some(b) => decode(&b, "spend row")?,
            None => pb::SpendRow::default(),
        };
        row.requests = row.requests.saturating_add(add.requests);
        row.failed = row.failed.saturating_add(add.failed);
        row.input_tokens = row.input_tokens.saturating_add(add.input_tokens);
        row.output_tokens = row.output_tokens.saturating_add(add.output_tokens);
        row.cached_tokens = row.cached_tokens.saturating_add(add.cached_tokens);
        row.cost_micros = row.cost_micros.saturating_add(add.cost_micros);
        txn.put(SPEND, &key, &row.encode_to_vec())?;
    }
    let exceeded = count_budget_spend(txn, fresh)?;
    let through = u.first_seq + u.records.len() as u64 - 1;
    txn.put(USAGE_MARKS, &mark_key, &through.to_be_bytes())?;
    Ok(result(fresh.len() as u64, skip as u64, through, exceeded))
}

/// Adds each record's cost to every Budget covering it, in the period the call started in;
/// returns the budgets whose period spend went over their limit with these records.
fn count_budget_spend(
    txn: &mut WriteTxn,
    records: &[pb::UsageRecord],
) -> Result<Vec<String>, StoreError> {
    use resources::budget::BudgetSpec;
    let budgets: Vec<(String, BudgetSpec)> = resources_of_kind(txn, "Budget")?
        .into_iter()
        .filter_map(|r| {
            let spec = BudgetSpec::parse(&struct_to_json(&r.spec.unwrap_or_default())).ok()?;
            Some((r.name, spec))
        })
        .collect();
    if budgets.is_empty() {
        return Ok(Vec::new());
    }
    // (budget index, period start) -> (period end, requests, cost).
    let mut adds: std::collections::BTreeMap<(usize, u64), (u64, u64, u64)> = Default::default();
    for r in records {
        let key_id = r.credential.strip_prefix("key:").unwrap_or("");
        for (i, (_, spec)) in budgets.iter().enumerate() {
            if spec.scope.covers(&r.team, &r.consumer, key_id, &r.model) {
                let (start, end) = spec.period_bounds(r.started_unix_ms);
                let add = adds.entry((i, start)).or_insert((end, 0, 0));
                add.1 += 1;
                add.2 = add.2.saturating_add(r.cost_micros);
            }
        }
    }
    let mut exceeded = Vec::new();
    for ((i, start), (end, requests, cost)) in adds {
        let (name, spec) = &budgets[i];
        let key = budget_spend_key(name, start);
        let mut row: pb::BudgetSpend = match txn.get(BUDGET_SPEND, &key)? {
            Some(b) => decode(&b, "budget spend")?,
            None => pb::BudgetSpend::default(),
        };
        let before = row.cost_micros;
        row.period_end_unix_ms = end;
        row.requests += requests;
        row.cost_micros = row.cost_micros.saturating_add(cost);
        if before <= spec.limit_micros && row.cost_micros > spec.limit_micros {
            exceeded.push(name.clone());
        }
        txn.put(BUDGET_SPEND, &key, &row.encode_to_vec())?;
    }
    Ok(exceeded)
}

fn add_spend(row: &mut pb::SpendRow, r: &pb::UsageRecord) {
    row.requests += 1;
    if r.outcome != "ok" {
        row.failed += 1;
    }
    row.input_tokens = row.input_tokens.saturating_add(r.input_tokens);
    row.output_tokens = row.output_tokens.saturating_add(r.output_tokens);
    row.cached_tokens = row.cached_tokens.saturating_add(r.cached_tokens);
    row.cost_micros = row.cost_micros.saturating_add(r.cost_micros);
}

/// (limit, window start, window end) of a grantable resource, or why nothing is granted.
type GrantFigures = Result<(u64, u64, u64), String>;

/// What `spec.limit` means in [`grant`]: the units of one window.
struct GrantLimit {
    limit: u64,
}

/// The limit of the RateLimit, Budget or TokenLimit an ask is for, and the window (start, end)
/// that the leader time `now` falls in: fixed windows for RateLimits and TokenLimits, calendar
/// periods for Budgets.
fn grant_figures(txn: &WriteTxn, ask: &pb::GrantAsk, now: u64) -> Result<GrantFigures, StoreError> {
    let spec_of = |kind: &str| -> Result<Option<serde_json::Value>, StoreError> {
        Ok(get_resource(txn, kind, &ask.limit)?
            .map(|r| struct_to_json(&r.spec.unwrap_or_default())))
    };
    Ok(match ask.kind.as_str() {
        "" => match spec_of("RateLimit")?
            .and_then(|s| resources::rate_limit::RateLimitSpec::parse(&s).ok())
        {
            Some(spec) if spec.mode.is_granted() => {
                let window = spec.window_ms();
                let start = now - now % window;
                Ok((spec.limit, start, start + window))
            }
            _ => Err(format!("no strict or fast RateLimit {:?}", ask.limit)),
        },
        "Budget" => {
            match spec_of("Budget")?.and_then(|s| resources::budget::BudgetSpec::parse(&s).ok()) {
                Some(spec) if spec.action == resources::budget::Action::Block => {
                    let (start, end) = spec.period_bounds(now);
                    Ok((spec.limit_micros, start, end))
                }
                _ => Err(format!("no blocking Budget {:?}", ask.limit)),
            }
        }
        "TokenLimit" => match spec_of("TokenLimit")?
            .and_then(|s| resources::token_limit::TokenLimitSpec::parse(&s).ok())
        {
            Some(spec) => {
                let (start, end) = spec.window_bounds(now);
                Ok((spec.tokens, start, end))
            }
            None => Err(format!("no TokenLimit {:?}", ask.limit)),
        },
        other => Err(format!("nothing of kind {other:?} is granted")),
    })
}

/// The [`GRANTS`] row of an ask: `limit \0 key` for RateLimits; Budgets are set apart by a
/// prefix no resource name can start with.
pub fn grant_row_key(kind: &str, limit: &str, key: &str) -> Vec<u8> {
    match kind {
        "" => resource_key(limit, key),
        _ => resource_key(&format!("${kind}:{limit}"), key),
    }
}

/// Adds one entry to the audit log for a command that changed something on behalf of an
/// admin caller, and drops the oldest beyond [`AUDIT_MEMORY`].
fn audit(
    txn: &mut WriteTxn,
    index: u64,
    now: u64,
    cmd: &pb::Command,
    result: &pb::CommandResult,
) -> Result<(), StoreError> {
    use pb::command::Op;
    let mut entry = pb::AuditEntry {
        revision: index,
        leader_time_unix_ms: now,
        actor: if cmd.actor.is_empty() {
            "system".into()
        } else {
            cmd.actor.clone()
        },
        actor_name: cmd.actor_name.clone(),
        request_id: cmd.request_id.clone(),
        ..Default::default()
    };
    match (&cmd.op, &result.result) {
        (Some(Op::InitCluster(init)), Some(Outcome::InitCluster(_))) => {
            entry.action = "cluster.init".into();
            entry.detail = format!("cluster id {}", init.cluster_id);
        }
        (Some(Op::Apply(_)), Some(Outcome::Apply(a))) => {
            entry.changes = a
                .changes
                .iter()
                .filter(|c| c.action != ChangeAction::Unchanged as i32)
                .cloned()
                .collect();
            if entry.changes.is_empty() {
                return Ok(());
            }
            entry.action = "resources.apply".into();
        }
        (Some(Op::Delete(_)), Some(Outcome::Apply(a))) => {
            entry.action = "resources.delete".into();
            entry.changes = a.changes.clone();
        }
        (Some(Op::CreateToken(_)), Some(Outcome::Token(t)))
        | (Some(Op::RevokeToken(_)), Some(Outcome::Token(t))) => {
            let created = matches!(cmd.op, Some(Op::CreateToken(_)));
            entry.action = if created {
                "token.create"
            } else {
                "token.revoke"
            }
            .into();
            if let Some(t) = &t.token {
                entry.detail = format!("token {} {:?} role {}", t.id, t.name, t.role);
            }
        }
        (Some(Op::ShipUsage(u)), Some(Outcome::ShipUsage(r))) if !r.budgets_exceeded.is_empty() => {
            entry.action = "budget.exceeded".into();
            entry.detail = format!(
                "spend of {} went over its limit with usage shipped by node {}",
                r.budgets_exceeded.join(", "),
                u.node_id
            );
        }
        _ => return Ok(()),
    }
    let seq = match txn.get(SM_META, KEY_AUDIT_CURSOR)? {
        Some(b) if b.len() == 12 && event_revision(&b) == index => {
            u32::from_be_bytes([b[8], b[9], b[10], b[11]])
        }
        _ => 0,
    };
    txn.put(AUDIT, &event_key(index, seq), &entry.encode_to_vec())?;
    txn.put(SM_META, KEY_AUDIT_CURSOR, &event_key(index, seq + 1))?;
    let mut count = u64_value(txn.get(SM_META, KEY_AUDIT_COUNT)?) + 1;
    if count > AUDIT_MEMORY {
        let excess = (count - AUDIT_MEMORY) as usize;
        for (k, _) in txn.range(AUDIT, .., excess)? {
            txn.delete(AUDIT, &k)?;
            count -= 1;
        }
    }
    txn.put(SM_META, KEY_AUDIT_COUNT, &count.to_be_bytes())
}

fn get_resource(
    txn: &WriteTxn,
    kind: &str,
    name: &str,
) -> Result<Option<pb::Resource>, StoreError> {
    txn.get(RESOURCES, &resource_key(kind, name))?
        .map(|b| decode(&b, "resource"))
        .transpose()
}

/// Every stored resource of `kind`.
fn resources_of_kind(txn: &WriteTxn, kind: &str) -> Result<Vec<pb::Resource>, StoreError> {
    let (lo, hi) = kind_range(kind);
    txn.range(RESOURCES, lo.as_slice()..hi.as_slice(), usize::MAX)?
        .into_iter()
        .map(|(_, v)| decode(&v, "resource"))
        .collect()
}

fn revision_mismatch(kind: &str, name: &str, expected: u64, actual: Option<u64>) -> String {
    match (expected, actual) {
        (0, Some(rev)) => format!("{kind} {name:?} already exists (revision {rev})"),
        (_, None) => format!("{kind} {name:?} does not exist (expected revision {expected})"),
        (_, Some(rev)) => format!(
            "{kind} {name:?} is at revision {rev}, not {expected}: it changed since you read it; read it again and retry"
        ),
    }
}

struct Planned<'a> {
    write: &'a pb::ResourceWrite,
    spec_json: serde_json::Value,
    existing: Option<pb::Resource>,
    action: ChangeAction,
}

fn apply_resources(txn: &mut WriteTxn, index: u64, now: u64, a: &pb::ApplyResources) -> Applied {
    // 1. Check every write on its own.
    let mut names: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut planned = Vec::with_capacity(a.writes.len());
    for (i, w) in a.writes.iter().enumerate() {
        let Some(def) = resources::kind(&w.kind) else {
            return Ok(fail_at(
                ErrorCode::Invalid,
                Some(i),
                "kind",
                format!(
                    "unknown kind {:?} (known kinds: {})",
                    w.kind,
                    resources::known_kind_names()
                ),
            ));
        };
        if let Err(e) =
            resources::validate_name(&w.name).and_then(|_| resources::validate_labels(&w.labels))
        {
            return Ok(fail_at(ErrorCode::Invalid, Some(i), &e.field, e.message));
        }
        let spec_json = struct_to_json(&w.spec.clone().unwrap_or_default());
        if let Err(e) = (def.validate)(&spec_json) {
            return Ok(fail_at(ErrorCode::Invalid, Some(i), &e.field, e.message));
        }
        if w.kind == "Service" {
            if let Some((field, message)) = targets_own_port(txn, &spec_json)? {
                return Ok(fail_at(ErrorCode::Invalid, Some(i), &field, message));
            }
        }
        if !names.insert((&w.kind, &w.name)) {
            return Ok(fail_at(
                ErrorCode::Invalid,
                Some(i),
                "name",
                format!("{} {:?} appears more than once", w.kind, w.name),
            ));
        }
        let existing = get_resource(txn, &w.kind, &w.name)?;
        if let Some(expected) = w.expected_revision {
            let actual = existing.as_ref().map(|r| r.revision);
            if actual.unwrap_or(0) != expected {
                return Ok(fail_at(
                    ErrorCode::RevisionMismatch,
                    Some(i),
                    "",
                    revision_mismatch(&w.kind, &w.name, expected, actual),
                ));
            }
        }
        let action = match &existing {
            None => ChangeAction::Created,
            Some(r) if r.labels == w.labels && r.spec == w.spec => ChangeAction::Unchanged,
            Some(_) => ChangeAction::Updated,
        };
        planned.push(Planned {
            write: w,
            spec_json,
            existing,
            action,
        });
    }

    // 2. Prune: resources of the applied kinds that the file no longer has.
    let mut deletes: Vec<pb::Resource> = Vec::new();
    for kind in &a.prune_kinds {
        if resources::kind(kind).is_none() {
            return Ok(fail_at(
                ErrorCode::Invalid,
                None,
                "prune_kinds",
                format!(
                    "unknown kind {kind:?} (known kinds: {})",
                    resources::known_kind_names()
                ),
            ));
        }
        for r in resources_of_kind(txn, kind)? {
            if !names.contains(&(r.kind.as_str(), r.name.as_str())) {
                deletes.push(r);
            }
        }
    }
    let deleted: BTreeSet<(String, String)> = deletes
        .iter()
        .map(|r| (r.kind.clone(), r.name.clone()))
        .collect();

    // 3. Referential integrity of the state as it would be after this command.
    for (i, p) in planned.iter().enumerate() {
        let def = resources::kind(&p.write.kind).expect("kind checked in step 1");
        for reference in (def.references)(&p.spec_json) {
            let in_batch = names.contains(&(reference.kind, reference.name.as_str()));
            let stored = !deleted.contains(&(reference.kind.to_string(), reference.name.clone()))
                && txn
                    .get(RESOURCES, &resource_key(reference.kind, &reference.name))?
                    .is_some();
            if !in_batch && !stored {
                return Ok(fail_at(
                    ErrorCode::Invalid,
                    Some(i),
                    &reference.field,
                    format!(
                        "unknown {} {:?}",
                        reference.kind.to_lowercase(),
                        reference.name
                    ),
                ));
            }
        }
    }
    for d in &deletes {
        if let Some(msg) = referrer_of(txn, d, &names, &deleted)? {
            return Ok(fail(ErrorCode::InUse, msg));
        }
    }

    // 4. Write.
    let mut changes = Vec::new();
    let mut events = EventLog::open(txn, index)?;
    for p in &planned {
        if p.action != ChangeAction::Unchanged {
            let r = pb::Resource {
                kind: p.write.kind.clone(),
                name: p.write.name.clone(),
                labels: p.write.labels.clone(),
                spec: p.write.spec.clone(),
                revision: index,
                create_revision: p.existing.as_ref().map_or(index, |e| e.create_revision),
                updated_unix_ms: now,
            };
            txn.put(
                RESOURCES,
                &resource_key(&r.kind, &r.name),
                &r.encode_to_vec(),
            )?;
            events.record(txn, pb::EventType::Put, r)?;
        }
        changes.push(pb::ResourceChange {
            kind: p.write.kind.clone(),
            name: p.write.name.clone(),
            action: p.action as i32,
            revision: if p.action == ChangeAction::Unchanged {
                p.existing.as_ref().map_or(index, |e| e.revision)
            } else {
                index
            },
        });
    }
    for mut d in deletes {
        txn.delete(RESOURCES, &resource_key(&d.kind, &d.name))?;
        if d.kind == "ApiKey" {
            txn.delete(API_KEY_LAST_USED, d.name.as_bytes())?;
        }
        changes.push(pb::ResourceChange {
            kind: d.kind.clone(),
            name: d.name.clone(),
            action: ChangeAction::Deleted as i32,
            revision: index,
        });
        d.revision = index;
        d.updated_unix_ms = now;
        events.record(txn, pb::EventType::Delete, d)?;
    }
    events.close(txn)?;
    Ok(ok(Outcome::Apply(pb::ApplyResult {
        changes,
        revision: index,
    })))
}

/// A Service target that points at a cluster member's own peer, admin or status port (the
/// proxy would then forward arbitrary traffic into the control plane: SSRF) or at its proxy
/// port (a loop). Returns the
/// field and the message.
fn targets_own_port(
    txn: &WriteTxn,
    spec: &serde_json::Value,
) -> Result<Option<(String, String)>, StoreError> {
    let Ok(service) = resources::service::ServiceSpec::parse(spec) else {
        return Ok(None);
    };
    let Some(bytes) = txn.get(SM_META, KEY_MEMBERSHIP)? else {
        return Ok(None);
    };
    let membership: pb::StoredMembership = decode(&bytes, "membership")?;
    let nodes = membership.membership.unwrap_or_default().nodes;
    let local =
        |h: &str| matches!(h, "localhost" | "0.0.0.0" | "::" | "::1") || h.starts_with("127.");
    for (i, t) in service.targets.iter().enumerate() {
        let Ok(url) = resources::service::TargetUrl::parse(&t.url) else {
            continue;
        };
        for (id, n) in &nodes {
            for (what, addr) in [
                ("peer", &n.peer_addr),
                ("admin", &n.admin_addr),
                ("status", &n.status_addr),
                // The proxy itself: a route back into it would loop forever.
                ("proxy", &n.proxy_addr),
            ] {
                let Some((host, port)) = addr.rsplit_once(':') else {
                    continue;
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let same_port = port.parse::<u16>().ok() == Some(url.port);
                let same_host = host == url.host
                    || (local(host) && local(&url.host))
                    || host == "0.0.0.0"
                    || host == "::";
                if same_port && same_host {
                    return Ok(Some((
                        format!("spec.targets[{i}].url"),
                        format!(
                            "{:?} points at node {id}'s {what} port ({addr}); konnect does not proxy into its own control plane",
                            t.url
                        ),
                    )));
                }
            }
        }
    }
    Ok(None)
}

/// A stored resource that refers to `target` and survives this command, described for an
/// error message.
fn referrer_of(
    txn: &WriteTxn,
    target: &pb::Resource,
    written: &BTreeSet<(&str, &str)>,
    deleted: &BTreeSet<(String, String)>,
) -> Result<Option<String>, StoreError> {
    for def in resources::kinds_referring_to(&target.kind) {
        for r in resources_of_kind(txn, def.name)? {
            // Writes in this batch were checked against the new state already.
            if written.contains(&(r.kind.as_str(), r.name.as_str()))
                || deleted.contains(&(r.kind.clone(), r.name.clone()))
            {
                continue;
            }
            let spec = struct_to_json(&r.spec.clone().unwrap_or_default());
            for reference in (def.references)(&spec) {
                if reference.kind == target.kind && reference.name == target.name {
                    return Ok(Some(format!(
                        "cannot delete {} {:?}: {} {:?} refers to it ({}); change or delete that first",
                        target.kind, target.name, r.kind, r.name, reference.field
                    )));
                }
            }
        }
    }
    Ok(None)
}

fn delete_resource(txn: &mut WriteTxn, index: u64, now: u64, d: &pb::DeleteResource) -> Applied {
    if resources::kind(&d.kind).is_none() {
        return Ok(fail_at(
            ErrorCode::Invalid,
            None,
            "kind",
            format!(
                "unknown kind {:?} (known kinds: {})",
                d.kind,
                resources::known_kind_names()
            ),
        ));
    }
    let Some(mut existing) = get_resource(txn, &d.kind, &d.name)? else {
        return Ok(fail(
            ErrorCode::NotFound,
            format!("{} {:?} not found", d.kind, d.name),
        ));
    };
    if let Some(expected) = d.expected_revision {
        if existing.revision != expected {
            return Ok(fail(
                ErrorCode::RevisionMismatch,
                revision_mismatch(&d.kind, &d.name, expected, Some(existing.revision)),
            ));
        }
    }
    if let Some(msg) = referrer_of(txn, &existing, &BTreeSet::new(), &BTreeSet::new())? {
        return Ok(fail(ErrorCode::InUse, msg));
    }
    txn.delete(RESOURCES, &resource_key(&d.kind, &d.name))?;
    if d.kind == "ApiKey" {
        txn.delete(API_KEY_LAST_USED, d.name.as_bytes())?;
    }
    existing.revision = index;
    existing.updated_unix_ms = now;
    let mut events = EventLog::open(txn, index)?;
    events.record(txn, pb::EventType::Delete, existing)?;
    events.close(txn)?;
    Ok(ok(Outcome::Apply(pb::ApplyResult {
        changes: vec![pb::ResourceChange {
            kind: d.kind.clone(),
            name: d.name.clone(),
            action: ChangeAction::Deleted as i32,
            revision: index,
        }],
        revision: index,
    })))
}

/// Appends change events of one log entry to the bounded watch history.
struct EventLog {
    revision: u64,
    seq: u32,
    count: u64,
}

impl EventLog {
    fn open(txn: &WriteTxn, revision: u64) -> Result<EventLog, StoreError> {
        // Continue the sequence when an earlier command of the same entry wrote events.
        let seq = match txn.get(SM_META, KEY_EVENT_CURSOR)? {
            Some(b) if b.len() == 12 && event_revision(&b) == revision => {
                u32::from_be_bytes([b[8], b[9], b[10], b[11]])
            }
            _ => 0,
        };
        Ok(EventLog {
            revision,
            seq,
            count: u64_value(txn.get(SM_META, KEY_EVENT_COUNT)?),
        })
    }

    fn record(
        &mut self,
        txn: &mut WriteTxn,
        kind: pb::EventType,
        resource: pb::Resource,
    ) -> Result<(), StoreError> {
        let ev = pb::ResourceEvent {
            r#type: kind as i32,
            resource: Some(resource),
        };
        txn.put(
            EVENTS,
            &event_key(self.revision, self.seq),
            &ev.encode_to_vec(),
        )?;
        self.seq += 1;
        self.count += 1;
        Ok(())
    }

    /// Drops the oldest events beyond [`WATCH_HISTORY`] and records how far history now reaches.
    fn close(self, txn: &mut WriteTxn) -> Result<(), StoreError> {
        let mut count = self.count;
        if count > WATCH_HISTORY {
            let excess = (count - WATCH_HISTORY) as usize;
            let oldest = txn.range(EVENTS, .., excess)?;
            if let Some((last_key, _)) = oldest.last() {
                let through = event_revision(last_key);
                for (k, _) in &oldest {
                    txn.delete(EVENTS, k)?;
                }
                count -= oldest.len() as u64;
                txn.put(SM_META, KEY_COMPACTED_REVISION, &through.to_be_bytes())?;
            }
        }
        txn.put(SM_META, KEY_EVENT_COUNT, &count.to_be_bytes())?;
        txn.put(
            SM_META,
            KEY_EVENT_CURSOR,
            &event_key(self.revision, self.seq),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn service(name: &str, port: u16, request_id: &str) -> pb::Command {
        let spec = serde_json::json!({"targets": [{"url": format!("http://127.0.0.1:{port}")}]});
        pb::Command {
            leader_time_unix_ms: 1,
            actor: "test".into(),
            actor_name: "tester".into(),
            request_id: request_id.into(),
            op: Some(pb::command::Op::Apply(pb::ApplyResources {
                writes: vec![pb::ResourceWrite {
                    kind: "Service".into(),
                    name: name.into(),
                    labels: Default::default(),
                    spec: Some(konnect_proto::json::json_to_struct(&spec).unwrap()),
                    expected_revision: Some(0),
                }],
                prune_kinds: vec![],
            })),
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s"), TABLES).unwrap();
        (dir, store)
    }

    fn command(time: u64, op: pb::command::Op) -> pb::Command {
        pb::Command {
            leader_time_unix_ms: time,
            actor: "test".into(),
            op: Some(op),
            ..Default::default()
        }
    }

    fn grants(
        txn: &mut WriteTxn,
        index: u64,
        time: u64,
        node: u64,
        asks: &[(&str, u64)],
    ) -> Vec<pb::GrantResult> {
        let op = pb::command::Op::Grants(pb::GrantRequests {
            node_id: node,
            asks: asks
                .iter()
                .map(|(key, units)| pb::GrantAsk {
                    limit: "rl".into(),
                    key: key.to_string(),
                    units: *units,
                    ..Default::default()
                })
                .collect(),
        });
        match apply_command(txn, index, &command(time, op))
            .unwrap()
            .result
        {
            Some(Outcome::Grants(g)) => g.results,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grants_never_exceed_the_limit_per_window_and_finished_windows_are_collected() {
        let (_d, store) = store();
        let mut txn = store.write().unwrap();
        let spec = serde_json::json!({"applies_to": {"global": true}, "key": "ip", "limit": 100, "window": "10s"});
        let write = pb::command::Op::Apply(pb::ApplyResources {
            writes: vec![pb::ResourceWrite {
                kind: "RateLimit".into(),
                name: "rl".into(),
                spec: Some(konnect_proto::json::json_to_struct(&spec).unwrap()),
                ..Default::default()
            }],
            prune_kinds: vec![],
        });
        apply_command(&mut txn, 1, &command(1_000, write)).unwrap();
        // Three nodes ask for more than there is, in one window (leader time 20.0-29.999 s).
        let mut total = 0;
        for (i, node) in [1u64, 2, 3, 1, 2, 3].iter().enumerate() {
            let r = grants(
                &mut txn,
                2 + i as u64,
                21_000 + i as u64 * 100,
                *node,
                &[("a", 40)],
            );
            assert_eq!(
                (r[0].window_start_unix_ms, r[0].window_end_unix_ms),
                (20_000, 30_000)
            );
            total += r[0].granted;
            assert_eq!(r[0].used, total);
        }
        assert_eq!(total, 100, "exactly the limit, never more");
        // Another key has its own budget; a missing limit grants nothing and says so.
        assert_eq!(grants(&mut txn, 10, 22_000, 1, &[("b", 7)])[0].granted, 7);
        let op = pb::command::Op::Grants(pb::GrantRequests {
            node_id: 1,
            asks: vec![pb::GrantAsk {
                limit: "nope".into(),
                key: "a".into(),
                units: 1,
                ..Default::default()
            }],
        });
        match apply_command(&mut txn, 11, &command(22_000, op))
            .unwrap()
            .result
        {
            Some(Outcome::Grants(g)) => {
                assert!(g.results[0].granted == 0 && !g.results[0].error.is_empty())
            }
            other => panic!("{other:?}"),
        }
        // The next window starts afresh, even if the leader's clock is read as earlier by a
        // node: time comes from the entry.
        let r = grants(&mut txn, 12, 30_500, 2, &[("a", 60)]);
        assert_eq!((r[0].granted, r[0].window_start_unix_ms), (60, 30_000));
        // Rows of finished windows are deleted: "b" (window ended at 30 s) is gone after 40 s.
        grants(&mut txn, 13, 41_000, 3, &[("c", 1)]);
        assert!(txn.get(GRANTS, &resource_key("rl", "b")).unwrap().is_none());
        assert!(txn.get(GRANTS, &resource_key("rl", "c")).unwrap().is_some());
        assert_eq!(txn.range(GRANT_EXPIRY, .., usize::MAX).unwrap().len(), 1);
    }

    #[test]
    fn released_units_can_be_granted_again_but_never_more_than_a_node_holds() {
        let (_d, store) = store();
        let mut txn = store.write().unwrap();
        let spec =
            serde_json::json!({"applies_to": {"global": true}, "limit": 10, "window": "10s"});
        let write = pb::command::Op::Apply(pb::ApplyResources {
            writes: vec![pb::ResourceWrite {
                kind: "RateLimit".into(),
                name: "rl".into(),
                spec: Some(konnect_proto::json::json_to_struct(&spec).unwrap()),
                ..Default::default()
            }],
            prune_kinds: vec![],
        });
        apply_command(&mut txn, 1, &command(1_000, write)).unwrap();
        assert_eq!(grants(&mut txn, 2, 21_000, 1, &[("a", 6)])[0].granted, 6);
        assert_eq!(grants(&mut txn, 3, 21_100, 2, &[("a", 6)])[0].granted, 4);
        let release = |time, node, units, window_end| {
            let op = pb::command::Op::Grants(pb::GrantRequests {
                node_id: node,
                asks: vec![pb::GrantAsk {
                    limit: "rl".into(),
                    key: "a".into(),
                    release: units,
                    release_window_end_unix_ms: window_end,
                    ..Default::default()
                }],
            });
            command(time, op)
        };
        // Node 1 gives back 9 but holds 6: only 6 return; a release of another window is
        // ignored.
        let r = apply_command(&mut txn, 4, &release(21_200, 1, 9, 30_000)).unwrap();
        assert!(matches!(r.result, Some(Outcome::Grants(ref g)) if g.results[0].used == 4));
        apply_command(&mut txn, 5, &release(21_300, 2, 4, 20_000)).unwrap();
        // The 6 can be granted again, and no more.
        assert_eq!(grants(&mut txn, 6, 21_400, 3, &[("a", 9)])[0].granted, 6);
    }

    fn ship(
        txn: &mut WriteTxn,
        node: u64,
        incarnation: u64,
        first_seq: u64,
        records: &[(&str, &str, u64)],
    ) -> pb::CommandResult {
        let op = pb::command::Op::ShipUsage(pb::ShipUsage {
            node_id: node,
            incarnation,
            first_seq,
            records: records
                .iter()
                .map(|(team, model, cost)| pb::UsageRecord {
                    // 2026-11-25 and 26, by cost parity.
                    started_unix_ms: 1_795_564_800_000 + (cost % 2) * 86_400_000,
                    team: team.to_string(),
                    model: model.to_string(),
                    zone: "az-a".into(),
                    input_tokens: 10,
                    output_tokens: 1,
                    cost_micros: *cost,
                    outcome: "ok".into(),
                    ..Default::default()
                })
                .collect(),
        });
        apply_command(txn, 1, &command(1_000, op)).unwrap()
    }

    fn spend(txn: &WriteTxn) -> Vec<(u32, String, String, pb::SpendRow)> {
        txn.range(SPEND, .., 1000)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let (day, dims) = parse_spend_key(&k).unwrap();
                (
                    day,
                    dims[0].clone(),
                    dims[2].clone(),
                    decode(&v, "row").unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn shipped_usage_is_counted_once_however_often_it_is_shipped() {
        let (_d, store) = store();
        let mut txn = store.write().unwrap();
        let first = [
            ("research", "gpt", 100),
            ("research", "gpt", 201),
            ("ops", "gpt", 300),
        ];
        let r = ship(&mut txn, 7, 1, 1, &first);
        assert_eq!(
            r.result,
            Some(Outcome::ShipUsage(pb::ShipUsageResult {
                counted_through: 3,
                counted: 3,
                duplicates: 0,
                budgets_exceeded: vec![],
            }))
        );
        // The same range again (a retry after a leader change), then one overlapping it.
        let r = ship(&mut txn, 7, 1, 1, &first);
        assert!(
            matches!(r.result, Some(Outcome::ShipUsage(ref u)) if u.counted == 0 && u.duplicates == 3 && u.counted_through == 3)
        );
        let r = ship(
            &mut txn,
            7,
            1,
            3,
            &[("ops", "gpt", 300), ("ops", "gpt", 400)],
        );
        assert!(
            matches!(r.result, Some(Outcome::ShipUsage(ref u)) if u.counted == 1 && u.duplicates == 1 && u.counted_through == 4)
        );
        // A gap is refused whole: nothing of it is counted, the mark stays.
        let r = ship(&mut txn, 7, 1, 6, &[("ops", "gpt", 999)]);
        match r.result {
            Some(Outcome::Error(e)) => assert!(e.message.contains("5..5"), "{}", e.message),
            other => panic!("a gap must be refused: {other:?}"),
        }
        // Another incarnation of the same node, and another node, count on their own.
        ship(&mut txn, 7, 2, 1, &[("research", "gpt", 2)]);
        ship(&mut txn, 8, 1, 1, &[("research", "claude", 4)]);
        let rows = spend(&txn);
        let day = (1_795_564_800_000u64 / 86_400_000) as u32;
        let summary: Vec<_> = rows
            .iter()
            .map(|(d, team, model, r)| {
                (
                    *d - day,
                    team.as_str(),
                    model.as_str(),
                    r.requests,
                    r.cost_micros,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, "ops", "gpt", 2, 700),
                (0, "research", "claude", 1, 4),
                (0, "research", "gpt", 2, 102),
                (1, "research", "gpt", 1, 201),
            ]
        );
        assert_eq!(
            u64_value(txn.get(USAGE_MARKS, &usage_mark_key(7, 1)).unwrap()),
            4
        );
        let r = ship(&mut txn, 7, 1, 0, &[("ops", "gpt", 1)]);
        assert!(matches!(r.result, Some(Outcome::Error(_))));
    }

    #[test]
    fn grants_do_not_take_room_in_the_request_memory() {
        let (_d, store) = store();
        let mut txn = store.write().unwrap();
        let mut cmd = command(1_000, pb::command::Op::Grants(pb::GrantRequests::default()));
        cmd.request_id = "grant-1".into();
        apply_command(&mut txn, 1, &cmd).unwrap();
        apply_command(&mut txn, 2, &service("a", 1, "admin-1")).unwrap();
        assert!(txn.get(REQUESTS, b"grant-1").unwrap().is_none());
        assert!(txn.get(REQUESTS, b"admin-1").unwrap().is_some());
    }

    #[test]
    fn a_retried_write_gets_its_first_answer_instead_of_a_conflict() {
        let (_d, store) = store();
        let mut txn = store.write().unwrap();
        let first = apply_command(&mut txn, 5, &service("a", 1, "req-1")).unwrap();
        // The same create-if-absent again, as a retry after a lost answer: applying it twice
        // would report "already exists" for a write that succeeded.
        let retry = apply_command(&mut txn, 9, &service("a", 1, "req-1")).unwrap();
        assert_eq!(retry, first);
        let fresh = apply_command(&mut txn, 10, &service("a", 1, "req-2")).unwrap();
        assert!(
            matches!(fresh.result, Some(Outcome::Error(_))),
            "a new request is applied"
        );
    }

    #[test]
    fn a_batch_applies_each_command_with_its_own_result_and_keeps_every_event() {
        let (_d, store) = store();
        let mut txn = store.write().unwrap();
        let batch = pb::Command {
            leader_time_unix_ms: 7,
            actor: "batch".into(),
            actor_name: String::new(),
            request_id: String::new(),
            op: Some(pb::command::Op::Batch(pb::Batch {
                commands: vec![
                    service("a", 1, "x"),
                    service("b", 2, "y"),
                    service("a", 3, "z"),
                ],
            })),
        };
        let r = apply_command(&mut txn, 4, &batch).unwrap();
        let Some(Outcome::Batch(b)) = r.result else {
            panic!("{r:?}")
        };
        assert!(matches!(b.results[0].result, Some(Outcome::Apply(_))));
        assert!(matches!(b.results[1].result, Some(Outcome::Apply(_))));
        assert!(
            matches!(b.results[2].result, Some(Outcome::Error(_))),
            "a exists by then"
        );
        txn.commit().unwrap();
        let reader = StateReader::new(store.clone());
        let History::Events(events, _) = reader.events_after(0, "", 100).unwrap() else {
            panic!()
        };
        let names: Vec<_> = events
            .iter()
            .map(|(_, e)| e.resource.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(
            names,
            vec!["a", "b"],
            "both creates are in the watch history"
        );
    }
}

//! `konnectctl keys ...`, `konnectctl tokens ...` and `konnectctl audit`: consumers' API keys,
//! admin tokens, and the audit log of admin changes.
//!
//! A new key or token is printed alone on stdout (details on stderr), exactly once, so
//! `KEY=$(konnectctl keys create --consumer alice)` works.

use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};
use konnect_client::admin::{ApiKeyInfo, CreateKeyResponse, ListAuditRequest, TokenInfo};
use konnect_client::state::AuditEntry;
use serde::Serialize;

use super::output::{action_word, print_stdout, print_structured, render_table, OutputFormat};
use super::Context;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new API key for a consumer and print it (only this once).
    Create(CreateKeyArgs),
    /// List keys: id, prefix, consumer, created, expires, last used (approximate).
    List(ListKeysArgs),
    /// Revoke a key (by id, prefix or the key itself): refused everywhere once applied.
    Revoke(KeyIdArgs),
    /// Make a new key for the same consumer; the old one keeps working for --overlap.
    Rotate(RotateKeyArgs),
}

#[derive(Args)]
pub struct CreateKeyArgs {
    /// The Consumer the key identifies.
    #[arg(long)]
    consumer: String,
    /// Lifetime, e.g. 90d or 12h. Default: never expires.
    #[arg(long, value_parser = humantime::parse_duration)]
    expires: Option<Duration>,
    /// A note for people (what the key is for).
    #[arg(long, default_value = "")]
    description: String,
}

#[derive(Args)]
pub struct ListKeysArgs {
    /// Only this consumer's keys.
    #[arg(long, default_value = "")]
    consumer: String,
}

#[derive(Args)]
pub struct KeyIdArgs {
    /// Key id (as `keys list` shows), its prefix `knk_...`, or the whole key.
    id: String,
}

#[derive(Args)]
pub struct RotateKeyArgs {
    /// Key id (as `keys list` shows), its prefix, or the whole key.
    id: String,
    /// How long the old key keeps working, e.g. 24h. Default: it stops at once.
    #[arg(long, value_parser = humantime::parse_duration)]
    overlap: Option<Duration>,
    /// Lifetime of the new key. Default: never expires.
    #[arg(long, value_parser = humantime::parse_duration)]
    expires: Option<Duration>,
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Make an admin token with a role (admin, editor or viewer) and print it (only this once).
    Create(CreateTokenArgs),
    /// List admin tokens: id, name, role, created.
    List,
    /// Revoke an admin token by id (the last admin token cannot be revoked).
    Revoke(TokenIdArgs),
}

#[derive(Args)]
pub struct CreateTokenArgs {
    /// A name for people and the audit log (letters, digits, '-', '_', '.').
    #[arg(long)]
    name: String,
    /// admin (everything), editor (configuration and keys, no secrets, tokens or membership)
    /// or viewer (read only).
    #[arg(long)]
    role: String,
}

#[derive(Args)]
pub struct TokenIdArgs {
    /// The token's id, as `tokens list` shows.
    id: String,
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only changes made by this token (id or name).
    #[arg(long, default_value = "")]
    actor: String,
    /// Only entries after this revision (oldest first); without it, the newest entries.
    #[arg(long)]
    after: Option<u64>,
    /// How many entries (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn opt_time(ms: Option<u64>) -> String {
    ms.filter(|m| *m > 0).map_or_else(|| "-".into(), time)
}

#[derive(Serialize)]
struct KeyView {
    id: String,
    prefix: String,
    consumer: String,
    created: String,
    expires: Option<String>,
    last_used: Option<String>,
    description: String,
}

impl From<&ApiKeyInfo> for KeyView {
    fn from(k: &ApiKeyInfo) -> KeyView {
        KeyView {
            id: k.id.clone(),
            prefix: k.prefix.clone(),
            consumer: k.consumer.clone(),
            created: time(k.created_unix_ms),
            expires: k.expires_unix_ms.map(time),
            last_used: k.last_used_unix_ms.map(time),
            description: k.description.clone(),
        }
    }
}

#[derive(Serialize)]
struct NewKeyView {
    key: String,
    #[serde(flatten)]
    info: Option<KeyView>,
}

fn print_new_key(output: OutputFormat, r: &CreateKeyResponse) -> anyhow::Result<()> {
    if output != OutputFormat::Table {
        return print_structured(
            output,
            &NewKeyView {
                key: r.key.clone(),
                info: r.info.as_ref().map(KeyView::from),
            },
        );
    }
    if let Some(i) = &r.info {
        eprintln!(
            "API key {} for consumer {:?} (expires: {}). It is shown only now: store it safely.",
            i.id,
            i.consumer,
            opt_time(i.expires_unix_ms)
        );
    }
    print_stdout(&r.key)
}

pub async fn keys(context: &Context, command: KeysCommand) -> anyhow::Result<()> {
    let client = context.connect().await?;
    match command {
        KeysCommand::Create(a) => {
            let r = client
                .create_key(
                    &a.consumer,
                    a.expires.map(|d| d.as_secs().max(1)),
                    &a.description,
                )
                .await?;
            print_new_key(context.output, &r)
        }
        KeysCommand::Rotate(a) => {
            let r = client
                .rotate_key(
                    &a.id,
                    a.overlap.map_or(0, |d| d.as_secs()),
                    a.expires.map(|d| d.as_secs().max(1)),
                )
                .await?;
            eprintln!(
                "old key {} stops working {}",
                a.id,
                match a.overlap {
                    Some(d) if !d.is_zero() => format!("in {}", humantime::format_duration(d)),
                    _ => "now".into(),
                }
            );
            print_new_key(context.output, &r)
        }
        KeysCommand::Revoke(a) => {
            let r = client.revoke_key(&a.id).await?;
            eprintln!("key revoked (revision {})", r.revision);
            Ok(())
        }
        KeysCommand::List(a) => {
            let keys = client.list_keys(&a.consumer).await?.keys;
            if context.output != OutputFormat::Table {
                let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
                return print_structured(context.output, &views);
            }
            if keys.is_empty() {
                eprintln!("no API keys");
                return Ok(());
            }
            let rows = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.prefix.clone(),
                        k.consumer.clone(),
                        time(k.created_unix_ms),
                        opt_time(k.expires_unix_ms),
                        opt_time(k.last_used_unix_ms),
                    ]
                })
                .collect();
            print_stdout(&render_table(
                &[
                    "ID",
                    "PREFIX",
                    "CONSUMER",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                ],
                rows,
            ))
        }
    }
}

#[derive(Serialize)]
struct TokenView {
    id: String,
    name: String,
    role: String,
    created: String,
}

impl From<&TokenInfo> for TokenView {
    fn from(t: &TokenInfo) -> TokenView {
        TokenView {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role.clone(),
            created: time(t.created_unix_ms),
        }
    }
}

pub async fn tokens(context: &Context, command: TokensCommand) -> anyhow::Result<()> {
    let client = context.connect().await?;
    match command {
        TokensCommand::Create(a) => {
            let r = client.create_token(&a.name, &a.role).await?;
            if context.output != OutputFormat::Table {
                #[derive(Serialize)]
                struct NewToken {
                    token: String,
                    #[serde(flatten)]
                    info: Option<TokenView>,
                }
                return print_structured(
                    context.output,
                    &NewToken {
                        token: r.token.clone(),
                        info: r.info.as_ref().map(TokenView::from),
                    },
                );
            }
            if let Some(i) = &r.info {
                eprintln!(
                    "admin token {} ({:?}, role {}). It is shown only now: store it safely.",
                    i.id, i.name, i.role
                );
            }
            print_stdout(&r.token)
        }
        TokensCommand::List => {
            let tokens = client.list_tokens().await?.tokens;
            if context.output != OutputFormat::Table {
                let views: Vec<TokenView> = tokens.iter().map(TokenView::from).collect();
                return print_structured(context.output, &views);
            }
            let rows = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.role.clone(),
                        time(t.created_unix_ms),
                    ]
                })
                .collect();
            print_stdout(&render_table(&["ID", "NAME", "ROLE", "CREATED"], rows))
        }
        TokensCommand::Revoke(a) => {
            let r = client.revoke_token(&a.id).await?;
            eprintln!("token {} revoked (revision {})", a.id, r.revision);
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct AuditView {
    revision: u64,
    time: String,
    actor: String,
    actor_name: String,
    action: String,
    changes: Vec<String>,
    detail: String,
}

impl From<&AuditEntry> for AuditView {
    fn from(e: &AuditEntry) -> AuditView {
        AuditView {
            revision: e.revision,
            time: time(e.leader_time_unix_ms),
            actor: e.actor.clone(),
            actor_name: e.actor_name.clone(),
            action: e.action.clone(),
            changes: e
                .changes
                .iter()
                .map(|c| format!("{} {}/{}", action_word(c.action), c.kind, c.name))
                .collect(),
            detail: e.detail.clone(),
        }
    }
}

pub async fn audit(context: &Context, a: AuditArgs) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let request = ListAuditRequest {
        after_revision: a.after.unwrap_or(0),
        limit: a.limit,
        actor: a.actor,
        newest_first: a.after.is_none(),
    };
    let mut entries = client.list_audit(request).await?.entries;
    if a.after.is_none() {
        // Fetched newest first; shown in time order like a log.
        entries.reverse();
    }
    let views: Vec<AuditView> = entries.iter().map(AuditView::from).collect();
    if context.output != OutputFormat::Table {
        return print_structured(context.output, &views);
    }
    let rows = views
        .into_iter()
        .map(|v| {
            let who = if v.actor_name.is_empty() {
                v.actor
            } else {
                format!("{} ({})", v.actor_name, v.actor)
            };
            let what = if v.changes.is_empty() {
                v.detail
            } else {
                v.changes.join(", ")
            };
            vec![v.revision.to_string(), v.time, who, v.action, what]
        })
        .collect();
    print_stdout(&render_table(
        &["REVISION", "TIME", "ACTOR", "ACTION", "WHAT"],
        rows,
    ))
}

#[derive(Args)]
pub struct UsageArgs {
    /// The RateLimit (strict or fast; local limits are counted per node).
    #[arg(long)]
    limit: String,
    /// One key: a consumer name, client address, header value... Without it: every key with
    /// units granted in its current window.
    #[arg(long)]
    key: Option<String>,
    /// Confirm through the leader that the answer is current.
    #[arg(long)]
    consistent: bool,
    /// Most keys to list (without --key).
    #[arg(long, default_value_t = 100)]
    max_keys: u32,
}

#[derive(Serialize)]
struct UsageView {
    limit: String,
    mode: String,
    key: String,
    limit_per_window: u64,
    window_seconds: u64,
    used: u64,
    remaining: u64,
    window_start: String,
    window_end: String,
    per_node: std::collections::BTreeMap<u64, u64>,
}

/// `konnectctl usage`: used and remaining per key of a RateLimit, the same from any node.
pub async fn usage(context: &Context, a: UsageArgs) -> anyhow::Result<()> {
    use konnect_proto::admin::v1::LimitUsageRequest;
    let client = context.connect().await?;
    let mut views = Vec::new();
    let mut after_key = String::new();
    loop {
        let page = client
            .limit_usage(LimitUsageRequest {
                limit: a.limit.clone(),
                key: a.key.clone().unwrap_or_default(),
                after_key: after_key.clone(),
                page_size: a.max_keys.clamp(1, 1000),
                consistent: a.consistent,
            })
            .await?;
        for k in &page.keys {
            views.push(UsageView {
                limit: page.limit.clone(),
                mode: page.mode.clone(),
                key: k.key.clone(),
                limit_per_window: page.limit_per_window,
                window_seconds: page.window_seconds,
                used: k.used,
                remaining: k.remaining,
                window_start: time(k.window_start_unix_ms),
                window_end: time(k.window_end_unix_ms),
                per_node: k.per_node.iter().map(|(n, u)| (*n, *u)).collect(),
            });
        }
        if page.next_after_key.is_empty() || views.len() >= a.max_keys as usize {
            break;
        }
        after_key = page.next_after_key;
    }
    views.truncate(a.max_keys as usize);
    if context.output != OutputFormat::Table {
        return print_structured(context.output, &views);
    }
    if views.is_empty() {
        eprintln!(
            "no key of {} has used anything in its current window",
            a.limit
        );
        return Ok(());
    }
    let rows = views
        .into_iter()
        .map(|v| {
            let nodes = v
                .per_node
                .iter()
                .map(|(n, u)| format!("{n}:{u}"))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                v.key,
                v.used.to_string(),
                v.remaining.to_string(),
                v.limit_per_window.to_string(),
                format!("{}s", v.window_seconds),
                v.window_end,
                if nodes.is_empty() { "-".into() } else { nodes },
            ]
        })
        .collect();
    print_stdout(&render_table(
        &[
            "KEY",
            "USED",
            "REMAINING",
            "LIMIT",
            "WINDOW",
            "RESETS",
            "PER NODE",
        ],
        rows,
    ))
}

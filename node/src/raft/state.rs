//! Layout of the replicated state in its redb file (`state.redb`) and the read API over it.
//!
//! Tables (all keys bytes, values protobuf from `state.proto` unless noted):
//! - `sm_meta`: last applied log id, last membership, cluster id, last leader time, watch
//!   history bookkeeping.
//! - `resources`: `Kind \0 name` -> `Resource`.
//! - `events`: big-endian (revision, sequence) -> `ResourceEvent`; the bounded watch history.
//! - `admin_tokens`: SHA-256 of the secret -> `AdminToken`.
//! - `usage_marks`, `spend`: the AI cost ledger (what each node incarnation has shipped, and
//!   the aggregates it was folded into).
//!
//! Reads go through [`StateReader`], which sees one consistent point in time per call.
//! Writes happen only in `apply.rs` and in snapshot installation.

use konnect_proto::state::v1 as pb;
use prost::Message;

use crate::store::{u64_key, Store, StoreError, Table};

pub const SM_META: Table = Table("sm_meta");
pub const RESOURCES: Table = Table("resources");
pub const EVENTS: Table = Table("events");
pub const ADMIN_TOKENS: Table = Table("admin_tokens");
/// Recent request ids -> result, for deduplicating retried writes.
pub const REQUESTS: Table = Table("requests");
/// Sequence number -> request id: the order in which ids are forgotten.
pub const REQUEST_ORDER: Table = Table("request_order");
/// Big-endian (revision, sequence) -> `AuditEntry`: the bounded audit log of admin changes.
pub const AUDIT: Table = Table("audit");
/// ApiKey name -> big-endian u64: the latest use any node reported (unix ms).
pub const API_KEY_LAST_USED: Table = Table("api_key_last_used");
/// `limit \0 key` -> `GrantRow`: the units of a strict RateLimit granted in the current window.
pub const GRANTS: Table = Table("grants");
/// Big-endian window end (unix ms) ++ `limit \0 key` -> empty: which grant rows expire when,
/// so finished windows are deleted oldest first.
pub const GRANT_EXPIRY: Table = Table("grant_expiry");

/// Big-endian (node id, incarnation) -> big-endian u64: the last usage record sequence number
/// counted from that node incarnation (the ledger's deduplication mark).
pub const USAGE_MARKS: Table = Table("usage_marks");
/// Big-endian u32 day (days since 1970-01-01 UTC) ++ `team \0 consumer \0 model \0 provider
/// \0 zone` -> `SpendRow`: the AI cost ledger's aggregates.
pub const SPEND: Table = Table("spend");

/// `budget \0` big-endian period start (unix ms) -> `BudgetSpend`: what the ledger counted
/// against each Budget per period.
pub const BUDGET_SPEND: Table = Table("budget_spend");

/// Every table of the state machine; a snapshot copies exactly these.
pub const TABLES: &[Table] = &[
    SM_META,
    RESOURCES,
    EVENTS,
    ADMIN_TOKENS,
    REQUESTS,
    REQUEST_ORDER,
    AUDIT,
    API_KEY_LAST_USED,
    GRANTS,
    GRANT_EXPIRY,
    USAGE_MARKS,
    SPEND,
    BUDGET_SPEND,
];

pub const KEY_LAST_APPLIED: &[u8] = b"last_applied";
pub const KEY_MEMBERSHIP: &[u8] = b"membership";
pub const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
pub const KEY_LEADER_TIME: &[u8] = b"leader_time_unix_ms";
/// Watch history: revisions at or below this are no longer kept.
pub const KEY_COMPACTED_REVISION: &[u8] = b"compacted_revision";
pub const KEY_EVENT_COUNT: &[u8] = b"event_count";

/// How many request ids are remembered for deduplication: a retry arriving after this many
/// newer writes is applied again (clients retry within seconds; this covers hours of writes).
pub const REQUEST_MEMORY: u64 = 100_000;
pub const KEY_REQUEST_COUNT: &[u8] = b"request_count";
/// Sequence number of the last remembered request id (orders `REQUEST_ORDER`).
pub const KEY_REQUEST_SEQ: &[u8] = b"request_seq";
/// (revision, next sequence) of the last events written, so several commands in one entry
/// (a batch) append to the same revision without overwriting each other.
pub const KEY_EVENT_CURSOR: &[u8] = b"event_cursor";

/// How many admin changes the audit log keeps; the oldest are dropped first.
pub const AUDIT_MEMORY: u64 = 100_000;
pub const KEY_AUDIT_COUNT: &[u8] = b"audit_count";
/// (revision, next sequence) of the last audit entry, like [`KEY_EVENT_CURSOR`].
pub const KEY_AUDIT_CURSOR: &[u8] = b"audit_cursor";

/// How many resource change events the watch history keeps (etcd keeps by revision too).
pub const WATCH_HISTORY: u64 = 10_000;

/// The key of a node incarnation's mark in [`USAGE_MARKS`].
pub fn usage_mark_key(node_id: u64, incarnation: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&node_id.to_be_bytes());
    k[8..].copy_from_slice(&incarnation.to_be_bytes());
    k
}

/// The dimensions of a [`SPEND`] row besides its day, in key order.
pub const SPEND_DIMENSIONS: [&str; 5] = ["team", "consumer", "model", "provider", "zone"];

/// The key of the [`SPEND`] row a usage record is counted in.
pub fn spend_key(day: u32, dims: [&str; 5]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + dims.iter().map(|d| d.len() + 1).sum::<usize>());
    k.extend_from_slice(&day.to_be_bytes());
    for (i, d) in dims.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(d.as_bytes());
    }
    k
}

/// The day and dimensions of a [`SPEND`] key (`None` for a malformed one).
pub fn parse_spend_key(k: &[u8]) -> Option<(u32, [String; 5])> {
    let day = u32::from_be_bytes(k.get(..4)?.try_into().ok()?);
    let mut parts = k[4..].split(|b| *b == 0);
    let mut dims: [String; 5] = Default::default();
    for d in dims.iter_mut() {
        *d = String::from_utf8_lossy(parts.next()?).into_owned();
    }
    parts.next().is_none().then_some((day, dims))
}

/// The key of a Budget's spend in one period in [`BUDGET_SPEND`].
pub fn budget_spend_key(budget: &str, period_start_ms: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(budget.len() + 9);
    k.extend_from_slice(budget.as_bytes());
    k.push(0);
    k.extend_from_slice(&period_start_ms.to_be_bytes());
    k
}

pub fn resource_key(kind: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(kind.len() + name.len() + 1);
    k.extend_from_slice(kind.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The key range holding every resource of `kind`.
pub fn kind_range(kind: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lo = kind.as_bytes().to_vec();
    lo.push(0);
    let mut hi = kind.as_bytes().to_vec();
    hi.push(1);
    (lo, hi)
}

pub fn event_key(revision: u64, seq: u32) -> Vec<u8> {
    let mut k = u64_key(revision).to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn event_revision(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8]);
    u64::from_be_bytes(b)
}

pub fn decode<M: Message + Default>(bytes: &[u8], what: &'static str) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError {
        op: what,
        message: format!("corrupt record: {e}"),
    })
}

pub fn u64_value(bytes: Option<Vec<u8>>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// One page of a resource listing.
pub struct ResourcePage {
    pub items: Vec<pb::Resource>,
    /// Key to continue after, when more may follow.
    pub next_key: Option<Vec<u8>>,
    /// Applied revision the page was read at.
    pub revision: u64,
}

/// Outcome of reading watch history.
pub enum History {
    /// Events in order, and the applied revision they are complete up to.
    Events(Vec<(u64, pb::ResourceEvent)>, u64),
    /// The requested revision is older than the kept history.
    Compacted { compacted_revision: u64 },
}

/// Read access to the replicated state, served locally.
#[derive(Clone)]
pub struct StateReader {
    store: Store,
}

impl StateReader {
    pub fn new(store: Store) -> StateReader {
        StateReader { store }
    }

    pub fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        let txn = self.store.read()?;
        Ok(txn
            .get(SM_META, KEY_CLUSTER_ID)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Index of the last applied log entry (the state's revision); 0 before any.
    pub fn applied_revision(&self) -> Result<u64, StoreError> {
        let txn = self.store.read()?;
        Ok(match txn.get(SM_META, KEY_LAST_APPLIED)? {
            Some(b) => decode::<pb::LogId>(&b, "last applied")?.index,
            None => 0,
        })
    }

    pub fn get_resource(&self, kind: &str, name: &str) -> Result<Option<pb::Resource>, StoreError> {
        let txn = self.store.read()?;
        txn.get(RESOURCES, &resource_key(kind, name))?
            .map(|b| decode(&b, "resource"))
            .transpose()
    }

    /// Resources of `kind` (all kinds when empty) after `after_key`, filtered by `selector`,
    /// up to `limit`.
    pub fn list_resources(
        &self,
        kind: &str,
        selector: &LabelSelector,
        after_key: Option<&[u8]>,
        limit: usize,
    ) -> Result<ResourcePage, StoreError> {
        let txn = self.store.read()?;
        let revision = match txn.get(SM_META, KEY_LAST_APPLIED)? {
            Some(b) => decode::<pb::LogId>(&b, "last applied")?.index,
            None => 0,
        };
        let (lo, hi) = if kind.is_empty() {
            (Vec::new(), vec![0xff; 1])
        } else {
            kind_range(kind)
        };
        let mut items = Vec::new();
        let mut cursor: Vec<u8> = match after_key {
            Some(k) if k >= lo.as_slice() => k.to_vec(),
            _ => lo.clone(),
        };
        let mut first = after_key.is_none();
        let mut next_key = None;
        // Scan in chunks so a selective label filter does not load the whole table at once.
        'scan: loop {
            let rows = if first {
                txn.range(RESOURCES, cursor.as_slice()..hi.as_slice(), 256)?
            } else {
                txn.range(
                    RESOURCES,
                    (
                        std::ops::Bound::Excluded(cursor.as_slice()),
                        std::ops::Bound::Excluded(hi.as_slice()),
                    ),
                    256,
                )?
            };
            first = false;
            if rows.is_empty() {
                break;
            }
            for (k, v) in rows {
                cursor = k.clone();
                let r: pb::Resource = decode(&v, "resource")?;
                if selector.matches(&r.labels) {
                    items.push(r);
                    if items.len() == limit {
                        next_key = Some(k);
                        break 'scan;
                    }
                }
            }
        }
        Ok(ResourcePage {
            items,
            next_key,
            revision,
        })
    }

    /// Every resource of each of `kinds`, all read in one transaction (one consistent point
    /// in time), and the applied revision of that point.
    pub fn resources_of_kinds(
        &self,
        kinds: &[&str],
    ) -> Result<(u64, Vec<Vec<pb::Resource>>), StoreError> {
        let txn = self.store.read()?;
        let revision = match txn.get(SM_META, KEY_LAST_APPLIED)? {
            Some(b) => decode::<pb::LogId>(&b, "last applied")?.index,
            None => 0,
        };
        let mut out = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let (lo, hi) = kind_range(kind);
            let rows = txn.range(RESOURCES, lo.as_slice()..hi.as_slice(), usize::MAX)?;
            out.push(
                rows.into_iter()
                    .map(|(_, v)| decode(&v, "resource"))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        Ok((revision, out))
    }

    /// The current state of each (kind, name), read in one transaction, and its revision.
    pub fn resources_at(
        &self,
        keys: &[(String, String)],
    ) -> Result<(u64, Vec<Option<pb::Resource>>), StoreError> {
        let txn = self.store.read()?;
        let revision = match txn.get(SM_META, KEY_LAST_APPLIED)? {
            Some(b) => decode::<pb::LogId>(&b, "last applied")?.index,
            None => 0,
        };
        let mut out = Vec::with_capacity(keys.len());
        for (kind, name) in keys {
            out.push(
                txn.get(RESOURCES, &resource_key(kind, name))?
                    .map(|b| decode(&b, "resource"))
                    .transpose()?,
            );
        }
        Ok((revision, out))
    }

    /// Change events after `from_revision` (exclusive) for `kind` (all when empty). The history
    /// is bounded ([`WATCH_HISTORY`]), so reading all of it at once is bounded too.
    pub fn events_after(
        &self,
        from_revision: u64,
        kind: &str,
        limit: usize,
    ) -> Result<History, StoreError> {
        let txn = self.store.read()?;
        let compacted = u64_value(txn.get(SM_META, KEY_COMPACTED_REVISION)?);
        let applied = match txn.get(SM_META, KEY_LAST_APPLIED)? {
            Some(b) => decode::<pb::LogId>(&b, "last applied")?.index,
            None => 0,
        };
        if from_revision < compacted {
            return Ok(History::Compacted {
                compacted_revision: compacted,
            });
        }
        let start = event_key(from_revision.saturating_add(1), 0);
        let rows = txn.range(EVENTS, start.as_slice().., limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let ev: pb::ResourceEvent = decode(&v, "event")?;
            let matches = kind.is_empty() || ev.resource.as_ref().is_some_and(|r| r.kind == kind);
            if matches {
                out.push((event_revision(&k), ev));
            }
        }
        Ok(History::Events(out, applied))
    }

    /// Every admin token (few: they are made by hand).
    pub fn tokens(&self) -> Result<Vec<pb::AdminToken>, StoreError> {
        let txn = self.store.read()?;
        txn.range(ADMIN_TOKENS, .., usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v, "admin token"))
            .collect()
    }

    /// Audit entries with a revision above `after_revision`, oldest first, at most `limit`
    /// matching `keep`.
    pub fn audit_after(
        &self,
        after_revision: u64,
        limit: usize,
        keep: impl Fn(&pb::AuditEntry) -> bool,
    ) -> Result<Vec<pb::AuditEntry>, StoreError> {
        let txn = self.store.read()?;
        let from = event_key(after_revision.saturating_add(1), 0);
        let mut out = Vec::new();
        for (_, v) in txn.range(AUDIT, from.as_slice().., usize::MAX)? {
            let e: pb::AuditEntry = decode(&v, "audit entry")?;
            if keep(&e) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The newest `limit` audit entries matching `keep`, newest first.
    pub fn audit_newest(
        &self,
        limit: usize,
        keep: impl Fn(&pb::AuditEntry) -> bool,
    ) -> Result<Vec<pb::AuditEntry>, StoreError> {
        let txn = self.store.read()?;
        let mut out: Vec<pb::AuditEntry> = Vec::new();
        for (_, v) in txn.range(AUDIT, .., usize::MAX)?.into_iter().rev() {
            let e: pb::AuditEntry = decode(&v, "audit entry")?;
            if keep(&e) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The latest leader time the state machine has applied (unix ms; 0 before any).
    pub fn leader_time(&self) -> Result<u64, StoreError> {
        let txn = self.store.read()?;
        Ok(u64_value(txn.get(SM_META, KEY_LEADER_TIME)?))
    }

    /// The grant row of a (limit, key) (what `Limits.Usage` reads); its window may be over.
    pub fn grant_row(&self, limit: &str, key: &str) -> Result<Option<pb::GrantRow>, StoreError> {
        let txn = self.store.read()?;
        txn.get(GRANTS, &resource_key(limit, key))?
            .map(|b| decode(&b, "grant row"))
            .transpose()
    }

    /// Grant rows of `limit` with keys after `after_key`, in key order, at most `n` (rows of
    /// finished windows included: the caller judges them by time).
    pub fn grant_rows(
        &self,
        limit: &str,
        after_key: &str,
        n: usize,
    ) -> Result<Vec<(String, pb::GrantRow)>, StoreError> {
        let txn = self.store.read()?;
        let (lo, hi) = kind_range(limit);
        let mut from = resource_key(limit, after_key);
        if !after_key.is_empty() {
            from.push(0); // strictly after
        }
        let from = from.max(lo);
        txn.range(GRANTS, from.as_slice()..hi.as_slice(), n)?
            .into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8_lossy(&k[limit.len() + 1..]).into_owned();
                Ok((key, decode(&v, "grant row")?))
            })
            .collect()
    }

    /// The last usage record sequence number counted from a node incarnation (0: none).
    pub fn usage_mark(&self, node_id: u64, incarnation: u64) -> Result<u64, StoreError> {
        let txn = self.store.read()?;
        Ok(u64_value(
            txn.get(USAGE_MARKS, &usage_mark_key(node_id, incarnation))?,
        ))
    }

    /// Calls `f` with every ledger row of the days `first..=last` (days since 1970-01-01 UTC),
    /// in key order: day, then team, consumer, model, provider, zone.
    pub fn for_each_spend_row(
        &self,
        first: u32,
        last: u32,
        mut f: impl FnMut(u32, [String; 5], pb::SpendRow),
    ) -> Result<(), StoreError> {
        let txn = self.store.read()?;
        let lo = first.to_be_bytes();
        let hi = last.saturating_add(1).to_be_bytes();
        let range = if last == u32::MAX {
            (
                std::ops::Bound::Included(&lo[..]),
                std::ops::Bound::Unbounded,
            )
        } else {
            (
                std::ops::Bound::Included(&lo[..]),
                std::ops::Bound::Excluded(&hi[..]),
            )
        };
        txn.for_each_in(SPEND, range, |k, v| {
            let (day, dims) = parse_spend_key(k).ok_or_else(|| StoreError {
                op: "spend row",
                message: format!("malformed key {k:02x?}"),
            })?;
            f(day, dims, decode(v, "spend row")?);
            Ok(())
        })
    }

    /// What the ledger counted against `budget` in the period starting at `period_start_ms`.
    pub fn budget_spend(
        &self,
        budget: &str,
        period_start_ms: u64,
    ) -> Result<pb::BudgetSpend, StoreError> {
        let txn = self.store.read()?;
        txn.get(BUDGET_SPEND, &budget_spend_key(budget, period_start_ms))?
            .map_or(Ok(pb::BudgetSpend::default()), |b| {
                decode(&b, "budget spend")
            })
    }

    /// The grant row of a Budget (what nodes were granted in its current period).
    pub fn budget_grant_row(&self, budget: &str) -> Result<Option<pb::GrantRow>, StoreError> {
        let txn = self.store.read()?;
        txn.get(GRANTS, &super::apply::grant_row_key("Budget", budget, ""))?
            .map(|b| decode(&b, "grant row"))
            .transpose()
    }

    /// When each API key was last used, as far as the nodes reported (unix ms).
    pub fn api_keys_last_used(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let txn = self.store.read()?;
        Ok(txn
            .range(API_KEY_LAST_USED, .., usize::MAX)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), u64_value(Some(v))))
            .collect())
    }

    pub fn token_by_hash(&self, sha256: &[u8]) -> Result<Option<pb::AdminToken>, StoreError> {
        let txn = self.store.read()?;
        txn.get(ADMIN_TOKENS, sha256)?
            .map(|b| decode(&b, "admin token"))
            .transpose()
    }
}

/// `key=value,key!=value`: every term must hold.
#[derive(Debug, Default, Clone)]
pub struct LabelSelector {
    terms: Vec<(String, String, bool)>,
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, v, eq) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, v, true)
            } else {
                return Err(format!(
                    "label selector term {term:?} is not key=value or key!=value"
                ));
            };
            let k = k.trim();
            if k.is_empty() {
                return Err(format!("label selector term {term:?} has an empty key"));
            }
            terms.push((k.to_string(), v.trim().to_string(), eq));
        }
        Ok(LabelSelector { terms })
    }

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|(k, v, eq)| {
            let has = labels.get(k).is_some_and(|x| x == v);
            has == *eq
        })
    }
}

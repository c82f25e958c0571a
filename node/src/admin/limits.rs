//! `konnect.admin.v1.Limits`: what strict and fast RateLimits have used in their current
//! window, read from the replicated grant rows, so every node gives the same answer.

use konnect_proto::admin::v1 as api;
use konnect_proto::admin::v1::limits_server::Limits;
use konnect_proto::json::struct_to_json;
use konnect_proto::state::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Permission};
use super::{count_request, AdminError};
use crate::node::NodeHandle;
use crate::resources::rate_limit::{Mode, RateLimitSpec};

pub struct LimitService {
    pub node: NodeHandle,
    pub auth: Authenticator,
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// A key's usage in the window open at `now` (a row of a finished window counts as unused).
fn key_usage(
    key: String,
    row: Option<pb::GrantRow>,
    spec: &RateLimitSpec,
    now: u64,
) -> api::KeyUsage {
    let window = spec.window_ms();
    match row {
        Some(row) if row.window_end_unix_ms > now => api::KeyUsage {
            key,
            used: row.granted,
            remaining: spec.limit.saturating_sub(row.granted),
            window_start_unix_ms: row.window_start_unix_ms,
            window_end_unix_ms: row.window_end_unix_ms,
            per_node: row.per_node,
        },
        _ => api::KeyUsage {
            key,
            used: 0,
            remaining: spec.limit,
            window_start_unix_ms: now - now % window,
            window_end_unix_ms: now - now % window + window,
            per_node: Default::default(),
        },
    }
}

#[tonic::async_trait]
impl Limits for LimitService {
    async fn usage(
        &self,
        req: Request<api::LimitUsageRequest>,
    ) -> Result<Response<api::LimitUsageResponse>, Status> {
        count_request("Limits.Usage");
        self.auth.authorize(&req, Permission::Read).await?;
        let r = req.into_inner();
        if r.consistent {
            self.node
                .proposer
                .linearizable_barrier()
                .await
                .map_err(AdminError::from)?;
        }
        let resource = self
            .node
            .reader
            .get_resource("RateLimit", &r.limit)
            .map_err(AdminError::from)?
            .ok_or_else(|| AdminError::NotFound(format!("RateLimit {:?} not found", r.limit)))?;
        let spec = RateLimitSpec::parse(&struct_to_json(&resource.spec.unwrap_or_default()))
            .map_err(|e| AdminError::Internal(format!("stored RateLimit {:?}: {e}", r.limit)))?;
        let mode = match spec.mode {
            Mode::Strict => "strict",
            Mode::Fast => "fast",
            Mode::Local => {
                return Err(AdminError::FailedPrecondition(format!(
                    "RateLimit {:?} is local: each node counts on its own (see the \
                     X-RateLimit-* headers of its answers); only strict and fast limits are \
                     counted cluster-wide",
                    r.limit
                ))
                .into())
            }
        };
        // Leader time as far as this node knows it: the state machine's, or this node's
        // clock when that is later (no grant since).
        let now =
            crate::clock::unix_ms().max(self.node.reader.leader_time().map_err(AdminError::from)?);
        let (keys, next_after_key) = if !r.key.is_empty() {
            let row = self
                .node
                .reader
                .grant_row(&r.limit, &r.key)
                .map_err(AdminError::from)?;
            (vec![key_usage(r.key, row, &spec, now)], String::new())
        } else {
            let page = match r.page_size as usize {
                0 => DEFAULT_PAGE,
                n => n.min(MAX_PAGE),
            };
            // Rows of finished windows wait for collection: skip them, page on.
            let mut keys = Vec::new();
            let mut after = r.after_key;
            let mut more = true;
            while keys.len() < page && more {
                let rows = self
                    .node
                    .reader
                    .grant_rows(&r.limit, &after, page)
                    .map_err(AdminError::from)?;
                more = rows.len() == page;
                for (key, row) in rows {
                    after.clone_from(&key);
                    if row.window_end_unix_ms > now {
                        keys.push(key_usage(key, Some(row), &spec, now));
                        if keys.len() == page {
                            break;
                        }
                    }
                }
            }
            let next = if keys.len() == page {
                after
            } else {
                String::new()
            };
            (keys, next)
        };
        Ok(Response::new(api::LimitUsageResponse {
            limit: r.limit,
            mode: mode.into(),
            limit_per_window: spec.limit,
            window_seconds: spec.window_ms() / 1000,
            keys,
            next_after_key,
        }))
    }
}

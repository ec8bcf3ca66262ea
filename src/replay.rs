//! `policy replay`, shared by the CLI and `POST /v1/policy/replay`: every
//! recorded token request of a tenant in a time window is decided again under
//! a proposed policy (`crate::policy::replay` decides and counts), reading
//! only what replay needs from the audit record. Replay writes no decision;
//! the replay itself is one audit event (`policy_replayed`).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::admin::{Actor, AdminError};
use crate::audit::{AuditRow, chain};
use crate::domain::Identity;
use crate::policy::replay::{Recorded, ReplayReport, Replayer, Verdict};
use crate::policy::{self, CompiledPolicy, DecisionRequest, Expiry, SessionFacts};
use crate::store::{RequestRow, Store};
use crate::tokens::SessionId;

/// The time window of a replay: `since_ms <= at < until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since_ms: i64,
    pub until_ms: i64,
}

/// What one replay may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most recorded requests in the window; more is refused (narrow it).
    pub max_requests: u64,
    /// Most registered sessions (named by the window's requests) loaded for
    /// rows recorded without their session facts; more is refused.
    pub max_sessions: u64,
}

impl Bounds {
    /// A tenant admin's replay (HTTP and console): a million requests is the
    /// size docs/performance.md measures (4-9 s), and 10,000 sessions hold at
    /// most about 100 MiB of labels (32 labels of 320 bytes each).
    pub const TENANT: Bounds = Bounds {
        max_requests: 1_000_000,
        max_sessions: 10_000,
    };
    /// The operator's CLI, on its own process.
    pub const NONE: Bounds = Bounds {
        max_requests: u64::MAX,
        max_sessions: u64::MAX,
    };
}

/// The longest window a tenant admin may replay (31 days: a month of traffic).
pub const MAX_TENANT_WINDOW_MS: i64 = 31 * 86_400_000;
/// How long a tenant admin's replay waits for another to finish.
pub const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a tenant admin's replay may run (twice the measured time of the
/// largest one allowed, on the slower store).
pub const MAX_TENANT_RUN: std::time::Duration = std::time::Duration::from_secs(20);

/// A tenant admin's replay (`POST /v1/policy/replay`, the console): the
/// window at most `MAX_TENANT_WINDOW_MS`, one replay at a time per broker
/// (`gate`; `Busy` when it does not open within `GATE_WAIT`), at most
/// `MAX_TENANT_RUN`, and `Bounds::TENANT`, so however many an admin sends
/// they hold one pool connection and one copy of their sessions at a time.
#[allow(clippy::too_many_arguments)]
pub async fn for_tenant(
    gate: &std::sync::Arc<tokio::sync::Semaphore>,
    store: &Store,
    source_name: &str,
    source: &str,
    tenant: &str,
    window: Window,
    actor: &Actor,
    now_ms: i64,
) -> Result<ReplayReport, AdminError> {
    if window.until_ms.saturating_sub(window.since_ms) > MAX_TENANT_WINDOW_MS {
        return Err(AdminError::Field {
            field: "since".into(),
            message: format!(
                "a replay window is at most {} days; narrow since..until",
                MAX_TENANT_WINDOW_MS / 86_400_000
            ),
        });
    }
    let permit = tokio::time::timeout(GATE_WAIT, std::sync::Arc::clone(gate).acquire_owned())
        .await
        .map_err(|_| AdminError::Busy)?
        .map_err(|_| AdminError::Busy)?;
    // Off the HTTP workers (each row is decided as it is read), bounded in
    // time by itself, and holding the gate until it has really ended, also
    // when its request has gone.
    let (store, name, source, tenant, actor) = (
        store.clone(),
        source_name.to_owned(),
        source.to_owned(),
        tenant.to_owned(),
        actor.clone(),
    );
    let job = async move {
        let r = tokio::time::timeout(
            MAX_TENANT_RUN,
            replay(
                &store,
                &name,
                &source,
                Some(&tenant),
                window,
                &actor,
                now_ms,
                Bounds::TENANT,
            ),
        )
        .await;
        drop(permit);
        r
    };
    crate::audit::heavy::off_workers(job)
        .await
        .map_err(|e| AdminError::Invalid(e.to_string()))?
        .map_err(|_| {
            AdminError::TimedOut(format!(
                "the replay did not finish within {} s and was stopped; narrow since..until",
                MAX_TENANT_RUN.as_secs()
            ))
        })?
}

/// Most distinct values each decoding cache keeps (sessions, details, group lists).
const CACHE_LIMIT: usize = 100_000;

/// Turns recorded rows into replay inputs. Session IDs, session-fact records
/// and group lists repeat across a tenant's traffic, so each distinct text is
/// decoded once (bounded caches): reading rows, not parsing them, stays the cost.
#[derive(Debug)]
pub struct RowDecoder {
    /// Today's registrations, for rows recorded before session facts were.
    fallback: HashMap<String, SessionFacts>,
    projects: HashMap<String, Option<String>>,
    details: HashMap<String, Option<SessionFacts>>,
    groups: HashMap<String, Vec<String>>,
}

fn cached<V: Clone>(map: &mut HashMap<String, V>, key: &str, make: impl FnOnce() -> V) -> V {
    if let Some(v) = map.get(key) {
        return v.clone();
    }
    let v = make();
    if map.len() < CACHE_LIMIT {
        map.insert(key.to_owned(), v.clone());
    }
    v
}

/// The part of a token row's `detail` replay reads.
#[derive(serde::Deserialize)]
struct Detail {
    session: Option<serde_json::Value>,
}

impl RowDecoder {
    pub fn new(fallback: HashMap<String, SessionFacts>) -> RowDecoder {
        RowDecoder {
            fallback,
            projects: HashMap::new(),
            details: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// The replay input of a row; `None` for rows that carry no request to
    /// decide (no user or session: refused before any decision).
    pub fn decode(&mut self, row: RequestRow) -> Option<Recorded> {
        let user_id = row.user_id?;
        let session_id = row.session_id?;
        let groups = match row.user_groups.as_deref() {
            Some(g) => cached(&mut self.groups, g, || {
                serde_json::from_str(g).unwrap_or_default()
            }),
            None => Vec::new(),
        };
        let recorded_facts = match row.detail.as_deref() {
            Some(d) => cached(&mut self.details, d, || {
                serde_json::from_str::<Detail>(d)
                    .ok()
                    .and_then(|d| d.session)
                    .and_then(|s| SessionFacts::from_json(&s))
            }),
            None => None,
        };
        let facts_recorded = recorded_facts.is_some();
        let facts = recorded_facts
            .or_else(|| self.fallback.get(&session_id).cloned())
            .unwrap_or_default();
        let session_project = cached(&mut self.projects, &session_id, || {
            SessionId::parse(&session_id)
                .ok()
                .map(|s| s.owner().to_owned())
        });
        let then = match (
            row.outcome.as_str(),
            row.granted_role.as_deref(),
            row.granted_expire_time,
        ) {
            ("issued", Some(role), Some(expire_time)) => Verdict::Granted {
                role: role.parse().ok()?,
                expire_time,
            },
            _ => Verdict::Refused {
                code: row.code.unwrap_or_default(),
            },
        };
        Some(Recorded {
            audit_id: row.audit_id,
            at: row.at_ms.div_euclid(1000),
            who: Identity {
                user_id,
                name: None,
                groups,
                // The identity's source: the provider that vouched, or the app.
                idp: row.idp,
            },
            session_project,
            session_id,
            facts,
            facts_recorded,
            request: DecisionRequest {
                role: row.requested_role.as_deref().and_then(|r| r.parse().ok()),
                // The recorded request is absolute; a `ttl` was `at + ttl`.
                expiry: row.requested_expire_time.map(Expiry::At),
            },
            then,
            then_rule: row.rule,
        })
    }
}

/// A replay that would read more than its bounds allow: narrow the window.
fn too_many(what: String) -> AdminError {
    AdminError::Field {
        field: "since".into(),
        message: format!("the window holds more than {what}; narrow since..until"),
    }
}

/// Today's registrations of the sessions the window's requests name (for
/// rows recorded without their session facts), at most `max_sessions`.
async fn fallback_sessions(
    store: &Store,
    tenant: &str,
    window: Window,
    bounds: Bounds,
) -> Result<HashMap<String, SessionFacts>, AdminError> {
    let sessions = store
        .list_sessions(
            tenant,
            window.since_ms,
            window.until_ms,
            bounds.max_sessions.saturating_add(1),
        )
        .await?;
    if sessions.len() as u64 > bounds.max_sessions {
        return Err(too_many(format!(
            "{} registered sessions",
            bounds.max_sessions
        )));
    }
    Ok(sessions
        .into_iter()
        .map(|s| {
            let facts = SessionFacts {
                owner: s.owner,
                labels: serde_json::from_str(&s.labels).unwrap_or_default(),
            };
            (s.session_id, facts)
        })
        .collect())
}

/// Replays `source` (a proposed policy for `tenant`) over the window.
/// `confine`: the tenant an HTTP admin key belongs to.
#[allow(clippy::too_many_arguments)]
pub async fn replay(
    store: &Store,
    source_name: &str,
    source: &str,
    confine: Option<&str>,
    window: Window,
    actor: &Actor,
    now_ms: i64,
    bounds: Bounds,
) -> Result<ReplayReport, AdminError> {
    let doc = crate::admin::parse_for_tenant(store, source_name, source, confine).await?;
    let tenant = doc.tenant.clone();
    if window.until_ms <= window.since_ms {
        return Err(AdminError::Field {
            field: "until".into(),
            message: "until must be after since".into(),
        });
    }
    let compiled = CompiledPolicy::compile(doc, 0);
    let stored: Vec<String> = store
        .list_credentials(&tenant)
        .await?
        .into_iter()
        .map(|c| c.owner_id)
        .collect();
    let fallback = fallback_sessions(store, &tenant, window, bounds).await?;
    let mut replayer = Replayer::new(&compiled, stored);
    let mut decoder = RowDecoder::new(fallback);
    let mut read: u64 = 0;
    store
        .scan_requests(
            &tenant,
            window.since_ms,
            window.until_ms,
            bounds.max_requests.saturating_add(1),
            |row| {
                read += 1;
                if read <= bounds.max_requests
                    && let Some(r) = decoder.decode(row)
                {
                    replayer.push(&r);
                }
            },
        )
        .await?;
    if read > bounds.max_requests {
        return Err(too_many(format!(
            "{} recorded requests",
            bounds.max_requests
        )));
    }
    let report = replayer.finish();
    let mut row = AuditRow::new(
        &tenant,
        crate::audit::Kind::PolicyReplayed,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::Cli,
        now_ms,
    );
    actor.stamp(&mut row);
    row.detail = Some(
        serde_json::json!({
            "source_name": source_name,
            "sha256": chain::hex(&Sha256::digest(source.as_bytes())),
            "since_ms": window.since_ms,
            "until_ms": window.until_ms,
            "requests": report.requests,
            "changes": report.changes,
        })
        .to_string(),
    );
    crate::admin::record(store, row).await?;
    Ok(report)
}

/// `--fail-on` names (comma-separated) → the change kinds they stand for.
/// `refused` is granted → refused, `granted` refused → granted; the others are
/// the kinds' own names, with `-` or `_`.
pub fn parse_fail_on(list: &str) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let key = name.replace('-', "_");
        let kind = match key.as_str() {
            "refused" => "granted_to_refused",
            "granted" => "refused_to_granted",
            other => policy::replay::KINDS
                .into_iter()
                .find(|k| *k == other && *k != "unchanged")
                .ok_or_else(|| {
                    format!(
                        "unknown --fail-on kind {name:?}: use granted-moderator, refused, granted, role-raised, role-lowered, ttl-shortened, ttl-lengthened or rule-changed"
                    )
                })?,
        };
        out.push(kind);
    }
    Ok(out)
}

/// The kinds of `fail_on` that occurred, with their counts.
pub fn failures(report: &ReplayReport, fail_on: &[&'static str]) -> Vec<(&'static str, u64)> {
    fail_on
        .iter()
        .filter_map(|k| report.changes.get(k).filter(|n| *n > 0).map(|n| (*k, n)))
        .collect()
}

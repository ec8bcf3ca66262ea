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
    let fallback: HashMap<String, SessionFacts> = store
        .list_sessions(&tenant)
        .await?
        .into_iter()
        .map(|s| {
            let facts = SessionFacts {
                owner: s.owner,
                labels: serde_json::from_str(&s.labels).unwrap_or_default(),
            };
            (s.session_id, facts)
        })
        .collect();
    let mut replayer = Replayer::new(&compiled, stored);
    let mut decoder = RowDecoder::new(fallback);
    store
        .scan_requests(&tenant, window.since_ms, window.until_ms, |row| {
            if let Some(r) = decoder.decode(row) {
                replayer.push(&r);
            }
        })
        .await?;
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

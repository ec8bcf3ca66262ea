//! The audit record: what every issuance, refusal and admin action leaves behind.
//!
//! - `AuditRow` is one row, as stored and as returned by the query API.
//! - `chain` seals rows into each tenant's hash chain and verifies it.
//! - `writer` is the single group-commit writer the issuance path waits on:
//!   no committed row, no token.

pub mod chain;
pub mod checkpoint;
pub mod merkle;
pub mod writer;

pub use writer::{AuditUnavailable, AuditWriter, WriterConfig};

use serde::{Deserialize, Serialize};

/// Kinds of audit events (stable strings, stored in `kind`).
pub mod kind {
    pub const TOKEN_ISSUED: &str = "token_issued";
    pub const TOKEN_REFUSED: &str = "token_refused";
    pub const KEY_CREATED: &str = "key_created";
    pub const KEY_REVOKED: &str = "key_revoked";
    pub const POLICY_APPLIED: &str = "policy_applied";
    pub const AUDIT_READ: &str = "audit_read";
    pub const AUDIT_PRUNED: &str = "audit_pruned";
    pub const TENANT_CREATED: &str = "tenant_created";
    pub const CREDENTIAL_SET: &str = "credential_set";
    pub const CREDENTIAL_DELETED: &str = "credential_deleted";
    pub const POLICY_REPLAYED: &str = "policy_replayed";
}

/// One audit row. Fields that do not apply to an event kind are `None`.
/// `seq`, `prev_hash` and `hash` are assigned by the writer when the row is
/// sealed into its tenant's chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditRow {
    pub audit_id: String,
    pub tenant: String,
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub outcome: String,
    pub code: Option<String>,
    pub actor: String,
    pub key_id: Option<String>,
    pub idp: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    /// JSON array of group names.
    pub user_groups: Option<String>,
    pub session_id: Option<String>,
    pub credential: Option<String>,
    pub requested_role: Option<String>,
    pub requested_expire_time: Option<i64>,
    pub granted_role: Option<String>,
    pub granted_expire_time: Option<i64>,
    pub rule: Option<String>,
    pub policy_version: Option<i64>,
    pub token_id: Option<String>,
    pub token_sha256: Option<String>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// JSON object with event-specific detail (admin events).
    pub detail: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRow {
    /// A new, unsealed row with a fresh UUIDv7 id.
    pub fn new(tenant: &str, kind: &str, outcome: &str, actor: &str, at_ms: i64) -> AuditRow {
        AuditRow {
            audit_id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.to_owned(),
            at_ms,
            kind: kind.to_owned(),
            outcome: outcome.to_owned(),
            actor: actor.to_owned(),
            ..AuditRow::default()
        }
    }
}

/// The column list, in table order (shared by inserts and selects).
pub const COLUMNS: &str = "audit_id, tenant, seq, at_ms, kind, outcome, code, actor, key_id, idp, \
    user_id, user_name, user_groups, session_id, credential, requested_role, requested_expire_time, \
    granted_role, granted_expire_time, rule, policy_version, token_id, token_sha256, client_addr, \
    user_agent, request_id, detail, prev_hash, hash";

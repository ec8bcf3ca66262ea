//! The audit record: what every issuance, refusal and admin action leaves behind.
//!
//! - `AuditRow` is one row, as stored and as returned by the query API.
//! - `chain` seals rows into each tenant's hash chain and verifies it.
//! - `writer` is the single group-commit writer the issuance path waits on:
//!   no committed row, no token.

pub mod append;
pub mod chain;
pub mod checkpoint;
pub mod merkle;
pub mod query;
pub mod verify;
pub mod writer;

pub use crate::domain::audit_row as schema;
pub use append::{append, retry_head};
pub use schema::{AuditRow, COLUMNS, RowRef};
pub use writer::{AuditUnavailable, AuditWriter, WriterConfig};

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

//! The audit record: what every issuance, refusal and admin action leaves behind.
//!
//! - `AuditRow` is one row, as stored and as returned by the query API.
//! - `chain` seals rows into each tenant's hash chain and verifies it.
//! - `writer` is the single group-commit writer the issuance path waits on:
//!   no committed row, no token.
//! - `heavy` bounds the work that reads a tenant's whole history on request
//!   (proofs, the console's chain check).

pub mod append;
pub mod chain;
pub mod checkpoint;
pub mod heavy;
pub mod merkle;
pub mod query;
pub mod verify;
pub mod writer;

pub use crate::domain::audit_row as schema;
pub use append::{append, retry_head};
pub use schema::{Actor, AuditRow, COLUMNS, Kind, Outcome, RowRef};
pub use writer::{AuditUnavailable, AuditWriter, WriterConfig};

/// Kinds of audit events as stored strings (for comparisons with stored rows).
pub mod kind {
    use super::Kind;
    pub const TOKEN_ISSUED: &str = Kind::TokenIssued.as_str();
    pub const TOKEN_REFUSED: &str = Kind::TokenRefused.as_str();
    pub const AUDIT_READ: &str = Kind::AuditRead.as_str();
    pub const AUDIT_PRUNED: &str = Kind::AuditPruned.as_str();
}

impl AuditRow {
    /// A new, unsealed row with a fresh UUIDv7 id.
    pub fn new(tenant: &str, kind: Kind, outcome: Outcome, actor: Actor, at_ms: i64) -> AuditRow {
        AuditRow {
            audit_id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.to_owned(),
            at_ms,
            kind: kind.as_str().to_owned(),
            outcome: outcome.as_str().to_owned(),
            actor: actor.as_str().to_owned(),
            ..AuditRow::default()
        }
    }
}

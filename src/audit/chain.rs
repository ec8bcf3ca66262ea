//! The per-tenant hash chain over audit rows.
//!
//! `hash(row) = hex(SHA-256(canonical JSON of every column but hash))`, and the
//! canonical JSON includes `prev_hash` (the previous row's hash, or 64 zeros
//! for a tenant's first row) and `seq`. Editing any column of a row changes its
//! hash; removing or reordering rows breaks the `prev_hash` links or the `seq`
//! sequence. The canonical form is `serde_json` of `Canonical` below: fixed field
//! order, no whitespace. Changing it is a breaking change to every stored chain.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::AuditRow;

/// The `prev_hash` of a tenant's first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Serialize)]
struct Canonical<'a> {
    v: u8,
    audit_id: &'a str,
    tenant: &'a str,
    seq: i64,
    at_ms: i64,
    kind: &'a str,
    outcome: &'a str,
    code: &'a Option<String>,
    actor: &'a str,
    key_id: &'a Option<String>,
    idp: &'a Option<String>,
    user_id: &'a Option<String>,
    user_name: &'a Option<String>,
    user_groups: &'a Option<String>,
    session_id: &'a Option<String>,
    credential: &'a Option<String>,
    requested_role: &'a Option<String>,
    requested_expire_time: Option<i64>,
    granted_role: &'a Option<String>,
    granted_expire_time: Option<i64>,
    rule: &'a Option<String>,
    policy_version: Option<i64>,
    token_id: &'a Option<String>,
    token_sha256: &'a Option<String>,
    client_addr: &'a Option<String>,
    user_agent: &'a Option<String>,
    request_id: &'a Option<String>,
    detail: &'a Option<String>,
    prev_hash: &'a str,
}

/// The hash a row must carry, given its `seq` and `prev_hash`.
pub fn row_hash(r: &AuditRow) -> String {
    let c = Canonical {
        v: 1,
        audit_id: &r.audit_id,
        tenant: &r.tenant,
        seq: r.seq,
        at_ms: r.at_ms,
        kind: &r.kind,
        outcome: &r.outcome,
        code: &r.code,
        actor: &r.actor,
        key_id: &r.key_id,
        idp: &r.idp,
        user_id: &r.user_id,
        user_name: &r.user_name,
        user_groups: &r.user_groups,
        session_id: &r.session_id,
        credential: &r.credential,
        requested_role: &r.requested_role,
        requested_expire_time: r.requested_expire_time,
        granted_role: &r.granted_role,
        granted_expire_time: r.granted_expire_time,
        rule: &r.rule,
        policy_version: r.policy_version,
        token_id: &r.token_id,
        token_sha256: &r.token_sha256,
        client_addr: &r.client_addr,
        user_agent: &r.user_agent,
        request_id: &r.request_id,
        detail: &r.detail,
        prev_hash: &r.prev_hash,
    };
    // Serializing plain strings and integers cannot fail.
    let bytes = serde_json::to_vec(&c).unwrap_or_default();
    hex(&Sha256::digest(&bytes))
}

/// Places `row` after the head `(seq, hash)` and returns the new head.
pub fn seal(row: &mut AuditRow, head_seq: i64, head_hash: &str) -> (i64, String) {
    row.seq = head_seq + 1;
    row.prev_hash = head_hash.to_owned();
    row.hash = row_hash(row);
    (row.seq, row.hash.clone())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 fingerprint of a token, as stored in `token_sha256`.
pub fn fingerprint(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// What a chain check found wrong first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainFault {
    pub audit_id: String,
    pub seq: i64,
    /// `modified` | `missing_or_reordered` | `broken_link` | `head_mismatch` | `truncated`
    pub problem: &'static str,
    pub message: String,
}

/// Incremental verifier: feed rows in `seq` order.
#[derive(Debug)]
pub struct Verifier {
    pub expected_seq: i64,
    pub head_hash: String,
    pub rows: u64,
}

impl Verifier {
    /// Starts at a checkpoint `(seq, hash)`; `(0, GENESIS)` for a full chain.
    pub fn new(after_seq: i64, after_hash: &str) -> Verifier {
        Verifier {
            expected_seq: after_seq + 1,
            head_hash: after_hash.to_owned(),
            rows: 0,
        }
    }

    /// Checks the next row; the first fault is returned and checking should stop.
    pub fn push(&mut self, r: &AuditRow) -> Result<(), ChainFault> {
        let fault = |problem, message: String| ChainFault {
            audit_id: r.audit_id.clone(),
            seq: r.seq,
            problem,
            message,
        };
        if r.seq != self.expected_seq {
            return Err(fault(
                "missing_or_reordered",
                format!(
                    "expected seq {} here, found seq {}: a row was removed, inserted or reordered \
                     (or pruned: verify from the prune checkpoint)",
                    self.expected_seq, r.seq
                ),
            ));
        }
        if r.prev_hash != self.head_hash {
            return Err(fault(
                "broken_link",
                "prev_hash does not match the previous row's hash: a row before it was removed, replaced or reordered".into(),
            ));
        }
        let want = row_hash(r);
        if want != r.hash {
            return Err(fault(
                "modified",
                "the row's content does not match its hash: it was edited".into(),
            ));
        }
        self.expected_seq += 1;
        self.head_hash = want;
        self.rows += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRow> {
        let mut head = (0, GENESIS.to_owned());
        (0..n)
            .map(|i| {
                let mut r = AuditRow::new(
                    "acme",
                    "token_issued",
                    "issued",
                    "api_key",
                    1_000 + i as i64,
                );
                r.user_id = Some(format!("u{i}"));
                head = seal(&mut r, head.0, &head.1);
                r
            })
            .collect()
    }

    fn verify(rows: &[AuditRow]) -> Result<u64, ChainFault> {
        let mut v = Verifier::new(0, GENESIS);
        for r in rows {
            v.push(r)?;
        }
        Ok(v.rows)
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)).unwrap(), 5);
    }

    #[test]
    fn an_edited_row_is_named() {
        let mut rows = chain(5);
        rows[2].granted_role = Some("moderator".into());
        let f = verify(&rows).unwrap_err();
        assert_eq!((f.seq, f.problem), (3, "modified"));
    }

    #[test]
    fn a_removed_row_is_found() {
        let mut rows = chain(5);
        rows.remove(1);
        let f = verify(&rows).unwrap_err();
        assert_eq!((f.seq, f.problem), (3, "missing_or_reordered"));
    }

    #[test]
    fn a_rehashed_forgery_still_breaks_the_next_link() {
        let mut rows = chain(4);
        rows[1].user_id = Some("mallory".into());
        rows[1].hash = row_hash(&rows[1]);
        let f = verify(&rows).unwrap_err();
        assert_eq!((f.seq, f.problem), (3, "broken_link"));
    }
}

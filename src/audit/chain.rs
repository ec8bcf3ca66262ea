//! The per-tenant hash chain over audit rows.
//!
//! `hash(row) = hex(SHA-256(canonical JSON of every column but hash))`, and the
//! canonical JSON includes `prev_hash` (the previous row's hash, or 64 zeros
//! for a tenant's first row) and `seq`. Editing any column of a row changes its
//! hash; removing or reordering rows breaks the `prev_hash` links or the `seq`
//! sequence. The canonical form is `RowRef::write_canonical` (derived from the
//! one column list in `schema`): fixed field order, no whitespace, values as
//! `serde_json` writes them. Changing it is a breaking change to every stored
//! chain (`the_canonical_hash_is_stable` pins it).

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::AuditRow;

pub use super::schema::GENESIS;

pub use super::RowRef;

/// SHA-256 of a row's canonical JSON, serialized into `buf` (reused).
fn digest_ref(r: &RowRef<'_>, buf: &mut Vec<u8>) -> [u8; 32] {
    r.write_canonical(buf);
    Sha256::digest(&buf[..]).into()
}

/// Lowercase hex of a digest, on the stack.
pub(crate) fn hex32(d: &[u8; 32]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in d.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

/// The hash a row must carry, given its `seq` and `prev_hash`.
pub fn row_hash(r: &AuditRow) -> String {
    hex(&digest_ref(&r.as_row_ref(), &mut Vec::with_capacity(1024)))
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
    /// `modified` | `missing_or_reordered` | `broken_link` | `head_mismatch` | `truncated` | `outside_chain`
    pub problem: &'static str,
    pub message: String,
}

/// Incremental verifier: feed rows in `seq` order.
#[derive(Debug, Clone)]
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
        self.push_ref(&r.as_row_ref(), &mut Vec::with_capacity(1024))
    }

    /// `push` for borrowed columns, with a reused serialization buffer: no
    /// allocation per row (the verify path of millions of rows).
    pub fn push_ref(&mut self, r: &RowRef<'_>, buf: &mut Vec<u8>) -> Result<(), ChainFault> {
        let fault = |problem, message: String| ChainFault {
            audit_id: r.audit_id.to_owned(),
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
        let want = hex32(&digest_ref(r, buf));
        if want[..] != *r.hash.as_bytes() {
            return Err(fault(
                "modified",
                "the row's content does not match its hash: it was edited".into(),
            ));
        }
        self.expected_seq += 1;
        self.head_hash.clear();
        self.head_hash.push_str(r.hash);
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
                    crate::audit::Kind::TokenIssued,
                    crate::audit::Outcome::Issued,
                    crate::audit::Actor::ApiKey,
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

    /// The canonical form is a stored format: this hash was computed by an
    /// independent implementation (Python's json.dumps with compact separators
    /// in the documented field order), so a change to the hashing code that
    /// alters a single byte of the canonical JSON fails here.
    #[test]
    fn the_canonical_hash_is_stable() {
        let r = AuditRow {
            audit_id: "0190a000-0000-7000-8000-000000000001".into(),
            tenant: "acme".into(),
            seq: 7,
            at_ms: 1_764_000_000_123,
            kind: "token_issued".into(),
            outcome: "issued".into(),
            actor: "api_key".into(),
            key_id: Some("k1".into()),
            user_id: Some("app:user:al\"ice\\\u{e9}".into()),
            user_name: Some("Al\nice".into()),
            user_groups: Some("[\"students\"]".into()),
            session_id: Some("2_MX4".into()),
            credential: Some("main".into()),
            requested_role: Some("publisher".into()),
            granted_role: Some("publisher".into()),
            granted_expire_time: Some(1_764_003_600),
            rule: Some("students".into()),
            policy_version: Some(3),
            token_id: Some("t1".into()),
            client_addr: Some("10.0.0.7".into()),
            user_agent: Some("ua\u{1}".into()),
            detail: Some("{\"a\":1}".into()),
            prev_hash: "ab".repeat(32),
            ..AuditRow::default()
        };
        assert_eq!(
            row_hash(&r),
            "fdd77c642f9233183baf47000b7b2a3ca8a772e3b3410e6ab59830188bd8a4e4"
        );
    }
}

//! A tenant's chain as PostgreSQL's binary `COPY` streams it, for `audit
//! verify`: the server sends each column's bytes as stored (no JSON rendering,
//! no per-row query), and [`CopyDecoder`] lends them as [`RowRef`]s straight
//! from the stream's buffer, so the verifier hashes the Rust canonical form at
//! the speed of the scan.
//!
//! The binary format (PostgreSQL docs, "COPY", "Binary Format"): an 11-byte
//! signature, a 32-bit flags word, a 32-bit header-extension length and that
//! many bytes; then per tuple a 16-bit field count (-1 ends the data) and per
//! field a 32-bit length (-1 for NULL) and the value in the type's binary
//! send format: UTF-8 bytes for `text`, 8 big-endian bytes for `bigint`.

use crate::domain::audit_row::{RowRef, audit_columns, decode_col};

/// The 11-byte signature that starts binary `COPY` data.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Why a stream is not the binary `COPY` of the audit columns it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("the COPY data does not start with the binary signature")]
    Signature,
    #[error("a tuple has {0} fields, not the audit table's columns")]
    Fields(i16),
    #[error("column {0} is NULL but may not be")]
    Null(&'static str),
    #[error("column {0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("column {0} is not an 8-byte integer")]
    Int(&'static str),
    #[error("a field length is negative")]
    Length,
    #[error("the COPY data ended inside a tuple or without its trailer")]
    Truncated,
}

fn text<'a>(name: &'static str, v: Option<&'a [u8]>) -> Result<&'a str, CopyError> {
    opt_text(name, v)?.ok_or(CopyError::Null(name))
}

fn opt_text<'a>(name: &'static str, v: Option<&'a [u8]>) -> Result<Option<&'a str>, CopyError> {
    v.map(|b| std::str::from_utf8(b).map_err(|_| CopyError::Utf8(name)))
        .transpose()
}

fn int(name: &'static str, v: Option<&[u8]>) -> Result<i64, CopyError> {
    opt_int(name, v)?.ok_or(CopyError::Null(name))
}

fn opt_int(name: &'static str, v: Option<&[u8]>) -> Result<Option<i64>, CopyError> {
    v.map(|b| {
        <[u8; 8]>::try_from(b)
            .map(i64::from_be_bytes)
            .map_err(|_| CopyError::Int(name))
    })
    .transpose()
}

/// `fn row_ref(fields) -> RowRef`, fields in `COLUMNS` order (`hash` last).
macro_rules! copy_row_ref {
    ([] $($col:ident: $kind:ident),* $(,)?) => {
        /// How many columns a tuple of `SELECT {COLUMNS}` has.
        const FIELDS: usize = [$(stringify!($col),)* "hash"].len();

        fn row_ref<'a>(f: &[Option<&'a [u8]>; FIELDS]) -> Result<RowRef<'a>, CopyError> {
            let mut it = f.iter().copied();
            Ok(RowRef {
                $($col: decode_col!($kind, stringify!($col), it.next().flatten())?,)*
                hash: decode_col!(Text, "hash", it.next().flatten())?,
            })
        }
    };
}
audit_columns!(copy_row_ref);

/// Turns the chunks of a binary `COPY` stream into rows, whatever the chunk
/// boundaries: a tuple cut by a boundary is kept until its end arrives.
#[derive(Debug, Default)]
pub struct CopyDecoder {
    pending: Vec<u8>,
    header_done: bool,
    ended: bool,
    /// The stream was found malformed (reported once; nothing more is read).
    broken: bool,
}

/// One step of parsing `buf` from `at`.
// Made and matched once per row: boxing the row would allocate per row.
#[allow(clippy::large_enum_variant)]
enum Step<'a> {
    /// A whole tuple, and where the next one starts.
    Row(Result<RowRef<'a>, CopyError>, usize),
    /// The trailer.
    End,
    /// Not enough bytes yet.
    More,
}

fn be_i16(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The tuple at `at`, if all of it is in `b`.
fn step(b: &[u8], at: usize) -> Step<'_> {
    let Some(n) = be_i16(b, at) else {
        return Step::More;
    };
    if n == -1 {
        return Step::End;
    }
    if n as usize != FIELDS || n < 0 {
        return Step::Row(Err(CopyError::Fields(n)), b.len());
    }
    let mut fields: [Option<&[u8]>; FIELDS] = [None; FIELDS];
    let mut pos = at + 2;
    for f in &mut fields {
        let Some(len) = be_i32(b, pos) else {
            return Step::More;
        };
        pos += 4;
        if len == -1 {
            continue;
        }
        let Ok(len) = usize::try_from(len) else {
            return Step::Row(Err(CopyError::Length), b.len());
        };
        let Some(v) = b.get(pos..pos + len) else {
            return Step::More;
        };
        *f = Some(v);
        pos += len;
    }
    Step::Row(row_ref(&fields), pos)
}

impl CopyDecoder {
    pub fn new() -> CopyDecoder {
        CopyDecoder::default()
    }

    /// Feeds a chunk; calls `f` with each whole row, in order, until it
    /// returns `false` (then returns `false` too). A malformed stream is
    /// reported to `f` as an error once.
    pub fn push(
        &mut self,
        chunk: &[u8],
        mut f: impl FnMut(Result<RowRef<'_>, CopyError>) -> bool,
    ) -> bool {
        if self.broken {
            return false;
        }
        if self.pending.is_empty() {
            let (used, go_on) = self.parse(chunk, &mut f);
            if let Some(rest) = chunk.get(used..) {
                self.pending.extend_from_slice(rest);
            }
            go_on
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(chunk);
            let (used, go_on) = self.parse(&buf, &mut f);
            buf.drain(..used.min(buf.len()));
            self.pending = buf;
            go_on
        }
    }

    /// True when the stream ended with its trailer and nothing after it.
    pub fn finish(&self) -> Result<(), CopyError> {
        if self.ended && !self.broken && self.pending.is_empty() {
            Ok(())
        } else {
            Err(CopyError::Truncated)
        }
    }

    /// Parses what `b` holds; returns how many bytes it used and whether `f`
    /// wants more.
    fn parse<'b>(
        &mut self,
        b: &'b [u8],
        f: &mut impl FnMut(Result<RowRef<'b>, CopyError>) -> bool,
    ) -> (usize, bool) {
        let mut at = 0;
        if !self.header_done {
            // Signature, flags, extension length, extension.
            let Some(ext) = be_i32(b, 15) else {
                return (0, true);
            };
            if b.get(..11) != Some(&SIGNATURE[..]) || ext < 0 {
                self.broken = true;
                f(Err(CopyError::Signature));
                return (b.len(), false);
            }
            let start = 19 + ext as usize;
            if b.len() < start {
                return (0, true);
            }
            self.header_done = true;
            at = start;
        }
        loop {
            if self.ended {
                return (at, true);
            }
            match step(b, at) {
                Step::More => return (at, true),
                Step::End => {
                    self.ended = true;
                    at += 2;
                }
                Step::Row(row, next) => {
                    let failed = row.is_err();
                    self.broken |= failed;
                    if !f(row) || failed {
                        return (b.len(), false);
                    }
                    at = next;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit_row::AuditRow;

    /// Encodes rows the way PostgreSQL's binary COPY does (what the decoder
    /// must read back exactly).
    fn encode(rows: &[AuditRow]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for r in rows {
            let v = serde_json::to_value(r).unwrap();
            out.extend_from_slice(&(FIELDS as i16).to_be_bytes());
            for name in crate::domain::audit_row::COLUMN_NAMES {
                match &v[*name] {
                    serde_json::Value::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    serde_json::Value::Number(n) => {
                        out.extend_from_slice(&8i32.to_be_bytes());
                        out.extend_from_slice(&n.as_i64().unwrap().to_be_bytes());
                    }
                    serde_json::Value::String(s) => {
                        out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                        out.extend_from_slice(s.as_bytes());
                    }
                    other => panic!("unexpected {other}"),
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn rows() -> Vec<AuditRow> {
        (1..=3)
            .map(|i| AuditRow {
                audit_id: format!("id{i}"),
                tenant: "acme".into(),
                seq: i,
                at_ms: -i * 1_000_000_007,
                kind: "token_issued".into(),
                outcome: "issued".into(),
                actor: "api_key".into(),
                user_name: Some(format!("Zoë \"{i}\"\n\u{0}")),
                policy_version: (i != 2).then_some(i64::MAX - i),
                prev_hash: "p".repeat(64),
                hash: format!("{i:064}"),
                ..Default::default()
            })
            .collect()
    }

    fn decode_in_chunks(data: &[u8], size: usize) -> (Vec<AuditRow>, Result<(), CopyError>) {
        let mut d = CopyDecoder::new();
        let mut out = Vec::new();
        let mut err = Ok(());
        for c in data.chunks(size) {
            d.push(c, |r| match r {
                Ok(r) => {
                    out.push(r.to_row());
                    true
                }
                Err(e) => {
                    err = Err(e);
                    false
                }
            });
        }
        (out, err.and(d.finish()))
    }

    #[test]
    fn rows_come_back_exactly_whatever_the_chunk_boundaries() {
        let rows = rows();
        let data = encode(&rows);
        for size in [1, 2, 3, 7, 19, 20, 64, 1000, data.len()] {
            let (back, end) = decode_in_chunks(&data, size);
            assert_eq!(back, rows, "chunks of {size}");
            assert_eq!(end, Ok(()), "chunks of {size}");
        }
    }

    #[test]
    fn a_cut_stream_or_a_foreign_one_is_an_error_not_rows() {
        let data = encode(&rows());
        // Cut before the trailer, and in the middle of the last tuple.
        for cut in [data.len() - 2, data.len() - 40] {
            let (_, end) = decode_in_chunks(&data[..cut], 16);
            assert_eq!(end, Err(CopyError::Truncated));
        }
        // Not binary COPY at all.
        let (back, end) = decode_in_chunks(b"1\tacme\t...\nmore text lines here\n", 8);
        assert!(back.is_empty());
        assert_eq!(end, Err(CopyError::Signature));
        // A tuple with the wrong number of fields.
        let mut wrong = data.clone();
        let first = 11 + 4 + 4 + 4;
        wrong[first..first + 2].copy_from_slice(&3i16.to_be_bytes());
        let (back, end) = decode_in_chunks(&wrong, 1000);
        assert!(back.is_empty());
        assert_eq!(end, Err(CopyError::Fields(3)));
    }

    #[test]
    fn bad_values_are_named() {
        let mut data = encode(&rows()[..1]);
        // audit_id (first field, "id1") set to invalid UTF-8.
        let v = 11 + 4 + 4 + 4 + 2 + 4;
        data[v] = 0xff;
        let (_, end) = decode_in_chunks(&data, 1000);
        assert_eq!(end, Err(CopyError::Utf8("audit_id")));
        // seq (third field) as a 4-byte value.
        let mut d = CopyDecoder::new();
        let mut err = None;
        let mut bad = encode(&rows()[..1]);
        let seq_len = 11 + 4 + 4 + 4 + 2 + (4 + 3) + (4 + 4);
        bad[seq_len..seq_len + 4].copy_from_slice(&4i32.to_be_bytes());
        bad.drain(seq_len + 4..seq_len + 8);
        d.push(&bad, |r| {
            err = r.err();
            false
        });
        assert_eq!(err, Some(CopyError::Int("seq")));
        // A NOT NULL column sent as NULL.
        let mut null = encode(&rows()[..1]);
        let tenant = 11 + 4 + 4 + 4 + 2 + (4 + 3);
        null.splice(tenant..tenant + 8, (-1i32).to_be_bytes());
        let (_, end) = decode_in_chunks(&null, 1000);
        assert_eq!(end, Err(CopyError::Null("tenant")));
    }
}

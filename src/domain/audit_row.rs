//! The audit row's schema, declared once: the record's format, below the
//! store (which persists it) and the audit module (which seals, writes,
//! verifies and proves it).
//!
//! `audit_columns!` lists every column the hash chain covers, in table order,
//! each with its kind. Everything that spells out the columns is derived from
//! that one list: the [`AuditRow`] struct, its borrowed form [`RowRef`], the
//! SQL column list, the canonical hash input, the insert binds, the row
//! decoders (sqlx rows, PostgreSQL's binary `COPY`, the SQLite file read in
//! place) and the CSV header and lines. The `hash` column is the seal itself and is the one column
//! outside the list: a column added to the list is in the chain, by
//! construction.
//!
//! Kinds: `Text` (NOT NULL text), `OptText`, `Int` (NOT NULL BIGINT), `OptInt`.

use serde::{Deserialize, Serialize};

/// The `prev_hash` of a tenant's first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Seals a row after a chain head `(seq, hash)` and returns the new head. The
/// store takes it as a parameter (the audit module's `chain::seal`), so the
/// persistence layer writes chains without knowing how they are hashed.
pub type Seal = fn(&mut AuditRow, i64, &str) -> (i64, String);

/// A closed set of stable strings, stored as text in the audit table.
macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $v,)*
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            /// The stored text.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)*
                }
            }

            /// The value a stored text names, if any.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($s => Some($name::$v),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum! {
    /// What an audit row records.
    Kind {
        TokenIssued = "token_issued",
        TokenRefused = "token_refused",
        KeyCreated = "key_created",
        KeyRevoked = "key_revoked",
        PolicyApplied = "policy_applied",
        AuditRead = "audit_read",
        AuditPruned = "audit_pruned",
        TenantCreated = "tenant_created",
        CredentialSet = "credential_set",
        CredentialDeleted = "credential_deleted",
        PolicyReplayed = "policy_replayed",
        ConsoleSignIn = "console_sign_in",
    }
}

str_enum! {
    /// How it ended: a token issued or refused, or an admin event done.
    Outcome {
        Issued = "issued",
        Refused = "refused",
        Ok = "ok",
    }
}

str_enum! {
    /// Who acted: a tenant app's API key (the console signs in with one), an
    /// end user with a login token, or an operator at the CLI.
    Actor {
        ApiKey = "api_key",
        EndUser = "end_user",
        Cli = "cli",
    }
}

/// Calls `$cb! { [extra tokens] name: Kind, … }` with the chained columns in
/// table order (the extra tokens are passed through, for the callback's use).
macro_rules! audit_columns {
    ($cb:path $(, $($extra:tt)*)?) => {
        $cb! {
            [$($($extra)*)?]
            audit_id: Text,
            tenant: Text,
            seq: Int,
            at_ms: Int,
            kind: Text,
            outcome: Text,
            code: OptText,
            actor: Text,
            key_id: OptText,
            idp: OptText,
            user_id: OptText,
            user_name: OptText,
            user_groups: OptText,
            session_id: OptText,
            credential: OptText,
            requested_role: OptText,
            requested_expire_time: OptInt,
            granted_role: OptText,
            granted_expire_time: OptInt,
            rule: OptText,
            policy_version: OptInt,
            token_id: OptText,
            token_sha256: OptText,
            client_addr: OptText,
            user_agent: OptText,
            request_id: OptText,
            detail: OptText,
            prev_hash: Text,
        }
    };
}
pub(crate) use audit_columns;

/// The owned Rust type of a column kind.
macro_rules! owned_ty {
    (Text) => { String };
    (OptText) => { Option<String> };
    (Int) => { i64 };
    (OptInt) => { Option<i64> };
}

/// The borrowed Rust type of a column kind.
macro_rules! ref_ty {
    ($a:lifetime, Text) => { &$a str };
    ($a:lifetime, OptText) => { Option<&$a str> };
    ($a:lifetime, Int) => { i64 };
    ($a:lifetime, OptInt) => { Option<i64> };
}

/// Borrows a column of an `AuditRow`.
macro_rules! borrow_col {
    ($v:expr, Text) => {
        &$v
    };
    ($v:expr, OptText) => {
        $v.as_deref()
    };
    ($v:expr, Int) => {
        $v
    };
    ($v:expr, OptInt) => {
        $v
    };
}

/// Decodes one column of a stored row by its kind, with the decoders named
/// `text`, `opt_text`, `int` and `opt_int` where it is used (each row reader
/// has its own: `COPY` fields, SQLite values): `decode_col!(Kind, name, value)`.
macro_rules! decode_col {
    (Text, $n:expr, $v:expr) => {
        text($n, $v)
    };
    (OptText, $n:expr, $v:expr) => {
        opt_text($n, $v)
    };
    (Int, $n:expr, $v:expr) => {
        int($n, $v)
    };
    (OptInt, $n:expr, $v:expr) => {
        opt_int($n, $v)
    };
}
pub(crate) use decode_col;

/// Owns a borrowed column.
macro_rules! own_col {
    ($v:expr, Text) => {
        $v.to_owned()
    };
    ($v:expr, OptText) => {
        $v.map(str::to_owned)
    };
    ($v:expr, Int) => {
        $v
    };
    ($v:expr, OptInt) => {
        $v
    };
}

macro_rules! define_rows {
    ([] $($col:ident: $kind:ident),* $(,)?) => {
        /// One audit row, as stored and as returned by the query API. Fields that
        /// do not apply to an event kind are `None`. `seq`, `prev_hash` and
        /// `hash` are assigned when the row is sealed into its tenant's chain.
        /// (`user_groups` is a JSON array of group names; `detail` a JSON object
        /// with event-specific detail.)
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct AuditRow {
            $(pub $col: owned_ty!($kind),)*
            pub hash: String,
        }

        /// A row's columns as borrowed values: what the hash covers, plus `hash`.
        /// Verification decodes database rows into this without allocating.
        #[derive(Debug, Clone, Copy)]
        pub struct RowRef<'a> {
            $(pub $col: ref_ty!('a, $kind),)*
            pub hash: &'a str,
        }

        impl AuditRow {
            /// The row as borrowed columns.
            pub fn as_row_ref(&self) -> RowRef<'_> {
                RowRef {
                    $($col: borrow_col!(self.$col, $kind),)*
                    hash: &self.hash,
                }
            }
        }

        impl RowRef<'_> {
            /// The canonical hash input: compact JSON `{"v":1,<every column but
            /// hash, in table order>}`, each value as `serde_json` writes it.
            /// Written into `buf` (cleared first).
            pub fn write_canonical(&self, buf: &mut Vec<u8>) {
                buf.clear();
                buf.extend_from_slice(b"{\"v\":1");
                $(
                    buf.extend_from_slice(concat!(",\"", stringify!($col), "\":").as_bytes());
                    CanonicalJson::write_json(&self.$col, buf);
                )*
                buf.push(b'}');
            }

            /// The row, owned.
            pub fn to_row(&self) -> AuditRow {
                AuditRow {
                    $($col: own_col!(self.$col, $kind),)*
                    hash: self.hash.to_owned(),
                }
            }

            /// The row's CSV record, in `COLUMN_NAMES` order.
            pub fn csv_record(&self) -> Vec<String> {
                vec![$(CsvCell::cell(&self.$col),)* self.hash.to_owned()]
            }
        }

        /// Every column, in table order, as SQL lists them.
        pub const COLUMNS: &str = concat!($(stringify!($col), ", ",)* "hash");

        /// Every column's name, in table order (the CSV header).
        pub const COLUMN_NAMES: &[&str] = &[$(stringify!($col),)* "hash"];

    };
}

audit_columns!(define_rows);

/// Defines `fn $name(&$row) -> Result<RowRef, sqlx::Error>`, decoding a driver
/// row selected with `COLUMNS`: `audit_columns!(row_ref_fn, name, RowType)`.
macro_rules! row_ref_fn {
    ([$name:ident, $row:ty] $($col:ident: $kind:ident),* $(,)?) => {
        fn $name(r: &$row) -> Result<$crate::domain::audit_row::RowRef<'_>, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::domain::audit_row::RowRef {
                $($col: r.try_get(stringify!($col))?,)*
                hash: r.try_get("hash")?,
            })
        }
    };
}
pub(crate) use row_ref_fn;

/// Binds every column of `row` in `COLUMNS` order:
/// `audit_columns!(bind_row, builder, row)` on a `push_values` separator.
macro_rules! bind_row {
    ([$b:ident, $r:ident] $($col:ident: $kind:ident),* $(,)?) => {
        $b$(.push_bind(&$r.$col))*.push_bind(&$r.hash)
    };
}
pub(crate) use bind_row;

/// The PostgreSQL array type of a column kind (an `UNNEST` insert binds one
/// array per column).
macro_rules! pg_array_ty {
    (Text) => {
        "text[]"
    };
    (OptText) => {
        "text[]"
    };
    (Int) => {
        "int8[]"
    };
    (OptInt) => {
        "int8[]"
    };
}

/// A column of a row as an element of its PostgreSQL array.
macro_rules! array_elem {
    ($v:expr, Text) => {
        $v.as_str()
    };
    ($v:expr, OptText) => {
        $v.as_deref()
    };
    ($v:expr, Int) => {
        $v
    };
    ($v:expr, OptInt) => {
        $v
    };
}
pub(crate) use array_elem;

macro_rules! define_pg_array_types {
    ([] $($col:ident: $kind:ident),* $(,)?) => {
        /// Every column's PostgreSQL array type, in `COLUMNS` order.
        pub const PG_ARRAY_TYPES: &[&str] = &[$(pg_array_ty!($kind),)* "text[]"];
    };
}
audit_columns!(define_pg_array_types);

/// Binds every column of the rows of `$rows` (a cloneable iterator of
/// `&AuditRow`) to the query `$q` as one array per column, in `COLUMNS`
/// order, and rebinds `$q` to the result: `audit_columns!(bind_arrays, q,
/// rows);` (a statement), for `UNNEST($1::text[], …)`.
macro_rules! bind_arrays {
    ([$q:ident, $rows:ident] $($col:ident: $kind:ident),* $(,)?) => {
        let $q = $q$(.bind(
            $rows
                .clone()
                .map(|r| $crate::domain::audit_row::array_elem!(r.$col, $kind))
                .collect::<Vec<_>>(),
        ))*
        .bind($rows.clone().map(|r| r.hash.as_str()).collect::<Vec<_>>());
    };
}
pub(crate) use bind_arrays;

/// A column value in the canonical hash input, byte for byte as `serde_json`
/// writes it (the canonical form is defined by that output).
trait CanonicalJson {
    fn write_json(&self, buf: &mut Vec<u8>);
}

impl CanonicalJson for &str {
    fn write_json(&self, buf: &mut Vec<u8>) {
        json_str(buf, self);
    }
}
impl CanonicalJson for Option<&str> {
    fn write_json(&self, buf: &mut Vec<u8>) {
        match self {
            Some(s) => json_str(buf, s),
            None => buf.extend_from_slice(b"null"),
        }
    }
}
impl CanonicalJson for i64 {
    fn write_json(&self, buf: &mut Vec<u8>) {
        // Integers always serialize.
        let _ = serde_json::to_writer(&mut *buf, self);
    }
}
impl CanonicalJson for Option<i64> {
    fn write_json(&self, buf: &mut Vec<u8>) {
        match self {
            Some(n) => n.write_json(buf),
            None => buf.extend_from_slice(b"null"),
        }
    }
}

/// `s` as a JSON string, exactly as `serde_json` writes it: `"` and `\`
/// and the control characters below U+0020 are escaped, everything else
/// (non-ASCII included) is copied. Almost no stored value needs an escape: a
/// scan with no early exit (it vectorizes) tells, and such a string is copied
/// whole; `serde_json` writes the rest. Escaping byte by byte was 15% of
/// `audit verify`'s CPU (docs/performance.md).
fn json_str(buf: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let escapes = b.iter().fold(false, |any, &c| {
        any | (c < 0x20) | (c == b'"') | (c == b'\\')
    });
    if escapes {
        // Strings always serialize.
        let _ = serde_json::to_writer(&mut *buf, s);
    } else {
        buf.reserve(b.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(b);
        buf.push(b'"');
    }
}

/// A CSV cell of a column value: empty for NULL.
trait CsvCell {
    fn cell(&self) -> String;
}
impl CsvCell for &str {
    fn cell(&self) -> String {
        (*self).to_owned()
    }
}
impl CsvCell for Option<&str> {
    fn cell(&self) -> String {
        self.map(str::to_owned).unwrap_or_default()
    }
}
impl CsvCell for i64 {
    fn cell(&self) -> String {
        self.to_string()
    }
}
impl CsvCell for Option<i64> {
    fn cell(&self) -> String {
        self.map(|n| n.to_string()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_strings_round_trip_and_are_distinct() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            s: fn(T) -> &'static str,
            p: fn(&str) -> Option<T>,
        ) {
            let mut seen = std::collections::HashSet::new();
            for v in all {
                assert_eq!(p(s(*v)), Some(*v));
                assert!(seen.insert(s(*v)), "{v:?} repeats a stored string");
            }
            assert_eq!(p("Token_Issued"), None);
        }
        check(Kind::ALL, Kind::as_str, Kind::parse);
        check(Outcome::ALL, Outcome::as_str, Outcome::parse);
        check(Actor::ALL, Actor::as_str, Actor::parse);
    }

    #[test]
    fn every_column_is_listed_once_and_hash_is_last() {
        let mut names: Vec<&str> = COLUMN_NAMES.to_vec();
        assert_eq!(names.len(), 29);
        assert_eq!(names.last(), Some(&"hash"));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 29);
        assert_eq!(COLUMNS.split(", ").collect::<Vec<_>>(), COLUMN_NAMES);
    }

    proptest::proptest! {
        /// The fast path writes what serde_json writes, for any string: plain,
        /// with quotes, backslashes, every control character, DEL, non-ASCII.
        #[test]
        fn json_strings_are_written_exactly_as_serde_json_writes_them(
            s in "(\\PC|[\\x00-\\x1f\\x7f\"\\\\]|\u{2028}|\u{e9}){0,40}"
        ) {
            let mut ours = b"x".to_vec();
            json_str(&mut ours, &s);
            let mut theirs = b"x".to_vec();
            serde_json::to_writer(&mut theirs, &s).unwrap();
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn the_canonical_text_names_every_chained_column_in_order() {
        let r = AuditRow::default();
        let mut buf = Vec::new();
        r.as_row_ref().write_canonical(&mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 29, "v plus 28 chained columns");
        assert!(
            !buf.windows(6).any(|w| w == b"\"hash\""),
            "hash is not hashed"
        );
    }
}

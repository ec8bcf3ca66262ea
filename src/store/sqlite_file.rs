//! A tenant's chain read straight from the SQLite file, for `audit verify`.
//!
//! sqlx copies every value of every row it returns (a duplicated SQLite value
//! per column), which is most of the cost of reading a million audit rows. A
//! read-only connection of its own, through `rusqlite`, lends each column in
//! place instead: the verifier decodes a [`RowRef`] borrowing SQLite's buffers
//! and hashes the Rust canonical form, the authority itself. Same library
//! underneath (one `libsqlite3-sys`), WAL readers do not block the writer, and
//! each read is one consistent snapshot.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::{Db, Store, StoreError, StoreResult};
use crate::domain::audit_row::{COLUMNS, RowRef, audit_columns, decode_col};

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Invalid(format!("reading the SQLite file: {e}"))
}

/// Why a stored value is not what its column holds.
fn wrong(name: &str, v: ValueRef<'_>) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, name.to_owned(), v.data_type())
}

fn text<'a>(name: &str, v: ValueRef<'a>) -> rusqlite::Result<&'a str> {
    opt_text(name, v)?.ok_or_else(|| wrong(name, v))
}

fn opt_text<'a>(name: &str, v: ValueRef<'a>) -> rusqlite::Result<Option<&'a str>> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Text(b) => std::str::from_utf8(b)
            .map(Some)
            .map_err(rusqlite::Error::Utf8Error),
        other => Err(wrong(name, other)),
    }
}

fn int(name: &str, v: ValueRef<'_>) -> rusqlite::Result<i64> {
    opt_int(name, v)?.ok_or_else(|| wrong(name, v))
}

fn opt_int(name: &str, v: ValueRef<'_>) -> rusqlite::Result<Option<i64>> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(i) => Ok(Some(i)),
        other => Err(wrong(name, other)),
    }
}

/// `fn row_ref(row) -> RowRef` for a row of `SELECT {COLUMNS}`.
macro_rules! file_row_ref {
    ([] $($col:ident: $kind:ident),* $(,)?) => {
        fn row_ref<'a>(r: &'a rusqlite::Row<'_>) -> rusqlite::Result<RowRef<'a>> {
            let mut i = 0usize;
            let mut next = || {
                i += 1;
                r.get_ref(i - 1)
            };
            Ok(RowRef {
                $($col: decode_col!($kind, stringify!($col), next()?)?,)*
                hash: decode_col!(Text, "hash", next()?)?,
            })
        }
    };
}
audit_columns!(file_row_ref);

impl Store {
    /// True when the store is an SQLite file (`read_chain_from_file` reads it).
    pub fn is_sqlite_file(&self) -> bool {
        self.sqlite_file().is_some()
    }

    /// The SQLite file behind this store, when it is one (not in memory).
    fn sqlite_file(&self) -> Option<&Path> {
        match &self.db {
            Db::Sqlite { file, .. } => file.as_deref(),
            Db::Postgres(_) => None,
        }
    }

    /// Reads a tenant's rows `after_seq < seq <= upto_seq` in chain order
    /// from the SQLite file, lending each to `f` (decoded in place) until it
    /// returns `false`; a value of the wrong type is passed as an error.
    /// Blocking: call it on a blocking thread. `Ok(false)` when this store
    /// is not an SQLite file.
    pub fn read_chain_from_file(
        &self,
        tenant: &str,
        after_seq: i64,
        upto_seq: i64,
        mut f: impl FnMut(Result<RowRef<'_>, String>) -> bool,
    ) -> StoreResult<bool> {
        let Some(path) = self.sqlite_file() else {
            return Ok(false);
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_millis(1500))
            .map_err(err)?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM audit_events WHERE tenant = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq"
            ))
            .map_err(err)?;
        let mut rows = stmt
            .query(rusqlite::params![tenant, after_seq, upto_seq])
            .map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            if !f(row_ref(row).map_err(|e| e.to_string())) {
                break;
            }
        }
        Ok(true)
    }
}

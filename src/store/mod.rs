//! Persistence: one `Store` over either an SQLite pool (the embedded default) or a
//! PostgreSQL pool (several broker instances). Queries are runtime-checked sqlx
//! statements; most are portable (SQLite accepts `$1` placeholders), and where
//! the dialects differ the method branches. The integration suite runs every
//! statement against both databases.
//!
//! Transactions never leak out of this module: an operation that must be atomic
//! is one method.

mod audit;
mod bounded;
mod buckets;
mod copy;
mod credentials;
mod keys;
mod policies;
mod rollup;
mod sessions;
mod sqlite_file;
mod tenants;

pub use audit::{
    AuditCursor, AuditFilter, AuditRow, ChainPage, HeadCache, HeadRow, LateRows, PruneRow,
    RequestRow, SummaryRow,
};
pub use copy::{CopyDecoder, CopyError};
pub use credentials::StoredCredentialRow;
pub use keys::KeyRow;
pub use policies::PolicyVersionRow;
pub use rollup::{ROLLUP_CHUNK_ROWS, ROLLUP_ROUND_LOCK};
pub use sessions::SessionRow;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static PG_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Begins a transaction that writes. On SQLite it is `BEGIN IMMEDIATE`: it
/// takes the database's write lock at once, waiting for another process's
/// write (a serving broker, the command line) up to the busy timeout. A plain
/// `BEGIN` takes the lock at the first write, and when a read came first (a
/// revoke reads the key's tenant) while another connection holds the lock,
/// SQLite fails that write at once with `database is locked` instead of
/// waiting: the transaction's read may be outdated by the other's commit.
/// PostgreSQL's row locks wait either way.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    #[allow(clippy::disallowed_methods)] // row locks wait whatever the BEGIN
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// Runs the same statement on whichever pool the store has. The body is
/// expanded once per dialect, so it type-checks against both drivers.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite { read: $pool, .. } => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
    (write $store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite { write: $pool, .. } => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Errors from the store. `NotFound` and `Conflict` are mapped here once so callers
/// never inspect driver errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    /// A video project (api key / application id) is claimed already: by
    /// another tenant, or by another credential of the same tenant.
    #[error("video project {owner_id} is already claimed")]
    Claimed { owner_id: String, same_tenant: bool },
    /// An audit read ran past its time limit (`Store::with_read_budget`) and
    /// was stopped by the database.
    #[error("the audit read was stopped after its time limit")]
    ReadTimeout,
    /// Another writer advanced an audit chain head first; retry.
    #[error("the audit chain head moved concurrently; retry")]
    HeadMoved,
    /// The tenant already holds the most live rows of this kind allowed.
    #[error("the tenant holds {0} live API keys already")]
    TooMany(i64),
}

impl StoreError {
    /// Maps a unique-constraint violation to `Conflict`.
    pub(crate) fn on_unique(e: sqlx::Error, what: &str) -> StoreError {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return StoreError::Conflict(what.to_owned());
        }
        StoreError::Db(e)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone)]
pub(crate) enum Db {
    /// SQLite: one writer connection (writers would only contend for the file
    /// lock), and a small pool of readers (WAL lets them run beside the writer).
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
        /// The database file (none in memory), read directly by `audit verify`.
        file: Option<std::path::PathBuf>,
    },
    Postgres(PgPool),
}

/// The broker's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    url_redacted: String,
    /// The time limit of the audit reads a tenant shapes (`bounded`); none
    /// for the operator's own command line.
    pub(crate) read_budget: Option<Duration>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url_redacted)
            .finish()
    }
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing) or `postgres://...`.
    pub async fn connect(url: &str) -> StoreResult<Store> {
        let url_redacted = redact_url(url);
        if url.starts_with("sqlite:") {
            let parsed = SqliteConnectOptions::from_str(url)?;
            restrict_sqlite_files(parsed.get_filename());
            let file = on_disk(parsed.get_filename());
            let base = parsed
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: every commit is fsynced, so an audit row survives power loss.
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                // Bounded so a stalled store fails requests quickly instead of hanging.
                .busy_timeout(Duration::from_millis(1500));
            // The writer keeps more of the audit indexes in its page cache (4 MB)
            // and checkpoints the WAL less often (every ~8 MB), so group commits
            // mostly append instead of re-reading and re-writing pages.
            let writer_opts = base
                .clone()
                .pragma("cache_size", "-4000")
                .pragma("wal_autocheckpoint", "2000");
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(3))
                .connect_with(writer_opts)
                .await?;
            // At most `limits::MAX_AUDIT_READS_TOTAL` of them hold reads
            // tenants shape; the rest serve everything else.
            let read = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(3))
                .connect_with(base)
                .await?;
            Ok(Store {
                db: Db::Sqlite { write, read, file },
                url_redacted,
                read_budget: None,
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)?;
            // The audit writer, the rollup and checkpoint passes, proofs and
            // replays share it, and at most `limits::MAX_AUDIT_READS_TOTAL`
            // reads tenants shape.
            let pool = PgPoolOptions::new()
                .max_connections(12)
                .acquire_timeout(Duration::from_secs(3))
                .connect_with(opts)
                .await?;
            Ok(Store {
                db: Db::Postgres(pool),
                url_redacted,
                read_budget: None,
            })
        } else {
            Err(StoreError::Invalid(format!(
                "unsupported database URL {url_redacted}: expected sqlite://PATH or postgres://..."
            )))
        }
    }

    /// The same store (the same pools) whose audit reads (`query_audit`,
    /// summaries) are stopped after `budget` each (`audit_read_timeout_ms`),
    /// or never (`None`: the operator's command line).
    pub fn with_read_budget(mut self, budget: Option<Duration>) -> Store {
        self.read_budget = budget;
        self
    }

    pub fn dialect(&self) -> Dialect {
        match self.db {
            Db::Sqlite { .. } => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The URL with any password replaced by `***`.
    pub fn url_redacted(&self) -> &str {
        &self.url_redacted
    }

    /// Applies the embedded migrations of this dialect.
    pub async fn migrate(&self) -> StoreResult<()> {
        match &self.db {
            Db::Sqlite { write, .. } => SQLITE_MIGRATOR.run(write).await?,
            Db::Postgres(p) => PG_MIGRATOR.run(p).await?,
        }
        Ok(())
    }

    /// Keeps the query planner's statistics current. SQLite only plans the
    /// audit queries well with them (without `sqlite_stat1` it reads a whole
    /// tenant instead of one day of it): `PRAGMA optimize` analyzes, with a
    /// bounded sample (`analysis_limit`), only tables that changed enough since
    /// the last time. Cheap; run at start and every few hours. PostgreSQL's
    /// autovacuum does this by itself.
    pub async fn optimize(&self) -> StoreResult<()> {
        if let Db::Sqlite { write, .. } = &self.db {
            let mut c = write.acquire().await?;
            sqlx::query("PRAGMA analysis_limit = 1000")
                .execute(&mut *c)
                .await?;
            sqlx::query("PRAGMA optimize = 0x10002")
                .execute(&mut *c)
                .await?;
        }
        Ok(())
    }

    /// Reachable, and every embedded migration applied (for `/readyz`).
    pub async fn ready(&self) -> StoreResult<bool> {
        let expected = match self.db {
            Db::Sqlite { .. } => SQLITE_MIGRATOR.iter().count(),
            Db::Postgres(_) => PG_MIGRATOR.iter().count(),
        } as i64;
        let applied: i64 = with_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE"
        ).fetch_one(p).await)?;
        Ok(applied >= expected)
    }

    /// Closes the pools (waits for connections to be returned).
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite { write, read, .. } => {
                read.close().await;
                write.close().await;
            }
            Db::Postgres(p) => p.close().await,
        }
    }

    /// Records that something cached changed, for the other instances' caches.
    pub async fn record_change(
        &self,
        tenant: &str,
        kind: &str,
        subject: &str,
        at_ms: i64,
    ) -> StoreResult<()> {
        with_pool!(write self, p => sqlx::query(
            "INSERT INTO changes (tenant, kind, subject, at_ms) VALUES ($1, $2, $3, $4)"
        ).bind(tenant).bind(kind).bind(subject).bind(at_ms).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Up to `limit` changes with an id above `after`, oldest first.
    pub async fn changes_since(&self, after: i64, limit: i64) -> StoreResult<Vec<ChangeRow>> {
        Ok(with_pool!(self, p => sqlx::query_as::<_, ChangeRow>(
            "SELECT change_id, tenant, kind, subject FROM changes WHERE change_id > $1 ORDER BY change_id LIMIT $2"
        ).bind(after).bind(limit).fetch_all(p).await)?)
    }

    /// The changes among `ids` that exist (have committed), oldest first.
    pub async fn changes_with_ids(&self, ids: &[i64]) -> StoreResult<Vec<ChangeRow>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let rows = with_pool!(self, p => {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT change_id, tenant, kind, subject FROM changes WHERE change_id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(") ORDER BY change_id");
                // One statement per list length: not kept, or every read
                // connection would cache one per number of open gaps.
                q.build_query_as::<ChangeRow>().persistent(false).fetch_all(p).await
            })?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// The oldest and newest change ids (0 when there is none).
    pub async fn change_id_bounds(&self) -> StoreResult<(i64, i64)> {
        let (lo, hi): (Option<i64>, Option<i64>) = with_pool!(self, p => sqlx::query_as(
            "SELECT MIN(change_id), MAX(change_id) FROM changes"
        ).fetch_one(p).await)?;
        Ok((lo.unwrap_or(0), hi.unwrap_or(0)))
    }

    /// Drops change-feed rows older than `before_ms` (they have been seen by then).
    pub async fn prune_changes(&self, before_ms: i64) -> StoreResult<()> {
        with_pool!(write self, p => sqlx::query("DELETE FROM changes WHERE at_ms < $1")
            .bind(before_ms).execute(p).await.map(|_| ()))?;
        Ok(())
    }
}

/// One row of the change feed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangeRow {
    pub change_id: i64,
    pub tenant: String,
    pub kind: String,
    pub subject: String,
}

/// The database file, unless the database lives in memory.
fn on_disk(db: &std::path::Path) -> Option<std::path::PathBuf> {
    let memory = db.as_os_str().is_empty() || db.to_string_lossy().starts_with(':');
    (!memory).then(|| db.to_owned())
}

/// The SQLite database holds argon2 hashes, sealed credentials and the audit:
/// only the broker's user may read it. A new file is created 0600 before
/// SQLite opens it (SQLite gives its WAL and shared-memory files the same
/// mode); existing files are tightened to 0600.
fn restrict_sqlite_files(db: &std::path::Path) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if on_disk(db).is_none() {
        return; // in-memory
    }
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
}

/// Replaces the password of a URL (`scheme://user:pass@host`) and the values
/// of password-like query parameters (`?password=`, `sslpassword=`) with `***`.
pub fn redact_url(url: &str) -> String {
    // The password first: unencoded, it may hold `/`, `?` or `@`, which the
    // query's split below would otherwise cut it at.
    let url = redact_userinfo(url);
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url.as_str(), None),
    };
    let mut out = base.to_owned();
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// `scheme://user:***@rest`: the user information ends at the last `@` (an
/// `@` in the query makes this hide more than the password, never less).
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, after)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) if !user.contains('/') => format!("{scheme}://{user}:***@{after}"),
        _ => url.to_owned(),
    }
}

/// A migrated store in an SQLite file of a fresh temporary directory, for the
/// crate's unit tests (keep the directory alive as long as the store).
#[cfg(test)]
pub(crate) async fn temp_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tb.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::{Db, redact_url, temp_store};

    /// Looking up gaps of every count from 1 to 120 leaves no statement per
    /// count in the read connections' caches.
    #[tokio::test]
    async fn gap_lookups_do_not_fill_the_statement_caches() {
        let (store, _dir) = temp_store().await;
        for n in 1..=120 {
            let ids: Vec<i64> = (1..=n).collect();
            assert!(store.changes_with_ids(&ids).await.unwrap().is_empty());
        }
        let Db::Sqlite { read, .. } = &store.db else {
            unreachable!()
        };
        // A released connection goes back to the pool in a task of its own:
        // wait until every open one is idle, so none is missed below.
        for _ in 0..300 {
            if read.num_idle() == read.size() as usize {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut conns = Vec::new();
        while let Some(c) = read.try_acquire() {
            conns.push(c);
        }
        assert!(!conns.is_empty());
        let cached: usize = conns.iter().map(|c| c.cached_statements_size()).sum();
        assert!(cached <= 4, "{cached} statements cached");
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://bob:s3cret@db:5432/x?sslmode=disable"),
            "postgres://bob:***@db:5432/x?sslmode=disable"
        );
        assert_eq!(redact_url("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(redact_url("sqlite://data/tb.db"), "sqlite://data/tb.db");
        assert_eq!(
            redact_url("postgres://bob@db/x?password=s3cret&sslmode=require&sslpassword=k3y"),
            "postgres://bob@db/x?password=***&sslmode=require&sslpassword=***"
        );
        assert_eq!(
            redact_url("postgres://bob:a@b@db/x?PassWord=z"),
            "postgres://bob:***@db/x?PassWord=***"
        );
        // Generated passwords hold `/` and `?` unencoded: such a URL does not
        // parse, and the error that says so printed it whole.
        for pw in ["a/b", "a?b", "a/b?c@d", "x#y/z"] {
            let r = redact_url(&format!("postgres://bob:{pw}@db:5432/x?sslmode=disable"));
            assert_eq!(r, "postgres://bob:***@db:5432/x?sslmode=disable", "{pw}");
        }
    }
}

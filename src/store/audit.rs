//! Audit rows: the group-commit append, the filtered keyset query and the
//! ordered scan that `audit verify` streams.

use std::collections::{HashMap, HashSet};

use futures_util::TryStreamExt;
use sqlx::QueryBuilder;

use super::bounded::{SqliteRead, pg_read, read_error};
use super::{BeginWrite, Db, Store, StoreError, StoreResult, with_pool};
pub use crate::domain::audit_row::AuditRow;
use crate::domain::audit_row::{COLUMNS, RowRef, Seal};

/// Seals one row after its tenant's current head and writes it, inside the
/// caller's transaction: for changes that must be recorded atomically with
/// their audit row (keys, policy versions, tenants). The transaction must
/// come from `BeginWrite::begin_write`, so SQLite's write lock is held before
/// the head is read.
macro_rules! append_in_tx {
    ($tx:ident, $row:expr, $seal:expr) => {{
        let row: &mut AuditRow = $row;
        let seal: $crate::domain::audit_row::Seal = $seal;
        let (old_seq, old_hash) = $crate::store::audit::lock_head!($tx, row.tenant.clone(), false);
        let new = seal(row, old_seq, &old_hash);
        $crate::store::audit::WriteBatch::write_batch(
            &mut $tx,
            &[(row.tenant.as_str(), &new)],
            [std::slice::from_ref(&*row), &[]],
        )
        .await?;
    }};
}
pub(crate) use append_in_tx;

/// A unique violation on a chain position `(tenant, seq)`: another writer took
/// it. Any other unique violation (a repeated `audit_id`) is the row's own fault.
pub(crate) fn is_seq_collision(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.is_unique_violation()
        && (db.constraint().is_some_and(|c| c.contains("seq"))
            || db.message().contains("audit_events.seq"))
}

impl StoreError {
    /// True when the database refused the statement because of what a row
    /// holds (a constraint, a value it cannot store, a size limit), so other
    /// rows would commit without it; false when the store itself failed
    /// (connection, timeout, pool, I/O), which fails every row alike.
    pub fn is_row_refusal(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Encode(_) => true,
            sqlx::Error::Database(db) => {
                use sqlx::error::ErrorKind as K;
                if matches!(
                    db.kind(),
                    K::UniqueViolation
                        | K::ForeignKeyViolation
                        | K::NotNullViolation
                        | K::CheckViolation
                ) {
                    return true;
                }
                let code = db.code().unwrap_or_default();
                if let Ok(n) = code.parse::<i32>() {
                    // SQLite (extended) result codes: TOOBIG, CONSTRAINT (triggers
                    // included), MISMATCH.
                    matches!(n & 0xff, 18..=20)
                } else {
                    // PostgreSQL SQLSTATE classes: 22 data exception (a NUL in
                    // text is 22021), 23 integrity constraint, 54 program limit
                    // (an index row too large).
                    code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
                }
            }
            _ => false,
        }
    }
}

/// A recorded token request, as `policy replay` reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestRow {
    pub audit_id: String,
    pub at_ms: i64,
    pub outcome: String,
    pub code: Option<String>,
    pub idp: Option<String>,
    pub user_id: Option<String>,
    pub user_groups: Option<String>,
    pub session_id: Option<String>,
    pub requested_role: Option<String>,
    pub requested_expire_time: Option<i64>,
    pub granted_role: Option<String>,
    pub granted_expire_time: Option<i64>,
    pub rule: Option<String>,
    pub detail: Option<String>,
}

/// A tenant's chain head as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HeadRow {
    pub tenant: String,
    pub seq: i64,
    pub hash: String,
}

/// A recorded prune point of a tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PruneRow {
    pub tenant: String,
    pub through_seq: i64,
    pub through_hash: String,
    pub rows_deleted: i64,
    pub pruned_at_ms: i64,
}

/// One group of `audit summary`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct SummaryRow {
    pub key: Option<String>,
    pub issued: i64,
    pub refused: i64,
}

/// Where a page of `query_audit` ended: the last row's time and chain position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    pub at_ms: i64,
    pub seq: i64,
}

impl AuditCursor {
    /// The cursor after `row`.
    pub fn after(row: &AuditRow) -> AuditCursor {
        AuditCursor {
            at_ms: row.at_ms,
            seq: row.seq,
        }
    }
}

/// Filters of the audit query (all optional; `tenant` is always set by the caller
/// from the authenticated principal, never from the request).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant: String,
    pub kind: Option<String>,
    pub role: Option<String>,
    pub outcome: Option<String>,
    pub code: Option<String>,
    pub user: Option<String>,
    /// The canonical session ID (`tokens::SessionId::canonical`).
    pub session_id: Option<String>,
    /// Another spelling also matched in `session_id` (rows recorded before
    /// session IDs were canonical); only with `session_id`.
    pub session_id_as_given: Option<String>,
    pub rule: Option<String>,
    pub policy_version: Option<i64>,
    pub key_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub token_id: Option<String>,
    pub token_sha256: Option<String>,
    /// Keyset cursor: only rows after this one in the page order
    /// (newest first: `at_ms` descending, then `seq` descending).
    pub before: Option<AuditCursor>,
    /// Only the row at this chain position.
    pub seq: Option<i64>,
    pub limit: i64,
}

/// One page of a tenant's rows as the database returned them, decoded only
/// when checked (`for_each`, on the verifier's thread) and then without
/// allocating: the columns are borrowed from the driver's row.
pub struct ChainPage(PageRows);

impl std::fmt::Debug for ChainPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainPage")
            .field("rows", &self.len())
            .finish()
    }
}

enum PageRows {
    Sqlite(Vec<sqlx::sqlite::SqliteRow>),
    Postgres(Vec<sqlx::postgres::PgRow>),
}

crate::domain::audit_row::audit_columns!(
    crate::domain::audit_row::row_ref_fn,
    sqlite_row_ref,
    sqlx::sqlite::SqliteRow
);
crate::domain::audit_row::audit_columns!(
    crate::domain::audit_row::row_ref_fn,
    pg_row_ref,
    sqlx::postgres::PgRow
);

impl ChainPage {
    pub fn len(&self) -> usize {
        match &self.0 {
            PageRows::Sqlite(v) => v.len(),
            PageRows::Postgres(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each row in chain order; stops when `f` returns `false`.
    pub fn for_each(&self, mut f: impl FnMut(Result<RowRef<'_>, sqlx::Error>) -> bool) {
        match &self.0 {
            PageRows::Sqlite(v) => {
                for r in v {
                    if !f(sqlite_row_ref(r)) {
                        return;
                    }
                }
            }
            PageRows::Postgres(v) => {
                for r in v {
                    if !f(pg_row_ref(r)) {
                        return;
                    }
                }
            }
        }
    }
}

/// Rows in the largest statement of a batch insert.
const INSERT_CHUNK_MAX: usize = 64;

/// How many of `left` rows the next insert statement takes: the largest
/// power of two up to `INSERT_CHUNK_MAX`, so every batch is written by
/// statements of at most seven sizes (1, 2, 4, ... 64 rows) and the
/// connection caches those seven, whatever the batch sizes. One prepared
/// statement per batch size would cache up to `max_batch` of them, the
/// largest holding ~15,000 bind slots each.
fn insert_chunk(left: usize) -> usize {
    if left >= INSERT_CHUNK_MAX {
        INSERT_CHUNK_MAX
    } else {
        1 << left.max(1).ilog2()
    }
}

/// A chain head: (seq, hash).
type Head = (i64, String);

/// The statement that reads a tenant's head and holds it for the rest of the
/// transaction. PostgreSQL locks the row (`FOR UPDATE`): a second writer on the
/// same tenant queues behind the first and then reads the head the first one
/// committed. SQLite has no row locks; its one writer lock, which every write
/// transaction takes at `BEGIN IMMEDIATE` (`BeginWrite`), does the same.
pub(crate) trait HeadSql: sqlx::Database {
    const LOCK_HEAD: &'static str;
}
impl HeadSql for sqlx::Sqlite {
    const LOCK_HEAD: &'static str = "SELECT seq, hash FROM audit_heads WHERE tenant = $1";
}
impl HeadSql for sqlx::Postgres {
    const LOCK_HEAD: &'static str =
        "SELECT seq, hash FROM audit_heads WHERE tenant = $1 FOR UPDATE";
}
/// `HeadSql::LOCK_HEAD` for the database of `_tx`.
pub(crate) fn lock_head_sql<DB: HeadSql>(_tx: &sqlx::Transaction<'_, DB>) -> &'static str {
    DB::LOCK_HEAD
}

/// The last step of a batch's transaction, once it holds the heads: moves
/// the heads in `heads` and inserts the sealed rows of `parts`, in order.
pub(crate) trait WriteBatch: HeadSql {
    async fn write_batch(
        tx: &mut sqlx::Transaction<'_, Self>,
        heads: &[(&str, &Head)],
        parts: [&[AuditRow]; 2],
    ) -> StoreResult<()>;
}

/// SQLite runs in the broker's process, so statements cost no round trip:
/// one update per head, and the rows in statements of a few fixed sizes
/// (each size one prepared statement kept in the connection's cache, so a
/// batch of any size reuses them instead of adding a statement of its own).
/// `OR FAIL`: a multi-row insert then needs no statement journal (a copy of
/// every page it touches, kept to undo just the one statement); a failed
/// insert fails the whole transaction anyway, which is rolled back.
impl WriteBatch for sqlx::Sqlite {
    async fn write_batch(
        tx: &mut sqlx::Transaction<'_, Self>,
        heads: &[(&str, &Head)],
        parts: [&[AuditRow]; 2],
    ) -> StoreResult<()> {
        for (tenant, h) in heads {
            sqlx::query("UPDATE audit_heads SET seq = $2, hash = $3 WHERE tenant = $1")
                .bind(*tenant)
                .bind(h.0)
                .bind(&h.1)
                .execute(&mut **tx)
                .await?;
        }
        for part in parts {
            let mut rest: &[AuditRow] = part;
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(insert_chunk(rest.len()));
                let mut qb = QueryBuilder::<Self>::new(format!(
                    "INSERT OR FAIL INTO audit_events ({COLUMNS}) "
                ));
                qb.push_values(chunk, |mut b, r| {
                    crate::domain::audit_row::audit_columns!(
                        crate::domain::audit_row::bind_row,
                        b,
                        r
                    );
                });
                qb.build().execute(&mut **tx).await.map_err(insert_error)?;
                rest = tail;
            }
        }
        Ok(())
    }
}

/// The statement that moves the heads and inserts the rows on PostgreSQL:
/// one round trip and one prepared statement for any batch, binding one
/// array per column (the chunked `VALUES` took 3–5 statements a batch, each
/// a round trip while the heads are locked and the other instances wait).
fn pg_write_batch_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let arrays: Vec<String> = crate::domain::audit_row::PG_ARRAY_TYPES
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("${}::{ty}", i + 4))
            .collect();
        format!(
            "WITH moved AS (UPDATE audit_heads AS h SET seq = v.seq, hash = v.hash \
             FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS v (tenant, seq, hash) \
             WHERE h.tenant = v.tenant) \
             INSERT INTO audit_events ({COLUMNS}) SELECT * FROM UNNEST({})",
            arrays.join(", ")
        )
    })
}

impl WriteBatch for sqlx::Postgres {
    async fn write_batch(
        tx: &mut sqlx::Transaction<'_, Self>,
        heads: &[(&str, &Head)],
        parts: [&[AuditRow]; 2],
    ) -> StoreResult<()> {
        let rows = parts.iter().flat_map(|p| p.iter());
        let q = sqlx::query(pg_write_batch_sql())
            .bind(heads.iter().map(|(t, _)| *t).collect::<Vec<_>>())
            .bind(heads.iter().map(|(_, h)| h.0).collect::<Vec<_>>())
            .bind(heads.iter().map(|(_, h)| h.1.as_str()).collect::<Vec<_>>());
        crate::domain::audit_row::audit_columns!(crate::domain::audit_row::bind_arrays, q, rows);
        q.execute(&mut **tx).await.map_err(insert_error)?;
        Ok(())
    }
}

/// A failed insert of sealed rows: `HeadMoved` when another writer took one
/// of their chain positions, else the database's error.
fn insert_error(e: sqlx::Error) -> StoreError {
    if is_seq_collision(&e) {
        StoreError::HeadMoved
    } else {
        StoreError::Db(e)
    }
}

/// The writer's source of rows that may join a transaction late: given the
/// tenants whose heads the transaction holds, rows of those tenants only.
pub type LateRows<'a> = &'a mut (dyn FnMut(&[String]) -> Vec<AuditRow> + Send);

/// Moves a tenant's head from `$4` (the seq this writer last left it at) to
/// `($2, $3)` and returns the new head; when another writer moved it meanwhile,
/// sets the row to itself instead, which locks it as `FOR UPDATE` would, and
/// returns the head as that writer left it. (Every `SET` expression reads the
/// row as it was, on both databases.) Without this, a writer that lost the head
/// learned it from an update of no rows, which takes no lock, and then queued a
/// second time for the lock behind the other writer's next batch.
const MOVE_OR_LOCK_HEAD: &str = "UPDATE audit_heads SET \
    seq = CASE WHEN seq = $4 THEN $2 ELSE seq END, \
    hash = CASE WHEN seq = $4 THEN $3 ELSE hash END \
    WHERE tenant = $1 RETURNING seq, hash";

/// Takes a tenant's head inside a transaction and keeps it until commit:
/// creates it at `(0, GENESIS)` when the tenant has none yet (`$insert_first`
/// when that is likely), else locks and reads it.
macro_rules! lock_head {
    ($tx:ident, $tenant:expr, $insert_first:expr) => {{
        let mut insert = $insert_first;
        let mut got: Option<(i64, String)> = None;
        for _ in 0..3 {
            if insert {
                let n = sqlx::query("INSERT INTO audit_heads (tenant, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (tenant) DO NOTHING")
                    .bind($tenant).bind($crate::domain::audit_row::GENESIS).execute(&mut *$tx).await?.rows_affected();
                if n == 1 {
                    got = Some((0, $crate::domain::audit_row::GENESIS.to_owned()));
                    break;
                }
            }
            let sql = $crate::store::audit::lock_head_sql(&$tx);
            got = sqlx::query_as::<_, (i64, String)>(sql).bind($tenant).fetch_optional(&mut *$tx).await?;
            if got.is_some() {
                break;
            }
            insert = true;
        }
        match got {
            Some(h) => h,
            None => return Err(StoreError::HeadMoved),
        }
    }};
}
pub(crate) use lock_head;

/// A writer's cache of its tenants' chain heads, kept between its commits.
#[derive(Debug, Clone, Default)]
pub struct HeadCache {
    heads: HashMap<String, Head>,
    /// Tenants whose head another writer had moved when this writer last
    /// took it (another broker instance on the same PostgreSQL writes for
    /// them too): the next commit locks their head first and seals their rows
    /// once, after the head it holds, instead of sealing after the cached head
    /// and then again after the head it finds. A lock that finds the head
    /// where this writer left it takes the tenant off the list.
    contended: HashSet<String>,
}

impl HeadCache {
    /// The head this writer last left the tenant's chain at.
    pub fn get(&self, tenant: &str) -> Option<&(i64, String)> {
        self.heads.get(tenant)
    }

    /// True when the tenant's next commit locks its head before sealing.
    pub fn is_contended(&self, tenant: &str) -> bool {
        self.contended.contains(tenant)
    }
}

/// How a commit takes one tenant's head.
enum Take {
    /// The rows are sealed after the cached head `old_seq`: one statement
    /// moves the head to `new` when nobody else moved it since.
    Move { old_seq: i64, new: Head },
    /// The head is locked first and the rows sealed after it (`cached`: the
    /// head this writer last left, if any).
    Lock { cached: Option<Head> },
}

/// The statement of `Store::query_audit` for filter `$f`, pushed onto query
/// builder `$qb` (expanded once per dialect).
macro_rules! audit_query_sql {
    ($qb:ident, $f:ident) => {{
        $qb.push(format!(
            "SELECT {COLUMNS} FROM audit_events WHERE tenant = "
        ));
        $qb.push_bind($f.tenant.clone());
        let text = [
            ("kind", &$f.kind),
            ("granted_role", &$f.role),
            ("outcome", &$f.outcome),
            ("code", &$f.code),
            ("user_id", &$f.user),
            ("rule", &$f.rule),
            ("key_id", &$f.key_id),
            ("token_id", &$f.token_id),
            ("token_sha256", &$f.token_sha256),
        ];
        for (col, v) in text {
            if let Some(v) = v {
                $qb.push(format!(" AND {col} = ")).push_bind(v.clone());
            }
        }
        match (&$f.session_id, &$f.session_id_as_given) {
            (Some(v), Some(given)) => {
                $qb.push(" AND session_id IN (")
                    .push_bind(v.clone())
                    .push(", ")
                    .push_bind(given.clone())
                    .push(")");
            }
            // One spelling: an equality, so its index yields rows in page order.
            (Some(v), None) => {
                $qb.push(" AND session_id = ").push_bind(v.clone());
            }
            (None, _) => {}
        }
        if let Some(v) = $f.policy_version {
            $qb.push(" AND policy_version = ").push_bind(v);
        }
        if let Some(v) = $f.since_ms {
            $qb.push(" AND at_ms >= ").push_bind(v);
        }
        if let Some(v) = $f.until_ms {
            $qb.push(" AND at_ms < ").push_bind(v);
        }
        if let Some(v) = $f.seq {
            $qb.push(" AND seq = ").push_bind(v);
        }
        if let Some(c) = $f.before {
            $qb.push(" AND (at_ms, seq) < (")
                .push_bind(c.at_ms)
                .push(", ")
                .push_bind(c.seq)
                .push(")");
        }
        // Newest first by recorded time (chain position breaks ties):
        // every filter's index is (tenant, column, at_ms, seq), so any
        // filter, with or without a time window, reads one index range
        // in this order and stops after `limit` rows.
        $qb.push(" ORDER BY at_ms DESC, seq DESC LIMIT ")
            .push_bind($f.limit);
    }};
}

impl Store {
    /// Seals `rows` into their tenants' chains with `seal` and commits them in
    /// one transaction: one attempt (the audit module's `append` retries it).
    /// `heads` is the caller's cache of chain heads, updated on success and
    /// cleared for these tenants on failure.
    ///
    /// Several writers (broker instances on one PostgreSQL, the CLI) may append
    /// to one tenant at once; they queue, they never fail each other. Inside the
    /// transaction each tenant's head is taken in a fixed order (sorted by
    /// tenant, so two batches cannot deadlock). A tenant that only this writer
    /// has been writing takes one statement, `MOVE_OR_LOCK_HEAD`: a
    /// compare-and-set from the cached head to the rows sealed after it. When
    /// another writer moved the head, that same statement waits for the other
    /// commit, locks the head and returns it, and this tenant's rows are
    /// resealed after it; from then on the tenant counts as contended
    /// (`HeadCache`), and its next commits lock the head before sealing, so
    /// each row is sealed once. Either way each tenant's head row is written
    /// once per commit. The chain stays one line: no fork, no gap.
    /// `HeadMoved` is left only for what no lock prevents (a head row deleted
    /// under us).
    pub async fn append_once(
        &self,
        rows: &mut [AuditRow],
        heads: &mut HeadCache,
        seal: Seal,
    ) -> StoreResult<()> {
        self.append_joining(rows, heads, seal, None, &mut Vec::new())
            .await
    }

    /// `append_once`, and once the transaction holds the heads of the batch's
    /// tenants, `late` is asked for more rows of those tenants (the group
    /// commit's queue, which filled while this writer waited for a head that
    /// another instance held). They are sealed after the batch's rows of their
    /// tenant, committed in the same transaction, and left in `joined` (also
    /// when the transaction fails, so that their requests get an answer).
    /// Only tenants whose heads are already held join: no new lock is taken,
    /// so the fixed order of locks still holds.
    pub async fn append_joining(
        &self,
        rows: &mut [AuditRow],
        heads: &mut HeadCache,
        seal: Seal,
        late: Option<LateRows<'_>>,
        joined: &mut Vec<AuditRow>,
    ) -> StoreResult<()> {
        let mut tenants: Vec<String> = rows.iter().map(|r| r.tenant.clone()).collect();
        tenants.sort();
        tenants.dedup();
        // How each tenant's head is taken (`takes[i]` for `tenants[i]`). Rows
        // of tenants taken by compare-and-set are sealed now, after the cached
        // head; the others once their head is held.
        let mut takes: Vec<Take> = tenants
            .iter()
            .map(|t| match heads.heads.get(t) {
                Some(h) if !heads.contended.contains(t) => Take::Move {
                    old_seq: h.0,
                    new: h.clone(),
                },
                cached => Take::Lock {
                    cached: cached.cloned(),
                },
            })
            .collect();
        for r in rows.iter_mut() {
            let Ok(i) = tenants.binary_search(&r.tenant) else {
                continue;
            };
            if let Take::Move { new, .. } = &mut takes[i] {
                *new = seal(r, new.0, &new.1);
            }
        }
        let mut news = HashMap::new();
        let mut contended = Vec::new();
        match self
            .commit_sealed(
                rows,
                (&tenants, &takes),
                &mut news,
                &mut contended,
                seal,
                late,
                joined,
            )
            .await
        {
            Ok(()) => {
                heads.heads.extend(news);
                for (t, yes) in contended {
                    if yes {
                        heads.contended.insert(t);
                    } else {
                        heads.contended.remove(&t);
                    }
                }
                Ok(())
            }
            Err(e) => {
                for t in &tenants {
                    heads.heads.remove(t);
                }
                Err(e)
            }
        }
    }

    /// The transaction of `append_joining`: takes each tenant's head as its
    /// `Take` says, seals what is not sealed yet, lets late rows join, writes
    /// each head once and the rows. Leaves the new heads in `news` and, for
    /// each tenant whose head was found rather than assumed, whether another
    /// writer had moved it, in `contended`.
    #[allow(clippy::too_many_arguments)]
    async fn commit_sealed(
        &self,
        rows: &mut [AuditRow],
        (tenants, takes): (&[String], &[Take]),
        news: &mut HashMap<String, Head>,
        contended: &mut Vec<(String, bool)>,
        seal: Seal,
        late: Option<LateRows<'_>>,
        joined: &mut Vec<AuditRow>,
    ) -> StoreResult<()> {
        with_pool!(write self, p => {
            let mut tx = p.begin_write().await?;
            // Tenants whose head is held but not written yet: first those
            // whose rows wait for it to be sealed, then those of late rows.
            let mut unwritten: Vec<&str> = Vec::new();
            for (tenant, take) in tenants.iter().zip(takes) {
                let held = match take {
                    // One statement either way: it moves the head when nobody
                    // moved it since we last wrote (the common case), and
                    // otherwise rewrites the row to itself, which takes the row's
                    // lock (waiting for the other writer's commit) and returns
                    // the head that writer left, now ours until commit.
                    Take::Move { old_seq, new } => {
                        let h: Option<Head> = sqlx::query_as(MOVE_OR_LOCK_HEAD)
                            .bind(tenant).bind(new.0).bind(&new.1).bind(*old_seq)
                            .fetch_optional(&mut *tx).await?;
                        match h {
                            Some(h) if h == *new => {
                                news.insert(tenant.clone(), h);
                                continue;
                            }
                            Some(h) => {
                                contended.push((tenant.clone(), true));
                                h
                            }
                            None => lock_head!(tx, tenant, false),
                        }
                    }
                    // PostgreSQL locks by `FOR UPDATE` (SQLite's transaction
                    // holds the one writer lock already), after creating a
                    // head never seen.
                    Take::Lock { cached } => {
                        let h = lock_head!(tx, tenant, cached.is_none());
                        if cached.is_some() {
                            contended.push((tenant.clone(), cached.as_ref() != Some(&h)));
                        }
                        h
                    }
                };
                news.insert(tenant.clone(), held);
                unwritten.push(tenant.as_str());
            }
            // Every head is held now: seal the rows that wait for theirs.
            for r in rows.iter_mut().filter(|r| unwritten.contains(&r.tenant.as_str())) {
                let h = &news[&r.tenant];
                let h = seal(r, h.0, &h.1);
                news.insert(r.tenant.clone(), h);
            }
            // Rows of these tenants that arrived meanwhile join this commit,
            // sealed after the batch's own.
            if let Some(late) = late {
                let first = joined.len();
                joined.extend(late(tenants));
                for r in &mut joined[first..] {
                    let Ok(i) = tenants.binary_search(&r.tenant) else {
                        return Err(StoreError::Conflict("a late row of a tenant whose head is not held".into()));
                    };
                    let tenant = &tenants[i];
                    let h = &news[tenant];
                    let h = seal(r, h.0, &h.1);
                    news.insert(tenant.clone(), h);
                    if !unwritten.contains(&tenant.as_str()) {
                        unwritten.push(tenant.as_str());
                    }
                }
            }
            let moved: Vec<(&str, &Head)> = unwritten.iter().map(|t| (*t, &news[*t])).collect();
            WriteBatch::write_batch(&mut tx, &moved, [&*rows, &joined[..]]).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The stored head of a tenant's chain.
    pub async fn audit_head(&self, tenant: &str) -> StoreResult<Option<HeadRow>> {
        Ok(with_pool!(write self, p => sqlx::query_as::<_, HeadRow>(
            "SELECT tenant, seq, hash FROM audit_heads WHERE tenant = $1"
        ).bind(tenant).fetch_optional(p).await)?)
    }

    /// The lowest and highest `seq` of a tenant's stored rows (two probes of
    /// the primary key), so `audit verify` sees rows outside the chain it
    /// walked: before its start, or after a head that was moved back.
    pub async fn audit_seq_bounds(&self, tenant: &str) -> StoreResult<(Option<i64>, Option<i64>)> {
        Ok(
            with_pool!(write self, p => sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
            "SELECT (SELECT seq FROM audit_events WHERE tenant = $1 ORDER BY seq LIMIT 1), \
                    (SELECT seq FROM audit_events WHERE tenant = $1 ORDER BY seq DESC LIMIT 1)"
        ).bind(tenant).fetch_one(p).await)?,
        )
    }

    /// Every tenant's head (for `audit checkpoint` / `audit verify` of all tenants).
    pub async fn audit_heads(&self) -> StoreResult<Vec<HeadRow>> {
        Ok(with_pool!(self, p => sqlx::query_as::<_, HeadRow>(
            "SELECT tenant, seq, hash FROM audit_heads ORDER BY tenant"
        ).fetch_all(p).await)?)
    }

    /// Rows matching `f`, newest first, at most `f.limit`; stopped after the
    /// store's read budget (`ReadTimeout`).
    pub async fn query_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRow>> {
        Ok(match &self.db {
            Db::Sqlite { read, .. } => {
                let mut qb = QueryBuilder::<sqlx::Sqlite>::new("");
                audit_query_sql!(qb, f);
                let mut c = SqliteRead::acquire(read, self.read_budget).await?;
                let rows = qb.build().fetch_all(c.conn()).await.map_err(read_error)?;
                c.done().await?;
                rows.iter()
                    .map(|r| sqlite_row_ref(r).map(|r| r.to_row()))
                    .collect::<Result<_, _>>()?
            }
            Db::Postgres(p) => {
                let mut qb = QueryBuilder::<sqlx::Postgres>::new("");
                audit_query_sql!(qb, f);
                let mut tx = pg_read(p, self.read_budget).await?;
                let rows = qb.build().fetch_all(&mut *tx).await.map_err(read_error)?;
                tx.commit().await?;
                rows.iter()
                    .map(|r| pg_row_ref(r).map(|r| r.to_row()))
                    .collect::<Result<_, _>>()?
            }
        })
    }

    /// Streams a tenant's rows in chain order (from `after_seq`) into `f`;
    /// stops early when `f` returns `false`. Constant memory for any size.
    pub async fn scan_audit<F>(&self, tenant: &str, after_seq: i64, mut f: F) -> StoreResult<()>
    where
        F: FnMut(AuditRow) -> bool,
    {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_events WHERE tenant = $1 AND seq > $2 ORDER BY seq"
        );
        macro_rules! stream {
            ($p:expr, $decode:ident) => {{
                let mut s = sqlx::query(&sql).bind(tenant).bind(after_seq).fetch($p);
                while let Some(row) = s.try_next().await? {
                    if !f($decode(&row)?.to_row()) {
                        break;
                    }
                }
                Ok(())
            }};
        }
        match &self.db {
            Db::Sqlite { read, .. } => stream!(read, sqlite_row_ref),
            Db::Postgres(p) => stream!(p, pg_row_ref),
        }
    }

    /// A tenant's rows with `after_seq < seq <= upto_seq`, in chain order, a
    /// page of at most `page` rows at a time (keyset on `seq`, the primary
    /// key's order), into `f`; stops early when `f` returns `false`. Memory is
    /// bounded by the page, for any size of history.
    pub async fn scan_chain<F>(
        &self,
        tenant: &str,
        after_seq: i64,
        upto_seq: i64,
        page: i64,
        mut f: F,
    ) -> StoreResult<()>
    where
        F: FnMut(ChainPage) -> bool,
    {
        use sqlx::Row;
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_events WHERE tenant = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"
        );
        let mut last = after_seq;
        while last < upto_seq {
            let (rows, next) = match &self.db {
                Db::Sqlite { read, .. } => {
                    let v = sqlx::query(&sql)
                        .bind(tenant)
                        .bind(last)
                        .bind(upto_seq)
                        .bind(page)
                        .fetch_all(read)
                        .await?;
                    let next = v.last().map(|r| r.try_get::<i64, _>(2)).transpose()?;
                    (ChainPage(PageRows::Sqlite(v)), next)
                }
                Db::Postgres(p) => {
                    let v = sqlx::query(&sql)
                        .bind(tenant)
                        .bind(last)
                        .bind(upto_seq)
                        .bind(page)
                        .fetch_all(p)
                        .await?;
                    let next = v.last().map(|r| r.try_get::<i64, _>(2)).transpose()?;
                    (ChainPage(PageRows::Postgres(v)), next)
                }
            };
            let Some(next) = next else { break };
            last = next;
            if !f(rows) {
                break;
            }
        }
        Ok(())
    }

    /// A tenant's rows `after_seq < seq <= upto_seq` in chain order as
    /// PostgreSQL's binary `COPY` streams them (read them with
    /// `CopyDecoder`): one statement, no per-page query, no rendering on the
    /// server. `f` gets each chunk and returns `false` to stop. `Ok(false)`
    /// when the database has no binary `COPY` (SQLite).
    pub async fn copy_chain<F>(
        &self,
        tenant: &str,
        after_seq: i64,
        upto_seq: i64,
        mut f: F,
    ) -> StoreResult<bool>
    where
        F: FnMut(&[u8]) -> bool,
    {
        use sqlx::postgres::PgPoolCopyExt;
        let Db::Postgres(p) = &self.db else {
            return Ok(false);
        };
        // COPY takes no parameters: the server quotes the tenant itself.
        let tenant: String = sqlx::query_scalar("SELECT quote_literal($1::text)")
            .bind(tenant)
            .fetch_one(p)
            .await?;
        let sql = format!(
            "COPY (SELECT {COLUMNS} FROM audit_events WHERE tenant = {tenant} \
             AND seq > {after_seq} AND seq <= {upto_seq} ORDER BY seq) TO STDOUT (FORMAT binary)"
        );
        let mut chunks = p.copy_out_raw(&sql).await?;
        while let Some(chunk) = chunks.try_next().await? {
            if !f(&chunk) {
                break;
            }
        }
        Ok(true)
    }

    /// Streams a tenant's recorded token requests (issued and refused) with
    /// `since_ms <= at_ms < until_ms`, in time order, into `f`: only the
    /// columns `policy replay` needs, so a million rows read quickly. Reads
    /// at most `limit` rows.
    pub async fn scan_requests<F>(
        &self,
        tenant: &str,
        since_ms: i64,
        until_ms: i64,
        limit: u64,
        mut f: F,
    ) -> StoreResult<()>
    where
        F: FnMut(RequestRow),
    {
        let sql = "SELECT audit_id, at_ms, outcome, code, idp, user_id, user_groups, session_id, \
             requested_role, requested_expire_time, granted_role, granted_expire_time, rule, detail \
             FROM audit_events WHERE tenant = $1 AND at_ms >= $2 AND at_ms < $3 \
             AND kind IN ('token_issued', 'token_refused') ORDER BY at_ms, seq LIMIT $4";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_pool!(self, p => {
            let mut s = sqlx::query_as::<_, RequestRow>(sql)
                .bind(tenant).bind(since_ms).bind(until_ms).bind(limit).fetch(p);
            while let Some(row) = s.try_next().await? {
                f(row);
            }
            Ok(())
        })
    }

    /// The latest prune point of a tenant, if it was ever pruned.
    pub async fn last_prune(&self, tenant: &str) -> StoreResult<Option<PruneRow>> {
        Ok(with_pool!(self, p => sqlx::query_as::<_, PruneRow>(
            "SELECT tenant, through_seq, through_hash, rows_deleted, pruned_at_ms FROM audit_prunes \
             WHERE tenant = $1 ORDER BY through_seq DESC LIMIT 1"
        ).bind(tenant).fetch_optional(p).await)?)
    }

    /// Deletes a tenant's rows older than `before_ms` and records the prune point,
    /// in one transaction. Returns the point, or `None` when nothing was old enough.
    pub async fn prune_audit(
        &self,
        tenant: &str,
        before_ms: i64,
        now_ms: i64,
    ) -> StoreResult<Option<PruneRow>> {
        with_pool!(write self, p => {
            let mut tx = p.begin_write().await?;
            let last: Option<(i64, String)> = sqlx::query_as(
                "SELECT seq, hash FROM audit_events WHERE tenant = $1 AND at_ms < $2 ORDER BY seq DESC LIMIT 1"
            ).bind(tenant).bind(before_ms).fetch_optional(&mut *tx).await?;
            let Some((seq, hash)) = last else { return Ok(None) };
            let n = sqlx::query("DELETE FROM audit_events WHERE tenant = $1 AND seq <= $2")
                .bind(tenant).bind(seq).execute(&mut *tx).await?.rows_affected() as i64;
            let row = PruneRow { tenant: tenant.to_owned(), through_seq: seq, through_hash: hash, rows_deleted: n, pruned_at_ms: now_ms };
            sqlx::query(
                "INSERT INTO audit_prunes (tenant, through_seq, through_hash, rows_deleted, pruned_at_ms) VALUES ($1, $2, $3, $4, $5)"
            ).bind(&row.tenant).bind(row.through_seq).bind(&row.through_hash).bind(row.rows_deleted).bind(row.pruned_at_ms)
             .execute(&mut *tx).await?;
            // The rollup counted rows that are gone, mixed into its buckets: drop
            // it and restart it at the prune point (nothing at or below it is
            // left to count; the pass recounts the rest). Not 0: a pass that
            // read its chunk before this prune must never find `through_seq`
            // back at its old value. The state row first, as the pass locks it.
            sqlx::query(
                "INSERT INTO audit_rollup_state (tenant, through_seq) VALUES ($1, $2) \
                 ON CONFLICT (tenant) DO UPDATE SET through_seq = excluded.through_seq"
            ).bind(tenant).bind(seq).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM audit_rollup WHERE tenant = $1")
                .bind(tenant).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Some(row))
        })
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::{INSERT_CHUNK_MAX, insert_chunk};
    use crate::audit::{Actor, AuditRow, Kind, Outcome};
    use crate::store::Db;

    /// The write connection caches a few statements, not one per batch size
    /// or rollup chunk size: batches of every size from 1 to 130 rows and
    /// rollup passes whose chunks make different numbers of rollup rows leave
    /// no more than a handful of prepared statements behind (each multi-row
    /// statement holds thousands of bind slots; the cache keeps up to 100).
    #[tokio::test]
    async fn the_writer_caches_a_bounded_set_of_statements() {
        let (store, _dir) = crate::store::temp_store().await;
        let mut heads = super::HeadCache::default();
        let mut k = 0i64;
        for n in 1..=130 {
            let mut rows: Vec<AuditRow> = (0..n)
                .map(|_| {
                    k += 1;
                    let mut r = issued("acme", 1_764_000_000_000 + k * 60_000);
                    r.user_id = Some(format!("u{k}"));
                    r
                })
                .collect();
            crate::audit::append(&store, &mut rows, &mut heads)
                .await
                .unwrap();
        }
        // Chunks of 37, 38, ... rows of distinct users: a different number of
        // rollup rows in each chunk's last upsert.
        let mut size = 37;
        while store.rollup_pass("acme", size).await.unwrap() > 0 {
            size += 1;
        }
        let Db::Sqlite { write, .. } = &store.db else {
            unreachable!()
        };
        let mut c = write.acquire().await.unwrap();
        let cached = c.cached_statements_size();
        assert!(cached <= 24, "{cached} statements cached");
        // The same pool still writes (the statements left are usable).
        c.ping().await.unwrap();
    }

    /// A token issuance of `tenant` at `at_ms`, to be sealed.
    fn issued(tenant: &str, at_ms: i64) -> AuditRow {
        AuditRow::new(
            tenant,
            Kind::TokenIssued,
            Outcome::Issued,
            Actor::ApiKey,
            at_ms,
        )
    }

    /// A writer whose cached head another writer moved (as two instances on
    /// one database do nearly every batch) takes the head as that writer left
    /// it and reseals after it within the same attempt: no refusal, no second
    /// attempt, no fork. (Inserting after the stale head instead would collide
    /// on `(tenant, seq)` and cost the batch a whole retry.)
    #[tokio::test]
    async fn a_writer_that_lost_the_head_reseals_in_the_same_attempt() {
        let (store, _dir) = crate::store::temp_store().await;
        let row = |at_ms| issued("acme", at_ms);
        let seal = crate::audit::chain::seal;
        let mut a = super::HeadCache::default();
        store
            .append_once(&mut [row(1)], &mut a, seal)
            .await
            .unwrap();
        let mut b = a.clone();
        store
            .append_once(&mut [row(2), row(3), row(4)], &mut b, seal)
            .await
            .unwrap();
        // a still believes the head is at 1.
        assert_eq!(a.get("acme").unwrap().0, 1);
        let mut rows = [row(5), row(6)];
        store
            .append_once(&mut rows, &mut a, seal)
            .await
            .expect("one attempt, resealed after the moved head");
        assert_eq!(rows.each_ref().map(|r| r.seq), [5, 6]);
        assert_eq!(rows[0].prev_hash, b.get("acme").unwrap().1);
        let head = store.audit_head("acme").await.unwrap().unwrap();
        assert_eq!((head.seq, &head.hash), (6, &a.get("acme").unwrap().1));
        // And the writer whose cache is current still moves it in one statement.
        store
            .append_once(&mut [row(7)], &mut a, seal)
            .await
            .unwrap();
        assert_eq!(store.audit_head("acme").await.unwrap().unwrap().seq, 7);
    }

    /// Rows that the group commit's queue hands over once the heads are held
    /// are sealed after the batch's own rows and committed with them; a row of
    /// a tenant whose head the transaction does not hold fails the whole
    /// attempt (nothing of it is committed) and is still handed back, so that
    /// its request gets an answer.
    #[tokio::test]
    async fn late_rows_of_the_held_tenants_join_the_same_commit() {
        let (store, _dir) = crate::store::temp_store().await;
        let row = issued;
        let seal = crate::audit::chain::seal;
        let mut heads = super::HeadCache::default();
        let mut rows = [row("acme", 1), row("acme", 2)];
        let mut asked = Vec::new();
        let mut late = |tenants: &[String]| {
            asked.push(tenants.to_vec());
            vec![row("acme", 3), row("acme", 4)]
        };
        let mut joined = Vec::new();
        store
            .append_joining(&mut rows, &mut heads, seal, Some(&mut late), &mut joined)
            .await
            .unwrap();
        assert_eq!(asked, [vec!["acme".to_owned()]]);
        assert_eq!(rows.each_ref().map(|r| r.seq), [1, 2]);
        assert_eq!(joined.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(joined[0].prev_hash, rows[1].hash);
        let head = store.audit_head("acme").await.unwrap().unwrap();
        assert_eq!((head.seq, &head.hash), (4, &joined[1].hash));
        assert_eq!(heads.get("acme"), Some(&(4, joined[1].hash.clone())));
        let v = crate::audit::verify::verify_tenant(&store, "acme", None)
            .await
            .unwrap();
        assert!(v.ok && v.rows == 4, "{v:?}");

        // A row of another tenant cannot join: the attempt fails whole.
        let mut rows = [row("acme", 5)];
        let mut late = |_: &[String]| vec![row("beta", 6)];
        let mut joined = Vec::new();
        let r = store
            .append_joining(&mut rows, &mut heads, seal, Some(&mut late), &mut joined)
            .await;
        assert!(r.is_err(), "{r:?}");
        assert_eq!(joined.len(), 1, "handed back for an answer");
        assert_eq!(store.audit_head("acme").await.unwrap().unwrap().seq, 4);
        assert!(store.audit_head("beta").await.unwrap().is_none());
    }

    /// Every batch size up to four times the largest statement is written by
    /// statements whose sizes add up to it, each a power of two no larger than
    /// the largest, and no more than `1 + log2(largest)` sizes in all.
    #[test]
    fn batches_are_written_in_a_few_fixed_statement_sizes() {
        let mut sizes = std::collections::BTreeSet::new();
        for n in 1..=4 * INSERT_CHUNK_MAX {
            let (mut left, mut parts) = (n, Vec::new());
            while left > 0 {
                let c = insert_chunk(left);
                assert!(c.is_power_of_two() && c <= INSERT_CHUNK_MAX && c <= left);
                parts.push(c);
                left -= c;
            }
            assert_eq!(parts.iter().sum::<usize>(), n);
            assert!(parts.windows(2).all(|w| w[0] >= w[1]), "{n}: {parts:?}");
            sizes.extend(parts);
        }
        assert_eq!(
            sizes.len(),
            INSERT_CHUNK_MAX.ilog2() as usize + 1,
            "{sizes:?}"
        );
    }
}

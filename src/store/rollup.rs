//! Audit summaries and the rollup that keeps them fast (issue 13, point 5).
//!
//! `audit_rollup` holds issued and refused counts of each tenant's token rows
//! per group key and bucket of UTC days (`buckets`), at seven levels, up to
//! `audit_rollup_state.through_seq`: every row of the tenant at or below it is
//! counted, none above. A background pass (`rollup_all`, every 30 s) moves it
//! forward; the issuance write path never touches these tables.
//!
//! A summary is a "real-time aggregate": the buckets inside its window, plus
//! the raw rows of the partial days at its edges, plus the raw rows the pass
//! has not counted yet (seq above `through_seq`), all read in one snapshot.
//! Correctness never depends on the pass having run, only speed does; the
//! plain scan (`audit_summary_scan`) is the same answer read from rows alone.

use std::collections::BTreeMap;

use sqlx::QueryBuilder;

use super::bounded::{SqliteRead, pg_read, read_error};
use super::buckets::{self, BucketRange, DAY_MS, NO_LOWER_DAY, NO_UPPER_DAY, TOP};
use super::{BeginWrite, Db, Dialect, Store, StoreError, StoreResult, SummaryRow, with_pool};

/// Rows of the chain per rollup transaction of the background pass: a chunk
/// of a busy tenant touches a few thousand rollup rows per level, so each
/// write transaction stays short (on SQLite it shares the one writer with
/// the audit's group commit).
pub const ROLLUP_CHUNK_ROWS: i64 = 20_000;

/// Rollup rows one transaction of the pass may write at most. A chunk's
/// rows each add to up to 7 levels of 4 dimensions, so a chunk over many
/// distinct users can mean several rollup rows per audit row; past this the
/// chunk is cut shorter. SQLite: about 0.1 s of the one writer, which the
/// audit's group commit waits for. PostgreSQL: the transaction locks only
/// the tenant's rollup rows, which issuance never touches, so it may be
/// longer, and fewer, larger chunks update each high-level row less often.
fn max_cells(d: Dialect) -> usize {
    match d {
        Dialect::Sqlite => 16_384,
        Dialect::Postgres => 131_072,
    }
}

/// Rollup rows per SQLite upsert statement (8 binds each: far below its limit
/// of 32,766 bind parameters; PostgreSQL binds 8 arrays instead).
const UPSERT_ROWS: usize = 1000;

/// Times a pass re-reads the state after another instance moved it first.
const MAX_LOST: usize = 8;

/// The PostgreSQL advisory lock (transaction-scoped) that the instance
/// running a rollup round holds: ASCII `tbrollup`. Other instances on the
/// same database skip their round meanwhile instead of reading the same
/// chunks and losing each of them to the compare-and-set.
pub const ROLLUP_ROUND_LOCK: i64 = 0x7462_726f_6c6c_7570;

/// SQLite: `+col` makes a column useless to an index, so the planner keeps
/// to the range it should read (the time index, or the `(tenant, seq)` key).
fn plus(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "+",
        Dialect::Postgres => "",
    }
}

/// `YYYY-MM-DD` of a time given in Unix seconds (UTC).
fn day_key(d: Dialect, secs: &str) -> String {
    match d {
        Dialect::Sqlite => format!("strftime('%Y-%m-%d', {secs}, 'unixepoch')"),
        Dialect::Postgres => {
            format!("to_char(to_timestamp({secs}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
        }
    }
}

/// What a summary groups by, over raw rows and over rollup rows.
struct Grouping {
    /// The group key as an expression over `audit_events`.
    raw_key: String,
    /// The same key as an expression over `audit_rollup`.
    rollup_key: String,
    /// The rollup dimension that holds the groups.
    dim: &'static str,
    /// By day: each level-0 bucket is its own group (read from the role
    /// dimension, whose groups together count every row of the day).
    days_only: bool,
}

fn grouping(d: Dialect, by: &str) -> StoreResult<Grouping> {
    // SQLite: `+col` keeps the planner from walking a whole per-column
    // index to get the groups in order (a table lookup per row of the
    // tenant's history); it reads the time range instead.
    let plus = plus(d);
    let (raw_key, dim) = match by {
        "role" => ("COALESCE(granted_role, requested_role)".to_owned(), "role"),
        "user" => (format!("{plus}user_id"), "user"),
        "session" => (format!("{plus}session_id"), "session"),
        "rule" => (format!("{plus}rule"), "rule"),
        "day" => (day_key(d, "at_ms / 1000"), "role"),
        other => {
            return Err(StoreError::Invalid(format!(
                "cannot group by {other:?}: use role, user, session, rule or day"
            )));
        }
    };
    let days_only = by == "day";
    let rollup_key = if days_only {
        // A bucket of level 0 is a day number. (Both render the same date
        // for any time from 1970 on; `at_ms / 1000` truncates toward zero.)
        day_key(d, &format!("bucket * {}", DAY_MS / 1000))
    } else {
        "CASE WHEN has_key = 1 THEN key END".to_owned()
    };
    Ok(Grouping {
        raw_key,
        rollup_key,
        dim,
        days_only,
    })
}

/// Issued and refused counts of raw token rows per group key, `$1` being the
/// tenant and `cond` more conditions (`AND ...`). The full scan is this with
/// its window; a rollup summary uses it for its edges and its tail.
fn raw_counts(d: Dialect, key: &str, cond: &str) -> String {
    let plus = plus(d);
    format!(
        "SELECT {key} AS key, \
         SUM(CASE WHEN outcome = 'issued' THEN 1 ELSE 0 END) AS issued, \
         SUM(CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END) AS refused \
         FROM audit_events WHERE tenant = $1 AND {plus}kind IN ('token_issued', 'token_refused') \
         {cond} GROUP BY {key}"
    )
}

/// The order of a summary's groups (the key breaks ties, so it is total).
const SUMMARY_ORDER: &str = " ORDER BY issued DESC, refused DESC, key";

/// `SUMMARY_ORDER` and the first `limit` groups in it: the same groups
/// whether the rollup or the rows answer.
fn summary_order_limit(limit: i64) -> String {
    // An integer, formatted: nothing of the caller's reaches the text.
    format!("{SUMMARY_ORDER} LIMIT {}", limit.max(0))
}

/// A summary window cut at whole UTC days: rollup buckets for the days
/// `[d0, d1)`, raw rows for `[since, d0_ms)` and `[d1_ms, until)`.
#[derive(Debug, Clone, Copy)]
struct WholeDays {
    d0: i64,
    d1: i64,
    /// `d0` in milliseconds; `None` when the window has no lower bound.
    d0_ms: Option<i64>,
    /// `d1` in milliseconds; `None` when the window has no upper bound.
    d1_ms: Option<i64>,
}

impl WholeDays {
    /// `None` when the window holds no whole day (then rows alone answer),
    /// or when a bound is too far out to name in milliseconds.
    fn of(since_ms: Option<i64>, until_ms: Option<i64>) -> Option<WholeDays> {
        let (d0, d0_ms) = match since_ms {
            None => (NO_LOWER_DAY, None),
            Some(s) => {
                let d = buckets::day_of(s) + i64::from(s.rem_euclid(DAY_MS) != 0);
                (d, Some(d.checked_mul(DAY_MS)?))
            }
        };
        let (d1, d1_ms) = match until_ms {
            None => (NO_UPPER_DAY, None),
            Some(u) => {
                let d = buckets::day_of(u);
                (d, Some(d.checked_mul(DAY_MS)?))
            }
        };
        (d0 < d1).then_some(WholeDays {
            d0,
            d1,
            d0_ms,
            d1_ms,
        })
    }
}

/// The statement of a rollup summary and its `i64` parameters (`$3` on;
/// `$1` is the tenant, `$2` the dimension).
fn rollup_summary_sql(
    d: Dialect,
    g: &Grouping,
    w: WholeDays,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    through_seq: i64,
    limit: i64,
) -> (String, Vec<i64>) {
    let mut binds: Vec<i64> = Vec::new();
    let mut param = |v: i64| {
        binds.push(v);
        format!("${}", binds.len() + 2)
    };
    let mut parts = Vec::new();
    let ranges = if g.days_only {
        vec![BucketRange {
            level: 0,
            lo: w.d0,
            hi: w.d1,
        }]
    } else {
        buckets::decompose(w.d0, w.d1)
    };
    for r in ranges {
        parts.push(format!(
            "SELECT {} AS key, issued, refused FROM audit_rollup \
             WHERE tenant = $1 AND dim = $2 AND level = {} AND bucket >= {} AND bucket < {}",
            g.rollup_key,
            r.level,
            param(r.lo),
            param(r.hi)
        ));
    }
    // The partial days at the edges, from rows (the time index's range).
    if let (Some(s), Some(d0)) = (since_ms, w.d0_ms)
        && s < d0
    {
        let cond = format!("AND at_ms >= {} AND at_ms < {}", param(s), param(d0));
        parts.push(raw_counts(d, &g.raw_key, &cond));
    }
    if let (Some(u), Some(d1)) = (until_ms, w.d1_ms)
        && d1 < u
    {
        let cond = format!("AND at_ms >= {} AND at_ms < {}", param(d1), param(u));
        parts.push(raw_counts(d, &g.raw_key, &cond));
    }
    // The tail the pass has not counted: the `(tenant, seq)` key's range.
    let plus = plus(d);
    let mut cond = format!("AND seq > {}", param(through_seq));
    if let Some(v) = w.d0_ms {
        cond.push_str(&format!(" AND {plus}at_ms >= {}", param(v)));
    }
    if let Some(v) = w.d1_ms {
        cond.push_str(&format!(" AND {plus}at_ms < {}", param(v)));
    }
    parts.push(raw_counts(d, &g.raw_key, &cond));
    let sql = format!(
        "SELECT key, CAST(SUM(issued) AS BIGINT) AS issued, CAST(SUM(refused) AS BIGINT) AS refused \
         FROM ({}) AS parts GROUP BY key{}",
        parts.join(" UNION ALL "),
        summary_order_limit(limit)
    );
    (sql, binds)
}

/// The per-(dimension, key, day) counts of a chunk `seq in ($2, $3]` of a
/// tenant's rows, grouped by the database; one read of the key's range.
fn deltas_sql(d: Dialect) -> String {
    let plus = plus(d);
    // floor(at_ms / day) for any sign (`/` and `%` truncate toward zero).
    let day = format!("(at_ms - ((at_ms % {DAY_MS}) + {DAY_MS}) % {DAY_MS}) / {DAY_MS}");
    let per = |dim: &str, col: &str| {
        format!(
            "SELECT '{dim}' AS dim, {col} AS key, day, SUM(i) AS issued, SUM(f) AS refused \
             FROM chunk GROUP BY {col}, day"
        )
    };
    format!(
        "WITH chunk AS MATERIALIZED (SELECT COALESCE(granted_role, requested_role) AS r, \
         user_id AS u, session_id AS s, rule AS k, {day} AS day, \
         CASE WHEN outcome = 'issued' THEN 1 ELSE 0 END AS i, \
         CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END AS f \
         FROM audit_events WHERE tenant = $1 AND seq > $2 AND seq <= $3 \
         AND {plus}kind IN ('token_issued', 'token_refused')) \
         {} UNION ALL {} UNION ALL {} UNION ALL {}",
        per("role", "r"),
        per("user", "u"),
        per("session", "s"),
        per("rule", "k"),
    )
}

/// One row of `audit_rollup` of a tenant, in primary-key order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Cell {
    dim: String,
    level: i16,
    bucket: i64,
    has_key: i16,
    key: String,
}

/// A chunk's deltas per day, folded into every level and sorted by primary
/// key (so two instances' transactions take row locks in the same order).
type Delta = (String, Option<String>, i64, i64, i64);
fn fold(deltas: Vec<Delta>) -> Vec<(Cell, i64, i64)> {
    let mut cells: BTreeMap<Cell, (i64, i64)> = BTreeMap::new();
    for (dim, key, day, issued, refused) in deltas {
        for level in 0..=TOP {
            let c = cells
                .entry(Cell {
                    dim: dim.clone(),
                    level,
                    bucket: buckets::bucket_of(day, level),
                    has_key: i16::from(key.is_some()),
                    key: key.clone().unwrap_or_default(),
                })
                .or_default();
            c.0 += issued;
            c.1 += refused;
        }
    }
    cells.into_iter().map(|(c, (i, r))| (c, i, r)).collect()
}

/// What one step of a pass did.
enum Step {
    /// The tenant's rollup had counted its whole chain.
    UpToDate,
    /// `rows` more rows of the chain are counted, through `through`;
    /// `cut` when the chunk was cut short to keep its transaction small.
    Counted { rows: i64, through: i64, cut: bool },
    /// Another instance moved the tenant's rollup first; nothing written.
    Lost,
}

impl Store {
    /// Counts of issued and refused tokens grouped by `by` (`role`, `user`,
    /// `session`, `rule` or `day`), for a tenant and time range: the rollup's
    /// buckets inside the window plus the rows it has not counted and the
    /// partial days at the window's edges, read in one snapshot. The same
    /// answer as `audit_summary_scan`, whether or not the pass has run: the
    /// first `limit` groups, most issued first.
    pub async fn audit_summary(
        &self,
        tenant: &str,
        by: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<SummaryRow>> {
        let d = self.dialect();
        let g = grouping(d, by)?;
        let Some(w) = WholeDays::of(since_ms, until_ms) else {
            return self
                .audit_summary_scan(tenant, by, since_ms, until_ms, limit)
                .await;
        };
        // One snapshot for the state and the counts: SQLite's read
        // transaction (WAL) has one; PostgreSQL's is REPEATABLE READ, or a
        // pass committing in between would be counted twice.
        macro_rules! counts {
            ($tx:expr) => {{
                let through: Option<i64> = sqlx::query_scalar(
                    "SELECT through_seq FROM audit_rollup_state WHERE tenant = $1",
                )
                .bind(tenant)
                .fetch_optional(&mut *$tx)
                .await
                .map_err(read_error)?;
                match through.unwrap_or(0) {
                    // Nothing counted yet: the plain scan reads less.
                    0 => None,
                    through => {
                        let (sql, binds) =
                            rollup_summary_sql(d, &g, w, since_ms, until_ms, through, limit);
                        // Planned with its values each time (the statement's
                        // shape varies with the window anyway).
                        let mut q = sqlx::query_as::<_, SummaryRow>(&sql)
                            .persistent(false)
                            .bind(tenant)
                            .bind(g.dim);
                        for v in binds {
                            q = q.bind(v);
                        }
                        Some(q.fetch_all(&mut *$tx).await.map_err(read_error)?)
                    }
                }
            }};
        }
        let rows = match &self.db {
            Db::Sqlite { read, .. } => {
                let mut c = SqliteRead::acquire(read, self.read_budget).await?;
                let mut tx = sqlx::Connection::begin(c.conn()).await?;
                let rows = counts!(tx);
                tx.commit().await?;
                c.done().await?;
                rows
            }
            Db::Postgres(p) => {
                let mut tx = pg_read(p, self.read_budget).await?;
                let rows = counts!(tx);
                tx.commit().await?;
                rows
            }
        };
        match rows {
            Some(rows) => Ok(rows),
            None => {
                self.audit_summary_scan(tenant, by, since_ms, until_ms, limit)
                    .await
            }
        }
    }

    /// `audit_summary` read from rows alone: every row of the window. The
    /// reference answer (the tests' oracle) and what a window without a
    /// whole day uses.
    pub async fn audit_summary_scan(
        &self,
        tenant: &str,
        by: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<SummaryRow>> {
        let g = grouping(self.dialect(), by)?;
        // Only the bounds given: an unbounded summary reads the tenant's rows
        // in order (no index to walk), a window reads the time index's range.
        let window = match (since_ms, until_ms) {
            (Some(_), Some(_)) => "AND at_ms >= $2 AND at_ms < $3",
            (Some(_), None) => "AND at_ms >= $2",
            (None, Some(_)) => "AND at_ms < $2",
            (None, None) => "",
        };
        let sql = raw_counts(self.dialect(), &g.raw_key, window) + &summary_order_limit(limit);
        macro_rules! scan {
            ($conn:expr) => {{
                let mut q = sqlx::query_as::<_, SummaryRow>(&sql).bind(tenant);
                if let Some(v) = since_ms {
                    q = q.bind(v);
                }
                if let Some(v) = until_ms {
                    q = q.bind(v);
                }
                q.fetch_all($conn).await.map_err(read_error)?
            }};
        }
        Ok(match &self.db {
            Db::Sqlite { read, .. } => {
                let mut c = SqliteRead::acquire(read, self.read_budget).await?;
                let rows = scan!(c.conn());
                c.done().await?;
                rows
            }
            Db::Postgres(p) => {
                let mut tx = pg_read(p, self.read_budget).await?;
                let rows = scan!(&mut *tx);
                tx.commit().await?;
                rows
            }
        })
    }

    /// One step of the rollup pass for `tenant`: counts the next chunk of at
    /// most `max_rows` rows of its chain into the rollup (fewer when they
    /// would make more than `max_cells` rollup rows) and returns how many
    /// rows of the chain that covered (0 when its rollup was up to date, or
    /// when another instance kept moving it first).
    pub async fn rollup_pass(&self, tenant: &str, max_rows: i64) -> StoreResult<i64> {
        for _ in 0..MAX_LOST {
            match self.rollup_step(tenant, max_rows).await? {
                Step::UpToDate => return Ok(0),
                Step::Counted { rows, .. } => return Ok(rows),
                Step::Lost => {}
            }
        }
        Ok(0)
    }

    /// Brings the rollup of every tenant whose chain head is past its
    /// `through_seq` up to that head (as read at the start, so a busy tenant
    /// cannot keep the pass going forever), in chunks of `max_rows`. Returns
    /// the rows counted. A failing tenant does not stop the others; the first
    /// error is returned after them.
    ///
    /// On PostgreSQL one instance at a time runs a round: it holds
    /// `ROLLUP_ROUND_LOCK` in a transaction of its own for the round, and an
    /// instance that cannot take it returns 0 at once (the other is counting
    /// the same rows; its next round catches up whatever is left). Without
    /// this, instances that started their rounds together read every chunk
    /// each and all but one lost it to the compare-and-set: the rollup's reads
    /// (most of its cost, and on the database every instance writes to)
    /// multiplied by the number of instances. The lock goes with the
    /// transaction, so an instance that stops or loses its connection
    /// mid-round releases it.
    pub async fn rollup_all(&self, max_rows: i64) -> StoreResult<i64> {
        let round = match &self.db {
            Db::Postgres(p) => {
                let mut tx = p.begin_write().await?;
                let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(ROLLUP_ROUND_LOCK)
                    .fetch_one(&mut *tx)
                    .await?;
                if !mine {
                    return Ok(0);
                }
                Some(tx)
            }
            Db::Sqlite { .. } => None,
        };
        let behind: Vec<(String, i64)> = with_pool!(self, p => sqlx::query_as(
            "SELECT h.tenant, h.seq FROM audit_heads h \
             LEFT JOIN audit_rollup_state s ON s.tenant = h.tenant \
             WHERE h.seq > COALESCE(s.through_seq, 0) ORDER BY h.tenant"
        ).fetch_all(p).await)?;
        let mut total = 0;
        let mut first_error = None;
        for (tenant, head) in behind {
            match self.rollup_through(&tenant, head, max_rows).await {
                Ok(n) => total += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(tx) = round {
            // Ends the round: the lock goes with the transaction. A failed
            // rollback closes the connection, which releases it as well, and
            // the round's counts are committed already: nothing to report.
            let _ = tx.rollback().await;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Passes over `tenant` until its rollup has counted through `head`. The
    /// chunk size adapts: the size that fit when a chunk was cut short, then
    /// growing back towards `max_rows` (so a chunk is rarely read twice).
    async fn rollup_through(&self, tenant: &str, head: i64, max_rows: i64) -> StoreResult<i64> {
        let (mut total, mut lost, mut size) = (0, 0, max_rows);
        loop {
            match self.rollup_step(tenant, size).await? {
                Step::UpToDate => return Ok(total),
                Step::Counted { rows, through, cut } => {
                    total += rows;
                    size = if cut {
                        rows.max(1)
                    } else {
                        (size + size / 4 + 1).min(max_rows)
                    };
                    if through >= head {
                        return Ok(total);
                    }
                }
                Step::Lost => {
                    lost += 1;
                    if lost >= MAX_LOST {
                        return Ok(total);
                    }
                }
            }
        }
    }

    /// Reads the next chunk's deltas on a read connection, then writes them
    /// in one short transaction that first moves `through_seq` with a
    /// compare-and-set (PostgreSQL: the row lock queues a second instance,
    /// which then finds the value moved; SQLite: the one writer). A lost
    /// compare-and-set drops the chunk: no count is ever added twice.
    async fn rollup_step(&self, tenant: &str, max_rows: i64) -> StoreResult<Step> {
        let (through, head): (i64, i64) = with_pool!(self, p => sqlx::query_as(
            "SELECT COALESCE((SELECT through_seq FROM audit_rollup_state WHERE tenant = $1), 0), \
             COALESCE((SELECT seq FROM audit_heads WHERE tenant = $1), 0)"
        ).bind(tenant).fetch_one(p).await)?;
        if head <= through {
            return Ok(Step::UpToDate);
        }
        // Every row up to the head read above has committed (a head moves in
        // the transaction that writes its rows). Skip a gap a prune left.
        let first: Option<i64> = with_pool!(self, p => sqlx::query_scalar(
            "SELECT MIN(seq) FROM audit_events WHERE tenant = $1 AND seq > $2"
        ).bind(tenant).bind(through).fetch_one(p).await)?;
        let start = first.map_or(head, |f| (f - 1).clamp(through, head));
        let mut upto = head.min(start.saturating_add(max_rows.max(1)));
        let mut cut = false;
        let sql = deltas_sql(self.dialect());
        let cells = loop {
            if upto <= start {
                break Vec::new();
            }
            let deltas: Vec<Delta> = match &self.db {
                // The chunk's read fills the connection's page cache and its
                // temporary store (the materialized chunk, four sorts); give
                // that memory back before the connection returns to the pool,
                // or after a pass over a backlog every read connection holds
                // it for good (an idle broker: 57 MiB instead of 42-44 MiB,
                // docs/performance.md).
                Db::Sqlite { read, .. } => {
                    let mut c = read.acquire().await?;
                    let d = sqlx::query_as(&sql)
                        .bind(tenant)
                        .bind(start)
                        .bind(upto)
                        .fetch_all(&mut *c)
                        .await?;
                    sqlx::query("PRAGMA shrink_memory").execute(&mut *c).await?;
                    d
                }
                Db::Postgres(p) => {
                    sqlx::query_as(&sql)
                        .bind(tenant)
                        .bind(start)
                        .bind(upto)
                        .fetch_all(p)
                        .await?
                }
            };
            let cells = fold(deltas);
            let rows = upto - start;
            if cells.len() <= max_cells(self.dialect()) || rows == 1 {
                break cells;
            }
            // Too many rollup rows for one short transaction: fewer chain
            // rows, in proportion (a row adds at most 28 rollup rows).
            let fit =
                (rows as f64 * max_cells(self.dialect()) as f64 / cells.len() as f64 * 0.8) as i64;
            upto = start + fit.clamp(1, rows - 1);
            cut = true;
        };
        if !self.rollup_commit(tenant, through, upto, &cells).await? {
            return Ok(Step::Lost);
        }
        Ok(Step::Counted {
            rows: upto - start,
            through: upto,
            cut,
        })
    }

    /// Adds `cells` to the rollup and moves `through_seq` from `from` to
    /// `to`, in one transaction; `false` (and nothing written) when the
    /// state was no longer `from`.
    async fn rollup_commit(
        &self,
        tenant: &str,
        from: i64,
        to: i64,
        cells: &[(Cell, i64, i64)],
    ) -> StoreResult<bool> {
        // Moves `through_seq` from `from` to `to` inside `$tx`, or rolls
        // back and returns `false` when it was no longer `from`.
        macro_rules! claim {
            ($tx:ident) => {{
                sqlx::query(
                    "INSERT INTO audit_rollup_state (tenant, through_seq) VALUES ($1, 0) \
                     ON CONFLICT (tenant) DO NOTHING",
                )
                .bind(tenant)
                .execute(&mut *$tx)
                .await?;
                let moved = sqlx::query(
                    "UPDATE audit_rollup_state SET through_seq = $2 \
                     WHERE tenant = $1 AND through_seq = $3",
                )
                .bind(tenant)
                .bind(to)
                .bind(from)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
                if moved != 1 {
                    $tx.rollback().await?;
                    return Ok(false);
                }
            }};
        }
        const COLUMNS: &str =
            "INSERT INTO audit_rollup (tenant, dim, level, bucket, has_key, key, issued, refused) ";
        const ADD: &str = " ON CONFLICT (tenant, dim, level, bucket, has_key, key) DO UPDATE SET \
             issued = audit_rollup.issued + excluded.issued, \
             refused = audit_rollup.refused + excluded.refused";
        match &self.db {
            Db::Sqlite { write, .. } => {
                let mut tx = write.begin_write().await?;
                claim!(tx);
                for batch in cells.chunks(UPSERT_ROWS) {
                    let mut qb = QueryBuilder::new(COLUMNS);
                    qb.push_values(batch, |mut b, (c, issued, refused)| {
                        b.push_bind(tenant)
                            .push_bind(c.dim.as_str())
                            .push_bind(c.level)
                            .push_bind(c.bucket)
                            .push_bind(c.has_key)
                            .push_bind(c.key.as_str())
                            .push_bind(*issued)
                            .push_bind(*refused);
                    });
                    qb.push(ADD);
                    // A chunk's last statement has a size of its own (the
                    // rest of its cells): prepared once and not kept, or the
                    // writer's statement cache would fill with one per size.
                    qb.build()
                        .persistent(batch.len() == UPSERT_ROWS)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            Db::Postgres(p) => {
                // One statement over arrays: PostgreSQL plans a long VALUES
                // list slowly, and arrays have no bind limit.
                let mut tx = p.begin_write().await?;
                claim!(tx);
                let sql = format!(
                    "{COLUMNS} SELECT $1, * FROM UNNEST($2::text[], $3::smallint[], $4::bigint[], \
                     $5::smallint[], $6::text[], $7::bigint[], $8::bigint[]){ADD}"
                );
                sqlx::query(&sql)
                    .bind(tenant)
                    .bind(cells.iter().map(|c| c.0.dim.as_str()).collect::<Vec<_>>())
                    .bind(cells.iter().map(|c| c.0.level).collect::<Vec<_>>())
                    .bind(cells.iter().map(|c| c.0.bucket).collect::<Vec<_>>())
                    .bind(cells.iter().map(|c| c.0.has_key).collect::<Vec<_>>())
                    .bind(cells.iter().map(|c| c.0.key.as_str()).collect::<Vec<_>>())
                    .bind(cells.iter().map(|c| c.1).collect::<Vec<_>>())
                    .bind(cells.iter().map(|c| c.2).collect::<Vec<_>>())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(true)
    }

    /// Rows of a tenant's rollup and how far it has counted (for the bench
    /// and the operations docs' sizing).
    pub async fn rollup_size(&self, tenant: &str) -> StoreResult<(i64, i64)> {
        Ok(with_pool!(self, p => sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM audit_rollup WHERE tenant = $1), \
             COALESCE((SELECT through_seq FROM audit_rollup_state WHERE tenant = $1), 0)"
        ).bind(tenant).fetch_one(p).await)?)
    }
}

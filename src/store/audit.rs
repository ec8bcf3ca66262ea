//! Audit rows: the group-commit append, the filtered keyset query and the
//! ordered scan that `audit verify` streams.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use sqlx::QueryBuilder;

use super::{Db, Store, StoreError, StoreResult, with_pool};
pub use crate::audit::AuditRow;
use crate::audit::{COLUMNS, chain};

/// Moves a tenant's chain head from `old_seq` to `(new_seq, new_hash)` inside
/// a transaction; `HeadMoved` when another writer moved it first. Heads go
/// first in every audit transaction: a concurrent writer blocks on the row
/// lock (PostgreSQL) and then sees the move, instead of colliding on (tenant, seq).
macro_rules! advance_head {
    ($tx:ident, $tenant:expr, $old_seq:expr, $new_seq:expr, $new_hash:expr) => {{
        let n = if $old_seq == 0 {
            sqlx::query("INSERT INTO audit_heads (tenant, seq, hash) VALUES ($1, $2, $3) ON CONFLICT (tenant) DO NOTHING")
                .bind($tenant).bind($new_seq).bind($new_hash).execute(&mut *$tx).await?.rows_affected()
        } else {
            sqlx::query("UPDATE audit_heads SET seq = $2, hash = $3 WHERE tenant = $1 AND seq = $4")
                .bind($tenant).bind($new_seq).bind($new_hash).bind($old_seq).execute(&mut *$tx).await?.rows_affected()
        };
        if n != 1 {
            return Err(StoreError::HeadMoved);
        }
    }};
}

/// Inserts sealed rows inside a transaction (one multi-row statement).
macro_rules! insert_rows {
    ($tx:ident, $rows:expr) => {{
        let mut qb = QueryBuilder::new(format!("INSERT INTO audit_events ({COLUMNS}) "));
        qb.push_values($rows, |mut b, r: &AuditRow| {
            b.push_bind(&r.audit_id)
                .push_bind(&r.tenant)
                .push_bind(r.seq)
                .push_bind(r.at_ms)
                .push_bind(&r.kind)
                .push_bind(&r.outcome)
                .push_bind(&r.code)
                .push_bind(&r.actor)
                .push_bind(&r.key_id)
                .push_bind(&r.idp)
                .push_bind(&r.user_id)
                .push_bind(&r.user_name)
                .push_bind(&r.user_groups)
                .push_bind(&r.session_id)
                .push_bind(&r.credential)
                .push_bind(&r.requested_role)
                .push_bind(r.requested_expire_time)
                .push_bind(&r.granted_role)
                .push_bind(r.granted_expire_time)
                .push_bind(&r.rule)
                .push_bind(r.policy_version)
                .push_bind(&r.token_id)
                .push_bind(&r.token_sha256)
                .push_bind(&r.client_addr)
                .push_bind(&r.user_agent)
                .push_bind(&r.request_id)
                .push_bind(&r.detail)
                .push_bind(&r.prev_hash)
                .push_bind(&r.hash);
        });
        qb.build().execute(&mut *$tx).await.map_err(|e| {
            if $crate::store::audit::is_seq_collision(&e) {
                StoreError::HeadMoved
            } else {
                StoreError::Db(e)
            }
        })?;
    }};
}

/// Seals one row after its tenant's current head and writes it, inside the
/// caller's transaction: for changes that must be recorded atomically with
/// their audit row (keys, policy versions, tenants). Run the change's own
/// statement first, so SQLite's write lock is held before the head is read.
macro_rules! append_in_tx {
    ($tx:ident, $row:expr) => {{
        let row: &mut AuditRow = $row;
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE tenant = $1")
                .bind(row.tenant.clone())
                .fetch_optional(&mut *$tx)
                .await?;
        let (old_seq, old_hash) = head.unwrap_or_else(|| (0, chain::GENESIS.to_owned()));
        let (new_seq, new_hash) = chain::seal(row, old_seq, &old_hash);
        $crate::store::audit::advance_head!($tx, row.tenant.clone(), old_seq, new_seq, new_hash);
        $crate::store::audit::insert_rows!($tx, std::iter::once(&*row));
    }};
}
pub(crate) use {advance_head, append_in_tx, insert_rows};

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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct SummaryRow {
    pub key: Option<String>,
    pub issued: i64,
    pub refused: i64,
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
    /// Keyset cursor: only rows with `seq` below this.
    pub before_seq: Option<i64>,
    pub limit: i64,
}

const MAX_CAS_RETRIES: usize = 8;

/// A chain head: (seq, hash).
type Head = (i64, String);
/// Per tenant: the head before a batch and after it.
type HeadMoves = HashMap<String, (Head, Head)>;

impl Store {
    /// Seals `rows` into their tenants' chains and commits them in one
    /// transaction. `heads` is the caller's cache of chain heads; it is refreshed
    /// from the database when another writer (a second instance, the CLI) moved a
    /// head, and the batch is then resealed and retried.
    pub async fn append_audit(
        &self,
        rows: &mut [AuditRow],
        heads: &mut HashMap<String, (i64, String)>,
    ) -> StoreResult<()> {
        for _ in 0..MAX_CAS_RETRIES {
            let missing: Vec<String> = {
                let mut m: Vec<String> = rows
                    .iter()
                    .filter(|r| !heads.contains_key(&r.tenant))
                    .map(|r| r.tenant.clone())
                    .collect();
                m.sort();
                m.dedup();
                m
            };
            for t in missing {
                let h = self.audit_head(&t).await?;
                heads.insert(
                    t,
                    h.map(|h| (h.seq, h.hash))
                        .unwrap_or((0, chain::GENESIS.to_owned())),
                );
            }
            // Seal in order; remember each tenant's old and new head.
            let mut moves: HeadMoves = HashMap::new();
            for r in rows.iter_mut() {
                let cur = heads
                    .get(&r.tenant)
                    .cloned()
                    .unwrap_or((0, chain::GENESIS.to_owned()));
                let new = chain::seal(r, cur.0, &cur.1);
                moves
                    .entry(r.tenant.clone())
                    .and_modify(|m| m.1 = new.clone())
                    .or_insert((cur, new.clone()));
                heads.insert(r.tenant.clone(), new);
            }
            match self.commit_sealed(rows, &moves).await {
                Ok(()) => return Ok(()),
                Err(StoreError::HeadMoved) => {
                    // Someone else advanced a head: forget ours and reseal.
                    for t in moves.keys() {
                        heads.remove(t);
                    }
                }
                Err(e) => {
                    for t in moves.keys() {
                        heads.remove(t);
                    }
                    return Err(e);
                }
            }
        }
        Err(StoreError::Conflict(
            "audit chain head kept moving; giving up".into(),
        ))
    }

    async fn commit_sealed(&self, rows: &[AuditRow], moves: &HeadMoves) -> StoreResult<()> {
        with_pool!(write self, p => {
            let mut tx = p.begin().await?;
            for (tenant, ((old_seq, _), (new_seq, new_hash))) in moves {
                advance_head!(tx, tenant, *old_seq, new_seq, new_hash);
            }
            insert_rows!(tx, rows.iter());
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

    /// Every tenant's head (for `audit checkpoint` / `audit verify` of all tenants).
    pub async fn audit_heads(&self) -> StoreResult<Vec<HeadRow>> {
        Ok(with_pool!(self, p => sqlx::query_as::<_, HeadRow>(
            "SELECT tenant, seq, hash FROM audit_heads ORDER BY tenant"
        ).fetch_all(p).await)?)
    }

    /// Rows matching `f`, newest first, at most `f.limit`.
    pub async fn query_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRow>> {
        macro_rules! build {
            ($qb:ident) => {{
                $qb.push(format!(
                    "SELECT {COLUMNS} FROM audit_events WHERE tenant = "
                ));
                $qb.push_bind(f.tenant.clone());
                let text = [
                    ("kind", &f.kind),
                    ("granted_role", &f.role),
                    ("outcome", &f.outcome),
                    ("code", &f.code),
                    ("user_id", &f.user),
                    ("rule", &f.rule),
                    ("key_id", &f.key_id),
                    ("token_id", &f.token_id),
                    ("token_sha256", &f.token_sha256),
                ];
                for (col, v) in text {
                    if let Some(v) = v {
                        $qb.push(format!(" AND {col} = ")).push_bind(v.clone());
                    }
                }
                if let Some(v) = &f.session_id {
                    $qb.push(" AND session_id IN (")
                        .push_bind(v.clone())
                        .push(", ");
                    $qb.push_bind(f.session_id_as_given.clone().unwrap_or_else(|| v.clone()))
                        .push(")");
                }
                if let Some(v) = f.policy_version {
                    $qb.push(" AND policy_version = ").push_bind(v);
                }
                if let Some(v) = f.since_ms {
                    $qb.push(" AND at_ms >= ").push_bind(v);
                }
                if let Some(v) = f.until_ms {
                    $qb.push(" AND at_ms < ").push_bind(v);
                }
                if let Some(v) = f.before_seq {
                    $qb.push(" AND seq < ").push_bind(v);
                }
                $qb.push(" ORDER BY seq DESC LIMIT ").push_bind(f.limit);
            }};
        }
        Ok(match &self.db {
            Db::Sqlite { read, .. } => {
                let mut qb = QueryBuilder::<sqlx::Sqlite>::new("");
                build!(qb);
                qb.build_query_as::<AuditRow>().fetch_all(read).await?
            }
            Db::Postgres(p) => {
                let mut qb = QueryBuilder::<sqlx::Postgres>::new("");
                build!(qb);
                qb.build_query_as::<AuditRow>().fetch_all(p).await?
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
        with_pool!(self, p => {
            let mut s = sqlx::query_as::<_, AuditRow>(&sql).bind(tenant).bind(after_seq).fetch(p);
            while let Some(row) = s.try_next().await? {
                if !f(row) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Streams a tenant's recorded token requests (issued and refused) with
    /// `since_ms <= at_ms < until_ms`, in time order, into `f`: only the
    /// columns `policy replay` needs, so a million rows read quickly.
    pub async fn scan_requests<F>(
        &self,
        tenant: &str,
        since_ms: i64,
        until_ms: i64,
        mut f: F,
    ) -> StoreResult<()>
    where
        F: FnMut(RequestRow),
    {
        let sql = "SELECT audit_id, at_ms, outcome, code, idp, user_id, user_groups, session_id, \
             requested_role, requested_expire_time, granted_role, granted_expire_time, rule, detail \
             FROM audit_events WHERE tenant = $1 AND at_ms >= $2 AND at_ms < $3 \
             AND kind IN ('token_issued', 'token_refused') ORDER BY at_ms, seq";
        with_pool!(self, p => {
            let mut s = sqlx::query_as::<_, RequestRow>(sql)
                .bind(tenant).bind(since_ms).bind(until_ms).fetch(p);
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
            let mut tx = p.begin().await?;
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
            tx.commit().await?;
            Ok(Some(row))
        })
    }

    /// Counts of issued and refused tokens grouped by `by` (`role`, `user`,
    /// `session`, `rule` or `day`), for a tenant and time range.
    pub async fn audit_summary(
        &self,
        tenant: &str,
        by: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> StoreResult<Vec<SummaryRow>> {
        let key = match by {
            "role" => "COALESCE(granted_role, requested_role)",
            "user" => "user_id",
            "session" => "session_id",
            "rule" => "rule",
            "day" => match self.dialect() {
                super::Dialect::Sqlite => "strftime('%Y-%m-%d', at_ms / 1000, 'unixepoch')",
                super::Dialect::Postgres => {
                    "to_char(to_timestamp(at_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
                }
            },
            other => {
                return Err(StoreError::Invalid(format!(
                    "cannot group by {other:?}: use role, user, session, rule or day"
                )));
            }
        };
        let sql = format!(
            "SELECT {key} AS key, \
             SUM(CASE WHEN outcome = 'issued' THEN 1 ELSE 0 END) AS issued, \
             SUM(CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END) AS refused \
             FROM audit_events WHERE tenant = $1 AND kind IN ('token_issued', 'token_refused') \
             AND at_ms >= $2 AND at_ms < $3 GROUP BY {key} ORDER BY issued DESC, refused DESC, key"
        );
        Ok(with_pool!(self, p => sqlx::query_as::<_, SummaryRow>(&sql)
            .bind(tenant).bind(since_ms.unwrap_or(i64::MIN)).bind(until_ms.unwrap_or(i64::MAX))
            .fetch_all(p).await)?)
    }
}

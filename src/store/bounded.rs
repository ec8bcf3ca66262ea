//! Reads with a time limit (`Store::with_read_budget`): the audit reads a
//! tenant's auditors can shape (`query_audit`, summaries). Filters that never
//! match together walk an index range to its end; on a year of a busy tenant
//! that is minutes of a pooled connection. A read past its budget is stopped
//! by the database itself and fails with `StoreError::ReadTimeout`.
//!
//! - PostgreSQL: the read runs in a transaction with `SET LOCAL
//!   statement_timeout`; the server cancels the statement (SQLSTATE 57014),
//!   also when the client has gone, and the setting ends with the transaction.
//! - SQLite: a progress handler on the connection interrupts the statement at
//!   the deadline (`SQLITE_INTERRUPT`). It is removed after the read; a read
//!   dropped before that (its client went away) closes the connection instead
//!   of returning it to the pool with the handler still armed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use super::StoreError;

/// SQLite virtual-machine steps between two looks at the timer's flag.
const STEPS_PER_CHECK: i32 = 10_000;

/// Whether `e` is a read stopped by its budget (either database).
pub(crate) fn is_timeout(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            // 57014: query_canceled (statement_timeout); 9: SQLITE_INTERRUPT.
            matches!(db.code().as_deref(), Some("57014") | Some("9"))
        }
        _ => false,
    }
}

/// `e` as a store error: `ReadTimeout` when the budget stopped it.
pub(crate) fn read_error(e: sqlx::Error) -> StoreError {
    if is_timeout(&e) {
        StoreError::ReadTimeout
    } else {
        StoreError::Db(e)
    }
}

/// An SQLite read connection, armed with a deadline when there is a budget.
/// `done` gives it back to the pool clean; dropped armed, it is closed.
pub(crate) struct SqliteRead {
    conn: PoolConnection<Sqlite>,
    /// The timer that raises the handler's flag at the deadline; `Some`
    /// while the handler is set.
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl SqliteRead {
    pub(crate) async fn acquire(
        pool: &SqlitePool,
        budget: Option<Duration>,
    ) -> Result<SqliteRead, sqlx::Error> {
        let mut read = SqliteRead {
            conn: pool.acquire().await?,
            timer: None,
        };
        if let Some(budget) = budget {
            let expired = Arc::new(AtomicBool::new(false));
            let raise = Arc::clone(&expired);
            read.timer = Some(tokio::spawn(async move {
                tokio::time::sleep(budget).await;
                raise.store(true, Ordering::Relaxed);
            }));
            read.conn
                .lock_handle()
                .await?
                .set_progress_handler(STEPS_PER_CHECK, move || !expired.load(Ordering::Relaxed));
        }
        Ok(read)
    }

    pub(crate) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }

    /// Removes the handler; the connection then goes back to the pool.
    pub(crate) async fn done(mut self) -> Result<(), sqlx::Error> {
        if self.timer.is_some() {
            // On failure `self` drops armed, and is closed.
            self.conn.lock_handle().await?.remove_progress_handler();
            if let Some(t) = self.timer.take() {
                t.abort();
            }
        }
        Ok(())
    }
}

impl Drop for SqliteRead {
    fn drop(&mut self) {
        // Still armed (the read was dropped, failed, or could not disarm):
        // never back into the pool, where the next read would be stopped.
        if let Some(t) = self.timer.take() {
            t.abort();
            self.conn.close_on_drop();
        }
    }
}

/// A read-only PostgreSQL transaction on one snapshot (`REPEATABLE READ`),
/// whose statements are cancelled after `budget` when there is one (`SET
/// LOCAL`: until it ends; a dropped transaction is rolled back).
pub(crate) async fn pg_read(
    pool: &PgPool,
    budget: Option<Duration>,
) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    if let Some(budget) = budget {
        // An integer of milliseconds, formatted: SET takes no bind parameters.
        let ms = budget.as_millis().clamp(1, i32::MAX as u128);
        sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

//! `audit verify`: recompute a tenant's hash chain from its start (genesis or
//! the recorded prune point) to its stored head, and report the first fault.
//!
//! Two passes share one `Verifier`:
//! - the fast pass reads a long chain as two ranges at once, each on its own
//!   connection and hashed on its own thread, and joins them where the second
//!   range's first `prev_hash` is the first range's last hash. Each range is
//!   read the fastest way its store allows, and every row is hashed with the
//!   Rust canonical form, the authority itself:
//!   - PostgreSQL streams it as binary `COPY` (`Store::copy_chain`), the
//!     columns as stored, decoded in place (`CopyDecoder`);
//!   - an SQLite file is read in place by a read-only connection of its own
//!     (`Store::read_chain_from_file`), each column lent from SQLite's buffers;
//!   - an SQLite database in memory has no such reader: the Rust pass reads it;
//! - at the first row where anything does not hold (a hash, a link, a
//!   sequence number, a value of the wrong type, or the read itself failing),
//!   verification goes on from the last good row with the Rust pass over rows
//!   decoded by sqlx, page by page, which names the fault. A fault is always
//!   named by the Rust pass.

use serde::Serialize;

use super::chain::{self, ChainFault, Verifier};
use super::schema::RowRef;
use crate::store::{ChainPage, CopyDecoder, Dialect, Store, StoreError};

/// Rows per page of the Rust pass (and the shortest chain the fast pass
/// splits in two is four pages).
const PAGE: i64 = 4096;

/// Why verification could not run (a fault in the chain is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the verification thread failed")]
    Thread,
}

/// One tenant's verification result.
#[derive(Debug, Clone, Serialize)]
pub struct TenantVerify {
    pub tenant: String,
    pub ok: bool,
    pub rows: u64,
    /// How many of `rows` the fast pass (the streamed or in-place read)
    /// checked; the rest were checked by the Rust pass (see the module
    /// documentation).
    #[serde(skip)]
    pub rows_fast: u64,
    pub head_seq: i64,
    pub head_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<ChainFault>,
}

/// A stored checkpoint: `{"tenant": …, "count": …, "hash": …}` (or a list of them).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub tenant: String,
    pub count: i64,
    pub hash: String,
}

/// Verifies one tenant's chain from its start against its stored head and an
/// optional external checkpoint.
pub async fn verify_tenant(
    store: &Store,
    tenant: &str,
    checkpoint: Option<&Checkpoint>,
) -> Result<TenantVerify, VerifyError> {
    verify_tenant_paged(store, tenant, checkpoint, PAGE).await
}

/// `verify_tenant` with pages of `page` rows (tests use small pages to
/// exercise the two-range read and the joins on short chains).
pub async fn verify_tenant_paged(
    store: &Store,
    tenant: &str,
    checkpoint: Option<&Checkpoint>,
    page: i64,
) -> Result<TenantVerify, VerifyError> {
    // After a prune the chain starts at the recorded prune point.
    let start = store.last_prune(tenant).await?;
    let (from_seq, from_hash) = start
        .map(|p| (p.through_seq, p.through_hash))
        .unwrap_or((0, chain::GENESIS.to_owned()));
    // Read the head first: rows committed after it (a running broker) are left
    // for the next verification instead of racing with it.
    let head = store.audit_head(tenant).await?;
    let head_seq = head.as_ref().map(|h| h.seq).unwrap_or(0);
    let cp_count = checkpoint.map(|c| c.count);
    let start = Progress {
        v: Verifier::new(from_seq, &from_hash),
        seen_at_checkpoint: None,
        entry_hash: None,
    };
    let (progress, complete) = fast_pass(store, tenant, head_seq, cp_count, start, page).await?;
    let rows_fast = progress.v.rows;
    let (progress, mut fault) = if complete {
        (progress, None)
    } else {
        rust_pass(store, tenant, head_seq, cp_count, progress, page).await?
    };
    let Progress {
        v,
        seen_at_checkpoint,
        ..
    } = progress;
    if fault.is_none() {
        let (hs, hh) = head
            .as_ref()
            .map(|h| (h.seq, h.hash.clone()))
            .unwrap_or((0, chain::GENESIS.to_owned()));
        if hs != v.expected_seq - 1 || hh != v.head_hash {
            fault = Some(ChainFault {
                audit_id: String::new(),
                seq: v.expected_seq - 1,
                problem: "head_mismatch",
                message: format!(
                    "the rows end at seq {} but the stored head says seq {hs}: rows at the end were removed (or the head was edited)",
                    v.expected_seq - 1
                ),
            });
        }
    }
    if fault.is_none() {
        fault = outside_rows_fault(store, tenant, from_seq).await?;
    }
    if fault.is_none()
        && let Some(cp) = checkpoint
    {
        fault = checkpoint_fault(
            cp,
            seen_at_checkpoint.as_deref(),
            from_seq,
            v.expected_seq - 1,
        );
    }
    Ok(TenantVerify {
        tenant: tenant.to_owned(),
        ok: fault.is_none(),
        rows: v.rows,
        rows_fast,
        head_seq: v.expected_seq - 1,
        head_hash: v.head_hash,
        fault,
    })
}

/// Rows the chain walk cannot see, though queries and exports list them: rows
/// at or before the chain's start (a `seq` of 0 or below, or at or below the
/// prune point), and rows after the stored head (a head moved back or deleted,
/// so the walk stopped early and left the rest unchecked). The highest row is
/// read before the head: a broker committing meanwhile moves both, and only
/// ever makes the head the larger.
async fn outside_rows_fault(
    store: &Store,
    tenant: &str,
    from_seq: i64,
) -> Result<Option<ChainFault>, VerifyError> {
    let (lowest, highest) = store.audit_seq_bounds(tenant).await?;
    let head_now = store.audit_head(tenant).await?.map(|h| h.seq).unwrap_or(0);
    if let Some(low) = lowest.filter(|s| *s <= from_seq) {
        return Ok(Some(ChainFault {
            audit_id: String::new(),
            seq: low,
            problem: "outside_chain",
            message: format!(
                "a row at seq {low} lies before the chain's start (seq {}): it is listed by queries but is not part of the verified history (inserted)",
                from_seq + 1
            ),
        }));
    }
    if let Some(high) = highest.filter(|s| *s > head_now) {
        return Ok(Some(ChainFault {
            audit_id: String::new(),
            seq: high,
            problem: "head_mismatch",
            message: format!(
                "rows go up to seq {high} but the stored head says seq {head_now}: the head was moved back or deleted, and the rows after it are unchecked"
            ),
        }));
    }
    Ok(None)
}

/// How far verification has got: the verifier after the last good row, and the
/// hash seen at the external checkpoint's row, if passed.
#[derive(Debug, Clone)]
struct Progress {
    v: Verifier,
    seen_at_checkpoint: Option<String>,
    /// For a range after the first: the `prev_hash` its first row claims.
    entry_hash: Option<String>,
}

/// The fast pass. Returns the progress after the last page that held
/// entirely, and whether that is the whole chain up to `head_seq`.
///
/// A long chain is read as two ranges at once, by two connections, each
/// decoded and hashed on its own thread (so both cores work). The second
/// range starts from the `prev_hash` its first row claims; the two join only
/// if that is exactly the hash the first range ended on, at the position it
/// ended on. Otherwise (or at any fault) the Rust pass goes on from the end of
/// the first range's last good page.
async fn fast_pass(
    store: &Store,
    tenant: &str,
    head_seq: i64,
    cp_count: Option<i64>,
    start: Progress,
    page: i64,
) -> Result<(Progress, bool), VerifyError> {
    let from_seq = start.v.expected_seq - 1;
    if head_seq - from_seq < 4 * page {
        return read_range(store, tenant, head_seq, cp_count, start).await;
    }
    let mid = from_seq + (head_seq - from_seq) / 2;
    let second = Progress {
        v: Verifier::new(mid, ""),
        seen_at_checkpoint: None,
        entry_hash: None,
    };
    let (first, second) = tokio::join!(
        read_range(store, tenant, mid, cp_count, start),
        read_range(store, tenant, head_seq, cp_count, second),
    );
    let ((p1, ok1), (p2, ok2)) = (first?, second?);
    let joined = ok1
        && ok2
        && p1.v.expected_seq - 1 == mid
        && p2.entry_hash.as_deref() == Some(p1.v.head_hash.as_str());
    if !joined {
        return Ok((p1, false));
    }
    Ok((
        Progress {
            v: Verifier {
                expected_seq: p2.v.expected_seq,
                head_hash: p2.v.head_hash,
                rows: p1.v.rows + p2.v.rows,
            },
            seen_at_checkpoint: p1.seen_at_checkpoint.or(p2.seen_at_checkpoint),
            entry_hash: p1.entry_hash,
        },
        true,
    ))
}

/// The fast pass over one range, `start` to `upto_seq`, the fastest way this
/// store can read it: the progress after the last good row, and whether that
/// is `upto_seq` (otherwise the Rust pass goes on and names what stopped it).
async fn read_range(
    store: &Store,
    tenant: &str,
    upto_seq: i64,
    cp_count: Option<i64>,
    start: Progress,
) -> Result<(Progress, bool), VerifyError> {
    match store.dialect() {
        Dialect::Postgres => copy_range(store, tenant, upto_seq, cp_count, start).await,
        Dialect::Sqlite if store.is_sqlite_file() => {
            file_range(store, tenant, upto_seq, cp_count, start).await
        }
        // In memory: nothing to read around sqlx; the Rust pass reads it all.
        Dialect::Sqlite => Ok((start, false)),
    }
}

/// The fast pass over one range of an SQLite file: rows read in place on a
/// blocking thread of its own (`Store::read_chain_from_file`) and hashed the
/// Rust way as they come. Same contract as `read_range`.
async fn file_range(
    store: &Store,
    tenant: &str,
    upto_seq: i64,
    cp_count: Option<i64>,
    start: Progress,
) -> Result<(Progress, bool), VerifyError> {
    let (store, tenant) = (store.clone(), tenant.to_owned());
    tokio::task::spawn_blocking(move || {
        let from_seq = start.v.expected_seq - 1;
        let mut p = start;
        let mut buf = Vec::with_capacity(2048);
        let mut held = true;
        let read = store.read_chain_from_file(&tenant, from_seq, upto_seq, |row| {
            held = row.is_ok_and(|row| check_streamed_row(&mut p, &row, cp_count, &mut buf));
            held
        });
        // An error reading the file is not a verdict: the Rust pass reads on.
        let complete = held && matches!(read, Ok(true)) && p.v.expected_seq - 1 == upto_seq;
        (p, complete)
    })
    .await
    .map_err(|_| VerifyError::Thread)
}

/// Bytes of `COPY` data handed to the checker thread at a time.
const COPY_BATCH: usize = 256 * 1024;

/// The fast pass over one range on PostgreSQL: the rows stream as binary
/// `COPY` (no rendering on the server) and are hashed the Rust way on a
/// second thread. Same contract as `read_range`.
async fn copy_range(
    store: &Store,
    tenant: &str,
    upto_seq: i64,
    cp_count: Option<i64>,
    start: Progress,
) -> Result<(Progress, bool), VerifyError> {
    let from_seq = start.v.expected_seq - 1;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let checker = std::thread::spawn(move || {
        let mut p = start;
        let mut decoder = CopyDecoder::new();
        let mut buf = Vec::with_capacity(2048);
        let mut held = true;
        for chunk in rx {
            held = decoder.push(&chunk, |row| {
                let Ok(row) = row else { return false };
                check_streamed_row(&mut p, &row, cp_count, &mut buf)
            });
            if !held {
                // Dropping `rx` ends the stream; the Rust pass takes over here.
                return (p, false);
            }
        }
        (p, held && decoder.finish().is_ok())
    });
    let mut batch = Vec::with_capacity(COPY_BATCH + 4096);
    let copied = store
        .copy_chain(tenant, from_seq, upto_seq, |chunk| {
            batch.extend_from_slice(chunk);
            if batch.len() < COPY_BATCH {
                return true;
            }
            let full = std::mem::replace(&mut batch, Vec::with_capacity(COPY_BATCH + 4096));
            tx.send(full).is_ok()
        })
        .await;
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    drop(tx);
    let (p, all_rows_held) = checker.join().map_err(|_| VerifyError::Thread)?;
    let complete = all_rows_held && matches!(copied, Ok(true)) && p.v.expected_seq - 1 == upto_seq;
    Ok((p, complete))
}

/// One streamed row: the second range's entry, then the chain rules.
fn check_streamed_row(
    p: &mut Progress,
    row: &RowRef<'_>,
    cp_count: Option<i64>,
    buf: &mut Vec<u8>,
) -> bool {
    if p.v.rows == 0 && p.v.head_hash.is_empty() {
        // A range after the first starts from what its first row claims,
        // checked where the ranges join.
        p.entry_hash = Some(row.prev_hash.to_owned());
        p.v.head_hash.push_str(row.prev_hash);
    }
    if p.v.push_ref(row, buf).is_err() {
        return false;
    }
    if cp_count == Some(row.seq) {
        p.seen_at_checkpoint = Some(row.hash.to_owned());
    }
    true
}

/// The Rust pass, from `start` to `head_seq`: rows decoded from the driver's
/// buffers and hashed with the Rust canonical form on a second thread, in
/// order, so both cores work. Names the first fault.
async fn rust_pass(
    store: &Store,
    tenant: &str,
    head_seq: i64,
    cp_count: Option<i64>,
    start: Progress,
    page: i64,
) -> Result<(Progress, Option<ChainFault>), VerifyError> {
    let from_seq = start.v.expected_seq - 1;
    let (tx, rx) = std::sync::mpsc::sync_channel::<ChainPage>(2);
    let checker = std::thread::spawn(move || {
        let mut p = start;
        let mut buf = Vec::with_capacity(2048);
        for rows in rx {
            let mut fault = None;
            rows.for_each(|row| {
                let row = match row {
                    Ok(r) => r,
                    Err(e) => {
                        fault = Some(ChainFault {
                            audit_id: String::new(),
                            seq: p.v.expected_seq,
                            problem: "unreadable",
                            message: format!(
                                "a row near seq {} cannot be read: {e}",
                                p.v.expected_seq
                            ),
                        });
                        return false;
                    }
                };
                if let Err(f) = p.v.push_ref(&row, &mut buf) {
                    fault = Some(f);
                    return false;
                }
                if cp_count == Some(row.seq) {
                    p.seen_at_checkpoint = Some(row.hash.to_owned());
                }
                true
            });
            if fault.is_some() {
                // Dropping `rx` ends the scan.
                return (p, fault);
            }
        }
        (p, None)
    });
    let scanned = store
        .scan_chain(tenant, from_seq, head_seq, page, |rows| {
            tx.send(rows).is_ok()
        })
        .await;
    drop(tx);
    let out = checker.join().map_err(|_| VerifyError::Thread)?;
    scanned?;
    Ok(out)
}

/// What a (JSON, unsigned) checkpoint says of a verified chain: `seen` is the
/// hash the chain carries at the checkpoint's row, `from_seq` where the
/// verified part starts (rows before it were pruned), `last_seq` its end.
pub fn checkpoint_fault(
    cp: &Checkpoint,
    seen: Option<&str>,
    from_seq: i64,
    last_seq: i64,
) -> Option<ChainFault> {
    match seen {
        Some(h) if h == cp.hash => None,
        None if cp.count <= from_seq => None, // pruned since the checkpoint was taken
        Some(_) => Some(ChainFault {
            audit_id: String::new(),
            seq: cp.count,
            problem: "modified",
            message: format!(
                "row {} does not carry the checkpoint's hash: the chain was rewritten",
                cp.count
            ),
        }),
        None => Some(ChainFault {
            audit_id: String::new(),
            seq: cp.count,
            problem: "truncated",
            message: format!(
                "the checkpoint names row {} but the chain has only {last_seq} rows: the tail was truncated",
                cp.count
            ),
        }),
    }
}

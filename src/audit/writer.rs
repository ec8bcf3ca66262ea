//! The single audit writer: group commit for the issuance path.
//!
//! Requests hand their row to the writer over a bounded channel and wait for
//! its answer. The writer takes every row waiting at that moment (up to
//! `max_batch`), seals them into their tenants' chains and commits them in one
//! transaction (one fsync for the batch), then answers each request. A request
//! gets its token only after that answer: no committed row, no token.
//!
//! Fail closed, never hang: a full queue is refused at once, a request waits at
//! most `timeout` for its commit, and a failed batch is reported to each of its
//! requests. The writer keeps running and the next batch tries again, so issuing
//! resumes by itself when the store is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::AuditRow;
use crate::store::Store;

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Rows waiting in the queue before new requests are refused.
    pub queue: usize,
    /// Most rows in one transaction.
    pub max_batch: usize,
    /// How long a request waits for its row's commit before it gets 503.
    pub timeout: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue: 8192,
            max_batch: 512,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Why a row could not be recorded (the request must then fail with 503).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditUnavailable {
    #[error("the audit queue is full")]
    QueueFull,
    #[error("the audit store did not commit in time")]
    Timeout,
    #[error("the audit store failed")]
    StoreFailed,
    #[error("the audit writer has stopped")]
    Stopped,
}

struct Pending {
    row: AuditRow,
    done: oneshot::Sender<Result<(), ()>>,
}

/// Health of the audit path, for `/readyz` and metrics.
#[derive(Debug, Default)]
pub struct WriterHealth {
    failing: AtomicBool,
    /// When the batch in progress started (unix ms), 0 when idle.
    busy_since_ms: AtomicI64,
    /// A batch in progress longer than this is a stall (the request timeout).
    stall_after_ms: AtomicI64,
    pub committed_rows: AtomicU64,
    pub committed_batches: AtomicU64,
    pub failed_batches: AtomicU64,
}

impl WriterHealth {
    /// True when the last batch failed and none has succeeded since, or when
    /// the batch in progress has been waiting on the store for longer than a
    /// request may wait (requests are getting 503 then).
    pub fn failing(&self) -> bool {
        let since = self.busy_since_ms.load(Ordering::Relaxed);
        let bound = self.stall_after_ms.load(Ordering::Relaxed);
        self.failing.load(Ordering::Relaxed)
            || (since != 0 && crate::clock::now_unix_ms() - since > bound)
    }
}

/// Handle to the writer task; cheap to clone. Dropping every handle lets the
/// writer drain its queue and stop (see `shutdown`).
#[derive(Clone, Debug)]
pub struct AuditWriter {
    tx: mpsc::Sender<Pending>,
    timeout: Duration,
    pub health: Arc<WriterHealth>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("audit_id", &self.row.audit_id)
            .finish()
    }
}

impl AuditWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(store: Store, cfg: WriterConfig) -> (AuditWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let health = Arc::new(WriterHealth::default());
        health
            .stall_after_ms
            .store(cfg.timeout.as_millis() as i64, Ordering::Relaxed);
        let task = tokio::spawn(run(store, rx, cfg.max_batch.max(1), health.clone()));
        (
            AuditWriter {
                tx,
                timeout: cfg.timeout,
                health,
            },
            task,
        )
    }

    /// Records `row` durably; returns only after its transaction committed.
    pub async fn append(&self, row: AuditRow) -> Result<(), AuditUnavailable> {
        let (done, wait) = oneshot::channel();
        self.tx
            .try_send(Pending { row, done })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AuditUnavailable::QueueFull,
                mpsc::error::TrySendError::Closed(_) => AuditUnavailable::Stopped,
            })?;
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(()))) => Err(AuditUnavailable::StoreFailed),
            Ok(Err(_)) => Err(AuditUnavailable::Stopped),
            Err(_) => Err(AuditUnavailable::Timeout),
        }
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    health: Arc<WriterHealth>,
) {
    let mut heads: HashMap<String, (i64, String)> = HashMap::new();
    let mut waiters: Vec<oneshot::Sender<Result<(), ()>>> = Vec::with_capacity(max_batch);
    let mut rows: Vec<AuditRow> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(p) = next.take() {
            rows.push(p.row);
            waiters.push(p.done);
            if rows.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        // Rows of requests that already timed out are still written: they got no
        // token, and the record errs on the side of more rows, never fewer.
        health
            .busy_since_ms
            .store(crate::clock::now_unix_ms(), Ordering::Relaxed);
        let result = store.append_audit(&mut rows, &mut heads).await;
        health.busy_since_ms.store(0, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                health.failing.store(false, Ordering::Relaxed);
                health.committed_batches.fetch_add(1, Ordering::Relaxed);
                health
                    .committed_rows
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                health.failing.store(true, Ordering::Relaxed);
                health.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "broker::audit", error = ?e.to_string(), rows = rows.len(), "audit batch failed; its requests get 503");
            }
        }
        let ok = result.is_ok();
        for done in waiters.drain(..) {
            let _ = done.send(if ok { Ok(()) } else { Err(()) });
        }
        rows.clear();
    }
}

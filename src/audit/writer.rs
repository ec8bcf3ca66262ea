//! The single audit writer: group commit for the issuance path.
//!
//! Requests hand their row to the writer over a bounded channel and wait for
//! its answer. The writer takes every row waiting at that moment (up to
//! `max_batch`), seals them into their tenants' chains and commits them in one
//! transaction (one fsync for the batch), then answers each request. A request
//! gets its token only after that answer: no committed row, no token. Rows of
//! the batch's tenants that queue while the transaction waits for their heads
//! (another instance on the same PostgreSQL holds them) join that transaction
//! once the heads are held; other tenants' rows keep their order for the next
//! batch.
//!
//! Fail closed, never hang: a full queue is refused at once, a request waits at
//! most `timeout` for its commit, and a failed batch is reported to each of its
//! requests. The writer keeps running and the next batch tries again, so issuing
//! resumes by itself when the store is back.
//!
//! One bad row fails only itself: rows are checked before batching (no NUL,
//! bounded lengths: what the databases refuse), and when the database still
//! refuses a batch because of a row's content, the batch is split in halves and
//! retried until the refused rows stand alone; only their requests fail. Only a
//! failure of the store itself (not a row's refusal) marks the writer failing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::AuditRow;
use crate::clock::Clock;
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
    /// The application's clock (stall detection, commit latency).
    pub clock: Clock,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue: 8192,
            max_batch: 512,
            timeout: Duration::from_secs(2),
            clock: Clock::system(),
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
    /// This row (only this one) cannot be stored: it failed the writer's checks
    /// or the database refused it.
    #[error("the audit store refused this record")]
    Refused,
}

type Answer = Result<(), AuditUnavailable>;

struct Pending {
    row: AuditRow,
    done: oneshot::Sender<Answer>,
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
    /// Rows refused on their own (writer checks or the database), each failing
    /// only its own request.
    pub refused_rows: AtomicU64,
    /// Commit latency and batch sizes (histograms served at `/metrics`).
    pub metrics: crate::metrics::AuditMetrics,
    clock: Clock,
}

impl WriterHealth {
    /// Records a finished batch: idle again, commit latency, the part of it
    /// spent before the heads were held (`head_wait`, when known) and size
    /// (all three only when the store did not fail, so the wait stays a part
    /// of the commit duration), failing or not, and the counters.
    fn record(
        &self,
        outcome: &BatchOutcome,
        rows: usize,
        took: Duration,
        head_wait: Option<Duration>,
    ) {
        self.busy_since_ms.store(0, Ordering::Relaxed);
        if !outcome.store_failed {
            self.metrics.commit_seconds.observe(took.as_secs_f64());
            if let Some(w) = head_wait {
                self.metrics.head_wait_seconds.observe(w.as_secs_f64());
            }
            self.metrics.batch_rows.observe(rows as f64);
        }
        // Failing reflects the store, never one row's content.
        self.failing.store(outcome.store_failed, Ordering::Relaxed);
        if outcome.store_failed {
            self.failed_batches.fetch_add(1, Ordering::Relaxed);
        }
        self.committed_batches
            .fetch_add(outcome.transactions as u64, Ordering::Relaxed);
        self.committed_rows
            .fetch_add(outcome.committed as u64, Ordering::Relaxed);
        let refused = outcome
            .answers
            .iter()
            .filter(|a| matches!(a, Err(AuditUnavailable::Refused)))
            .count();
        self.refused_rows
            .fetch_add(refused as u64, Ordering::Relaxed);
    }

    /// True when the last batch failed and none has succeeded since, or when
    /// the batch in progress has been waiting on the store for longer than a
    /// request may wait (requests are getting 503 then).
    pub fn failing(&self) -> bool {
        let since = self.busy_since_ms.load(Ordering::Relaxed);
        let bound = self.stall_after_ms.load(Ordering::Relaxed);
        self.failing.load(Ordering::Relaxed)
            || (since != 0 && self.clock.now_unix_ms() - since > bound)
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
        let health = Arc::new(WriterHealth {
            clock: cfg.clock.clone(),
            ..WriterHealth::default()
        });
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

    /// Rows waiting in the queue for the writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
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
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(AuditUnavailable::Stopped),
            Err(_) => Err(AuditUnavailable::Timeout),
        }
    }
}

/// Longest value of a column that is indexed (PostgreSQL refuses index rows
/// over ~2.7 kB), of any other short column, and of `detail`.
const MAX_INDEXED: usize = 1024;
const MAX_TEXT: usize = 8 * 1024;
const MAX_DETAIL: usize = 256 * 1024;

/// Why the databases would refuse `row`, checked before it joins a batch:
/// PostgreSQL stores no NUL in text, and bounds index rows.
pub fn row_problem(row: &AuditRow) -> Option<String> {
    let indexed = [
        ("audit_id", Some(&row.audit_id)),
        ("tenant", Some(&row.tenant)),
        ("session_id", row.session_id.as_ref()),
        ("user_id", row.user_id.as_ref()),
        ("token_id", row.token_id.as_ref()),
        ("granted_role", row.granted_role.as_ref()),
    ];
    let other = [
        ("kind", Some(&row.kind)),
        ("outcome", Some(&row.outcome)),
        ("code", row.code.as_ref()),
        ("actor", Some(&row.actor)),
        ("key_id", row.key_id.as_ref()),
        ("idp", row.idp.as_ref()),
        ("user_name", row.user_name.as_ref()),
        ("user_groups", row.user_groups.as_ref()),
        ("credential", row.credential.as_ref()),
        ("requested_role", row.requested_role.as_ref()),
        ("rule", row.rule.as_ref()),
        ("token_sha256", row.token_sha256.as_ref()),
        ("client_addr", row.client_addr.as_ref()),
        ("user_agent", row.user_agent.as_ref()),
        ("request_id", row.request_id.as_ref()),
    ];
    let limits = indexed
        .iter()
        .map(|(c, v)| (*c, *v, MAX_INDEXED))
        .chain(other.iter().map(|(c, v)| (*c, *v, MAX_TEXT)))
        .chain(std::iter::once(("detail", row.detail.as_ref(), MAX_DETAIL)));
    for (col, v, max) in limits {
        let Some(v) = v else { continue };
        if v.contains('\0') {
            return Some(format!("{col} contains NUL"));
        }
        if v.len() > max {
            return Some(format!("{col} is {} bytes (limit {max})", v.len()));
        }
    }
    None
}

/// What committing one batch came to.
#[derive(Debug)]
pub struct BatchOutcome {
    /// One answer per row, in order.
    pub answers: Vec<Answer>,
    /// Rows committed.
    pub committed: usize,
    /// Transactions that committed.
    pub transactions: usize,
    /// The store itself failed (not just some rows' content).
    pub store_failed: bool,
}

/// Commits `rows` so that rows the database refuses for their content fail
/// alone: the whole batch first; when the database refuses it because of a
/// row, each half on its own, down to single rows. A failure of the store
/// itself fails the rest of the batch at once (no retry storm against a store
/// that is down). Order is kept: the first half commits before the second.
pub async fn commit_isolating(
    store: &Store,
    rows: &mut [AuditRow],
    heads: &mut crate::store::HeadCache,
) -> BatchOutcome {
    let n = rows.len();
    let mut out = BatchOutcome {
        answers: (0..n).map(|_| Err(AuditUnavailable::StoreFailed)).collect(),
        committed: 0,
        transactions: 0,
        store_failed: false,
    };
    // Ranges still to commit, the next one last.
    let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
    todo.push(0..n);
    while let Some(r) = todo.pop() {
        if r.is_empty() {
            continue;
        }
        match super::append(store, &mut rows[r.clone()], heads).await {
            Ok(()) => {
                out.transactions += 1;
                out.committed += r.len();
                for a in &mut out.answers[r] {
                    *a = Ok(());
                }
            }
            Err(e) if e.is_row_refusal() && r.len() > 1 => {
                let mid = r.start + r.len() / 2;
                todo.push(mid..r.end);
                todo.push(r.start..mid);
            }
            Err(e) if e.is_row_refusal() => {
                let row = &rows[r.start];
                tracing::warn!(target: "broker::audit", error = %e, tenant = ?row.tenant, audit_id = %row.audit_id, "the database refused one audit row; only its request fails");
                out.answers[r.start] = Err(AuditUnavailable::Refused);
            }
            Err(e) => {
                tracing::error!(target: "broker::audit", error = %e, rows = r.len() + todo.iter().map(|t| t.len()).sum::<usize>(), "audit store failed; the batch's requests get 503");
                out.store_failed = true;
                break;
            }
        }
    }
    out
}

/// The group commit's attempt at a whole batch: `rows` commit in one
/// transaction, joined by rows of the same tenants that `late` hands over once
/// their heads are held (they are appended to `rows`, their answers to the
/// outcome). When that attempt fails before its commit (a row the database
/// refuses, a head deleted under it), everything it holds goes through
/// `commit_isolating`; when the store fails, every row gets that answer.
pub async fn commit_joining(
    store: &Store,
    rows: &mut Vec<AuditRow>,
    heads: &mut crate::store::HeadCache,
    late: crate::store::LateRows<'_>,
) -> BatchOutcome {
    let mut joined = Vec::new();
    let first = store
        .append_joining(rows, heads, super::chain::seal, Some(late), &mut joined)
        .await;
    rows.append(&mut joined);
    let n = rows.len();
    match first {
        Ok(()) => BatchOutcome {
            answers: (0..n).map(|_| Ok(())).collect(),
            committed: n,
            transactions: 1,
            store_failed: false,
        },
        Err(e) if e.is_row_refusal() || matches!(e, crate::store::StoreError::HeadMoved) => {
            commit_isolating(store, rows, heads).await
        }
        Err(e) => {
            tracing::error!(target: "broker::audit", error = %e, rows = n, "audit store failed; the batch's requests get 503");
            BatchOutcome {
                answers: (0..n).map(|_| Err(AuditUnavailable::StoreFailed)).collect(),
                committed: 0,
                transactions: 0,
                store_failed: true,
            }
        }
    }
}

/// Takes what is waiting in the queue, up to `room` rows: rows of `tenants`
/// join (their requests' answers go to `waiters`), a row the database would
/// refuse is answered at once, and rows of other tenants wait in `carry` for
/// the next batch, in their order.
fn take_late(
    rx: &mut mpsc::Receiver<Pending>,
    tenants: &[String],
    room: usize,
    waiters: &mut Vec<oneshot::Sender<Answer>>,
    carry: &mut std::collections::VecDeque<Pending>,
    health: &WriterHealth,
) -> Vec<AuditRow> {
    let mut out = Vec::new();
    // Looking further than `room` would only grow `carry`.
    for _ in 0..room {
        let Ok(p) = rx.try_recv() else { break };
        // A row whose tenant already has an older row waiting in `carry`
        // waits too, behind it: a tenant's rows commit in queue order. (With
        // `room` above zero the batch drained `carry` first, so this holds
        // already; the check keeps it true if that ever changes.)
        if let Some(why) = row_problem(&p.row) {
            refuse_early(p, &why, health);
        } else if tenants.contains(&p.row.tenant)
            && carry.iter().all(|c| c.row.tenant != p.row.tenant)
        {
            out.push(p.row);
            waiters.push(p.done);
        } else {
            carry.push_back(p);
        }
    }
    out
}

/// Answers a row that failed the writer's own checks (only its request fails).
fn refuse_early(p: Pending, why: &str, health: &WriterHealth) {
    health.refused_rows.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(target: "broker::audit", tenant = ?p.row.tenant, audit_id = %p.row.audit_id, problem = %why, "audit row refused before batching; only its request fails");
    let _ = p.done.send(Err(AuditUnavailable::Refused));
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    health: Arc<WriterHealth>,
) {
    let mut heads = crate::store::HeadCache::default();
    let mut waiters: Vec<oneshot::Sender<Answer>> = Vec::with_capacity(max_batch);
    let mut rows: Vec<AuditRow> = Vec::with_capacity(max_batch);
    // Rows taken from the queue while a transaction held other tenants' heads.
    let mut carry: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
    loop {
        let first = match carry.pop_front() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(p) = next.take() {
            taken += 1;
            // A row the database would refuse never joins the batch.
            if let Some(why) = row_problem(&p.row) {
                refuse_early(p, &why, &health);
            } else {
                rows.push(p.row);
                waiters.push(p.done);
            }
            if taken < max_batch {
                next = carry.pop_front().or_else(|| rx.try_recv().ok());
            }
        }
        if rows.is_empty() {
            continue;
        }
        // Rows of requests that already timed out are still written: they got no
        // token, and the record errs on the side of more rows, never fewer.
        health
            .busy_since_ms
            .store(health.clock.now_unix_ms(), Ordering::Relaxed);
        let started = health.clock.stopwatch();
        let room = max_batch.saturating_sub(rows.len());
        let mut head_wait = None;
        let outcome = {
            let (rx, waiters, carry, health) = (&mut rx, &mut waiters, &mut carry, &*health);
            let (started, head_wait) = (&started, &mut head_wait);
            let mut late = |tenants: &[String]| {
                // Called once the transaction holds the heads.
                *head_wait = Some(started.elapsed());
                take_late(rx, tenants, room, waiters, carry, health)
            };
            commit_joining(&store, &mut rows, &mut heads, &mut late).await
        };
        health.record(&outcome, rows.len(), started.elapsed(), head_wait);
        for (done, answer) in waiters.drain(..).zip(outcome.answers) {
            let _ = done.send(answer);
        }
        rows.clear();
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};

    use super::{AuditUnavailable, Pending, WriterHealth, take_late};
    use crate::audit::{Actor, AuditRow, Kind, Outcome};

    fn pending(tenant: &str, user: &str) -> (Pending, oneshot::Receiver<super::Answer>) {
        let mut row = AuditRow::new(tenant, Kind::TokenIssued, Outcome::Issued, Actor::ApiKey, 1);
        row.user_id = Some(user.to_owned());
        let (done, wait) = oneshot::channel();
        (Pending { row, done }, wait)
    }

    /// While a transaction holds `acme`'s head, the queue hands over `acme`'s
    /// rows in their order; another tenant's rows wait in `carry` for the next
    /// batch, in theirs; a row the database would refuse is answered at once;
    /// and no more than `room` rows are taken from the queue.
    #[tokio::test]
    async fn late_rows_are_only_the_held_tenants_and_the_rest_keep_their_order() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut waits = Vec::new();
        for (tenant, user) in [
            ("acme", "a1"),
            ("beta", "b1"),
            ("acme", "bad\0"),
            ("acme", "a2"),
            ("beta", "b2"),
            ("acme", "a3"),
        ] {
            let (p, w) = pending(tenant, user);
            tx.try_send(p).unwrap();
            waits.push(w);
        }
        let health = WriterHealth::default();
        let (mut waiters, mut carry) = (Vec::new(), std::collections::VecDeque::new());
        let held = ["acme".to_owned()];
        let out = take_late(&mut rx, &held, 5, &mut waiters, &mut carry, &health);
        let users = |rows: Vec<&AuditRow>| -> Vec<String> {
            rows.into_iter()
                .map(|r| r.user_id.clone().unwrap())
                .collect()
        };
        assert_eq!(users(out.iter().collect()), ["a1", "a2"]);
        assert_eq!(waiters.len(), 2);
        assert_eq!(users(carry.iter().map(|p| &p.row).collect()), ["b1", "b2"]);
        assert!(matches!(
            waits[2].try_recv(),
            Ok(Err(AuditUnavailable::Refused))
        ));
        // `room` was 5: the sixth row is still in the queue.
        assert_eq!(rx.try_recv().unwrap().row.user_id.as_deref(), Some("a3"));
    }
}

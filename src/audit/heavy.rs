//! Audit work whose cost grows with a tenant's whole history: inclusion and
//! consistency proofs (every row's leaf hash) and the console's chain check
//! (every row re-hashed). Threat-model rule 2: a tenant's auditor must not be
//! able to stall other tenants' issuance by asking for these in a loop, so
//! each job runs
//!
//! - **one at a time per tenant**: a second request of the same tenant while
//!   one runs (or waits) gets `Busy` at once (HTTP 429 `audit_busy`);
//! - **one at a time in the process**, in arrival order (a fair semaphore),
//!   waiting at most `QUEUE_WAIT` for its turn (else `Busy`);
//! - **on a thread of its own**, never on an HTTP worker (the PostgreSQL
//!   verifier hands rows to a hashing thread through a blocking channel);
//! - **within `TIME_LIMIT`**, after which the job is cancelled at its next
//!   await (also when its request has gone) and the request gets `TimedOut`
//!   (HTTP 503 `audit_timeout`).
//!
//! So however many tenants ask, this work holds at most one core's worth of
//! hashing and the connections of one job (two for the verifier's two
//! ranges), and issuance keeps the rest.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// How long a job may wait for its turn behind other tenants' jobs.
pub const QUEUE_WAIT: Duration = Duration::from_secs(30);
/// How long a job may run (a full verify of 5M rows takes about 7 s here).
pub const TIME_LIMIT: Duration = Duration::from_secs(120);

/// Why a job did not run to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeavyError {
    #[error("a proof or chain check of this tenant is already running, or the queue is full")]
    Busy,
    #[error("the job took longer than its time bound")]
    TimedOut,
    #[error("the job's thread failed")]
    Failed,
}

static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
static TENANTS: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

/// The runtime of the thread these jobs run on (started on first use).
static RUNTIME: LazyLock<tokio::runtime::Handle> = LazyLock::new(|| {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("audit-heavy".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the audit-heavy runtime starts");
            let _ = tx.send(rt.handle().clone());
            rt.block_on(std::future::pending::<()>());
        })
        .expect("the audit-heavy thread starts");
    rx.recv().expect("the audit-heavy runtime's handle")
});

/// The tenant's place: held while its job waits or runs, released on drop.
struct TenantSlot(String);

impl TenantSlot {
    fn take(tenant: &str) -> Option<TenantSlot> {
        let mut t = TENANTS.lock().unwrap_or_else(|e| e.into_inner());
        t.insert(tenant.to_owned())
            .then(|| TenantSlot(tenant.to_owned()))
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        TENANTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// Runs `job` for `tenant` under the rules above.
pub async fn run<T, F>(tenant: &str, job: F) -> Result<T, HeavyError>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    run_bounded(tenant, QUEUE_WAIT, TIME_LIMIT, job).await
}

/// `run` with its bounds given (tests use short ones).
pub async fn run_bounded<T, F>(
    tenant: &str,
    queue_wait: Duration,
    time_limit: Duration,
    job: F,
) -> Result<T, HeavyError>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let slot = TenantSlot::take(tenant).ok_or(HeavyError::Busy)?;
    let permit = tokio::time::timeout(queue_wait, ONE_AT_A_TIME.acquire())
        .await
        .map_err(|_| HeavyError::Busy)?
        .map_err(|_| HeavyError::Failed)?;
    // The job bounds itself, so it ends in time even when its request is
    // gone; the slot and the permit live exactly as long as it does.
    let task = RUNTIME.spawn(async move {
        let out = tokio::time::timeout(time_limit, job).await;
        drop((permit, slot));
        out
    });
    match task.await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(_elapsed)) => Err(HeavyError::TimedOut),
        Err(_) => Err(HeavyError::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_job_per_tenant_one_in_the_process_and_a_time_bound() {
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn(run("heavy-a", async move {
            let _ = hold.await;
            std::thread::current().name().map(str::to_owned)
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The same tenant again: refused at once, not queued.
        let again = run("heavy-a", async { 1 }).await;
        assert_eq!(again, Err(HeavyError::Busy));
        // Another tenant waits its turn, and gives up after its wait.
        let other = run_bounded("heavy-b", Duration::from_millis(50), TIME_LIMIT, async {
            2
        })
        .await;
        assert_eq!(other, Err(HeavyError::Busy));
        release.send(()).unwrap();
        let thread = first.await.unwrap().unwrap();
        assert_eq!(
            thread.as_deref(),
            Some("audit-heavy"),
            "off the caller's thread"
        );
        // Both places are free again.
        assert_eq!(run("heavy-a", async { 3 }).await, Ok(3));
        assert_eq!(run("heavy-b", async { 4 }).await, Ok(4));

        // A job past its time bound is cancelled, and frees its places.
        let slow = run_bounded(
            "heavy-a",
            QUEUE_WAIT,
            Duration::from_millis(50),
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(slow, Err(HeavyError::TimedOut));
        assert_eq!(run("heavy-a", async { 5 }).await, Ok(5));
    }
}

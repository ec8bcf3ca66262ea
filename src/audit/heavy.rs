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
use std::sync::{Arc, LazyLock, Mutex};
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

/// The runtime of the thread these jobs run on (started on first use; None
/// if the OS would not start it, and then every job fails).
static RUNTIME: LazyLock<Option<tokio::runtime::Handle>> = LazyLock::new(|| {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = std::thread::Builder::new()
        .name("audit-heavy".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Some(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the audit-heavy runtime");
                    let _ = tx.send(None);
                }
            }
        });
    match started {
        Ok(_) => rx.recv().ok().flatten(),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the audit-heavy thread");
            None
        }
    }
});

/// The gate of one broker (`AppState::heavy`): its one job at a time, and
/// the tenants with a job waiting or running.
#[derive(Debug, Clone)]
pub struct Heavy {
    one_at_a_time: Arc<tokio::sync::Semaphore>,
    tenants: Arc<Mutex<HashSet<String>>>,
}

impl Default for Heavy {
    fn default() -> Heavy {
        Heavy {
            one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
            tenants: Arc::default(),
        }
    }
}

/// The tenant's place: held while its job waits or runs, released on drop.
struct TenantSlot(Arc<Mutex<HashSet<String>>>, String);

impl Drop for TenantSlot {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl Heavy {
    fn take(&self, tenant: &str) -> Option<TenantSlot> {
        let mut t = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        t.insert(tenant.to_owned())
            .then(|| TenantSlot(Arc::clone(&self.tenants), tenant.to_owned()))
    }

    /// Runs `job` for `tenant` under the rules above.
    pub async fn run<T, F>(&self, tenant: &str, job: F) -> Result<T, HeavyError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.run_bounded(tenant, QUEUE_WAIT, TIME_LIMIT, job).await
    }

    /// `run` with its bounds given (tests use short ones).
    pub async fn run_bounded<T, F>(
        &self,
        tenant: &str,
        queue_wait: Duration,
        time_limit: Duration,
        job: F,
    ) -> Result<T, HeavyError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let slot = self.take(tenant).ok_or(HeavyError::Busy)?;
        let permit =
            tokio::time::timeout(queue_wait, Arc::clone(&self.one_at_a_time).acquire_owned())
                .await
                .map_err(|_| HeavyError::Busy)?
                .map_err(|_| HeavyError::Failed)?;
        // The job bounds itself, so it ends in time even when its request is
        // gone; the slot and the permit live exactly as long as it does.
        let runtime = RUNTIME.as_ref().ok_or(HeavyError::Failed)?;
        let task = runtime.spawn(async move {
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
}

/// Runs `job` on the audit-heavy thread, off the HTTP workers, under no
/// other rule (the caller brings its own gate and time bound: policy replay).
pub async fn off_workers<T, F>(job: F) -> Result<T, HeavyError>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let runtime = RUNTIME.as_ref().ok_or(HeavyError::Failed)?;
    runtime.spawn(job).await.map_err(|_| HeavyError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn off_workers_runs_the_job_on_the_heavy_thread() {
        let name = off_workers(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("audit-heavy"));
    }

    #[tokio::test]
    async fn one_job_per_tenant_one_in_the_process_and_a_time_bound() {
        let h = Heavy::default();
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let h2 = h.clone();
        let first = tokio::spawn(async move {
            h2.run("heavy-a", async move {
                let _ = hold.await;
                std::thread::current().name().map(str::to_owned)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The same tenant again: refused at once, not queued.
        let again = h.run("heavy-a", async { 1 }).await;
        assert_eq!(again, Err(HeavyError::Busy));
        // Another tenant waits its turn, and gives up after its wait.
        let other = h
            .run_bounded("heavy-b", Duration::from_millis(50), TIME_LIMIT, async {
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
        assert_eq!(h.run("heavy-a", async { 3 }).await, Ok(3));
        assert_eq!(h.run("heavy-b", async { 4 }).await, Ok(4));

        // A job past its time bound is cancelled, and frees its places.
        let slow = h
            .run_bounded(
                "heavy-a",
                QUEUE_WAIT,
                Duration::from_millis(50),
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(slow, Err(HeavyError::TimedOut));
        assert_eq!(h.run("heavy-a", async { 5 }).await, Ok(5));
    }
}

//! Appending to the chains: the one place that decides when a write that
//! lost its tenant's chain head is tried again. The store takes the head and
//! writes (one attempt, with the audit module's `chain::seal`); this module
//! retries, boundedly, what no lock can prevent.

use super::AuditRow;
use super::chain;
use crate::store::{Store, StoreError};

/// Attempts per write before giving up with a conflict.
const MAX_HEAD_TRIES: usize = 8;

/// Runs `op` (a store write that seals its own audit row with `chain::seal`)
/// again when another writer moved the tenant's chain head in between.
pub async fn retry_head<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 1;
    loop {
        match op().await {
            Err(StoreError::HeadMoved) if again(&mut tries) => {}
            other => return other,
        }
    }
}

/// Counts one more attempt after a lost head; false once the bound is reached.
fn again(tries: &mut usize) -> bool {
    *tries += 1;
    *tries <= MAX_HEAD_TRIES
}

/// Seals `rows` into their tenants' chains and commits them in one
/// transaction (see `Store::append_once`), retried as `retry_head` does.
/// `heads` is the caller's cache of chain heads.
pub async fn append(
    store: &Store,
    rows: &mut [AuditRow],
    heads: &mut crate::store::HeadCache,
) -> Result<(), StoreError> {
    // The same bound as `retry_head`; a closure cannot lend `rows` to each
    // attempt's future, hence the loop of its own.
    let mut tries = 1;
    loop {
        match store.append_once(rows, heads, chain::seal).await {
            Err(StoreError::HeadMoved) if again(&mut tries) => {}
            Err(StoreError::HeadMoved) => {
                return Err(StoreError::Conflict(
                    "audit chain head kept moving; giving up".into(),
                ));
            }
            other => return other,
        }
    }
}

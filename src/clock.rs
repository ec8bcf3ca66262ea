//! The only place that reads the wall clock. Everything else takes `now` as a
//! parameter, so decisions and signers are deterministic under test.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current unix time in whole seconds.
#[allow(clippy::disallowed_methods)] // this module is the one allowed clock read
pub fn now_unix() -> i64 {
    now_unix_ms() / 1000
}

/// Current unix time in milliseconds.
#[allow(clippy::disallowed_methods)]
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

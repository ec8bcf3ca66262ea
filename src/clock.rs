//! The only place that reads the wall clock or the monotonic clock. The
//! server holds one [`Clock`] in its application state and everything reads
//! time through it (or takes `now` as a parameter), so decisions, signers,
//! rate limits and timeouts are deterministic under test: a test freezes the
//! clock and moves it forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Current unix time in whole seconds, from the system clock. For one-shot
/// CLI commands, which hold no application state; the server reads
/// [`Clock::now_unix`] instead.
pub fn now_unix() -> i64 {
    now_unix_ms() / 1000
}

/// Current unix time in milliseconds, from the system clock (see [`now_unix`]).
#[allow(clippy::disallowed_methods)] // this module is the one allowed clock read
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `frozen_ns` while the clock runs.
const RUNNING: u64 = u64::MAX;

/// The broker's time: unix time (wall clock) and a monotonic time (for rate
/// limits and durations). Cheap to clone; clones share one time.
///
/// It runs on the system clocks until [`Clock::freeze`] stops it; from then
/// on both times stand still and only [`Clock::advance`] moves them (tests).
#[derive(Debug, Clone)]
pub struct Clock(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    origin: Instant,
    /// Monotonic nanoseconds since `origin` while frozen; `RUNNING` otherwise.
    frozen_ns: AtomicU64,
    /// Unix milliseconds while frozen.
    frozen_unix_ms: AtomicI64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl Clock {
    /// The system clocks, running.
    #[allow(clippy::disallowed_methods)] // this module is the one allowed clock read
    pub fn system() -> Clock {
        Clock(Arc::new(Inner {
            origin: Instant::now(),
            frozen_ns: AtomicU64::new(RUNNING),
            frozen_unix_ms: AtomicI64::new(0),
        }))
    }

    /// Unix time in milliseconds.
    pub fn now_unix_ms(&self) -> i64 {
        match self.0.frozen_ns.load(Ordering::Acquire) {
            RUNNING => now_unix_ms(),
            _ => self.0.frozen_unix_ms.load(Ordering::Acquire),
        }
    }

    /// Unix time in whole seconds.
    pub fn now_unix(&self) -> i64 {
        self.now_unix_ms() / 1000
    }

    /// Monotonic time in nanoseconds since the clock was made.
    pub fn monotonic_ns(&self) -> u64 {
        match self.0.frozen_ns.load(Ordering::Acquire) {
            RUNNING => u64::try_from(self.0.origin.elapsed().as_nanos()).unwrap_or(RUNNING - 1),
            t => t,
        }
    }

    /// Starts measuring a duration (request latency, commit time).
    pub fn stopwatch(&self) -> Stopwatch {
        Stopwatch {
            clock: self.clone(),
            started_ns: self.monotonic_ns(),
        }
    }

    /// Whether [`Clock::freeze`] stopped it.
    pub fn is_frozen(&self) -> bool {
        self.0.frozen_ns.load(Ordering::Acquire) != RUNNING
    }

    /// Stops time where it is (for tests); a no-op when already frozen.
    pub fn freeze(&self) {
        if self.is_frozen() {
            return;
        }
        let ns = self.monotonic_ns();
        self.0
            .frozen_unix_ms
            .store(now_unix_ms(), Ordering::Release);
        self.0
            .frozen_ns
            .store(ns.min(RUNNING - 1), Ordering::Release);
    }

    /// Moves frozen time forward, both unix and monotonic (for tests; freezes
    /// it first).
    pub fn advance(&self, by: Duration) {
        self.freeze();
        let ns = u64::try_from(by.as_nanos()).unwrap_or(RUNNING);
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .0
            .frozen_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(ns).min(RUNNING - 1))
            });
        let _ = self
            .0
            .frozen_unix_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

/// A duration being measured on a [`Clock`].
#[derive(Debug, Clone)]
pub struct Stopwatch {
    clock: Clock,
    started_ns: u64,
}

impl Stopwatch {
    /// Time since the stopwatch started.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.clock.monotonic_ns().saturating_sub(self.started_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let c = Clock::system();
        c.freeze();
        let (ms, ns) = (c.now_unix_ms(), c.monotonic_ns());
        let w = c.stopwatch();
        assert_eq!((c.now_unix_ms(), c.monotonic_ns()), (ms, ns));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now_unix_ms(), ms + 1500);
        assert_eq!(c.monotonic_ns(), ns + 1_500_000_000);
        assert_eq!(w.elapsed(), Duration::from_millis(1500));
        // Clones share the time.
        let d = c.clone();
        d.advance(Duration::from_secs(1));
        assert_eq!(c.now_unix(), (ms + 2500) / 1000);
    }
}

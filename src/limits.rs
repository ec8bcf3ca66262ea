//! Rate limits, applied before any decision or signature:
//!
//! | limit | key | default | why |
//! |---|---|---|---|
//! | `end_user` | tenant + user id | 5/s, burst 20 | one login token cannot mint a flood |
//! | `end_user_ip` | client address | 20/s, burst 60 | many users behind one attacker address |
//! | `api_key` | API key id | 100000/s, burst 200000 | generous: a tenant's backend must never be throttled in normal use |
//! | `failed_auth_ip` | client address | 1/s, burst 10 | credential stuffing; each failure is also slowed by 200 ms |
//!
//! Each is overridable in settings (`TOKEN_BROKER_RATE_<LIMIT>=<per_second>/<burst>`) and, except
//! `failed_auth_ip` (checked before the tenant is known), in a tenant's policy file
//! (`[rate_limits] end_user = "5/20"`). A refusal is 429 `rate_limited` with `Retry-After`,
//! counted in `/metrics`, and not audited row by row.
//!
//! `failed_auth_ip` is consulted (without taking a token) before any credential is looked
//! at, so an address over it gets 429 without an argon2 verification, even for a correct
//! key; each failure then takes a token. As the token is taken only once a check has
//! finished, an address also has at most `MAX_AUTH_IN_FLIGHT` credential checks (an API key
//! not in the cache, a login token) in flight at once: one more is refused at once with 429
//! (`auth_in_flight` in `/metrics`), so a concurrent wave cannot all pass the peek. A tenant's `api_key` rate applies on every route
//! its keys call. Tenants' buckets live here, outside the compiled policy, and survive
//! policy applies: a new version changes the rates in place.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::clock::Clock;

pub use crate::domain::{Rate, Rates};

/// Most credential checks (an API key's argon2, a login token's signature
/// checks) one client address may have in flight at once.
pub const MAX_AUTH_IN_FLIGHT: u32 = 4;

/// Audit reads a tenant may have running at once. A query whose filters
/// match nothing can walk a whole index range (for at most
/// `audit_read_timeout_ms`), and each read holds a pooled connection: however
/// many a tenant's auditors send, they hold at most this many.
pub const MAX_AUDIT_READS_IN_FLIGHT: u32 = 2;

/// Audit reads the whole broker runs at once, whatever the tenants: at most
/// this many of the pool's connections (8 readers on SQLite, 12 on
/// PostgreSQL, where the audit writer shares the pool) are ever held by
/// reads tenants shape, so issuance, sign-ins and session lookups always
/// find one.
pub const MAX_AUDIT_READS_TOTAL: u32 = 4;

const SHARDS: usize = 16;

/// One keyed limit: a token bucket per key, kept as GCRA's "theoretical
/// arrival time" (one `u64` per key). Its rate can be changed in place, so a
/// policy apply keeps every key's state.
pub struct Limiter {
    /// `per_second` in the low 32 bits, `burst` in the high 32.
    rate: AtomicU64,
    shards: [Mutex<HashMap<String, u64>>; SHARDS],
    /// Monotonic time (tests freeze it and move it forward instead of sleeping).
    clock: Clock,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("rate", &self.rate())
            .field("keys", &self.len())
            .finish()
    }
}

fn pack(r: Rate) -> u64 {
    u64::from(r.per_second.max(1)) | (u64::from(r.burst.max(1)) << 32)
}

/// How many keys a set of shards holds.
fn keys_in<V>(shards: &[Mutex<HashMap<String, V>>]) -> usize {
    shards
        .iter()
        .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn shard_of(key: &str) -> usize {
    key.bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % SHARDS
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        Limiter::with_clock(rate, Clock::system())
    }

    pub fn with_clock(rate: Rate, clock: Clock) -> Limiter {
        Limiter {
            rate: AtomicU64::new(pack(rate)),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            clock,
        }
    }

    pub fn rate(&self) -> Rate {
        let v = self.rate.load(Ordering::Relaxed);
        Rate {
            per_second: v as u32,
            burst: (v >> 32) as u32,
        }
    }

    /// Changes the rate; every key keeps its state.
    pub fn set_rate(&self, rate: Rate) {
        self.rate.store(pack(rate), Ordering::Relaxed);
    }

    /// Emission interval and tolerance (a full bucket), in nanoseconds.
    fn params(&self) -> (u64, u64) {
        let r = self.rate();
        let interval = (1_000_000_000 / u64::from(r.per_second.max(1))).max(1);
        (interval, interval.saturating_mul(u64::from(r.burst.max(1))))
    }

    /// Takes one token of `key`'s bucket; `Err(retry_after)` when it is empty
    /// (and then nothing is taken).
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.decide(key, true)
    }

    /// Whether `key` has a token left, without taking it.
    pub fn peek(&self, key: &str) -> Result<(), Duration> {
        self.decide(key, false)
    }

    fn decide(&self, key: &str, take: bool) -> Result<(), Duration> {
        let (interval, tolerance) = self.params();
        let now = self.clock.monotonic_ns();
        let Ok(mut shard) = self.shards[shard_of(key)].lock() else {
            return Ok(()); // a poisoned shard: fail open rather than refuse everyone
        };
        let tat = shard.get(key).copied().unwrap_or(now).max(now);
        let next = tat.saturating_add(interval);
        if next - now > tolerance {
            return Err(Duration::from_nanos(next - now - tolerance));
        }
        if take {
            match shard.get_mut(key) {
                Some(t) => *t = next,
                None => {
                    shard.insert(key.to_owned(), next);
                }
            }
        }
        Ok(())
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        keys_in(&self.shards)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets keys whose buckets are full again (bounds memory).
    pub fn shrink(&self) {
        let now = self.clock.monotonic_ns();
        for s in &self.shards {
            if let Ok(mut m) = s.lock() {
                m.retain(|_, tat| *tat > now);
                m.shrink_to_fit();
            }
        }
    }
}

/// Work in flight per key, at most `limit` each: credential checks per
/// client address (`Limits::auth_in_flight`), audit reads per tenant
/// (`Limits::audit_reads`).
///
/// `failed_auth_ip` charges a failure only once its check has finished, so on
/// its own it lets a whole concurrent wave through before the first failure
/// counts. A check holds a [`Slot`] from before any work until its failure is
/// charged; an address with `limit` slots taken is refused at once.
pub struct InFlight {
    limit: u32,
    shards: [Mutex<HashMap<String, u32>>; SHARDS],
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("limit", &self.limit)
            .field("keys", &self.len())
            .finish()
    }
}

impl InFlight {
    pub fn new(limit: u32) -> InFlight {
        InFlight {
            limit: limit.max(1),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // The map stays consistent whatever panicked while holding it.
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for `key`, or `None` when `key` already has `limit` in flight.
    /// The slot owns its `InFlight`, so it may outlive its caller (a
    /// streamed export holds one until its stream ends).
    pub fn try_enter(self: &Arc<Self>, key: &str) -> Option<Slot> {
        self.enter(key).then(|| Slot {
            owner: Arc::clone(self),
            key: key.to_owned(),
        })
    }

    /// Takes one of `key`'s places, if it has one free.
    fn enter(&self, key: &str) -> bool {
        let mut m = self.shard(key);
        let n = m.entry(key.to_owned()).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, key: &str) {
        let mut m = self.shard(key);
        if let Some(n) = m.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(key);
            }
        }
    }

    /// Checks `key` has in flight now.
    pub fn in_flight(&self, key: &str) -> u32 {
        self.shard(key).get(key).copied().unwrap_or(0)
    }

    /// Addresses with a check in flight (an idle address takes no memory).
    pub fn len(&self) -> usize {
        keys_in(&self.shards)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One place of a key in flight; given back on drop, so every exit
/// (success, refusal, error, a dropped request or stream) releases it.
#[must_use = "the slot is given back when dropped"]
#[derive(Debug)]
pub struct Slot {
    owner: Arc<InFlight>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.leave(&self.key);
    }
}

/// The limits a tenant's policy may override (`[rate_limits]`).
#[derive(Debug)]
pub struct LimitSet {
    pub end_user: Limiter,
    pub end_user_ip: Limiter,
    pub api_key: Limiter,
}

impl LimitSet {
    fn new(rates: &Rates, clock: &Clock) -> LimitSet {
        LimitSet {
            end_user: Limiter::with_clock(rates.end_user, clock.clone()),
            end_user_ip: Limiter::with_clock(rates.end_user_ip, clock.clone()),
            api_key: Limiter::with_clock(rates.api_key, clock.clone()),
        }
    }

    fn set_rates(&self, rates: &Rates) {
        self.end_user.set_rate(rates.end_user);
        self.end_user_ip.set_rate(rates.end_user_ip);
        self.api_key.set_rate(rates.api_key);
    }

    fn shrink(&self) {
        self.end_user.shrink();
        self.end_user_ip.shrink();
        self.api_key.shrink();
    }
}

/// The broker's limiters: the settings' set, the failed-authentication limit
/// per address, and one set per tenant whose policy overrides the rates.
///
/// A tenant's set lives here, outside its compiled policy, so applying a new
/// policy version updates its rates in place and keeps every bucket: an
/// apply (or a flood of them) never hands out a fresh burst.
#[derive(Debug)]
pub struct Limits {
    pub rates: Rates,
    pub failed_auth_ip: Limiter,
    /// Credential checks in flight per client address.
    pub auth_in_flight: Arc<InFlight>,
    /// Audit reads (queries, exports, summaries) in flight per tenant.
    pub audit_reads: Arc<InFlight>,
    /// Audit reads in flight in the whole broker.
    pub audit_reads_total: Arc<tokio::sync::Semaphore>,
    clock: Clock,
    global: Arc<LimitSet>,
    tenants: RwLock<HashMap<String, Arc<LimitSet>>>,
}

impl Limits {
    /// The limits at `rates`, on `clock` (the application's).
    pub fn new(rates: Rates, clock: Clock) -> Limits {
        Limits {
            rates,
            failed_auth_ip: Limiter::with_clock(rates.failed_auth_ip, clock.clone()),
            auth_in_flight: Arc::new(InFlight::new(MAX_AUTH_IN_FLIGHT)),
            audit_reads: Arc::new(InFlight::new(MAX_AUDIT_READS_IN_FLIGHT)),
            audit_reads_total: Arc::new(tokio::sync::Semaphore::new(
                MAX_AUDIT_READS_TOTAL as usize,
            )),
            global: Arc::new(LimitSet::new(&rates, &clock)),
            tenants: RwLock::new(HashMap::new()),
            clock,
        }
    }

    /// The limits that apply to `tenant`'s callers: its policy's, else the broker's.
    pub fn for_tenant(&self, tenant: &str) -> Arc<LimitSet> {
        self.tenants
            .read()
            .ok()
            .and_then(|m| m.get(tenant).cloned())
            .unwrap_or_else(|| self.global.clone())
    }

    /// Sets `tenant`'s overrides (after a policy load). An existing set keeps
    /// its buckets and takes the new rates; `None` returns the tenant to the
    /// broker's limits.
    pub fn set_tenant_rates(&self, tenant: &str, rates: Option<&Rates>) {
        let Ok(mut m) = self.tenants.write() else {
            return;
        };
        match (rates, m.get(tenant)) {
            (Some(r), Some(set)) => set.set_rates(r),
            (Some(r), None) => {
                m.insert(tenant.to_owned(), Arc::new(LimitSet::new(r, &self.clock)));
            }
            (None, _) => {
                m.remove(tenant);
            }
        }
    }

    pub fn shrink(&self) {
        self.global.shrink();
        self.failed_auth_ip.shrink();
        if let Ok(m) = self.tenants.read() {
            for set in m.values() {
                set.shrink();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frozen() -> Clock {
        let t = Clock::system();
        t.freeze();
        t
    }

    #[test]
    fn a_burst_past_the_limit_is_refused_with_a_retry_time() {
        let t = frozen();
        let l = Limiter::with_clock(
            Rate {
                per_second: 5,
                burst: 20,
            },
            t.clone(),
        );
        let refused = (0..100).filter(|_| l.check("alice").is_err()).count();
        assert_eq!(refused, 80, "a burst of 20, then nothing while time stands");
        let wait = l.check("alice").unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        assert!(l.check("bob").is_ok(), "other keys are unaffected");
        t.advance(Duration::from_millis(200));
        assert!(l.check("alice").is_ok(), "one token back after 1/rate");
        assert!(l.check("alice").is_err());
    }

    #[test]
    fn in_flight_slots_are_bounded_per_key_and_given_back_on_drop() {
        let f = Arc::new(InFlight::new(2));
        let a = f.try_enter("ip");
        let b = f.try_enter("ip");
        assert!(a.is_some() && b.is_some());
        assert!(f.try_enter("ip").is_none(), "a third at once is refused");
        assert!(f.try_enter("other").is_some(), "another key is unaffected");
        drop(a);
        assert_eq!(f.in_flight("ip"), 1);
        let c = f.try_enter("ip");
        assert!(c.is_some(), "a slot given back is taken again");
        drop((b, c));
        assert!(f.is_empty(), "an idle key keeps no entry");
    }

    #[test]
    fn peeking_takes_nothing() {
        let l = Limiter::with_clock(
            Rate {
                per_second: 1,
                burst: 2,
            },
            frozen(),
        );
        for _ in 0..10 {
            assert!(l.peek("ip").is_ok());
        }
        assert!(l.check("ip").is_ok() && l.check("ip").is_ok());
        assert!(l.peek("ip").is_err());
        assert!(l.check("ip").is_err());
    }

    #[test]
    fn a_rate_change_keeps_every_bucket() {
        let limits = Limits::new(Rates::default(), frozen());
        let slow = Rates {
            api_key: Rate {
                per_second: 1,
                burst: 2,
            },
            ..Rates::default()
        };
        limits.set_tenant_rates("acme", Some(&slow));
        let set = limits.for_tenant("acme");
        assert!(set.api_key.check("k").is_ok() && set.api_key.check("k").is_ok());
        assert!(set.api_key.check("k").is_err());
        // A new policy version with a larger burst: the empty bucket stays empty.
        limits.set_tenant_rates(
            "acme",
            Some(&Rates {
                api_key: Rate {
                    per_second: 1,
                    burst: 3,
                },
                ..Rates::default()
            }),
        );
        let again = limits.for_tenant("acme");
        assert!(Arc::ptr_eq(&set, &again));
        assert!(again.api_key.check("k").is_ok(), "only the one extra token");
        assert!(again.api_key.check("k").is_err());
        assert!(
            limits.for_tenant("other").api_key.check("k").is_ok(),
            "tenants without overrides use the broker's limits"
        );
    }

    #[test]
    fn shrinking_forgets_only_full_buckets() {
        let t = frozen();
        let l = Limiter::with_clock(
            Rate {
                per_second: 1,
                burst: 5,
            },
            t.clone(),
        );
        l.check("a").unwrap();
        l.shrink();
        assert_eq!(l.len(), 1);
        t.advance(Duration::from_secs(1));
        l.shrink();
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            Rate::parse("5/20").unwrap(),
            Rate {
                per_second: 5,
                burst: 20
            }
        );
        assert_eq!(
            Rate::parse("7").unwrap(),
            Rate {
                per_second: 7,
                burst: 7
            }
        );
        assert!(Rate::parse("0/5").is_err());
        assert!(Rate::parse("fast").is_err());
    }
}

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

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// A sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// Parses `"<per_second>/<burst>"` (or just `"<per_second>"`, burst = rate).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (r, b) = s.split_once('/').unwrap_or((s, s));
        let per_second: u32 = r
            .trim()
            .parse()
            .map_err(|_| format!("rate {s:?}: expected <per_second>/<burst>, e.g. \"5/20\""))?;
        let burst: u32 = b
            .trim()
            .parse()
            .map_err(|_| format!("rate {s:?}: expected <per_second>/<burst>, e.g. \"5/20\""))?;
        if per_second == 0 || burst == 0 {
            return Err(format!("rate {s:?}: both numbers must be positive"));
        }
        Ok(Rate { per_second, burst })
    }
}

/// The four limits' rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub end_user: Rate,
    pub end_user_ip: Rate,
    pub api_key: Rate,
    pub failed_auth_ip: Rate,
}

impl Default for Rates {
    fn default() -> Rates {
        Rates {
            end_user: Rate {
                per_second: 5,
                burst: 20,
            },
            end_user_ip: Rate {
                per_second: 20,
                burst: 60,
            },
            api_key: Rate {
                per_second: 100_000,
                burst: 200_000,
            },
            failed_auth_ip: Rate {
                per_second: 1,
                burst: 10,
            },
        }
    }
}

/// One keyed token bucket.
pub struct Limiter {
    inner: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("keys", &self.inner.len())
            .finish()
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        let quota = Quota::per_second(nz(rate.per_second)).allow_burst(nz(rate.burst));
        Limiter {
            inner: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(retry_after)` when `key` is over its rate.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        // Allocation only on the slow path would need a borrowed-key API governor lacks.
        self.inner
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys whose buckets are full again (bounds memory).
    pub fn shrink(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

/// The broker's limiters.
#[derive(Debug)]
pub struct Limits {
    pub rates: Rates,
    pub end_user: Limiter,
    pub end_user_ip: Limiter,
    pub api_key: Limiter,
    pub failed_auth_ip: Limiter,
}

impl Limits {
    pub fn new(rates: Rates) -> Limits {
        Limits {
            rates,
            end_user: Limiter::new(rates.end_user),
            end_user_ip: Limiter::new(rates.end_user_ip),
            api_key: Limiter::new(rates.api_key),
            failed_auth_ip: Limiter::new(rates.failed_auth_ip),
        }
    }

    pub fn shrink(&self) {
        self.end_user.shrink();
        self.end_user_ip.shrink();
        self.api_key.shrink();
        self.failed_auth_ip.shrink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_past_the_limit_is_refused_with_a_retry_time() {
        let l = Limiter::new(Rate {
            per_second: 5,
            burst: 20,
        });
        let refused = (0..100).filter(|_| l.check("alice").is_err()).count();
        assert!((75..=80).contains(&refused), "{refused} of 100 refused");
        let wait = l.check("alice").unwrap_err();
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert!(l.check("bob").is_ok(), "other keys are unaffected");
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

//! The arithmetic of the audit rollup (`audit_rollup`, migration 0011): UTC
//! days, the buckets of days at each level, and how a range of whole days is
//! cut into a few bucket ranges. Pure: no SQL, no clock.
//!
//! A level-`l` bucket covers `4^l` consecutive UTC days (level 0 is one day,
//! level 6 is 4096 days, about 11 years); bucket `b` of level `l` is the days
//! `[b * 4^l, (b + 1) * 4^l)`, counted from 1970-01-01 (day 0), negative
//! before it.

/// Milliseconds in a UTC day (Unix time has no leap seconds).
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The highest level; levels are `0..=TOP`.
pub(crate) const TOP: i16 = 6;

/// Stands for "no lower bound" in days: below any day an `i64` of
/// milliseconds can name (±1.07e11 days), and a multiple of `4^TOP`, so it
/// falls on a bucket boundary at every level. Never multiplied back into
/// milliseconds.
pub(crate) const NO_LOWER_DAY: i64 = -(1 << 40);
/// Stands for "no upper bound" in days (see `NO_LOWER_DAY`).
pub(crate) const NO_UPPER_DAY: i64 = 1 << 40;

/// The UTC day of a time in Unix milliseconds (floor, also before 1970).
pub(crate) fn day_of(at_ms: i64) -> i64 {
    at_ms.div_euclid(DAY_MS)
}

/// Days per bucket at `level`.
pub(crate) fn span(level: i16) -> i64 {
    4i64.pow(u32::from(level.unsigned_abs()))
}

/// The bucket of `day` at `level`.
pub(crate) fn bucket_of(day: i64, level: i16) -> i64 {
    day.div_euclid(span(level))
}

/// Buckets `[lo, hi)` of one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketRange {
    pub level: i16,
    pub lo: i64,
    pub hi: i64,
}

/// Cuts the whole days `[d0, d1)` into bucket ranges that are disjoint and
/// cover exactly those days: the standard segment decomposition. At each
/// level below the top, at most three buckets are peeled off each end until
/// both ends fall on the next level's boundaries; the top level takes what
/// remains. So each level yields at most two ranges (a left one and a right
/// one), and a summary reads at most `2 * TOP + 1` index ranges per group key
/// whatever the window. Empty when `d0 >= d1`.
pub(crate) fn decompose(d0: i64, d1: i64) -> Vec<BucketRange> {
    let mut out = Vec::new();
    let (mut lo, mut hi) = (d0, d1);
    for level in 0..TOP {
        if lo >= hi {
            return out;
        }
        let left = lo;
        while lo < hi && lo.rem_euclid(4) != 0 {
            lo += 1;
        }
        if lo > left {
            out.push(BucketRange {
                level,
                lo: left,
                hi: lo,
            });
        }
        let right = hi;
        while hi > lo && hi.rem_euclid(4) != 0 {
            hi -= 1;
        }
        if hi < right {
            out.push(BucketRange {
                level,
                lo: hi,
                hi: right,
            });
        }
        // Both ends are multiples of 4 now (or equal): exact.
        lo = lo.div_euclid(4);
        hi = hi.div_euclid(4);
    }
    if lo < hi {
        out.push(BucketRange { level: TOP, lo, hi });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The days a range covers, `[first, end)`.
    fn days(r: &BucketRange) -> (i64, i64) {
        let s = span(r.level);
        (r.lo * s, r.hi * s)
    }

    /// Checks the decomposition of `[d0, d1)`: disjoint ranges covering
    /// exactly those days, at most two per level, at most three buckets per
    /// range below the top.
    fn check(d0: i64, d1: i64) {
        let ranges = decompose(d0, d1);
        let mut days: Vec<(i64, i64)> = ranges.iter().map(days).collect();
        days.sort();
        let mut at = d0;
        for (first, end) in &days {
            assert!(first < end, "{d0}..{d1}: empty range in {ranges:?}");
            assert_eq!(*first, at, "{d0}..{d1}: gap or overlap in {ranges:?}");
            at = *end;
        }
        assert_eq!(at, d0.max(d1), "{d0}..{d1}: not covered by {ranges:?}");
        for level in 0..=TOP {
            let n = ranges.iter().filter(|r| r.level == level).count();
            assert!(n <= 2, "{d0}..{d1}: {n} ranges at level {level}");
        }
        for r in ranges.iter().filter(|r| r.level < TOP) {
            assert!(r.hi - r.lo <= 3, "{d0}..{d1}: {r:?} is wider than 3");
        }
    }

    #[test]
    fn random_day_ranges_are_covered_exactly_by_disjoint_buckets() {
        // A small deterministic generator (xorshift): no dependency, and a
        // failure names its range.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            // Widths from a day to decades, anywhere from before 1970 to far ahead.
            let scale = [10, 100, 5_000, 20_000, 200_000][i % 5];
            let d0 = (next() % 400_000) as i64 - 200_000;
            let d1 = d0 + (next() % scale) as i64;
            check(d0, d1);
            check(d1, d0);
        }
    }

    #[test]
    fn boundaries_and_unbounded_sides_are_covered() {
        for (d0, d1) in [
            (0, 0),
            (0, 1),
            (0, 4),
            (3, 5),
            (-1, 1),
            (-4097, 4097),
            (4095, 4097),
            (4096, 8192),
            (NO_LOWER_DAY, NO_UPPER_DAY),
            (NO_LOWER_DAY, 20_089),
            (20_089, NO_UPPER_DAY),
            (20_089, 20_454),
        ] {
            check(d0, d1);
        }
        // No bounds at all is one range of the top level.
        assert_eq!(
            decompose(NO_LOWER_DAY, NO_UPPER_DAY),
            vec![BucketRange {
                level: TOP,
                lo: NO_LOWER_DAY / span(TOP),
                hi: NO_UPPER_DAY / span(TOP)
            }]
        );
    }

    #[test]
    fn days_and_buckets_round_down_before_1970_too() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(-DAY_MS), -1);
        assert_eq!(day_of(-DAY_MS - 1), -2);
        assert_eq!(bucket_of(-1, 1), -1);
        assert_eq!(bucket_of(7, 1), 1);
        assert_eq!(bucket_of(4096, TOP), 1);
        assert_eq!(span(0), 1);
        assert_eq!(span(TOP), 4096);
        assert_eq!(NO_LOWER_DAY % span(TOP), 0);
        assert!(NO_UPPER_DAY > day_of(i64::MAX) && NO_LOWER_DAY < day_of(i64::MIN));
    }
}

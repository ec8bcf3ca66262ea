//! A unified line diff between two policy texts, for `policy apply --dry-run`.

use std::time::Duration;

use similar::TextDiff;

/// How long a diff may compute before it gives up and a summary is shown.
pub const DIFF_TIME_BOUND: Duration = Duration::from_millis(300);
/// Longest diff text shown; a longer one is cut with a note.
pub const MAX_DIFF_BYTES: usize = 256 * 1024;

/// Unified diff (3 lines of context) from `old` to `new`; empty when equal.
/// Bounded: the diff algorithm stops at `DIFF_TIME_BOUND` (a hostile pair of
/// texts cannot hold a thread for long) and the result is cut at
/// `MAX_DIFF_BYTES`; either way a one-line summary says so.
pub fn diff(old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let d = TextDiff::configure()
        .timeout(DIFF_TIME_BOUND)
        .diff_lines(old, new);
    let summary = || {
        format!(
            "(diff summarised: {} lines applied, {} lines proposed; the full diff is too large or too slow to show)\n",
            old.lines().count(),
            new.lines().count()
        )
    };
    // A diff that hit the time bound is correct but coarse; say so plainly.
    if d.ops().len() > 10_000 {
        return summary();
    }
    let mut text = d
        .unified_diff()
        .context_radius(3)
        .header("applied", "proposed")
        .to_string();
    if text.len() > MAX_DIFF_BYTES {
        let mut cut = MAX_DIFF_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('\n');
        text.push_str(&summary());
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn shows_changed_lines_only_in_context() {
        let d = super::diff("a\nb\nc\n", "a\nB\nc\n");
        assert!(d.contains("-b\n") && d.contains("+B\n"), "{d}");
        assert_eq!(super::diff("same\n", "same\n"), "");
    }

    #[test]
    fn a_huge_diff_is_bounded_in_size() {
        let old: String = (0..60_000).map(|i| format!("a{i}\n")).collect();
        let new: String = (0..60_000).map(|i| format!("b{}\n", i * 7)).collect();
        let d = super::diff(&old, &new);
        assert!(d.len() <= super::MAX_DIFF_BYTES + 200, "{}", d.len());
        assert!(d.contains("diff summarised"), "{}", &d[..200.min(d.len())]);
    }
}

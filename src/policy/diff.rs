//! A unified line diff between two policy texts, for `policy apply --dry-run`.

use similar::TextDiff;

/// Unified diff (3 lines of context) from `old` to `new`; empty when equal.
pub fn diff(old: &str, new: &str) -> String {
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header("applied", "proposed")
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn shows_changed_lines_only_in_context() {
        let d = super::diff("a\nb\nc\n", "a\nB\nc\n");
        assert!(d.contains("-b\n") && d.contains("+B\n"), "{d}");
        assert_eq!(super::diff("same\n", "same\n"), "");
    }
}

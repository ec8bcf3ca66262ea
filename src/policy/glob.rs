//! `*` and `?` globs for label matchers, compiled once.

/// A compiled glob: `*` matches any run of characters, `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    literal: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            literal: !pattern.contains(['*', '?']),
            pattern: pattern.chars().collect(),
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        if self.literal {
            return self.pattern.iter().copied().eq(text.chars());
        }
        let t: Vec<char> = text.chars().collect();
        let p = &self.pattern;
        // Iterative wildcard match with backtracking to the last `*`.
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn globs() {
        let cases = [
            ("class-*", "class-math", true),
            ("class-*", "class-", true),
            ("class-*", "klass-math", false),
            ("c?ass", "class", true),
            ("c?ass", "cass", false),
            ("*", "", true),
            ("a*b*c", "a-x-b-y-c", true),
            ("a*b*c", "a-x-b-y", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(Glob::new(p).matches(t), want, "{p} ~ {t}");
        }
    }
}

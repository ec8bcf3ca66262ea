//! `*` and `?` globs for label matchers, compiled once.
//!
//! A glob runs on every decision whose rule it sits in, against a label value
//! a tenant's app registered, so its cost is bounded by construction: the
//! compiled glob is a bit-parallel automaton (Shift-And) with one state per
//! non-`*` character, and a match reads each character of the text once,
//! without allocating: `O(len(text))` whatever the pattern. (A backtracking
//! match costs `len(text) * len(pattern)`: about 10k steps for one 256-byte
//! value against a pattern made to almost match everywhere.)

/// Most non-`*` characters a glob may hold: one state bit each, in a `u128`
/// with the start state. A label value is at most 256 bytes, so a policy
/// never needs more to say what it means.
pub const MAX_GLOB_CHARS: usize = 127;

/// A compiled glob: `*` matches any run of characters, `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// No `*` or `?`: compared as a string.
    literal: Option<String>,
    /// Bit `j` (`j >= 1`): the `j`-th non-`*` character is `?`.
    any_char: u128,
    /// Per literal character, the bits `j` of the positions holding it,
    /// sorted by character.
    chars: Vec<(char, u128)>,
    /// Bit `j`: a `*` follows the first `j` non-`*` characters, so that
    /// state takes any character and stays.
    stays: u128,
    /// The state of the whole pattern read.
    accept: u128,
}

/// Why a pattern is not a glob the broker runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a label glob has at most {MAX_GLOB_CHARS} characters besides `*`")]
pub struct GlobTooLong;

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, GlobTooLong> {
        if !pattern.contains(['*', '?']) {
            return Ok(Glob {
                literal: Some(pattern.to_owned()),
                any_char: 0,
                chars: Vec::new(),
                stays: 0,
                accept: 0,
            });
        }
        let (mut j, mut any_char, mut stays) = (0usize, 0u128, 0u128);
        let mut chars: Vec<(char, u128)> = Vec::new();
        for c in pattern.chars() {
            if c == '*' {
                stays |= 1 << j;
                continue;
            }
            j += 1;
            if j > MAX_GLOB_CHARS {
                return Err(GlobTooLong);
            }
            if c == '?' {
                any_char |= 1 << j;
            } else {
                match chars.iter_mut().find(|(x, _)| *x == c) {
                    Some((_, bits)) => *bits |= 1 << j,
                    None => chars.push((c, 1 << j)),
                }
            }
        }
        chars.sort_unstable_by_key(|(c, _)| *c);
        Ok(Glob {
            literal: None,
            any_char,
            chars,
            stays,
            accept: 1 << j,
        })
    }

    /// No `*` or `?`: a string comparison.
    pub fn is_literal(&self) -> bool {
        self.literal.is_some()
    }

    pub fn matches(&self, text: &str) -> bool {
        if let Some(l) = &self.literal {
            return l == text;
        }
        // Bit j set: the text read so far can stand for the first j
        // non-`*` characters of the pattern (and the stars among them).
        let mut state: u128 = 1;
        for c in text.chars() {
            let here = self
                .chars
                .binary_search_by_key(&c, |(x, _)| *x)
                .map_or(0, |i| self.chars[i].1);
            state = ((state << 1) & (here | self.any_char)) | (state & self.stays);
            if state == 0 {
                return false;
            }
        }
        state & self.accept != 0
    }
}

#[cfg(test)]
mod tests {
    use super::{Glob, MAX_GLOB_CHARS};

    #[test]
    fn globs() {
        let cases = [
            ("class-*", "class-math", true),
            ("class-*", "class-", true),
            ("class-*", "klass-math", false),
            ("c?ass", "class", true),
            ("c?ass", "cass", false),
            ("*", "", true),
            ("*", "anything", true),
            ("**", "", true),
            ("a*b*c", "a-x-b-y-c", true),
            ("a*b*c", "a-x-b-y", false),
            ("a*b*c", "abc", true),
            ("a*bc", "abcbc", true),
            ("a*bc", "abcb", false),
            ("*ab", "aab", true),
            ("?", "é", true),
            ("?", "", false),
            ("é*✓", "é--✓", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(Glob::new(p).unwrap().matches(t), want, "{p} ~ {t}");
        }
    }

    /// The automaton agrees with a plain recursive definition of a glob on
    /// every pattern and text over a small alphabet.
    #[test]
    fn agrees_with_the_definition() {
        fn reference(p: &[char], t: &[char]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some(('*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
                Some((c, rest)) => {
                    t.first().is_some_and(|x| *c == '?' || x == c) && reference(rest, &t[1..])
                }
            }
        }
        let alphabet = ['a', 'b', '*', '?'];
        let words = |n: usize, of: &[char]| -> Vec<Vec<char>> {
            let mut out = vec![Vec::new()];
            for len in 1..=n {
                let mut w = vec![0usize; len];
                loop {
                    out.push(w.iter().map(|&i| of[i]).collect());
                    let Some(k) = (0..len).rev().find(|&k| w[k] + 1 < of.len()) else {
                        break;
                    };
                    w[k] += 1;
                    w[k + 1..].iter_mut().for_each(|x| *x = 0);
                }
            }
            out
        };
        for p in words(4, &alphabet) {
            let g = Glob::new(&p.iter().collect::<String>()).unwrap();
            for t in words(5, &alphabet[..2]) {
                assert_eq!(
                    g.matches(&t.iter().collect::<String>()),
                    reference(&p, &t),
                    "{p:?} ~ {t:?}"
                );
            }
        }
    }

    #[test]
    fn a_glob_has_at_most_127_characters_besides_stars() {
        let most = "a*".repeat(MAX_GLOB_CHARS);
        assert!(Glob::new(&most).unwrap().matches(&"a".repeat(200)));
        assert!(Glob::new(&format!("{most}?")).is_err());
        // A literal label is compared as a string, whatever its length.
        assert!(Glob::new(&"a".repeat(300)).is_ok());
    }
}

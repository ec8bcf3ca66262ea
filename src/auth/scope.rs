//! What an API key may do (`Scopes`), and the scope a route requires as a
//! type (`Required`): the HTTP layer's `Authed<S>` extractor takes one of the
//! markers below (`scope::Admin`, `scope::Audit`, `scope::Issue`,
//! `scope::Any`) and refuses the request before the handler runs, so a handler
//! cannot forget its check. This is meilisearch's `GuardedData<P, D>` pattern;
//! the check itself is pure and lives here, away from actix.

use std::fmt;

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Ask for tokens, register sessions, ask for decisions.
    pub const ISSUE: Scopes = Scopes(1);
    /// Read the tenant's audit record.
    pub const AUDIT: Scopes = Scopes(2);
    /// Manage the tenant's keys and policy (and read its audit).
    pub const ADMIN: Scopes = Scopes(4);
    const NAMES: [(&'static str, Scopes); 3] = [
        ("issue", Scopes::ISSUE),
        ("audit", Scopes::AUDIT),
        ("admin", Scopes::ADMIN),
    ];

    pub fn contains(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }

    /// Parses scope names (`issue`, `audit`, `admin`); an unknown name is an error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scopes, String> {
        let mut s = Scopes::default();
        for n in names {
            let n = n.trim();
            if n.is_empty() {
                continue;
            }
            match Scopes::NAMES.iter().find(|(name, _)| *name == n) {
                Some((_, v)) => s = s.union(*v),
                None => {
                    return Err(format!(
                        "unknown scope {n:?}: expected issue, audit or admin"
                    ));
                }
            }
        }
        if s == Scopes::default() {
            return Err("at least one scope is required: issue, audit or admin".into());
        }
        Ok(s)
    }

    pub fn names(self) -> Vec<&'static str> {
        Scopes::NAMES
            .iter()
            .filter(|(_, v)| self.contains(*v))
            .map(|(n, _)| *n)
            .collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(" "))
    }
}

/// A key lacks the scope a route requires: 403 `insufficient_scope` over
/// HTTP, with this text as the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InsufficientScope(String);

/// A scope requirement known at compile time.
pub trait Required {
    /// `Ok` when a key holding `have` may use a route that requires `Self`.
    fn check(have: Scopes) -> Result<(), InsufficientScope>;

    /// `check` as a yes or no (the console words its own refusals).
    fn allows(have: Scopes) -> bool {
        Self::check(have).is_ok()
    }
}

fn one(have: Scopes, need: Scopes) -> Result<(), InsufficientScope> {
    if have.contains(need) {
        Ok(())
    } else {
        Err(InsufficientScope(format!(
            "this API key lacks the {need} scope"
        )))
    }
}

fn any_of(have: Scopes, needs: &[Scopes]) -> Result<(), InsufficientScope> {
    if needs.iter().any(|s| have.contains(*s)) {
        Ok(())
    } else {
        let names: Vec<String> = needs.iter().map(|s| s.to_string()).collect();
        Err(InsufficientScope(format!(
            "this API key needs one of the scopes: {}",
            names.join(", ")
        )))
    }
}

/// Ask for tokens and decisions, register and read sessions.
#[derive(Debug, Clone, Copy)]
pub struct Issue;

/// Read the tenant's audit record: the `audit` scope, or `admin` (which
/// includes reading the audit).
#[derive(Debug, Clone, Copy)]
pub struct Audit;

/// Manage the tenant's keys, policy and credentials.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// Any valid key, whatever its scopes (`/v1/whoami`).
#[derive(Debug, Clone, Copy)]
pub struct Any;

impl Required for Issue {
    fn check(have: Scopes) -> Result<(), InsufficientScope> {
        one(have, Scopes::ISSUE)
    }
}

impl Required for Audit {
    fn check(have: Scopes) -> Result<(), InsufficientScope> {
        any_of(have, &[Scopes::AUDIT, Scopes::ADMIN])
    }
}

impl Required for Admin {
    fn check(have: Scopes) -> Result<(), InsufficientScope> {
        one(have, Scopes::ADMIN)
    }
}

impl Required for Any {
    fn check(_: Scopes) -> Result<(), InsufficientScope> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_strictly() {
        assert_eq!(
            Scopes::parse(["issue", "admin"]).unwrap().to_string(),
            "issue admin"
        );
        assert!(Scopes::parse(["root"]).is_err());
        assert!(Scopes::parse([""]).is_err());
    }

    #[test]
    fn each_requirement_admits_exactly_its_scopes_with_the_same_refusals() {
        let (i, a, d) = (Scopes::ISSUE, Scopes::AUDIT, Scopes::ADMIN);
        assert!(Issue::check(i).is_ok());
        assert!(Audit::check(a).is_ok() && Audit::check(d).is_ok());
        assert!(Admin::check(d).is_ok());
        assert!(Any::check(i).is_ok() && Any::check(a).is_ok());
        for weaker in [a, d] {
            assert_eq!(
                Issue::check(weaker).unwrap_err().to_string(),
                "this API key lacks the issue scope"
            );
        }
        assert_eq!(
            Audit::check(i).unwrap_err().to_string(),
            "this API key needs one of the scopes: audit, admin"
        );
        for weaker in [i, a, i.union(a)] {
            assert_eq!(
                Admin::check(weaker).unwrap_err().to_string(),
                "this API key lacks the admin scope"
            );
        }
    }
}

//! Who a token is for: the authenticated end user, as vouched for by the tenant
//! app (API key) or by a verified identity-provider JWT.
//!
//! An identity carries its source: a user id or group vouched by one identity
//! provider is a different name from the same string vouched by the app or by
//! another provider, in rules, session owners and rate-limit buckets alike.

/// The identity a decision is made for and that is stamped into connection data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The user's id within its source (`user:<id>` / `idp:<p>:user:<id>` in rules).
    pub user_id: String,
    /// Display name, when known.
    pub name: Option<String>,
    /// Groups the user belongs to, within its source.
    pub groups: Vec<String>,
    /// The identity provider that vouched for this identity; `None` when the
    /// tenant app vouched for it (API-key callers).
    pub idp: Option<String>,
}

/// The owner of a session as registered by the app (`PUT /v1/sessions/{id}`):
/// `idp:<provider>:<user id>` names an end user of that identity provider;
/// `app:<user id>` or any other value names an app-vouched user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub idp: Option<&'a str>,
    pub user_id: &'a str,
}

impl<'a> Owner<'a> {
    pub fn parse(owner: &'a str) -> Owner<'a> {
        if let Some((p, id)) = owner
            .strip_prefix("idp:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(p, id)| !p.is_empty() && !id.is_empty())
        {
            return Owner {
                idp: Some(p),
                user_id: id,
            };
        }
        Owner {
            idp: None,
            user_id: owner
                .strip_prefix("app:")
                .filter(|id| !id.is_empty())
                .unwrap_or(owner),
        }
    }
}

impl Identity {
    /// Whether this identity is the registered owner `owner`: same source, same id.
    pub fn owns(&self, owner: &str) -> bool {
        let o = Owner::parse(owner);
        o.idp == self.idp.as_deref() && o.user_id == self.user_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: &str, idp: Option<&str>) -> Identity {
        Identity {
            user_id: id.into(),
            idp: idp.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn owners_carry_their_source() {
        assert!(who("alice", None).owns("alice"));
        assert!(who("alice", None).owns("app:alice"));
        assert!(!who("alice", Some("social")).owns("alice"));
        assert!(who("alice", Some("social")).owns("idp:social:alice"));
        assert!(!who("alice", Some("corp")).owns("idp:social:alice"));
        assert!(!who("alice", None).owns("idp:social:alice"));
        // An app user whose id merely looks like a provider's user is not that user.
        assert!(!who("idp:social:alice", None).owns("idp:social:alice"));
        assert!(who("idp:social:alice", None).owns("app:idp:social:alice"));
        // A provider's user id containing ':' keeps it.
        assert!(who("a:b", Some("corp")).owns("idp:corp:a:b"));
    }
}

//! Who is calling the issuance pipeline, once authenticated.

use crate::domain::Identity;

/// One of a tenant's applications, by one of its API keys, or one of its end
/// users, by a login token that one of its identity providers signed. Exactly
/// one of the two: there is no caller with both or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The application; it vouches for the end user in the request body.
    AppKey { key_id: String },
    /// An end user, vouched for by the identity provider `idp`.
    EndUser { idp: String, identity: Identity },
}

impl Caller {
    /// The API key used, for application callers.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Caller::AppKey { key_id } => Some(key_id),
            Caller::EndUser { .. } => None,
        }
    }

    /// The identity provider that vouched, for end users.
    pub fn idp(&self) -> Option<&str> {
        match self {
            Caller::AppKey { .. } => None,
            Caller::EndUser { idp, .. } => Some(idp),
        }
    }

    /// The verified identity, for end users.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::AppKey { .. } => None,
            Caller::EndUser { identity, .. } => Some(identity),
        }
    }
}

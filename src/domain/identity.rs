//! Who a token is for: the authenticated end user, as vouched for by the tenant
//! app (API key) or by a verified identity-provider JWT.

/// The identity a decision is made for and that is stamped into connection data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The user's id within the tenant app (`user:<id>` in rules).
    pub user_id: String,
    /// Display name, when known.
    pub name: Option<String>,
    /// Groups the user belongs to (`group:<name>` in rules).
    pub groups: Vec<String>,
}

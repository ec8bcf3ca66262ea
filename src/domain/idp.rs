//! An identity provider declared in a tenant's policy file
//! (`[[identity_providers]]`): whose login JWTs the broker accepts from end
//! users, and how their claims map to an `Identity`.

use crate::domain::SecretRef;

/// Where the provider's verification keys come from (exactly one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdpKeys {
    /// An HMAC secret (HS256/384/512), by reference.
    Secret(SecretRef),
    /// PEM public keys (RS*, PS*, ES*, EdDSA), by reference.
    PublicKeys(Vec<SecretRef>),
    /// A JWKS document, fetched and cached; refreshed on an unknown `kid`.
    JwksUrl(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpSpec {
    pub name: String,
    /// Exact `iss` the tokens must carry.
    pub issuer: String,
    /// Accepted `aud` values (one must match).
    pub audiences: Vec<String>,
    /// Pinned algorithm names (`RS256`, `ES256`, `EdDSA`, `HS256`, ...).
    pub algorithms: Vec<String>,
    pub keys: IdpKeys,
    /// Dotted path of the user id claim (default `sub`).
    pub user_id_claim: String,
    pub name_claim: Option<String>,
    pub groups_claim: Option<String>,
    /// Allowed clock skew in seconds (default 60).
    pub leeway: u64,
    /// Least time between two JWKS refetches caused by unknown `kid`s, in
    /// seconds (default 10).
    pub jwks_min_refresh: u64,
}

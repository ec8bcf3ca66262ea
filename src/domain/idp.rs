//! An identity provider declared in a tenant's policy file
//! (`[[identity_providers]]`): whose login JWTs the broker accepts from end
//! users, and how their claims map to an `Identity`. (No I/O here: the JWKS URL
//! is only parsed.)

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
    /// Least time between two JWKS fetches (unknown `kid`s, expired cache), in
    /// seconds (default 10, at least 1).
    pub jwks_min_refresh: u64,
    /// Longest time fetched JWKS keys are trusted before they are dropped and
    /// fetched again, in seconds (default 3600), so a key removed at the
    /// provider stops being trusted.
    pub jwks_max_age: u64,
}

/// A JWKS URL the broker may fetch: `https://`, or plain `http://` only when the
/// host is `localhost` or a loopback address (development and tests); no user
/// name or password in it. Parsed with the same parser the HTTP client uses, so
/// what is checked is what is fetched.
pub fn check_jwks_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err("a JWKS URL carries no user name or password".into());
    }
    // The parser has normalised the host (`127.1` is `127.0.0.1`, IPv6 in brackets).
    let host = match u.host_str() {
        Some(h) if !h.is_empty() => h,
        _ => return Err("a JWKS URL needs a host".into()),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    match u.scheme() {
        "https" => Ok(u),
        "http" if loopback => Ok(u),
        "http" => Err(
            "plain http is allowed only for localhost or loopback addresses; use https://".into(),
        ),
        other => Err(format!("{other}: is not allowed; use https://")),
    }
}

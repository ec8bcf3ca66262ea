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

/// Whether `ip` is a public unicast address: not loopback, private,
/// link-local, shared (CGNAT), unspecified, broadcast, multicast,
/// documentation, benchmarking or reserved, nor an IPv6 form of one of those
/// (IPv4-mapped, NAT64, unique local, site-local). What a tenant's JWKS URL
/// may reach unless the operator allows private addresses.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = a.segments();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0064 && s[1] == 0xff9b)
                || s[..6] == [0, 0, 0, 0, 0, 0])
        }
    }
}

/// The IP address a URL's host names, when it is an IP literal (the parser
/// has normalised it: `127.1` is `127.0.0.1`, IPv6 comes in brackets).
pub fn host_ip(url: &reqwest::Url) -> Option<std::net::IpAddr> {
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Whether a URL's host is this machine: `localhost`, or a loopback address
/// (an IPv4-mapped one included).
pub fn is_loopback_host(url: &reqwest::Url) -> bool {
    match host_ip(url) {
        Some(std::net::IpAddr::V4(a)) => a.is_loopback(),
        Some(std::net::IpAddr::V6(a)) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case("localhost")),
    }
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
    if u.host_str().is_none_or(str::is_empty) {
        return Err("a JWKS URL needs a host".into());
    }
    match u.scheme() {
        "https" => Ok(u),
        "http" if is_loopback_host(&u) => Ok(u),
        "http" => Err(
            "plain http is allowed only for localhost or loopback addresses; use https://".into(),
        ),
        other => Err(format!("{other}: is not allowed; use https://")),
    }
}

#[cfg(test)]
mod public_address_tests {
    use super::is_public;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in [
            "8.8.8.8",
            "93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }
}

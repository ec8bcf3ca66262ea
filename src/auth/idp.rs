//! End users' login JWTs: verified against the tenant's identity providers,
//! then mapped to an `Identity` that carries the provider's name. Time is a
//! parameter: `exp`, `nbf` and `iat` are checked here against `now` (with the
//! provider's leeway), and the JWKS cache ages by the same `now`; nothing here
//! reads the wall clock.
//!
//! Defences: the algorithm must be in the provider's pinned list and of the
//! key's family (an HS256 token is never checked with an RSA public key used
//! as an HMAC secret); `alg: none` is refused; the issuer selects the
//! provider and must match exactly; `iss`, `aud` and `exp` are required and
//! one audience must match; an HMAC secret shorter than 32 bytes (or empty)
//! makes the provider unavailable, never open. JWKS: fetched over https (plain
//! http only on loopback, checked at policy validation), from public
//! addresses only unless the operator allows others (`PublicOnly`), redirects never
//! followed, the body read up to 256 KiB and at most 100 keys, one fetch in
//! flight per provider (concurrent requests wait for it), fetches spaced by at
//! least `jwks_min_refresh` (1 s floor), and keys older than `jwks_max_age`
//! dropped and fetched again, so a key removed at the provider stops being
//! trusted. The claims that become the identity are checked at the edge: `sub`
//! a string (or an exact integer) of 1-256 bytes, `name` and groups bounded like
//! API-key users', no control characters anywhere; a bad one refuses the token.

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;

use crate::domain::{Identity, IdpKeys, IdpSpec, SecretRef, check_jwks_url};
use crate::secrets::Resolved;

/// Shortest HMAC secret an identity provider may use (HS256's output size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Largest JWKS document read; a larger one is refused whole.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys a JWKS may hold; a set with more is refused whole.
pub const MAX_JWKS_KEYS: usize = 100;
/// Bounds of the claims that become an identity (as for API-key users).
pub const MAX_CLAIM_LEN: usize = 256;
pub const MAX_GROUPS: usize = 64;
/// How far `now` may run backwards (racing requests) before cache ages are
/// treated as unknown.
const SKEW_MS: i64 = 5_000;

/// Why an end user's token was refused (401, except `KeysUnavailable`: 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    #[error("the login token is not a well-formed JWT")]
    Malformed,
    #[error("the login token's algorithm {0} is not accepted by this tenant")]
    AlgorithmNotAllowed(String),
    #[error("the login token's issuer is missing or not one of this tenant's identity providers")]
    InvalidIssuer,
    #[error("the login token's audience is missing or not accepted")]
    InvalidAudience,
    #[error("the login token has no exp claim (a numeric expiry is required)")]
    MissingExpiry,
    #[error("the login token has expired")]
    Expired,
    #[error("the login token is not valid yet")]
    NotYetValid,
    #[error("the login token's signing key (kid) is unknown")]
    UnknownKid,
    #[error("the login token's signature does not verify")]
    BadSignature,
    #[error("the login token has no usable {0} claim")]
    MissingUserClaim(String),
    #[error("the login token's {claim} claim is refused: {why}")]
    InvalidUserClaim { claim: String, why: String },
    #[error("the identity provider's keys are unavailable")]
    KeysUnavailable,
    /// `enter` refused: the caller's address has too many checks in flight.
    #[error("too many login checks in progress from this address")]
    TooManyInFlight,
}

impl IdpError {
    pub fn code(&self) -> &'static str {
        match self {
            IdpError::Malformed => "malformed_token",
            IdpError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            IdpError::InvalidIssuer => "invalid_issuer",
            IdpError::InvalidAudience => "invalid_audience",
            IdpError::MissingExpiry => "missing_exp",
            IdpError::Expired => "token_expired",
            IdpError::NotYetValid => "token_not_yet_valid",
            IdpError::UnknownKid => "unknown_kid",
            IdpError::BadSignature => "invalid_signature",
            IdpError::MissingUserClaim(_) => "missing_user_claim",
            IdpError::InvalidUserClaim { .. } => "invalid_user_claim",
            IdpError::KeysUnavailable => "idp_unavailable",
            IdpError::TooManyInFlight => "rate_limited",
        }
    }

    /// The claim at fault, when one is.
    pub fn claim(&self) -> Option<&str> {
        match self {
            IdpError::InvalidIssuer => Some("iss"),
            IdpError::InvalidAudience => Some("aud"),
            IdpError::MissingExpiry | IdpError::Expired => Some("exp"),
            IdpError::MissingUserClaim(c) | IdpError::InvalidUserClaim { claim: c, .. } => Some(c),
            _ => None,
        }
    }
}

/// A secret the resolver already read (inside the tenant's namespace).
fn resolve_secret<'a>(secrets: &'a Resolved, r: &SecretRef) -> Result<&'a [u8], String> {
    secrets.get(r).map_err(|e| e.to_string())
}

struct Key {
    kid: Option<String>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// The refusal of a JWKS URL that leads to a non-public address.
fn private_refusal(host: &str) -> String {
    format!(
        "jwks_url: {host} is not a public address (the operator allows such addresses with jwks_private_addresses)"
    )
}

/// Refuses a JWKS URL whose host is `localhost` or a non-public IP literal
/// (the HTTP client resolves no name for a literal, so `PublicOnly` would not see it).
fn refuse_private_host(url: &reqwest::Url) -> Result<(), String> {
    use crate::domain::idp::{host_ip, is_public};
    let host = url.host_str().unwrap_or_default();
    let localhost =
        host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost");
    if localhost || host_ip(url).is_some_and(|a| !is_public(a)) {
        return Err(private_refusal(host));
    }
    Ok(())
}

/// Resolves a JWKS host to its public addresses only, at every connection
/// (so a name that later resolves to an internal address is refused then):
/// a name with none left fails the fetch.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<std::net::SocketAddr> = all
                .into_iter()
                .filter(|a| crate::domain::idp::is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(private_refusal(&host).into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// Fetched JWKS keys and when (the request's `now`, in unix milliseconds).
#[derive(Default)]
struct JwksCache {
    keys: HashMap<String, (AlgorithmFamily, DecodingKey)>,
    /// When the keys in `keys` were fetched; `None`: nothing trusted.
    fetched_at: Option<i64>,
    /// When the last fetch started, successful or not (spacing).
    attempted_at: Option<i64>,
    /// Bumped when a fetch finishes, so requests that waited for it use its result.
    generation: u64,
    last_failed: bool,
}

struct Jwks {
    url: reqwest::Url,
    client: reqwest::Client,
    cache: RwLock<JwksCache>,
    /// Single flight: held for the duration of a fetch.
    fetching: tokio::sync::Mutex<()>,
}

enum Keys {
    Static(Vec<Key>),
    Jwks(Box<Jwks>),
}

/// A loaded identity provider.
pub struct IdentityProvider {
    pub spec: IdpSpec,
    algorithms: Vec<Algorithm>,
    keys: Keys,
}

impl fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("name", &self.spec.name)
            .field("issuer", &self.spec.issuer)
            .finish()
    }
}

fn parse_alg(name: &str) -> Result<Algorithm, String> {
    name.parse::<Algorithm>()
        .map_err(|_| format!("unknown algorithm {name:?}"))
}

fn family_of_pem(pem: &[u8]) -> Result<(AlgorithmFamily, DecodingKey), String> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((AlgorithmFamily::Rsa, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((AlgorithmFamily::Ec, k));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((AlgorithmFamily::Ed, k));
    }
    Err("not an RSA, EC or Ed25519 public key in PEM".into())
}

/// Elapsed milliseconds from `then` to `now`, or `None` when `now` is further
/// before `then` than racing requests explain (the clock went back: age unknown).
fn elapsed(now: i64, then: i64) -> Option<i64> {
    let d = now.saturating_sub(then);
    (d >= -SKEW_MS).then_some(d.max(0))
}

/// An HMAC key from resolved secret bytes: refused when shorter than 32 bytes
/// (an empty secret would let anyone sign).
fn hmac_key(r: &SecretRef, secret: &[u8]) -> Result<DecodingKey, String> {
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(format!(
            "secret {r} is shorter than {MIN_HMAC_SECRET_BYTES} bytes; an HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes"
        ));
    }
    Ok(DecodingKey::from_secret(secret))
}

impl IdentityProvider {
    /// Builds the provider from its keys, resolved beforehand by
    /// `crate::secrets` (the JWKS is fetched on first use).
    /// Unless `private_addresses` (the operator's `jwks_private_addresses`),
    /// a JWKS URL may reach public addresses only: an IP-literal host is
    /// checked here, and names through `PublicOnly` at every connection.
    pub fn load(
        spec: &IdpSpec,
        secrets: &Resolved,
        private_addresses: bool,
    ) -> Result<IdentityProvider, String> {
        let algorithms = spec
            .algorithms
            .iter()
            .map(|a| parse_alg(a))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = match &spec.keys {
            IdpKeys::Secret(r) => Keys::Static(vec![Key {
                kid: None,
                family: AlgorithmFamily::Hmac,
                key: hmac_key(
                    r,
                    resolve_secret(secrets, r).map_err(|e| format!("secret {r}: {e}"))?,
                )?,
            }]),
            IdpKeys::PublicKeys(refs) => {
                let mut keys = Vec::new();
                for r in refs {
                    let pem =
                        resolve_secret(secrets, r).map_err(|e| format!("public key {r}: {e}"))?;
                    let (family, key) =
                        family_of_pem(pem).map_err(|e| format!("public key {r}: {e}"))?;
                    keys.push(Key {
                        kid: None,
                        family,
                        key,
                    });
                }
                Keys::Static(keys)
            }
            IdpKeys::JwksUrl(url) => {
                let url = check_jwks_url(url).map_err(|e| format!("jwks_url: {e}"))?;
                let mut client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .connect_timeout(Duration::from_secs(3))
                    // A redirect could lead anywhere (an internal address): never follow.
                    .redirect(reqwest::redirect::Policy::none());
                if !private_addresses {
                    refuse_private_host(&url)?;
                    client = client.dns_resolver(std::sync::Arc::new(PublicOnly));
                }
                Keys::Jwks(Box::new(Jwks {
                    url,
                    client: client.build().map_err(|e| format!("HTTP client: {e}"))?,
                    cache: Default::default(),
                    fetching: tokio::sync::Mutex::new(()),
                }))
            }
        };
        Ok(IdentityProvider {
            spec: spec.clone(),
            algorithms,
            keys,
        })
    }

    /// Fetches and parses the JWKS: no redirects, a bounded body, a bounded key count.
    async fn fetch_jwks(
        &self,
        url: &reqwest::Url,
        client: &reqwest::Client,
    ) -> Result<HashMap<String, (AlgorithmFamily, DecodingKey)>, String> {
        use std::sync::atomic::Ordering::Relaxed;
        crate::metrics::IDP_FETCHES.fetch_add(1, Relaxed);
        let r = self.fetch_jwks_inner(url, client).await;
        if r.is_err() {
            crate::metrics::IDP_FETCH_FAILURES.fetch_add(1, Relaxed);
        }
        r
    }

    async fn fetch_jwks_inner(
        &self,
        url: &reqwest::Url,
        client: &reqwest::Client,
    ) -> Result<HashMap<String, (AlgorithmFamily, DecodingKey)>, String> {
        let mut resp = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        // 3xx included: a redirect is not followed, so it is a failure.
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("the key set is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the key set is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        if set.keys.len() > MAX_JWKS_KEYS {
            return Err(format!(
                "the key set has {} keys; at most {MAX_JWKS_KEYS} are accepted",
                set.keys.len()
            ));
        }
        let mut fresh = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk))
            else {
                continue;
            };
            let family = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
                // Never accept shared secrets (or anything unknown) from a URL.
                _ => continue,
            };
            fresh.insert(kid, (family, key));
        }
        Ok(fresh)
    }

    /// The JWKS key `kid` as of `now_ms`: from the cache while it is younger
    /// than `jwks_max_age`, else from one fetch shared by every request that
    /// needs it, at most one fetch per `jwks_min_refresh`.
    async fn jwks_key(
        &self,
        kid: &str,
        now_ms: i64,
    ) -> Result<(AlgorithmFamily, DecodingKey), IdpError> {
        let Keys::Jwks(jwks) = &self.keys else {
            return Err(IdpError::KeysUnavailable);
        };
        let Jwks {
            url,
            client,
            cache,
            fetching,
        } = &**jwks;
        let max_age = (self.spec.jwks_max_age as i64).saturating_mul(1000);
        let min_gap = (self.spec.jwks_min_refresh.max(1) as i64).saturating_mul(1000);
        let fresh = |c: &JwksCache| {
            c.fetched_at
                .and_then(|t| elapsed(now_ms, t))
                .is_some_and(|d| d < max_age)
        };
        let lookup = |c: &JwksCache| -> Option<(AlgorithmFamily, DecodingKey)> {
            if fresh(c) {
                c.keys.get(kid).map(|(f, k)| (*f, k.clone()))
            } else {
                None
            }
        };
        let unavailable = || IdpError::KeysUnavailable;
        let miss = |c: &JwksCache| {
            if c.last_failed || !fresh(c) {
                IdpError::KeysUnavailable
            } else {
                IdpError::UnknownKid
            }
        };
        let seen = {
            let c = cache.read().map_err(|_| unavailable())?;
            if let Some(k) = lookup(&c) {
                return Ok(k);
            }
            c.generation
        };
        // Single flight: whoever holds this fetches; the others wait for its result.
        let _flight = fetching.lock().await;
        {
            let c = cache.read().map_err(|_| unavailable())?;
            if let Some(k) = lookup(&c) {
                return Ok(k);
            }
            if c.generation != seen {
                // A fetch finished while this request waited: its answer stands.
                return Err(miss(&c));
            }
            if c.attempted_at
                .and_then(|t| elapsed(now_ms, t))
                .is_some_and(|d| d < min_gap)
            {
                return Err(miss(&c));
            }
        }
        {
            let mut c = cache.write().map_err(|_| unavailable())?;
            c.attempted_at = Some(now_ms);
            if !fresh(&c) {
                // Too old to trust, whatever the fetch brings.
                c.keys.clear();
                c.fetched_at = None;
            }
        }
        let result = self.fetch_jwks(url, client).await;
        let mut c = cache.write().map_err(|_| unavailable())?;
        c.generation += 1;
        match result {
            Ok(keys) => {
                c.keys = keys;
                c.fetched_at = Some(now_ms);
                c.last_failed = false;
            }
            Err(e) => {
                tracing::warn!(idp = %self.spec.name, error = %e, "JWKS fetch failed; keys unavailable");
                c.last_failed = true;
            }
        }
        lookup(&c).ok_or_else(|| miss(&c))
    }

    /// Verifies `token` as of `now_ms` (unix milliseconds) and maps its claims
    /// to an identity.
    pub async fn verify(&self, token: &str, now_ms: i64) -> Result<Identity, IdpError> {
        self.verify_gated(token, now_ms, || true).await
    }

    /// `verify`, asking `enter` right before the signature checks, once the
    /// keys are at hand (so waiting for another request's JWKS fetch is not
    /// counted as work); `false` refuses with `TooManyInFlight`.
    pub async fn verify_gated(
        &self,
        token: &str,
        now_ms: i64,
        enter: impl FnOnce() -> bool,
    ) -> Result<Identity, IdpError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            if header_alg(token).is_some_and(|a| a.eq_ignore_ascii_case("none")) {
                IdpError::AlgorithmNotAllowed("none".into())
            } else {
                IdpError::Malformed
            }
        })?;
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(IdpError::AlgorithmNotAllowed(format!("{alg:?}")));
        }
        let mut v = Validation::new(alg);
        // Checked below, against `now`, with presence required.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        v.set_issuer(&[&self.spec.issuer]);
        v.set_audience(&self.spec.audiences);
        let claims: Value = match &self.keys {
            Keys::Static(keys) => {
                let candidates: Vec<&Key> = keys
                    .iter()
                    .filter(|k| k.family == alg.family())
                    .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
                    .collect();
                if candidates.is_empty() {
                    return Err(IdpError::AlgorithmNotAllowed(format!("{alg:?}")));
                }
                // Static PEM keys carry no kid, so the kid filter above never
                // narrows them: every key of the family is tried (at most
                // MAX_IDP_PUBLIC_KEYS, bounded by the policy parser).
                if !enter() {
                    return Err(IdpError::TooManyInFlight);
                }
                let mut last = IdpError::BadSignature;
                let mut found = None;
                for k in candidates {
                    match jsonwebtoken::decode::<Value>(token, &k.key, &v) {
                        Ok(d) => {
                            found = Some(d.claims);
                            break;
                        }
                        Err(e) => last = map_err(e.kind()),
                    }
                }
                found.ok_or(last)?
            }
            Keys::Jwks(_) => {
                let kid = header.kid.clone().ok_or(IdpError::UnknownKid)?;
                let (family, key) = self.jwks_key(&kid, now_ms).await?;
                if family != alg.family() {
                    return Err(IdpError::AlgorithmNotAllowed(format!("{alg:?}")));
                }
                if !enter() {
                    return Err(IdpError::TooManyInFlight);
                }
                jsonwebtoken::decode::<Value>(token, &key, &v)
                    .map_err(|e| map_err(e.kind()))?
                    .claims
            }
        };
        self.check_registered_claims(&claims, now_ms)?;
        self.identity(&claims)
    }

    /// `iss`, `aud` and `exp` are required whatever the library allows;
    /// `nbf` and `iat`, when present, must be numbers not in the future.
    fn check_registered_claims(&self, claims: &Value, now_ms: i64) -> Result<(), IdpError> {
        match claims.get("iss") {
            Some(Value::String(s)) if *s == self.spec.issuer => {}
            _ => return Err(IdpError::InvalidIssuer),
        }
        let accepted = |a: &Value| {
            a.as_str()
                .is_some_and(|a| self.spec.audiences.iter().any(|x| x == a))
        };
        let aud_ok = match claims.get("aud") {
            Some(a @ Value::String(_)) => accepted(a),
            Some(Value::Array(list)) => list.iter().any(accepted),
            _ => false,
        };
        if !aud_ok {
            return Err(IdpError::InvalidAudience);
        }
        // NumericDate may be fractional: compare in f64, no integer overflow.
        let now = now_ms as f64 / 1000.0;
        let leeway = self.spec.leeway as f64;
        let exp = match claims.get("exp") {
            Some(Value::Number(n)) => n.as_f64().ok_or(IdpError::MissingExpiry)?,
            _ => return Err(IdpError::MissingExpiry),
        };
        if exp + leeway < now {
            return Err(IdpError::Expired);
        }
        for c in ["nbf", "iat"] {
            match claims.get(c) {
                None => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(|t| t - leeway > now) => {
                    return Err(IdpError::NotYetValid);
                }
                Some(Value::Number(_)) => {}
                Some(_) => return Err(IdpError::Malformed),
            }
        }
        Ok(())
    }

    fn identity(&self, claims: &Value) -> Result<Identity, IdpError> {
        let sub_path = &self.spec.user_id_claim;
        let bad = |claim: &str, why: &str| IdpError::InvalidUserClaim {
            claim: claim.to_owned(),
            why: why.to_owned(),
        };
        let user_id = match claim(claims, sub_path) {
            None | Some(Value::Null) => return Err(IdpError::MissingUserClaim(sub_path.clone())),
            Some(Value::String(s)) => s.clone(),
            // An integer, converted exactly; a float (or an integer too large to
            // be exact) could name two users with one number.
            Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => i.to_string(),
                (None, Some(u)) => u.to_string(),
                _ => return Err(bad(sub_path, "a numeric user id must be an exact integer")),
            },
            Some(_) => return Err(bad(sub_path, "the user id must be a string or an integer")),
        };
        check_claim_text(sub_path, &user_id)?;
        let name = match self.spec.name_claim.as_deref() {
            None => None,
            Some(p) => match claim(claims, p) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => {
                    check_claim_text(p, s)?;
                    Some(s.clone())
                }
                Some(_) => return Err(bad(p, "the name must be a string")),
            },
        };
        let groups = match self.spec.groups_claim.as_deref() {
            None => Vec::new(),
            Some(p) => {
                let groups: Vec<String> = match claim(claims, p) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|g| {
                            g.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| bad(p, "every group must be a string"))
                        })
                        .collect::<Result<_, _>>()?,
                    // ASCII spaces only (as OAuth scopes): Unicode spaces
                    // inside a value a user influences must not split it.
                    Some(Value::String(s)) => s
                        .split(' ')
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    Some(_) => {
                        return Err(bad(
                            p,
                            "groups must be an array of strings or a space-separated string",
                        ));
                    }
                };
                if groups.len() > MAX_GROUPS {
                    return Err(bad(p, &format!("at most {MAX_GROUPS} groups")));
                }
                for g in &groups {
                    check_claim_text(p, g)?;
                }
                groups
            }
        };
        Ok(Identity {
            user_id,
            name,
            groups,
            idp: Some(self.spec.name.clone()),
        })
    }
}

/// A claim that becomes part of an identity: 1-256 bytes, no control
/// characters (NUL and newlines included). Refused, never truncated.
fn check_claim_text(claim: &str, v: &str) -> Result<(), IdpError> {
    if v.is_empty() || v.len() > MAX_CLAIM_LEN || v.chars().any(char::is_control) {
        return Err(IdpError::InvalidUserClaim {
            claim: claim.to_owned(),
            why: format!("must be 1-{MAX_CLAIM_LEN} bytes without control characters"),
        });
    }
    Ok(())
}

fn map_err(kind: &ErrorKind) -> IdpError {
    match kind {
        ErrorKind::InvalidSignature => IdpError::BadSignature,
        ErrorKind::InvalidIssuer => IdpError::InvalidIssuer,
        ErrorKind::InvalidAudience => IdpError::InvalidAudience,
        ErrorKind::InvalidAlgorithm => IdpError::AlgorithmNotAllowed("(key mismatch)".into()),
        ErrorKind::ExpiredSignature => IdpError::Expired,
        ErrorKind::ImmatureSignature => IdpError::NotYetValid,
        _ => IdpError::Malformed,
    }
}

/// A dotted path into the claims (`realm_access.roles`).
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// The raw `alg` of a token's header, without trusting it.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let h = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

/// Verifies an end user's login token: `provider` finds the tenant's identity
/// provider whose issuer is the token's (unverified) `iss`, loaded or not.
/// Answers the provider's name and the identity it vouches for. `enter` is
/// asked before any signature check (see `IdentityProvider::verify`).
pub async fn verify_login<'a>(
    token: &str,
    provider: impl FnOnce(&str) -> Option<&'a (String, Result<IdentityProvider, String>)>,
    now_ms: i64,
    enter: impl FnOnce() -> bool,
) -> Result<(String, Identity), IdpError> {
    let issuer = peek_issuer(token);
    match issuer.as_deref().and_then(provider) {
        // No iss (or an unknown one): a token whose issuer is not named is refused.
        None if issuer.is_some() || is_jwt_shaped(token) => Err(IdpError::InvalidIssuer),
        None => Err(IdpError::Malformed),
        // A provider that failed to load answers `idp_unavailable`, never opens.
        Some((_, Err(_))) => Err(IdpError::KeysUnavailable),
        Some((name, Ok(idp))) => idp
            .verify_gated(token, now_ms, enter)
            .await
            .map(|identity| (name.clone(), identity)),
    }
}

/// The unverified `iss` of a token, used only to pick which provider verifies it.
pub fn peek_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let p = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// Whether `token` has the three-part shape of a JWT with a JSON payload
/// (used to tell "no issuer" from "not a JWT at all").
pub fn is_jwt_shaped(token: &str) -> bool {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(_), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v.is_object())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::dns::Resolve;

    #[tokio::test]
    async fn a_name_that_resolves_only_to_internal_addresses_is_refused() {
        // `localhost` is in every host's /etc/hosts, on loopback.
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let e = PublicOnly.resolve(name).await.err().expect("refused");
        assert!(e.to_string().contains("not a public address"), "{e}");
    }

    #[test]
    fn localhost_and_internal_literals_are_refused_before_any_connection() {
        for url in [
            "http://localhost:9/jwks",
            "https://LOCALHOST/jwks",
            "https://login.localhost/jwks",
            "http://127.0.0.1:9/jwks",
            "https://10.1.2.3/jwks",
            "https://169.254.169.254/latest",
            "https://[::1]/jwks",
            "https://[fd00::1]/jwks",
            "https://[::ffff:10.0.0.1]/jwks",
        ] {
            let u = reqwest::Url::parse(url).unwrap();
            assert!(refuse_private_host(&u).is_err(), "{url}");
        }
        for url in [
            "https://login.example.com/jwks",
            "https://93.184.216.34/jwks",
        ] {
            let u = reqwest::Url::parse(url).unwrap();
            assert!(refuse_private_host(&u).is_ok(), "{url}");
        }
    }
}

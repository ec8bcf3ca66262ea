//! End users' login JWTs: verified against the tenant's identity providers,
//! then mapped to an `Identity`. Time is a parameter: `exp`, `nbf` and `iat`
//! are checked here against `now` (with the provider's leeway), not against
//! the library's clock.
//!
//! Defences: the algorithm must be in the provider's pinned list and of the
//! key's family (an HS256 token is never checked with an RSA public key used
//! as an HMAC secret); `alg: none` is refused; the issuer selects the
//! provider and must match exactly; one audience must match; a JWKS is
//! refetched on an unknown `kid` at most once per `jwks_min_refresh` (10 s by
//! default), so unknown kids cannot make the broker hammer the provider.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;

use crate::domain::{Identity, IdpKeys, IdpSpec, SecretRef};

/// Why an end user's token was refused (all 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    #[error("the login token is not a well-formed JWT")]
    Malformed,
    #[error("the login token's algorithm {0} is not accepted by this tenant")]
    AlgorithmNotAllowed(String),
    #[error("the login token's issuer is not one of this tenant's identity providers")]
    InvalidIssuer,
    #[error("the login token's audience is not accepted")]
    InvalidAudience,
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
    #[error("the identity provider's keys are unavailable")]
    KeysUnavailable,
}

impl IdpError {
    pub fn code(&self) -> &'static str {
        match self {
            IdpError::Malformed => "malformed_token",
            IdpError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            IdpError::InvalidIssuer => "invalid_issuer",
            IdpError::InvalidAudience => "invalid_audience",
            IdpError::Expired => "token_expired",
            IdpError::NotYetValid => "token_not_yet_valid",
            IdpError::UnknownKid => "unknown_kid",
            IdpError::BadSignature => "invalid_signature",
            IdpError::MissingUserClaim(_) => "missing_user_claim",
            IdpError::KeysUnavailable => "idp_unavailable",
        }
    }
}

/// Reads a secret reference where the broker runs (shared with the signers).
fn resolve_secret(r: &SecretRef) -> Result<Vec<u8>, String> {
    crate::tokens::resolve(r).map_err(|e| e.to_string())
}

struct Key {
    kid: Option<String>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

enum Keys {
    Static(Vec<Key>),
    Jwks {
        url: String,
        client: reqwest::Client,
        cache: tokio::sync::RwLock<HashMap<String, (AlgorithmFamily, DecodingKey)>>,
        last_fetch: Mutex<Option<Instant>>,
    },
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

impl IdentityProvider {
    /// Resolves the provider's keys (not the JWKS, fetched on first use).
    pub fn load(spec: &IdpSpec) -> Result<IdentityProvider, String> {
        let algorithms = spec
            .algorithms
            .iter()
            .map(|a| parse_alg(a))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = match &spec.keys {
            IdpKeys::Secret(r) => Keys::Static(vec![Key {
                kid: None,
                family: AlgorithmFamily::Hmac,
                key: DecodingKey::from_secret(
                    &resolve_secret(r).map_err(|e| format!("secret {r}: {e}"))?,
                ),
            }]),
            IdpKeys::PublicKeys(refs) => {
                let mut keys = Vec::new();
                for r in refs {
                    let pem = resolve_secret(r).map_err(|e| format!("public key {r}: {e}"))?;
                    let (family, key) =
                        family_of_pem(&pem).map_err(|e| format!("public key {r}: {e}"))?;
                    keys.push(Key {
                        kid: None,
                        family,
                        key,
                    });
                }
                Keys::Static(keys)
            }
            IdpKeys::JwksUrl(url) => Keys::Jwks {
                url: url.clone(),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| format!("HTTP client: {e}"))?,
                cache: Default::default(),
                last_fetch: Mutex::new(None),
            },
        };
        Ok(IdentityProvider {
            spec: spec.clone(),
            algorithms,
            keys,
        })
    }

    /// Fetches the JWKS when allowed by the refresh bound; returns whether it did.
    async fn refresh_jwks(&self) -> Result<bool, IdpError> {
        let Keys::Jwks {
            url,
            client,
            cache,
            last_fetch,
        } = &self.keys
        else {
            return Ok(false);
        };
        {
            let mut last = last_fetch.lock().map_err(|_| IdpError::KeysUnavailable)?;
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(self.spec.jwks_min_refresh)) {
                return Ok(false);
            }
            *last = Some(Instant::now());
        }
        let set: JwkSet = client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                tracing::warn!(idp = ?self.spec.name, error = ?e.to_string(), "JWKS fetch failed");
                IdpError::KeysUnavailable
            })?
            .json()
            .await
            .map_err(|_| IdpError::KeysUnavailable)?;
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
        *cache.write().await = fresh;
        Ok(true)
    }

    /// Verifies `token` and maps its claims to an identity.
    pub async fn verify(&self, token: &str, now: i64) -> Result<Identity, IdpError> {
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
        v.validate_exp = false; // checked below against `now`
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
            Keys::Jwks { cache, .. } => {
                let kid = header.kid.clone().ok_or(IdpError::UnknownKid)?;
                let mut entry = cache.read().await.get(&kid).map(|(f, k)| (*f, k.clone()));
                if entry.is_none() && self.refresh_jwks().await? {
                    entry = cache.read().await.get(&kid).map(|(f, k)| (*f, k.clone()));
                }
                let (family, key) = entry.ok_or(IdpError::UnknownKid)?;
                if family != alg.family() {
                    return Err(IdpError::AlgorithmNotAllowed(format!("{alg:?}")));
                }
                jsonwebtoken::decode::<Value>(token, &key, &v)
                    .map_err(|e| map_err(e.kind()))?
                    .claims
            }
        };
        let leeway = self.spec.leeway as i64;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(IdpError::Malformed)?;
        if exp + leeway < now {
            return Err(IdpError::Expired);
        }
        for c in ["nbf", "iat"] {
            if let Some(t) = claims.get(c).and_then(Value::as_i64)
                && t - leeway > now
            {
                return Err(IdpError::NotYetValid);
            }
        }
        self.identity(&claims)
    }

    fn identity(&self, claims: &Value) -> Result<Identity, IdpError> {
        let user_id = claim(claims, &self.spec.user_id_claim)
            .and_then(|v| match v {
                Value::String(s) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .ok_or_else(|| IdpError::MissingUserClaim(self.spec.user_id_claim.clone()))?;
        let name = self
            .spec
            .name_claim
            .as_deref()
            .and_then(|p| claim(claims, p))
            .and_then(Value::as_str)
            .map(|s| s.chars().take(256).collect());
        let groups = match self
            .spec
            .groups_claim
            .as_deref()
            .and_then(|p| claim(claims, p))
        {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(Identity {
            user_id,
            name,
            groups,
        })
    }
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

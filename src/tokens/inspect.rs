//! Decoding any of the three formats without a key (`token inspect`), and
//! checking one against a tenant's credential.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Serialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::encoding::{b64_lenient, hex_lower, percent_decode};
use super::{Signer, TokenFormat};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("a T1 token must be T1== followed by base64 of partner_id=…&sig=…:data")]
    BadT1,
    #[error("a JWT must be three base64url parts of JSON")]
    BadJwt,
    #[error(
        "the JWT is neither an OpenTok project token (ist=project) nor a Vonage application token (application_id)"
    )]
    UnknownJwt,
}

/// A decoded token (no secret is needed, none is shown).
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub format: TokenFormat,
    /// The API key (`partner_id`/`iss`) or application id.
    pub issuer: Option<String>,
    pub session_id: Option<String>,
    pub role: Option<String>,
    pub expire_time: Option<i64>,
    /// `jti`, or the T1 nonce.
    pub token_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<Value>,
    /// JWT claims, or the T1 fields in their order.
    pub claims: Value,
    #[serde(skip)]
    signed: String,
    #[serde(skip)]
    signature: String,
}

/// The result of checking a token against a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub valid: bool,
    pub detail: String,
}

impl Verification {
    pub fn valid(&self) -> bool {
        self.valid
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

fn t1(token: &str) -> Result<Inspection, InspectError> {
    let body = token.strip_prefix("T1==").ok_or(InspectError::BadT1)?;
    let inner = String::from_utf8(b64_lenient(body).ok_or(InspectError::BadT1)?)
        .map_err(|_| InspectError::BadT1)?;
    let (head, data) = inner.split_once(':').ok_or(InspectError::BadT1)?;
    let mut partner = None;
    let mut sig = None;
    for kv in head.split('&') {
        match kv.split_once('=') {
            Some(("partner_id", v)) => partner = Some(v.to_owned()),
            Some(("sig", v)) => sig = Some(v.to_owned()),
            _ => {}
        }
    }
    let mut fields = serde_json::Map::new();
    let mut order = Vec::new();
    for kv in data.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or(InspectError::BadT1)?;
        let v = percent_decode(v).ok_or(InspectError::BadT1)?;
        order.push(Value::Array(vec![
            Value::String(k.to_owned()),
            Value::String(v.clone()),
        ]));
        fields.insert(k.to_owned(), Value::String(v));
    }
    let get = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Inspection {
        format: TokenFormat::T1,
        issuer: partner,
        session_id: get("session_id"),
        role: get("role"),
        expire_time: get("expire_time").and_then(|v| v.parse().ok()),
        token_id: get("nonce"),
        header: None,
        claims: Value::Array(order),
        signed: data.to_owned(),
        signature: sig.ok_or(InspectError::BadT1)?,
    })
}

fn jwt(token: &str) -> Result<Inspection, InspectError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InspectError::BadJwt);
    };
    let dec = |x: &str| -> Result<Value, InspectError> {
        serde_json::from_slice(&b64_lenient(x).ok_or(InspectError::BadJwt)?)
            .map_err(|_| InspectError::BadJwt)
    };
    let header = dec(h)?;
    let claims = dec(p)?;
    let s_ = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let (format, issuer) = if claims.get("ist").and_then(Value::as_str) == Some("project") {
        (TokenFormat::OpentokJwt, s_("iss"))
    } else if claims.get("application_id").is_some() {
        (TokenFormat::VonageJwt, s_("application_id"))
    } else {
        return Err(InspectError::UnknownJwt);
    };
    Ok(Inspection {
        format,
        issuer,
        session_id: s_("session_id"),
        role: s_("role"),
        expire_time: claims.get("exp").and_then(Value::as_i64),
        token_id: s_("jti"),
        header: Some(header),
        signed: format!("{h}.{p}"),
        signature: s.to_owned(),
        claims,
    })
}

/// Decodes a token of any of the three formats.
pub fn inspect(token: &str) -> Result<Inspection, InspectError> {
    let token = token.trim();
    if token.starts_with("T1==") {
        t1(token)
    } else {
        jwt(token)
    }
}

impl Inspection {
    pub fn issuer(&self) -> Option<String> {
        self.issuer.clone()
    }

    /// Expired at `now` (a token without an expiry is reported expired: the
    /// broker never makes one).
    pub fn expired(&self, now: i64) -> bool {
        self.expire_time.is_none_or(|e| e <= now)
    }

    /// Checks the signature with `signer` (and that the token names it).
    pub fn verify(&self, signer: &Signer) -> Verification {
        let fail = |d: &str| Verification {
            valid: false,
            detail: d.to_owned(),
        };
        if self.issuer.as_deref() != Some(signer.owner_id()) {
            return fail("the token names another API key or application than this credential");
        }
        let ok = match (self.format, signer.secret(), signer.rsa()) {
            (TokenFormat::T1, Some(secret), _) => {
                let want = hex_lower(&super::t1::hmac_sha1(secret, self.signed.as_bytes()));
                bool::from(want.as_bytes().ct_eq(self.signature.as_bytes()))
            }
            (TokenFormat::OpentokJwt, Some(secret), _) => jsonwebtoken::crypto::verify(
                &self.signature,
                self.signed.as_bytes(),
                &DecodingKey::from_secret(secret),
                Algorithm::HS256,
            )
            .unwrap_or(false),
            (TokenFormat::VonageJwt, _, Some(rsa)) => jsonwebtoken::crypto::verify(
                &self.signature,
                self.signed.as_bytes(),
                &rsa.decoding_key(),
                Algorithm::RS256,
            )
            .unwrap_or(false),
            _ => return fail("the credential is of another kind than the token"),
        };
        if ok {
            Verification {
                valid: true,
                detail: format!("signed by {}", signer.owner_id()),
            }
        } else {
            fail("the signature does not match this credential")
        }
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "format:      {}", self.format.as_str())?;
        writeln!(f, "issuer:      {}", o(&self.issuer))?;
        writeln!(f, "session_id:  {}", o(&self.session_id))?;
        writeln!(f, "role:        {}", o(&self.role))?;
        writeln!(
            f,
            "expire_time: {}",
            self.expire_time
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into())
        )?;
        writeln!(f, "token_id:    {}", o(&self.token_id))?;
        if let Some(h) = &self.header {
            writeln!(f, "header:      {h}")?;
        }
        match &self.claims {
            Value::Array(fields) => {
                writeln!(f, "fields:")?;
                for kv in fields {
                    if let Some([k, v]) = kv.as_array().map(Vec::as_slice) {
                        writeln!(
                            f,
                            "  {} = {}",
                            k.as_str().unwrap_or_default(),
                            v.as_str().unwrap_or_default()
                        )?;
                    }
                }
                Ok(())
            }
            c => write!(f, "claims:      {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Entropy, Signer, TokenParams};
    use super::*;
    use crate::domain::{OpenTokFormat, Role};

    const SID: &str = "1_MX4xMjM0NTZ-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4";
    const SECRET: &str = "1234567890abcdef1234567890abcdef1234567890";

    #[test]
    fn all_three_formats_decode_and_verify_only_with_their_credential() {
        let app_sid = "1_MX4yOWY3NjBmOC03Y2UxLTQ2YzktYWRlMy1mMmRlZGVlNGVkNWZ-fjE3MjY0NjI1ODg2NDd-MTF4TGExYmJoelBlR1FHbVhzbWd4STBrfn5-";
        let pem = super::super::vonage_jwt::tests::jdk_key();
        let signers = [
            (
                Signer::opentok("123456", SECRET, OpenTokFormat::T1).unwrap(),
                SID,
                TokenFormat::T1,
            ),
            (
                Signer::opentok("123456", SECRET, OpenTokFormat::Jwt).unwrap(),
                SID,
                TokenFormat::OpentokJwt,
            ),
            (
                Signer::vonage("29f760f8-7ce1-46c9-ade3-f2dedee4ed5f", &pem).unwrap(),
                app_sid,
                TokenFormat::VonageJwt,
            ),
        ];
        for (s, sid, fmt) in &signers {
            let p = TokenParams {
                session_id: sid,
                role: Role::Subscriber,
                expire_time: 5000,
                connection_data: Some("x y"),
                initial_layout_class_list: &[],
            };
            let t = s.sign(&p, 1000, &Entropy::random()).unwrap();
            let i = inspect(&t.token).unwrap();
            assert_eq!(i.format, *fmt);
            assert_eq!(i.session_id.as_deref(), Some(*sid));
            assert_eq!(i.role.as_deref(), Some("subscriber"));
            assert_eq!(i.expire_time, Some(5000));
            assert_eq!(i.token_id.as_deref(), Some(t.token_id.as_str()));
            assert!(i.verify(s).valid(), "{fmt:?}");
            assert!(!i.expired(4999) && i.expired(5000));
            let wrong = Signer::opentok("123456", "another-secret", OpenTokFormat::Jwt).unwrap();
            assert!(
                !i.verify(&wrong).valid(),
                "{fmt:?} must not verify with another secret"
            );
            assert!(!i.to_string().contains(SECRET));
        }
        for bad in ["T1==!!!", "a.b", "eyJhbGciOiJIUzI1NiJ9.eyJmb28iOjF9.x"] {
            assert!(inspect(bad).is_err(), "{bad}");
        }
    }
}

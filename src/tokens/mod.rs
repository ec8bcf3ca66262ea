//! Vonage Video client tokens, exactly as the official SDKs make them
//! (`docs/tokens.md`; reference: vonage-tokens.md). One file per format:
//!
//! - `t1`: legacy `T1==` tokens, HMAC-SHA1 (opentok-node >= 2.21 field order);
//! - `opentok_jwt`: OpenTok project JWTs, HS256 (opentok-node >= 2.19 claims, plus `jti`);
//! - `vonage_jwt`: Vonage application JWTs, RS256 (`@vonage/video` claims).
//!
//! Signers are pure: they take `now` and the random parts (`Entropy`) as
//! parameters, never read the clock, and parse their keys once (`Signer::load`).
//! `validate` enforces the strictest SDK rules before anything is signed.

mod encoding;
pub mod inspect;
pub mod js_number;
pub mod opentok_jwt;
mod session_id;
pub mod t1;
mod validate;
pub mod vonage_jwt;

use std::fmt;

pub use crate::domain::{CredentialSpec, OpenTokFormat, Provider, Role, SecretRef};
pub use inspect::{InspectError, Inspection, Verification, inspect};
pub use session_id::{MAX_SESSION_ID_LEN, SessionId, check_session_owned, session_owner};
pub use validate::{
    MAX_CONNECTION_DATA_BYTES, MAX_LAYOUT_CLASS_LIST_CHARS, MAX_TTL_SECS, parse_role,
    validate_layout_class_list,
};

/// The three token formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    T1,
    OpentokJwt,
    VonageJwt,
}

impl TokenFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::T1 => "t1",
            TokenFormat::OpentokJwt => "opentok_jwt",
            TokenFormat::VonageJwt => "vonage_jwt",
        }
    }
}

/// What a token grants.
#[derive(Debug, Clone, Copy)]
pub struct TokenParams<'a> {
    pub session_id: &'a str,
    pub role: Role,
    /// Absolute unix seconds.
    pub expire_time: i64,
    pub connection_data: Option<&'a str>,
    pub initial_layout_class_list: &'a [String],
}

/// The random parts of a token, injected so signing is deterministic under test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entropy {
    /// The `nonce` (T1 and OpenTok JWT): a float in [0, 1) with 53 random bits,
    /// written as JavaScript writes `Math.random()`. It is also a T1 token's id.
    pub nonce: f64,
    /// The `jti` of JWTs. `random()` makes a UUIDv7 (random, and ordered by time,
    /// so the audit's token id index grows at its end instead of at random places).
    pub jti: uuid::Uuid,
}

impl Entropy {
    /// Fresh values from the operating system's RNG.
    pub fn random() -> Entropy {
        // 53 random bits from uuid's CSPRNG (a v4 UUID's low 62 bits are random).
        let n = (uuid::Uuid::new_v4().as_u128() as u64) & ((1u64 << 53) - 1);
        Entropy {
            nonce: n as f64 / (1u64 << 53) as f64,
            jti: uuid::Uuid::now_v7(),
        }
    }

    /// The nonce as it appears in tokens: exactly JavaScript's
    /// `String(Math.random())`, e.g. `0.000001234`, where Rust's float
    /// formatting would write `1.234e-6`.
    pub fn nonce_text(&self) -> String {
        js_number::to_js_string(self.nonce)
    }
}

/// A signed token.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedToken {
    pub token: String,
    /// The JWT's `jti`, or the T1 token's nonce.
    pub token_id: String,
    pub format: TokenFormat,
    pub expire_time: i64,
}

/// Shows the token id, never the token.
impl fmt::Debug for SignedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedToken")
            .field("token_id", &self.token_id)
            .field("format", &self.format)
            .field("expire_time", &self.expire_time)
            .field("token", &"***")
            .finish()
    }
}

/// Why a token cannot be made. Messages name the problem, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid role {0:?}: expected subscriber, publisher, publisheronly or moderator")]
    InvalidRole(String),
    #[error("expire_time {expire_time} is not after the current time {now}")]
    ExpireTimeInPast { expire_time: i64, now: i64 },
    #[error("expire_time {expire_time} is more than 30 days after the current time {now}")]
    ExpireTimeTooFar { expire_time: i64, now: i64 },
    #[error("connection data is {len} bytes; the limit is 1000 bytes of UTF-8")]
    ConnectionDataTooLong { len: usize },
    #[error("invalid initial_layout_class_list: {0}")]
    InvalidLayoutClassList(String),
    #[error("invalid session ID: {0}")]
    InvalidSessionId(String),
    #[error("the session belongs to {owner:?}, not to this credential")]
    SessionNotOwned { owner: String },
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::InvalidRole(_) => "invalid_role",
            TokenError::ExpireTimeInPast { .. } => "expire_time_in_past",
            TokenError::ExpireTimeTooFar { .. } => "expire_time_too_far",
            TokenError::ConnectionDataTooLong { .. } => "connection_data_too_long",
            TokenError::InvalidLayoutClassList(_) => "invalid_layout_class_list",
            TokenError::InvalidSessionId(_) => "invalid_session_id",
            TokenError::SessionNotOwned { .. } => "session_not_owned",
        }
    }

    pub fn field(&self) -> &'static str {
        match self {
            TokenError::InvalidRole(_) => "role",
            TokenError::ExpireTimeInPast { .. } | TokenError::ExpireTimeTooFar { .. } => {
                "expire_time"
            }
            TokenError::ConnectionDataTooLong { .. } => "data",
            TokenError::InvalidLayoutClassList(_) => "initial_layout_class_list",
            TokenError::InvalidSessionId(_) | TokenError::SessionNotOwned { .. } => "session_id",
        }
    }
}

/// Why a credential cannot be loaded. Names the reference, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "the private key from {reference} is not a usable RSA private key (PEM, PKCS#8 or PKCS#1, 2048 bits or more)"
    )]
    BadPrivateKey { reference: String },
    #[error("invalid credential: {0}")]
    Invalid(String),
}

enum Keys {
    /// The secret's bytes (T1's HMAC-SHA1 key) and the same as an HS256 key.
    OpenTok {
        secret: Vec<u8>,
        hs256: jsonwebtoken::EncodingKey,
        format: OpenTokFormat,
    },
    Vonage(vonage_jwt::RsaSigner),
}

/// A credential ready to sign: secrets resolved and keys parsed once.
pub struct Signer {
    owner_id: String,
    keys: Keys,
}

/// Shows the public id and format; never the secret or key.
impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("owner_id", &self.owner_id)
            .field("format", &self.format())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Builds the signer of `spec` from its secret, already resolved (by
    /// `crate::secrets`): the OpenTok API secret, or the Vonage private key PEM.
    pub fn from_spec(spec: &CredentialSpec, secret: &[u8]) -> Result<Signer, CredentialError> {
        match &spec.provider {
            Provider::OpenTok {
                api_key,
                token_format,
                ..
            } => {
                let secret = std::str::from_utf8(secret).map_err(|_| {
                    CredentialError::Invalid("the API secret is not UTF-8 text".into())
                })?;
                Signer::opentok(api_key, secret.trim(), *token_format)
            }
            Provider::Vonage {
                application_id,
                private_key,
            } => Signer::vonage(application_id, secret).map_err(|e| match e {
                CredentialError::BadPrivateKey { .. } => CredentialError::BadPrivateKey {
                    reference: private_key.to_string(),
                },
                other => other,
            }),
        }
    }

    /// An OpenTok project credential (the secret is used as its string bytes).
    pub fn opentok(
        api_key: &str,
        api_secret: &str,
        format: OpenTokFormat,
    ) -> Result<Signer, CredentialError> {
        if api_key.is_empty() || api_secret.is_empty() {
            return Err(CredentialError::Invalid(
                "the API key and secret must not be empty".into(),
            ));
        }
        Ok(Signer {
            owner_id: api_key.to_owned(),
            keys: Keys::OpenTok {
                secret: api_secret.as_bytes().to_vec(),
                hs256: jsonwebtoken::EncodingKey::from_secret(api_secret.as_bytes()),
                format,
            },
        })
    }

    /// A Vonage application credential (RSA private key, PEM).
    pub fn vonage(application_id: &str, private_key_pem: &[u8]) -> Result<Signer, CredentialError> {
        if application_id.is_empty() {
            return Err(CredentialError::Invalid(
                "the application id must not be empty".into(),
            ));
        }
        Ok(Signer {
            owner_id: application_id.to_owned(),
            keys: Keys::Vonage(vonage_jwt::RsaSigner::from_pem(private_key_pem)?),
        })
    }

    pub fn format(&self) -> TokenFormat {
        match &self.keys {
            Keys::OpenTok {
                format: OpenTokFormat::T1,
                ..
            } => TokenFormat::T1,
            Keys::OpenTok {
                format: OpenTokFormat::Jwt,
                ..
            } => TokenFormat::OpentokJwt,
            Keys::Vonage(_) => TokenFormat::VonageJwt,
        }
    }

    /// The API key or application id sessions must name to be signed here.
    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }

    /// Validates (vonage-tokens.md §6, strictest set) and signs. The checks are
    /// repeated here even when the caller made them (the broker picks the
    /// credential by the session's owner): a signer must never sign a session
    /// of another project, whoever calls it. They cost well under a microsecond.
    pub fn sign(&self, p: &TokenParams, now: i64, e: &Entropy) -> Result<SignedToken, TokenError> {
        let layout = validate::validate(p, now)?;
        check_session_owned(p.session_id, &self.owner_id)?;
        let (token, token_id) = match &self.keys {
            Keys::OpenTok {
                secret,
                format: OpenTokFormat::T1,
                ..
            } => {
                let nonce = e.nonce_text();
                (
                    t1::sign(&self.owner_id, secret, p, &layout, now, &nonce),
                    nonce,
                )
            }
            Keys::OpenTok {
                hs256,
                format: OpenTokFormat::Jwt,
                ..
            } => {
                let jti = e.jti.to_string();
                (
                    opentok_jwt::sign(&self.owner_id, hs256, p, &layout, now, e.nonce, Some(&jti)),
                    jti,
                )
            }
            Keys::Vonage(key) => {
                let jti = e.jti.to_string();
                (
                    vonage_jwt::sign(&self.owner_id, key, p, &layout, now, &jti),
                    jti,
                )
            }
        };
        Ok(SignedToken {
            token,
            token_id,
            format: self.format(),
            expire_time: p.expire_time,
        })
    }

    /// The HMAC secret (OpenTok) — for verification inside this module only.
    fn secret(&self) -> Option<&[u8]> {
        match &self.keys {
            Keys::OpenTok { secret, .. } => Some(secret),
            Keys::Vonage(_) => None,
        }
    }

    fn rsa(&self) -> Option<&vonage_jwt::RsaSigner> {
        match &self.keys {
            Keys::Vonage(k) => Some(k),
            Keys::OpenTok { .. } => None,
        }
    }
}

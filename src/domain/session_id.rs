//! Session IDs: their one canonical form, and which credential a session
//! belongs to.
//!
//! A session ID is a 2-character prefix (`1_`, `2_`) followed by URL-safe
//! base64 of `~`-separated fields; field 1 is the API key (OpenTok projects)
//! or the application id (Vonage applications). The SDKs decode leniently
//! (any prefix, either base64 alphabet, padding optional), so one session has
//! many spellings. The broker accepts only spellings with the prefix the
//! service uses (a digit and `_`) and names every session by one canonical
//! form: `1_` + unpadded URL-safe base64 of the decoded bytes. Rules, the
//! registration table, the session cache and the audit all use that form.
//! Ownership is strict: `fields[1]` must equal the credential's id exactly
//! (opentok-node's rule).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A session ID the broker does not accept, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid session ID: {0}")]
pub struct InvalidSessionId(pub String);

impl InvalidSessionId {
    /// The API error code (`invalid_session_id`).
    pub fn code(&self) -> &'static str {
        "invalid_session_id"
    }

    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        "session_id"
    }
}

/// Longest session ID accepted, in bytes (service-issued ones are ~70-120).
pub const MAX_SESSION_ID_LEN: usize = 512;

/// Longest label key a session can be registered with, in bytes.
pub const MAX_LABEL_KEY: usize = 64;
/// Longest label value a session can be registered with, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;

/// Whether a session can be registered with label key `k`: 1-64 of
/// `A-Z a-z 0-9 _ . - /`. A policy's label matchers are held to the same, so
/// none names a key no session can have.
pub fn is_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_LABEL_KEY
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
}

/// A session ID that passed the edge checks, in its two useful spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId {
    canonical: String,
    token: String,
    owner: String,
}

impl SessionId {
    /// Parses any accepted spelling: `<digit>_` then base64 of the fields,
    /// in either alphabet (`-_` or `+/`), with at most two `=` of padding.
    pub fn parse(s: &str) -> Result<SessionId, InvalidSessionId> {
        let invalid = |why: &str| InvalidSessionId(why.to_owned());
        if s.is_empty() || s.len() > MAX_SESSION_ID_LEN {
            return Err(invalid("a session ID is 1 to 512 characters"));
        }
        let b = s.as_bytes();
        if b.len() < 3 || !b[0].is_ascii_digit() || b[1] != b'_' {
            return Err(invalid(
                "it must start with the prefix the service uses: a digit and `_` (as in `1_`)",
            ));
        }
        let body = &s[2..];
        let unpadded = body.trim_end_matches('=');
        if body.len() - unpadded.len() > 2
            || !unpadded
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_+/".contains(&c))
        {
            return Err(invalid(
                "after its prefix it must be base64 (A-Z a-z 0-9 - _, or + /, optional = padding)",
            ));
        }
        let bytes = b64_lenient(unpadded).ok_or_else(|| invalid("it does not decode as base64"))?;
        let owner = owner_of(&bytes)?;
        let mut canonical = String::with_capacity(2 + body.len());
        canonical.push_str("1_");
        URL_SAFE_NO_PAD.encode_string(&bytes, &mut canonical);
        let mut token = String::with_capacity(canonical.len());
        token.push_str(&s[..2]);
        token.push_str(&canonical[2..]);
        Ok(SessionId {
            canonical,
            token,
            owner,
        })
    }

    /// The one name of this session: `1_` + unpadded URL-safe base64. Used for
    /// `id:` rules, registration, the session cache, ownership and the audit.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The spelling a token carries: the caller's prefix digit (the service
    /// issues both `1_` and `2_` IDs and its meaning is undocumented, so it is
    /// kept) with the body in the service's own form (URL-safe, unpadded).
    /// For every ID the service issued this is the caller's text unchanged.
    pub fn for_token(&self) -> &str {
        &self.token
    }

    /// The project API key or application id the session names (`fields[1]`).
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical)
    }
}

pub(crate) fn owner_of(bytes: &[u8]) -> Result<String, InvalidSessionId> {
    let text = String::from_utf8_lossy(bytes);
    let fields: Vec<&str> = text.split('~').collect();
    match fields.get(1) {
        Some(owner) if fields.len() >= 2 && !owner.is_empty() => Ok((*owner).to_owned()),
        _ => Err(InvalidSessionId(
            "it does not name the project or application it belongs to".to_owned(),
        )),
    }
}

/// Lenient base64 decode: either alphabet, with or without padding.
pub fn b64_lenient(s: &str) -> Option<Vec<u8>> {
    let cleaned: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(cleaned.as_bytes())
        .ok()
}

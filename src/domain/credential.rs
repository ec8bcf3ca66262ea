//! A tenant's video credential as declared in its policy file: names and secret
//! *references*, never secret values. `crate::tokens::Signer::load` resolves the
//! references where the broker runs and parses the keys once.

use std::fmt;
use std::path::PathBuf;

/// Where a secret lives. Policy files may only name secrets, never inline them.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME`: the broker process's environment variable NAME.
    Env(String),
    /// `file:PATH`: the whole content of a file (PEM for private keys).
    File(PathBuf),
}

impl SecretRef {
    /// Parses `env:NAME` or `file:PATH`. Anything else is refused, so an inline
    /// secret pasted into a policy file can never be accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("env:") {
            let ok = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if ok {
                return Ok(SecretRef::Env(name.to_owned()));
            }
            return Err("env: must be followed by a variable name ([A-Za-z_][A-Za-z0-9_]*)".into());
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: must be followed by a path".into());
            }
            return Ok(SecretRef::File(PathBuf::from(path)));
        }
        Err("a secret must be a reference, \"env:NAME\" or \"file:PATH\"; inline secrets are refused".into())
    }
}

/// Shows the reference (which is not secret), never a value.
impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

/// Which token format an OpenTok project credential signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenTokFormat {
    /// HS256 project JWT (the official SDKs' default since early 2025).
    #[default]
    Jwt,
    /// Legacy `T1==` token (HMAC-SHA1).
    T1,
}

/// The provider-specific part of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// OpenTok project: numeric API key plus API secret.
    OpenTok {
        api_key: String,
        api_secret: SecretRef,
        token_format: OpenTokFormat,
    },
    /// Vonage application: application UUID plus RSA private key (PKCS#8 PEM).
    Vonage {
        application_id: String,
        private_key: SecretRef,
    },
}

/// One `[[credentials]]` entry of a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSpec {
    /// The credential's name within its tenant (`main`, `app`, ...).
    pub name: String,
    pub provider: Provider,
}

impl CredentialSpec {
    /// The id a session ID must carry in its `fields[1]` to belong to this
    /// credential: the API key or the application id.
    pub fn owner_id(&self) -> &str {
        match &self.provider {
            Provider::OpenTok { api_key, .. } => api_key,
            Provider::Vonage { application_id, .. } => application_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_inline_secrets_are_refused() {
        assert_eq!(
            SecretRef::parse("env:ACME_SECRET").unwrap(),
            SecretRef::Env("ACME_SECRET".into())
        );
        assert_eq!(
            SecretRef::parse("file:/etc/k.pem").unwrap(),
            SecretRef::File("/etc/k.pem".into())
        );
        for bad in [
            "1234567890abcdef",
            "env:",
            "env:1X",
            "env:A-B",
            "file:",
            "ENV:X",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}

//! A tenant's video credential as declared in its policy file: names and secret
//! *references*, never secret values. `crate::secrets` resolves the references
//! where the broker runs (inside the tenant's namespace only) and
//! `crate::tokens::Signer` parses the keys once.
//!
//! The namespace rules live here, pure, so that policy validation (which points
//! at file, line and column) and the resolver (which enforces them again on
//! every load) apply the very same rule.

use std::fmt;
use std::path::{Component, Path, PathBuf};

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

/// The prefix every environment variable of tenant `slug` must carry:
/// `TOKEN_BROKER_TENANT_<SLUG>_`, the slug upper-cased with `-` as `_`.
pub fn env_prefix(slug: &str) -> String {
    format!(
        "TOKEN_BROKER_TENANT_{}_",
        slug.to_ascii_uppercase().replace('-', "_")
    )
}

/// Largest secret file the broker reads (a 4096-bit PEM key is ~3.3 KiB).
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

impl SecretRef {
    /// Checks, without touching the host, that the reference stays inside
    /// tenant `slug`'s namespace: `env:` names start with [`env_prefix`];
    /// `file:` paths are relative to the tenant's secrets directory
    /// (`<secrets_dir>/<slug>/`) and have no `..`, no root and no control
    /// characters. Symlinks are checked by the resolver, which sees the disk.
    /// The message says how to fix the reference and never whether a target
    /// exists.
    pub fn check_namespace(&self, slug: &str) -> Result<(), String> {
        match self {
            SecretRef::Env(name) => {
                let prefix = env_prefix(slug);
                if name.len() > prefix.len() && name.starts_with(&prefix) {
                    Ok(())
                } else {
                    Err(format!(
                        "env: references of tenant {slug} must name a variable starting with {prefix} \
                         (the operator provisions it as {prefix}<NAME>); rename the variable and write \"env:{prefix}<NAME>\""
                    ))
                }
            }
            SecretRef::File(path) => confined_relative(path).map(|_| ()).map_err(|why| {
                format!(
                    "file: references are relative to tenant {slug}'s secrets directory \
                     (<secrets_dir>/{slug}/, setting secrets_dir) and {why}; move the file there and write \"file:<name>\""
                )
            }),
        }
    }
}

/// A path that is relative, made only of normal components, and free of
/// control characters; else why not.
pub fn confined_relative(path: &Path) -> Result<&Path, &'static str> {
    if path.as_os_str().is_empty() {
        return Err("must not be empty");
    }
    if path.to_string_lossy().chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("must not contain '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("must not be absolute"),
        }
    }
    Ok(path)
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

    /// The reference of the secret it signs with: the API secret or the private key.
    pub fn secret(&self) -> &SecretRef {
        match &self.provider {
            Provider::OpenTok { api_secret, .. } => api_secret,
            Provider::Vonage { private_key, .. } => private_key,
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

    #[test]
    fn references_outside_the_tenant_namespace_are_refused() {
        let ok = |s: &str, t: &str| SecretRef::parse(s).unwrap().check_namespace(t);
        assert!(ok("env:TOKEN_BROKER_TENANT_ACME_SECRET", "acme").is_ok());
        assert!(ok("env:TOKEN_BROKER_TENANT_ACME_WEST_SECRET", "acme-west").is_ok());
        assert!(ok("file:opentok.secret", "acme").is_ok());
        assert!(ok("file:vonage/app.key", "acme").is_ok());
        for (bad, tenant) in [
            ("env:OTHER_SECRET", "acme"),
            ("env:TOKEN_BROKER_TENANT_OTHER_SECRET", "acme"),
            ("env:TOKEN_BROKER_TENANT_ACME_", "acme"),
            ("env:TOKEN_BROKER_TENANT_ACMESECRET", "acme"),
            ("env:TOKEN_BROKER_DATABASE_URL", "acme"),
            ("file:/etc/passwd", "acme"),
            ("file:/dev/zero", "acme"),
            ("file:../other/x", "acme"),
            ("file:a/../../other/x", "acme"),
            ("file:a\nb", "acme"),
        ] {
            let e = ok(bad, tenant).unwrap_err();
            assert!(!e.contains("exist"), "{e}");
        }
    }
}

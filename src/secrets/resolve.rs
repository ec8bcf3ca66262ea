//! Operator-provisioned secret references, confined to the tenant's namespace.
//!
//! `env:NAME` resolves only when NAME starts with `TOKEN_BROKER_TENANT_<SLUG>_`
//! and no other tenant's (longer) prefix also claims it (`acme` must not read
//! `TOKEN_BROKER_TENANT_ACME_WEST_…`, which belongs to `acme-west`).
//! `file:PATH` resolves only for a regular file of at most 64 KiB inside
//! `<secrets_dir>/<slug>/`, checked after resolving symlinks and `..`; it is
//! opened non-blocking and without following a final symlink, and checked
//! again on the open handle, so a named pipe or a swapped file never blocks
//! or leaks. All of it runs on the blocking pool under a time bound.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::{MAX_SECRET_FILE_BYTES, SecretRef, env_prefix};

/// Why a reference gave no secret. Messages name the reference, never a value,
/// and never say whether something outside the namespace exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The reference leaves the tenant's namespace (refused at validation).
    #[error("{0}")]
    OutsideNamespace(String),
    /// A file inside the namespace that is not a regular file of bounded size
    /// (a directory, a pipe, a device, oversized, a dangling link).
    #[error(
        "{reference} must name a regular file of at most 64 KiB inside this tenant's secrets directory"
    )]
    Unusable { reference: String },
    /// Not provisioned on this broker (yet): the variable is unset or the file missing.
    #[error("{reference} is not provisioned on this broker")]
    Missing { reference: String },
    /// Reading took longer than the bound.
    #[error("{reference} could not be read in time")]
    Timeout { reference: String },
}

impl SecretError {
    /// True for references that must be refused when a policy is applied
    /// (as opposed to ones that may be provisioned later).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SecretError::OutsideNamespace(_) | SecretError::Unusable { .. }
        )
    }
}

/// Resolved secrets of one tenant, keyed by reference text. `Debug` shows the
/// references and whether each resolved, never a value.
#[derive(Default, Clone)]
pub struct Resolved(HashMap<String, Result<Vec<u8>, SecretError>>);

impl Resolved {
    /// The secret of `r`, or why there is none.
    pub fn get(&self, r: &SecretRef) -> Result<&[u8], SecretError> {
        match self.0.get(&r.to_string()) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(e.clone()),
            None => Err(SecretError::Missing {
                reference: r.to_string(),
            }),
        }
    }

    /// Every reference that failed, with why.
    pub fn errors(&self) -> impl Iterator<Item = (&str, &SecretError)> {
        self.0
            .iter()
            .filter_map(|(k, v)| v.as_ref().err().map(|e| (k.as_str(), e)))
    }
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, v.as_ref().map(|_| "resolved"))),
            )
            .finish()
    }
}

/// Resolves tenants' references where the broker runs.
#[derive(Debug, Clone)]
pub struct SecretResolver {
    secrets_dir: PathBuf,
    timeout: Duration,
    /// Whether tenants' JWKS URLs may reach non-public addresses (setting
    /// `jwks_private_addresses`): the network counterpart of the directory
    /// confinement above, applied where identity providers are loaded.
    jwks_private_addresses: bool,
}

impl SecretResolver {
    pub fn new(secrets_dir: PathBuf, timeout: Duration) -> SecretResolver {
        SecretResolver {
            secrets_dir,
            timeout,
            jwks_private_addresses: false,
        }
    }

    /// Lets tenants' JWKS URLs reach non-public addresses.
    pub fn with_jwks_private_addresses(mut self, allowed: bool) -> SecretResolver {
        self.jwks_private_addresses = allowed;
        self
    }

    pub fn jwks_private_addresses(&self) -> bool {
        self.jwks_private_addresses
    }

    /// `<secrets_dir>/<slug>`: the only directory tenant `slug`'s files may come from.
    pub fn tenant_dir(&self, slug: &str) -> PathBuf {
        self.secrets_dir.join(slug)
    }

    /// Resolves every reference of tenant `slug` on the blocking pool, within
    /// the time bound. `tenants` is every tenant slug (for env-prefix overlaps).
    pub async fn resolve_all(
        &self,
        slug: &str,
        refs: Vec<SecretRef>,
        tenants: &[String],
    ) -> Resolved {
        if refs.is_empty() {
            return Resolved::default();
        }
        let dir = self.tenant_dir(slug);
        let slug_owned = slug.to_owned();
        let tenants = tenants.to_vec();
        let keys: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        let work = tokio::task::spawn_blocking(move || {
            refs.iter()
                .map(|r| (r.to_string(), resolve_one(&dir, &slug_owned, r, &tenants)))
                .collect::<HashMap<_, _>>()
        });
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(map)) => Resolved(map),
            // A panic or a timeout: every reference of the tenant counts as unread.
            _ => Resolved(
                keys.into_iter()
                    .map(|k| {
                        let e = SecretError::Timeout {
                            reference: k.clone(),
                        };
                        (k, Err(e))
                    })
                    .collect(),
            ),
        }
    }
}

/// Resolves one reference (blocking; call on the blocking pool).
fn resolve_one(
    dir: &Path,
    slug: &str,
    r: &SecretRef,
    tenants: &[String],
) -> Result<Vec<u8>, SecretError> {
    r.check_namespace(slug)
        .map_err(SecretError::OutsideNamespace)?;
    match r {
        SecretRef::Env(name) => {
            let own = env_prefix(slug);
            let taken = tenants.iter().any(|t| {
                let p = env_prefix(t);
                t != slug && p.len() > own.len() && name.starts_with(&p)
            });
            if taken {
                return Err(SecretError::OutsideNamespace(format!(
                    "{r} is not in tenant {slug}'s namespace; choose a variable name that no other tenant's prefix covers"
                )));
            }
            std::env::var_os(name)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| SecretError::Missing {
                    reference: r.to_string(),
                })
        }
        SecretRef::File(rel) => read_confined(dir, rel, r),
    }
}

fn read_confined(dir: &Path, rel: &Path, r: &SecretRef) -> Result<Vec<u8>, SecretError> {
    let missing = || SecretError::Missing {
        reference: r.to_string(),
    };
    let unusable = || SecretError::Unusable {
        reference: r.to_string(),
    };
    let Ok(base) = std::fs::canonicalize(dir) else {
        return Err(missing());
    };
    let lexical = base.join(rel);
    match std::fs::symlink_metadata(&lexical) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(_) => return Err(unusable()),
    }
    // The name exists inside the namespace; from here on every failure is the
    // same answer, whatever lies behind a link.
    let real = std::fs::canonicalize(&lexical).map_err(|_| unusable())?;
    if !real.starts_with(&base) {
        return Err(SecretError::OutsideNamespace(format!(
            "{r} leads outside this tenant's secrets directory"
        )));
    }
    let file = open_nonblocking(&real).map_err(|_| unusable())?;
    let meta = file.metadata().map_err(|_| unusable())?;
    if !meta.is_file() || meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(unusable());
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|_| unusable())?;
    if buf.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(unusable());
    }
    Ok(buf)
}

/// Opens for reading without blocking on a pipe and without following a final symlink.
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_ref(p: &str) -> SecretRef {
        SecretRef::parse(&format!("file:{p}")).unwrap()
    }

    #[tokio::test]
    async fn files_resolve_only_inside_the_namespace_and_only_when_regular_and_small() {
        let root = tempfile::tempdir().unwrap();
        let ns = root.path().join("acme");
        std::fs::create_dir_all(ns.join("sub")).unwrap();
        std::fs::create_dir_all(root.path().join("other")).unwrap();
        std::fs::write(ns.join("ok.secret"), b"s3cret").unwrap();
        std::fs::write(ns.join("big"), vec![b'x'; 64 * 1024 + 1]).unwrap();
        std::fs::write(root.path().join("other/x"), b"theirs").unwrap();
        std::os::unix::fs::symlink(root.path().join("other/x"), ns.join("out-link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/elsewhere", ns.join("dangling")).unwrap();
        std::os::unix::fs::symlink(ns.join("ok.secret"), ns.join("in-link")).unwrap();
        let fifo = ns.join("pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let res = SecretResolver::new(root.path().to_owned(), Duration::from_secs(5));
        let refs = [
            "ok.secret",
            "in-link",
            "big",
            "sub",
            "pipe",
            "out-link",
            "dangling",
            "absent",
        ]
        .map(file_ref)
        .to_vec();
        // Real time: the point is that nothing blocks.
        let started = crate::clock::Clock::system().stopwatch();
        let got = res.resolve_all("acme", refs, &["acme".into()]).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the pipe must not block"
        );
        assert_eq!(got.get(&file_ref("ok.secret")).unwrap(), b"s3cret");
        assert_eq!(got.get(&file_ref("in-link")).unwrap(), b"s3cret");
        for unusable in ["big", "sub", "pipe", "dangling"] {
            assert!(
                matches!(
                    got.get(&file_ref(unusable)),
                    Err(SecretError::Unusable { .. })
                ),
                "{unusable}: {:?}",
                got.get(&file_ref(unusable))
            );
        }
        assert!(matches!(
            got.get(&file_ref("out-link")),
            Err(SecretError::OutsideNamespace(_))
        ));
        assert!(matches!(
            got.get(&file_ref("absent")),
            Err(SecretError::Missing { .. })
        ));
        // Paths that leave the namespace lexically never touch the disk.
        for bad in [
            SecretRef::File("/etc/passwd".into()),
            SecretRef::File("/dev/zero".into()),
            SecretRef::File("../other/x".into()),
        ] {
            let got = res
                .resolve_all("acme", vec![bad.clone()], &["acme".into()])
                .await;
            assert!(
                matches!(got.get(&bad), Err(SecretError::OutsideNamespace(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn env_names_of_a_longer_tenant_prefix_belong_to_that_tenant() {
        let res = SecretResolver::new("/nonexistent".into(), Duration::from_secs(5));
        let tenants = vec!["acme".to_owned(), "acme-west".to_owned()];
        let theirs = SecretRef::Env("TOKEN_BROKER_TENANT_ACME_WEST_SECRET".into());
        let got = res
            .resolve_all("acme", vec![theirs.clone()], &tenants)
            .await;
        assert!(matches!(
            got.get(&theirs),
            Err(SecretError::OutsideNamespace(_))
        ));
        let unset = SecretRef::Env("TOKEN_BROKER_TENANT_ACME_UNSET_FOR_TEST".into());
        let got = res.resolve_all("acme", vec![unset.clone()], &tenants).await;
        assert!(matches!(got.get(&unset), Err(SecretError::Missing { .. })));
        let foreign = SecretRef::Env("HOME".into());
        let got = res
            .resolve_all("acme", vec![foreign.clone()], &tenants)
            .await;
        assert!(matches!(
            got.get(&foreign),
            Err(SecretError::OutsideNamespace(_))
        ));
    }
}

//! What every subcommand shares: the failure type and exit code, printing
//! (text or `--json`), and opening what commands need (the store, files,
//! secrets). Subcommands import this module, not each other or `cli` itself.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::settings::Settings;
use crate::startup::open_store;
use crate::store::Store;

/// A failed command: message for stderr, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    }
}

pub type CmdResult = Result<(), Failure>;

/// Prints a line to stdout (a closed pipe is not an error worth a panic).
pub fn out(s: impl AsRef<str>) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{}", s.as_ref());
}

pub fn out_json(v: &impl serde::Serialize) {
    out(serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn fmt_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub async fn store_for(settings: &Settings) -> Result<Store, Failure> {
    Ok(open_store(settings).await?)
}

/// Reads a file for a command, naming it in the error.
pub fn read_file(path: &PathBuf) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure {
        message: format!("cannot read {}: {e}", path.display()),
        code: 2,
    })
}

/// Reads a secret from a file of at most 64 KiB, or from stdin for `-`.
pub fn read_secret(path: &PathBuf) -> Result<String, Failure> {
    let mut s = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut s)?;
    } else {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() || meta.len() > 64 * 1024 {
            return Err(Failure::from(format!(
                "{} is not a regular file of at most 64 KiB",
                path.display()
            )));
        }
        s = std::fs::read_to_string(path)?;
    }
    Ok(s)
}

/// Resolves tenants' secret references as the broker does (same namespace rules).
pub fn secret_resolver(settings: &Settings) -> crate::secrets::SecretResolver {
    crate::secrets::SecretResolver::new(
        settings.secrets_dir.clone(),
        crate::state::SECRET_READ_BOUND,
    )
    .with_jwks_private_addresses(settings.jwks_private_addresses)
}

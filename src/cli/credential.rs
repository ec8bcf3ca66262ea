//! `token-broker credential …` (operators, on the broker's host) and
//! `token-broker status`. Secrets are read from a file or standard input,
//! never from the command line (argv is visible to every user of the host).

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::output::{CmdResult, Failure, fmt_ms, out, out_json, read_secret, store_for};
use crate::admin::Actor;
use crate::credentials::{self, CredentialInput, CredentialView};
use crate::secrets::Keyring;
use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum CredentialCmd {
    /// Store (create or replace) a tenant's credential, sealed under the master key.
    Set {
        #[arg(long)]
        tenant: String,
        /// The credential's name within the tenant.
        name: String,
        /// opentok or vonage.
        #[arg(long)]
        provider: String,
        /// OpenTok: the project's API key.
        #[arg(long)]
        api_key: Option<String>,
        /// OpenTok: jwt (default) or t1.
        #[arg(long)]
        token_format: Option<String>,
        /// Vonage: the application id.
        #[arg(long)]
        application_id: Option<String>,
        /// File holding the secret (OpenTok API secret, or Vonage private key PEM); `-` for stdin.
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// List a tenant's credentials (stored and from its policy), never a secret.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Show one credential.
    Show {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Delete a stored credential.
    Delete {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Write a new master keyring file (mode 0600; never overwrites).
    Keygen { path: PathBuf },
    /// Re-seal every stored credential under the first key of the configured
    /// keyring. Rotation: put the new key first (the old one below it),
    /// restart every broker, run this, then drop the old key.
    Rekey,
}

fn keyring(settings: &Settings) -> Result<Keyring, Failure> {
    crate::startup::load_keyring(settings)?.ok_or_else(|| {
        Failure::from(
            "no master key: set master_key_file (TOKEN_BROKER_MASTER_KEY_FILE); create one with `token-broker credential keygen PATH`",
        )
    })
}

pub fn print_view(v: &CredentialView) {
    out(format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        v.name,
        v.provider,
        v.source,
        v.api_key
            .as_deref()
            .or(v.application_id.as_deref())
            .unwrap_or("-"),
        v.fingerprint.as_deref().unwrap_or("-"),
        v.updated_at_ms.map(fmt_ms).unwrap_or_else(|| "-".into())
    ));
}

pub async fn run(settings: Settings, cmd: CredentialCmd, json: bool) -> CmdResult {
    let now = crate::clock::now_unix_ms();
    match cmd {
        CredentialCmd::Set {
            tenant,
            name,
            provider,
            api_key,
            token_format,
            application_id,
            secret_file,
        } => {
            let fields = SetFields {
                provider,
                api_key,
                token_format,
                application_id,
                secret_file,
            };
            set(&settings, &tenant, &name, fields, now, json).await
        }
        CredentialCmd::List { tenant } => list(&settings, &tenant, json).await,
        CredentialCmd::Show { tenant, name } => show(&settings, &tenant, &name, json).await,
        CredentialCmd::Delete { tenant, name } => {
            delete(&settings, &tenant, &name, now, json).await
        }
        CredentialCmd::Keygen { path } => keygen(&path),
        CredentialCmd::Rekey => rekey(&settings, json).await,
    }
}

/// The flags of `credential set` that describe the credential itself.
struct SetFields {
    provider: String,
    api_key: Option<String>,
    token_format: Option<String>,
    application_id: Option<String>,
    secret_file: PathBuf,
}

impl SetFields {
    /// Reads the secret and checks the provider's required flags.
    fn into_input(self) -> Result<CredentialInput, Failure> {
        let secret = read_secret(&self.secret_file)?;
        Ok(match self.provider.as_str() {
            "opentok" => CredentialInput::Opentok {
                api_key: self
                    .api_key
                    .ok_or_else(|| Failure::from("--api-key is required for opentok"))?,
                api_secret: secret,
                token_format: self.token_format,
            },
            "vonage" => CredentialInput::Vonage {
                application_id: self
                    .application_id
                    .ok_or_else(|| Failure::from("--application-id is required for vonage"))?,
                private_key: secret,
            },
            other => {
                return Err(Failure::from(format!(
                    "{other:?} is not a provider: use opentok or vonage"
                )));
            }
        })
    }
}

/// `credential set`: store (or replace) a credential, sealed under the master key.
async fn set(
    settings: &Settings,
    tenant: &str,
    name: &str,
    fields: SetFields,
    now: i64,
    json: bool,
) -> CmdResult {
    let input = fields.into_input()?;
    let ring = keyring(settings)?;
    let store = store_for(settings).await?;
    let (view, created) =
        credentials::put(&store, Some(&ring), tenant, name, input, &Actor::Cli, now).await?;
    if json {
        out_json(&json!({"credential": view, "created": created}));
    } else {
        out(format!(
            "{} credential {name} of tenant {tenant} ({})",
            if created { "stored" } else { "replaced" },
            view.fingerprint.unwrap_or_default()
        ));
    }
    Ok(())
}

/// `credential list`.
async fn list(settings: &Settings, tenant: &str, json: bool) -> CmdResult {
    let store = store_for(settings).await?;
    let items = credentials::list(&store, tenant).await?;
    if json {
        out_json(&json!({ "items": items }));
    } else {
        for v in &items {
            print_view(v);
        }
    }
    Ok(())
}

/// `credential show`.
async fn show(settings: &Settings, tenant: &str, name: &str, json: bool) -> CmdResult {
    let store = store_for(settings).await?;
    let v = credentials::show(&store, tenant, name).await?;
    if json {
        out_json(&v);
    } else {
        print_view(&v);
    }
    Ok(())
}

/// `credential delete`.
async fn delete(settings: &Settings, tenant: &str, name: &str, now: i64, json: bool) -> CmdResult {
    let store = store_for(settings).await?;
    credentials::delete(&store, tenant, name, &Actor::Cli, now).await?;
    if json {
        out_json(&json!({"name": name, "deleted": true}));
    } else {
        out(format!("deleted credential {name} of tenant {tenant}"));
    }
    Ok(())
}

/// `credential keygen`: write a new master keyring file.
fn keygen(path: &std::path::Path) -> CmdResult {
    let id = Keyring::generate(path)?;
    out(format!(
        "wrote master key {id} to {} (mode 0600); set master_key_file to it",
        path.display()
    ));
    Ok(())
}

/// `credential rekey`: re-seal every stored credential under the first key;
/// fails when any could not be opened.
async fn rekey(settings: &Settings, json: bool) -> CmdResult {
    let ring = keyring(settings)?;
    let store = store_for(settings).await?;
    let report = credentials::rekey(&store, &ring).await?;
    if json {
        out_json(&report);
    } else {
        out(format!(
            "resealed {} credential(s) under master key {}; {} already current",
            report.resealed, report.master_key_id, report.already_current
        ));
        for f in &report.failed {
            out(format!("cannot open {f}: no configured key opens it"));
        }
    }
    if !report.failed.is_empty() {
        return Err(Failure::from(format!(
            "{} credential(s) could not be opened",
            report.failed.len()
        )));
    }
    Ok(())
}

/// `token-broker status`: every tenant's policy version and problems
/// (operators only: names, references and paths appear here).
pub async fn status(settings: Settings, json: bool) -> CmdResult {
    let store = store_for(&settings).await?;
    let keyring = crate::startup::load_keyring(&settings)?;
    let resolver = super::output::secret_resolver(&settings);
    let mut tenants = Vec::new();
    for (tenant, _) in store.list_tenants().await? {
        let row = store.current_policy(&tenant).await?;
        let mut problems = Vec::new();
        let mut version = None;
        if let Some(row) = row {
            version = Some(row.version);
            match crate::state::TenantRuntime::load_from_store(
                &store,
                &resolver,
                keyring.as_ref(),
                &row,
            )
            .await?
            {
                Ok(rt) => {
                    for c in &rt.credentials {
                        if let Err(e) = &c.signer {
                            problems.push(format!("credential {} ({}): {e}", c.name, c.source));
                        }
                    }
                    for (n, i) in &rt.idps {
                        if let Err(e) = i {
                            problems.push(format!("identity provider {n}: {e}"));
                        }
                    }
                }
                Err(e) => problems.push(format!("policy does not load: {e}")),
            }
        }
        tenants.push(json!({"tenant": tenant, "policy_version": version, "problems": problems}));
    }
    if json {
        out_json(&json!({
            "database": store.url_redacted(),
            "master_key": keyring.as_ref().map(|k| k.key_ids()),
            "secrets_dir": settings.secrets_dir,
            "tenants": tenants,
        }));
    } else {
        out(format!("database: {}", store.url_redacted()));
        out(format!(
            "master key: {}",
            keyring
                .as_ref()
                .map(|k| k.key_ids().join(", "))
                .unwrap_or_else(|| "none (stored credentials unusable)".into())
        ));
        out(format!("secrets dir: {}", settings.secrets_dir.display()));
        for t in &tenants {
            let problems = t["problems"].as_array().cloned().unwrap_or_default();
            out(format!(
                "{}\tpolicy v{}\t{}",
                t["tenant"].as_str().unwrap_or_default(),
                t["policy_version"],
                if problems.is_empty() {
                    "ok".to_owned()
                } else {
                    format!("{} problem(s)", problems.len())
                }
            ));
            for p in problems {
                out(format!("  - {}", p.as_str().unwrap_or_default()));
            }
        }
    }
    Ok(())
}

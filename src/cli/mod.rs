//! The `token-broker` command line: this file parses and dispatches (a
//! function per command group, in its own file); `output` is what they share.
//! One global `--json`, accepted before or after the subcommand, makes every
//! command that prints data print JSON. Commands other than `serve` work directly on the database named by
//! the settings, so an operator can run them beside a running broker (SQLite
//! in WAL mode allows that; PostgreSQL trivially).

pub mod audit;
pub mod credential;
pub mod dev;
pub mod output;
pub mod policy;
pub mod remote;
pub mod token;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::admin::{self, Actor};
use crate::auth::Scopes;
use crate::settings::{Settings, SettingsArgs};
use crate::startup::{Application, open_store};
pub use output::{CmdResult, Failure, fmt_ms, out, out_json, read_file, store_for};

#[derive(Debug, Parser)]
#[command(
    name = "token-broker",
    version,
    about = "Issues Vonage Video tokens by per-tenant policy, and audits every decision."
)]
pub struct Cli {
    /// Run against a remote broker over its HTTP API with a tenant's key
    /// (TOKEN_BROKER_KEY or --key-file): whoami, audit, policy, decide, key,
    /// credential, session. See `token-broker --server URL --help`.
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Print JSON instead of text (every command that prints data; before or
    /// after the subcommand).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run the HTTP server (applies migrations first).
    Serve {
        /// Development mode: seed a demo tenant, policy and credential, and print a
        /// fresh demo API key. Never use in production.
        #[arg(long)]
        dev: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Print the effective settings (secrets redacted).
    Settings,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Check, test, apply and roll back policy files.
    Policy {
        #[command(subcommand)]
        cmd: crate::cli::policy::PolicyCmd,
    },
    /// Inspect tokens.
    Token {
        #[command(subcommand)]
        cmd: crate::cli::token::TokenCmd,
    },
    /// Tenants' video credentials (stored, sealed) and the master key.
    Credential {
        #[command(subcommand)]
        cmd: crate::cli::credential::CredentialCmd,
    },
    /// Every tenant's policy and credential problems (operators; names paths and references).
    Status,
    /// Query and verify the audit record.
    Audit {
        #[command(subcommand)]
        cmd: crate::cli::audit::AuditCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create { slug: String },
    /// List tenants.
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create an API key and print it once.
    Create {
        #[arg(long)]
        tenant: String,
        /// issue, audit or admin (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List a tenant's keys (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key; it stops authenticating at once on this database's brokers.
    Revoke { key_id: String },
}

pub async fn run(cli: Cli, settings: Settings) -> CmdResult {
    let json = cli.json;
    match cli.command {
        Command::Serve { dev } => serve(settings, dev).await,
        Command::Migrate => {
            let store = store_for(&settings).await?;
            if json {
                out_json(&json!({"migrated": true, "database": store.url_redacted()}));
            } else {
                out(format!("migrations applied to {}", store.url_redacted()));
            }
            Ok(())
        }
        Command::Settings => {
            if json {
                out_json(&settings);
            } else {
                out(format!("{settings:#?}"));
            }
            Ok(())
        }
        Command::Tenant { cmd } => tenant(settings, cmd, json).await,
        Command::Key { cmd } => key(settings, cmd, json).await,
        Command::Policy { cmd } => crate::cli::policy::run(settings, cmd, json).await,
        Command::Token { cmd } => crate::cli::token::run(settings, cmd, json).await,
        Command::Audit { cmd } => crate::cli::audit::run(settings, cmd, json).await,
        Command::Credential { cmd } => crate::cli::credential::run(settings, cmd, json).await,
        Command::Status => crate::cli::credential::status(settings, json).await,
    }
}

async fn serve(mut settings: Settings, dev: bool) -> CmdResult {
    let store = open_store(&settings).await?;
    if dev {
        crate::cli::dev::ensure_master_key(&mut settings)?;
        crate::cli::dev::ensure_checkpoint_key(&mut settings)?;
        crate::cli::dev::seed(&settings, &store).await?;
    }
    let app = Application::build_with_store(settings, store).await?;
    if dev {
        let state = app.state();
        crate::cli::dev::first_tokens(&state, state.clock.now_unix_ms()).await?;
    }
    app.run_until_stopped().await?;
    Ok(())
}

async fn tenant(settings: Settings, cmd: TenantCmd, json: bool) -> CmdResult {
    let store = store_for(&settings).await?;
    let now = crate::clock::now_unix_ms();
    match cmd {
        TenantCmd::Create { slug } => {
            admin::create_tenant(&store, &slug, &Actor::Cli, now).await?;
            if json {
                out_json(&json!({"tenant": slug, "created_at_ms": now}));
            } else {
                out(format!("created tenant {slug}"));
            }
        }
        TenantCmd::List => {
            let rows = store.list_tenants().await?;
            if json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|(t, c)| json!({"tenant": t, "created_at_ms": c}))
                    .collect();
                out_json(&json!({ "items": items }));
            } else {
                for (t, c) in rows {
                    out(format!("{t}\t{}", fmt_ms(c)));
                }
            }
        }
    }
    Ok(())
}

async fn key(settings: Settings, cmd: KeyCmd, json: bool) -> CmdResult {
    let store = store_for(&settings).await?;
    let now = crate::clock::now_unix_ms();
    match cmd {
        KeyCmd::Create {
            tenant,
            scopes,
            name,
        } => {
            let scopes = Scopes::parse(scopes.iter().flat_map(|s| s.split(',')))?;
            let new =
                admin::create_key(&store, &tenant, scopes, name, &Actor::Cli, now, None).await?;
            if json {
                out_json(
                    &json!({"key_id": new.row.key_id, "key": new.key, "tenant": tenant, "scopes": scopes.names()}),
                );
            } else {
                out(format!(
                    "key id: {}\nscopes: {scopes}\n\n{}\n\nThis is the only time the key is shown. Present it as `Authorization: Bearer <key>`.",
                    new.row.key_id, new.key
                ));
            }
        }
        KeyCmd::List { tenant } => {
            let keys: Vec<admin::KeyInfo> = store
                .list_keys(&tenant)
                .await?
                .into_iter()
                .map(Into::into)
                .collect();
            if json {
                out_json(&json!({ "items": keys }));
            } else {
                out(
                    "KEY ID            SCOPES              CREATED                   STATUS   NAME",
                );
                for k in keys {
                    let status = if k.revoked_at_ms.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    out(format!(
                        "{:<17} {:<19} {:<25} {:<8} {}",
                        k.key_id,
                        k.scopes.join(","),
                        fmt_ms(k.created_at_ms),
                        status,
                        k.name.unwrap_or_default()
                    ));
                }
            }
        }
        KeyCmd::Revoke { key_id } => {
            let tenant = admin::revoke_key(&store, &key_id, None, &Actor::Cli, now).await?;
            if json {
                out_json(&json!({"key_id": key_id, "tenant": tenant, "revoked": true}));
            } else {
                out(format!("revoked {key_id} (tenant {tenant})"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::remote::RemoteCli;

    #[test]
    fn the_command_lines_are_well_formed() {
        Cli::command().debug_assert();
        RemoteCli::command().debug_assert();
    }

    #[test]
    fn json_is_one_global_flag_before_or_after_the_subcommand() {
        for args in [
            &["token-broker", "--json", "key", "list", "--tenant", "acme"][..],
            &["token-broker", "key", "list", "--tenant", "acme", "--json"][..],
            &["token-broker", "key", "--json", "list", "--tenant", "acme"][..],
        ] {
            assert!(Cli::try_parse_from(args).unwrap().json, "{args:?}");
        }
        assert!(
            !Cli::try_parse_from(["token-broker", "tenant", "list"])
                .unwrap()
                .json
        );
        let r = RemoteCli::try_parse_from([
            "token-broker",
            "--server",
            "http://x",
            "audit",
            "query",
            "--csv",
            "--json",
        ]);
        assert!(r.is_err(), "--csv and --json conflict");
        let r =
            RemoteCli::try_parse_from(["token-broker", "--server", "http://x", "whoami", "--json"]);
        assert!(r.unwrap().json);
    }
}

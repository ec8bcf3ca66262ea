//! `token-broker policy …`: check, test, apply (with --dry-run), show,
//! history, rollback.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use crate::admin::{self, Actor, ApplyOutcome};
use crate::cli::{CmdResult, Failure, fmt_ms, out, out_json, read_file, store_for};
use crate::policy;
use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files; exits non-zero on any error.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run a file of test cases against its policy file (or, with --applied,
    /// the tenant's applied version); exits non-zero on a failing case.
    Test {
        path: PathBuf,
        /// Test the version applied in the database instead of the file.
        #[arg(long)]
        applied: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the difference to the applied version, then apply as a new version.
    Apply {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the difference only.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a tenant's policy in force (or --version N).
    Show {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        version: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// List a tenant's policy versions.
    History {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-apply version N as a new version.
    Rollback {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        to: i64,
        #[arg(long)]
        json: bool,
    },
}

/// A command failure listing every policy error, one per line.
fn policy_failure(errs: Vec<policy::PolicyError>) -> Failure {
    Failure {
        message: errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        code: 1,
    }
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn print_outcome(o: &ApplyOutcome, json: bool) {
    if json {
        out_json(o);
        return;
    }
    for w in &o.warnings {
        eprintln!("warning: {w}");
    }
    if o.unchanged {
        out(format!(
            "{}: identical to version {}; nothing to apply",
            o.tenant, o.previous_version
        ));
        return;
    }
    out(format!("--- {} version {}", o.tenant, o.previous_version));
    out(&o.diff);
    match o.version {
        Some(v) => out(format!("applied {} version {v}", o.tenant)),
        None => out(format!(
            "dry run: {} stays at version {}",
            o.tenant, o.previous_version
        )),
    }
}

pub async fn run(settings: Settings, cmd: PolicyCmd) -> CmdResult {
    match cmd {
        PolicyCmd::Check { paths, json } => {
            let mut failed = 0;
            let mut report = Vec::new();
            for p in &paths {
                let text = read_file(p)?;
                match policy::parse(&p.display().to_string(), &text) {
                    Ok(doc) => {
                        report.push(json!({"file": p, "ok": true, "tenant": doc.tenant, "rules": doc.rules.len()}));
                        if !json {
                            out(format!(
                                "{}: ok (tenant {}, {} rules)",
                                p.display(),
                                doc.tenant,
                                doc.rules.len()
                            ));
                        }
                    }
                    Err(errs) => {
                        failed += 1;
                        if !json {
                            for e in &errs {
                                out(e.to_string());
                            }
                        }
                        report.push(json!({"file": p, "ok": false, "errors": errs}));
                    }
                }
            }
            if json {
                out_json(&json!({ "files": report }));
            }
            if failed > 0 {
                return Err(Failure {
                    message: format!("{failed} of {} policy files are invalid", paths.len()),
                    code: 1,
                });
            }
            Ok(())
        }
        PolicyCmd::Test {
            path,
            applied,
            json,
        } => {
            let cases_text = read_file(&path)?;
            let cases_name = path.display().to_string();
            let compiled = if applied {
                let tenant =
                    policy::cases_tenant(&cases_name, &cases_text).map_err(policy_failure)?;
                let store = store_for(&settings).await?;
                let row = store
                    .current_policy(&tenant)
                    .await?
                    .ok_or_else(|| Failure {
                        message: format!("tenant {tenant} has no applied policy"),
                        code: 1,
                    })?;
                let doc = policy::parse_stored(&row.source_name, &row.source).map_err(policy_failure)?;
                policy::CompiledPolicy::compile(doc, row.version)
            } else {
                let policy_path =
                    policy::cases_policy_path(&path, &cases_text).map_err(policy_failure)?;
                let text = read_file(&policy_path)?;
                let doc = policy::parse(&policy_path.display().to_string(), &text)
                    .map_err(policy_failure)?;
                policy::CompiledPolicy::compile(doc, 0)
            };
            let report =
                policy::run_cases(&compiled, &cases_name, &cases_text).map_err(policy_failure)?;
            if json {
                out_json(&report);
            } else {
                out(report.to_string());
            }
            if report.failed() > 0 {
                return Err(Failure {
                    message: format!("{} of {} cases failed", report.failed(), report.total()),
                    code: 1,
                });
            }
            Ok(())
        }
        PolicyCmd::Apply {
            paths,
            dry_run,
            json,
        } => {
            let store = store_for(&settings).await?;
            // Validate every file before applying any.
            let mut texts = Vec::new();
            for p in &paths {
                let text = read_file(p)?;
                if let Err(errs) = policy::parse(&p.display().to_string(), &text) {
                    for e in &errs {
                        eprintln!("{e}");
                    }
                    return Err(Failure {
                        message: format!("{} is invalid; nothing was applied", p.display()),
                        code: 1,
                    });
                }
                texts.push((file_name(p), text));
            }
            for (name, text) in texts {
                let o = admin::apply_policy(
                    &store,
                    &secret_resolver(&settings),
                    &name,
                    &text,
                    None,
                    dry_run,
                    &Actor::Cli,
                    None,
                    crate::clock::now_unix_ms(),
                )
                .await?;
                print_outcome(&o, json);
            }
            Ok(())
        }
        PolicyCmd::Show {
            tenant,
            version,
            json,
        } => {
            let store = store_for(&settings).await?;
            let row = match version {
                Some(v) => store.policy_version(&tenant, v).await?,
                None => store.current_policy(&tenant).await?,
            }
            .ok_or_else(|| Failure {
                message: format!("tenant {tenant} has no such policy version"),
                code: 1,
            })?;
            if json {
                out_json(&crate::routes::policy::VersionView::of(row, true));
            } else {
                out(format!(
                    "# tenant {} version {} applied {} by {}",
                    row.tenant,
                    row.version,
                    fmt_ms(row.applied_at_ms),
                    row.applied_by
                ));
                out(row.source);
            }
            Ok(())
        }
        PolicyCmd::History { tenant, json } => {
            let store = store_for(&settings).await?;
            let rows = store.policy_history(&tenant).await?;
            if json {
                let items: Vec<_> = rows
                    .into_iter()
                    .map(|r| crate::routes::policy::VersionView::of(r, false))
                    .collect();
                out_json(&json!({ "items": items }));
            } else {
                out("VERSION  APPLIED                   BY                  SHA-256       NOTE");
                for r in rows {
                    out(format!(
                        "{:<8} {:<25} {:<19} {:<13} {}",
                        r.version,
                        fmt_ms(r.applied_at_ms),
                        r.applied_by,
                        &r.sha256[..12.min(r.sha256.len())],
                        r.note.unwrap_or_default()
                    ));
                }
            }
            Ok(())
        }
        PolicyCmd::Rollback { tenant, to, json } => {
            let store = store_for(&settings).await?;
            let o = admin::rollback_policy(
                &store,
                &secret_resolver(&settings),
                &tenant,
                to,
                &Actor::Cli,
                crate::clock::now_unix_ms(),
            )
            .await?;
            print_outcome(&o, json);
            Ok(())
        }
    }
}

/// Resolves tenants' secret references as the broker does (same namespace rules).
pub fn secret_resolver(settings: &Settings) -> crate::secrets::SecretResolver {
    crate::secrets::SecretResolver::new(
        settings.secrets_dir.clone(),
        crate::state::SECRET_READ_BOUND,
    )
}

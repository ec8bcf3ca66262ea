//! `token-broker policy …`: check, test, apply (with --dry-run), show,
//! history, rollback.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::output::{
    CmdResult, Failure, fmt_ms, out, out_json, read_file, secret_resolver, store_for,
};
use crate::admin::{self, Actor, ApplyOutcome};
use crate::policy;
use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files; exits non-zero on any error.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run a file of test cases against its policy file (or, with --applied,
    /// the tenant's applied version); exits non-zero on a failing case.
    Test {
        path: PathBuf,
        /// Test the version applied in the database instead of the file.
        #[arg(long)]
        applied: bool,
    },
    /// Print the difference to the applied version, then apply as a new version.
    Apply {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the difference only.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a tenant's policy in force (or --version N).
    Show {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        version: Option<i64>,
    },
    /// List a tenant's policy versions.
    History {
        #[arg(long)]
        tenant: String,
    },
    /// Re-apply version N as a new version.
    Rollback {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        to: i64,
    },
    /// Decide the tenant's recorded token requests again under a proposed
    /// policy and show what would have changed (nothing is applied).
    Replay {
        path: PathBuf,
        /// Start of the window: RFC 3339 or unix seconds (default: 7 days ago).
        #[arg(long)]
        since: Option<String>,
        /// End of the window (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Must match the policy file's tenant, when given.
        #[arg(long)]
        tenant: Option<String>,
        /// Exit non-zero when any of these changes occur (comma-separated:
        /// granted-moderator, refused, granted, role-raised, role-lowered,
        /// ttl-shortened, ttl-lengthened, rule-changed).
        #[arg(long)]
        fail_on: Option<String>,
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

pub fn print_outcome(o: &ApplyOutcome, json: bool) {
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

/// `policy check`: validates each file (pure; no database, no key), prints
/// every error with its location, and fails when any file is invalid. The
/// local and the remote CLI both run it here.
pub fn check_files(paths: &[PathBuf], json: bool) -> CmdResult {
    let mut failed = 0;
    let mut report = Vec::new();
    for p in paths {
        let text = read_file(p)?;
        match policy::parse(&p.display().to_string(), &text) {
            Ok(doc) => {
                if !json {
                    out(format!(
                        "{}: ok (tenant {}, {} rules)",
                        p.display(),
                        doc.tenant,
                        doc.rules.len()
                    ));
                }
                report.push(
                    json!({"file": p, "ok": true, "tenant": doc.tenant, "rules": doc.rules.len()}),
                );
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

pub async fn run(settings: Settings, cmd: PolicyCmd, json: bool) -> CmdResult {
    match cmd {
        PolicyCmd::Check { paths } => check_files(&paths, json),
        PolicyCmd::Test { path, applied } => test(&settings, path, applied, json).await,
        PolicyCmd::Apply { paths, dry_run } => apply(&settings, paths, dry_run, json).await,
        PolicyCmd::Show { tenant, version } => show(&settings, tenant, version, json).await,
        PolicyCmd::History { tenant } => history(&settings, tenant, json).await,
        PolicyCmd::Replay {
            path,
            since,
            until,
            tenant,
            fail_on,
        } => replay(settings, path, since, until, tenant, fail_on, json).await,
        PolicyCmd::Rollback { tenant, to } => rollback(&settings, tenant, to, json).await,
    }
}

async fn test(settings: &Settings, path: PathBuf, applied: bool, json: bool) -> CmdResult {
    let cases_text = read_file(&path)?;
    let cases_name = path.display().to_string();
    let compiled = if applied {
        let tenant = policy::cases_tenant(&cases_name, &cases_text).map_err(policy_failure)?;
        let store = store_for(settings).await?;
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
        let policy_path = policy::cases_policy_path(&path, &cases_text).map_err(policy_failure)?;
        let text = read_file(&policy_path)?;
        let doc =
            policy::parse(&policy_path.display().to_string(), &text).map_err(policy_failure)?;
        policy::CompiledPolicy::compile(doc, 0)
    };
    let report = policy::run_cases(&compiled, &cases_name, &cases_text).map_err(policy_failure)?;
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

async fn apply(settings: &Settings, paths: Vec<PathBuf>, dry_run: bool, json: bool) -> CmdResult {
    let store = store_for(settings).await?;
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
            &secret_resolver(settings),
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

async fn show(settings: &Settings, tenant: String, version: Option<i64>, json: bool) -> CmdResult {
    let store = store_for(settings).await?;
    let row = match version {
        Some(v) => store.policy_version(&tenant, v).await?,
        None => store.current_policy(&tenant).await?,
    }
    .ok_or_else(|| Failure {
        message: format!("tenant {tenant} has no such policy version"),
        code: 1,
    })?;
    if json {
        out_json(&crate::admin::VersionView::of(row, true));
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

async fn history(settings: &Settings, tenant: String, json: bool) -> CmdResult {
    let store = store_for(settings).await?;
    let rows = store.policy_history(&tenant).await?;
    if json {
        let items: Vec<_> = rows
            .into_iter()
            .map(|r| crate::admin::VersionView::of(r, false))
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

async fn rollback(settings: &Settings, tenant: String, to: i64, json: bool) -> CmdResult {
    let store = store_for(settings).await?;
    let o = admin::rollback_policy(
        &store,
        &secret_resolver(settings),
        &tenant,
        to,
        &Actor::Cli,
        crate::clock::now_unix_ms(),
    )
    .await?;
    print_outcome(&o, json);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn replay(
    settings: Settings,
    path: PathBuf,
    since: Option<String>,
    until: Option<String>,
    tenant: Option<String>,
    fail_on: Option<String>,
    json: bool,
) -> CmdResult {
    let fail_on =
        crate::replay::parse_fail_on(fail_on.as_deref().unwrap_or("")).map_err(Failure::from)?;
    let now = crate::clock::now_unix_ms();
    let time = |field: &'static str, v: Option<String>, default: i64| -> Result<i64, Failure> {
        match v {
            None => Ok(default),
            Some(v) => crate::audit::query::parse_time(field, &v)
                .map_err(|e| Failure::from(e.message.clone())),
        }
    };
    let window = crate::replay::Window {
        since_ms: time("since", since, now - 7 * 86_400_000)?,
        until_ms: time("until", until, now + 1)?,
    };
    let text = read_file(&path)?;
    let store = store_for(&settings).await?;
    let report = crate::replay::replay(
        &store,
        &file_name(&path),
        &text,
        tenant.as_deref(),
        window,
        &Actor::Cli,
        now,
        crate::replay::Bounds::NONE,
    )
    .await?;
    if json {
        out_json(&report);
    } else {
        print_replay(&report);
    }
    let failed = crate::replay::failures(&report, &fail_on);
    if failed.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = failed.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    Err(Failure {
        message: format!(
            "replay found changes named by --fail-on: {}",
            list.join(", ")
        ),
        code: 3,
    })
}

fn print_replay(r: &crate::policy::replay::ReplayReport) {
    out(format!(
        "{} recorded request(s) decided again{}",
        r.requests,
        if r.approximate > 0 {
            format!(
                " ({} recorded before session facts were kept: decided with today's registrations)",
                r.approximate
            )
        } else {
            String::new()
        }
    ));
    out(format!("{:<20} {:>10}", "change", "requests"));
    for k in crate::policy::replay::KINDS {
        out(format!(
            "{:<20} {:>10}",
            k,
            r.changes.get(k).unwrap_or_default()
        ));
    }
    for (k, ex) in &r.examples {
        out(format!("\n{k}:"));
        for u in &ex.users {
            out(format!(
                "  user {:<24} {:>6}  e.g. {}",
                u.id,
                u.requests,
                u.audit_ids.join(", ")
            ));
        }
        for s in &ex.sessions {
            out(format!(
                "  session {:<21} {:>6}  e.g. {}",
                s.id,
                s.requests,
                s.audit_ids.join(", ")
            ));
        }
    }
}

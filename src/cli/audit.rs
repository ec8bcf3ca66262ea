//! `token-broker audit …`: query the record, verify the hash chains, print
//! checkpoints.

use clap::Subcommand;
use serde_json::json;
use std::io::Write as _;

use super::output::{CmdResult, Failure, fmt_ms, out, out_json, store_for};
use crate::audit::AuditRow;
use crate::audit::chain::ChainFault;
use crate::audit::checkpoint::{self, Checkpointer, SigningKey, VerifierKey};
use crate::audit::query::{AuditParams, csv_header, csv_line, encode_cursor, parse_time};
use crate::settings::Settings;
use crate::store::{AuditFilter, Store};

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum AuditCmd {
    /// Query a tenant's audit rows, newest first (a page as a table or --json;
    /// every matching row with --csv or --ndjson).
    Query {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        filters: AuditParams,
        /// Every matching row as CSV (with a header row), streamed.
        #[arg(long, conflicts_with_all = ["json", "ndjson"])]
        csv: bool,
        /// Every matching row as JSON lines, streamed.
        #[arg(long, conflicts_with = "json")]
        ndjson: bool,
    },
    /// Counts of issued and refused tokens grouped by role, user, session, rule or day.
    Summary {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "role")]
        by: String,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// At most this many groups, most issued first (1-10000, default 1000).
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Delete rows older than DATE (RFC 3339 or unix seconds), keeping the chain
    /// verifiable from the recorded prune point.
    Prune {
        #[arg(long)]
        before: String,
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Recompute the hash chains and report the first bad row.
    Verify {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// A checkpoint printed earlier by `audit checkpoint --json` (file path or
        /// the JSON itself): also detects truncation of the tail.
        #[arg(long)]
        checkpoint: Option<String>,
        /// A file of signed checkpoints (the broker's checkpoint file, or notes
        /// printed by `audit checkpoint`): every row they cover must still be there,
        /// unchanged and in order. Needs --public-key.
        #[arg(long, requires = "public_key")]
        checkpoints: Option<String>,
        /// The verifier key, as `audit checkpoint-key` prints it (or a file holding it).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Print each tenant's signed checkpoint (with a checkpoint key; also
    /// appended to the checkpoint file), or its chain head without one.
    Checkpoint {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Print the checkpoint verifier key (`<name>+<key hash>+<base64 key>`).
    CheckpointKey {
        /// Create the key file named by `checkpoint_key_file` (never overwrites).
        #[arg(long)]
        generate: bool,
        /// The key's name in signature lines (with --generate).
        #[arg(long, default_value = "token-broker")]
        name: String,
    },
    /// Print an inclusion proof of one row (by --token, --audit-id or
    /// --token-id), or a consistency proof between tree sizes (--from, --to).
    Prove {
        #[arg(long)]
        tenant: String,
        #[arg(long, group = "what")]
        token: Option<String>,
        #[arg(long, group = "what")]
        audit_id: Option<String>,
        #[arg(long, group = "what")]
        token_id: Option<String>,
        #[arg(long, group = "what", requires = "to")]
        from: Option<u64>,
        #[arg(long, requires = "from")]
        to: Option<u64>,
    },
    /// Check a proof printed by `audit prove --json` (or the HTTP proof route)
    /// with the verifier key, without the database.
    VerifyProof {
        /// The proof file (`-` for stdin).
        file: String,
        #[arg(long)]
        public_key: String,
    },
}

pub use crate::audit::verify::{Checkpoint, TenantVerify, checkpoint_fault, verify_tenant};

/// Prints a page of audit rows as the table both CLIs show (local and `--server`).
pub fn print_rows(rows: &[AuditRow], next: Option<&str>) {
    out(
        "TIME                      KIND           OUTCOME  USER             ROLE           SESSION                    RULE            V   CODE",
    );
    for r in rows {
        // By characters: a row from a server (`--server`) can hold any text.
        let sid = r.session_id.as_deref().unwrap_or_default();
        let sid: String = if sid.chars().count() > 26 {
            sid.chars().take(25).chain(['…']).collect()
        } else {
            sid.to_owned()
        };
        out(format!(
            "{:<25} {:<14} {:<8} {:<16} {:<14} {:<26} {:<15} {:<3} {}",
            fmt_ms(r.at_ms),
            r.kind,
            r.outcome,
            r.user_id.clone().unwrap_or_default(),
            r.granted_role
                .clone()
                .or(r.requested_role.clone())
                .unwrap_or_default(),
            sid,
            r.rule.clone().unwrap_or_default(),
            r.policy_version.map(|v| v.to_string()).unwrap_or_default(),
            r.code.clone().unwrap_or_default()
        ));
    }
    if let Some(n) = next {
        out(format!("more: --cursor {n}"));
    }
}

/// Reads `--checkpoints FILE` (signatures checked with `--public-key`).
type Signed = (Vec<(String, checkpoint::Checkpoint)>, Option<VerifierKey>);

fn signed_checkpoints(file: Option<&str>, key: Option<&str>) -> Result<Signed, Failure> {
    let (Some(file), Some(key)) = (file, key) else {
        return Ok((Vec::new(), None));
    };
    let key = VerifierKey::from_arg(key).map_err(|e| Failure {
        message: e.to_string(),
        code: 2,
    })?;
    let text = std::fs::read_to_string(file).map_err(|e| Failure {
        message: format!("cannot read checkpoints {file}: {}", e.kind()),
        code: 2,
    })?;
    let cps = checkpoint::open_checkpoints(&text, &key).map_err(|e| Failure {
        message: format!("{file}: {e}"),
        code: 1,
    })?;
    if cps.is_empty() {
        return Err(Failure {
            message: format!("{file} holds no checkpoints"),
            code: 2,
        });
    }
    Ok((cps, Some(key)))
}

/// Adds the signed-checkpoint check to a tenant's chain result: the chain
/// verifier names a row whose content does not match its hash; this catches
/// what a rewrite with recomputed hashes leaves consistent.
/// A tenant asked for by name (`named`) with no checkpoint among `signed`
/// fails: nothing signed vouches for its history, and a chain alone can be
/// recomputed by whoever can write the database.
pub async fn apply_signed(
    store: &Store,
    r: &mut TenantVerify,
    signed: &[(String, checkpoint::Checkpoint)],
    key: Option<&VerifierKey>,
    named: bool,
) -> Result<(), Failure> {
    let Some(key) = key else { return Ok(()) };
    let mine: Vec<checkpoint::Checkpoint> = signed
        .iter()
        .filter(|(t, _)| *t == r.tenant)
        .map(|(_, c)| c.clone())
        .collect();
    if r.fault.is_none() && mine.is_empty() && named {
        r.ok = false;
        r.fault = Some(ChainFault {
            audit_id: String::new(),
            seq: 0,
            problem: "no_checkpoint",
            message: "the checkpoints hold none of this tenant: its chain verifies, but nothing signed vouches for it".into(),
        });
        return Ok(());
    }
    if r.fault.is_some() || mine.is_empty() {
        return Ok(());
    }
    if let Some(f) = checkpoint::verify_tenant_signed(store, &r.tenant, &mine, key).await? {
        r.ok = false;
        r.fault = Some(ChainFault {
            audit_id: String::new(),
            seq: f.size as i64,
            problem: f.problem,
            message: f.message,
        });
    }
    Ok(())
}

/// `audit verify --checkpoints` as a library call: every tenant with a head
/// or a checkpoint (or only `tenant`), chain plus signed checkpoints.
pub async fn verify_signed(
    store: &Store,
    tenant: Option<&str>,
    notes: &str,
    key: &VerifierKey,
) -> Result<Vec<TenantVerify>, Failure> {
    let signed = checkpoint::open_checkpoints(notes, key).map_err(|e| Failure {
        message: e.to_string(),
        code: 1,
    })?;
    let mut tenants: Vec<String> = store
        .audit_heads()
        .await?
        .into_iter()
        .map(|h| h.tenant)
        .collect();
    for (t, _) in &signed {
        if !tenants.contains(t) {
            tenants.push(t.clone());
        }
    }
    tenants.retain(|t| tenant.is_none_or(|x| x == t));
    let mut out = Vec::new();
    for t in &tenants {
        let mut r = verify_tenant(store, t, None).await?;
        apply_signed(store, &mut r, &signed, Some(key), tenant.is_some()).await?;
        out.push(r);
    }
    Ok(out)
}

/// The signing key and checkpoint file from the settings.
pub fn checkpointer(settings: &Settings) -> Result<Checkpointer, Failure> {
    let Some(path) = &settings.checkpoint_key_file else {
        return Err(Failure {
            message:
                "no checkpoint key: set checkpoint_key_file (TOKEN_BROKER_CHECKPOINT_KEY_FILE)"
                    .into(),
            code: 2,
        });
    };
    let key = SigningKey::load(path).map_err(|e| Failure {
        message: e.to_string(),
        code: 2,
    })?;
    Ok(Checkpointer::new(key, settings.checkpoint_file.clone(), 1))
}

fn prove_failure(e: checkpoint::ProveError) -> Failure {
    Failure {
        message: e.to_string(),
        code: 1,
    }
}

pub use crate::audit::query::issued_row;

/// `audit prune` of one tenant: deletes its rows older than `before_ms` and
/// records the prune as a row of its history, with the prune point and the
/// Merkle frontier of the deleted rows (signed checkpoints and proofs of later
/// rows stay checkable; a prune point without such a row is refused by
/// `verify --checkpoints`).
pub async fn prune_tenant(
    store: &Store,
    tenant: &str,
    before_ms: i64,
    now: i64,
    key: Option<&SigningKey>,
) -> Result<Option<crate::store::PruneRow>, Failure> {
    let tree = checkpoint::load(store, tenant, None).await.ok();
    let Some(p) = store.prune_audit(tenant, before_ms, now).await? else {
        return Ok(None);
    };
    let mut row = AuditRow::new(
        tenant,
        crate::audit::Kind::AuditPruned,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::Cli,
        now,
    );
    let mut detail = json!({"before_ms": before_ms, "through_seq": p.through_seq, "through_hash": p.through_hash, "rows_deleted": p.rows_deleted});
    if let Some(f) = tree.and_then(|tr| checkpoint::frontier_at(&tr, p.through_seq as u64)) {
        detail[checkpoint::FRONTIER_FIELD] = json!(
            f.iter()
                .map(crate::audit::merkle::to_hex)
                .collect::<Vec<_>>()
        );
        // The operator's key vouches for the prune point: the database alone
        // cannot make a prune that `verify --checkpoints` accepts.
        if let (Some(key), Some(r)) = (
            key,
            crate::audit::merkle::CompactRange::from_frontier(p.through_seq as u64, &f),
        ) {
            detail[checkpoint::PRUNE_NOTE_FIELD] = json!(key.sign(&checkpoint::Checkpoint {
                origin: checkpoint::prune_origin(tenant),
                size: p.through_seq as u64,
                root: r.root(),
            }));
        }
    }
    row.detail = Some(detail.to_string());
    crate::admin::record(store, row).await?;
    Ok(Some(p))
}

/// CLI reads are audited like API reads (actor `cli`).
async fn record_cli_read(
    store: &Store,
    tenant: &str,
    filters: &AuditParams,
    what: &str,
) -> Result<(), Failure> {
    let mut row = AuditRow::new(
        tenant,
        crate::audit::Kind::AuditRead,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::Cli,
        crate::clock::now_unix_ms(),
    );
    row.detail = Some(json!({"read": what, "filters": filters.for_record()}).to_string());
    crate::admin::record(store, row).await?;
    Ok(())
}

/// Streams every matching row to stdout, a page at a time.
async fn export(store: &Store, f: &mut AuditFilter, csv: bool) -> CmdResult {
    use std::io::Write;
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    if csv {
        o.write_all(csv_header().as_bytes())?;
    }
    f.limit = 1000;
    loop {
        let rows = store.query_audit(f).await?;
        for r in &rows {
            if csv {
                o.write_all(csv_line(r).as_bytes())?;
            } else {
                serde_json::to_writer(&mut o, r)?;
                o.write_all(b"\n")?;
            }
        }
        if (rows.len() as i64) < f.limit {
            break;
        }
        f.before = rows.last().map(crate::store::AuditCursor::after);
    }
    o.flush()?;
    Ok(())
}

pub fn parse_checkpoints(arg: &str) -> Result<Vec<Checkpoint>, Failure> {
    let text = if arg.trim_start().starts_with(['{', '[']) {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg).map_err(|e| Failure {
            message: format!("cannot read checkpoint {arg}: {e}"),
            code: 2,
        })?
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Failure {
        message: format!("checkpoint is not JSON: {e}"),
        code: 2,
    })?;
    let list = match v.get("checkpoints") {
        Some(l) => l.clone(),
        None => v,
    };
    let list = if list.is_array() {
        list
    } else {
        serde_json::Value::Array(vec![list])
    };
    serde_json::from_value(list).map_err(|e| Failure {
        message: format!("checkpoint must have tenant, count and hash: {e}"),
        code: 2,
    })
}

/// `audit verify-proof FILE --public-key KEY`: offline, no database.
fn verify_proof_cmd(file: &str, key: &str) -> CmdResult {
    let key = VerifierKey::from_arg(key).map_err(|e| Failure {
        message: e.to_string(),
        code: 2,
    })?;
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).map_err(|e| Failure {
            message: format!("cannot read {file}: {}", e.kind()),
            code: 2,
        })?
    };
    match checkpoint::verify_proof(&text, &key) {
        Ok(what) => {
            out(format!("ok: {what}"));
            Ok(())
        }
        Err(why) => Err(Failure {
            message: format!("proof rejected: {why}"),
            code: 1,
        }),
    }
}

pub async fn run(settings: Settings, cmd: AuditCmd, json: bool) -> CmdResult {
    if let AuditCmd::VerifyProof { file, public_key } = &cmd {
        return verify_proof_cmd(file, public_key);
    }
    // Every other subcommand opens the store first, as it always has.
    let store = store_for(&settings).await?;
    match cmd {
        AuditCmd::Query {
            tenant,
            filters,
            csv,
            ndjson,
        } => query(&store, &tenant, &filters, csv, ndjson, json).await,
        AuditCmd::Verify {
            tenant,
            checkpoint,
            checkpoints,
            public_key,
        } => {
            let sources = VerifySources {
                checkpoint: checkpoint.as_deref(),
                checkpoints: checkpoints.as_deref(),
                public_key: public_key.as_deref(),
            };
            verify(&store, tenant, &sources, json).await
        }
        AuditCmd::Summary {
            tenant,
            by,
            since,
            until,
            limit,
        } => {
            summary(
                &store,
                &tenant,
                &by,
                (since.as_deref(), until.as_deref()),
                limit,
                json,
            )
            .await
        }
        AuditCmd::Prune { before, tenant } => prune(&settings, &store, &before, tenant, json).await,
        AuditCmd::Checkpoint { tenant } => {
            checkpoint_cmd(&settings, &store, tenant.as_deref(), json).await
        }
        AuditCmd::CheckpointKey { generate, name } => checkpoint_key(&settings, generate, &name),
        AuditCmd::Prove {
            tenant,
            token,
            audit_id,
            token_id,
            from,
            to,
        } => {
            let what = ProveWhat {
                token,
                audit_id,
                token_id,
                from,
                to,
            };
            prove(&settings, &store, &tenant, what, json).await
        }
        AuditCmd::VerifyProof { .. } => unreachable!("handled before opening the store"),
    }
}

/// `audit query`: a page as a table or JSON, or every matching row as CSV or
/// NDJSON. The read itself is recorded first.
async fn query(
    store: &Store,
    tenant: &str,
    filters: &AuditParams,
    csv: bool,
    ndjson: bool,
    json: bool,
) -> CmdResult {
    let mut f = filters.to_filter(tenant).map_err(|e| Failure {
        message: e.message,
        code: 2,
    })?;
    let format = if csv {
        "csv"
    } else if ndjson {
        "ndjson"
    } else {
        "query"
    };
    record_cli_read(store, tenant, filters, format).await?;
    if csv || ndjson {
        return export(store, &mut f, csv).await;
    }
    let rows = store.query_audit(&f).await?;
    let next = (rows.len() as i64 == f.limit)
        .then(|| {
            rows.last()
                .map(|r| encode_cursor(crate::store::AuditCursor::after(r)))
        })
        .flatten();
    if json {
        out_json(&json!({"items": rows, "next": next}));
    } else {
        print_rows(&rows, next.as_deref());
    }
    Ok(())
}

/// What `audit verify` checks the chains against, beyond the rows themselves.
struct VerifySources<'a> {
    checkpoint: Option<&'a str>,
    checkpoints: Option<&'a str>,
    public_key: Option<&'a str>,
}

/// `audit verify`: recompute each tenant's chain, check it against the
/// checkpoints given, report, and fail (exit 1) when any chain is bad.
async fn verify(
    store: &Store,
    tenant: Option<String>,
    sources: &VerifySources<'_>,
    json: bool,
) -> CmdResult {
    let (signed, vkey) = signed_checkpoints(sources.checkpoints, sources.public_key)?;
    let cps = match sources.checkpoint {
        Some(c) => parse_checkpoints(c)?,
        None => Vec::new(),
    };
    let named = tenant.is_some();
    let tenants = verify_tenants(store, tenant, &cps, &signed).await?;
    let mut results = Vec::new();
    for t in &tenants {
        let cp = cps.iter().find(|c| &c.tenant == t);
        let mut r = verify_tenant(store, t, cp).await?;
        apply_signed(store, &mut r, &signed, vkey.as_ref(), named).await?;
        results.push(r);
    }
    let unsigned: Vec<&str> = tenants
        .iter()
        .filter(|t| vkey.is_some() && !signed.iter().any(|(s, _)| s == *t))
        .map(String::as_str)
        .collect();
    if !named && !unsigned.is_empty() {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(
            e,
            "note: the checkpoints hold none of {}: their chains were checked alone",
            unsigned.join(", ")
        );
    }
    let ok = results.iter().all(|r| r.ok);
    let rows: u64 = results.iter().map(|r| r.rows).sum();
    if json {
        out_json(&json!({"ok": ok, "rows": rows, "tenants": results}));
    } else {
        print_verify_results(&results);
    }
    if !ok {
        return Err(Failure {
            message: "audit chain verification failed".into(),
            code: 1,
        });
    }
    Ok(())
}

/// The tenants `audit verify` checks: the one asked for, or every tenant
/// with a chain head, a checkpoint or a signed checkpoint.
async fn verify_tenants(
    store: &Store,
    tenant: Option<String>,
    cps: &[Checkpoint],
    signed: &[(String, checkpoint::Checkpoint)],
) -> Result<Vec<String>, Failure> {
    if let Some(t) = tenant {
        return Ok(vec![t]);
    }
    let mut t: Vec<String> = store
        .audit_heads()
        .await?
        .into_iter()
        .map(|h| h.tenant)
        .collect();
    for cp in cps {
        if !t.contains(&cp.tenant) {
            t.push(cp.tenant.clone());
        }
    }
    // An erased tenant has no head left to list it.
    for (st, _) in signed {
        if !t.contains(st) {
            t.push(st.clone());
        }
    }
    Ok(t)
}

fn print_verify_results(results: &[TenantVerify]) {
    for r in results {
        match &r.fault {
            None => out(format!(
                "{}: ok, {} rows verified, head seq {} hash {}",
                r.tenant, r.rows, r.head_seq, r.head_hash
            )),
            Some(f) => out(format!(
                "{}: FAILED at seq {}{}: {} ({})",
                r.tenant,
                f.seq,
                if f.audit_id.is_empty() {
                    String::new()
                } else {
                    format!(" audit id {}", f.audit_id)
                },
                f.message,
                f.problem
            )),
        }
    }
}

/// `audit summary`: issued and refused counts grouped by one dimension.
async fn summary(
    store: &Store,
    tenant: &str,
    by: &str,
    (since, until): (Option<&str>, Option<&str>),
    limit: Option<i64>,
    json: bool,
) -> CmdResult {
    let usage = |e: crate::audit::query::QueryError| Failure {
        message: e.message,
        code: 2,
    };
    let since = since
        .map(|v| parse_time("since", v))
        .transpose()
        .map_err(usage)?;
    let until = until
        .map(|v| parse_time("until", v))
        .transpose()
        .map_err(usage)?;
    let limit = crate::audit::query::summary_limit(limit).map_err(usage)?;
    let (groups, truncated) =
        crate::audit::query::summary_groups(store, tenant, by, (since, until), limit).await?;
    if json {
        out_json(&json!({"by": by, "groups": groups, "truncated": truncated}));
    } else {
        print_summary(by, &groups, truncated);
    }
    Ok(())
}

/// A summary as the table both CLIs show (local and `--server`).
pub fn print_summary(by: &str, groups: &[crate::store::SummaryRow], truncated: bool) {
    out(format!(
        "{:<40} {:>10} {:>10}",
        by.to_uppercase(),
        "ISSUED",
        "REFUSED"
    ));
    for g in groups {
        out(format!(
            "{:<40} {:>10} {:>10}",
            g.key.as_deref().unwrap_or("-"),
            g.issued,
            g.refused
        ));
    }
    if truncated {
        out(format!(
            "(the first {} groups, most issued first; --limit shows more)",
            groups.len()
        ));
    }
}

/// `audit prune`: delete rows older than `before` in one or every tenant,
/// recording (and, with a checkpoint key, signing) the prune point.
async fn prune(
    settings: &Settings,
    store: &Store,
    before: &str,
    tenant: Option<String>,
    json: bool,
) -> CmdResult {
    let before_ms = parse_time("before", before).map_err(|e| Failure {
        message: e.message,
        code: 2,
    })?;
    let tenants: Vec<String> = match tenant {
        Some(t) => vec![t],
        None => store
            .audit_heads()
            .await?
            .into_iter()
            .map(|h| h.tenant)
            .collect(),
    };
    let now = crate::clock::now_unix_ms();
    // With a checkpoint key the prune point is signed (a configured key
    // that cannot be read stops the prune).
    let key = match &settings.checkpoint_key_file {
        Some(path) => Some(SigningKey::load(path).map_err(|e| Failure {
            message: e.to_string(),
            code: 2,
        })?),
        None => None,
    };
    let mut report = Vec::new();
    for t in tenants {
        let Some(p) = prune_tenant(store, &t, before_ms, now, key.as_ref()).await? else {
            report.push(json!({"tenant": t, "rows_deleted": 0}));
            continue;
        };
        report.push(json!({"tenant": t, "rows_deleted": p.rows_deleted, "through_seq": p.through_seq, "through_hash": p.through_hash}));
    }
    if json {
        out_json(&json!({ "pruned": report }));
    } else {
        for r in report {
            out(format!(
                "{}: {} rows deleted{}",
                r["tenant"].as_str().unwrap_or_default(),
                r["rows_deleted"],
                r.get("through_seq")
                    .map(|s| format!(", chain now starts after seq {s}"))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// `audit checkpoint`: signed checkpoints with a checkpoint key, the bare
/// chain heads without one.
async fn checkpoint_cmd(
    settings: &Settings,
    store: &Store,
    tenant: Option<&str>,
    json: bool,
) -> CmdResult {
    if settings.checkpoint_key_file.is_some() {
        return signed_checkpoint_cmd(settings, store, tenant, json).await;
    }
    let heads: Vec<Checkpoint> = store
        .audit_heads()
        .await?
        .into_iter()
        .filter(|h| tenant.is_none_or(|t| t == h.tenant))
        .map(|h| Checkpoint {
            tenant: h.tenant,
            count: h.seq,
            hash: h.hash,
        })
        .collect();
    if json {
        out_json(&json!({ "checkpoints": heads }));
    } else {
        for h in heads {
            out(format!("{}\t{}\t{}", h.tenant, h.count, h.hash));
        }
    }
    Ok(())
}

/// `audit checkpoint` with a checkpoint key: refresh and print each
/// tenant's signed note.
async fn signed_checkpoint_cmd(
    settings: &Settings,
    store: &Store,
    tenant: Option<&str>,
    json: bool,
) -> CmdResult {
    let cpr = checkpointer(settings)?;
    let mut notes = Vec::new();
    for h in store.audit_heads().await? {
        if tenant.is_some_and(|t| t != h.tenant) {
            continue;
        }
        let note = cpr
            .refresh(store, &h.tenant, 1)
            .await
            .map_err(|e| Failure {
                message: format!("{}: {e}", h.tenant),
                code: 1,
            })?;
        if let Some(n) = note {
            notes.push((h.tenant, h.seq, h.hash, n));
        }
    }
    if json {
        let items: Vec<_> = notes
            .iter()
            .map(|(t, c, h, n)| json!({"tenant": t, "count": c, "hash": h, "note": n}))
            .collect();
        out_json(&json!({ "checkpoints": items }));
    } else {
        for (_, _, _, n) in notes {
            print!("{n}");
        }
    }
    Ok(())
}

/// `audit checkpoint-key`: print (or first generate) the verifier key.
fn checkpoint_key(settings: &Settings, generate: bool, name: &str) -> CmdResult {
    let Some(path) = &settings.checkpoint_key_file else {
        return Err(Failure {
            message:
                "no checkpoint key: set checkpoint_key_file (TOKEN_BROKER_CHECKPOINT_KEY_FILE)"
                    .into(),
            code: 2,
        });
    };
    let key = if generate {
        SigningKey::generate(path, name)
    } else {
        SigningKey::load(path)
    }
    .map_err(|e| Failure {
        message: e.to_string(),
        code: 2,
    })?;
    out(key.verifier().to_string());
    Ok(())
}

/// What `audit prove` is asked to prove: one row, or consistency between
/// two tree sizes.
struct ProveWhat {
    token: Option<String>,
    audit_id: Option<String>,
    token_id: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
}

/// `audit prove`: an inclusion proof of one row or a consistency proof.
async fn prove(
    settings: &Settings,
    store: &Store,
    tenant: &str,
    what: ProveWhat,
    json: bool,
) -> CmdResult {
    let cpr = checkpointer(settings)?;
    let proof = if let (Some(from), Some(to)) = (what.from, what.to) {
        let p = checkpoint::prove_consistency(store, &cpr, tenant, from, to)
            .await
            .map_err(prove_failure)?;
        serde_json::to_value(p)?
    } else {
        let id = proved_row(store, tenant, what).await?;
        let p = checkpoint::prove_inclusion(store, &cpr, tenant, &id)
            .await
            .map_err(prove_failure)?;
        serde_json::to_value(p)?
    };
    if json {
        out_json(&proof);
    } else {
        out(serde_json::to_string_pretty(&proof)?);
    }
    Ok(())
}

/// The audit id of the row `audit prove` is to include: given, or the
/// issuance row of a token or token id.
async fn proved_row(store: &Store, tenant: &str, what: ProveWhat) -> Result<String, Failure> {
    let id = match (what.audit_id, what.token, what.token_id) {
        (Some(id), _, _) => Some(id),
        (None, t, tid) if t.is_some() || tid.is_some() => {
            issued_row(store, tenant, t.as_deref(), tid.as_deref()).await?
        }
        _ => {
            return Err(Failure {
                message: "say what to prove: --token, --audit-id, --token-id, or --from and --to"
                    .into(),
                code: 2,
            });
        }
    };
    id.ok_or_else(|| Failure {
        message: "no such token in this tenant's audit history".into(),
        code: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Kind, Outcome};

    /// A server (`--server`) can answer rows with any text: the table cuts
    /// long session ids at a character, never inside one.
    #[test]
    fn the_table_cuts_a_long_session_id_between_characters() {
        let mut r = AuditRow::new("acme", Kind::TokenIssued, Outcome::Issued, Actor::ApiKey, 0);
        r.session_id = Some("é".repeat(40));
        print_rows(&[r], None);
    }
}

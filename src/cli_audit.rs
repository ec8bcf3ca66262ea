//! `token-broker audit …`: query the record, verify the hash chains, print
//! checkpoints.

use clap::Subcommand;
use serde::Serialize;
use serde_json::json;

use crate::audit::chain::{self, ChainFault, Verifier};
use crate::audit::{AuditRow, kind};
use crate::cli::{CmdResult, Failure, fmt_ms, out, out_json, store_for};
use crate::routes::audit::{AuditParams, csv_header, csv_line, encode_cursor, parse_time};
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
        #[arg(long)]
        json: bool,
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
        #[arg(long)]
        json: bool,
    },
    /// Delete rows older than DATE (RFC 3339 or unix seconds), keeping the chain
    /// verifiable from the recorded prune point.
    Prune {
        #[arg(long)]
        before: String,
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
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
        #[arg(long)]
        json: bool,
    },
    /// Print each chain's head (tenant, count, hash) to keep outside the database.
    Checkpoint {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// One tenant's verification result.
#[derive(Debug, Clone, Serialize)]
pub struct TenantVerify {
    pub tenant: String,
    pub ok: bool,
    pub rows: u64,
    pub head_seq: i64,
    pub head_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<ChainFault>,
}

/// A stored checkpoint: `{"tenant": …, "count": …, "hash": …}` (or a list of them).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub tenant: String,
    pub count: i64,
    pub hash: String,
}

/// Verifies one tenant's chain from genesis against its stored head and an
/// optional external checkpoint.
pub async fn verify_tenant(
    store: &Store,
    tenant: &str,
    checkpoint: Option<&Checkpoint>,
) -> Result<TenantVerify, Failure> {
    // After a prune the chain starts at the recorded prune point.
    let start = store.last_prune(tenant).await?;
    let (from_seq, from_hash) = start
        .map(|p| (p.through_seq, p.through_hash))
        .unwrap_or((0, chain::GENESIS.to_owned()));
    // Read the head first: rows committed after it (a running broker) are left
    // for the next verification instead of racing with it.
    let head = store.audit_head(tenant).await?;
    let head_seq = head.as_ref().map(|h| h.seq).unwrap_or(0);
    // Pages of rows are read here and decoded and checked (hashing is most of
    // the work) on a second thread, in order, so both cores work. Rows are
    // decoded there straight from the driver's buffers, without allocating.
    const PAGE: i64 = 4096;
    let (tx, rx) = std::sync::mpsc::sync_channel::<crate::store::ChainPage>(2);
    let cp_count = checkpoint.map(|c| c.count);
    let checker = std::thread::spawn(move || {
        let mut v = Verifier::new(from_seq, &from_hash);
        let mut seen_at_checkpoint: Option<String> = None;
        let mut buf = Vec::with_capacity(2048);
        for page in rx {
            let mut fault = None;
            page.for_each(|row| {
                let row = match row {
                    Ok(r) => r,
                    Err(e) => {
                        fault = Some(ChainFault {
                            audit_id: String::new(),
                            seq: v.expected_seq,
                            problem: "unreadable",
                            message: format!(
                                "a row near seq {} cannot be read: {e}",
                                v.expected_seq
                            ),
                        });
                        return false;
                    }
                };
                if let Err(f) = v.push_ref(&row, &mut buf) {
                    fault = Some(f);
                    return false;
                }
                if cp_count == Some(row.seq) {
                    seen_at_checkpoint = Some(row.hash.to_owned());
                }
                true
            });
            if fault.is_some() {
                // Dropping `rx` ends the scan.
                return (v, fault, seen_at_checkpoint);
            }
        }
        (v, None, seen_at_checkpoint)
    });
    let scanned = store
        .scan_chain(tenant, from_seq, head_seq, PAGE, |page| {
            tx.send(page).is_ok()
        })
        .await;
    drop(tx);
    let (v, mut fault, seen_at_checkpoint) = checker.join().map_err(|_| Failure {
        message: "the verification thread failed".into(),
        code: 1,
    })?;
    scanned?;
    if fault.is_none() {
        let (hs, hh) = head
            .as_ref()
            .map(|h| (h.seq, h.hash.clone()))
            .unwrap_or((0, chain::GENESIS.to_owned()));
        if hs != v.expected_seq - 1 || hh != v.head_hash {
            fault = Some(ChainFault {
                audit_id: String::new(),
                seq: v.expected_seq - 1,
                problem: "head_mismatch",
                message: format!(
                    "the rows end at seq {} but the stored head says seq {hs}: rows at the end were removed (or the head was edited)",
                    v.expected_seq - 1
                ),
            });
        }
    }
    if fault.is_none()
        && let Some(cp) = checkpoint
    {
        match &seen_at_checkpoint {
            Some(h) if *h == cp.hash => {}
            None if cp.count <= from_seq => {} // pruned since the checkpoint was taken
            Some(_) => {
                fault = Some(ChainFault {
                    audit_id: String::new(),
                    seq: cp.count,
                    problem: "modified",
                    message: format!(
                        "row {} does not carry the checkpoint's hash: the chain was rewritten",
                        cp.count
                    ),
                });
            }
            None => {
                fault = Some(ChainFault {
                    audit_id: String::new(),
                    seq: cp.count,
                    problem: "truncated",
                    message: format!(
                        "the checkpoint names row {} but the chain has only {} rows: the tail was truncated",
                        cp.count,
                        v.expected_seq - 1
                    ),
                });
            }
        }
    }
    Ok(TenantVerify {
        tenant: tenant.to_owned(),
        ok: fault.is_none(),
        rows: v.rows,
        head_seq: v.expected_seq - 1,
        head_hash: v.head_hash,
        fault,
    })
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
        kind::AUDIT_READ,
        "ok",
        "cli",
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
        f.before_seq = rows.last().map(|r| r.seq);
    }
    o.flush()?;
    Ok(())
}

fn parse_checkpoints(arg: &str) -> Result<Vec<Checkpoint>, Failure> {
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

pub async fn run(settings: Settings, cmd: AuditCmd) -> CmdResult {
    let store = store_for(&settings).await?;
    match cmd {
        AuditCmd::Query {
            tenant,
            filters,
            json,
            csv,
            ndjson,
        } => {
            let mut f = filters.to_filter(&tenant).map_err(|e| Failure {
                message: e.body.message,
                code: 2,
            })?;
            record_cli_read(
                &store,
                &tenant,
                &filters,
                if csv {
                    "csv"
                } else if ndjson {
                    "ndjson"
                } else {
                    "query"
                },
            )
            .await?;
            if csv || ndjson {
                return export(&store, &mut f, csv).await;
            }
            let rows = store.query_audit(&f).await?;
            let next = (rows.len() as i64 == f.limit)
                .then(|| rows.last().map(|r| encode_cursor(r.seq)))
                .flatten();
            if json {
                out_json(&json!({"items": rows, "next": next}));
            } else {
                out(
                    "TIME                      KIND           OUTCOME  USER             ROLE           SESSION                    RULE            V   CODE",
                );
                for r in &rows {
                    let sid = r.session_id.clone().unwrap_or_default();
                    let sid: String = if sid.len() > 26 {
                        format!("{}…", &sid[..25])
                    } else {
                        sid
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
            Ok(())
        }
        AuditCmd::Verify {
            tenant,
            checkpoint,
            json,
        } => {
            let cps = match &checkpoint {
                Some(c) => parse_checkpoints(c)?,
                None => Vec::new(),
            };
            let tenants: Vec<String> = match tenant {
                Some(t) => vec![t],
                None => {
                    let mut t: Vec<String> = store
                        .audit_heads()
                        .await?
                        .into_iter()
                        .map(|h| h.tenant)
                        .collect();
                    for cp in &cps {
                        if !t.contains(&cp.tenant) {
                            t.push(cp.tenant.clone());
                        }
                    }
                    t
                }
            };
            let mut results = Vec::new();
            for t in &tenants {
                let cp = cps.iter().find(|c| &c.tenant == t);
                results.push(verify_tenant(&store, t, cp).await?);
            }
            let ok = results.iter().all(|r| r.ok);
            let rows: u64 = results.iter().map(|r| r.rows).sum();
            if json {
                out_json(&json!({"ok": ok, "rows": rows, "tenants": results}));
            } else {
                for r in &results {
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
            if !ok {
                return Err(Failure {
                    message: "audit chain verification failed".into(),
                    code: 1,
                });
            }
            Ok(())
        }
        AuditCmd::Summary {
            tenant,
            by,
            since,
            until,
            json,
        } => {
            let since = since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()
                .map_err(|e| Failure {
                    message: e.body.message,
                    code: 2,
                })?;
            let until = until
                .as_deref()
                .map(|v| parse_time("until", v))
                .transpose()
                .map_err(|e| Failure {
                    message: e.body.message,
                    code: 2,
                })?;
            let groups = store.audit_summary(&tenant, &by, since, until).await?;
            if json {
                out_json(&json!({"by": by, "groups": groups}));
            } else {
                out(format!(
                    "{:<40} {:>10} {:>10}",
                    by.to_uppercase(),
                    "ISSUED",
                    "REFUSED"
                ));
                for g in groups {
                    out(format!(
                        "{:<40} {:>10} {:>10}",
                        g.key.unwrap_or_else(|| "-".into()),
                        g.issued,
                        g.refused
                    ));
                }
            }
            Ok(())
        }
        AuditCmd::Prune {
            before,
            tenant,
            json,
        } => {
            let before_ms = parse_time("before", &before).map_err(|e| Failure {
                message: e.body.message,
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
            let mut report = Vec::new();
            for t in tenants {
                let Some(p) = store.prune_audit(&t, before_ms, now).await? else {
                    report.push(json!({"tenant": t, "rows_deleted": 0}));
                    continue;
                };
                let mut row = AuditRow::new(&t, kind::AUDIT_PRUNED, "ok", "cli", now);
                row.detail = Some(json!({"before_ms": before_ms, "through_seq": p.through_seq, "through_hash": p.through_hash, "rows_deleted": p.rows_deleted}).to_string());
                crate::admin::record(&store, row).await?;
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
        AuditCmd::Checkpoint { tenant, json } => {
            let heads: Vec<Checkpoint> = store
                .audit_heads()
                .await?
                .into_iter()
                .filter(|h| tenant.as_ref().is_none_or(|t| *t == h.tenant))
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
    }
}

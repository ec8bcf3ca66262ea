//! Audit at scale: generates a big tenant quickly, then times a full verify
//! and every `/v1/audit` filter and summary against it (issue 13, points 4, 5).
//! Not a test and not criterion: build and run it directly (release):
//!
//!     cargo build --release --bench audit_scale
//!     ROWS=5000000 target/release/deps/audit_scale-*[!.d]      # SQLite in a temp dir
//!     BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench ROWS=1000000 …
//!
//! Rows are realistic issuances and refusals (5000 users, 700 sessions, four
//! rules, two keys, 3% refused, one row every ~6 s over a year) sealed into a
//! valid chain in memory and inserted in large transactions with multi-row
//! statements (the write path's own statement shape), so `verify` passes.
//! `KEEP=1` keeps an existing tenant (generated once, measured many times).
//! `ONLY=verify|query` runs one half; `PAGE=N` verifies with pages of N rows.
//! Before either, the summaries' rollup pass runs to completion and is timed
//! (`ROLLUP_CHUNK=N` rows per chunk, `ROLLUP=rebuild` to build it again);
//! `CHECK=1` also compares every summary with a scan of its rows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark with broken fixtures should stop loudly
#![allow(clippy::disallowed_methods, clippy::too_many_lines)] // a benchmark measures real time, setup reads top to bottom

use std::time::Instant;

use sqlx::QueryBuilder;
use token_broker::audit::chain;
use token_broker::audit::{AuditRow, COLUMNS};
use token_broker::cli_audit::verify_tenant;
use token_broker::store::{AuditFilter, Store};

const T0: i64 = 1_735_689_600_000; // 2025-01-01
const STEP_MS: i64 = 6_307; // ~5M rows over a year
/// Groups a summary asks for: what `GET /v1/audit/summary` does by default.
const GROUPS: i64 = token_broker::audit::query::DEFAULT_SUMMARY_GROUPS + 1;

fn row(tenant: &str, k: usize) -> AuditRow {
    let refused = k % 33 == 7;
    let mut r = AuditRow::new(
        tenant,
        if refused {
            token_broker::audit::Kind::TokenRefused
        } else {
            token_broker::audit::Kind::TokenIssued
        },
        if refused {
            token_broker::audit::Outcome::Refused
        } else {
            token_broker::audit::Outcome::Issued
        },
        token_broker::audit::Actor::ApiKey,
        T0 + k as i64 * STEP_MS,
    );
    r.key_id = Some(
        if k.is_multiple_of(2) {
            "keyaaaaaaaaaaaaa"
        } else {
            "keybbbbbbbbbbbbb"
        }
        .into(),
    );
    r.user_id = Some(format!("app:user:u{}", k % 5000));
    r.user_groups = Some("[\"students\"]".into());
    r.session_id = Some(format!(
        "1_MX4xMjM0NTZ-fjE3NjQwMDAwMDAwMDB-c2Vzc2lvbi0{}",
        k % 700
    ));
    r.credential = Some("main".into());
    r.requested_role = Some("publisher".into());
    let rule = ["students", "teachers", "guests", "admins"][k % 4];
    if refused {
        r.code = Some(
            if k.is_multiple_of(2) {
                "no_rule_matched"
            } else {
                "session_denied"
            }
            .into(),
        );
    } else {
        r.granted_role = Some(["publisher", "subscriber", "moderator"][k % 3].into());
        r.granted_expire_time = Some((T0 / 1000) + k as i64 * 6 + 3600);
        r.rule = Some(rule.into());
        r.token_id = Some(uuid::Uuid::now_v7().to_string());
        r.token_sha256 = Some(format!("{:064x}", k));
    }
    r.policy_version = Some(1 + (k / 1_000_000) as i64);
    r.client_addr = Some("10.0.0.7".into());
    r.user_agent = Some("bench/1.0".into());
    r.request_id = Some(uuid::Uuid::now_v7().to_string());
    r
}

macro_rules! push_rows {
    ($qb:ident, $rows:expr) => {
        $qb.push_values($rows, |mut b, r: &AuditRow| {
            b.push_bind(r.audit_id.clone())
                .push_bind(r.tenant.clone())
                .push_bind(r.seq)
                .push_bind(r.at_ms)
                .push_bind(r.kind.clone())
                .push_bind(r.outcome.clone())
                .push_bind(r.code.clone())
                .push_bind(r.actor.clone())
                .push_bind(r.key_id.clone())
                .push_bind(r.idp.clone())
                .push_bind(r.user_id.clone())
                .push_bind(r.user_name.clone())
                .push_bind(r.user_groups.clone())
                .push_bind(r.session_id.clone())
                .push_bind(r.credential.clone())
                .push_bind(r.requested_role.clone())
                .push_bind(r.requested_expire_time)
                .push_bind(r.granted_role.clone())
                .push_bind(r.granted_expire_time)
                .push_bind(r.rule.clone())
                .push_bind(r.policy_version)
                .push_bind(r.token_id.clone())
                .push_bind(r.token_sha256.clone())
                .push_bind(r.client_addr.clone())
                .push_bind(r.user_agent.clone())
                .push_bind(r.request_id.clone())
                .push_bind(r.detail.clone())
                .push_bind(r.prev_hash.clone())
                .push_bind(r.hash.clone());
        });
    };
}

/// Writes `rows` sealed rows for `tenant` and its head, in transactions of
/// 100k rows and statements of 1000 rows.
async fn generate(url: &str, tenant: &str, rows: usize) {
    let mut head = (0i64, chain::GENESIS.to_owned());
    let t = Instant::now();
    macro_rules! run {
        ($pool:expr, $db:ty) => {{
            let pool = $pool;
            let mut k = 0;
            while k < rows {
                let mut tx = pool.begin().await.unwrap();
                let end = (k + 100_000).min(rows);
                while k < end {
                    let n = 1000.min(end - k);
                    let batch: Vec<AuditRow> = (k..k + n)
                        .map(|i| {
                            let mut r = row(tenant, i);
                            head = chain::seal(&mut r, head.0, &head.1);
                            r
                        })
                        .collect();
                    let mut qb =
                        QueryBuilder::<$db>::new(format!("INSERT INTO audit_events ({COLUMNS}) "));
                    push_rows!(qb, batch.iter());
                    qb.build().execute(&mut *tx).await.unwrap();
                    k += n;
                }
                tx.commit().await.unwrap();
                eprint!(
                    "\r{k} rows, {:.0} rows/s",
                    k as f64 / t.elapsed().as_secs_f64()
                );
            }
            sqlx::query("INSERT INTO audit_heads (tenant, seq, hash) VALUES ($1, $2, $3)")
                .bind(tenant)
                .bind(head.0)
                .bind(&head.1)
                .execute(&pool)
                .await
                .unwrap();
        }};
    }
    if url.starts_with("sqlite") {
        use std::str::FromStr;
        let o = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .unwrap()
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .pragma("cache_size", "-200000");
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(o)
            .await
            .unwrap();
        run!(pool, sqlx::Sqlite);
    } else {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .unwrap();
        run!(pool.clone(), sqlx::Postgres);
        sqlx::query("ANALYZE audit_events")
            .execute(&pool)
            .await
            .unwrap();
    }
    eprintln!();
    let s = t.elapsed().as_secs_f64();
    println!(
        "generated {rows} rows in {s:.1} s ({:.0} rows/s)",
        rows as f64 / s
    );
}

/// Best of three (the machine is shared; the first run also warms the cache).
macro_rules! timed {
    ($what:expr, $target_ms:expr, $e:expr) => {{
        let mut best = f64::MAX;
        let mut n = 0;
        for _ in 0..3 {
            let t = Instant::now();
            n = $e;
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        let mark = if best <= $target_ms { "ok  " } else { "SLOW" };
        println!("{mark} {best:9.2} ms  {:<60} {n} rows", $what);
        (best <= $target_ms) as usize
    }};
}

async fn queries(store: &Store, tenant: &str, rows: usize) -> (usize, usize) {
    let mid = T0 + (rows as i64 / 2) * STEP_MS;
    let early = T0 + (rows as i64 / 50) * STEP_MS;
    let filters: Vec<(&str, AuditFilter)> = {
        let base = AuditFilter {
            tenant: tenant.into(),
            limit: 100,
            ..Default::default()
        };
        vec![
            ("(none)", base.clone()),
            (
                "kind=token_refused",
                AuditFilter {
                    kind: Some("token_refused".into()),
                    ..base.clone()
                },
            ),
            (
                "kind=key_created (absent)",
                AuditFilter {
                    kind: Some("key_created".into()),
                    ..base.clone()
                },
            ),
            (
                "role=moderator",
                AuditFilter {
                    role: Some("moderator".into()),
                    ..base.clone()
                },
            ),
            (
                "outcome=refused",
                AuditFilter {
                    outcome: Some("refused".into()),
                    ..base.clone()
                },
            ),
            (
                "code=session_denied",
                AuditFilter {
                    code: Some("session_denied".into()),
                    ..base.clone()
                },
            ),
            (
                "code=absent",
                AuditFilter {
                    code: Some("absent".into()),
                    ..base.clone()
                },
            ),
            (
                "user=app:user:u42",
                AuditFilter {
                    user: Some("app:user:u42".into()),
                    ..base.clone()
                },
            ),
            (
                "session",
                AuditFilter {
                    session_id: Some("1_MX4xMjM0NTZ-fjE3NjQwMDAwMDAwMDB-c2Vzc2lvbi042".into()),
                    ..base.clone()
                },
            ),
            (
                "rule=admins",
                AuditFilter {
                    rule: Some("admins".into()),
                    ..base.clone()
                },
            ),
            (
                "policy_version=1",
                AuditFilter {
                    policy_version: Some(1),
                    ..base.clone()
                },
            ),
            (
                "key_id",
                AuditFilter {
                    key_id: Some("keybbbbbbbbbbbbb".into()),
                    ..base.clone()
                },
            ),
            (
                "token_id (absent)",
                AuditFilter {
                    token_id: Some("0190ffff-ffff-7fff-bfff-ffffffffffff".into()),
                    ..base.clone()
                },
            ),
            (
                // A presented token: looked up by its id, then its fingerprint.
                "token (absent)",
                AuditFilter {
                    token_id: Some("0190ffff-ffff-7fff-bfff-fffffffffffe".into()),
                    token_sha256: Some(format!("{:064x}", u64::MAX)),
                    ..base.clone()
                },
            ),
        ]
    };
    let (mut ok, mut all) = (0, 0);
    for (name, f) in &filters {
        for (tn, since, until) in [
            ("", None, None),
            (" since=mid", Some(mid), None),
            (" until=mid", None, Some(mid)),
            (" since=early until=mid", Some(early), Some(mid)),
            (" since=mid until=mid+1h", Some(mid), Some(mid + 3_600_000)),
        ] {
            let f = AuditFilter {
                since_ms: since,
                until_ms: until,
                ..f.clone()
            };
            ok += timed!(
                format!("query {name}{tn}"),
                25.0,
                store.query_audit(&f).await.unwrap().len()
            );
            all += 1;
        }
    }
    for by in ["role", "user", "session", "rule", "day"] {
        for (tn, since, until) in [
            ("", None, None),
            (" since=mid", Some(mid), None),
            (" since=mid until=mid+1d", Some(mid), Some(mid + 86_400_000)),
        ] {
            ok += timed!(
                format!("summary by={by}{tn}"),
                200.0,
                store
                    .audit_summary(tenant, by, since, until, GROUPS)
                    .await
                    .unwrap()
                    .len()
            );
            all += 1;
            if std::env::var("CHECK").is_ok() {
                // The same groups as a scan of every row of the window.
                let scan = store
                    .audit_summary_scan(tenant, by, since, until, GROUPS)
                    .await
                    .unwrap();
                assert_eq!(
                    store
                        .audit_summary(tenant, by, since, until, GROUPS)
                        .await
                        .unwrap(),
                    scan,
                    "by={by}{tn}"
                );
            }
        }
    }
    (ok, all)
}

fn main() {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let only = std::env::var("ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let url = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let tenant = std::env::var("TENANT").unwrap_or_else(|_| "big".into());
        let have = store.audit_head(&tenant).await.unwrap().map(|h| h.seq).unwrap_or(0);
        if have == 0 {
            generate(&url, &tenant, rows).await;
        } else {
            println!("tenant {tenant} has {have} rows already");
        }
        let rows = store.audit_head(&tenant).await.unwrap().map(|h| h.seq).unwrap_or(0) as usize;
        // What a running broker does at start and every few hours.
        let t = Instant::now();
        store.optimize().await.unwrap();
        println!("planner statistics refreshed in {:.2} s", t.elapsed().as_secs_f64());
        rollup(&store, &tenant).await;
        if only != "query" {
            let t = Instant::now();
            let v = match std::env::var("PAGE").ok().and_then(|p| p.parse().ok()) {
                // Rows per page, to compare page sizes (default: the broker's).
                Some(page) => token_broker::audit::verify::verify_tenant_paged(&store, &tenant, None, page)
                    .await
                    .unwrap(),
                None => verify_tenant(&store, &tenant, None).await.unwrap(),
            };
            let s = t.elapsed().as_secs_f64();
            assert!(v.ok, "{v:?}");
            println!(
                "verified {} rows ({} on the fast pass) in {s:.2} s ({:.0} rows/s), peak RSS {} MiB, on {}",
                v.rows,
                v.rows_fast,
                v.rows as f64 / s,
                peak_rss_mib(),
                store.url_redacted()
            );
        }
        if only != "verify" {
            let (ok, all) = queries(&store, &tenant, rows).await;
            println!("{ok} of {all} queries within target (page <= 25 ms, summary <= 200 ms) over {rows} rows");
        }
    });
}

/// Runs the summaries' rollup pass to completion, as a broker does at start
/// (in its chunks, `ROLLUP_CHUNK=` for another size), and prints how long it
/// took, the slowest chunk (each is one read and one write transaction), and
/// the rollup's size. `ROLLUP=rebuild` drops the tenant's rollup first.
async fn rollup(store: &Store, tenant: &str) {
    let chunk: i64 = std::env::var("ROLLUP_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(token_broker::store::ROLLUP_CHUNK_ROWS);
    if std::env::var("ROLLUP").as_deref() == Ok("rebuild") {
        // A prune of nothing would not do; reset through the tables directly.
        let url = std::env::var("BENCH_DATABASE_URL").unwrap_or_default();
        let sqls = [
            "DELETE FROM audit_rollup WHERE tenant = $1",
            "DELETE FROM audit_rollup_state WHERE tenant = $1",
        ];
        if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            for q in sqls {
                sqlx::query(q).bind(tenant).execute(&pool).await.unwrap();
            }
        } else if !url.is_empty() {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            for q in sqls {
                sqlx::query(q).bind(tenant).execute(&pool).await.unwrap();
            }
        }
    }
    let t = Instant::now();
    let (mut rows, mut chunks, mut slowest, mut size) = (0i64, 0, 0f64, chunk);
    loop {
        // One step at a time, to time each; sized as `Store::rollup_all`
        // sizes them (the size that fit after a chunk was cut short).
        let c = Instant::now();
        let n = store.rollup_pass(tenant, size).await.unwrap();
        if n == 0 {
            break;
        }
        slowest = slowest.max(c.elapsed().as_secs_f64() * 1000.0);
        size = if n < size {
            n
        } else {
            (size + size / 4 + 1).min(chunk)
        };
        rows += n;
        chunks += 1;
    }
    let s = t.elapsed().as_secs_f64();
    let (cells, through) = store.rollup_size(tenant).await.unwrap();
    println!(
        "rollup: counted {rows} rows in {s:.1} s ({:.0} rows/s; {chunks} chunks of up to {chunk}, slowest {slowest:.0} ms), \
         {cells} rollup rows, through seq {through}",
        rows as f64 / s.max(1e-9)
    );
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

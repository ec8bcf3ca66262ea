//! How long `audit verify` takes over a million rows (SQLite, or PostgreSQL
//! when BENCH_DATABASE_URL is set). Not a test: run with
//!
//!     cargo bench --bench audit_verify            # ROWS=1000000 by default
//!
//! It writes ROWS realistic issuance rows through the same group-commit path
//! the broker uses (batches of 1000), then times one full chain verification.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark with broken fixtures should stop loudly
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

use std::time::Instant;

use token_broker::audit::AuditRow;
use token_broker::cli_audit::verify_tenant;
use token_broker::store::Store;

fn main() {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
        let store = Store::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let tenant = format!("bench-{}", std::process::id());
        let mut heads = token_broker::store::HeadCache::default();
        let t = Instant::now();
        let mut written = 0;
        while written < rows {
            let n = 1000.min(rows - written);
            let mut batch: Vec<AuditRow> = (0..n)
                .map(|i| {
                    let k = written + i;
                    let mut r = AuditRow::new(
                        &tenant,
                        token_broker::audit::Kind::TokenIssued,
                        token_broker::audit::Outcome::Issued,
                        token_broker::audit::Actor::ApiKey,
                        1_764_000_000_000 + k as i64,
                    );
                    r.key_id = Some("abcdefghijklmnop".into());
                    r.user_id = Some(format!("user-{}", k % 5000));
                    r.user_groups = Some("[\"students\"]".into());
                    r.session_id = Some(format!(
                        "1_MX4xMjM0NTZ-fjE3NjQwMDAwMDAwMDB-c2Vzc2lvbi0{}",
                        k % 700
                    ));
                    r.credential = Some("main".into());
                    r.requested_role = Some("publisher".into());
                    r.granted_role = Some("publisher".into());
                    r.granted_expire_time = Some(1_764_003_600);
                    r.rule = Some("students".into());
                    r.policy_version = Some(3);
                    r.token_id = Some(uuid::Uuid::new_v4().to_string());
                    r.token_sha256 = Some(format!("{:064x}", k));
                    r.client_addr = Some("10.0.0.7".into());
                    r.user_agent = Some("bench/1.0".into());
                    r.request_id = Some(uuid::Uuid::new_v4().to_string());
                    r
                })
                .collect();
            token_broker::audit::append(&store, &mut batch, &mut heads)
                .await
                .expect("append");
            written += n;
        }
        let write_s = t.elapsed().as_secs_f64();
        println!(
            "wrote {rows} rows in {write_s:.1} s ({:.0} rows/s, batches of 1000) on {}",
            rows as f64 / write_s,
            store.url_redacted()
        );
        let t = Instant::now();
        let v = verify_tenant(&store, &tenant, None).await.expect("verify");
        let s = t.elapsed().as_secs_f64();
        assert!(v.ok, "{v:?}");
        println!(
            "verified {} rows in {s:.2} s ({:.0} rows/s); head seq {} hash {}",
            v.rows,
            v.rows as f64 / s,
            v.head_seq,
            v.head_hash
        );
    });
}

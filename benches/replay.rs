//! How long `policy replay` takes over a million recorded requests (SQLite,
//! or PostgreSQL when BENCH_DATABASE_URL is set). Not a test: run with
//!
//!     cargo bench --bench replay            # ROWS=1000000 by default
//!
//! It records ROWS token requests (issued and refused, with the session facts
//! the decisions saw) through the store's append path, then times one replay
//! of a proposed policy over all of them: reading the rows is the cost;
//! each decision is a few hundred nanoseconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark with broken fixtures should stop loudly
#![allow(clippy::disallowed_methods, clippy::too_many_lines)] // a benchmark measures real time, setup reads top to bottom

use std::time::Instant;

use base64::Engine;
use token_broker::admin::{self, Actor};
use token_broker::audit::AuditRow;
use token_broker::replay::{Window, replay};
use token_broker::store::Store;

const POLICY: &str = r#"tenant = "bench"

[[credentials]]
name = "main"
provider = "opentok"
api_key = "123456"
api_secret = "env:TOKEN_BROKER_TENANT_BENCH_SECRET"

[defaults]
role = "publisher"
ttl = "1h"

[[rules]]
id = "banned"
priority = 1
effect = "deny"
subjects = ["group:banned"]
sessions = ["*"]

[[rules]]
id = "owner-moderates"
priority = 10
subjects = ["*"]
sessions = ["owner"]
roles = ["subscriber", "publisher", "moderator"]
default_role = "moderator"
max_ttl = "4h"

[[rules]]
id = "teachers"
priority = 20
subjects = ["group:teachers"]
sessions = ["label:kind=class-*"]
roles = ["subscriber", "publisher", "moderator"]
max_ttl = "1h"

[[rules]]
id = "students"
priority = 100
subjects = ["*"]
sessions = ["*"]
roles = ["subscriber"]
default_role = "subscriber"
max_ttl = "2h"
on_role_excess = "downgrade"
"#;

fn session(n: usize) -> String {
    let raw = format!("1~123456~~1764000000000~session-{n}~");
    format!(
        "1_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

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
        if !store.tenant_exists("bench").await.unwrap() {
            admin::create_tenant(&store, "bench", &Actor::Cli, 1_000).await.unwrap();
        }
        let mut heads = token_broker::store::HeadCache::default();
        let t = Instant::now();
        let start_ms = 1_764_000_000_000i64;
        let mut written = 0;
        while written < rows {
            let n = 1000.min(rows - written);
            let mut batch: Vec<AuditRow> = (0..n)
                .map(|i| {
                    let k = written + i;
                    let refused = k % 10 == 0;
                    let mut r = AuditRow::new(
                        "bench",
                        if refused { token_broker::audit::Kind::TokenRefused } else { token_broker::audit::Kind::TokenIssued },
                        if refused { token_broker::audit::Outcome::Refused } else { token_broker::audit::Outcome::Issued },
                        token_broker::audit::Actor::ApiKey,
                        start_ms + k as i64,
                    );
                    let at = (start_ms + k as i64) / 1000;
                    r.key_id = Some("abcdefghijklmnop".into());
                    r.user_id = Some(format!("user-{}", k % 5000));
                    r.user_groups = Some(
                        match k % 7 {
                            0 => "[\"teachers\"]",
                            1 => "[\"banned\"]",
                            _ => "[\"students\"]",
                        }
                        .into(),
                    );
                    r.session_id = Some(session(k % 700));
                    r.detail = Some(
                        if k % 3 == 0 {
                            format!("{{\"session\":{{\"owner\":\"user-{}\",\"labels\":{{\"kind\":\"class-math\"}}}}}}", k % 5000)
                        } else {
                            "{\"session\":{}}".to_owned()
                        },
                    );
                    r.requested_role = Some(if k % 4 == 0 { "moderator" } else { "publisher" }.into());
                    r.requested_expire_time = Some(at + 7200);
                    if refused {
                        r.code = Some("policy_denied".into());
                        r.rule = Some("banned".into());
                    } else {
                        r.credential = Some("main".into());
                        r.granted_role = Some("publisher".into());
                        r.granted_expire_time = Some(at + 7200);
                        r.rule = Some("students".into());
                        r.token_id = Some(uuid::Uuid::new_v4().to_string());
                        r.token_sha256 = Some(format!("{k:064x}"));
                    }
                    r.policy_version = Some(3);
                    r.client_addr = Some("10.0.0.7".into());
                    r
                })
                .collect();
            token_broker::audit::append(&store, &mut batch, &mut heads).await.expect("append");
            written += n;
        }
        let write_s = t.elapsed().as_secs_f64();
        println!(
            "recorded {rows} requests in {write_s:.1} s on {}",
            store.url_redacted()
        );
        let t = Instant::now();
        let report = replay(
            &store,
            "bench.toml",
            POLICY,
            None,
            Window {
                since_ms: start_ms,
                until_ms: start_ms + rows as i64 + 1,
            },
            &Actor::Cli,
            start_ms + rows as i64 + 1,
            // Any ROWS=; a tenant's replay reads at most Bounds::TENANT (1M).
            token_broker::replay::Bounds::NONE,
        )
        .await
        .expect("replay");
        let s = t.elapsed().as_secs_f64();
        assert_eq!(report.requests as usize, rows);
        println!(
            "replayed {} requests in {s:.2} s ({:.0} requests/s): {}",
            report.requests,
            report.requests as f64 / s,
            serde_json::to_string(&report.changes).unwrap()
        );
    });
}

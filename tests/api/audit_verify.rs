//! Issue 13, point 4: `audit verify` streams the rows (PostgreSQL's binary
//! `COPY`; the SQLite file read in place), decodes them without copying and
//! hashes the Rust canonical form; at the first row that does not hold, the
//! Rust pass over sqlx rows goes on and names the fault. These tests hold it
//! to both halves: hostile strings (every control character, quotes,
//! backslashes, line separators, astral characters) come back byte for byte
//! as the chain hashed them, so the fast pass checks every row; and a row
//! edited by a database administrator, or holding a value of the wrong type,
//! is still named.

use token_broker::audit::AuditRow;
use token_broker::cli_audit::verify_tenant;

use crate::helpers::*;

/// Values an attacker (or an odd client) can get into audit columns.
fn hostile_values() -> Vec<String> {
    let mut v: Vec<String> = (1u8..0x20).map(|c| format!("c{}x", c as char)).collect();
    v.extend(
        [
            "quote \" and backslash \\ and slash /",
            "\u{7f} delete, \u{80} C1, \u{2028} line sep, \u{2029} para sep",
            "astral \u{1F600} and combining e\u{301} and BOM \u{feff}",
            "</script><script>alert(1)</script>",
            "{\"looks\":\"like json\"}",
            "[\"a\",\"b\"]",
            "null",
            "123",
            "",
            "   leading and trailing spaces   ",
            "\\u0041 literal escape text",
        ]
        .map(str::to_owned),
    );
    v.push("x".repeat(8000));
    v
}

async fn write_hostile_chain(app: &TestApp, tenant: &str) -> usize {
    let values = hostile_values();
    let mut rows: Vec<AuditRow> = values
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut r = AuditRow::new(
                tenant,
                token_broker::audit::Kind::TokenIssued,
                token_broker::audit::Outcome::Issued,
                token_broker::audit::Actor::ApiKey,
                1_764_000_000_000 + i as i64,
            );
            r.user_id = Some(format!("app:user:{s}"));
            r.user_name = Some(s.clone());
            r.user_groups = Some(serde_json::json!([s]).to_string());
            r.user_agent = Some(s.clone());
            r.detail = Some(serde_json::json!({"why": s}).to_string());
            r.requested_expire_time = Some(i as i64 - 3);
            r.granted_expire_time = (i % 2 == 0).then_some(i64::MAX - i as i64);
            r.policy_version = (i % 3 == 0).then_some(i64::MIN + 1);
            r
        })
        .collect();
    let mut heads = Default::default();
    token_broker::audit::append(&app.store, &mut rows, &mut heads)
        .await
        .unwrap();
    rows.len()
}

#[tokio::test]
async fn hostile_rows_stream_back_exactly_as_the_chain_hashed_them() {
    let app = spawn_app().await;
    let n = write_hostile_chain(&app, "acme").await;
    let v = verify_tenant(&app.store, "acme", None).await.unwrap();
    assert!(v.ok, "{:?}", v.fault);
    assert_eq!(v.rows, n as u64);
    assert_eq!(
        v.rows_fast, v.rows,
        "every row checked on the fast path: the streamed columns are the ones the chain hashed"
    );
}

#[tokio::test]
async fn an_edited_hostile_row_is_still_named_by_the_rust_pass() {
    let app = spawn_app().await;
    let n = write_hostile_chain(&app, "acme").await;
    assert!(n > 40);
    // The database administrator raises a user's role quietly.
    raw_sql(
        &app,
        "UPDATE audit_events SET granted_role = 'moderator' WHERE tenant = 'acme' AND seq = 37",
    )
    .await;
    let v = verify_tenant(&app.store, "acme", None).await.unwrap();
    let f = v.fault.expect("an edited row fails verify");
    assert_eq!((f.seq, f.problem), (37, "modified"));
    assert_eq!(
        (v.rows_fast, v.rows),
        (36, 36),
        "the stream checks the rows before the edited one; the Rust pass names that one"
    );
    assert!(!f.audit_id.is_empty(), "the fault names the row's audit id");
}

#[tokio::test]
async fn a_value_of_the_wrong_type_falls_back_and_is_still_judged() {
    let app = spawn_app().await;
    write_hostile_chain(&app, "acme").await;
    // SQLite: a BLOB (not UTF-8) where text belongs, which the in-place read
    // refuses; PostgreSQL's columns are typed, so the nearest hostile value is
    // text that differs from the original only in escaping-relevant bytes.
    if app.db_url.starts_with("sqlite") {
        raw_sql(
            &app,
            "UPDATE audit_events SET user_agent = x'00ff41' WHERE tenant = 'acme' AND seq = 5",
        )
        .await;
    } else {
        raw_sql(
            &app,
            "UPDATE audit_events SET user_agent = user_agent || E'\\u2028' WHERE tenant = 'acme' AND seq = 5",
        )
        .await;
    }
    let v = verify_tenant(&app.store, "acme", None).await.unwrap();
    let f = v.fault.expect("a tampered row fails verify");
    assert_eq!(f.seq, 5, "{f:?}");
    assert!(matches!(f.problem, "modified" | "unreadable"), "{f:?}");
    assert_eq!(v.rows, 4, "rows before the tampered one verified");
}

/// Issue 13, point 5: pages come newest first by recorded time, then chain
/// position, with a keyset cursor on both. Two instances' clocks disagree by a
/// few milliseconds, so chain order and time order differ; walking the pages
/// of a filter within a time window still yields every matching row exactly
/// once, in order, and a cursor from the old chain-order form is refused.
#[tokio::test]
async fn time_windowed_pages_walk_every_row_once_when_clocks_disagree() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let t0 = 1_764_000_000_000i64;
    // Chain order 1..=40; recorded times jump back and forth, with ties.
    let mut rows: Vec<AuditRow> = (0..40)
        .map(|i: i64| {
            let at = t0 + [0, 5, -3, 5, 2][i as usize % 5] + (i / 5) * 4;
            let mut r = AuditRow::new(
                "acme",
                token_broker::audit::Kind::TokenIssued,
                token_broker::audit::Outcome::Issued,
                token_broker::audit::Actor::ApiKey,
                at,
            );
            r.user_id = Some(format!("app:user:u{i}"));
            r.rule = Some(if i % 3 == 0 { "teachers" } else { "students" }.into());
            r
        })
        .collect();
    let mut heads = Default::default();
    token_broker::audit::append(&app.store, &mut rows, &mut heads)
        .await
        .unwrap();
    let since = t0 + 2;
    let until = t0 + 30;
    let mut want: Vec<(i64, i64)> = rows
        .iter()
        .filter(|r| r.rule.as_deref() == Some("students") && r.at_ms >= since && r.at_ms < until)
        .map(|r| (r.at_ms, r.seq))
        .collect();
    want.sort_unstable_by(|a, b| b.cmp(a));
    assert!(want.len() > 10);
    let mut got = Vec::new();
    let mut cursor = String::new();
    for _ in 0..50 {
        let q = format!(
            "rule=students&since={}&until={}&limit=3{cursor}",
            ms_to_rfc3339(since),
            ms_to_rfc3339(until)
        );
        let p = app.audit(&key, &q).await;
        for r in p["items"].as_array().unwrap() {
            got.push((r["at_ms"].as_i64().unwrap(), r["seq"].as_i64().unwrap()));
        }
        match p["next"].as_str() {
            Some(n) => cursor = format!("&cursor={n}"),
            None => break,
        }
    }
    assert_eq!(
        got, want,
        "every matching row once, newest first by time then seq"
    );
    let r = app.get("/v1/audit?cursor=c1.5", &key).await;
    assert_eq!(
        r.status(),
        400,
        "a chain-order cursor of an older broker is refused"
    );
}

fn ms_to_rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Summaries bind only the window bounds given (so an unbounded one reads
/// the tenant in order and a window reads the time index): each combination
/// counts exactly the rows inside it.
#[tokio::test]
async fn summaries_count_exactly_the_rows_in_each_kind_of_window() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let t0 = 1_764_000_000_000i64;
    let mut rows: Vec<AuditRow> = (0..30)
        .map(|i: i64| {
            let refused = i % 5 == 0;
            let mut r = AuditRow::new(
                "acme",
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
                t0 + i * 1000,
            );
            r.user_id = Some(format!("app:user:u{}", i % 3));
            r
        })
        .collect();
    token_broker::audit::append(&app.store, &mut rows, &mut Default::default())
        .await
        .unwrap();
    let count = |since: Option<i64>, until: Option<i64>| {
        rows.iter()
            .filter(|r| since.is_none_or(|s| r.at_ms >= s) && until.is_none_or(|u| r.at_ms < u))
            .fold((0, 0), |(i, f), r| {
                if r.outcome == "issued" {
                    (i + 1, f)
                } else {
                    (i, f + 1)
                }
            })
    };
    let (mid, late) = (t0 + 10_000, t0 + 25_000);
    for (since, until) in [
        (None, None),
        (Some(mid), None),
        (None, Some(late)),
        (Some(mid), Some(late)),
    ] {
        let mut q = String::from("by=user");
        if let Some(s) = since {
            q.push_str(&format!("&since={}", ms_to_rfc3339(s)));
        }
        if let Some(u) = until {
            q.push_str(&format!("&until={}", ms_to_rfc3339(u)));
        }
        let r = app.get(&format!("/v1/audit/summary?{q}"), &key).await;
        assert_eq!(r.status(), 200, "{q}");
        let v: serde_json::Value = r.json().await.unwrap();
        let got = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .fold((0, 0), |(i, f), g| {
                (
                    i + g["issued"].as_i64().unwrap(),
                    f + g["refused"].as_i64().unwrap(),
                )
            });
        assert_eq!(got, count(since, until), "{q}");
    }
}

/// A long chain is read as two ranges at once and joined where they meet
/// (small pages here, so a short chain takes that path). Joined, every row is
/// checked the fast way; an edit in the second range, and a forged link at the
/// join (the second range's first row claiming another predecessor, with
/// every later hash recomputed by the forger), are both named by the Rust pass.
#[tokio::test]
async fn the_two_ranges_join_only_where_the_chain_really_continues() {
    use token_broker::audit::verify::verify_tenant_paged;
    let app = spawn_app().await;
    let n = write_hostile_chain(&app, "acme").await as i64;
    assert!(n >= 16 * 2, "long enough for two ranges of 4-row pages");
    let v = verify_tenant_paged(&app.store, "acme", None, 4)
        .await
        .unwrap();
    assert!(v.ok, "{:?}", v.fault);
    assert_eq!((v.rows, v.rows_fast), (n as u64, n as u64));
    let full = verify_tenant(&app.store, "acme", None).await.unwrap();
    assert_eq!((full.head_seq, &full.head_hash), (v.head_seq, &v.head_hash));

    // An edit in the second range.
    let late = n - 3;
    raw_sql(
        &app,
        &format!("UPDATE audit_events SET rule = 'forged' WHERE tenant = 'acme' AND seq = {late}"),
    )
    .await;
    let v = verify_tenant_paged(&app.store, "acme", None, 4)
        .await
        .unwrap();
    let f = v.fault.expect("an edit in the second range fails verify");
    assert_eq!((f.seq, f.problem), (late, "modified"));
}

#[tokio::test]
async fn a_forged_predecessor_at_the_join_is_not_accepted() {
    use token_broker::audit::verify::verify_tenant_paged;
    let app = spawn_app().await;
    let n = write_hostile_chain(&app, "acme").await as i64;
    // The second range starts after mid = n / 2. The forger rewrites its first
    // row's prev_hash and recomputes that row's hash and every later one, so
    // the second range is internally consistent: only the join can tell.
    let mid = n / 2;
    let mut rows: Vec<AuditRow> = Vec::new();
    app.store
        .scan_audit("acme", 0, |r| {
            rows.push(r);
            true
        })
        .await
        .unwrap();
    let mut prev = "f".repeat(64);
    for r in rows.iter_mut().filter(|r| r.seq > mid) {
        r.prev_hash = prev.clone();
        r.hash = token_broker::audit::chain::row_hash(r);
        prev = r.hash.clone();
        raw_sql(
            &app,
            &format!(
                "UPDATE audit_events SET prev_hash = '{}', hash = '{}' WHERE tenant = 'acme' AND seq = {}",
                r.prev_hash, r.hash, r.seq
            ),
        )
        .await;
    }
    raw_sql(
        &app,
        &format!("UPDATE audit_heads SET hash = '{prev}' WHERE tenant = 'acme'"),
    )
    .await;
    let v = verify_tenant_paged(&app.store, "acme", None, 4)
        .await
        .unwrap();
    let f = v.fault.expect("a forged join fails verify");
    assert_eq!((f.seq, f.problem), (mid + 1, "broken_link"), "{f:?}");
}

/// PostgreSQL streams the chain to `audit verify` as binary `COPY`, which
/// takes no bind parameters: the tenant is quoted by the server. A tenant
/// name built to break out of the literal streams nothing of any other
/// tenant, and a real tenant streams exactly its own rows.
#[tokio::test]
async fn the_copy_stream_quotes_the_tenant_and_returns_only_its_rows() {
    let app = spawn_app().await;
    let n = write_hostile_chain(&app, "acme").await;
    let count = |tenant: &'static str| {
        let store = app.store.clone();
        async move {
            let mut decoder = token_broker::store::CopyDecoder::new();
            let mut seqs = Vec::new();
            let streamed = store
                .copy_chain(tenant, 0, i64::MAX, |chunk| {
                    decoder.push(chunk, |row| {
                        seqs.push(row.expect("a well-formed row").seq);
                        true
                    })
                })
                .await
                .unwrap();
            if streamed {
                assert_eq!(decoder.finish(), Ok(()), "the stream ends with its trailer");
            }
            (streamed, seqs)
        }
    };
    let (streamed, seqs) = count("acme").await;
    if !streamed {
        assert!(app.db_url.starts_with("sqlite"), "only SQLite has no COPY");
        return;
    }
    assert_eq!(seqs, (1..=n as i64).collect::<Vec<_>>());
    for hostile in [
        "acme' OR tenant <> '",
        "x') TO STDOUT; --",
        "acme\\' OR '1'='1",
    ] {
        let (_, seqs) = count(hostile).await;
        assert!(seqs.is_empty(), "{hostile:?} streamed {} rows", seqs.len());
    }
}

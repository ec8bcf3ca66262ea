//! Issue 13, point 4: `audit verify` reads each page as text the database
//! builds (the canonical JSON of every row), and falls back to the Rust
//! canonical form where anything differs. These tests hold it to both halves:
//! hostile strings (every control character, quotes, backslashes, line
//! separators, astral characters) are rendered by SQLite and PostgreSQL byte
//! for byte as the chain hashed them, so the fast pass checks every row; and a
//! row edited by a database administrator, or holding a value the database
//! cannot render as JSON, is still named by the Rust pass.

use std::collections::HashMap;

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
                "token_issued",
                "issued",
                "api_key",
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
    let mut heads = HashMap::new();
    app.store.append_audit(&mut rows, &mut heads).await.unwrap();
    rows.len()
}

#[tokio::test]
async fn the_database_renders_hostile_rows_exactly_as_the_chain_hashed_them() {
    let app = spawn_app().await;
    let n = write_hostile_chain(&app, "acme").await;
    let v = verify_tenant(&app.store, "acme", None).await.unwrap();
    assert!(v.ok, "{:?}", v.fault);
    assert_eq!(v.rows, n as u64);
    assert_eq!(
        v.rows_fast, v.rows,
        "every row checked on the fast path: the database's JSON matched the Rust canonical form"
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
        (0, 36),
        "the page holding the edited row is re-checked the Rust way, which names the row"
    );
    assert!(!f.audit_id.is_empty(), "the fault names the row's audit id");
}

#[tokio::test]
async fn a_value_the_database_cannot_render_falls_back_and_is_still_judged() {
    let app = spawn_app().await;
    write_hostile_chain(&app, "acme").await;
    // SQLite: a BLOB where text belongs makes json_object fail; PostgreSQL's
    // columns are typed, so the nearest hostile value is text that differs
    // from the original only in escaping-relevant bytes.
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

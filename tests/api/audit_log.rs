//! The audit record: chain verification and tampering, pagination, tenant
//! isolation, and failing closed when the store is down.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use token_broker::cli_audit::{Checkpoint, verify_tenant};

use crate::helpers::*;

async fn issue_n(app: &TestApp, key: &str, n: u32) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        let (s, v) = app
            .issue(
                key,
                &json!({"session_id": session_for(API_KEY, i), "user": user(&format!("u{i}"))}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        out.push(v);
    }
    out
}

#[tokio::test]
async fn the_chain_verifies_and_catches_edits_deletions_and_reordering() {
    let app = spawn_app().await;
    let key = app.acme().await;
    issue_n(&app, &key, 6).await;
    let ok = verify_tenant(&app.store, "acme", None).await.unwrap();
    assert!(ok.ok, "{ok:?}");
    // tenant_created, policy_applied, key_created, then 6 issuances
    assert_eq!(ok.rows, 9);

    // Edit: a refusal quietly turned into a moderator grant.
    raw_sql(
        &app,
        "UPDATE audit_events SET granted_role = 'moderator' WHERE tenant = 'acme' AND seq = 7",
    )
    .await;
    let bad = verify_tenant(&app.store, "acme", None).await.unwrap();
    let f = bad.fault.expect("edit detected");
    assert_eq!((f.seq, f.problem), (7, "modified"));
    assert!(!f.audit_id.is_empty());
    raw_sql(
        &app,
        "UPDATE audit_events SET granted_role = 'subscriber' WHERE tenant = 'acme' AND seq = 7",
    )
    .await;
    assert!(verify_tenant(&app.store, "acme", None).await.unwrap().ok);

    // Reordering: two rows swap places.
    raw_sql(
        &app,
        "UPDATE audit_events SET seq = -1 WHERE tenant = 'acme' AND seq = 5",
    )
    .await;
    raw_sql(
        &app,
        "UPDATE audit_events SET seq = 5 WHERE tenant = 'acme' AND seq = 6",
    )
    .await;
    raw_sql(
        &app,
        "UPDATE audit_events SET seq = 6 WHERE tenant = 'acme' AND seq = -1",
    )
    .await;
    let f = verify_tenant(&app.store, "acme", None)
        .await
        .unwrap()
        .fault
        .expect("reorder detected");
    assert_eq!(f.seq, 5, "{f:?}");

    // Deletion in the middle.
    let app2 = spawn_app().await;
    let key2 = app2.acme().await;
    issue_n(&app2, &key2, 4).await;
    raw_sql(
        &app2,
        "DELETE FROM audit_events WHERE tenant = 'acme' AND seq = 6",
    )
    .await;
    let f = verify_tenant(&app2.store, "acme", None)
        .await
        .unwrap()
        .fault
        .expect("deletion detected");
    assert_eq!((f.seq, f.problem), (7, "missing_or_reordered"));

    // Truncating the tail and rewinding the head is caught only by a checkpoint.
    let app3 = spawn_app().await;
    let key3 = app3.acme().await;
    issue_n(&app3, &key3, 3).await;
    let good = verify_tenant(&app3.store, "acme", None).await.unwrap();
    let cp3 = Checkpoint {
        tenant: "acme".into(),
        count: good.head_seq,
        hash: good.head_hash.clone(),
    };
    let last = good.head_seq;
    raw_sql(
        &app3,
        &format!("DELETE FROM audit_events WHERE tenant = 'acme' AND seq = {last}"),
    )
    .await;
    let prev: String = sqlx_scalar(
        &app3,
        &format!(
            "SELECT hash FROM audit_events WHERE tenant = 'acme' AND seq = {}",
            last - 1
        ),
    )
    .await;
    raw_sql(
        &app3,
        &format!(
            "UPDATE audit_heads SET seq = {}, hash = '{prev}' WHERE tenant = 'acme'",
            last - 1
        ),
    )
    .await;
    assert!(
        verify_tenant(&app3.store, "acme", None).await.unwrap().ok,
        "without a checkpoint a clean truncation is invisible"
    );
    let f = verify_tenant(&app3.store, "acme", Some(&cp3))
        .await
        .unwrap()
        .fault
        .expect("truncation detected");
    assert_eq!(f.problem, "truncated");
}

async fn sqlx_scalar(app: &TestApp, sql: &str) -> String {
    use sqlx::Connection;
    if app.db_url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

#[tokio::test]
async fn pages_are_stable_while_rows_are_added() {
    let app = spawn_app().await;
    let key = app.acme().await;
    issue_n(&app, &key, 5).await;
    let p1 = app.audit(&key, "kind=token_issued&limit=2").await;
    let next = p1["next"].as_str().unwrap().to_owned();
    issue_n(&app, &key, 3).await; // inserted between pages
    let p2 = app
        .audit(&key, &format!("kind=token_issued&limit=2&cursor={next}"))
        .await;
    let p3 = app
        .audit(
            &key,
            &format!(
                "kind=token_issued&limit=2&cursor={}",
                p2["next"].as_str().unwrap()
            ),
        )
        .await;
    let users = |p: &Value| {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["user_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(users(&p1), ["u4", "u3"]);
    assert_eq!(users(&p2), ["u2", "u1"]);
    assert_eq!(users(&p3), ["u0"]);
    assert!(p3["next"].is_null());
    let r = app.get("/v1/audit?cursor=garbage", &key).await;
    assert_eq!(r.status(), 400);
    let r = app.get("/v1/audit?limit=5000", &key).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn an_audit_key_sees_nothing_of_another_tenant() {
    let app = spawn_app().await;
    let key = app.acme().await;
    issue_n(&app, &key, 2).await;
    app.create_tenant("globex").await;
    let globex_audit = app.create_key("globex", &["audit"]).await;
    for q in [
        "",
        "user=u0",
        "session_id=x",
        "outcome=issued",
        "role=subscriber",
        "rule=students",
        "kind=token_issued",
    ] {
        let v = app.audit(&globex_audit, q).await;
        for row in v["items"].as_array().unwrap() {
            assert_eq!(row["tenant"], "globex", "{q}: {row}");
        }
    }
    let v = app.audit(&globex_audit, "").await;
    assert!(!v.to_string().contains("acme"));
}

#[tokio::test]
async fn with_the_store_stalled_requests_get_503_quickly_and_recover() {
    let app = spawn_app_with(|s| s.audit_timeout = Duration::from_millis(800)).await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 1);
    let body = json!({"session_id": sid, "user": user("alice")});
    assert_eq!(app.issue(&key, &body).await.0, 201);

    // Another client holds the audit tables' lock, as a stuck migration or a
    // wedged disk would.
    let holder = hold(
        &app,
        "BEGIN EXCLUSIVE",
        "BEGIN; LOCK TABLE audit_heads IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    let t = Instant::now();
    let (s, v) = app.issue(&key, &body).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "audit_unavailable");
    assert!(v.get("token").is_none());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "503 within the bound, took {:?}",
        t.elapsed()
    );
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "readyz reports the stalled audit store");

    holder.release().await;
    let start = Instant::now();
    loop {
        let (s, v) = app.issue(&key, &body).await;
        if s == 201 {
            assert!(v["token"].is_string());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "issuing did not resume: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(verify_tenant(&app.store, "acme", None).await.unwrap().ok);
}

#[tokio::test]
async fn exports_stream_every_row_with_hostile_values_quoted() {
    let app = spawn_app().await;
    let key = app.acme().await;
    // Control characters never get into names (refused at the door); commas,
    // quotes and formula prefixes do, and must come out of the CSV defused.
    let hostile = "=cmd|' /C calc'!A0,\"quoted\"";
    let (s, v) = app
        .issue(
            &key,
            &json!({"session_id": session_for(API_KEY, 1), "user": {"id": "u1", "name": hostile}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    issue_n(&app, &key, 3).await;

    let r = app
        .get("/v1/audit?format=csv&kind=token_issued", &key)
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = r.text().await.unwrap();
    let mut lines = text.split("\r\n");
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("audit_id,tenant,seq,at_ms,kind"),
        "{header}"
    );
    assert!(
        text.contains(",\"'=cmd|' /C calc'!A0,\"\"quoted\"\"\","),
        "formula defused and quoted: {text}"
    );
    let records = text.matches("token_issued").count();
    assert_eq!(records, 4, "{text}");

    let r = app
        .get("/v1/audit?format=ndjson&kind=token_issued", &key)
        .await;
    let body = r.text().await.unwrap();
    let rows: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().any(|r| r["user_name"] == hostile));

    // Reads and exports are themselves on record, with their filters.
    let reads = app.audit(&key, "kind=audit_read").await;
    let details: Vec<String> = reads["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["detail"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("csv") && d.contains("\"kind\":\"token_issued\"")),
        "{details:?}"
    );
    assert!(details.iter().any(|d| d.contains("ndjson")), "{details:?}");
}

#[tokio::test]
async fn summary_counts_who_got_which_role() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 9);
    app.put(
        &format!("/v1/sessions/{sid}"),
        &key,
        &json!({"owner": "olga"}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            app.issue(&key, &json!({"session_id": sid, "user": user("olga")}))
                .await
                .0,
            201
        );
    }
    assert_eq!(
        app.issue(&key, &json!({"session_id": sid, "user": user("sam")}))
            .await
            .0,
        201
    );
    assert_eq!(
        app.issue(
            &key,
            &json!({"session_id": sid, "user": {"id": "troll", "groups": ["banned"]}})
        )
        .await
        .0,
        403
    );
    let v: Value = app
        .get("/v1/audit/summary?by=role", &key)
        .await
        .json()
        .await
        .unwrap();
    let groups = v["groups"].as_array().unwrap();
    let get = |k: &str| {
        groups
            .iter()
            .find(|g| g["key"] == k)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(get("moderator")["issued"], 2, "{v}");
    assert_eq!(get("subscriber")["issued"], 1, "{v}");
    let v: Value = app
        .get("/v1/audit/summary?by=user", &key)
        .await
        .json()
        .await
        .unwrap();
    let troll = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == "troll")
        .unwrap()
        .clone();
    assert_eq!(
        (troll["issued"].as_i64(), troll["refused"].as_i64()),
        (Some(0), Some(1))
    );
    let v: Value = app
        .get(&format!("/v1/audit?role=moderator&session_id={sid}"), &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        2,
        "who got moderator for this session: one query"
    );
    assert_eq!(
        app.get("/v1/audit/summary?by=colour", &key).await.status(),
        400
    );
    // One group per caller is unbounded: a summary answers with at most
    // `limit` groups, most issued first, and says when there were more.
    let v: Value = app
        .get("/v1/audit/summary?by=user&limit=3", &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["groups"].as_array().map(Vec::len), &v["truncated"]),
        (Some(3), &json!(false)),
        "{v}"
    );
    let v: Value = app
        .get("/v1/audit/summary?by=user&limit=2", &key)
        .await
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["key"].as_str())
        .collect();
    assert_eq!(keys, ["olga", "sam"], "{v}");
    assert_eq!(v["truncated"], true, "{v}");
    for bad in ["0", "10001", "-1"] {
        let r = app
            .get(&format!("/v1/audit/summary?by=user&limit={bad}"), &key)
            .await;
        assert_eq!(r.status(), 400, "limit={bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(
            (e["error"]["code"].as_str(), e["error"]["field"].as_str()),
            (Some("invalid_filter"), Some("limit")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn pruning_keeps_the_rest_of_the_chain_verifiable() {
    let app = spawn_app().await;
    let key = app.acme().await;
    app.app_state.clock.freeze();
    issue_n(&app, &key, 4).await;
    let before = verify_tenant(&app.store, "acme", None).await.unwrap();
    // Everything before "now + 1 ms" goes, except what is written after.
    let cutoff = app.app_state.clock.now_unix_ms() + 1;
    app.app_state.clock.advance(Duration::from_millis(5));
    issue_n(&app, &key, 2).await;
    let p = app
        .store
        .prune_audit("acme", cutoff, cutoff)
        .await
        .unwrap()
        .expect("pruned");
    assert!(p.rows_deleted as u64 >= before.rows);
    let after = verify_tenant(&app.store, "acme", None).await.unwrap();
    assert!(after.ok, "{after:?}");
    assert!(after.rows >= 2);
    // A deletion right after the prune point is still caught.
    raw_sql(
        &app,
        &format!(
            "DELETE FROM audit_events WHERE tenant = 'acme' AND seq = {}",
            p.through_seq + 1
        ),
    )
    .await;
    assert!(!verify_tenant(&app.store, "acme", None).await.unwrap().ok);
}

//! Issue 11, points 1-3, played by a hostile tenant app: input is checked at
//! the edge, every spelling of a session meets the same rules and audit
//! search, and a row the database refuses fails only its own request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use token_broker::audit::writer::{AuditWriter, WriterConfig, commit_isolating};
use token_broker::audit::{AuditRow, AuditUnavailable};
use token_broker::cli_audit::verify_tenant;
use token_broker::store::AuditFilter;

use crate::helpers::*;

/// Makes the database itself refuse every audit row whose user is `user`
/// (a CHECK constraint on PostgreSQL, a trigger on SQLite): a stand-in for any
/// row content the edge checks did not foresee.
async fn database_refuses_rows_of(app: &TestApp, user: &str) {
    if app.db_url.starts_with("sqlite") {
        raw_sql(
            app,
            &format!(
                "CREATE TRIGGER refuse_{user} BEFORE INSERT ON audit_events \
                 WHEN NEW.user_id = '{user}' BEGIN SELECT RAISE(ABORT, 'row refused'); END"
            ),
        )
        .await;
    } else {
        raw_sql(
            app,
            &format!(
                "ALTER TABLE audit_events ADD CONSTRAINT refuse_{user} \
                 CHECK (user_id IS DISTINCT FROM '{user}')"
            ),
        )
        .await;
    }
}

/// `session_for(API_KEY, 1)`: its base64 has `-` and needs `==` padding, so
/// every kind of respelling applies to it.
fn spellings(sid: &str) -> Vec<String> {
    let body = &sid[2..];
    assert!(body.contains('-') && body.len() % 4 == 2, "{sid}");
    let std = body.replace('-', "+").replace('_', "/");
    vec![
        sid.to_owned(),
        format!("2_{body}"),
        format!("1_{body}=="),
        format!("1_{std}"),
        format!("7_{std}=="),
    ]
}

fn enc(s: &str) -> String {
    s.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

async fn token_rows(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let v = app.audit(key, &format!("kind=token_refused{query}")).await;
    let mut rows = v["items"].as_array().unwrap().clone();
    let issued = app.audit(key, &format!("kind=token_issued{query}")).await;
    rows.extend(issued["items"].as_array().unwrap().iter().cloned());
    rows
}

#[tokio::test]
async fn every_hostile_field_is_refused_at_the_edge_with_code_and_field() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 1);
    let body = &sid[2..];
    let now = token_broker::clock::now_unix();
    let u = || user("alice");
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        // The issue's case: a NUL-NUL prefix decoded past into an audit row.
        (
            "NUL prefix",
            json!({"session_id": format!("\u{0}\u{0}{body}"), "user": u()}),
            "invalid_session_id",
            "session_id",
        ),
        (
            "letters prefix",
            json!({"session_id": format!("ab{body}"), "user": u()}),
            "invalid_session_id",
            "session_id",
        ),
        (
            "no underscore",
            json!({"session_id": format!("1-{body}"), "user": u()}),
            "invalid_session_id",
            "session_id",
        ),
        (
            "NUL inside",
            json!({"session_id": format!("1_{}\u{0}{}", &body[..4], &body[4..]), "user": u()}),
            "invalid_session_id",
            "session_id",
        ),
        (
            "newline after",
            json!({"session_id": format!("{sid}\n"), "user": u()}),
            "invalid_session_id",
            "session_id",
        ),
        (
            "over-long",
            json!({"session_id": format!("1_{}", "A".repeat(600)), "user": u()}),
            "invalid_session_id",
            "session_id",
        ),
        // The issue's case: ttl 2^63-1 overflowed into a negative requested_expire_time.
        (
            "ttl 2^63-1",
            json!({"session_id": sid, "user": u(), "ttl": i64::MAX}),
            "invalid_ttl",
            "ttl",
        ),
        (
            "ttl 30 days + 1 s",
            json!({"session_id": sid, "user": u(), "ttl": 2_592_001}),
            "invalid_ttl",
            "ttl",
        ),
        (
            "negative ttl",
            json!({"session_id": sid, "user": u(), "ttl": -5}),
            "invalid_ttl",
            "ttl",
        ),
        (
            "ttl i64::MIN",
            json!({"session_id": sid, "user": u(), "ttl": i64::MIN}),
            "invalid_ttl",
            "ttl",
        ),
        (
            "expire_time 2^63-1",
            json!({"session_id": sid, "user": u(), "expire_time": i64::MAX}),
            "expire_time_too_far",
            "expire_time",
        ),
        (
            "expire_time 30 days + 1 s",
            json!({"session_id": sid, "user": u(), "expire_time": now + 2_592_100}),
            "expire_time_too_far",
            "expire_time",
        ),
        (
            "expire_time i64::MIN",
            json!({"session_id": sid, "user": u(), "expire_time": i64::MIN}),
            "expire_time_in_past",
            "expire_time",
        ),
        (
            "NUL in user.id",
            json!({"session_id": sid, "user": {"id": "al\u{0}ice"}}),
            "invalid_user",
            "user.id",
        ),
        (
            "newline in user.name",
            json!({"session_id": sid, "user": {"id": "alice", "name": "Alice\nINFO forged"}}),
            "invalid_user",
            "user.name",
        ),
        (
            "NUL in a group",
            json!({"session_id": sid, "user": {"id": "alice", "groups": ["teachers", "\u{0}"]}}),
            "invalid_user",
            "user.groups",
        ),
        (
            "DEL in a group",
            json!({"session_id": sid, "user": {"id": "alice", "groups": ["a\u{7f}"]}}),
            "invalid_user",
            "user.groups",
        ),
        (
            "C1 control in user.id",
            json!({"session_id": sid, "user": {"id": "a\u{85}b"}}),
            "invalid_user",
            "user.id",
        ),
        (
            "65 groups",
            json!({"session_id": sid, "user": {"id": "alice", "groups": (0..65).map(|i| format!("g{i}")).collect::<Vec<_>>()}}),
            "invalid_user",
            "user.groups",
        ),
        (
            "257-byte user.id",
            json!({"session_id": sid, "user": {"id": "a".repeat(257)}}),
            "invalid_user",
            "user.id",
        ),
        (
            "NUL in role",
            json!({"session_id": sid, "user": u(), "role": "moderator\u{0}"}),
            "invalid_role",
            "role",
        ),
        (
            "NUL in data",
            json!({"session_id": sid, "user": u(), "data": "{\"a\":\"\u{0}\"}"}),
            "invalid_data",
            "data",
        ),
        (
            "escape sequence in data",
            json!({"session_id": sid, "user": u(), "data": "\u{1b}[2J"}),
            "invalid_data",
            "data",
        ),
        (
            "NUL in a layout class",
            json!({"session_id": sid, "user": u(), "initial_layout_class_list": ["focus\u{0}"]}),
            "invalid_layout_class_list",
            "initial_layout_class_list",
        ),
    ];
    for (what, body, code, field) in &cases {
        for path in ["/v1/tokens", "/v1/decide"] {
            let r = app.post(path, &key, body).await;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(
                (
                    status,
                    v["error"]["code"].as_str(),
                    v["error"]["field"].as_str()
                ),
                (400, Some(*code), Some(*field)),
                "{what} on {path}: {v}"
            );
        }
    }
    // Nothing of it reached the audit (bad input is answered, not recorded).
    assert!(token_rows(&app, &key, "").await.is_empty());

    // Text whitespace in JSON data is fine, and stays escaped in the token's data.
    let (s, v) = app
        .issue(
            &key,
            &json!({"session_id": sid, "user": u(), "data": "{\n\t\"a\": 1\r\n}"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(v["connection_data"].as_str().unwrap().contains("\\n\\t"));
}

#[tokio::test]
async fn the_longest_ttl_is_recorded_exactly() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 1);
    let before = token_broker::clock::now_unix();
    let (s, v) = app
        .issue(
            &key,
            &json!({"session_id": sid, "user": user("a"), "ttl": 2_592_000}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let after = token_broker::clock::now_unix();
    let rows = token_rows(&app, &key, "").await;
    let t = rows[0]["requested_expire_time"].as_i64().unwrap();
    assert!(
        (before + 2_592_000..=after + 2_592_000).contains(&t),
        "{t} {before}"
    );
}

/// The standard policy plus a deny rule on one session (written in the
/// canonical form) and one on a `locked` label.
async fn lockable_acme(app: &TestApp, denied: &str) -> String {
    app.create_tenant("acme").await;
    let text = app.standard_policy("acme").replace(
        "[[rules]]\nid = \"banned\"",
        &format!(
            "[[rules]]\nid = \"closed-lobby\"\npriority = 0\neffect = \"deny\"\nsubjects = [\"*\"]\n\
             sessions = [\"id:{denied}\"]\n\n\
             [[rules]]\nid = \"locked\"\npriority = 2\neffect = \"deny\"\nsubjects = [\"*\"]\n\
             sessions = [\"label:locked=true\"]\n\n\
             [[rules]]\nid = \"banned\""
        ),
    );
    app.apply_policy(&text).await;
    app.create_key("acme", &["issue", "audit", "admin"]).await
}

#[tokio::test]
async fn a_deny_rule_on_the_canonical_id_refuses_every_spelling_and_one_search_finds_them() {
    let app = spawn_app().await;
    let sid = session_for(API_KEY, 1);
    let key = lockable_acme(&app, &sid).await;
    let all = spellings(&sid);
    for s in &all {
        let (status, v) = app
            .issue(&key, &json!({"session_id": s, "user": user("mallory")}))
            .await;
        assert_eq!(
            (
                status,
                v["error"]["code"].as_str(),
                v["error"]["rule"].as_str()
            ),
            (403, Some("policy_denied"), Some("closed-lobby")),
            "{s}: {v}"
        );
    }
    // Another session is not caught by the rule.
    let (status, v) = app
        .issue(
            &key,
            &json!({"session_id": session_for(API_KEY, 2), "user": user("mallory")}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    // A search by any spelling finds the refusals of every spelling, recorded
    // under the canonical form, and nothing else.
    for s in &all {
        let rows = token_rows(&app, &key, &format!("&session_id={}", enc(s))).await;
        assert_eq!(rows.len(), all.len(), "search by {s}: {rows:?}");
        assert!(
            rows.iter().all(|r| r["session_id"] == sid.as_str()),
            "{rows:?}"
        );
    }
    // The summary groups them as one session too.
    let r = app.get("/v1/audit/summary?by=session", &key).await;
    let v: Value = r.json().await.unwrap();
    let g = v["groups"]
        .as_array()
        .expect("summary groups")
        .iter()
        .find(|g| g["key"] == sid.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(g["refused"], all.len(), "{v}");
    // A filter that could never have been recorded is refused; other text that
    // is no session ID simply matches nothing.
    let r = app.get("/v1/audit?session_id=%00%00MX4x", &key).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["field"].as_str()),
        (Some("invalid_filter"), Some("session_id")),
        "{v}"
    );
    assert!(token_rows(&app, &key, "&session_id=lobby").await.is_empty());
}

#[tokio::test]
async fn a_registration_under_one_spelling_binds_every_spelling() {
    let app = spawn_app().await;
    let key = lockable_acme(&app, &session_for(API_KEY, 99)).await;
    let sid = session_for(API_KEY, 1);
    let all = spellings(&sid);
    // Before the lock, a spelling is granted (and "not registered" is cached).
    let (s, v) = app
        .issue(
            &key,
            &json!({"session_id": all[3], "user": user("mallory")}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // The tenant locks the session under one spelling...
    let r = app
        .put(
            &format!("/v1/sessions/{}", enc(&all[4])),
            &key,
            &json!({"labels": {"locked": "true"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["session_id"], sid.as_str(), "{v}");
    // ...and every spelling is locked, the cached one included.
    for s in &all {
        let (status, v) = app
            .issue(&key, &json!({"session_id": s, "user": user("mallory")}))
            .await;
        assert_eq!(
            (status, v["error"]["rule"].as_str()),
            (403, Some("locked")),
            "{s}: {v}"
        );
        let r = app.get(&format!("/v1/sessions/{}", enc(s)), &key).await;
        assert_eq!(r.status(), 200, "{s}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["labels"]["locked"], "true", "{s}: {v}");
    }
    // An owner registered under one spelling owns every spelling.
    let other = session_for(API_KEY, 2);
    let r = app
        .put(
            &format!("/v1/sessions/2_{}", &other[2..]),
            &key,
            &json!({"owner": "olga"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    for s in spellings(&other) {
        let (status, v) = app
            .issue(&key, &json!({"session_id": s, "user": user("olga")}))
            .await;
        assert_eq!(
            (status, v["role"].as_str()),
            (201, Some("moderator")),
            "{s}: {v}"
        );
    }
    // A hostile path is refused like a hostile body.
    let r = app.get("/v1/sessions/%00%00MX4xMjM0NTZ-fg", &key).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "session_id", "{v}");
}

#[tokio::test]
async fn the_token_carries_the_service_form_of_the_callers_spelling() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 1);
    let body = &sid[2..];
    for (asked, carried) in [
        (sid.clone(), sid.clone()),
        (format!("2_{body}"), format!("2_{body}")),
        (format!("1_{}==", body.replace('-', "+")), sid.clone()),
    ] {
        let (s, v) = app
            .issue(&key, &json!({"session_id": asked, "user": user("a")}))
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["session_id"], carried.as_str(), "{asked}");
        let token = v["token"].as_str().unwrap();
        let claims = token.split('.').nth(1).unwrap();
        use base64::Engine;
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["session_id"], carried.as_str(), "{asked}");
        // The audit names the canonical form; a token spelling that differs is kept.
        let rows = app
            .audit(
                &key,
                &format!(
                    "kind=token_issued&token_id={}",
                    v["token_id"].as_str().unwrap()
                ),
            )
            .await;
        let r = &rows["items"][0];
        assert_eq!(r["session_id"], sid.as_str(), "{r}");
        let detail: Value = r["detail"]
            .as_str()
            .map(|d| serde_json::from_str(d).unwrap())
            .unwrap_or(Value::Null);
        let expect = if carried == sid {
            Value::Null
        } else {
            json!(carried)
        };
        assert_eq!(detail["token_session_id"], expect, "{r}");
    }
}

fn row(tenant: &str, user: &str) -> AuditRow {
    let mut r = AuditRow::new(
        tenant,
        token_broker::audit::Kind::TokenIssued,
        token_broker::audit::Outcome::Issued,
        token_broker::audit::Actor::ApiKey,
        1_764_000_000_000,
    );
    r.user_id = Some(user.to_owned());
    r.session_id = Some(session_for(API_KEY, 1));
    r
}

#[tokio::test]
async fn a_batch_with_rows_the_database_refuses_commits_all_the_others() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("evil").await;
    database_refuses_rows_of(&app, "poison").await;
    let users = ["a", "poison", "b", "c", "poison", "d", "e", "poison"];
    let mut rows: Vec<AuditRow> = users
        .iter()
        .enumerate()
        .map(|(i, u)| row(if i % 2 == 0 { "acme" } else { "evil" }, u))
        .collect();
    let mut heads = Default::default();
    let out = commit_isolating(&app.store, &mut rows, &mut heads).await;
    let got: Vec<bool> = out.answers.iter().map(Result::is_ok).collect();
    assert_eq!(got, users.map(|u| u != "poison").to_vec());
    assert!(
        out.answers
            .iter()
            .all(|a| !matches!(a, Err(e) if !matches!(e, AuditUnavailable::Refused)))
    );
    assert_eq!(out.committed, 5);
    assert!(!out.store_failed);
    // Both chains hold exactly the committed rows, in order, and verify.
    for t in ["acme", "evil"] {
        let v = verify_tenant(&app.store, t, None).await.unwrap();
        assert!(v.ok, "{v:?}");
    }
}

/// A batch larger than one insert statement (it is written in statements of
/// 64, 64, 64, 8, 2 and 1 rows) is still one transaction: a row the database
/// refuses in the third statement fails only itself, the rows of the
/// statements before it are not left half-written, and the chain that results
/// is every other row, in order.
#[tokio::test]
async fn a_refused_row_deep_in_a_large_batch_fails_only_itself() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    database_refuses_rows_of(&app, "poison").await;
    // The tenant's chain already holds its admin events.
    let before = verify_tenant(&app.store, "acme", None).await.unwrap().rows;
    let n = 203;
    let poison = [150, 201];
    let mut rows: Vec<AuditRow> = (0..n)
        .map(|i| {
            let user = if poison.contains(&i) {
                "poison".to_owned()
            } else {
                format!("u{i}")
            };
            row("acme", &user)
        })
        .collect();
    let out = commit_isolating(&app.store, &mut rows, &mut Default::default()).await;
    assert!(!out.store_failed);
    assert_eq!(out.committed, n - poison.len());
    for (i, a) in out.answers.iter().enumerate() {
        assert_eq!(a.is_ok(), !poison.contains(&i), "row {i}: {a:?}");
    }
    let v = verify_tenant(&app.store, "acme", None).await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.rows, before + (n - poison.len()) as u64);
    // Exactly the accepted rows, in batch order, at consecutive positions.
    let stored: Vec<String> = app
        .store
        .query_audit(&AuditFilter {
            tenant: "acme".into(),
            kind: Some("token_issued".into()),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .rev()
        .map(|r| r.user_id.unwrap_or_default())
        .collect();
    let want: Vec<String> = (0..n)
        .filter(|i| !poison.contains(i))
        .map(|i| format!("u{i}"))
        .collect();
    assert_eq!(stored, want);
}

#[tokio::test(flavor = "current_thread")]
async fn the_writer_fails_only_the_requests_whose_rows_are_refused() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("evil").await;
    database_refuses_rows_of(&app, "poison").await;
    let (w, _task) = AuditWriter::spawn(app.store.clone(), WriterConfig::default());
    let mut nul = row("evil", "x");
    // Injected past the edge: PostgreSQL would refuse this in any batch.
    nul.session_id = Some("\u{0}\u{0}MX4xMjM0NTZ-fg".into());
    let mut batch = vec![nul];
    for i in 0..40 {
        batch.push(row("acme", &format!("u{i}")));
        if i % 10 == 5 {
            batch.push(row("evil", "poison"));
        }
    }
    let expect: Vec<bool> = batch
        .iter()
        .map(|r| r.user_id.as_deref() != Some("poison") && r.user_id.as_deref() != Some("x"))
        .collect();
    // One poll enqueues every row before the writer runs: one batch.
    let answers = futures_util::future::join_all(batch.into_iter().map(|r| w.append(r))).await;
    let got: Vec<bool> = answers.iter().map(Result::is_ok).collect();
    assert_eq!(got, expect, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a.is_ok() || matches!(a, Err(AuditUnavailable::Refused)))
    );
    assert!(!w.health.failing(), "a refused row is not a failing store");
    assert_eq!(w.health.refused_rows.load(Ordering::Relaxed), 5);
    assert_eq!(w.health.failed_batches.load(Ordering::Relaxed), 0);
    let v = verify_tenant(&app.store, "acme", None).await.unwrap();
    assert!(v.ok && v.rows >= 40, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_hostile_requests_costs_another_tenant_nothing() {
    let app = Arc::new(spawn_app().await);
    let good = app.acme().await;
    // The hostile tenant has its own project.
    app.create_tenant("evil").await;
    let evil_policy = app
        .standard_policy("evil")
        .replace(&format!("api_key = \"{API_KEY}\""), "api_key = \"654321\"")
        .replace(
            &format!("api_key = \"{T1_API_KEY}\""),
            "api_key = \"654322\"",
        );
    app.apply_policy(&evil_policy).await;
    let evil = app.create_key("evil", &["issue"]).await;
    // Rows the database itself refuses, past every edge check.
    database_refuses_rows_of(&app, "poison").await;

    let stop = Arc::new(AtomicBool::new(false));
    let evil_sent = Arc::new(AtomicUsize::new(0));
    let mut hostile = Vec::new();
    for w in 0..2u32 {
        let (app, evil, stop, sent) = (app.clone(), evil.clone(), stop.clone(), evil_sent.clone());
        hostile.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let sid = session_for("654321", i);
                let body = match i % 4 {
                    0 => json!({"session_id": format!("\u{0}\u{0}{}", &sid[2..]), "user": user("x")}),
                    1 => json!({"session_id": sid, "user": {"id": "x\u{0}", "groups": ["\u{0}"]}, "ttl": i64::MAX}),
                    2 => json!({"session_id": sid, "user": user("poison")}),
                    _ => json!({"session_id": sid, "user": user("poison"), "role": "subscriber", "ttl": 60 + w}),
                };
                let (s, v) = app.issue(&evil, &body).await;
                assert!(s == 400 || s == 500, "hostile request got {s}: {v}");
                if s == 500 {
                    assert_eq!(v["error"]["code"], "audit_record_refused", "{v}");
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let ready_watch = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let mut polls = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = app.client.get(app.url("/readyz")).send().await.unwrap();
                assert_eq!(r.status(), 200, "/readyz went not-ready");
                polls += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            polls
        })
    };
    let mut workers = Vec::new();
    for w in 0..4u32 {
        let (app, good) = (app.clone(), good.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..60 {
                let (s, _) = app
                    .issue(
                        &good,
                        &json!({"session_id": session_for(API_KEY, w * 1000 + i), "user": user("g")}),
                    )
                    .await;
                statuses.push(s);
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for w in workers {
        statuses.extend(w.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for h in hostile {
        h.await.unwrap();
    }
    let polls = ready_watch.await.unwrap();
    let not_201: Vec<u16> = statuses.iter().copied().filter(|s| *s != 201).collect();
    assert!(not_201.is_empty(), "the good tenant got {not_201:?}");
    assert!(evil_sent.load(Ordering::Relaxed) > 50, "the flood ran");
    assert!(polls > 0);
    assert!(!app.app_state.audit.health.failing());
    assert!(
        app.app_state
            .audit
            .health
            .refused_rows
            .load(Ordering::Relaxed)
            > 0
    );
    let v = verify_tenant(&app.store, "acme", None).await.unwrap();
    assert!(v.ok, "{v:?}");
}

#[tokio::test]
async fn a_stale_chain_head_is_resealed_not_taken_for_a_refused_row() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let (mut a, mut b) = (Default::default(), Default::default());
    // Two writers (as two instances) with their own view of the head.
    let out = commit_isolating(&app.store, &mut [row("acme", "a1")], &mut b).await;
    assert!(out.answers[0].is_ok());
    let mut rows = vec![row("acme", "a2"), row("acme", "a3")];
    assert_eq!(
        commit_isolating(&app.store, &mut rows, &mut a)
            .await
            .committed,
        2
    );
    let mut rows = vec![row("acme", "b1"), row("acme", "b2")];
    let out = commit_isolating(&app.store, &mut rows, &mut b).await;
    assert_eq!((out.committed, out.transactions), (2, 1), "{out:?}");
    let v = verify_tenant(&app.store, "acme", None).await.unwrap();
    assert!(v.ok && v.rows == 6, "{v:?}");
}

/// Every text filter of `/v1/audit` refuses what no row can hold (a NUL, a
/// control character, an over-long value) at the edge, with the field named:
/// on PostgreSQL a NUL reaching the database was a 503, and an export stream
/// broke after its 200.
#[tokio::test]
async fn audit_filters_refuse_control_characters_at_the_edge() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let long = "x".repeat(8193);
    for field in ["kind", "code", "user", "rule", "key_id", "token_id"] {
        for value in ["%00", "a%0Ab", long.as_str()] {
            for format in ["", "&format=csv", "&format=ndjson"] {
                let r = app
                    .get(&format!("/v1/audit?{field}={value}{format}"), &key)
                    .await;
                assert_eq!(r.status(), 400, "{field}={value}{format}");
                let v: Value = r.json().await.unwrap();
                assert_eq!(
                    (v["error"]["code"].as_str(), v["error"]["field"].as_str()),
                    (Some("invalid_filter"), Some(field)),
                    "{v}"
                );
            }
        }
    }
}

/// HTTP lets a tab through in a header value; the `User-Agent` an audit row
/// keeps has no control character, and at most 256 characters.
#[tokio::test]
async fn the_recorded_user_agent_holds_no_control_characters() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let body = json!({"session_id": session_for(API_KEY, 1), "user": user("ann")});
    let r = app
        .client
        .post(app.url("/v1/tokens"))
        .bearer_auth(&key)
        .header("user-agent", format!("evil\tagent{}", "x".repeat(400)))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let rows = app.audit(&key, "kind=token_issued").await;
    let ua = rows["items"][0]["user_agent"].as_str().unwrap().to_owned();
    assert!(ua.starts_with("evilagent") && !ua.contains('\t'), "{ua:?}");
    assert_eq!(ua.chars().count(), 256);
}

/// A tenant's auditors hold at most two audit reads at once (a query whose
/// filters match nothing walks a whole index range on a pooled connection):
/// the third is refused at once, another tenant reads on, and an export gives
/// its place back when its stream ends.
#[tokio::test]
async fn a_tenant_holds_at_most_two_audit_reads_at_once() {
    let app = spawn_app().await;
    let key = app.acme().await;
    app.create_tenant("globex").await;
    let globex = app.create_key("globex", &["audit"]).await;
    let reads = &app.app_state.limits.audit_reads;
    let first = reads.try_enter("acme").unwrap();
    let second = reads.try_enter("acme").unwrap();
    for path in [
        "/v1/audit",
        "/v1/audit?format=csv",
        "/v1/audit?kind=token_issued&outcome=refused",
        "/v1/audit/summary?by=user",
    ] {
        let r = app.get(path, &key).await;
        assert_eq!(r.status(), 429, "{path}");
        assert!(r.headers().contains_key("retry-after"), "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "audit_busy", "{path}: {v}");
    }
    assert_eq!(app.get("/v1/audit", &globex).await.status(), 200);
    drop(first);
    let r = app.get("/v1/audit?format=ndjson", &key).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    // (The server drops the finished stream just after its last chunk.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while reads.in_flight("acme") != 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(reads.in_flight("acme"), 1, "the export gave its place back");
    drop(second);
    assert_eq!(reads.in_flight("acme"), 0);
}

/// However many tenants' auditors read at once, the broker runs at most
/// `MAX_AUDIT_READS_TOTAL` audit reads, so the pool's other connections stay
/// for issuance (on PostgreSQL the audit writer shares the pool).
#[tokio::test]
async fn the_broker_runs_at_most_four_audit_reads_whatever_the_tenants() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let total = &app.app_state.limits.audit_reads_total;
    // Other tenants' reads hold every place of the broker.
    let held = Arc::clone(total)
        .try_acquire_many_owned(token_broker::limits::MAX_AUDIT_READS_TOTAL)
        .unwrap();
    for path in ["/v1/audit", "/v1/audit?format=ndjson", "/v1/audit/summary"] {
        let r = app.get(path, &key).await;
        assert_eq!(r.status(), 429, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "audit_busy", "{path}: {v}");
    }
    // The refused reads gave their tenant's places back.
    assert_eq!(app.app_state.limits.audit_reads.in_flight("acme"), 0);
    drop(held);
    assert_eq!(app.get("/v1/audit", &key).await.status(), 200);
}

/// Filters that never match together walk an index range to its end: a
/// read past `audit_read_timeout_ms` is stopped by the database and answered
/// 503 `audit_timeout` (an export too, before its status), and the pool's
/// connections serve the next reads as before.
#[tokio::test]
async fn an_audit_read_past_its_time_limit_is_stopped() {
    let app = spawn_app_with(|s| {
        s.audit_read_timeout = std::time::Duration::from_millis(5);
    })
    .await;
    let key = app.acme().await;
    // 200k rows, half issued and half refused, far after the chain (not a
    // valid chain: only the reads are under test).
    let t0 = 1_800_000_000_000_i64;
    let cols = "audit_id, tenant, seq, at_ms, kind, outcome, actor, user_id, prev_hash, hash";
    let vals = format!(
        "'x' || i, 'acme', 1000000 + i, {t0} + i, \
         CASE i % 2 WHEN 0 THEN 'token_issued' ELSE 'token_refused' END, \
         CASE i % 2 WHEN 0 THEN 'issued' ELSE 'refused' END, 'api_key', 'u' || (i % 5000), '', ''"
    );
    let sql = if app.db_url.starts_with("sqlite") {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) \
             INSERT INTO audit_events ({cols}) SELECT {vals} FROM n"
        )
    } else {
        format!(
            "INSERT INTO audit_events ({cols}) SELECT {vals} FROM generate_series(1, 200000) AS i"
        )
    };
    raw_sql(&app, &sql).await;
    let (since, until) = (t0 / 1000, t0 / 1000 + 3600);
    for path in [
        "/v1/audit?kind=token_issued&outcome=refused".to_owned(),
        "/v1/audit?kind=token_issued&outcome=refused&format=csv".to_owned(),
        format!("/v1/audit/summary?by=user&since={since}&until={until}"),
    ] {
        let r = app.get(&path, &key).await;
        assert_eq!(r.status(), 503, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "audit_timeout", "{path}: {v}");
    }
    assert_eq!(app.app_state.limits.audit_reads.in_flight("acme"), 0);
    // Nothing stopped stays armed: the same pools without a limit run the
    // same whole scans, on as many connections at once as the pool has.
    let unbounded = app.store.clone().with_read_budget(None);
    let f = AuditFilter {
        tenant: "acme".into(),
        kind: Some("token_issued".into()),
        outcome: Some("refused".into()),
        limit: 100,
        ..AuditFilter::default()
    };
    let scans = (0..8).map(|_| unbounded.query_audit(&f));
    for r in futures_util::future::join_all(scans).await {
        assert!(r.unwrap().is_empty());
    }
}

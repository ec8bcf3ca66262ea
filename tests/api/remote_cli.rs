//! The remote CLI: the real binary with `--server` against a live broker, with
//! nothing but a key (no settings, no database URL, no data directory). A
//! tenant admin can do the README's audit and policy walk-through; the tenant
//! comes from the key, so a hostile admin cannot reach another tenant; a bad
//! key gets the API's code and a hint.

use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_token-broker");

/// The binary with only the key in its environment: no database or settings
/// to fall back on, as on a tenant admin's laptop.
async fn remote(app: &TestApp, key: &str, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("TOKEN_BROKER_KEY", key)
        .arg("--server")
        .arg(&app.addr)
        .args(args);
    run(c).await
}

/// Runs a command off the test's runtime, which also drives the broker's
/// store and audit writer.
async fn run(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().expect("run token-broker"))
        .await
        .unwrap()
}

async fn ok(app: &TestApp, key: &str, args: &[&str]) -> String {
    let out = remote(app, key, args).await;
    assert!(
        out.status.success(),
        "token-broker --server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn ok_json(app: &TestApp, key: &str, args: &[&str]) -> Value {
    serde_json::from_str(&ok(app, key, args).await).expect("json output")
}

async fn issue_some(app: &TestApp, key: &str) {
    for i in 0..3 {
        let body = json!({"session_id": session_for(API_KEY, i), "user": user(&format!("u{i}"))});
        assert_eq!(app.issue(key, &body).await.0, 201);
    }
    // One refused: the banned group.
    let body = json!({"session_id": session_for(API_KEY, 9), "user": {"id": "mallory", "groups": ["banned"]}});
    assert_eq!(app.issue(key, &body).await.0, 403);
}

#[tokio::test]
async fn whoami_and_audit_query_over_http_with_only_a_key() {
    let app = spawn_app().await;
    let key = app.acme().await;
    issue_some(&app, &key).await;

    let me = ok_json(&app, &key, &["whoami", "--json"]).await;
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["scopes"], json!(["issue", "audit", "admin"]));

    let v = ok_json(
        &app,
        &key,
        &["audit", "query", "--kind", "token_issued", "--json"],
    )
    .await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{v}");
    assert!(items.iter().all(|r| r["tenant"] == "acme"));

    let v = ok_json(
        &app,
        &key,
        &["audit", "query", "--outcome", "refused", "--json"],
    )
    .await;
    assert_eq!(v["items"][0]["user_id"], "mallory");

    // The table is the local CLI's.
    let table = ok(&app, &key, &["audit", "query", "--kind", "token_issued"]).await;
    assert!(table.starts_with("TIME "), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    // Summary and export.
    let s = ok_json(&app, &key, &["audit", "summary", "--by", "role", "--json"]).await;
    let issued: i64 = s["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["issued"].as_i64().unwrap())
        .sum();
    assert_eq!(issued, 3, "{s}");
    // Four users, two asked for: the table says there are more.
    let table = ok(
        &app,
        &key,
        &["audit", "summary", "--by", "user", "--limit", "2"],
    )
    .await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[1].starts_with("u0 ") && lines[2].starts_with("u1 "),
        "{table}"
    );
    assert!(lines[3].contains("--limit shows more"), "{table}");
    let nd = ok(&app, &key, &["audit", "export", "--kind", "token_issued"]).await;
    assert_eq!(nd.lines().count(), 3);
    let csv = ok(
        &app,
        &key,
        &["audit", "query", "--kind", "token_issued", "--csv"],
    )
    .await;
    assert_eq!(csv.lines().count(), 4, "header plus three rows");
}

#[tokio::test]
async fn audit_verify_over_http_detects_a_rewritten_row_against_a_checkpoint() {
    let app = spawn_app().await;
    let key = app.acme().await;
    issue_some(&app, &key).await;
    let v = ok_json(&app, &key, &["audit", "verify", "--json"]).await;
    assert_eq!(v["ok"], true, "{v}");
    let t = &v["tenants"][0];
    let cp = json!({"tenant": "acme", "count": t["head_seq"], "hash": t["head_hash"]}).to_string();
    assert_eq!(
        ok_json(
            &app,
            &key,
            &["audit", "verify", "--checkpoint", &cp, "--json"]
        )
        .await["ok"],
        true
    );

    // The file `audit checkpoint --json` prints (every tenant) works too; the
    // key's tenant's entry is used.
    let all = json!({"checkpoints": [
        {"tenant": "globex", "count": 1, "hash": "00"},
        {"tenant": "acme", "count": t["head_seq"], "hash": t["head_hash"]},
    ]})
    .to_string();
    assert_eq!(
        ok_json(
            &app,
            &key,
            &["audit", "verify", "--checkpoint", &all, "--json"]
        )
        .await["ok"],
        true
    );

    // A database administrator rewrites who got the token.
    raw_sql(
        &app,
        "UPDATE audit_events SET user_id = 'someone-else' WHERE user_id = 'u1'",
    )
    .await;
    let out = remote(
        &app,
        &key,
        &["audit", "verify", "--checkpoint", &cp, "--json"],
    )
    .await;
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
}

#[tokio::test]
async fn policy_walkthrough_over_http_dry_run_apply_history_rollback() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acme.toml");
    let text = app
        .standard_policy("acme")
        .replace("max_ttl = \"2h\"", "max_ttl = \"30m\"");
    std::fs::write(&path, &text).unwrap();
    let p = path.to_str().unwrap();

    // check runs locally, without a key or a reachable server.
    let out = run({
        let mut c = Command::new(BIN);
        c.env_clear()
            .args(["--server", "http://127.0.0.1:9", "policy", "check", p]);
        c
    })
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The README's policy tests, also local.
    let root = env!("CARGO_MANIFEST_DIR");
    let out = run({
        let mut c = Command::new(BIN);
        c.env_clear().args([
            "--server",
            "http://127.0.0.1:9",
            "policy",
            "test",
            &format!("{root}/policies/acme.tests.toml"),
        ]);
        c
    })
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let before = ok_json(&app, &key, &["policy", "history", "--json"]).await;
    let n = before["items"].as_array().unwrap().len();

    let dry = ok_json(&app, &key, &["policy", "apply", "--dry-run", p, "--json"]).await;
    assert_eq!(dry["dry_run"], true);
    assert!(dry["version"].is_null());
    assert!(
        dry["diff"].as_str().unwrap().contains("+max_ttl = \"30m\""),
        "{dry}"
    );
    // Nothing applied.
    let after = ok_json(&app, &key, &["policy", "history", "--json"]).await;
    assert_eq!(after["items"].as_array().unwrap().len(), n);
    let diff = ok(&app, &key, &["policy", "apply", "--dry-run", p]).await;
    assert!(diff.contains("dry run: acme stays at version"), "{diff}");

    let applied = ok_json(&app, &key, &["policy", "apply", p, "--json"]).await;
    let v = applied["version"].as_i64().unwrap();
    let shown = ok_json(&app, &key, &["policy", "show", "--json"]).await;
    assert_eq!(shown["version"], v);
    assert!(shown["source"].as_str().unwrap().contains("30m"));

    let back = ok_json(
        &app,
        &key,
        &["policy", "rollback", "--to", &(v - 1).to_string(), "--json"],
    )
    .await;
    assert_eq!(back["version"], v + 1);
    assert!(
        !ok(&app, &key, &["policy", "show"]).await.contains("30m"),
        "rolled back"
    );
}

#[tokio::test]
async fn keys_create_list_revoke_over_http_stay_in_the_keys_tenant() {
    let app = spawn_app().await;
    let key = app.acme().await;
    // Another tenant, whose key ids a hostile acme admin knows.
    app.create_tenant("globex").await;
    let globex_key = app.create_key("globex", &["admin"]).await;
    let globex_id = ok_json(&app, &globex_key, &["whoami", "--json"]).await["key_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let created = ok_json(
        &app,
        &key,
        &[
            "key", "create", "--scope", "audit", "--name", "auditor", "--json",
        ],
    )
    .await;
    assert_eq!(created["tenant"], "acme");
    let new_key = created["key"].as_str().unwrap().to_owned();
    let new_id = created["key_id"].as_str().unwrap().to_owned();
    assert_eq!(
        ok_json(&app, &new_key, &["whoami", "--json"]).await["scopes"],
        json!(["audit"])
    );

    let list = ok_json(&app, &key, &["key", "list", "--json"]).await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&new_id.as_str()));
    assert!(
        !ids.contains(&globex_id.as_str()),
        "another tenant's key listed"
    );
    // Never a secret in the listing.
    assert!(!ok(&app, &key, &["key", "list"]).await.contains(&new_key));

    // Revoking another tenant's key fails and leaves it working.
    let out = remote(&app, &key, &["key", "revoke", &globex_id]).await;
    assert!(!out.status.success());
    ok(&app, &globex_key, &["whoami"]).await;

    ok(&app, &key, &["key", "revoke", &new_id]).await;
    let out = remote(&app, &new_key, &["whoami"]).await;
    assert!(!out.status.success(), "revoked key still works");
}

#[tokio::test]
async fn a_bad_key_shows_the_api_code_and_a_hint() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let out = remote(&app, "bk_nope_nope", &["whoami"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");
    assert!(err.contains("invalid_credentials"), "{err}");
    assert!(err.contains("hint: "), "{err}");
    assert!(out.stdout.is_empty());

    // No key at all: a usage error before any request.
    let out = run({
        let mut c = Command::new(BIN);
        c.env_clear().args(["--server", &app.addr, "whoami"]);
        c
    })
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOKEN_BROKER_KEY"));

    // An audit-only key asking for an admin command: 403 with the scope hint.
    let auditor = app.create_key("acme", &["audit"]).await;
    let out = remote(&app, &auditor, &["key", "list"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403"), "{err}");
    assert!(err.contains("hint: ") && err.contains("scope"), "{err}");
    drop(key);
}

#[tokio::test]
async fn key_file_credentials_sessions_and_decide_over_http() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let out = run({
        let mut c = Command::new(BIN);
        c.env_clear().args([
            "--server",
            &app.addr,
            "--key-file",
            key_file.to_str().unwrap(),
            "whoami",
            "--json",
        ]);
        c
    })
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let list = ok_json(&app, &key, &["credential", "list", "--json"]).await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "main")
    );
    let shown = ok(&app, &key, &["credential", "show", "main"]).await;
    assert!(!shown.contains(API_SECRET), "a secret printed");

    let sid = session_for(API_KEY, 7);
    let put = ok_json(
        &app,
        &key,
        &[
            "session",
            "put",
            &sid,
            "--owner",
            "app:user:alice",
            "--label",
            "kind=class-1",
            "--json",
        ],
    )
    .await;
    assert_eq!(put["registered"], true);
    let got = ok_json(&app, &key, &["session", "get", &sid, "--json"]).await;
    assert_eq!(got["labels"]["kind"], "class-1");

    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        json!({"session_id": sid, "user": user("bob")}).to_string(),
    )
    .unwrap();
    let d = ok_json(&app, &key, &["decide", req.to_str().unwrap(), "--json"]).await;
    assert!(d.is_object(), "{d}");
}

#[tokio::test]
async fn audit_verify_over_http_detects_a_truncated_tail_against_a_checkpoint() {
    let app = spawn_app().await;
    let key = app.acme().await;
    issue_some(&app, &key).await;
    let v = ok_json(&app, &key, &["audit", "verify", "--json"]).await;
    let t = &v["tenants"][0];
    let head = t["head_seq"].as_i64().unwrap();
    let cp = json!({"tenant": "acme", "count": head, "hash": t["head_hash"]}).to_string();
    // The database administrator removes the newest rows (who got moderator).
    raw_sql(
        &app,
        &format!(
            "DELETE FROM audit_events WHERE tenant = 'acme' AND seq > {}",
            head - 3
        ),
    )
    .await;
    let out = remote(
        &app,
        &key,
        &["audit", "verify", "--checkpoint", &cp, "--json"],
    )
    .await;
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
}

/// The database administrator deletes the oldest rows without a prune: the
/// export then starts after seq 1, and the remote verify must not simply
/// start from what the first remaining row claims. A real prune passes.
#[tokio::test]
async fn audit_verify_over_http_refuses_a_history_whose_start_was_deleted() {
    let app = spawn_app().await;
    let key = app.acme().await;
    issue_some(&app, &key).await;
    raw_sql(
        &app,
        "DELETE FROM audit_events WHERE tenant = 'acme' AND seq <= 3",
    )
    .await;
    let out = remote(&app, &key, &["audit", "verify", "--json"]).await;
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(
        v["tenants"][0]["fault"]["problem"], "unrecorded_prune",
        "{v}"
    );

    let app = spawn_app().await;
    let key = app.acme().await;
    issue_some(&app, &key).await;
    token_broker::cli_audit::prune_tenant(&app.store, "acme", 1_500, 2_000, None)
        .await
        .unwrap()
        .expect("pruned");
    let v = ok_json(&app, &key, &["audit", "verify", "--json"]).await;
    assert_eq!(v["ok"], true, "{v}");
}

//! Health, API key authentication, revocation, key management over HTTP.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn healthz_and_readyz_answer_json() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["database"], "ok");
    assert_eq!(v["audit"], "ok");
}

#[tokio::test]
async fn a_cli_created_key_authenticates_whoami_until_revoked() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let key = app.create_key("acme", &["issue", "audit"]).await;
    let r = app.get("/v1/whoami", &key).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["scopes"], json!(["issue", "audit"]));
    let key_id = v["key_id"].as_str().unwrap().to_owned();
    assert!(key.contains(&key_id));

    // Revoked by another process (the CLI writes the database directly): the
    // running server must notice through the change feed, within a second.
    token_broker::admin::revoke_key(
        &app.store,
        &key_id,
        None,
        &token_broker::admin::Actor::Cli,
        2_000,
    )
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let r = app.get("/v1/whoami", &key).await;
        if r.status() == 401 {
            assert!(
                r.headers()
                    .get("www-authenticate")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer")
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "revocation not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The command line is another process on the broker's database. Its admin
/// changes that read before they write (a key revoke reads the key's tenant,
/// a policy apply the current version, a credential upload whether it
/// exists, a prune its prune point) must wait for
/// a write in progress there (a serving broker's batch, another command)
/// instead of failing. On SQLite a transaction that has read cannot take the
/// write lock while another connection holds it: it fails at once with
/// `database is locked`, without the busy timeout's wait, unless it took the
/// lock when it began. Under load a broker nearly always holds it, so without
/// this an operator's revoke failed about every other time.
#[tokio::test]
async fn admin_changes_from_another_process_wait_for_a_write_in_progress() {
    use token_broker::admin::{self, Actor};
    const HOLD: Duration = Duration::from_millis(300);
    let app = spawn_app().await;
    let key = app.acme().await;
    let who: Value = app.get("/v1/whoami", &key).await.json().await.unwrap();
    let key_id = who["key_id"].as_str().unwrap().to_owned();
    // The command line's own connection, as `token-broker key revoke` opens it.
    let cli = token_broker::store::Store::connect(&app.db_url)
        .await
        .unwrap();
    // Another writer in the middle of a transaction: on SQLite the write
    // lock, on PostgreSQL the tenant's chain head.
    let writing = || {
        hold(
            &app,
            "BEGIN IMMEDIATE",
            "BEGIN; SELECT seq FROM audit_heads WHERE tenant = 'acme' FOR UPDATE",
        )
    };

    let held = writing().await;
    let (revoked, ()) = tokio::join!(
        admin::revoke_key(&cli, &key_id, None, &Actor::Cli, 2_000),
        held.release_after(HOLD)
    );
    assert_eq!(
        revoked.expect("the revoke waits for the other writer"),
        "acme"
    );
    let row = app.store.get_key(&key_id).await.unwrap().unwrap();
    assert_eq!(row.revoked_at_ms, Some(2_000));

    let text = app
        .standard_policy("acme")
        .replace("max_ttl = \"2h\"", "max_ttl = \"1h\"");
    let held = writing().await;
    let (applied, ()) = tokio::join!(
        admin::apply_policy(
            &cli,
            &app.app_state.secrets,
            "acme.toml",
            &text,
            None,
            false,
            &Actor::Cli,
            None,
            3_000,
        ),
        held.release_after(HOLD)
    );
    let applied = applied.expect("the apply waits for the other writer");
    assert_eq!(applied.version, Some(applied.previous_version + 1));

    // A stored credential: the command line seals it with the master key.
    let master = app.app_state.settings.master_key_file.clone().unwrap();
    let ring = token_broker::secrets::Keyring::load(&master).unwrap();
    let input = serde_json::from_value(json!({
        "provider": "opentok", "api_key": "654321", "api_secret": API_SECRET,
    }))
    .unwrap();
    let held = writing().await;
    let (put, ()) = tokio::join!(
        token_broker::credentials::put(
            &cli,
            Some(&ring),
            "acme",
            "second",
            input,
            &Actor::Cli,
            3_500
        ),
        held.release_after(HOLD)
    );
    assert!(
        put.expect("the upload waits for the other writer").1,
        "created"
    );

    let held = writing().await;
    let (pruned, ()) = tokio::join!(
        cli.prune_audit("acme", 2_500, 4_000),
        held.release_after(HOLD)
    );
    let pruned = pruned.expect("the prune waits for the other writer");
    assert!(pruned.is_some_and(|p| p.rows_deleted > 0));

    let v = token_broker::cli_audit::verify_tenant(&app.store, "acme", None)
        .await
        .unwrap();
    assert!(v.ok, "{v:?}");
}

#[tokio::test]
async fn missing_malformed_and_unknown_keys_get_401_with_www_authenticate() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let real = app.create_key("acme", &["issue"]).await;
    let unknown = format!("tkb_aaaaaaaaaaaaaaaa_{}", "0".repeat(64));
    let wrong_secret = format!("{}{}", &real[..real.len() - 64], "f".repeat(64));
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not bearer", Some("Basic abc".into())),
        ("malformed", Some("Bearer nonsense".into())),
        ("unknown id", Some(format!("Bearer {unknown}"))),
        ("wrong secret", Some(format!("Bearer {wrong_secret}"))),
    ];
    for (what, header) in cases {
        let mut rq = app.client.get(app.url("/v1/whoami"));
        if let Some(h) = header {
            rq = rq.header("Authorization", h);
        }
        let r = rq.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert!(r.headers().contains_key("www-authenticate"), "{what}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["code"].is_string(), "{what}: {v}");
    }
}

#[tokio::test]
async fn the_database_holds_no_key_secret_but_its_argon2id_hash() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let key = app.create_key("acme", &["issue"]).await;
    let secret = &key[key.len() - 64..];
    let rows = app.store.list_keys("acme").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].secret_hash.starts_with("$argon2id$"));
    for r in &rows {
        let all = format!("{r:?}");
        assert!(!all.contains(secret));
    }
    if let Some(path) = app.db_url.strip_prefix("sqlite://") {
        for suffix in ["", "-wal"] {
            if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                let hay = String::from_utf8_lossy(&bytes);
                assert!(!hay.contains(secret), "secret found in {path}{suffix}");
                assert!(!hay.contains(&key), "key found in {path}{suffix}");
            }
        }
    }
    // The audit record of the creation names the key id only.
    let audit_key = app.create_key("acme", &["audit"]).await;
    let v = app.audit(&audit_key, "kind=key_created").await;
    assert!(!v.to_string().contains(secret));
}

#[tokio::test]
async fn admin_keys_manage_keys_of_their_own_tenant_only() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("other").await;
    let admin = app.create_key("acme", &["admin"]).await;
    let issue_only = app.create_key("acme", &["issue"]).await;
    let other_admin = app.create_key("other", &["admin"]).await;

    let r = app
        .post(
            "/v1/keys",
            &admin,
            &json!({"scopes": ["issue"], "name": "web"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let new_key = created["key"].as_str().unwrap().to_owned();
    let new_id = created["key_id"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/v1/whoami", &new_key).await.status(), 200);

    let list: Value = app.get("/v1/keys", &admin).await.json().await.unwrap();
    let text = list.to_string();
    assert!(text.contains(&new_id));
    assert!(
        !text.contains(&new_key[new_key.len() - 64..]),
        "list must not show secrets"
    );
    assert!(!text.contains("argon2"), "list must not show hashes");
    // Keys the operator made on the command line say so, and nothing about the
    // operator's host (no OS user name).
    let items = list["keys"]
        .as_array()
        .or(list["items"].as_array())
        .unwrap();
    let by_cli = items.iter().find(|k| k["created_by"] == "cli");
    assert!(by_cli.is_some(), "{list}");
    if let Ok(user) = std::env::var("USER") {
        assert!(!text.contains(&format!("cli:{user}")), "{list}");
    }

    // An issue-only key cannot manage keys; another tenant's admin cannot touch ours.
    assert_eq!(app.get("/v1/keys", &issue_only).await.status(), 403);
    let r = app
        .delete(&format!("/v1/keys/{new_id}"), &other_admin)
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(app.get("/v1/whoami", &new_key).await.status(), 200);

    let r = app.delete(&format!("/v1/keys/{new_id}"), &admin).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.get("/v1/whoami", &new_key).await.status(),
        401,
        "revocation is immediate on this instance"
    );

    let r = app
        .post("/v1/keys", &admin, &json!({"scopes": ["root"]}))
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_scope");
    assert_eq!(v["error"]["field"], "scopes");
}

/// Review D5: a hostile tenant admin cannot create keys without bound (each
/// one an argon2 hash and a row). With 100 live keys, `POST /v1/keys` is
/// refused with 409 `too_many_keys`; revoking one makes room again.
#[tokio::test]
async fn a_tenant_admin_holds_at_most_100_live_keys() {
    let app = spawn_app().await;
    app.create_tenant("mallory").await;
    let admin = app.create_key("mallory", &["admin"]).await;
    // 99 more live keys (seeded: hashing 99 keys would only slow the test).
    let values: Vec<String> = (0..99)
        .map(|i| format!("('seed{i}', 'mallory', 'issue', 'x', 1000, 'cli')"))
        .collect();
    raw_sql(
        &app,
        &format!(
            "INSERT INTO api_keys (key_id, tenant, scopes, secret_hash, created_at_ms, created_by) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    let r = app
        .post("/v1/keys", &admin, &json!({"scopes": ["issue"]}))
        .await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_keys", "{v}");
    let r = app.delete("/v1/keys/seed0", &admin).await;
    assert_eq!(r.status(), 200);
    let r = app
        .post("/v1/keys", &admin, &json!({"scopes": ["issue"]}))
        .await;
    assert_eq!(r.status(), 201);

    // At 99 live keys, a burst of concurrent creations: all pass the quick
    // check before hashing, and only one may land.
    let r = app.delete("/v1/keys/seed1", &admin).await;
    assert_eq!(r.status(), 200);
    let body = json!({"scopes": ["issue"]});
    let burst = (0..8).map(|_| app.post("/v1/keys", &admin, &body));
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [201, 409].contains(s)),
        "{statuses:?}"
    );
    let live = app.store.list_keys("mallory").await.unwrap();
    let live = live.iter().filter(|k| k.revoked_at_ms.is_none()).count();
    assert_eq!(live, 100);
}

//! Tenant-owned credentials, played by the attackers of the threat model: a
//! hostile tenant admin pointing secret references at another tenant's or the
//! host's secrets, claiming another tenant's video project, or feeding the
//! broker pipes and huge files; a database administrator moving ciphertexts
//! between tenants; an anonymous client reading `/readyz`.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::helpers::*;

/// A tenant policy with the standard rules and no credentials of its own.
fn rules_only(tenant: &str) -> String {
    let full = standard_policy_text(tenant, "opentok.secret");
    let rules = &full[full.find("[defaults]").unwrap()..];
    format!("tenant = \"{tenant}\"\n\n{rules}")
}

/// A policy for `tenant` with one OpenTok credential whose api_secret reference is `reference`.
fn policy_with_secret(tenant: &str, api_key: &str, reference: &str) -> String {
    format!(
        "tenant = \"{tenant}\"\n\n[[credentials]]\nname = \"main\"\nprovider = \"opentok\"\napi_key = \"{api_key}\"\napi_secret = \"{reference}\"\n\n{}",
        &rules_only(tenant)[rules_only(tenant).find("[defaults]").unwrap()..]
    )
}

async fn apply_http(app: &TestApp, key: &str, source: &str, dry_run: bool) -> (u16, Value) {
    let r = app
        .post(
            "/v1/policy",
            key,
            &json!({"source": source, "dry_run": dry_run}),
        )
        .await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn mkfifo(path: &std::path::Path) {
    assert!(
        std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap()
            .success()
    );
}

/// Two tenants: `victim` with the standard policy (API_KEY), `mallory` with an admin key.
async fn two_tenants(app: &TestApp) -> (String, String) {
    let victim_key = app.acme().await;
    app.create_tenant("mallory").await;
    let mallory = app
        .create_key("mallory", &["issue", "admin", "audit"])
        .await;
    (victim_key, mallory)
}

#[tokio::test]
async fn a_hostile_admin_cannot_point_references_outside_its_namespace() {
    let app = spawn_app().await;
    let (victim_key, mallory) = two_tenants(&app).await;
    app.create_tenant("mallory-west").await;
    let ns = app.app_state.settings.secrets_dir.join("mallory");
    std::fs::create_dir_all(ns.join("a-directory")).unwrap();
    std::fs::write(ns.join("huge"), vec![b'x'; 64 * 1024 + 1]).unwrap();
    mkfifo(&ns.join("pipe"));
    let victim_secret = app
        .app_state
        .settings
        .secrets_dir
        .join("acme/opentok.secret");
    std::os::unix::fs::symlink(&victim_secret, ns.join("link-out")).unwrap();
    let cases = [
        "env:TOKEN_BROKER_TENANT_ACME_SECRET", // another tenant's variable
        "env:HOME",                            // the host's environment
        "env:TOKEN_BROKER_DATABASE_URL",
        "env:TOKEN_BROKER_TENANT_MALLORY_WEST_SECRET", // a longer tenant prefix: not mallory's
        "file:/etc/passwd",
        "file:/etc/shadow",
        "file:/dev/zero",
        "file:../acme/opentok.secret",
        "file:link-out",    // a symlink leading out
        "file:pipe",        // a named pipe inside
        "file:a-directory", // a directory inside
        "file:huge",        // over 64 KiB
    ];
    for reference in cases {
        for dry_run in [true, false] {
            let started = Instant::now();
            let source = policy_with_secret("mallory", "555001", reference);
            let (s, v) = apply_http(&app, &mallory, &source, dry_run).await;
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{reference}: answered at once"
            );
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (400, Some("invalid_policy")),
                "{reference} (dry run {dry_run}): {v}"
            );
            assert_eq!(v["error"]["field"], "credentials[0].api_secret", "{v}");
            let msg = v["error"]["message"].as_str().unwrap().to_lowercase();
            for oracle in ["exist", "no such", "permission", "is a directory", "denied"] {
                assert!(
                    !msg.contains(oracle),
                    "{reference}: oracle {oracle:?} in {msg}"
                );
            }
            assert!(!msg.contains(API_SECRET) && !msg.contains("root:"), "{msg}");
        }
    }
    // The same rules hold for identity providers' keys.
    let idp = format!(
        "{}\n[[identity_providers]]\nname = \"login\"\nissuer = \"https://login.mallory.test\"\naudiences = [\"x\"]\nalgorithms = [\"RS256\"]\npublic_keys = [\"file:/etc/ssl/certs/ca-certificates.crt\"]\n",
        rules_only("mallory")
    );
    let (s, v) = apply_http(&app, &mallory, &idp, true).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["error"]["field"], "identity_providers[0].public_keys[0]",
        "{v}"
    );
    let idp_pipe = idp.replace("file:/etc/ssl/certs/ca-certificates.crt", "file:pipe");
    let (s, v) = apply_http(&app, &mallory, &idp_pipe, false).await;
    assert_eq!(s, 400, "{v}");
    // Nothing was applied, and the victim still issues with its own secret.
    assert!(app.store.current_policy("mallory").await.unwrap().is_none());
    let (s, v) = app
        .issue(
            &victim_key,
            &json!({"session_id": session_for(API_KEY, 1), "user": user("v")}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // The CLI path (the library the CLI calls) refuses the same.
    let e = token_broker::admin::apply_policy(
        &app.store,
        &app.app_state.secrets,
        "mallory.toml",
        &policy_with_secret("mallory", "555001", "file:/etc/passwd"),
        None,
        true,
        &token_broker::admin::Actor::Cli,
        None,
        1_000,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("credentials[0].api_secret"), "{e}");
}

#[tokio::test]
async fn a_named_pipe_blocks_no_worker_while_others_are_served() {
    let app = spawn_app().await;
    let (victim_key, mallory) = two_tenants(&app).await;
    let ns = app.app_state.settings.secrets_dir.join("mallory");
    std::fs::create_dir_all(&ns).unwrap();
    mkfifo(&ns.join("pipe"));
    let source = policy_with_secret("mallory", "555001", "file:pipe");
    // Eight hostile applies at once (the test server has two HTTP workers).
    let hostile: Vec<_> = (0..8)
        .map(|i| {
            let (client, url, key, source) = (
                app.client.clone(),
                app.url("/v1/policy"),
                mallory.clone(),
                source.clone(),
            );
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(key)
                    .json(&json!({"source": source, "dry_run": i % 2 == 0}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for i in 0..20 {
        let started = Instant::now();
        let r = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "healthz was slow"
        );
        let (s, v) = app
            .issue(
                &victim_key,
                &json!({"session_id": session_for(API_KEY, i), "user": user("v")}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    for h in hostile {
        assert_eq!(h.await.unwrap(), 400);
    }
}

#[tokio::test]
async fn a_tenant_cannot_claim_another_tenants_video_project() {
    let app = spawn_app().await;
    let (_victim_key, mallory) = two_tenants(&app).await;
    // The victim's api key is public (it is in every session ID); mallory has a
    // secret of its own in its namespace and claims the victim's project with it.
    app.provision_secret(
        "mallory",
        "guess.secret",
        b"a-guessed-secret-of-forty-characters-xx",
    );
    let claim = policy_with_secret("mallory", API_KEY, "file:guess.secret");
    for dry_run in [true, false] {
        let (s, v) = apply_http(&app, &mallory, &claim, dry_run).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("credential_claimed")),
            "{v}"
        );
        assert!(
            !v.to_string().contains("acme"),
            "says nothing of the other tenant: {v}"
        );
    }
    // Nor through an upload, with any secret, for an OpenTok or a Vonage project.
    let r = app
        .put(
            "/v1/credentials/stolen",
            &mallory,
            &json!({"provider": "opentok", "api_key": API_KEY, "api_secret": API_SECRET}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "credential_claimed");
    // The CLI refuses the same (it calls the same library function).
    let e = token_broker::admin::apply_policy(
        &app.store,
        &app.app_state.secrets,
        "mallory.toml",
        &claim,
        None,
        false,
        &token_broker::admin::Actor::Cli,
        None,
        1_000,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, token_broker::admin::AdminError::Claimed), "{e}");
    // So mallory never gets a token for the victim's sessions.
    let mallory_rules = rules_only("mallory");
    assert_eq!(
        apply_http(&app, &mallory, &mallory_rules, false).await.0,
        200
    );
    let (s, v) = app
        .issue(
            &mallory,
            &json!({"session_id": session_for(API_KEY, 1), "user": user("m"), "role": "moderator"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("session_not_owned")),
        "{v}"
    );
    assert!(v["token"].is_null());
}

#[tokio::test]
async fn a_stored_credential_signs_and_its_secret_is_never_shown_or_stored_in_clear() {
    let app = spawn_app().await;
    let admin = bravo_with_rules(&app, &["issue", "admin", "audit"]).await;
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), "0badc0de");
    let body = json!({"provider": "opentok", "api_key": "424242", "api_secret": secret, "token_format": "jwt"});
    let r = app.put("/v1/credentials/main", &admin, &body).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["source"], "stored");
    assert_eq!(created["api_key"], "424242");
    assert!(
        created["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let r = app.put("/v1/credentials/main", &admin, &body).await;
    assert_eq!(r.status(), 200, "replaced");
    let sid = session_for("424242", 1);
    let (s, v) = app
        .issue(&admin, &json!({"session_id": sid, "user": user("u")}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["credential"], "main");
    let mut val = Validation::new(Algorithm::HS256);
    val.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(
        v["token"].as_str().unwrap(),
        &DecodingKey::from_secret(secret.as_bytes()),
        &val,
    )
    .expect("verifies with the uploaded secret")
    .claims;
    assert_eq!(claims["iss"], "424242");
    // A Vonage application key is accepted too, and a bad one refused with its field.
    let pem = std::fs::read_to_string(fixture("vonage-jwt-jdk-test.key")).unwrap();
    let r = app
        .put(
            "/v1/credentials/app",
            &admin,
            &json!({"provider": "vonage", "application_id": "29F760F8-7CE1-46C9-ADE3-F2DEDEE4ED5F", "private_key": pem}),
        )
        .await;
    assert_eq!(r.status(), 201);
    // Shown: names, ids, fingerprints; never a secret.
    let list: Value = app
        .get("/v1/credentials", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    let one: Value = app
        .get("/v1/credentials/app", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        one["application_id"],
        "29f760f8-7ce1-46c9-ade3-f2dedee4ed5f"
    );
    let audit: Value = app.audit(&admin, "kind=credential_set").await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 3, "{audit}");
    let pem_body = pem.lines().nth(1).unwrap();
    for shown in [
        list.to_string(),
        one.to_string(),
        audit.to_string(),
        v.to_string(),
    ] {
        assert!(!shown.contains(&secret), "secret shown: {shown}");
        assert!(!shown.contains(pem_body), "private key shown");
    }
    // Nor stored in clear: not in any table, nor in the SQLite files (WAL included).
    for table in [
        "stored_credentials",
        "audit_events",
        "changes",
        "video_projects",
    ] {
        let text = table_text(&app, table).await;
        assert!(
            !text.contains(&secret) && !text.contains(pem_body),
            "{table}"
        );
    }
    if let Some(path) = app.db_url.strip_prefix("sqlite://") {
        for suffix in ["", "-wal", "-shm"] {
            if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                let hay = String::from_utf8_lossy(&bytes);
                assert!(!hay.contains(&secret), "secret in {path}{suffix}");
                assert!(!hay.contains(pem_body), "key in {path}{suffix}");
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(format!("{path}{suffix}"))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(
                    mode & 0o077,
                    0,
                    "{path}{suffix} is readable by others: {mode:o}"
                );
            }
        }
    }
    // Bad uploads: status, code and the field at fault.
    for (body, field) in [
        (
            json!({"provider": "opentok", "api_key": "12ab", "api_secret": "x"}),
            "api_key",
        ),
        (
            json!({"provider": "opentok", "api_key": "1", "api_secret": ""}),
            "api_secret",
        ),
        (
            json!({"provider": "opentok", "api_key": "1", "api_secret": "a\u{0}b"}),
            "api_secret",
        ),
        (
            json!({"provider": "opentok", "api_key": "1", "api_secret": "s", "token_format": "t2"}),
            "token_format",
        ),
        (
            json!({"provider": "vonage", "application_id": "not-a-uuid", "private_key": pem}),
            "application_id",
        ),
        (
            json!({"provider": "vonage", "application_id": "29f760f8-7ce1-46c9-ade3-f2dedee4ed50", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
            "private_key",
        ),
    ] {
        let r = app.put("/v1/credentials/bad", &admin, &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let r = app.put("/v1/credentials/Bad%20Name", &admin, &body).await;
    assert_eq!(r.status(), 400);
    let r = app
        .put(
            "/v1/credentials/x",
            &admin,
            &json!({"provider": "twilio", "api_key": "1"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    // Delete: its sessions are no longer signed; a second delete is 404.
    let r = app.delete("/v1/credentials/main", &admin).await;
    assert_eq!(r.status(), 200);
    let r = app.delete("/v1/credentials/main", &admin).await;
    assert_eq!(r.status(), 404);
    let (s, v) = app
        .issue(&admin, &json!({"session_id": sid, "user": user("u")}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("session_not_owned")),
        "{v}"
    );
}

#[tokio::test]
async fn credentials_are_confined_to_their_tenant_and_scope() {
    let app = spawn_app().await;
    let (victim_key, mallory) = two_tenants(&app).await;
    // Only admin keys manage credentials.
    let r = app.get("/v1/credentials", &victim_key).await;
    assert_eq!(r.status(), 200, "acme's key has admin scope");
    let issue_only = app.create_key("acme", &["issue"]).await;
    let r = app
        .put(
            "/v1/credentials/main2",
            &issue_only,
            &json!({"provider": "opentok", "api_key": "999", "api_secret": "s"}),
        )
        .await;
    assert_eq!(r.status(), 403);
    // Mallory sees and touches nothing of acme's.
    let list: Value = app
        .get("/v1/credentials", &mallory)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]), "{list}");
    assert_eq!(
        app.get("/v1/credentials/main", &mallory).await.status(),
        404
    );
    let r = app.delete("/v1/credentials/main", &mallory).await;
    assert_eq!(r.status(), 404);
    let st: Value = app.get("/v1/status", &mallory).await.json().await.unwrap();
    assert!(!st.to_string().contains("acme"), "{st}");
    // A name the policy uses cannot be taken by an upload, and vice versa.
    let r = app
        .put(
            "/v1/credentials/main",
            &victim_key,
            &json!({"provider": "opentok", "api_key": "31337", "api_secret": "s"}),
        )
        .await;
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_tenant_does_not_decrypt() {
    let app = spawn_app().await;
    for (t, api_key) in [("alpha", "111111"), ("bravo", "222222")] {
        app.create_tenant(t).await;
        let admin = app.create_key(t, &["issue", "admin"]).await;
        assert_eq!(apply_http(&app, &admin, &rules_only(t), false).await.0, 200);
        let r = app
            .put(
                "/v1/credentials/main",
                &admin,
                &json!({"provider": "opentok", "api_key": api_key, "api_secret": format!("{t}-secret-0123456789abcdef")}),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    let bravo = app.create_key("bravo", &["issue"]).await;
    // The database administrator copies alpha's sealed secret into bravo's row.
    raw_sql(
        &app,
        "UPDATE stored_credentials SET key_id = (SELECT key_id FROM stored_credentials WHERE tenant = 'alpha'), \
         nonce = (SELECT nonce FROM stored_credentials WHERE tenant = 'alpha'), \
         ciphertext = (SELECT ciphertext FROM stored_credentials WHERE tenant = 'alpha') WHERE tenant = 'bravo'",
    )
    .await;
    app.app_state.reload_tenant("bravo").await.unwrap();
    let (s, v) = app
        .issue(
            &bravo,
            &json!({"session_id": session_for("222222", 1), "user": user("b")}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("credential_unavailable")),
        "{v}"
    );
    // And alpha's whole row moved under bravo (with alpha's project id): still no token.
    raw_sql(
        &app,
        "DELETE FROM stored_credentials WHERE tenant = 'bravo'",
    )
    .await;
    raw_sql(
        &app,
        "UPDATE stored_credentials SET tenant = 'bravo' WHERE tenant = 'alpha'",
    )
    .await;
    app.app_state.reload_tenant("bravo").await.unwrap();
    let (s, v) = app
        .issue(
            &bravo,
            &json!({"session_id": session_for("111111", 1), "user": user("b")}),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(v["token"].is_null());
}

#[tokio::test]
async fn without_a_master_key_uploads_are_refused_clearly() {
    let app = spawn_app_with(|s| s.master_key_file = None).await;
    app.create_tenant("acme").await;
    let admin = app.create_key("acme", &["admin"]).await;
    let r = app
        .put(
            "/v1/credentials/main",
            &admin,
            &json!({"provider": "opentok", "api_key": "1", "api_secret": "s"}),
        )
        .await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "master_key_missing", "{v}");
    assert!(app.store.list_credentials("acme").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_broken_tenant_breaks_only_itself_even_across_a_restart() {
    let app = spawn_app().await;
    let (victim_key, mallory) = two_tenants(&app).await;
    // Mallory's secret is a regular file when applied; later it becomes a named
    // pipe, and its identity provider's key a directory.
    let secret = app.provision_secret("mallory", "opentok.secret", b"mallory-secret-0123456789");
    let pem = std::fs::read(fixture("idp-rsa-1.pub.pem")).unwrap();
    let idp_key = app.provision_secret("mallory", "idp.pem", &pem);
    let source = format!(
        "{}\n[[identity_providers]]\nname = \"login\"\nissuer = \"https://login.mallory.test\"\naudiences = [\"x\"]\nalgorithms = [\"RS256\"]\npublic_keys = [\"file:idp.pem\"]\n",
        policy_with_secret("mallory", "555001", "file:opentok.secret")
    );
    let (s, v) = apply_http(&app, &mallory, &source, false).await;
    assert_eq!(s, 200, "{v}");
    std::fs::remove_file(&secret).unwrap();
    mkfifo(&secret);
    std::fs::remove_file(&idp_key).unwrap();
    std::fs::create_dir(&idp_key).unwrap();
    // A restart (another instance on the same database, secrets and keys).
    let started = Instant::now();
    let second = app.spawn_second().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "listening within seconds"
    );
    let (s, v) = second
        .issue(
            &victim_key,
            &json!({"session_id": session_for(API_KEY, 1), "user": user("v")}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = second
        .issue(
            &mallory,
            &json!({"session_id": session_for("555001", 1), "user": user("m")}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("credential_unavailable")),
        "{v}"
    );
    // Anonymous readiness is ready and names nobody; mallory's admin sees its own problems.
    let r = second
        .client
        .get(second.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for secret_word in [
        "mallory",
        "acme",
        "opentok.secret",
        "idp.pem",
        "secrets",
        "login",
    ] {
        assert!(!text.contains(secret_word), "{secret_word} in {text}");
    }
    let st: Value = second
        .get("/v1/status", &mallory)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(st["credentials"][0]["available"], false, "{st}");
    assert_eq!(st["identity_providers"][0]["available"], false, "{st}");
}

#[tokio::test]
async fn rekey_reseals_every_credential_under_the_new_master_key() {
    use token_broker::secrets::Keyring;
    let app = spawn_app().await;
    let admin = bravo_with_rules(&app, &["issue", "admin"]).await;
    let secret = "bravo-secret-0123456789abcdef0123";
    let r = app
        .put(
            "/v1/credentials/main",
            &admin,
            &json!({"provider": "opentok", "api_key": "262626", "api_secret": secret}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let old_path = app.app_state.settings.master_key_file.clone().unwrap();
    let old = Keyring::load(&old_path).unwrap();
    // Rotation: a new key first, the old one kept below it.
    let new_path = app.dir.path().join("new.key");
    let new_id = Keyring::generate(&new_path).unwrap();
    let both = format!(
        "{}\n{}",
        std::fs::read_to_string(&new_path).unwrap(),
        std::fs::read_to_string(&old_path).unwrap()
    );
    let rotated = Keyring::parse(&both).unwrap();
    let report = token_broker::credentials::rekey(&app.store, &rotated)
        .await
        .unwrap();
    assert_eq!((report.resealed, report.failed.len()), (1, 0), "{report:?}");
    let row = app
        .store
        .get_credential("bravo", "main")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.key_id, new_id);
    // The new key alone opens it and signs with the same secret; the old key alone no longer does.
    let new_only = Keyring::load(&new_path).unwrap();
    assert!(token_broker::credentials::open_signer(Some(&new_only), &row).is_ok());
    assert!(token_broker::credentials::open_signer(Some(&old), &row).is_err());
    // Running it again has nothing left to do.
    let again = token_broker::credentials::rekey(&app.store, &rotated)
        .await
        .unwrap();
    assert_eq!((again.resealed, again.already_current), (0, 1));
    // A keyring that lacks the sealing key reports the credential, never a secret.
    let stranger = app.dir.path().join("stranger.key");
    Keyring::generate(&stranger).unwrap();
    let r = token_broker::credentials::rekey(&app.store, &Keyring::load(&stranger).unwrap())
        .await
        .unwrap();
    assert_eq!(r.failed, vec!["bravo/main".to_owned()]);
    assert!(!format!("{r:?}").contains(secret));
}

/// Review D6: an app's tokens are signed on a shared HTTP worker, so a tenant
/// admin uploading an RSA-8192 key (about 64x the cost of RSA-2048 per
/// token) would let its app tie up a worker at ~50 tokens/s. Keys over 4096
/// bits are refused at upload, naming the field; 4096 bits is accepted.
#[tokio::test]
async fn rsa_keys_over_4096_bits_are_refused_at_upload() {
    let app = spawn_app().await;
    app.create_tenant("bravo").await;
    let admin = app.create_key("bravo", &["issue", "admin", "audit"]).await;
    let huge = std::fs::read_to_string(fixture("rsa-8192-oversize.key")).unwrap();
    let r = app
        .put(
            "/v1/credentials/big",
            &admin,
            &json!({"provider": "vonage", "application_id": "29f760f8-7ce1-46c9-ade3-f2dedee4ed51", "private_key": huge}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "private_key", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4096 bits"),
        "{v}"
    );
    let ok = std::fs::read_to_string(fixture("rsa-4096.key")).unwrap();
    let r = app
        .put(
            "/v1/credentials/ok",
            &admin,
            &json!({"provider": "vonage", "application_id": "29f760f8-7ce1-46c9-ade3-f2dedee4ed52", "private_key": ok}),
        )
        .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn a_tenant_is_not_created_into_a_namespace_another_tenant_already_uses() {
    // The operator provisions mallory-west's secret before creating the
    // tenant; mallory's admin references it first (the name is still inside
    // mallory's prefix). Creating mallory-west must fail loudly instead of
    // leaving mallory signing with mallory-west's secret.
    let app = spawn_app().await;
    let (_, mallory) = two_tenants(&app).await;
    // (Not provisioned on this host: a policy may name it ahead, with a warning.)
    let var = "TOKEN_BROKER_TENANT_MALLORY_WEST_EARLY_SECRET";
    let source = policy_with_secret("mallory", "555002", &format!("env:{var}"));
    let (s, v) = apply_http(&app, &mallory, &source, false).await;
    assert_eq!(s, 200, "{v}");
    let e = token_broker::admin::create_tenant(
        &app.store,
        "mallory-west",
        &token_broker::admin::Actor::Cli,
        2_000,
    )
    .await
    .expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("mallory") && msg.contains(var) && msg.contains("credentials[0].api_secret"),
        "{msg}"
    );
    assert!(!app.store.tenant_exists("mallory-west").await.unwrap());
    // A slug that no policy's variables reach is created as before.
    app.create_tenant("mallory-east").await;
}

/// Secrets review F3: `credential rekey` reads every row, then reseals each.
/// An upload that lands in between (from a broker still sealing under the
/// old master key: the same key id) must win; the reseal of what rekey read
/// changes nothing.
#[tokio::test]
async fn a_reseal_never_overwrites_an_upload_that_landed_after_its_read() {
    let app = spawn_app().await;
    let admin = bravo_with_rules(&app, &["issue", "admin"]).await;
    // Uploads a secret and returns the row stored for it.
    let upload = |secret: &'static str| {
        let (app, admin) = (&app, &admin);
        async move {
            let body = json!({"provider": "opentok", "api_key": "262626", "api_secret": secret});
            let r = app.put("/v1/credentials/main", admin, &body).await;
            assert!(r.status().is_success(), "{}", r.status());
            app.store
                .get_credential("bravo", "main")
                .await
                .unwrap()
                .unwrap()
        }
    };
    let read = upload("bravo-secret-0123456789abcdef0123").await;
    let landed = upload("bravo-secret-fedcba9876543210fedc").await;
    assert_eq!(
        landed.key_id, read.key_id,
        "the same master key sealed both"
    );
    let changed = app
        .store
        .reseal_credential(
            "bravo",
            "main",
            (&read.key_id, &read.nonce),
            ("other-key", "other-nonce", "other-ciphertext"),
        )
        .await
        .unwrap();
    assert!(!changed);
    let now = app
        .store
        .get_credential("bravo", "main")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (now.nonce, now.ciphertext),
        (landed.nonce, landed.ciphertext)
    );
}

/// Tenant `bravo` with a policy of rules only (its credentials to be
/// uploaded), and an API key of `scopes` for it.
async fn bravo_with_rules(app: &TestApp, scopes: &[&str]) -> String {
    app.create_tenant("bravo").await;
    let admin = app.create_key("bravo", scopes).await;
    assert_eq!(
        apply_http(app, &admin, &rules_only("bravo"), false).await.0,
        200
    );
    admin
}

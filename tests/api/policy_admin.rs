//! Policy over HTTP: dry run, apply, history, rollback, tenant confinement,
//! validation errors with locations, and a second instance seeing an apply.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn apply_dry_run_history_and_rollback_over_http() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 1);
    let v1 = app.standard_policy("acme");
    let v2 = v1.replace("max_ttl = \"2h\"", "max_ttl = \"30m\"");

    let r = app
        .post("/v1/policy", &key, &json!({"source": v2, "dry_run": true}))
        .await;
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert!(d["version"].is_null(), "{d}");
    assert!(d["diff"].as_str().unwrap().contains("30m"), "{d}");
    let h: Value = app
        .get("/v1/policy/versions", &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        h["items"].as_array().unwrap().len(),
        1,
        "dry run applies nothing"
    );

    let r = app.post("/v1/policy", &key, &json!({"source": v2})).await;
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["version"], 2);
    let (_, v) = app
        .issue(
            &key,
            &json!({"session_id": sid, "user": user("s"), "ttl": 7200}),
        )
        .await;
    assert_eq!(v["decision"]["policy_version"], 2);
    assert_eq!(v["decision"]["clamped"]["ttl"]["granted"], 1800, "{v}");

    let r = app
        .post("/v1/policy/rollback", &key, &json!({"to": 1}))
        .await;
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["version"], 3);
    let (_, v) = app
        .issue(
            &key,
            &json!({"session_id": sid, "user": user("s"), "ttl": 7200}),
        )
        .await;
    assert_eq!(v["decision"]["policy_version"], 3);
    assert!(v["decision"]["clamped"].is_null(), "{v}");
    let h: Value = app
        .get("/v1/policy/versions", &key)
        .await
        .json()
        .await
        .unwrap();
    let versions: Vec<i64> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(h["items"][0]["note"], "rollback to 1");
    let cur: Value = app.get("/v1/policy", &key).await.json().await.unwrap();
    assert_eq!(cur["source"].as_str().unwrap(), v1);
    // The applies are admin events in the audit.
    let a = app.audit(&key, "kind=policy_applied").await;
    assert_eq!(a["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn admin_keys_cannot_apply_another_tenants_policy_and_errors_have_locations() {
    let app = spawn_app().await;
    let key = app.acme().await;
    app.create_tenant("globex").await;
    let other = app.standard_policy("globex");
    let r = app
        .post("/v1/policy", &key, &json!({"source": other}))
        .await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "wrong_tenant");

    let broken = app
        .standard_policy("acme")
        .replace("max_ttl = \"8h\"", "max_ttl = \"8h\"\nmax_tll = \"1h\"");
    let r = app
        .post(
            "/v1/policy",
            &key,
            &json!({"source": broken, "source_name": "acme.toml"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_policy");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("acme.toml:") && msg.contains("max_tll"),
        "{msg}"
    );
    let issue_only = app.create_key("acme", &["issue"]).await;
    assert_eq!(app.get("/v1/policy", &issue_only).await.status(), 403);

    // A long, commented policy is larger than a token request, and still fits.
    let long = format!(
        "{}\n{}",
        "# review notes\n".repeat(3000),
        app.standard_policy("acme")
    );
    assert!(long.len() > 32 * 1024);
    let r = app
        .post(
            "/v1/policy",
            &key,
            &json!({"source": long, "dry_run": true}),
        )
        .await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn a_second_instance_sees_an_applied_version_within_a_second() {
    let app = spawn_app().await;
    let key = app.acme().await;
    // A second broker on the same database.
    let second = app.spawn_second().await;
    let sid = session_for(API_KEY, 1);
    let body = json!({"session_id": sid, "user": user("s"), "ttl": 7200});
    let r: Value = second
        .post("/v1/decide", &key, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["decision"]["policy_version"], 1);

    let v2 = app
        .standard_policy("acme")
        .replace("max_ttl = \"2h\"", "max_ttl = \"10m\"");
    assert_eq!(
        app.post("/v1/policy", &key, &json!({"source": v2}))
            .await
            .status(),
        200
    );
    let start = Instant::now();
    loop {
        let r: Value = second
            .post("/v1/decide", &key, &body)
            .await
            .json()
            .await
            .unwrap();
        if r["decision"]["policy_version"] == 2 {
            assert_eq!(r["decision"]["clamped"]["ttl"]["granted"], 600);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "second instance still on version 1 after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A load of an older version that finishes after a newer one was put in use
/// (a forced reload of version N, slowed by its secrets, while N+1 is
/// applied) leaves the newer one deciding (policy review F6).
#[tokio::test]
async fn an_outdated_policy_load_does_not_replace_a_newer_one() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let v1 = app.app_state.tenant("acme").unwrap().policy.version;
    let stricter = app
        .standard_policy("acme")
        .replace("max_ttl = \"2h\"", "max_ttl = \"1h\"");
    let v2 = app.apply_policy(&stricter).await;
    assert!(v2 > v1);
    let old = app.store.policy_version("acme", v1).await.unwrap().unwrap();
    app.app_state.install(&old).await.unwrap();
    assert_eq!(app.app_state.tenant("acme").unwrap().policy.version, v2);
    let sid = session_for(API_KEY, 1);
    let (s, v) = app
        .issue(&key, &json!({"session_id": sid, "user": user("ann")}))
        .await;
    assert_eq!(
        (s, v["decision"]["policy_version"].as_i64()),
        (201, Some(v2)),
        "{v}"
    );
}

//! Policy replay: traffic recorded under policy A, replayed under policy B,
//! every change kind counted with its examples; `--fail-on` gates; the
//! decision sees the session facts it saw then; replay writes no decision.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_token-broker");

/// Policy B: the teachers' lifetime cut to 1h, the ban rule gone, students
/// may only subscribe, eve may moderate, frank is denied.
fn policy_b(app: &TestApp) -> String {
    let a = app.standard_policy("acme");
    let cut = a.find("[[rules]]\nid = \"banned\"").unwrap();
    let end = a[cut..]
        .find("[[rules]]\nid = \"owner-moderates\"")
        .unwrap()
        + cut;
    let mut b = format!("{}{}", &a[..cut], &a[end..]);
    b = b.replace("max_ttl = \"4h\"", "max_ttl = \"1h\"");
    b = b.replace(
        "roles = [\"subscriber\", \"publisher\"]\ndefault_role = \"subscriber\"",
        "roles = [\"subscriber\"]\ndefault_role = \"subscriber\"",
    );
    b.push_str(
        "\n[[rules]]\nid = \"frank-out\"\npriority = 2\neffect = \"deny\"\nsubjects = [\"user:frank\"]\nsessions = [\"*\"]\n\
         \n[[rules]]\nid = \"eve-moderates\"\npriority = 50\nsubjects = [\"user:eve\"]\nsessions = [\"*\"]\nroles = [\"moderator\"]\n",
    );
    b
}

/// Records six requests under the standard policy (A); returns their audit ids by user.
async fn record_traffic(app: &TestApp, key: &str) -> std::collections::HashMap<String, String> {
    let class = session_for(API_KEY, 1);
    let room = session_for(API_KEY, 2);
    let lobby = session_for(API_KEY, 3);
    for (sid, body) in [
        (&class, json!({"labels": {"kind": "class-math"}})),
        (&room, json!({"owner": "dave"})),
    ] {
        assert_eq!(
            app.put(&format!("/v1/sessions/{sid}"), key, &body)
                .await
                .status(),
            200
        );
    }
    let mut ids = std::collections::HashMap::new();
    for (user, groups, sid, role, ttl, expect) in [
        (
            "alice",
            vec!["teachers"],
            &class,
            Some("moderator"),
            Some(10_800),
            201,
        ),
        ("bob", vec![], &class, Some("publisher"), Some(3600), 201),
        ("carol", vec!["banned"], &class, None, None, 403),
        ("dave", vec![], &room, None, None, 201),
        ("eve", vec![], &lobby, Some("moderator"), None, 201),
        ("frank", vec![], &lobby, Some("publisher"), None, 201),
    ] {
        let mut body = json!({"session_id": sid, "user": {"id": user, "groups": groups}});
        if let Some(r) = role {
            body["role"] = json!(r);
        }
        if let Some(t) = ttl {
            body["ttl"] = json!(t);
        }
        let (s, v) = app.issue(key, &body).await;
        assert_eq!(s, expect, "{user}: {v}");
        let rows = app
            .audit(
                key,
                &format!(
                    "user={user}&kind={}",
                    if s == 201 {
                        "token_issued"
                    } else {
                        "token_refused"
                    }
                ),
            )
            .await;
        ids.insert(
            user.to_owned(),
            rows["items"][0]["audit_id"].as_str().unwrap().to_owned(),
        );
    }
    // The registrations change afterwards: replay must still see what the decisions saw.
    assert_eq!(
        app.put(
            &format!("/v1/sessions/{room}"),
            key,
            &json!({"owner": "zed"})
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.put(
            &format!("/v1/sessions/{class}"),
            key,
            &json!({"labels": {}})
        )
        .await
        .status(),
        200
    );
    ids
}

fn expected_changes() -> Value {
    json!({
        "granted_to_refused": 1, // frank: denied now
        "refused_to_granted": 1, // carol: the ban rule is gone
        "role_raised": 1,        // eve: subscriber -> moderator
        "role_lowered": 1,       // bob: publisher -> subscriber
        "ttl_shortened": 1,      // alice: 3h -> 1h
        "ttl_lengthened": 0,
        "rule_changed": 1,       // eve: students -> eve-moderates
        "unchanged": 1,          // dave: still the owner (as recorded)
        "granted_moderator": 1,  // eve
    })
}

#[tokio::test]
async fn replay_counts_every_change_kind_with_its_examples() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let ids = record_traffic(&app, &key).await;
    let tokens_before = app.audit(&key, "kind=token_issued").await["items"]
        .as_array()
        .unwrap()
        .len();
    let r = app
        .post(
            "/v1/policy/replay",
            &key,
            &json!({"source": policy_b(&app)}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["requests"], 6, "{v}");
    assert_eq!(v["approximate"], 0, "{v}");
    assert_eq!(v["changes"], expected_changes(), "{v}");
    let ex = &v["examples"];
    assert_eq!(ex["granted_moderator"]["users"][0]["id"], "eve");
    assert_eq!(
        ex["granted_moderator"]["users"][0]["audit_ids"][0],
        ids["eve"].as_str()
    );
    assert_eq!(ex["granted_to_refused"]["users"][0]["id"], "frank");
    assert_eq!(
        ex["refused_to_granted"]["users"][0]["audit_ids"][0],
        ids["carol"].as_str()
    );
    assert_eq!(ex["ttl_shortened"]["users"][0]["id"], "alice");
    assert_eq!(
        ex["role_lowered"]["sessions"][0]["id"],
        session_for(API_KEY, 1)
    );
    assert!(ex.get("unchanged").is_none());
    // Replay writes no decision; the replay itself is on record.
    let after = app.audit(&key, "kind=token_issued").await["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, tokens_before);
    let rec = app.audit(&key, "kind=policy_replayed").await;
    assert_eq!(rec["items"].as_array().unwrap().len(), 1, "{rec}");
    // Replaying the policy in force changes nothing.
    let v: Value = app
        .post(
            "/v1/policy/replay",
            &key,
            &json!({"source": app.standard_policy("acme")}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["changes"]["unchanged"], 6, "{v}");
    // A window before the traffic holds nothing.
    let v: Value = app
        .post(
            "/v1/policy/replay",
            &key,
            &json!({"source": policy_b(&app), "since": "0", "until": "1000"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["requests"], 0, "{v}");
}

#[tokio::test]
async fn replay_is_for_the_tenants_admins_only() {
    let app = spawn_app().await;
    let key = app.acme().await;
    record_traffic(&app, &key).await;
    let auditor = app.create_key("acme", &["audit"]).await;
    let r = app
        .post(
            "/v1/policy/replay",
            &auditor,
            &json!({"source": policy_b(&app)}),
        )
        .await;
    assert_eq!(r.status(), 403);
    // Another tenant's admin cannot replay acme's policy over acme's record.
    app.create_tenant("mallory").await;
    let mallory = app.create_key("mallory", &["admin"]).await;
    let r = app
        .post(
            "/v1/policy/replay",
            &mallory,
            &json!({"source": policy_b(&app)}),
        )
        .await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "wrong_tenant", "{v}");
    // Bad input: an invalid policy, a bad time, an empty window.
    for (body, code) in [
        (
            json!({"source": "tenant = \"acme\"\n[[rules]]\nid = 1"}),
            "invalid_policy",
        ),
        (
            json!({"source": policy_b(&app), "since": "yesterday"}),
            "invalid_time",
        ),
        (
            json!({"source": policy_b(&app), "since": "2000", "until": "1000"}),
            "invalid_request",
        ),
    ] {
        let r = app.post("/v1/policy/replay", &key, &body).await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    }
}

#[tokio::test]
async fn fail_on_gates_a_policy_change_from_the_command_line() {
    let app = spawn_app().await;
    let key = app.acme().await;
    record_traffic(&app, &key).await;
    let run = |policy: &str, fail_on: &str| {
        let path = app.dir.path().join("proposed.toml");
        std::fs::write(&path, policy).unwrap();
        let out = Command::new(BIN)
            .env("TOKEN_BROKER_DATABASE_URL", &app.db_url)
            .env(
                "TOKEN_BROKER_SECRETS_DIR",
                &app.app_state.settings.secrets_dir,
            )
            .args([
                "policy",
                "replay",
                path.to_str().unwrap(),
                "--json",
                "--fail-on",
                fail_on,
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.code(),
            v,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // B grants a new moderator: gated.
    let (code, v, err) = run(&policy_b(&app), "granted-moderator");
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(v["changes"], expected_changes());
    assert!(err.contains("granted_moderator: 1"), "{err}");
    // A policy that only shortens lifetimes passes a granted-moderator gate,
    // and fails a gate on shortened lifetimes.
    let shorter = app
        .standard_policy("acme")
        .replace("max_ttl = \"4h\"", "max_ttl = \"1h\"");
    let (code, v, err) = run(&shorter, "granted-moderator,refused");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["changes"]["ttl_shortened"], 1, "{v}");
    assert_eq!(v["changes"]["unchanged"], 5, "{v}");
    let (code, _, _) = run(&shorter, "ttl-shortened");
    assert_eq!(code, Some(3));
    // An unknown gate name is an error, not a pass.
    let (code, _, err) = run(&shorter, "granted-admin");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown --fail-on"), "{err}");
}

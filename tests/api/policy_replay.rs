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

/// `POST /v1/policy/replay` of `policy_b` with the tenant's admin key.
async fn replay_b(app: &TestApp, key: &str) -> reqwest::Response {
    app.post("/v1/policy/replay", key, &json!({"source": policy_b(app)}))
        .await
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
    let r = replay_b(&app, &key).await;
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

/// Review D2, the window: a tenant admin cannot replay the tenant's whole
/// history (`since: "0"`) in one request; a month (31 days) is the most, and
/// a longer window is refused with 400 naming `since`.
#[tokio::test]
async fn replay_windows_over_a_month_are_refused() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let month = 31 * 86_400;
    for (since, until, status) in [
        (None, None, 200),
        (Some("0".to_owned()), None, 400),
        (Some("0".to_owned()), Some((month + 1).to_string()), 400),
        (Some("0".to_owned()), Some(month.to_string()), 200),
    ] {
        let mut body = json!({"source": policy_b(&app)});
        if let Some(s) = &since {
            body["since"] = json!(s);
        }
        if let Some(u) = &until {
            body["until"] = json!(u);
        }
        let r = app.post("/v1/policy/replay", &key, &body).await;
        let got = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(got, status, "{body}: {v}");
        if status == 400 {
            assert_eq!(v["error"]["code"], "invalid_request", "{v}");
            assert_eq!(v["error"]["field"], "since", "{v}");
        }
    }
}

/// Review D2, concurrency: replays run one at a time per broker. While one
/// holds the gate, another waits a bounded time and is then refused with 503
/// `admin_busy` and `Retry-After` (it neither queues without bound nor takes
/// a second pool connection); once the gate is free it runs.
#[tokio::test]
async fn a_replay_is_refused_while_another_holds_the_gate() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let held = app.app_state.replay_gate.acquire().await.unwrap();
    let started = std::time::Instant::now();
    let r = replay_b(&app, &key).await;
    let waited = started.elapsed();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "admin_busy", "{v}");
    assert!(waited >= token_broker::replay::GATE_WAIT, "{waited:?}");
    assert!(waited < token_broker::replay::GATE_WAIT * 3, "{waited:?}");
    drop(held);
    let r = replay_b(&app, &key).await;
    assert_eq!(r.status(), 200);
}

/// Review D2, what one replay loads: over the row bound, or naming more
/// registered sessions than the session bound, a replay is refused (field
/// `since`) instead of reading on; sessions registered but never asked for
/// in the window (an app's made-up IDs) are not loaded and do not count.
#[tokio::test]
async fn a_replay_reads_a_bounded_number_of_rows_and_sessions() {
    use token_broker::replay::{Bounds, Window, replay};
    let app = spawn_app().await;
    let key = app.acme().await;
    record_traffic(&app, &key).await;
    // Made-up sessions, registered but never used in a request.
    for i in 10..40 {
        let sid = session_for(API_KEY, i);
        let r = app
            .put(
                &format!("/v1/sessions/{sid}"),
                &key,
                &json!({"labels": {"kind": "x".repeat(256)}}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let all = Window {
        since_ms: 0,
        until_ms: i64::MAX,
    };
    let run = |max_requests, max_sessions| {
        let source = policy_b(&app);
        let store = app.store.clone();
        async move {
            replay(
                &store,
                "b.toml",
                &source,
                Some("acme"),
                all,
                &token_broker::admin::Actor::Cli,
                1_000,
                Bounds {
                    max_requests,
                    max_sessions,
                },
            )
            .await
        }
    };
    // Six requests on two registered sessions (and one unregistered).
    let report = run(6, 2).await.expect("within both bounds");
    assert_eq!(report.requests, 6);
    for (max_requests, max_sessions, what) in [(5, 2, "requests"), (6, 1, "sessions")] {
        match run(max_requests, max_sessions).await {
            Err(token_broker::admin::AdminError::Field { field, message }) => {
                assert_eq!(field, "since");
                assert!(message.contains(what), "{message}");
            }
            other => panic!("{max_requests}/{max_sessions}: {other:?}"),
        }
    }
}

//! POST /v1/tokens and POST /v1/decide: decisions, stamping, signing, audit.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;

fn hex_sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_granted_token_verifies_carries_the_identity_and_has_its_audit_row() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 1);
    let (s, v) = app
        .issue(&key, &json!({"session_id": sid, "user": {"id": "alice", "name": "Alice"}, "data": "seat=4", "initial_layout_class_list": ["focus", "wide"]}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["format"], "opentok_jwt");
    assert_eq!(
        v["role"], "subscriber",
        "students rule: default_role subscriber"
    );
    assert_eq!(v["decision"]["rule"], "students");
    assert_eq!(v["decision"]["policy_version"], 1);
    let token = v["token"].as_str().unwrap();

    // An independent verifier accepts it with the project's secret.
    let mut val = Validation::new(Algorithm::HS256);
    val.validate_aud = false;
    val.set_required_spec_claims(&["exp", "iat"]);
    let data = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(API_SECRET.as_bytes()),
        &val,
    )
    .expect("HS256 verifies");
    let c = data.claims;
    assert_eq!(c["iss"], API_KEY);
    assert_eq!(c["ist"], "project");
    assert_eq!(c["session_id"], sid);
    assert_eq!(c["role"], "subscriber");
    assert_eq!(c["scope"], "session.connect");
    assert_eq!(c["initial_layout_class_list"], "focus wide");
    assert_eq!(c["exp"], v["expire_time"]);
    assert_eq!(c["jti"], v["token_id"]);
    let now = token_broker::clock::now_unix();
    let exp = v["expire_time"].as_i64().unwrap();
    assert!(
        (now + 3590..=now + 3610).contains(&exp),
        "defaults.ttl is 1h: {exp} vs {now}"
    );

    // The connection data is the broker's stamp, with the app's data under its own key.
    let cd: Value = serde_json::from_str(c["connection_data"].as_str().unwrap()).unwrap();
    assert_eq!(
        cd,
        json!({"tenant": "acme", "sub": "alice", "name": "Alice", "data": "seat=4"})
    );
    assert_eq!(v["connection_data"], c["connection_data"]);

    // The audit row names the token by id and fingerprint, never the token.
    let a = app
        .audit(
            &key,
            &format!("token_id={}", v["token_id"].as_str().unwrap()),
        )
        .await;
    let items = a["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{a}");
    let row = &items[0];
    assert_eq!(row["audit_id"], v["audit_id"]);
    assert_eq!(row["outcome"], "issued");
    assert_eq!(row["user_id"], "alice");
    assert_eq!(row["granted_role"], "subscriber");
    assert_eq!(row["rule"], "students");
    assert_eq!(row["credential"], "main");
    assert_eq!(row["token_sha256"], hex_sha256(token));
    assert!(!a.to_string().contains(token));
    // ... and the token can be traced back by presenting it.
    let by_token = app
        .audit(&key, &format!("token={}", urlencode(token)))
        .await;
    assert_eq!(by_token["items"][0]["audit_id"], v["audit_id"]);
    // ... and the read of the audit records the token's fingerprint, never the token.
    let reads = app.audit(&key, "kind=audit_read").await;
    let text = reads.to_string();
    assert!(
        text.contains(&format!("sha256:{}", hex_sha256(token))),
        "{text}"
    );
    assert!(!text.contains(token));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_t1_credential_signs_legacy_tokens_that_verify() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(T1_API_KEY, 2);
    let (s, v) = app
        .issue(
            &key,
            &json!({"session_id": sid, "user": user("bob"), "role": "publisher"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["format"], "t1");
    let token = v["token"].as_str().unwrap();
    let inner = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        token.strip_prefix("T1==").unwrap(),
    )
    .unwrap();
    let inner = String::from_utf8(inner).unwrap();
    let (head, data) = inner.split_once(':').unwrap();
    assert!(head.starts_with(&format!("partner_id={T1_API_KEY}&sig=")));
    let sig = head.rsplit('=').next().unwrap();
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(API_SECRET.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, want, "HMAC-SHA1 over the data verifies");
    assert!(data.contains("role=publisher"));
    assert!(data.contains(&format!("nonce={}", v["token_id"].as_str().unwrap())));
}

#[tokio::test]
async fn policy_outcomes_clamp_refuse_and_say_which_rule_decided() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 3);

    // Role and ttl above the students rule: downgraded and clamped, with a receipt.
    let (s, v) = app
        .issue(
            &key,
            &json!({"session_id": sid, "user": user("sam"), "role": "moderator", "ttl": 86400}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["role"], "subscriber");
    assert_eq!(v["decision"]["rule"], "students");
    let clamped = &v["decision"]["clamped"];
    assert_eq!(clamped["role"]["requested"], "moderator", "{v}");
    assert_eq!(clamped["role"]["granted"], "subscriber", "{v}");
    assert_eq!(clamped["ttl"]["requested"], 86400, "{v}");
    assert_eq!(clamped["ttl"]["granted"], 7200, "{v}");

    // A banned user is refused by the deny rule, and the refusal is on record.
    let (s, v) = app
        .issue(
            &key,
            &json!({"session_id": sid, "user": {"id": "troll", "groups": ["banned"]}}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "policy_denied");
    assert_eq!(v["error"]["rule"], "banned");
    assert_eq!(v["error"]["policy_version"], 1);
    let a = app.audit(&key, "outcome=refused&code=policy_denied").await;
    assert_eq!(a["items"][0]["user_id"], "troll");
    assert_eq!(a["items"][0]["rule"], "banned");

    // A session of another project is never signed, whatever the rules say.
    let foreign = session_for("654321", 1);
    let (s, v) = app
        .issue(&key, &json!({"session_id": foreign, "user": user("sam")}))
        .await;
    assert_eq!(s, 403);
    assert_eq!(v["error"]["code"], "session_not_owned");

    // The registered owner moderates by default; teachers moderate class sessions.
    let r = app
        .put(
            &format!("/v1/sessions/{sid}"),
            &key,
            &json!({"owner": "olga", "labels": {"kind": "class-math"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (s, v) = app
        .issue(&key, &json!({"session_id": sid, "user": user("olga")}))
        .await;
    assert_eq!(
        (s, v["role"].as_str(), v["decision"]["rule"].as_str()),
        (201, Some("moderator"), Some("owner-moderates")),
        "{v}"
    );
    let (s, v) = app.issue(&key, &json!({"session_id": sid, "user": {"id": "tina", "groups": ["teachers"]}, "role": "moderator", "ttl": 3600})).await;
    assert_eq!(
        (s, v["role"].as_str(), v["decision"]["rule"].as_str()),
        (201, Some("moderator"), Some("teachers")),
        "{v}"
    );
    assert!(v["decision"]["clamped"].is_null(), "{v}");
}

#[tokio::test]
async fn decide_answers_like_issue_without_a_token_or_an_audit_row() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 4);
    let r = app
        .post(
            "/v1/decide?explain=true",
            &key,
            &json!({"session_id": sid, "user": user("sam"), "role": "publisher"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v.get("token").is_none() && v.get("token_id").is_none() && v.get("audit_id").is_none(),
        "{v}"
    );
    assert_eq!(v["role"], "publisher");
    assert_eq!(v["decision"]["rule"], "students");
    let explain = v["decision"]["explain"]
        .as_array()
        .expect("explain lists earlier rules");
    let names: Vec<&str> = explain
        .iter()
        .map(|m| m["rule"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["banned", "owner-moderates", "teachers"], "{v}");

    let r = app
        .post(
            "/v1/decide",
            &key,
            &json!({"session_id": sid, "user": {"id": "x", "groups": ["banned"]}}),
        )
        .await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "policy_denied");
    assert_eq!(v["error"]["rule"], "banned");
    let a = app.audit(&key, "kind=token_refused").await;
    assert_eq!(
        a["items"].as_array().unwrap().len(),
        0,
        "decide audits nothing"
    );
}

#[tokio::test]
async fn scopes_confine_what_a_key_may_do() {
    let app = spawn_app().await;
    let _ = app.acme().await;
    let issue_only = app.create_key("acme", &["issue"]).await;
    let audit_only = app.create_key("acme", &["audit"]).await;
    let sid = session_for(API_KEY, 5);
    assert_eq!(app.get("/v1/audit", &issue_only).await.status(), 403);
    let (s, v) = app
        .issue(&audit_only, &json!({"session_id": sid, "user": user("a")}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("insufficient_scope"))
    );
}

#[tokio::test]
async fn sessions_register_idempotently_and_are_validated() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 6);
    for _ in 0..2 {
        let r = app
            .put(
                &format!("/v1/sessions/{sid}"),
                &key,
                &json!({"owner": "olga", "labels": {"kind": "class-x"}}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let v: Value = app
        .get(&format!("/v1/sessions/{sid}"), &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["owner"], "olga");
    assert_eq!(v["labels"]["kind"], "class-x");
    let foreign = session_for("654321", 1);
    assert_eq!(
        app.put(&format!("/v1/sessions/{foreign}"), &key, &json!({}))
            .await
            .status(),
        403
    );
    let many: serde_json::Map<String, Value> =
        (0..40).map(|i| (format!("k{i}"), json!("v"))).collect();
    let r = app
        .put(
            &format!("/v1/sessions/{sid}"),
            &key,
            &json!({"labels": many}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = app
        .put(
            &format!("/v1/sessions/{sid}"),
            &key,
            &json!({"labels": {"bad key!": "v"}}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        app.get(&format!("/v1/sessions/{}", session_for(API_KEY, 99)), &key)
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn unusable_credentials_and_missing_policies_refuse_clearly() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let key = app.create_key("acme", &["issue", "audit", "admin"]).await;
    let sid = session_for(API_KEY, 1);
    // No policy yet: nothing is granted, and the refusal is on record.
    let (s, v) = app
        .issue(&key, &json!({"session_id": sid, "user": user("a")}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("no_policy")),
        "{v}"
    );
    let a = app.audit(&key, "code=no_policy").await;
    assert_eq!(a["items"].as_array().unwrap().len(), 1);

    // A credential whose secret reference does not resolve here: 503 for its
    // sessions, reported by /readyz, and other credentials keep working.
    app.provision_secret("acme", "opentok.secret", API_SECRET.as_bytes());
    let policy = standard_policy_text("acme", "opentok.secret").replacen(
        "api_secret = \"file:opentok.secret\"",
        "api_secret = \"env:TOKEN_BROKER_TENANT_ACME_SECRET_THAT_IS_NOT_SET\"",
        1,
    );
    app.apply_policy(&policy).await;
    let (s, v) = app
        .issue(&key, &json!({"session_id": sid, "user": user("a")}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("credential_unavailable")),
        "{v}"
    );
    assert!(!v.to_string().contains(API_SECRET));
    let r: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Anonymous readiness says how many problems, never which tenant, credential or variable.
    assert_eq!(r["problems"], 1, "{r}");
    let shown = r.to_string();
    assert!(
        !shown.contains("acme") && !shown.contains("main") && !shown.contains("SECRET"),
        "{r}"
    );
    // The tenant's own admin sees the detail of its own tenant.
    let st: Value = app.get("/v1/status", &key).await.json().await.unwrap();
    let problems = st["problems"].to_string();
    assert!(
        problems.contains("credential main unavailable")
            && problems.contains("TOKEN_BROKER_TENANT_ACME_SECRET_THAT_IS_NOT_SET"),
        "{st}"
    );
    let (s, v) = app
        .issue(
            &key,
            &json!({"session_id": session_for(T1_API_KEY, 1), "user": user("a")}),
        )
        .await;
    assert_eq!(s, 201, "the other credential still signs: {v}");
}

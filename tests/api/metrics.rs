//! `/metrics` under a small load: latency histograms by route pattern and
//! status class, audit commit latency and batch sizes, queue depth, per-tenant
//! issued and refused counters, key-cache hits. An anonymous client cannot
//! grow the label sets (raw paths, made-up tenants) or read a secret there,
//! and with `metrics_tenant_labels = false` no tenant is named.

use serde_json::json;

use crate::helpers::*;

async fn scrape(app: &TestApp) -> String {
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    r.text().await.unwrap()
}

/// The value of the sample line that starts with `prefix` (name and labels).
fn value(m: &str, prefix: &str) -> f64 {
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{m}"))
}

/// Tenant acme and tenant globex (its own video project), issuing and refused;
/// an anonymous client probing made-up tenants and paths.
async fn load(app: &TestApp) -> (String, String) {
    let acme = app.acme().await;
    app.create_tenant("globex").await;
    app.provision_secret("globex", "opentok.secret", API_SECRET.as_bytes());
    let globex_policy = standard_policy_text("globex", "opentok.secret")
        .replace(API_KEY, "999001")
        .replace(T1_API_KEY, "999002");
    app.apply_policy(&globex_policy).await;
    let globex = app.create_key("globex", &["issue"]).await;
    for i in 0..5 {
        let body = json!({"session_id": session_for(API_KEY, i), "user": user(&format!("u{i}"))});
        assert_eq!(app.issue(&acme, &body).await.0, 201);
    }
    let body =
        json!({"session_id": session_for(API_KEY, 1), "user": user("owner"), "role": "moderator"});
    let _ = app.issue(&acme, &body).await;
    for i in 0..2 {
        let body = json!({"session_id": session_for("999001", i), "user": user("g")});
        let (s, v) = app.issue(&globex, &body).await;
        assert_eq!(s, 201, "{v}");
    }
    // Refused: the banned group.
    let body = json!({"session_id": session_for(API_KEY, 9), "user": {"id": "mallory", "groups": ["banned"]}});
    assert_eq!(app.issue(&acme, &body).await.0, 403);
    // Anonymous probes: raw paths and tenant names a client made up.
    for p in [
        "/v1/tenants/evilcorp-probe/tokens",
        "/no/such/path-probe-1234",
        "/v1/keys/key-probe-5678",
    ] {
        let _ = app.client.post(app.url(p)).json(&json!({})).send().await;
        let _ = app.client.delete(app.url(p)).send().await;
    }
    (acme, globex)
}

#[tokio::test]
async fn metrics_show_latency_histograms_and_per_tenant_counters_under_load() {
    // Tenant labels are the operator's choice (off by default: see the next test).
    let app = spawn_app_with(|s| s.metrics_tenant_labels = true).await;
    let (acme, globex) = load(&app).await;
    let m = scrape(&app).await;

    // Request latency by route pattern and status class.
    assert!(
        value(
            &m,
            "token_broker_http_request_duration_seconds_count{route=\"/v1/tokens\",method=\"POST\",status=\"2xx\"}"
        ) >= 7.0
    );
    assert!(
        value(
            &m,
            "token_broker_http_request_duration_seconds_count{route=\"/v1/tokens\",method=\"POST\",status=\"4xx\"}"
        ) >= 1.0
    );
    assert!(m.contains("token_broker_http_request_duration_seconds_bucket{"));
    assert!(m.contains("route=\"/v1/keys/{key_id}\""), "{m}");
    assert!(m.contains("route=\"unmatched\""), "{m}");
    // Nothing a client typed becomes a label; no key, no secret.
    for leak in ["probe", "evilcorp", &acme, &globex, API_SECRET] {
        assert!(!m.contains(leak), "{leak} in /metrics:\n{m}");
    }

    // The audit writer.
    assert!(value(&m, "token_broker_audit_commit_duration_seconds_count") >= 1.0);
    assert!(value(&m, "token_broker_audit_commit_duration_seconds_sum") > 0.0);
    assert!(value(&m, "token_broker_audit_batch_rows_count") >= 1.0);
    assert!(value(&m, "token_broker_audit_batch_rows_sum") >= 8.0);
    assert!(value(&m, "token_broker_audit_head_wait_seconds_count") >= 1.0);
    assert!(
        value(&m, "token_broker_audit_head_wait_seconds_sum")
            <= value(&m, "token_broker_audit_commit_duration_seconds_sum")
    );
    assert_eq!(value(&m, "token_broker_audit_queue_depth"), 0.0);
    assert!(value(&m, "token_broker_audit_rows_total") >= 8.0);

    // Tokens by tenant, role and format; refusals by tenant and code.
    let acme_issued: f64 = m
        .lines()
        .filter(|l| l.starts_with("token_broker_tokens_issued_total{tenant=\"acme\","))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(acme_issued >= 5.0, "{m}");
    assert!(
        value(
            &m,
            "token_broker_tokens_issued_total{tenant=\"globex\",role=\"subscriber\",format=\"opentok_jwt\"}"
        ) == 2.0,
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("token_broker_tokens_refused_total{tenant=\"acme\",code=")),
        "{m}"
    );
    assert!(
        !m.contains("tenant=\"globex\",code="),
        "globex refused nothing"
    );

    // The key cache: the same key, authenticated again, is a hit.
    assert!(value(&m, "token_broker_key_cache_total{result=\"hit\"}") >= 5.0);
    assert!(value(&m, "token_broker_key_cache_total{result=\"miss\"}") >= 1.0);
    assert!(m.contains("token_broker_idp_jwks_fetches_total{result=\"failed\"}"));
    assert!(m.contains("token_broker_rate_limited_total{limit=\"end_user\"} 0"));
    assert!(m.trim_end().ends_with("# EOF"));
}

/// A batch that waits for another writer's hold on its tenant's chain head
/// (another instance's commit; on SQLite, any writer) shows the wait in
/// `audit_head_wait`, the part of the commit duration before the heads are
/// held, so operators of several instances can see them wait for each other.
#[tokio::test]
async fn waiting_for_another_writers_head_shows_in_the_head_wait() {
    const HOLD: std::time::Duration = std::time::Duration::from_millis(400);
    let app = spawn_app().await;
    let key = app.acme().await;
    let body = json!({"session_id": session_for(API_KEY, 1), "user": user("alice")});
    assert_eq!(app.issue(&key, &body).await.0, 201);
    let m = scrape(&app).await;
    let wait0 = value(&m, "token_broker_audit_head_wait_seconds_sum");
    let commit0 = value(&m, "token_broker_audit_commit_duration_seconds_sum");
    assert!(wait0 < HOLD.as_secs_f64(), "{wait0}");

    let held = hold(
        &app,
        "BEGIN IMMEDIATE",
        "BEGIN; SELECT seq FROM audit_heads WHERE tenant = 'acme' FOR UPDATE",
    )
    .await;
    let ((status, v), ()) = tokio::join!(app.issue(&key, &body), held.release_after(HOLD));
    assert_eq!(status, 201, "{v}");

    let m = scrape(&app).await;
    let waited = value(&m, "token_broker_audit_head_wait_seconds_sum") - wait0;
    let committed = value(&m, "token_broker_audit_commit_duration_seconds_sum") - commit0;
    assert!(
        waited >= HOLD.as_secs_f64() * 0.8,
        "waited {waited} s for a {HOLD:?} hold"
    );
    assert!(
        waited <= committed,
        "wait {waited} s > commit {committed} s"
    );
}

#[tokio::test]
async fn metrics_name_no_tenant_by_default() {
    // `/metrics` is anonymous: by default it names no tenant.
    let app = spawn_app().await;
    load(&app).await;
    let m = scrape(&app).await;
    assert!(!m.contains("acme") && !m.contains("globex"), "{m}");
    assert!(
        value(
            &m,
            "token_broker_tokens_issued_total{tenant=\"-\",role=\"subscriber\",format=\"opentok_jwt\"}"
        ) >= 2.0,
        "{m}"
    );
}

/// A tenant whose identity provider's key set cannot be fetched: the failed
/// fetch shows in `/metrics` (and the end user is refused).
#[tokio::test]
async fn failed_jwks_fetches_are_counted() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    // Nothing listens on port 1.
    let policy = format!(
        "{}\n[[identity_providers]]\nname = \"login\"\nissuer = \"https://login.acme.test\"\naudiences = [\"tb\"]\nalgorithms = [\"RS256\"]\njwks_url = \"http://127.0.0.1:1/jwks.json\"\n",
        app.standard_policy("acme")
    );
    app.apply_policy(&policy).await;
    let before = value(
        &scrape(&app).await,
        "token_broker_idp_jwks_fetches_total{result=\"failed\"}",
    );
    let now = token_broker::clock::now_unix();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("idp-rsa-1.key")).unwrap()).unwrap();
    let jwt = jsonwebtoken::encode(
        &h,
        &json!({"iss": "https://login.acme.test", "aud": "tb", "sub": "eve", "iat": now, "exp": now + 300}),
        &key,
    )
    .unwrap();
    let r = app
        .client
        .post(app.url("/v1/tenants/acme/tokens"))
        .bearer_auth(&jwt)
        .json(&json!({"session_id": session_for(API_KEY, 1)}))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 201);
    let after = value(
        &scrape(&app).await,
        "token_broker_idp_jwks_fetches_total{result=\"failed\"}",
    );
    assert!(after > before, "before {before}, after {after}");
}

//! End users with their app's login JWT: verified identity, every attack
//! refused with its code, JWKS rotation, CORS, and the burst limiter.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;

const ISS: &str = "https://login.acme.test";
const AUD: &str = "token-broker";
const ORIGIN: &str = "https://app.acme.test";

fn key_pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_pem("idp-rsa-1.key")).unwrap()
}

fn claims(sub: &str, now: i64) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": now, "exp": now + 300, "name": "Eve Example",
           "realm": {"groups": ["teachers"]}})
}

/// The standard policy plus an identity provider (public key or JWKS), CORS and limits.
fn policy_with_idp(app: &TestApp, keys: &str) -> String {
    format!(
        "{}\n[[identity_providers]]\nname = \"acme-login\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\nalgorithms = [\"RS256\"]\n{keys}\nname_claim = \"name\"\ngroups_claim = \"realm.groups\"\n\n[cors]\nallowed_origins = [\"{ORIGIN}\"]\n\n[rate_limits]\nend_user = \"5/20\"\n",
        app.standard_policy("acme")
    )
}

async fn end_user_app() -> (TestApp, String) {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let pem = std::fs::read(fixture("idp-rsa-1.pub.pem")).unwrap();
    app.provision_secret("acme", "idp-rsa-1.pub.pem", &pem);
    let keys = "public_keys = [\"file:idp-rsa-1.pub.pem\"]".to_owned();
    let p = policy_with_idp(&app, &keys);
    app.apply_policy(&p).await;
    let key = app.create_key("acme", &["issue", "audit"]).await;
    (app, key)
}

async fn post_as(
    app: &TestApp,
    bearer: &str,
    body: &Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = app
        .client
        .post(app.url("/v1/tenants/acme/tokens"))
        .bearer_auth(bearer)
        .header("Origin", ORIGIN)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let h = r.headers().clone();
    (s, r.json().await.unwrap_or(Value::Null), h)
}

#[tokio::test]
async fn an_end_user_gets_a_token_stamped_with_the_verified_identity() {
    let (app, audit_key) = end_user_app().await;
    let now = token_broker::clock::now_unix();
    let jwt = sign(Algorithm::RS256, None, &rsa1(), &claims("eve", now));
    let sid = session_for(API_KEY, 1);
    app.put(
        &format!("/v1/sessions/{sid}"),
        &audit_key,
        &json!({"labels": {"kind": "class-art"}}),
    )
    .await;

    let (s, v, h) = post_as(&app, &jwt, &json!({"session_id": sid, "role": "moderator"})).await;
    assert_eq!(s, 201, "{v}");
    let cd: Value = serde_json::from_str(v["connection_data"].as_str().unwrap()).unwrap();
    assert_eq!(
        cd,
        json!({"tenant": "acme", "sub": "eve", "name": "Eve Example", "idp": "acme-login"})
    );
    assert_eq!(
        v["role"], "moderator",
        "groups claim feeds group:teachers: {v}"
    );
    assert_eq!(v["decision"]["rule"], "teachers");
    assert_eq!(h.get("access-control-allow-origin").unwrap(), ORIGIN);

    // The body cannot change who the token is for.
    let (s, v, _) = post_as(
        &app,
        &jwt,
        &json!({"session_id": sid, "user": {"id": "mallory"}}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str(), v["error"]["field"].as_str()),
        (400, Some("user_not_allowed"), Some("user"))
    );

    let a = app.audit(&audit_key, "user=eve").await;
    let row = &a["items"][0];
    assert_eq!(row["actor"], "end_user");
    assert_eq!(row["idp"], "acme-login");
    assert!(row["key_id"].is_null());

    // The same path takes the tenant's API keys, but only the tenant's own.
    let audit_only = app.create_key("acme", &["audit"]).await;
    let (s, _, _) = post_as(
        &app,
        &audit_only,
        &json!({"session_id": sid, "user": user("svc")}),
    )
    .await;
    assert_eq!(s, 403, "an audit-only key lacks the issue scope");
    let issue_key = app.create_key("acme", &["issue"]).await;
    let (s, v, _) = post_as(
        &app,
        &issue_key,
        &json!({"session_id": sid, "user": user("svc")}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    app.create_tenant("globex").await;
    let foreign = app.create_key("globex", &["issue"]).await;
    let (s, v, _) = post_as(
        &app,
        &foreign,
        &json!({"session_id": sid, "user": user("svc")}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("wrong_tenant"))
    );
}

#[tokio::test]
async fn every_forged_or_stale_login_token_is_refused_with_its_code() {
    let (app, _) = end_user_app().await;
    let now = token_broker::clock::now_unix();
    let sid = session_for(API_KEY, 1);
    let body = json!({"session_id": sid});
    let other = EncodingKey::from_rsa_pem(&key_pem("idp-rsa-2.key")).unwrap();
    let public_pem = key_pem("idp-rsa-1.pub.pem");
    let b64 = |v: &Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v.to_string(),
        )
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("eve", now))
    );
    let mut no_sub = claims("eve", now);
    no_sub.as_object_mut().unwrap().remove("sub");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(
                Algorithm::RS256,
                None,
                &rsa1(),
                &json!({"iss": ISS, "aud": AUD, "sub": "eve", "exp": now - 120}),
            ),
            "token_expired",
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                None,
                &rsa1(),
                &json!({"iss": ISS, "aud": AUD, "sub": "eve", "exp": now + 600, "nbf": now + 300}),
            ),
            "token_not_yet_valid",
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                None,
                &rsa1(),
                &json!({"iss": "https://evil.test", "aud": AUD, "sub": "eve", "exp": now + 60}),
            ),
            "invalid_issuer",
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                None,
                &rsa1(),
                &json!({"iss": ISS, "aud": "someone-else", "sub": "eve", "exp": now + 60}),
            ),
            "invalid_audience",
        ),
        (
            "bad signature",
            sign(Algorithm::RS256, None, &other, &claims("eve", now)),
            "invalid_signature",
        ),
        ("alg none", unsigned, "algorithm_not_allowed"),
        (
            "HS256 with the public key as secret",
            sign(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(&public_pem),
                &claims("eve", now),
            ),
            "algorithm_not_allowed",
        ),
        ("malformed", "not.a.jwt".to_owned(), "malformed_token"),
        (
            "missing user claim",
            sign(Algorithm::RS256, None, &rsa1(), &no_sub),
            "missing_user_claim",
        ),
    ];
    for (what, token, code) in cases {
        let (s, v, h) = post_as(&app, &token, &body).await;
        assert_eq!(s, 401, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(h.contains_key("www-authenticate"), "{what}");
        assert!(v.get("token").is_none());
    }
}

/// A tiny JWKS server on port 0 whose key set the test can swap.
async fn jwks_server(doc: Arc<Mutex<Value>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = actix_web::HttpServer::new(move || {
        let doc = doc.clone();
        actix_web::App::new().route(
            "/jwks.json",
            actix_web::web::get().to(move || {
                let body = doc.lock().unwrap().clone();
                async move { actix_web::HttpResponse::Ok().json(body) }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://127.0.0.1:{port}/jwks.json")
}

fn jwk(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(&format!("{name}.jwk.json"))).unwrap()).unwrap()
}

#[tokio::test]
async fn jwks_keys_are_fetched_and_rotated_by_kid() {
    let doc = Arc::new(Mutex::new(json!({"keys": [jwk("idp-rsa-1")]})));
    let url = jwks_server(doc.clone()).await;
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let p = policy_with_idp(
        &app,
        &format!("jwks_url = \"{url}\"\njwks_min_refresh = \"1s\""),
    );
    app.apply_policy(&p).await;
    // The refresh bound passes on the broker's clock, moved by hand.
    app.app_state.clock.freeze();
    let now = app.app_state.clock.now_unix();
    let sid = session_for(API_KEY, 1);
    let body = json!({"session_id": sid});
    let k2 = EncodingKey::from_rsa_pem(&key_pem("idp-rsa-2.key")).unwrap();

    let (s, v, _) = post_as(
        &app,
        &sign(
            Algorithm::RS256,
            Some("idp-rsa-1"),
            &rsa1(),
            &claims("eve", now),
        ),
        &body,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v, _) = post_as(
        &app,
        &sign(
            Algorithm::RS256,
            Some("idp-rsa-2"),
            &k2,
            &claims("eve", now),
        ),
        &body,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unknown_kid")),
        "{v}"
    );

    // The provider rotates to key 2; after the refresh bound an unknown kid refetches.
    *doc.lock().unwrap() = json!({"keys": [jwk("idp-rsa-2")]});
    app.app_state.clock.advance(Duration::from_millis(1100));
    let (s, v, _) = post_as(
        &app,
        &sign(
            Algorithm::RS256,
            Some("idp-rsa-2"),
            &k2,
            &claims("eve", now),
        ),
        &body,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // A token signed by key 2 but claiming kid 1 (now gone) is refused.
    let (s, _, _) = post_as(
        &app,
        &sign(
            Algorithm::RS256,
            Some("idp-rsa-1"),
            &k2,
            &claims("eve", now),
        ),
        &body,
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn cors_preflight_allows_only_the_tenants_origins() {
    let (app, _) = end_user_app().await;
    let pre = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/tenants/acme/tokens"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
    };
    let r = pre(ORIGIN).await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers().get("access-control-allow-origin").unwrap(),
        ORIGIN
    );
    assert!(
        r.headers()
            .get("access-control-allow-headers")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    // Even a malformed body's error is readable by the allowed origin.
    let r = app
        .client
        .post(app.url("/v1/tenants/acme/tokens"))
        .header("Origin", ORIGIN)
        .header("Content-Type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers().get("access-control-allow-origin").unwrap(),
        ORIGIN
    );
    let r = pre("https://evil.test").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // A tenant without [cors] allows nothing.
    app.create_tenant("plain").await;
    // (its own video projects: one project belongs to one tenant)
    let plain = app
        .standard_policy("plain")
        .replace(API_KEY, "223456")
        .replace(T1_API_KEY, "877777");
    app.apply_policy(&plain).await;
    let r = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            app.url("/v1/tenants/plain/tokens"),
        )
        .header("Origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn a_burst_from_one_end_user_meets_429_and_others_are_still_served() {
    let (app, _) = end_user_app().await;
    let now = token_broker::clock::now_unix();
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let eve = sign(Algorithm::RS256, None, &rsa1(), &claims("eve", now));
    let t = Instant::now();
    let mut futs = Vec::new();
    for _ in 0..100 {
        futs.push(post_as(&app, &eve, &body));
    }
    let results = futures_util::future::join_all(futs).await;
    let limited: Vec<_> = results.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(limited.len() >= 50, "only {} of 100 limited", limited.len());
    assert!(
        limited
            .iter()
            .all(|(_, v, h)| v["error"]["code"] == "rate_limited" && h.contains_key("retry-after"))
    );
    let granted = results.iter().filter(|(s, _, _)| *s == 201).count();
    // Burst 20, then 5 per second for as long as the burst took (a slow machine refills more).
    let ceiling = 20 + 5 * (t.elapsed().as_secs() as usize + 1);
    assert!(
        (1..=ceiling).contains(&granted),
        "{granted} granted, ceiling {ceiling}"
    );
    // Someone else is unaffected.
    let (s, v, _) = post_as(
        &app,
        &sign(Algorithm::RS256, None, &rsa1(), &claims("frank", now)),
        &body,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let m = app.metrics_text().await;
    assert!(
        m.contains("token_broker_rate_limited_total{limit=\"end_user\"}"),
        "{m}"
    );
}

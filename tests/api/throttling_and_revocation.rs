//! Throttling that works, revocation that sticks (issue 11, points 7 and 9):
//! each test plays the attacker. Limiter time is frozen and moved by hand
//! (`limits.ticker`), never slept through.

use std::time::Duration;

use serde_json::{Value, json};
use token_broker::limits::Rate;

use crate::helpers::*;

async fn spawn_with(tweak: impl FnOnce(&mut token_broker::settings::Settings)) -> TestApp {
    let (url, db) = fresh_database().await;
    spawn_app_on(url, db, tweak).await
}

/// A well-formed key with `key`'s id and a wrong secret.
fn wrong_secret(key: &str) -> String {
    format!("{}{}", &key[..key.len() - 64], "0".repeat(64))
}

async fn assert_429(r: reqwest::Response) {
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
}

fn token_body(n: u32) -> Value {
    json!({"session_id": session_for(API_KEY, n), "user": user("alice")})
}

/// A guesser over its failed-authentication budget is refused before any
/// argon2 work, even when its next guess is right, and even for a key that
/// is already verified and cached (today's code verifies, then succeeds).
#[tokio::test]
async fn an_address_over_its_failed_auth_limit_gets_429_without_any_verification() {
    let app = spawn_with(|s| {
        s.rates.failed_auth_ip = Rate {
            per_second: 1,
            burst: 3,
        }
    })
    .await;
    app.app_state.limits.ticker.freeze();
    let cached = app.acme().await;
    let fresh = app.create_key("acme", &["issue"]).await;
    assert_eq!(app.get("/v1/whoami", &cached).await.status(), 200);

    for _ in 0..3 {
        assert_eq!(
            app.get("/v1/whoami", &wrong_secret(&cached)).await.status(),
            401
        );
    }
    let verified = app.app_state.auth.verifications();
    // Correct keys now: the cached one and one never verified.
    assert_429(app.get("/v1/whoami", &cached).await).await;
    assert_429(app.post("/v1/tokens", &fresh, &token_body(1)).await).await;
    assert_429(
        app.post("/v1/tenants/acme/tokens", &fresh, &token_body(1))
            .await,
    )
    .await;
    // Further wrong guesses do not reach argon2 either.
    assert_429(app.get("/v1/whoami", &wrong_secret(&fresh)).await).await;
    assert_eq!(
        app.app_state.auth.verifications(),
        verified,
        "no argon2 verification for an address over its limit"
    );

    // One second later the address has one attempt again.
    app.app_state.limits.ticker.advance(Duration::from_secs(1));
    assert_eq!(app.get("/v1/whoami", &fresh).await.status(), 200);
}

fn with_rate_limits(policy: &str, description: &str, api_key: &str) -> String {
    format!(
        "{}\n[rate_limits]\napi_key = \"{api_key}\"\n",
        policy.replace(
            "description = \"integration tests\"",
            &format!("description = \"{description}\"")
        )
    )
}

/// A tenant's `[rate_limits] api_key` holds on every route its keys call,
/// not only on the end-user route; other tenants keep the broker's limits.
#[tokio::test]
async fn a_tenants_api_key_rate_applies_on_every_route_its_keys_call() {
    let app = spawn_app().await;
    app.app_state.limits.ticker.freeze();
    app.create_tenant("acme").await;
    let policy = app.standard_policy("acme");
    app.apply_policy(&with_rate_limits(&policy, "v1", "1/3"))
        .await;
    let key = app.create_key("acme", &["issue", "audit", "admin"]).await;
    app.create_tenant("beta").await;
    let beta = app.create_key("beta", &["issue", "admin"]).await;

    assert_eq!(app.get("/v1/whoami", &key).await.status(), 200);
    assert_eq!(app.get("/v1/keys", &key).await.status(), 200);
    assert_eq!(
        app.post("/v1/tokens", &key, &token_body(1)).await.status(),
        201
    );
    assert_429(app.post("/v1/tokens", &key, &token_body(1)).await).await;
    assert_429(app.get("/v1/whoami", &key).await).await;
    assert_429(app.get("/v1/audit?limit=1", &key).await).await;
    assert_429(app.post("/v1/decide", &key, &token_body(1)).await).await;
    for _ in 0..10 {
        assert_eq!(app.get("/v1/whoami", &beta).await.status(), 200);
    }
}

/// Applying a policy (even the same limits again, or a larger burst) does
/// not hand out a fresh bucket; a new rate takes effect in place.
#[tokio::test]
async fn policy_applies_keep_the_tenants_buckets() {
    let app = spawn_app().await;
    app.app_state.limits.ticker.freeze();
    app.create_tenant("acme").await;
    let policy = app.standard_policy("acme");
    app.apply_policy(&with_rate_limits(&policy, "v1", "1/2"))
        .await;
    let key = app.create_key("acme", &["issue", "admin"]).await;
    let end_user_route = "/v1/tenants/acme/tokens";
    for n in 0..2 {
        let r = app.post(end_user_route, &key, &token_body(n)).await;
        assert_eq!(r.status(), 201);
    }
    assert_429(app.post(end_user_route, &key, &token_body(9)).await).await;

    // Re-apply: today's code builds new limiters and the burst is back.
    app.apply_policy(&with_rate_limits(&policy, "v2", "1/2"))
        .await;
    assert_429(app.post(end_user_route, &key, &token_body(9)).await).await;
    assert_429(app.get("/v1/whoami", &key).await).await;

    // A larger burst: exactly the extra token, no more.
    app.apply_policy(&with_rate_limits(&policy, "v3", "1/3"))
        .await;
    assert_eq!(
        app.post(end_user_route, &key, &token_body(3))
            .await
            .status(),
        201
    );
    assert_429(app.post(end_user_route, &key, &token_body(9)).await).await;

    // Time refills at the new rate.
    app.app_state.limits.ticker.advance(Duration::from_secs(1));
    assert_eq!(app.get("/v1/whoami", &key).await.status(), 200);
    assert_429(app.get("/v1/whoami", &key).await).await;
}

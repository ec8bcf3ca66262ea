//! Trusted proxies (issue 14, point 5). The client address that per-address
//! limits are keyed by and audit rows record is the TCP peer, unless the peer
//! is inside `trusted_proxies`: only then is `X-Forwarded-For` (rightmost
//! untrusted hop) or `Forwarded: for=` believed. Each test plays a client that
//! forges those headers. Limiter time is frozen, never slept through.

use serde_json::{Value, json};
use token_broker::limits::Rate;

use crate::helpers::*;

async fn spawn_trusting(trusted: &str) -> TestApp {
    let nets = token_broker::routes::client_addr::parse_trusted_proxies(trusted).unwrap();
    spawn_frozen(move |s| {
        s.trusted_proxies = nets;
        s.rates.failed_auth_ip = Rate {
            per_second: 1,
            burst: 2,
        };
    })
    .await
}

async fn issue_with(app: &TestApp, key: &str, n: u32, header: (&str, &str)) -> Value {
    let r = app
        .client
        .post(app.url("/v1/tokens"))
        .bearer_auth(key)
        .header(header.0, header.1)
        .json(&json!({"session_id": session_for(API_KEY, n), "user": user("alice")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn whoami_from(app: &TestApp, key: &str, xff: &str) -> u16 {
    app.client
        .get(app.url("/v1/whoami"))
        .bearer_auth(key)
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn recorded_addrs(app: &TestApp, key: &str) -> Vec<String> {
    let v = app.audit(key, "kind=token_issued").await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["client_addr"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn a_forged_forwarding_header_from_an_untrusted_peer_changes_nothing() {
    // Arrange: no trusted proxies (the default); the client is 127.0.0.1.
    let app = spawn_trusting("").await;
    let key = app.acme().await;
    // Act: the client claims to be someone else, both ways.
    issue_with(&app, &key, 1, ("x-forwarded-for", "198.51.100.7")).await;
    issue_with(&app, &key, 2, ("forwarded", "for=198.51.100.8")).await;
    // Assert: the audit records the peer.
    assert_eq!(recorded_addrs(&app, &key).await, ["127.0.0.1", "127.0.0.1"]);
    // And a guesser cannot reset its failed-authentication budget by
    // changing the header: all attempts share the peer's bucket.
    let bad = wrong_secret(&key);
    assert_eq!(whoami_from(&app, &bad, "203.0.113.1").await, 401);
    assert_eq!(whoami_from(&app, &bad, "203.0.113.2").await, 401);
    assert_eq!(whoami_from(&app, &bad, "203.0.113.3").await, 429);
    assert_eq!(whoami_from(&app, &key, "203.0.113.4").await, 429);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_audited_and_limited() {
    // Arrange: the test client (127.0.0.1) is the trusted proxy.
    let app = spawn_trusting("127.0.0.1/32").await;
    let key = app.acme().await;
    // Act: the proxy appended the real client after a forged leftmost hop.
    issue_with(&app, &key, 1, ("x-forwarded-for", "6.6.6.6, 198.51.100.7")).await;
    issue_with(&app, &key, 2, ("forwarded", "for=\"[2001:db8::9]:443\"")).await;
    // Assert: the audit records the rightmost untrusted hop, not the forgery.
    let mut addrs = recorded_addrs(&app, &key).await;
    addrs.sort();
    assert_eq!(addrs, ["198.51.100.7", "2001:db8::9"]);
    // Per-address limits: one client's failures do not throttle the others
    // behind the same proxy.
    let bad = wrong_secret(&key);
    assert_eq!(whoami_from(&app, &bad, "203.0.113.1").await, 401);
    assert_eq!(whoami_from(&app, &bad, "203.0.113.1").await, 401);
    assert_eq!(whoami_from(&app, &bad, "203.0.113.1").await, 429);
    assert_eq!(whoami_from(&app, &key, "203.0.113.1").await, 429);
    assert_eq!(whoami_from(&app, &key, "203.0.113.2").await, 200);
    // The guesser cannot escape its bucket by prepending another address.
    assert_eq!(
        whoami_from(&app, &key, "203.0.113.2, 203.0.113.1").await,
        429
    );
}

//! The attacker's view of scopes: a key of a weaker scope, on every route that
//! takes an API key, gets 403 `insufficient_scope` with the same message as
//! before the scope moved into the extractor's type; a key that holds the
//! scope is never refused for it.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{API_KEY, TestApp, session_for, spawn_app, user};

const ISSUE: &str = "this API key lacks the issue scope";
const ADMIN: &str = "this API key lacks the admin scope";
const AUDIT: &str = "this API key needs one of the scopes: audit, admin";

/// Sends one request; the answer's status and error (code, message).
async fn call(
    app: &TestApp,
    key: &str,
    method: &Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = app
        .client
        .request(method.clone(), app.url(path))
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// (method, path, body, the scopes that may use it, the refusal otherwise)
type Route<'a> = (&'a Method, String, Option<Value>, &'a [&'a str], &'a str);

#[tokio::test]
async fn every_scoped_route_refuses_a_weaker_key_the_same_way() {
    let app = spawn_app().await;
    let _ = app.acme().await;
    let keys = [
        ("issue", app.create_key("acme", &["issue"]).await),
        ("audit", app.create_key("acme", &["audit"]).await),
        ("admin", app.create_key("acme", &["admin"]).await),
    ];
    let sid = session_for(API_KEY, 9);
    let token = json!({"session_id": sid, "user": user("mallory")});
    let policy = app.standard_policy("acme");
    let credential = json!({"provider": "opentok", "api_key": "424242",
        "api_secret": "0123456789abcdef0123456789abcdef0badc0de", "token_format": "jwt"});
    let (get, post, put, delete) = (Method::GET, Method::POST, Method::PUT, Method::DELETE);
    let routes: Vec<Route> = vec![
        (
            &post,
            "/v1/tokens".into(),
            Some(token.clone()),
            &["issue"],
            ISSUE,
        ),
        (
            &post,
            "/v1/decide".into(),
            Some(token.clone()),
            &["issue"],
            ISSUE,
        ),
        (
            &put,
            format!("/v1/sessions/{sid}"),
            Some(json!({"owner": "olga"})),
            &["issue"],
            ISSUE,
        ),
        (&get, format!("/v1/sessions/{sid}"), None, &["issue"], ISSUE),
        (&get, "/v1/keys".into(), None, &["admin"], ADMIN),
        (
            &post,
            "/v1/keys".into(),
            Some(json!({"scopes": ["admin"]})),
            &["admin"],
            ADMIN,
        ),
        (
            &delete,
            "/v1/keys/aaaaaaaaaaaaaaaa".into(),
            None,
            &["admin"],
            ADMIN,
        ),
        (&get, "/v1/policy".into(), None, &["admin"], ADMIN),
        (
            &post,
            "/v1/policy".into(),
            Some(json!({"source": policy, "dry_run": true})),
            &["admin"],
            ADMIN,
        ),
        (&get, "/v1/policy/versions".into(), None, &["admin"], ADMIN),
        (
            &get,
            "/v1/policy/versions/1".into(),
            None,
            &["admin"],
            ADMIN,
        ),
        (
            &post,
            "/v1/policy/rollback".into(),
            Some(json!({"to": 1})),
            &["admin"],
            ADMIN,
        ),
        (
            &post,
            "/v1/policy/replay".into(),
            Some(json!({"source": policy})),
            &["admin"],
            ADMIN,
        ),
        (
            &put,
            "/v1/credentials/stolen".into(),
            Some(credential),
            &["admin"],
            ADMIN,
        ),
        (&get, "/v1/credentials".into(), None, &["admin"], ADMIN),
        (
            &get,
            "/v1/credentials/stolen".into(),
            None,
            &["admin"],
            ADMIN,
        ),
        (
            &delete,
            "/v1/credentials/stolen".into(),
            None,
            &["admin"],
            ADMIN,
        ),
        (&get, "/v1/status".into(), None, &["admin"], ADMIN),
        (&get, "/v1/audit".into(), None, &["audit", "admin"], AUDIT),
        (
            &get,
            "/v1/audit?format=csv".into(),
            None,
            &["audit", "admin"],
            AUDIT,
        ),
        (
            &get,
            "/v1/audit/summary".into(),
            None,
            &["audit", "admin"],
            AUDIT,
        ),
        (
            &get,
            "/v1/audit/checkpoint".into(),
            None,
            &["audit", "admin"],
            AUDIT,
        ),
        (
            &get,
            "/v1/audit/proof?from=1&to=1".into(),
            None,
            &["audit", "admin"],
            AUDIT,
        ),
        (
            &get,
            "/v1/whoami".into(),
            None,
            &["issue", "audit", "admin"],
            "",
        ),
    ];
    for (method, path, body, allowed, refusal) in &routes {
        for (scope, key) in &keys {
            let (status, v) = call(&app, key, method, path, body.as_ref()).await;
            let code = v["error"]["code"].as_str();
            if allowed.contains(scope) {
                assert_ne!(
                    code,
                    Some("insufficient_scope"),
                    "{method} {path} with an {scope} key: {v}"
                );
            } else {
                assert_eq!(
                    (status, code, v["error"]["message"].as_str()),
                    (403, Some("insufficient_scope"), Some(*refusal)),
                    "{method} {path} with an {scope} key"
                );
            }
        }
    }
}

//! One JSON error shape for every failure, with stable codes and the field at fault.

use serde_json::{Value, json};

use crate::helpers::*;

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let v: Value = r.json().await.expect("error body is JSON");
    assert!(v["error"]["code"].is_string(), "no error.code in {v}");
    assert!(v["error"]["message"].is_string(), "no error.message in {v}");
    (s, v["error"].clone())
}

#[tokio::test]
async fn routing_and_body_failures_use_the_error_shape() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let (s, e) = error_of(app.client.get(app.url("/nope")).send().await.unwrap()).await;
    assert_eq!((s, e["code"].as_str().unwrap()), (404, "route_not_found"));
    let (s, e) = error_of(
        app.client
            .delete(app.url("/v1/tokens"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str().unwrap()),
        (405, "method_not_allowed")
    );

    let post_raw = |body: &'static str, ctype: &'static str| {
        app.client
            .post(app.url("/v1/tokens"))
            .bearer_auth(&key)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let (s, e) = error_of(post_raw("{not json", "application/json").await.unwrap()).await;
    assert_eq!((s, e["code"].as_str().unwrap()), (400, "malformed_json"));
    let (s, e) = error_of(post_raw("{}", "text/plain").await.unwrap()).await;
    assert_eq!(
        (s, e["code"].as_str().unwrap()),
        (415, "unsupported_media_type")
    );
    let big = json!({"session_id": "x".repeat(40_000)});
    let (s, e) = error_of(app.post("/v1/tokens", &key, &big).await).await;
    assert_eq!((s, e["code"].as_str().unwrap()), (413, "body_too_large"));
    let sid = session_for(API_KEY, 1);
    let (s, e) = error_of(
        app.post(
            "/v1/tokens",
            &key,
            &json!({"session_id": sid, "user": user("a"), "admin": true}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str().unwrap(), e["field"].as_str().unwrap()),
        (400, "invalid_body", "admin")
    );
}

#[tokio::test]
async fn every_bad_token_request_field_is_named() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 1);
    let now = token_broker::clock::now_unix();
    let cases = vec![
        (
            "no user",
            json!({"session_id": sid}),
            "missing_field",
            "user",
        ),
        (
            "empty user id",
            json!({"session_id": sid, "user": {"id": ""}}),
            "invalid_user",
            "user.id",
        ),
        (
            "bad role",
            json!({"session_id": sid, "user": user("a"), "role": "admin"}),
            "invalid_role",
            "role",
        ),
        (
            "hyphenated role",
            json!({"session_id": sid, "user": user("a"), "role": "publisher-only"}),
            "invalid_role",
            "role",
        ),
        (
            "ttl and expire_time",
            json!({"session_id": sid, "user": user("a"), "ttl": 60, "expire_time": now + 60}),
            "ttl_and_expire_time",
            "ttl",
        ),
        (
            "expiry in the past",
            json!({"session_id": sid, "user": user("a"), "expire_time": now - 10}),
            "expire_time_in_past",
            "expire_time",
        ),
        (
            "zero ttl",
            json!({"session_id": sid, "user": user("a"), "ttl": 0}),
            "invalid_ttl",
            "ttl",
        ),
        (
            "data too long",
            json!({"session_id": sid, "user": user("a"), "data": "x".repeat(1001)}),
            "connection_data_too_long",
            "data",
        ),
        (
            "stamped data too long",
            json!({"session_id": sid, "user": user("a"), "data": "x".repeat(990)}),
            "connection_data_too_long",
            "data",
        ),
        (
            "undecodable session",
            json!({"session_id": "NOT A REAL SESSIONID", "user": user("a")}),
            "invalid_session_id",
            "session_id",
        ),
        (
            "empty layout class",
            json!({"session_id": sid, "user": user("a"), "initial_layout_class_list": ["focus", ""]}),
            "invalid_layout_class_list",
            "initial_layout_class_list",
        ),
        (
            "string ttl",
            json!({"session_id": sid, "user": user("a"), "ttl": "1h"}),
            "invalid_body",
            "ttl",
        ),
    ];
    for (what, body, code, field) in cases {
        let (s, e) = error_of(app.post("/v1/tokens", &key, &body).await).await;
        assert_eq!(s, 400, "{what}: {e}");
        assert_eq!(e["code"], code, "{what}: {e}");
        assert_eq!(e["field"], field, "{what}: {e}");
    }
    // Malformed requests are not audited: only the tenant's admin events are there.
    let v = app.audit(&key, "kind=token_refused").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0, "{v}");
}

/// A request whose stamped connection data is too long is refused the same
/// way whether the policy would grant or deny it: otherwise a caller could
/// probe grants (a 400 with no audit row) against denials (a 403 with one).
#[tokio::test]
async fn an_oversize_stamp_says_nothing_about_the_decision() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 1);
    let data = "x".repeat(980);
    let granted = json!({"session_id": sid, "user": {"id": "ann"}, "data": data});
    let denied =
        json!({"session_id": sid, "user": {"id": "ann", "groups": ["banned"]}, "data": data});
    let before = app.audit(&key, "kind=token_refused").await["items"]
        .as_array()
        .unwrap()
        .len();
    for body in [&granted, &denied] {
        let (s, v) = app.issue(&key, body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("connection_data_too_long")),
            "{v}"
        );
    }
    let after = app.audit(&key, "kind=token_refused").await["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "an input error is no decision, for either");
}

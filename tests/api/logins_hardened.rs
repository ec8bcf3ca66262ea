//! Issue 11, points 5 and 6 and the end-user half of point 1, played as the
//! attacker: login tokens without `aud`/`iss`/`exp`, a provider whose HMAC
//! secret is short or empty, hostile JWKS servers (oversize, too many keys,
//! redirects, floods of unknown kids, keys removed at the provider), hostile
//! claims (control characters, floats, oversize), and a "social" provider's
//! `alice` reaching for corporate or app-vouched `alice`'s rules, sessions and
//! rate-limit budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use token_broker::auth::idp::{IdentityProvider, IdpError};

use crate::helpers::*;

const ISS: &str = "https://login.acme.test";
const CORP_ISS: &str = "https://corp.acme.test";
const SOCIAL_ISS: &str = "https://social.example";
const HS_ISS: &str = "https://hs.acme.test";
const AUD: &str = "token-broker";

fn key_pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn rsa(n: u8) -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_pem(&format!("idp-rsa-{n}.key"))).unwrap()
}

fn jwk(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(&format!("{name}.jwk.json"))).unwrap()).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn claims(iss: &str, sub: Value, now: i64) -> Value {
    json!({"iss": iss, "aud": AUD, "sub": sub, "iat": now, "exp": now + 300})
}

/// The standard test policy: its subjects already name their source (`*:`),
/// as a policy with identity providers must.
fn rules_with_sources(policy: &str) -> String {
    assert!(
        !policy.contains("\"group:"),
        "bare subjects in a policy with providers"
    );
    policy.to_owned()
}

/// Tenant `acme` with the standard credentials and rules and `idps` appended.
async fn tenant_with(app: &TestApp, idps: &str) {
    app.create_tenant("acme").await;
    let p = format!(
        "{}\n{idps}",
        rules_with_sources(&app.standard_policy("acme"))
    );
    app.apply_policy(&p).await;
}

fn rsa_idp(name: &str, iss: &str, key_source: &str, extra: &str) -> String {
    format!(
        "[[identity_providers]]\nname = \"{name}\"\nissuer = \"{iss}\"\naudiences = [\"{AUD}\"]\nalgorithms = [\"RS256\"]\n{key_source}\ngroups_claim = \"groups\"\nname_claim = \"name\"\n{extra}\n"
    )
}

/// Makes `bytes` available to the broker as a secret of tenant `acme` and
/// returns its reference (the one place that knows how secrets are provided).
/// Provisions a secret in acme's namespace, as the operator does, and returns its reference.
fn secret_ref(app: &TestApp, name: &str, bytes: &[u8]) -> String {
    app.provision_secret("acme", name, bytes);
    format!("file:{name}")
}

fn public_key(app: &TestApp, n: u8) -> String {
    let name = format!("idp-rsa-{n}.pub.pem");
    format!(
        "public_keys = [\"{}\"]",
        secret_ref(app, &name, &key_pem(&name))
    )
}

async fn post_as(app: &TestApp, tenant: &str, bearer: &str, body: &Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(&format!("/v1/tenants/{tenant}/tokens")))
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn code(v: &Value) -> (Option<&str>, Option<&str>) {
    (v["error"]["code"].as_str(), v["error"]["field"].as_str())
}

fn now() -> i64 {
    token_broker::clock::now_unix()
}

// ---------------------------------------------------------------- point 5: claims

#[tokio::test]
async fn login_tokens_without_aud_iss_or_exp_are_refused() {
    let app = spawn_app().await;
    tenant_with(&app, &rsa_idp("acme-login", ISS, &public_key(&app, 1), "")).await;
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let t = now();
    let without = |k: &str| {
        let mut c = claims(ISS, json!("eve"), t);
        c.as_object_mut().unwrap().remove(k);
        sign(Algorithm::RS256, None, &rsa(1), &c)
    };
    let mut exp_text = claims(ISS, json!("eve"), t);
    exp_text["exp"] = json!(format!("{}", t + 300));
    let mut aud_empty = claims(ISS, json!("eve"), t);
    aud_empty["aud"] = json!([]);
    let cases = [
        ("no aud", without("aud"), "invalid_audience", "aud"),
        (
            "empty aud list",
            sign(Algorithm::RS256, None, &rsa(1), &aud_empty),
            "invalid_audience",
            "aud",
        ),
        ("no iss", without("iss"), "invalid_issuer", "iss"),
        ("no exp", without("exp"), "missing_exp", "exp"),
        (
            "exp as text",
            sign(Algorithm::RS256, None, &rsa(1), &exp_text),
            "missing_exp",
            "exp",
        ),
    ];
    for (what, token, want, field) in cases {
        let (s, v) = post_as(&app, "acme", &token, &body).await;
        assert_eq!(
            (s, code(&v)),
            (401, (Some(want), Some(field))),
            "{what}: {v}"
        );
    }
    // The control: the same token with all three is served.
    let ok = sign(
        Algorithm::RS256,
        None,
        &rsa(1),
        &claims(ISS, json!("eve"), t),
    );
    let (s, v) = post_as(&app, "acme", &ok, &body).await;
    assert_eq!(s, 201, "{v}");
}

// ------------------------------------------------------------ point 5: HMAC secrets

#[tokio::test]
async fn an_hmac_provider_with_a_short_or_empty_secret_is_unavailable_never_open() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let base = rules_with_sources(&app.standard_policy("acme"));
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let t = now();
    for (len, want) in [(0usize, 503u16), (31, 503), (32, 201)] {
        let secret = vec![b'k'; len];
        let r = secret_ref(&app, &format!("hs-{len}.secret"), &secret);
        let p = format!(
            "{base}\n[[identity_providers]]\nname = \"hs\"\nissuer = \"{HS_ISS}\"\naudiences = [\"{AUD}\"]\nalgorithms = [\"HS256\"]\nsecret = \"{r}\"\n"
        );
        app.apply_policy(&p).await;
        // The attacker signs with the very key the provider would use.
        let token = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(&secret),
            &claims(HS_ISS, json!("mallory"), t),
        );
        let (s, v) = post_as(&app, "acme", &token, &body).await;
        assert_eq!(s, want, "{len}-byte secret: {v}");
        if want == 503 {
            assert_eq!(v["error"]["code"], "idp_unavailable", "{v}");
            assert!(v.get("token").is_none());
        }
    }
}

// ---------------------------------------------------------- point 5: JWKS servers

/// A JWKS server on port 0 that counts what it serves: `/jwks.json` (the
/// swappable document, after `delay`), `/big.json` and `/big-chunked.json`
/// (over 256 KiB, with and without a length), `/many.json` (101 keys),
/// `/redirect` (302 to `redirect_to`) and `/fail` (500).
struct JwksServer {
    base: String,
    doc: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(delay: Duration, redirect_to: Option<String>) -> JwksServer {
    let doc = Arc::new(Mutex::new(json!({"keys": [jwk("idp-rsa-1")]})));
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (d, h) = (doc.clone(), hits.clone());
    let server = actix_web::HttpServer::new(move || {
        use actix_web::{HttpResponse, web};
        let (d, h, r) = (d.clone(), h.clone(), redirect_to.clone());
        let (h2, h3, h4, h5, h6) = (h.clone(), h.clone(), h.clone(), h.clone(), h.clone());
        let big = || {
            let mut v = json!({"keys": [jwk("idp-rsa-1")]});
            v["padding"] = json!("x".repeat(300 * 1024));
            v.to_string()
        };
        actix_web::App::new()
            .route(
                "/jwks.json",
                web::get().to(move || {
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().unwrap().clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        HttpResponse::Ok().json(body)
                    }
                }),
            )
            .route(
                "/big.json",
                web::get().to(move || {
                    h2.fetch_add(1, Ordering::SeqCst);
                    let b = big();
                    async move { HttpResponse::Ok().content_type("application/json").body(b) }
                }),
            )
            .route(
                "/big-chunked.json",
                web::get().to(move || {
                    h3.fetch_add(1, Ordering::SeqCst);
                    let chunks: Vec<Result<web::Bytes, actix_web::Error>> = big()
                        .into_bytes()
                        .chunks(16 * 1024)
                        .map(|c| Ok(web::Bytes::copy_from_slice(c)))
                        .collect();
                    async move {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .streaming(futures_util::stream::iter(chunks))
                    }
                }),
            )
            .route(
                "/many.json",
                web::get().to(move || {
                    h4.fetch_add(1, Ordering::SeqCst);
                    let keys: Vec<Value> = (0..101)
                        .map(|i| {
                            let mut k = jwk("idp-rsa-1");
                            if i > 0 {
                                k["kid"] = json!(format!("extra-{i}"));
                            }
                            k
                        })
                        .collect();
                    async move { HttpResponse::Ok().json(json!({ "keys": keys })) }
                }),
            )
            .route(
                "/redirect",
                web::get().to(move || {
                    h5.fetch_add(1, Ordering::SeqCst);
                    let to = r.clone().unwrap_or_default();
                    async move {
                        HttpResponse::Found()
                            .insert_header(("Location", to))
                            .finish()
                    }
                }),
            )
            .route(
                "/fail",
                web::get().to(move || {
                    h6.fetch_add(1, Ordering::SeqCst);
                    async { HttpResponse::InternalServerError().finish() }
                }),
            )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    JwksServer {
        base: format!("http://127.0.0.1:{port}"),
        doc,
        hits,
    }
}

fn jwks_idp(url: &str, extra: &str) -> String {
    rsa_idp("acme-login", ISS, &format!("jwks_url = \"{url}\""), extra)
}

fn kid_token(kid: &str, key: u8, sub: &str, now: i64) -> String {
    sign(
        Algorithm::RS256,
        Some(kid),
        &rsa(key),
        &claims(ISS, json!(sub), now),
    )
}

#[tokio::test]
async fn concurrent_requests_on_a_cold_jwks_cache_share_one_fetch() {
    // A slow provider, so every request arrives while the first fetch is in flight.
    let srv = jwks_server(Duration::from_millis(400), None).await;
    let app = spawn_app().await;
    tenant_with(&app, &jwks_idp(&format!("{}/jwks.json", srv.base), "")).await;
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let t = now();
    let tokens: Vec<String> = (0..12)
        .map(|i| kid_token("idp-rsa-1", 1, &format!("user-{i}"), t))
        .collect();
    let results =
        futures_util::future::join_all(tokens.iter().map(|tk| post_as(&app, "acme", tk, &body)))
            .await;
    for (s, v) in &results {
        assert_eq!(*s, 201, "every waiter gets the fetched key: {v}");
    }
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1, "one fetch for all");

    // A flood of unknown kids (anonymous: any signature will do) fetches at
    // most once per jwks_min_refresh (10 s by default): here, not at all again.
    // (Fewer than the failed-authentication limit per address, 10.)
    let junk: Vec<String> = (0..8)
        .map(|i| kid_token(&format!("junk-{i}"), 2, "x", t))
        .collect();
    let results =
        futures_util::future::join_all(junk.iter().map(|tk| post_as(&app, "acme", tk, &body)))
            .await;
    for (s, v) in &results {
        assert_eq!((*s, code(v).0), (401, Some("unknown_kid")), "{v}");
    }
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        1,
        "unknown kids are spaced"
    );
}

#[tokio::test]
async fn an_oversize_or_overfull_jwks_is_not_loaded() {
    let srv = jwks_server(Duration::ZERO, None).await;
    let app = spawn_app().await;
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let t = now();
    app.create_tenant("acme").await;
    let base = rules_with_sources(&app.standard_policy("acme"));
    for path in ["/big.json", "/big-chunked.json", "/many.json"] {
        let p = format!("{base}\n{}", jwks_idp(&format!("{}{path}", srv.base), ""));
        app.apply_policy(&p).await;
        // Key 1 is in each document, so loading it would have let this through.
        let (s, v) = post_as(&app, "acme", &kid_token("idp-rsa-1", 1, "eve", t), &body).await;
        assert_eq!(
            (s, code(&v).0),
            (503, Some("idp_unavailable")),
            "{path}: {v}"
        );
    }
    assert_eq!(srv.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn jwks_redirects_are_not_followed() {
    let target = jwks_server(Duration::ZERO, None).await;
    let srv = jwks_server(Duration::ZERO, Some(format!("{}/jwks.json", target.base))).await;
    let app = spawn_app().await;
    tenant_with(&app, &jwks_idp(&format!("{}/redirect", srv.base), "")).await;
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let (s, v) = post_as(
        &app,
        "acme",
        &kid_token("idp-rsa-1", 1, "eve", now()),
        &body,
    )
    .await;
    assert_eq!((s, code(&v).0), (503, Some("idp_unavailable")), "{v}");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1, "the redirect was asked");
    assert_eq!(
        target.hits.load(Ordering::SeqCst),
        0,
        "its target never was"
    );
}

/// A provider loaded straight from a validated policy, so the test owns `now`.
fn load_provider(url: &str, extra: &str) -> IdentityProvider {
    let text = format!(
        "tenant = \"acme\"\n{}",
        jwks_idp(url, extra).replace("groups_claim", "# groups_claim")
    );
    let doc = token_broker::policy::parse("acme.toml", &text).expect("valid policy");
    // A JWKS provider has no secret references to resolve.
    let none = token_broker::secrets::Resolved::default();
    // (The test's provider is on loopback: allowed as `jwks_private_addresses` allows it.)
    IdentityProvider::load(&doc.identity_providers[0], &none, true).expect("loads")
}

#[tokio::test]
async fn a_key_removed_at_the_provider_stops_being_trusted_after_max_age() {
    let srv = jwks_server(Duration::ZERO, None).await;
    let idp = load_provider(
        &format!("{}/jwks.json", srv.base),
        "jwks_max_age = \"60s\"\njwks_min_refresh = \"1s\"",
    );
    let t0 = 1_764_000_000_000i64; // the test's clock, in ms
    let mut c: Value = claims(ISS, json!("eve"), t0 / 1000);
    c["exp"] = json!(t0 / 1000 + 3600);
    let token = sign(Algorithm::RS256, Some("idp-rsa-1"), &rsa(1), &c);
    let who = idp.verify(&token, t0).await.expect("key 1 is served");
    assert_eq!(
        (who.user_id.as_str(), who.idp.as_deref()),
        ("eve", Some("acme-login"))
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);

    // The provider removes key 1 (it leaked, say).
    *srv.doc.lock().unwrap() = json!({"keys": [jwk("idp-rsa-2")]});
    // Within the max age the cached key still verifies, without a fetch.
    idp.verify(&token, t0 + 59_000).await.expect("still cached");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
    // Past it, the cache is dropped and fetched again: key 1 is gone.
    assert_eq!(
        idp.verify(&token, t0 + 61_000).await,
        Err(IdpError::UnknownKid)
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 2);

    // Unknown kids refetch at most once per jwks_min_refresh (1 s here).
    let junk = sign(Algorithm::RS256, Some("junk"), &rsa(2), &c);
    assert_eq!(
        idp.verify(&junk, t0 + 61_500).await,
        Err(IdpError::UnknownKid)
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 2, "spaced");
    assert_eq!(
        idp.verify(&junk, t0 + 62_100).await,
        Err(IdpError::UnknownKid)
    );
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        3,
        "allowed again after 1 s"
    );
}

#[tokio::test]
async fn stale_keys_are_not_reused_when_the_provider_is_down() {
    let srv = jwks_server(Duration::ZERO, None).await;
    let idp = load_provider(
        &format!("{}/jwks.json", srv.base),
        "jwks_max_age = \"60s\"\njwks_min_refresh = \"1s\"",
    );
    let t0 = 1_764_000_000_000i64;
    let mut c: Value = claims(ISS, json!("eve"), t0 / 1000);
    c["exp"] = json!(t0 / 1000 + 3600);
    let token = sign(Algorithm::RS256, Some("idp-rsa-1"), &rsa(1), &c);
    idp.verify(&token, t0).await.expect("served");
    // The provider breaks: it now serves something that is not a key set.
    *srv.doc.lock().unwrap() = json!("not a key set");
    assert_eq!(
        idp.verify(&token, t0 + 61_000).await,
        Err(IdpError::KeysUnavailable),
        "an expired cache is not trusted because the refetch failed"
    );
    // Nor on the next request, within the refetch spacing.
    assert_eq!(
        idp.verify(&token, t0 + 61_200).await,
        Err(IdpError::KeysUnavailable)
    );
}

#[test]
fn jwks_urls_must_be_https_except_on_loopback_and_refresh_has_a_floor() {
    let check = |url: &str, extra: &str| {
        let text = format!(
            "tenant = \"acme\"\n{}",
            rsa_idp("acme-login", ISS, &format!("jwks_url = \"{url}\""), extra)
        );
        token_broker::policy::parse("acme.toml", &text)
    };
    for ok in [
        "https://login.example/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://127.1.2.3/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:9/jwks.json",
    ] {
        assert!(check(ok, "").is_ok(), "{ok}");
    }
    for bad in [
        "http://login.example/jwks.json",
        "http://127.0.0.1.evil.example/jwks.json",
        "http://localhost.evil.example/jwks.json",
        "http://10.0.0.5/jwks.json",
        "ftp://login.example/jwks.json",
        "file:///etc/passwd",
        "https://user:pass@login.example/jwks.json",
        "not a url",
    ] {
        let errs = check(bad, "").expect_err(bad);
        assert_eq!(errs[0].field, "identity_providers[0].jwks_url", "{bad}");
        assert_eq!((errs[0].line, errs[0].column), (7, 12), "{bad}: {errs:?}");
    }
    for (extra, field) in [
        (
            "jwks_min_refresh = \"0s\"",
            "identity_providers[0].jwks_min_refresh",
        ),
        (
            "jwks_max_age = \"0s\"",
            "identity_providers[0].jwks_max_age",
        ),
        (
            "jwks_min_refresh = \"30s\"\njwks_max_age = \"10s\"",
            "identity_providers[0].jwks_max_age",
        ),
    ] {
        let errs = check("https://login.example/jwks.json", extra).expect_err(extra);
        assert_eq!(errs[0].field, field, "{extra}: {errs:?}");
    }
}

// ------------------------------------------------- point 1: end-user claims at the edge

#[tokio::test]
async fn hostile_end_user_claims_are_refused_not_truncated() {
    // More refusals than the failed-authentication limit per address allows.
    let app = spawn_app_with(|s| {
        s.rates.failed_auth_ip = token_broker::limits::Rate::parse("1000/1000").unwrap()
    })
    .await;
    tenant_with(&app, &rsa_idp("acme-login", ISS, &public_key(&app, 1), "")).await;
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let t = now();
    let with = |k: &str, v: Value| {
        let mut c = claims(ISS, json!("eve"), t);
        c[k] = v;
        sign(Algorithm::RS256, None, &rsa(1), &c)
    };
    let too_many: Vec<String> = (0..65).map(|i| format!("g{i}")).collect();
    let cases = [
        (
            "newline in sub",
            with("sub", json!("eve\nFORGED log line")),
            "sub",
        ),
        ("NUL in sub", with("sub", json!("eve\u{0}")), "sub"),
        ("empty sub", with("sub", json!("")), "sub"),
        ("257-byte sub", with("sub", json!("a".repeat(257))), "sub"),
        ("float sub", with("sub", json!(42.5)), "sub"),
        ("integral float sub", with("sub", json!(42.0)), "sub"),
        (
            "inexact integer sub",
            with(
                "sub",
                serde_json::from_str("123456789012345678901234567890").unwrap(),
            ),
            "sub",
        ),
        ("newline in name", with("name", json!("Eve\nAdmin")), "name"),
        (
            "257-byte name",
            with("name", json!("é".repeat(129))),
            "name",
        ),
        ("numeric name", with("name", json!(7)), "name"),
        ("65 groups", with("groups", json!(too_many)), "groups"),
        (
            "NUL in a group",
            with("groups", json!(["a\u{0}b"])),
            "groups",
        ),
        ("empty group", with("groups", json!([""])), "groups"),
        ("non-string group", with("groups", json!([1])), "groups"),
        ("groups object", with("groups", json!({"a": 1})), "groups"),
        (
            "control char in a space-separated group list",
            with("groups", json!("a b\u{7}c")),
            "groups",
        ),
    ];
    for (what, token, field) in cases {
        let (s, v) = post_as(&app, "acme", &token, &body).await;
        assert_eq!(
            (s, code(&v)),
            (401, (Some("invalid_user_claim"), Some(field))),
            "{what}: {v}"
        );
    }
    // An object sub does not even decode (the JWT library wants a string or a
    // number there): refused too, as malformed.
    let (s, v) = post_as(&app, "acme", &with("sub", json!({"id": "eve"})), &body).await;
    assert_eq!((s, code(&v).0), (401, Some("malformed_token")), "{v}");
    // An integer sub is converted exactly; 256 bytes are fine.
    for (sub, want) in [
        (json!(42), "42"),
        (json!(u64::MAX), "18446744073709551615"),
        (json!(-7), "-7"),
    ] {
        let (s, v) = post_as(&app, "acme", &with("sub", sub), &body).await;
        assert_eq!(s, 201, "{v}");
        let cd: Value = serde_json::from_str(v["connection_data"].as_str().unwrap()).unwrap();
        assert_eq!(cd["sub"], want);
    }
    let long = "a".repeat(256);
    let (s, v) = post_as(&app, "acme", &with("sub", json!(long)), &body).await;
    assert_eq!(s, 201, "{v}");
    // A space-separated group list splits at ASCII spaces only: a value a
    // user can influence ("x" + IDEOGRAPHIC SPACE + "banned") is one group,
    // not a way into another group's rules.
    let (s, v) = post_as(
        &app,
        "acme",
        &with("groups", json!("x\u{3000}banned")),
        &body,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post_as(&app, "acme", &with("groups", json!("x banned")), &body).await;
    assert_eq!(
        (s, v["error"]["rule"].as_str()),
        (403, Some("banned")),
        "{v}"
    );
}

// ------------------------------------------------ point 6: identities carry their source

const SOURCED_RULES: &str = r#"
[[rules]]
id = "banned"
priority = 1
effect = "deny"
subjects = ["*:group:banned"]
sessions = ["*"]

[[rules]]
id = "owner-moderates"
priority = 10
subjects = ["*"]
sessions = ["owner"]
roles = ["subscriber", "publisher", "publisheronly", "moderator"]
default_role = "moderator"

[[rules]]
id = "corp-alice"
priority = 20
subjects = ["idp:corp:user:alice"]
sessions = ["*"]
roles = ["moderator"]
default_role = "moderator"

[[rules]]
id = "app-alice"
priority = 30
subjects = ["app:user:alice"]
sessions = ["*"]
roles = ["publisher"]
default_role = "publisher"

[[rules]]
id = "corp-teachers"
priority = 40
subjects = ["idp:corp:group:teachers"]
sessions = ["*"]
roles = ["moderator"]
default_role = "moderator"

[[rules]]
id = "any-bob"
priority = 50
subjects = ["*:user:bob"]
sessions = ["*"]
roles = ["publisher"]
default_role = "publisher"

[[rules]]
id = "everyone"
priority = 100
subjects = ["*"]
sessions = ["*"]
roles = ["subscriber"]
default_role = "subscriber"
"#;

/// Tenant `acme` with a corporate provider (key 1) and a social one (key 2).
async fn two_provider_tenant(app: &TestApp, rates: &str) -> String {
    app.create_tenant("acme").await;
    let standard = app.standard_policy("acme");
    let credentials = &standard[..standard.find("[[rules]]").unwrap()];
    let p = format!(
        "{credentials}{SOURCED_RULES}\n{}\n{}\n{rates}",
        rsa_idp("corp", CORP_ISS, &public_key(app, 1), ""),
        rsa_idp("social", SOCIAL_ISS, &public_key(app, 2), ""),
    );
    app.apply_policy(&p).await;
    app.create_key("acme", &["issue"]).await
}

fn end_user(iss: &str, key: u8, sub: &str, groups: &[&str]) -> String {
    let mut c = claims(iss, json!(sub), now());
    c["groups"] = json!(groups);
    sign(Algorithm::RS256, None, &rsa(key), &c)
}

#[tokio::test]
async fn a_social_alice_never_gets_corporate_or_app_alices_rules_or_sessions() {
    let app = spawn_app().await;
    let key = two_provider_tenant(&app, "").await;
    let any = session_for(API_KEY, 1);
    let body = json!({"session_id": any});
    let corp_alice = end_user(CORP_ISS, 1, "alice", &[]);
    let social_alice = end_user(SOCIAL_ISS, 2, "alice", &["teachers"]);
    let rule_of = |v: &Value| v["decision"]["rule"].as_str().map(str::to_owned);

    let (s, v) = post_as(&app, "acme", &social_alice, &body).await;
    assert_eq!(
        (s, rule_of(&v).as_deref(), v["role"].as_str()),
        (201, Some("everyone"), Some("subscriber")),
        "social alice is neither corporate nor app alice, nor a corporate teacher: {v}"
    );
    let (s, v) = post_as(&app, "acme", &corp_alice, &body).await;
    assert_eq!(
        (s, rule_of(&v).as_deref()),
        (201, Some("corp-alice")),
        "{v}"
    );
    let (s, v) = app
        .issue(&key, &json!({"session_id": any, "user": {"id": "alice"}}))
        .await;
    assert_eq!((s, rule_of(&v).as_deref()), (201, Some("app-alice")), "{v}");
    let (s, v) = post_as(
        &app,
        "acme",
        &end_user(CORP_ISS, 1, "carol", &["teachers"]),
        &body,
    )
    .await;
    assert_eq!(
        (s, rule_of(&v).as_deref()),
        (201, Some("corp-teachers")),
        "{v}"
    );
    // A rule that says "any source" explicitly matches every source.
    for token in [
        end_user(SOCIAL_ISS, 2, "bob", &[]),
        end_user(CORP_ISS, 1, "bob", &[]),
    ] {
        let (s, v) = post_as(&app, "acme", &token, &body).await;
        assert_eq!((s, rule_of(&v).as_deref()), (201, Some("any-bob")), "{v}");
    }
    let (s, v) = app
        .issue(&key, &json!({"session_id": any, "user": {"id": "bob"}}))
        .await;
    assert_eq!((s, rule_of(&v).as_deref()), (201, Some("any-bob")), "{v}");
    let (s, v) = post_as(
        &app,
        "acme",
        &end_user(SOCIAL_ISS, 2, "troll", &["banned"]),
        &body,
    )
    .await;
    assert_eq!((s, code(&v).0), (403, Some("policy_denied")), "{v}");

    // Session owners carry their source too: the app's "alice" is its own user.
    let apps = session_for(API_KEY, 2);
    let socials = session_for(API_KEY, 3);
    for (sid, owner) in [(&apps, "alice"), (&socials, "idp:social:alice")] {
        let r = app
            .put(
                &format!("/v1/sessions/{sid}"),
                &key,
                &json!({"owner": owner}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let on = |sid: &str| json!({"session_id": sid});
    let (_, v) = post_as(&app, "acme", &social_alice, &on(&apps)).await;
    assert_eq!(
        rule_of(&v).as_deref(),
        Some("everyone"),
        "not the app's alice's room: {v}"
    );
    let (_, v) = app
        .issue(&key, &json!({"session_id": apps, "user": {"id": "alice"}}))
        .await;
    assert_eq!(rule_of(&v).as_deref(), Some("owner-moderates"), "{v}");
    let (_, v) = post_as(&app, "acme", &social_alice, &on(&socials)).await;
    assert_eq!(
        (rule_of(&v).as_deref(), v["role"].as_str()),
        (Some("owner-moderates"), Some("moderator")),
        "{v}"
    );
    let (_, v) = post_as(&app, "acme", &corp_alice, &on(&socials)).await;
    assert_eq!(
        rule_of(&v).as_deref(),
        Some("corp-alice"),
        "corporate alice does not own social alice's room: {v}"
    );
    // An app user whose id spells a provider's user is still the app's user.
    let (_, v) = app
        .issue(
            &key,
            &json!({"session_id": socials, "user": {"id": "idp:social:alice"}}),
        )
        .await;
    assert_eq!(rule_of(&v).as_deref(), Some("everyone"), "{v}");
}

#[tokio::test]
async fn end_user_rate_limits_are_per_provider() {
    let app = spawn_app().await;
    two_provider_tenant(&app, "[rate_limits]\nend_user = \"1/3\"\n").await;
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let social_alice = end_user(SOCIAL_ISS, 2, "alice", &[]);
    let results = futures_util::future::join_all(
        (0..10).map(|_| post_as(&app, "acme", &social_alice, &body)),
    )
    .await;
    assert!(
        results.iter().filter(|(s, _)| *s == 429).count() >= 5,
        "social alice exhausts her own budget"
    );
    let (s, v) = post_as(&app, "acme", &end_user(CORP_ISS, 1, "alice", &[]), &body).await;
    assert_eq!(s, 201, "corporate alice has a budget of her own: {v}");
}

#[test]
fn ambiguous_subjects_are_refused_at_validation() {
    let idp = rsa_idp(
        "corp",
        CORP_ISS,
        "jwks_url = \"https://corp.example/jwks\"",
        "",
    );
    let policy = |subject: &str, with_idp: bool| {
        format!(
            "tenant = \"acme\"\n[[rules]]\nid = \"r\"\npriority = 1\nsubjects = [\"*\", \"{subject}\"]\nsessions = [\"*\"]\n{}",
            if with_idp { idp.as_str() } else { "" }
        )
    };
    for (subject, with_idp, why) in [
        ("user:alice", true, "ambiguous"),
        ("group:teachers", true, "ambiguous"),
        ("idp:social:user:alice", true, "does not declare"),
        ("idp:corp:user:alice", false, "declares no"),
        ("idp:corp:alice", true, "not a subject"),
        ("idp:corp:user:", true, "1-256 bytes"),
        ("user:idp:corp:user:alice", false, "ambiguous"),
        ("group:*:teachers", false, "ambiguous"),
        ("app:alice", true, "not a subject"),
        ("user:a\\u0001b", false, "control"),
    ] {
        let errs = token_broker::policy::parse("acme.toml", &policy(subject, with_idp))
            .expect_err(subject);
        assert_eq!(
            (errs[0].field.as_str(), errs[0].line, errs[0].column),
            ("rules[0].subjects", 5, 18),
            "{subject}: {errs:?}"
        );
        assert!(errs[0].message.contains(why), "{subject}: {}", errs[0]);
    }
    // Two providers with one issuer: whose user would a token name?
    let twins = format!(
        "tenant = \"acme\"\n{}\n{}",
        rsa_idp(
            "corp",
            CORP_ISS,
            "jwks_url = \"https://corp.example/jwks\"",
            ""
        ),
        rsa_idp(
            "social",
            CORP_ISS,
            "jwks_url = \"https://corp.example/jwks\"",
            ""
        )
    );
    let errs = token_broker::policy::parse("acme.toml", &twins).expect_err("same issuer");
    assert_eq!(errs[0].field, "identity_providers[1].issuer", "{errs:?}");
    for (subject, with_idp) in [
        ("user:alice", false),
        ("group:teachers", false),
        ("app:user:alice", true),
        ("app:user:idp:corp:user:alice", true),
        ("idp:corp:user:alice", true),
        ("idp:corp:group:teachers", true),
        ("*:user:alice", true),
        ("*:group:teachers", false),
    ] {
        assert!(
            token_broker::policy::parse("acme.toml", &policy(subject, with_idp)).is_ok(),
            "{subject}"
        );
    }
}

#[test]
fn policy_test_cases_name_the_users_provider() {
    let idps = format!(
        "{}\n{}",
        rsa_idp(
            "corp",
            CORP_ISS,
            "jwks_url = \"https://corp.example/jwks\"",
            ""
        ),
        rsa_idp(
            "social",
            SOCIAL_ISS,
            "jwks_url = \"https://social.example/jwks\"",
            ""
        )
    );
    let text = format!(
        "tenant = \"acme\"\n[[credentials]]\nname = \"main\"\nprovider = \"opentok\"\napi_key = \"123456\"\napi_secret = \"env:TOKEN_BROKER_TENANT_ACME_X\"\n{SOURCED_RULES}\n{idps}"
    );
    let policy = token_broker::policy::CompiledPolicy::compile(
        token_broker::policy::parse("acme.toml", &text).expect("valid"),
        1,
    );
    let cases = r#"
[[cases]]
name = "social alice"
user = { id = "alice", idp = "social" }
expect = { outcome = "granted", rule = "everyone" }

[[cases]]
name = "corporate alice"
user = { id = "alice", idp = "corp" }
expect = { outcome = "granted", rule = "corp-alice" }

[[cases]]
name = "app alice"
user = { id = "alice" }
expect = { outcome = "granted", rule = "app-alice" }

[[cases]]
name = "social alice in her own room"
user = { id = "alice", idp = "social" }
session = { owner = "idp:social:alice" }
expect = { outcome = "granted", rule = "owner-moderates" }

[[cases]]
name = "app alice is not social alice's owner"
user = { id = "alice" }
session = { owner = "idp:social:alice" }
expect = { outcome = "granted", rule = "app-alice" }

[[cases]]
name = "a provider the policy does not declare fails the case"
user = { id = "alice", idp = "nosuch" }
expect = { outcome = "granted", rule = "everyone" }
"#;
    let report = token_broker::policy::run_cases(&policy, "cases.toml", cases).expect("parses");
    assert_eq!(report.passed, 5, "{report}");
    assert_eq!(report.failures.len(), 1, "{report}");
    assert!(
        report.failures[0].problems[0].contains("user.idp"),
        "{report}"
    );
}

// ------------------------------------------- anonymous clients: tenant names stay secret

/// The end-user endpoint is public and takes the tenant in its path, so an
/// anonymous client can put any name there. Whatever it presents (nothing, a
/// string that is no JWT, a JWT of an issuer it made up, an API key that does
/// not exist), a tenant with identity providers, a tenant with no policy and a
/// name that is no tenant answer alike: it cannot list the tenants by trying.
#[tokio::test]
async fn an_anonymous_client_cannot_tell_which_tenants_exist() {
    let app = spawn_app().await;
    tenant_with(&app, &rsa_idp("acme-login", ISS, &public_key(&app, 1), "")).await;
    app.create_tenant("quiet").await; // exists, no policy applied yet
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let t = now();
    let made_up_issuer = sign(
        Algorithm::RS256,
        None,
        &rsa(2),
        &claims("https://evil.example", json!("eve"), t),
    );
    let unknown_key = format!("tkb_aaaaaaaaaaaaaaaa_{}", "0".repeat(64));
    let presented: [(&str, Option<&str>); 4] = [
        ("no credential", None),
        ("not a JWT", Some("hello")),
        ("a JWT of an unknown issuer", Some(&made_up_issuer)),
        ("an unknown API key", Some(&unknown_key)),
    ];
    for (what, bearer) in presented {
        let mut answers = Vec::new();
        for tenant in ["acme", "quiet", "no-such-tenant"] {
            let mut rq = app
                .client
                .post(app.url(&format!("/v1/tenants/{tenant}/tokens")))
                .json(&body);
            if let Some(b) = bearer {
                rq = rq.bearer_auth(b);
            }
            let r = rq.send().await.unwrap();
            let status = r.status().as_u16();
            let challenge = r.headers().get("www-authenticate").cloned();
            let v: Value = r.json().await.unwrap();
            assert_eq!(status, 401, "{what} at {tenant}: {v}");
            assert!(!v.to_string().contains(tenant), "{what}: {v}");
            answers.push((tenant, (challenge, v)));
        }
        for (tenant, answer) in &answers[1..] {
            assert_eq!(
                answer, &answers[0].1,
                "{what}: {tenant} answers unlike acme"
            );
        }
    }
    // A CORS preflight from an origin no tenant allows: the same refusal.
    let mut preflights = Vec::new();
    for tenant in ["acme", "quiet", "no-such-tenant"] {
        let r = app
            .client
            .request(
                reqwest::Method::OPTIONS,
                app.url(&format!("/v1/tenants/{tenant}/tokens")),
            )
            .header("Origin", "https://evil.example")
            .header("Access-Control-Request-Method", "POST")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        preflights.push((status, r.text().await.unwrap()));
    }
    assert_eq!(preflights[0].0, 403, "{preflights:?}");
    assert!(
        preflights.iter().all(|p| p == &preflights[0]),
        "{preflights:?}"
    );
}

/// Peek-then-charge, login half (review D2): a failure is charged to the
/// address only once its signature checks are done, so a concurrent wave of
/// forged tokens used to be checked whole. Now at most `MAX_AUTH_IN_FLIGHT`
/// login checks of one address run at once; the rest get 429 before any
/// signature check, and another address's user logs in meanwhile.
#[tokio::test]
async fn a_concurrent_wave_of_forged_login_tokens_from_one_address_is_bounded() {
    let nets = token_broker::routes::client_addr::parse_trusted_proxies("127.0.0.1/32").unwrap();
    let app = spawn_app_with(move |s| {
        s.trusted_proxies = nets;
        // Not the bucket: the wave must be stopped by the in-flight bound.
        s.rates.failed_auth_ip = token_broker::limits::Rate {
            per_second: 1,
            burst: 10_000,
        };
    })
    .await;
    let pk = public_key(&app, 1);
    tenant_with(&app, &rsa_idp("acme-login", ISS, &pk, "")).await;
    let bound = token_broker::limits::MAX_AUTH_IN_FLIGHT as usize;
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let t = now();
    // Signed with a key the provider does not have: a full check, then 401.
    let forged = sign(
        Algorithm::RS256,
        None,
        &rsa(2),
        &claims(ISS, json!("mallory"), t),
    );
    let good = sign(
        Algorithm::RS256,
        None,
        &rsa(1),
        &claims(ISS, json!("alice"), t),
    );
    let from = |addr: &'static str, token: &str| {
        let req = app
            .client
            .post(app.url("/v1/tenants/acme/tokens"))
            .bearer_auth(token)
            .header("x-forwarded-for", addr)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (s, v["error"]["code"].as_str().map(str::to_owned))
        }
    };
    let wave = futures_util::future::join_all((0..40).map(|_| from("203.0.113.9", &forged)));
    let (answers, other) = futures_util::future::join(wave, from("198.51.100.7", &good)).await;
    let checked = answers
        .iter()
        .filter(|a| a.1.as_deref() == Some("invalid_signature"))
        .count();
    let refused = answers
        .iter()
        .filter(|a| a.0 == 429 && a.1.as_deref() == Some("rate_limited"))
        .count();
    assert_eq!(checked + refused, 40, "{answers:?}");
    assert!(
        checked <= bound,
        "{checked} forged tokens checked at once: {answers:?}"
    );
    assert_eq!(other.0, 201, "another address logs in: {other:?}");
    assert!(app.app_state.limits.auth_in_flight.is_empty());
}

#[tokio::test]
async fn jwks_urls_cannot_reach_internal_addresses_unless_the_operator_allows_it() {
    // A hostile tenant admin points its provider at the broker's own network
    // (here a service on loopback); anyone who knows the issuer can then make
    // the broker fetch it with an unsigned token. By default it never connects.
    let srv = jwks_server(Duration::ZERO, None).await;
    let body = json!({"session_id": session_for(API_KEY, 1)});
    let t = now();
    let port = srv.base.rsplit(':').next().unwrap();
    for jwks in [
        format!("{}/jwks.json", srv.base),
        format!("http://localhost:{port}/jwks.json"),
        // An IPv4-mapped loopback literal (https passes validation).
        format!("https://[::ffff:127.0.0.1]:{port}/jwks.json"),
    ] {
        let app = spawn_app_with(|s| s.jwks_private_addresses = false).await;
        tenant_with(&app, &jwks_idp(&jwks, "")).await;
        let (s, v) = post_as(&app, "acme", &kid_token("idp-rsa-1", 1, "u", t), &body).await;
        assert_eq!(
            (s, code(&v).0),
            (503, Some("idp_unavailable")),
            "{jwks}: {v}"
        );
        let msg = v.to_string();
        assert!(
            !msg.contains("127.0.0.1") && !msg.contains("localhost"),
            "{msg}"
        );
    }
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0, "never fetched");

    // (Other names are checked where they are resolved, at each connection:
    // the unit test `a_name_that_resolves_only_to_internal_addresses_is_refused`.)

    // With the setting, the operator's own provider on loopback works.
    let app = spawn_app_with(|s| s.jwks_private_addresses = true).await;
    tenant_with(&app, &jwks_idp(&format!("{}/jwks.json", srv.base), "")).await;
    let (s, v) = post_as(&app, "acme", &kid_token("idp-rsa-1", 1, "u", t), &body).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
}

//! The web console (`/console`), attacked from the server side: a key of
//! tenant A sees nothing of tenant B through any console URL, a form without
//! the session's CSRF token changes nothing, the session cookie is HttpOnly,
//! SameSite=Strict (Secure behind https) and never holds the key, pages carry
//! a strict CSP, audit keys cannot reach admin pages, revoked keys' sessions
//! end, and sign-ins and exports are audit events. Console pages take the
//! key's `api_key` rate like API calls, show no database text, record the
//! client behind a trusted proxy, and take `Secure` from nobody but a trusted
//! proxy or the operator.

use reqwest::redirect::Policy;
use serde_json::json;
use token_broker::limits::Rate;

use crate::helpers::*;

struct Console {
    client: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

fn key_id(key: &str) -> String {
    key[4..20].to_owned()
}

fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned()
}

fn csrf_in(html: &str) -> String {
    let m = "name=\"csrf\" value=\"";
    let i = html.find(m).expect("a csrf field") + m.len();
    html[i..].split('"').next().unwrap().to_owned()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", urlenc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlenc(s: &str) -> String {
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

/// A broker on a fresh database with `tweak`ed settings.
/// A broker behind a proxy at 127.0.0.1 (the test client), which it trusts.
async fn behind_trusted_proxy() -> TestApp {
    let nets = token_broker::routes::client_addr::parse_trusted_proxies("127.0.0.1/32").unwrap();
    spawn_app_with(move |s| s.trusted_proxies = nets).await
}

/// The overview page, which must answer 200.
async fn overview(c: &Console) -> String {
    let (s, body) = c.get("/console/overview").await;
    assert_eq!(s, 200);
    body
}

/// The sign-in exchange as a browser does it; returns the raw 303 response too.
async fn sign_in_raw(app: &TestApp, key: &str, https: bool) -> reqwest::Response {
    let headers: &[(&str, &str)] = if https {
        &[("x-forwarded-proto", "https")]
    } else {
        &[]
    };
    sign_in_with(app, key, headers).await
}

/// The sign-in exchange with `headers` on both requests (a proxy's, or a
/// client's forgeries).
async fn sign_in_with(app: &TestApp, key: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let c = no_redirects();
    let mut g = c.get(app.url("/console/sign-in"));
    for (k, v) in headers {
        g = g.header(*k, *v);
    }
    let page = g.send().await.unwrap();
    assert_eq!(page.status(), 200);
    let pre = cookie_value(&set_cookie(&page, "tb_console_pre").expect("pre-session cookie"));
    let csrf = csrf_in(&page.text().await.unwrap());
    let mut p = c
        .post(app.url("/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("tb_console_pre={pre}"))
        .body(form(&[("key", key), ("csrf", &csrf)]));
    for (k, v) in headers {
        p = p.header(*k, *v);
    }
    p.send().await.unwrap()
}

async fn sign_in(app: &TestApp, key: &str) -> Console {
    let r = sign_in_raw(app, key, false).await;
    assert_eq!(r.status(), 303, "sign-in accepted");
    let cookie = cookie_value(&set_cookie(&r, "tb_console").expect("session cookie"));
    let mut c = Console {
        client: no_redirects(),
        base: app.addr.clone(),
        cookie,
        csrf: String::new(),
    };
    let (s, body) = c.get("/console/audit").await;
    assert_eq!(s, 200, "{body}");
    c.csrf = csrf_in(&body);
    c
}

impl Console {
    /// GET in the session, the whole response (headers included).
    async fn response(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("tb_console={}", self.cookie))
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.response(path).await;
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("tb_console={}", self.cookie))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// Tenant `globex`: its own video project (api keys 654321/888888).
async fn globex(app: &TestApp) -> String {
    app.create_tenant("globex").await;
    app.provision_secret("globex", "opentok.secret", API_SECRET.as_bytes());
    let p = standard_policy_text("globex", "opentok.secret")
        .replace(API_KEY, "654321")
        .replace(T1_API_KEY, "888888");
    app.apply_policy(&p).await;
    app.create_key("globex", &["issue", "audit", "admin"]).await
}

/// A moderator grant for `user` on a session they own.
async fn moderator_grant(app: &TestApp, key: &str, api_key: &str, user_id: &str) {
    let sid = session_for(api_key, 7);
    let r = app
        .put(
            &format!("/v1/sessions/{sid}"),
            key,
            &json!({"owner": user_id}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (s, v) = app
        .issue(key, &json!({"session_id": sid, "user": user(user_id)}))
        .await;
    assert_eq!((s, v["role"].as_str()), (201, Some("moderator")), "{v}");
}

#[tokio::test]
async fn a_key_of_one_tenant_sees_nothing_of_another_through_any_console_url() {
    let app = spawn_app().await;
    let acme = app.acme().await;
    let gx = globex(&app).await;
    moderator_grant(&app, &acme, API_KEY, "olga-acme").await;
    moderator_grant(&app, &gx, "654321", "boris-globex").await;
    let gx_audit = app.create_key("globex", &["audit"]).await;
    let gx_key_id = key_id(&gx_audit);
    // Refusals in globex with a telltale code and user.
    app.issue(
        &gx,
        &json!({"session_id": session_for("654321", 9), "user": {"id": "boris-banned", "groups": ["banned"]}}),
    )
    .await;

    let c = sign_in(&app, &acme).await;
    let (_, mods) = c.get("/console/moderators").await;
    assert!(mods.contains("olga-acme"), "{mods}");
    // Every page and every event number first (the filter probes below are
    // recorded in acme's own audit, with their text), then the probes.
    let mut pages = vec![
        "/console/overview".to_owned(),
        "/console/moderators".to_owned(),
        "/console/moderators.csv".to_owned(),
        "/console/audit".to_owned(),
        "/console/audit?tenant=globex".to_owned(),
        "/console/policy".to_owned(),
        "/console/keys".to_owned(),
    ];
    for n in 1..=20 {
        pages.push(format!("/console/audit/{n}"));
        pages.push(format!("/console/policy/versions/{n}"));
    }
    pages.extend([
        "/console/moderators?user=boris-globex".to_owned(),
        "/console/moderators.csv?user=boris-globex".to_owned(),
        "/console/audit?user=boris-globex".to_owned(),
        "/console/audit?key_id=".to_owned() + &gx_key_id,
    ]);
    for p in &pages {
        let (status, body) = c.get(p).await;
        if p.contains("boris") || p.contains("key_id") {
            // The filter is echoed in its input; the result must be empty.
            assert!(
                body.contains("id=\"empty\"") || p.contains(".csv"),
                "{p}: {body}"
            );
            assert!(!body.contains("boris-banned"), "{p}: {body}");
            if p.contains(".csv") {
                assert_eq!(body.lines().count(), 1, "only the header: {body}");
            }
            continue;
        }
        for secret in ["boris", "globex", "654321", &gx_key_id] {
            assert!(
                !body.contains(secret),
                "{p} ({status}) shows {secret} of the other tenant: {body}"
            );
        }
    }
    // An acme admin cannot revoke a globex key through the console.
    let (s, body) = c
        .post(
            &format!("/console/keys/{gx_key_id}/revoke"),
            &[("csrf", &c.csrf)],
        )
        .await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(app.get("/v1/whoami", &gx_audit).await.status(), 200);
    // Nor roll back globex's policy: the version it names is acme's own.
    let before = app.store.policy_history("globex").await.unwrap().len();
    c.post(
        "/console/policy/rollback",
        &[("csrf", &c.csrf), ("to", "1")],
    )
    .await;
    assert_eq!(
        app.store.policy_history("globex").await.unwrap().len(),
        before
    );
}

#[tokio::test]
async fn forms_without_the_sessions_csrf_token_change_nothing() {
    let app = spawn_app().await;
    let acme = app.acme().await;
    let victim = app.create_key("acme", &["issue"]).await;
    let victim_id = key_id(&victim);
    let c = sign_in(&app, &acme).await;
    let other = sign_in(&app, &acme).await;
    assert_ne!(c.csrf, other.csrf, "CSRF tokens are per session");
    let keys_before = app.store.list_keys("acme").await.unwrap().len();
    let scopes = [("scope_admin", "1"), ("name", "attacker")];
    for csrf in ["", "0000", other.csrf.as_str()] {
        let mut f = scopes.to_vec();
        f.push(("csrf", csrf));
        let (s, body) = c.post("/console/keys", &f).await;
        assert_eq!(s, 403, "{body}");
        assert!(body.contains("csrf_failed"), "{body}");
        let (s, _) = c
            .post(
                &format!("/console/keys/{victim_id}/revoke"),
                &[("csrf", csrf)],
            )
            .await;
        assert_eq!(s, 403);
        let (s, _) = c
            .post("/console/policy/rollback", &[("csrf", csrf), ("to", "1")])
            .await;
        assert_eq!(s, 403);
        let (s, _) = c.post("/console/sign-out", &[("csrf", csrf)]).await;
        assert_eq!(s, 403);
    }
    assert_eq!(
        app.store.list_keys("acme").await.unwrap().len(),
        keys_before
    );
    assert_eq!(app.get("/v1/whoami", &victim).await.status(), 200);
    assert_eq!(app.store.policy_history("acme").await.unwrap().len(), 1);
    assert_eq!(c.get("/console/overview").await.0, 200, "still signed in");

    // Login CSRF: a sign-in post without the pre-session cookie's token.
    let r = no_redirects()
        .post(app.url("/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("key", &acme), ("csrf", "forged")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "tb_console").is_none());

    // With the right token the same forms work.
    let (s, body) = c
        .post(
            "/console/keys",
            &[("scope_audit", "1"), ("name", "ok"), ("csrf", &c.csrf)],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("id=\"new-key\">tkb_"), "{body}");
    let (s, _) = c
        .post(
            &format!("/console/keys/{victim_id}/revoke"),
            &[("csrf", &c.csrf)],
        )
        .await;
    assert_eq!(s, 303);
    assert_eq!(app.get("/v1/whoami", &victim).await.status(), 401);
}

#[tokio::test]
async fn the_session_cookie_is_locked_down_and_never_holds_the_key() {
    // Behind a trusted TLS proxy, which says https in X-Forwarded-Proto.
    let app = behind_trusted_proxy().await;
    let acme = app.acme().await;
    let r = sign_in_raw(&app, &acme, false).await;
    let c = set_cookie(&r, "tb_console").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(c.contains(flag), "{c}");
    }
    assert!(!c.contains("Secure"), "plain http: {c}");
    let secret = &acme[21..];
    assert!(!c.contains(secret) && !c.contains(&acme), "{c}");
    assert_eq!(cookie_value(&c).len(), 64, "256 random bits");
    let r = sign_in_raw(&app, &acme, true).await;
    let c = set_cookie(&r, "tb_console").unwrap();
    assert!(
        c.contains("; Secure"),
        "behind https, as the proxy says: {c}"
    );

    let console = sign_in(&app, &acme).await;
    let r = console.response("/console/overview").await;
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = r.text().await.unwrap();
    assert!(!body.contains(secret), "the key is not echoed in pages");
    assert!(!body.contains("<script>"), "no inline scripts");

    // Sign-out ends the session on the server, not just in the browser.
    let (s, _) = console
        .post("/console/sign-out", &[("csrf", &console.csrf)])
        .await;
    assert_eq!(s, 303);
    assert_eq!(console.get("/console/overview").await.0, 303);
    // A made-up session id is no session.
    let forged = Console {
        cookie: "a".repeat(64),
        ..console
    };
    assert_eq!(forged.get("/console/moderators").await.0, 303);
}

#[tokio::test]
async fn scopes_hold_in_the_console_and_revoked_keys_lose_their_sessions() {
    let app = spawn_app().await;
    let _admin = app.acme().await;
    let auditor = app.create_key("acme", &["audit"]).await;
    let issuer = app.create_key("acme", &["issue"]).await;

    let r = sign_in_raw(&app, &issuer, false).await;
    assert_eq!(r.status(), 403, "an issue-only key cannot sign in");
    assert!(set_cookie(&r, "tb_console").is_none());
    let r = sign_in_raw(&app, "tkb_nope.nope", false).await;
    assert!(set_cookie(&r, "tb_console").is_none());
    assert_eq!(r.status(), 401);

    let c = sign_in(&app, &auditor).await;
    for p in [
        "/console/keys",
        "/console/policy",
        "/console/policy/versions/1",
    ] {
        let (s, body) = c.get(p).await;
        assert_eq!(s, 403, "{p}");
        assert!(body.contains("insufficient_scope"), "{body}");
    }
    let before = app.store.list_keys("acme").await.unwrap().len();
    let (s, _) = c
        .post("/console/keys", &[("scope_admin", "1"), ("csrf", &c.csrf)])
        .await;
    assert_eq!(s, 403);
    assert_eq!(app.store.list_keys("acme").await.unwrap().len(), before);

    // Revoked through the API: the console session ends at once.
    let admin = app.create_key("acme", &["admin"]).await;
    let auditor_id = &key_id(&auditor);
    let r = app.delete(&format!("/v1/keys/{auditor_id}"), &admin).await;
    assert_eq!(r.status(), 200);
    assert_eq!(c.get("/console/moderators").await.0, 303);
}

#[tokio::test]
async fn sign_ins_and_exports_are_audit_events() {
    let app = spawn_app().await;
    let acme = app.acme().await;
    moderator_grant(&app, &acme, API_KEY, "olga").await;
    let c = sign_in(&app, &acme).await;
    let v = app.audit(&acme, "kind=console_sign_in").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    let r = c.response("/console/moderators.csv?user=olga").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let csv = r.text().await.unwrap();
    assert_eq!(csv.lines().count(), 2, "header and olga's grant: {csv}");
    assert!(csv.contains(",olga,"), "{csv}");
    let v = app.audit(&acme, "kind=audit_read").await;
    assert!(
        v["items"].as_array().unwrap().iter().any(|r| r["detail"]
            .as_str()
            .unwrap_or("")
            .contains("\"csv\"")
            && r["detail"].as_str().unwrap_or("").contains("moderators")),
        "{v}"
    );
}

#[tokio::test]
async fn a_dry_run_applies_nothing_and_a_rollback_needs_the_confirmation_form() {
    let app = spawn_app().await;
    let acme = app.acme().await;
    let v1 = app.standard_policy("acme");
    let v2 = v1.replace("max_ttl = \"8h\"", "max_ttl = \"6h\"");
    app.apply_policy(&v2).await;
    let c = sign_in(&app, &acme).await;
    let v3 = v1.replace("max_ttl = \"8h\"", "max_ttl = \"3h\"");
    let (s, body) = c
        .post(
            "/console/policy/dry-run",
            &[("csrf", &c.csrf), ("source", &v3)],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("Nothing was applied"), "{body}");
    // askama writes `"` as the numeric entity.
    assert!(body.contains("+max_ttl = &#34;3h&#34;"), "{body}");
    assert_eq!(app.store.policy_history("acme").await.unwrap().len(), 2);
    // A policy naming another tenant is refused, not applied to it.
    let (_, body) = c
        .post(
            "/console/policy/dry-run",
            &[
                ("csrf", &c.csrf),
                ("source", &standard_policy_text("globex", "x")),
            ],
        )
        .await;
    assert!(body.contains("id=\"error-code\""), "{body}");
    // GET only asks; the POST with the token rolls back.
    let (s, body) = c.get("/console/policy/rollback?to=1").await;
    assert_eq!(s, 200);
    assert!(body.contains("Yes, roll back to v1"), "{body}");
    assert_eq!(app.store.policy_history("acme").await.unwrap().len(), 2);
    let (s, _) = c
        .post(
            "/console/policy/rollback",
            &[("csrf", &c.csrf), ("to", "1")],
        )
        .await;
    assert_eq!(s, 303);
    let cur = app.store.current_policy("acme").await.unwrap().unwrap();
    assert_eq!(
        (cur.version, cur.source.contains("max_ttl = \"8h\"")),
        (3, true)
    );
}

#[tokio::test]
async fn event_pages_offer_an_inclusion_proof_and_the_overview_checks_the_signed_checkpoint() {
    use token_broker::audit::checkpoint::SigningKey;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("checkpoint.key");
    let verifier = SigningKey::generate(&key_path, "test-broker")
        .unwrap()
        .verifier();
    let app = spawn_app_with(move |s| {
        s.checkpoint_key_file = Some(key_path);
        s.checkpoint_interval = std::time::Duration::from_secs(3600);
        s.checkpoint_every_rows = u64::MAX;
    })
    .await;
    let acme = app.acme().await;
    let globex_key = globex(&app).await;
    moderator_grant(&app, &acme, API_KEY, "ann").await;
    // The broker signs a checkpoint covering the grant.
    let r = app.get("/v1/audit/checkpoint", &acme).await;
    assert_eq!(r.status(), 200);
    let c = sign_in(&app, &acme).await;
    let body = overview(&c).await;
    assert!(
        body.contains("matches the latest signed checkpoint"),
        "{body}"
    );
    let grant = app.audit(&acme, "kind=token_issued").await["items"][0].clone();
    let seq = grant["seq"].as_i64().unwrap();
    let (s, body) = c.get(&format!("/console/audit/{seq}")).await;
    assert_eq!(s, 200);
    assert!(
        body.contains(&format!("/console/audit/{seq}/proof")),
        "{body}"
    );
    let (s, proof) = c.get(&format!("/console/audit/{seq}/proof")).await;
    assert_eq!(s, 200, "{proof}");
    let v: serde_json::Value = serde_json::from_str(&proof).unwrap();
    assert_eq!(v["leaf_index"], seq - 1, "{v}");
    assert!(token_broker::audit::checkpoint::verify_proof(&proof, &verifier).is_ok());
    // Another tenant's session finds no such proof (its seq numbers are its own history).
    let g = sign_in(&app, &globex_key).await;
    let (s, _) = g.get("/console/audit/999/proof").await;
    assert_eq!(s, 404);
    // Without a checkpoint key there is no proof to give, said plainly.
    let plain = spawn_app().await;
    let key = plain.acme().await;
    moderator_grant(&plain, &key, API_KEY, "ann").await;
    let c = sign_in(&plain, &key).await;
    let (s, body) = c.get("/console/audit/1/proof").await;
    assert_eq!(s, 404);
    assert!(body.contains("checkpoints_disabled"), "{body}");
}

#[tokio::test]
async fn a_dry_run_shows_what_the_policy_would_have_decided_last_week() {
    let app = spawn_app().await;
    let acme = app.acme().await;
    moderator_grant(&app, &acme, API_KEY, "ann").await;
    let c = sign_in(&app, &acme).await;
    // The owner rule no longer grants moderator.
    let proposed = app.standard_policy("acme").replace(
        "roles = [\"subscriber\", \"publisher\", \"publisheronly\", \"moderator\"]\ndefault_role = \"moderator\"",
        "roles = [\"subscriber\", \"publisher\", \"publisheronly\"]\ndefault_role = \"publisher\"",
    );
    assert_ne!(proposed, app.standard_policy("acme"));
    let (s, body) = c
        .post(
            "/console/policy/dry-run",
            &[("csrf", &c.csrf), ("source", &proposed)],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("id=\"replay-summary\""), "{body}");
    assert!(
        body.contains("1 recorded request(s) decided again"),
        "{body}"
    );
    assert!(
        body.contains("<td><code>role_lowered</code></td><td>1</td><td>ann (1)</td>"),
        "{body}"
    );
}

/// D5: `Secure` is the operator's decision (a trusted proxy's report of
/// https, or `console_secure_cookies`), never the client's. A client that
/// talks to the broker directly and claims https gets no `Secure`; an
/// operator whose TLS proxy sends no X-Forwarded-Proto forces it.
#[tokio::test]
async fn a_client_cannot_choose_the_secure_flag_and_the_operator_can_force_it() {
    let app = spawn_app().await;
    let acme = app.acme().await;
    for forged in [
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=203.0.113.7;proto=https"),
    ] {
        let r = sign_in_with(&app, &acme, &[forged]).await;
        assert_eq!(r.status(), 303);
        for name in ["tb_console", "tb_console_pre"] {
            let c = set_cookie(&r, name).unwrap();
            assert!(
                !c.contains("Secure"),
                "{forged:?} from an untrusted peer: {c}"
            );
        }
    }

    let forced = spawn_app_with(|s| s.console_secure_cookies = true).await;
    let acme = forced.acme().await;
    let r = sign_in_raw(&forced, &acme, false).await;
    assert_eq!(r.status(), 303);
    for name in ["tb_console", "tb_console_pre"] {
        let c = set_cookie(&r, name).unwrap();
        assert!(c.contains("; Secure"), "forced by the setting: {c}");
    }
}

/// D1 (the rate limit): an auditor that reloads a console page in a loop
/// spends its key's `api_key` tokens like API calls do, and is refused with
/// 429 `rate_limited` and Retry-After once they are gone; the API and a new
/// sign-in with that key share the same bucket.
#[tokio::test]
async fn console_pages_take_the_keys_api_key_rate_like_api_calls() {
    let app = spawn_frozen(|s| {
        s.rates.api_key = Rate {
            per_second: 1,
            burst: 3,
        };
    })
    .await;
    let acme = app.acme().await;
    // Two tokens: the sign-in and the page `sign_in` loads after it.
    let c = sign_in(&app, &acme).await;
    assert_eq!(c.get("/console/overview").await.0, 200, "the third");
    let r = c.response("/console/overview").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("<code id=\"error-code\">rate_limited</code>"),
        "{body}"
    );
    assert_eq!(c.get("/console/audit/1/proof").await.0, 429);
    assert_eq!(
        app.get("/v1/whoami", &acme).await.status(),
        429,
        "one bucket"
    );
    let r = sign_in_raw(&app, &acme, false).await;
    assert_eq!(r.status(), 429, "a fresh sign-in takes a token too");
    assert!(set_cookie(&r, "tb_console").is_none());
    // Another key of the tenant has its own bucket, as in the API.
    let other = app.create_key("acme", &["audit"]).await;
    assert_eq!(app.get("/v1/whoami", &other).await.status(), 200);
}

/// A broker that signs checkpoints (so the overview checks the signed one and
/// event pages offer proofs).
async fn checkpointing_app() -> (TestApp, tempfile::TempDir) {
    use token_broker::audit::checkpoint::SigningKey;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("checkpoint.key");
    SigningKey::generate(&key_path, "test-broker").unwrap();
    let app = spawn_app_with(move |s| {
        s.checkpoint_key_file = Some(key_path);
        s.checkpoint_interval = std::time::Duration::from_secs(3600);
        s.checkpoint_every_rows = u64::MAX;
    })
    .await;
    (app, dir)
}

/// D3: a database fault (here a table dropped under the broker) is shown in
/// the console as the API words it, never with the database's text, and the
/// overview says the chain could not be checked, not that it is broken.
#[tokio::test]
async fn console_pages_show_no_database_text_and_no_false_tamper_alarm() {
    let (app, _dir) = checkpointing_app().await;
    let acme = app.acme().await;
    moderator_grant(&app, &acme, API_KEY, "ann").await;
    assert_eq!(app.get("/v1/audit/checkpoint", &acme).await.status(), 200);
    let seq = app.audit(&acme, "kind=token_issued").await["items"][0]["seq"]
        .as_i64()
        .unwrap();
    let c = sign_in(&app, &acme).await;
    let body = overview(&c).await;
    assert!(
        body.contains("matches the latest signed checkpoint"),
        "{body}"
    );

    raw_sql(&app, "DROP TABLE audit_prunes").await;
    let leaks = [
        "database error",
        "no such table",
        "does not exist",
        "relation",
        "audit_prunes",
        "sqlx",
        "does NOT verify",
    ];
    let (s, body) = c.get("/console/overview").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("could not be checked now"), "{body}");
    assert!(body.contains("the database is unavailable"), "{body}");
    for leak in leaks {
        assert!(!body.contains(leak), "the overview shows {leak:?}: {body}");
    }
    let (s, body) = c.get(&format!("/console/audit/{seq}/proof")).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    for leak in leaks {
        assert!(
            !body.contains(leak),
            "the proof page shows {leak:?}: {body}"
        );
    }
}

/// D4: console sign-ins and reads are audited under the client's address as
/// the API records it: the forwarded client behind a trusted proxy (the
/// rightmost untrusted hop), the TCP peer otherwise.
#[tokio::test]
async fn console_audit_rows_record_the_client_behind_a_trusted_proxy() {
    let app = behind_trusted_proxy().await;
    let acme = app.acme().await;
    let r = sign_in_with(&app, &acme, &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(r.status(), 303);
    let cookie = cookie_value(&set_cookie(&r, "tb_console").unwrap());
    // A read from another client, which forged a hop on the left.
    let r = no_redirects()
        .get(app.url("/console/moderators"))
        .header("cookie", format!("tb_console={cookie}"))
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = app.audit(&acme, "kind=console_sign_in").await;
    assert_eq!(v["items"][0]["client_addr"], "203.0.113.7", "{v}");
    let v = app.audit(&acme, "kind=audit_read").await;
    let read = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["detail"].as_str().unwrap_or("").contains("moderators"))
        .unwrap_or_else(|| panic!("no console read row: {v}"));
    assert_eq!(read["client_addr"], "198.51.100.9", "{read}");

    // Without trusted proxies the header is the client's own claim: ignored.
    let plain = spawn_app().await;
    let acme = plain.acme().await;
    let r = sign_in_with(&plain, &acme, &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(r.status(), 303);
    let v = plain.audit(&acme, "kind=console_sign_in").await;
    assert_eq!(v["items"][0]["client_addr"], "127.0.0.1", "{v}");
}

/// Anyone can post the sign-in form (its CSRF token is free): a key field of
/// the right length in bytes with a character across the key id's end used
/// to panic the handler (and print the text to stderr, unescaped). It is a
/// wrong key like any other: refused with 401.
#[tokio::test]
async fn a_sign_in_key_with_a_character_across_the_id_is_refused_not_a_panic() {
    let app = spawn_app().await;
    let key = format!("tkb_abcdefghijklmno\u{e9}{}", "a".repeat(64));
    let r = sign_in_raw(&app, &key, false).await;
    assert_eq!(r.status(), 401);
    let body = r.text().await.unwrap();
    assert!(body.contains("invalid_credentials"), "{body}");
}

//! `serve --dev`: the demo's first tokens go through the real issuance
//! pipeline, so the console's overview is not empty from a fresh clone.

use token_broker::audit::kind;
use token_broker::store::AuditFilter;

use crate::helpers::spawn_app;

async fn token_events(app: &crate::helpers::TestApp) -> Vec<token_broker::audit::AuditRow> {
    let mut rows = app
        .store
        .query_audit(&AuditFilter {
            tenant: "demo".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    rows.retain(|r| r.kind == kind::TOKEN_ISSUED || r.kind == kind::TOKEN_REFUSED);
    rows.sort_by_key(|r| r.seq);
    rows
}

#[tokio::test]
async fn a_fresh_dev_start_issues_the_demos_first_tokens_once() {
    let app = spawn_app().await;
    let settings = app.app_state.settings.clone();
    token_broker::dev::seed(&settings, &app.store)
        .await
        .unwrap();
    app.app_state.reload_policy("demo").await.unwrap();
    let now = token_broker::clock::now_unix_ms();

    let made = token_broker::dev::first_tokens(&app.app_state, now)
        .await
        .unwrap();
    assert_eq!(made, 3);
    let rows = token_events(&app).await;
    let seen: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.kind.as_str(),
                r.user_id.as_deref(),
                r.granted_role.as_deref(),
                r.rule.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                kind::TOKEN_ISSUED,
                Some("alice"),
                Some("moderator"),
                Some("hosts-moderate")
            ),
            (
                kind::TOKEN_ISSUED,
                Some("bob"),
                Some("publisher"),
                Some("everyone")
            ),
            (kind::TOKEN_REFUSED, Some("mallory"), None, None),
        ]
    );
    // The refusal is a real one: the demo tenant does not own that project.
    assert_eq!(rows[2].code.as_deref(), Some("session_not_owned"));
    // Issued by the dev key, through the audited pipeline (the chain verifies).
    assert!(rows.iter().all(|r| r.key_id.is_some()));
    let v = token_broker::cli_audit::verify_tenant(&app.store, "demo", None)
        .await
        .unwrap();
    assert!(v.ok);

    // A restart (a new dev key) adds nothing: only a demo without token
    // requests gets first tokens.
    token_broker::dev::seed(&settings, &app.store)
        .await
        .unwrap();
    let again = token_broker::dev::first_tokens(&app.app_state, now + 1000)
        .await
        .unwrap();
    assert_eq!(again, 0);
    assert_eq!(token_events(&app).await.len(), 3);
}

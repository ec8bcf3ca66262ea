//! Development mode (`token-broker serve --dev`): seeds a demo tenant so a
//! newcomer can issue a real token right after starting the broker. It is
//! loud about itself and never runs without the flag.
//!
//! What it does, idempotently: creates tenant `demo`; on first start writes a
//! random OpenTok API secret to `<data dir>/dev/demo-opentok.secret` (mode
//! 0600, referenced from the policy as `file:`, as production secrets are) and
//! applies `policies/demo` rules; at every start revokes the demo keys of
//! earlier starts (so a key left in an old terminal or log stops working),
//! mints a fresh API key (scopes issue, audit, admin) and prints it once with
//! ready-to-paste commands.

use std::io::Write;

use crate::admin::{self, Actor};
use crate::auth::Scopes;
use crate::cli::Failure;
use crate::settings::Settings;
use crate::store::Store;

/// The demo project's API key (not a real Vonage project).
pub const DEMO_API_KEY: &str = "100001";

/// A session ID that belongs to the demo credential.
pub fn demo_session_id() -> String {
    use base64::Engine;
    let raw = format!("1~{DEMO_API_KEY}~~1764000000000~token-broker-demo~");
    format!(
        "1_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

fn demo_policy(secret_path: &std::path::Path) -> String {
    format!(
        r#"# Demo tenant seeded by `token-broker serve --dev`. Not for production.
tenant = "demo"
description = "Development demo"

[[credentials]]
name = "demo"
provider = "opentok"
api_key = "{DEMO_API_KEY}"
api_secret = "file:{}"
token_format = "jwt"

[defaults]
role = "publisher"
ttl = "1h"

[[rules]]
id = "hosts-moderate"
priority = 10
subjects = ["group:hosts"]
sessions = ["*"]
roles = ["subscriber", "publisher", "moderator"]
max_ttl = "8h"

[[rules]]
id = "everyone"
priority = 100
subjects = ["*"]
sessions = ["*"]
roles = ["subscriber", "publisher"]
max_ttl = "2h"
on_role_excess = "downgrade"
default_role = "publisher"
"#,
        secret_path.display()
    )
}

/// The name of the keys `seed` mints (and revokes at the next start).
pub const DEV_KEY_NAME: &str = "dev";

/// Seeds the demo tenant; returns the fresh demo API key.
pub async fn seed(settings: &Settings, store: &Store) -> Result<String, Failure> {
    let now = crate::clock::now_unix_ms();
    if !store.tenant_exists("demo").await? {
        admin::create_tenant(store, "demo", &Actor::Cli, now).await?;
    }
    let dir = settings.data_dir.join("dev");
    std::fs::create_dir_all(&dir)?;
    let secret_path = std::fs::canonicalize(&dir)?.join("demo-opentok.secret");
    if !secret_path.exists() {
        let mut b = [0u8; 20];
        getrandom::fill(&mut b).map_err(|e| Failure {
            message: format!("OS RNG failed: {e}"),
            code: 1,
        })?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&secret_path)?;
        f.write_all(crate::audit::chain::hex(&b).as_bytes())?;
    }
    if store.current_policy("demo").await?.is_none() {
        admin::apply_policy(
            store,
            "demo.toml",
            &demo_policy(&secret_path),
            None,
            false,
            &Actor::Cli,
            Some("seeded by --dev"),
            now,
        )
        .await?;
    }
    for old in store.list_keys("demo").await? {
        if old.revoked_at_ms.is_none() && old.name.as_deref() == Some(DEV_KEY_NAME) {
            admin::revoke_key(store, &old.key_id, Some("demo"), &Actor::Cli, now).await?;
        }
    }
    let key = admin::create_key(
        store,
        "demo",
        Scopes::ISSUE.union(Scopes::AUDIT).union(Scopes::ADMIN),
        Some(DEV_KEY_NAME.into()),
        &Actor::Cli,
        now,
    )
    .await?;
    let sid = demo_session_id();
    let addr = settings.listen;
    eprintln!(
        "\n*** DEVELOPMENT MODE: demo tenant `demo` (OpenTok api key {DEMO_API_KEY}, not a real project) ***\n\
         A fresh demo API key (shown once; scopes issue, audit, admin):\n\n\
         export TB_KEY={key}\n\n\
         Issue a token:\n\n\
         curl -s -X POST http://{addr}/v1/tokens -H \"Authorization: Bearer $TB_KEY\" -H 'Content-Type: application/json' \\\n  \
         -d '{{\"session_id\":\"{sid}\",\"user\":{{\"id\":\"alice\",\"name\":\"Alice\"}}}}'\n\n\
         See its audit row:\n\n\
         curl -s \"http://{addr}/v1/audit?kind=token_issued\" -H \"Authorization: Bearer $TB_KEY\"\n",
        key = key.key
    );
    Ok(key.key)
}

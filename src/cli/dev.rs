//! Development mode (`token-broker serve --dev`): seeds a demo tenant so a
//! newcomer can issue a real token right after starting the broker. It is
//! loud about itself and never runs without the flag.
//!
//! What it does, idempotently: creates a master keyring `<data dir>/master.key`
//! (0600) unless `master_key_file` is set; creates an audit checkpoint key
//! `<data dir>/checkpoint.key` (0600) unless `checkpoint_key_file` is set; creates tenant `demo`; on first
//! start writes a random OpenTok API secret to
//! `<secrets_dir>/demo/opentok.secret` (mode 0600, referenced from the policy
//! as `file:opentok.secret`, inside the demo tenant's namespace, as production
//! secrets are) and applies the demo rules; at every start revokes the demo
//! keys of earlier starts (so a key left in an old terminal or log stops
//! working), mints a fresh API key (scopes issue, audit, admin) and prints it
//! once with ready-to-paste commands.
//!
//! Once the broker is built (`first_tokens`), a demo tenant that has never
//! had a token request gets its first tokens through the real issuance
//! pipeline (decision, signing, durable audit), so the console's overview,
//! moderator list and refusals are not empty from a fresh clone: a moderator
//! for a `hosts` member, a publisher, and one refusal.

use std::io::Write;

use super::output::Failure;
use crate::admin::{self, Actor};
use crate::auth::Scopes;
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

/// The demo secret's file name inside the demo tenant's secrets namespace.
const DEMO_SECRET_FILE: &str = "opentok.secret";

/// Development mode keeps a master keyring in the data directory (0600), so
/// stored credentials work out of the box; production sets `master_key_file`.
pub fn ensure_master_key(settings: &mut Settings) -> Result<(), Failure> {
    if settings.master_key_file.is_none() {
        std::fs::create_dir_all(&settings.data_dir)?;
        let path = settings.data_dir.join("master.key");
        if !path.exists() {
            let id = crate::secrets::Keyring::generate(&path)?;
            eprintln!(
                "development mode: created master key {id} at {}",
                path.display()
            );
        }
        settings.master_key_file = Some(path);
    }
    Ok(())
}

/// Development mode also signs audit checkpoints: a key in the data directory
/// (`checkpoint.key`, 0600) unless `checkpoint_key_file` is set, and a
/// checkpoint file `checkpoints.log` beside it unless `checkpoint_file` is set.
/// (Production keeps both outside the broker's data directory and database.)
pub fn ensure_checkpoint_key(settings: &mut Settings) -> Result<(), Failure> {
    if settings.checkpoint_key_file.is_none() {
        std::fs::create_dir_all(&settings.data_dir)?;
        let path = settings.data_dir.join("checkpoint.key");
        if !path.exists() {
            let key = crate::audit::checkpoint::SigningKey::generate(&path, "token-broker-dev")
                .map_err(|e| Failure {
                    message: e.to_string(),
                    code: 1,
                })?;
            eprintln!(
                "development mode: created checkpoint key at {} (verifier key {})",
                path.display(),
                key.verifier()
            );
        }
        settings.checkpoint_key_file = Some(path);
    }
    if settings.checkpoint_file.is_none() {
        settings.checkpoint_file = Some(settings.data_dir.join("checkpoints.log"));
    }
    Ok(())
}

fn demo_policy() -> String {
    format!(
        r#"# Demo tenant seeded by `token-broker serve --dev`. Not for production.
tenant = "demo"
description = "Development demo"

[[credentials]]
name = "demo"
provider = "opentok"
api_key = "{DEMO_API_KEY}"
api_secret = "file:{DEMO_SECRET_FILE}"
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
"#
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
    // The demo secret lives in the demo tenant's namespace, as an operator
    // would provision it: <secrets_dir>/demo/opentok.secret, mode 0600.
    let dir = settings.secrets_dir.join("demo");
    std::fs::create_dir_all(&dir)?;
    let secret_path = dir.join(DEMO_SECRET_FILE);
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
    // Seed the demo policy, or replace one from before secrets were confined
    // to tenant namespaces (it named an absolute path).
    let current = store.current_policy("demo").await?;
    if current.is_none_or(|c| c.source.contains("file:/")) {
        admin::apply_policy(
            store,
            &super::output::secret_resolver(settings),
            "demo.toml",
            &demo_policy(),
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
        None,
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
         curl -s \"http://{addr}/v1/audit?kind=token_issued\" -H \"Authorization: Bearer $TB_KEY\"\n\n\
         Or open the web console and sign in with the key above:\n\n\
         http://{addr}/console\n",
        key = key.key
    );
    Ok(key.key)
}

/// The demo project's sessions are `demo_session_id()`; this one belongs to
/// a video project the demo tenant does not own, so requests for it are
/// refused (and audited).
pub fn foreign_session_id() -> String {
    use base64::Engine;
    format!(
        "1_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode("1~999999~~1764000000000~elsewhere~")
    )
}

/// Issues the demo's first tokens through `broker::handle` (policy decision,
/// signing, durable audit), as the demo key `seed` minted, unless the demo
/// tenant has had a token request before (a restart adds nothing). Returns
/// how many requests were made. Development mode only: `serve --dev` calls
/// it after building the application.
pub async fn first_tokens(state: &crate::state::AppState, now_ms: i64) -> Result<usize, Failure> {
    use crate::audit::kind;
    use crate::auth::Caller;
    use crate::broker::{self, Call, Mode, TokenRequest, UserBody};
    for k in [kind::TOKEN_ISSUED, kind::TOKEN_REFUSED] {
        let seen = state
            .store
            .query_audit(&crate::store::AuditFilter {
                tenant: "demo".into(),
                kind: Some(k.into()),
                limit: 1,
                ..Default::default()
            })
            .await?;
        if !seen.is_empty() {
            return Ok(0);
        }
    }
    let Some(key) = state
        .store
        .list_keys("demo")
        .await?
        .into_iter()
        .find(|k| k.revoked_at_ms.is_none() && k.name.as_deref() == Some(DEV_KEY_NAME))
    else {
        return Ok(0);
    };
    let caller = Call {
        tenant: "demo".into(),
        who: Caller::AppKey { key_id: key.key_id },
        client_addr: None,
        user_agent: Some("token-broker serve --dev (demo's first tokens)".into()),
        request_id: None,
    };
    let ask = |session_id: String, id: &str, groups: &[&str], role: Option<&str>| TokenRequest {
        session_id,
        user: Some(UserBody {
            id: id.into(),
            name: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }),
        role: role.map(str::to_owned),
        ttl: None,
        expire_time: None,
        data: None,
        initial_layout_class_list: None,
    };
    // (request, should it be issued?)
    let requests = [
        (
            ask(demo_session_id(), "alice", &["hosts"], Some("moderator")),
            true,
        ),
        (ask(demo_session_id(), "bob", &[], None), true),
        (ask(foreign_session_id(), "mallory", &[], None), false),
    ];
    let n = requests.len();
    for (req, issue) in requests {
        let out = broker::handle(state, &caller, &req, Mode::Issue, now_ms).await;
        match (out, issue) {
            (Ok(_), true) | (Err(_), false) => {}
            (Ok(_), false) => eprintln!(
                "development mode: the demo request for {} was expected to be refused but was issued",
                req.session_id
            ),
            (Err(broker::IssueError::Refused(r)), true) => eprintln!(
                "development mode: a demo token could not be issued: {} ({})",
                r.code, r.message
            ),
            (Err(e), true) => eprintln!("development mode: a demo token could not be issued: {e}"),
        }
    }
    eprintln!(
        "development mode: issued the demo's first tokens (a moderator for alice of `hosts`, a publisher for bob, \
         one refusal) so the console's overview is not empty\n"
    );
    Ok(n)
}

//! The real binary: SIGKILL mid-issuance loses no audit row of a token a
//! client received; SIGTERM drains gracefully; logs never carry secrets or
//! tokens; the command line manages keys, policies and tokens.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use token_broker::store::{AuditFilter, Store};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_token-broker");

struct Broker {
    dir: tempfile::TempDir,
    url: String,
    _db: TestDb,
}

impl Broker {
    async fn new() -> Broker {
        let (url, db) = fresh_database().await;
        Broker {
            dir: tempfile::tempdir().unwrap(),
            url,
            _db: db,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("TOKEN_BROKER_DATABASE_URL", &self.url)
            .env("TOKEN_BROKER_DATA_DIR", self.dir.path())
            .env_remove("TOKEN_BROKER_LISTEN")
            .env_remove("RUST_LOG");
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run token-broker");
        assert!(
            out.status.success(),
            "token-broker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Tenant acme with the standard policy, and an issue+audit key.
    fn setup(&self) -> String {
        // The operator provisions the secret in acme's namespace (<data dir>/secrets/acme/).
        let ns = self.dir.path().join("secrets/acme");
        std::fs::create_dir_all(&ns).unwrap();
        std::fs::write(ns.join("opentok.secret"), API_SECRET).unwrap();
        let policy = self.dir.path().join("acme.toml");
        std::fs::write(&policy, standard_policy_text("acme", "opentok.secret")).unwrap();
        self.run(&["tenant", "create", "acme"]);
        self.run(&["policy", "apply", policy.to_str().unwrap()]);
        let v: Value = serde_json::from_str(&self.run(&[
            "key", "create", "--tenant", "acme", "--scope", "issue", "--scope", "audit", "--json",
        ]))
        .unwrap();
        v["key"].as_str().unwrap().to_owned()
    }

    fn serve(&self, port: u16, log: &std::path::Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        self.cmd()
            .args(["serve"])
            .env("TOKEN_BROKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("TOKEN_BROKER_LOG", "trace,sqlx=debug,h2=info,hyper=info")
            .env("TOKEN_BROKER_WORKERS", "2")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn serve")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let start = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "broker did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigkill_mid_load_loses_no_audit_row_of_a_returned_token() {
    let b = Broker::new().await;
    let key = b.setup();
    let port = free_port();
    let log = b.dir.path().join("broker.log");
    let mut child = b.serve(port, &log);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;

    let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16u32 {
        let (client, base, key, received) =
            (client.clone(), base.clone(), key.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let body = json!({"session_id": session_for(API_KEY, w), "user": user(&format!("w{w}-{i}"))});
                let Ok(r) = client.post(format!("{base}/v1/tokens")).bearer_auth(&key).json(&body).send().await else { break };
                if r.status() != 201 {
                    break;
                }
                let Ok(v) = r.json::<Value>().await else { break };
                received.lock().unwrap().push((v["token_id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned()));
            }
        }));
    }
    // Let load build up, then kill without warning.
    let start = Instant::now();
    while received.lock().unwrap().len() < 300 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let received = received.lock().unwrap().clone();
    assert!(
        received.len() >= 100,
        "only {} tokens before the kill",
        received.len()
    );

    // Restart on the same database; every received token has its row.
    let port2 = free_port();
    let mut child2 = b.serve(port2, &log);
    wait_healthy(&client, &format!("http://127.0.0.1:{port2}")).await;
    let store = Store::connect(&b.url).await.unwrap();
    for (token_id, token) in &received {
        let rows = store
            .query_audit(&AuditFilter {
                tenant: "acme".into(),
                token_id: Some(token_id.clone()),
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            rows.len(),
            1,
            "token {token_id} was returned but has no audit row"
        );
        assert_eq!(
            rows[0].token_sha256.as_deref(),
            Some(token_broker::audit::chain::fingerprint(token).as_str())
        );
    }
    let v = token_broker::cli_audit::verify_tenant(&store, "acme", None)
        .await
        .unwrap();
    assert!(v.ok, "{v:?}");
    assert!(v.rows as usize >= received.len() + 3);

    // SIGTERM: graceful stop, exit status 0.
    Command::new("kill")
        .args(["-TERM", &child2.id().to_string()])
        .status()
        .unwrap();
    let status = child2.wait().unwrap();
    assert!(status.success(), "graceful shutdown exit status {status:?}");

    // Nothing secret reached the logs, though they were at trace level.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("token-broker listening"),
        "logs were captured"
    );
    assert!(
        !logs.contains(&key[key.len() - 64..]),
        "API key secret in logs"
    );
    assert!(!logs.contains(API_SECRET), "OpenTok secret in logs");
    for (_, token) in received.iter().take(50) {
        let sig = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(sig), "a token reached the logs");
    }
}

#[tokio::test]
async fn cli_created_key_works_and_a_revoked_key_stops_within_a_second() {
    let b = Broker::new().await;
    let key = b.setup();
    let port = free_port();
    let log = b.dir.path().join("broker.log");
    let mut child = b.serve(port, &log);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let who: Value = client
        .get(format!("{base}/v1/whoami"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_id = who["key_id"].as_str().unwrap();
    b.run(&["key", "revoke", key_id]);
    let start = Instant::now();
    loop {
        let r = client
            .get(format!("{base}/v1/whoami"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "revoked key still accepted after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let listing: Value =
        serde_json::from_str(&b.run(&["key", "list", "--tenant", "acme", "--json"])).unwrap();
    assert!(listing["items"][0]["revoked_at_ms"].is_number());
    let verify: Value = serde_json::from_str(&b.run(&["audit", "verify", "--json"])).unwrap();
    assert_eq!(verify["ok"], true);
    assert!(verify["rows"].as_u64().unwrap() >= 4);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn the_cli_checks_tests_applies_diffs_and_rolls_back_policies_and_inspects_tokens() {
    let b = Broker::new().await;
    let key = b.setup();
    let policy = b.dir.path().join("acme.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    // check: ok, and a broken file fails with its location
    b.run(&["policy", "check", policy.to_str().unwrap()]);
    let broken = b.dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        text.replace("max_ttl = \"2h\"", "max_ttl = \"90d\""),
    )
    .unwrap();
    let out = b
        .cmd()
        .args(["policy", "check", broken.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("broken.toml:") && stdout.contains("max_ttl") && stdout.contains("30"),
        "{stdout}"
    );

    // dry run shows the diff and applies nothing; apply makes version 2; rollback makes 3
    let v2 = b.dir.path().join("acme-v2.toml");
    std::fs::write(&v2, text.replace("max_ttl = \"2h\"", "max_ttl = \"45m\"")).unwrap();
    let dry = b.run(&["policy", "apply", v2.to_str().unwrap(), "--dry-run"]);
    assert!(
        dry.contains("-max_ttl = \"2h\"")
            && dry.contains("+max_ttl = \"45m\"")
            && dry.contains("dry run"),
        "{dry}"
    );
    let hist: Value =
        serde_json::from_str(&b.run(&["policy", "history", "--tenant", "acme", "--json"])).unwrap();
    assert_eq!(hist["items"].as_array().unwrap().len(), 1);
    b.run(&["policy", "apply", v2.to_str().unwrap()]);
    let rb: Value = serde_json::from_str(&b.run(&[
        "policy", "rollback", "--tenant", "acme", "--to", "1", "--json",
    ]))
    .unwrap();
    assert_eq!(rb["version"], 3);
    let shown = b.run(&["policy", "show", "--tenant", "acme"]);
    assert!(shown.contains("max_ttl = \"2h\""), "{shown}");

    // policy test against the file and against the applied version
    let cases = b.dir.path().join("acme.tests.toml");
    std::fs::write(
        &cases,
        "policy = \"acme.toml\"\n[[cases]]\nname = \"students subscribe\"\nuser = { id = \"s\" }\nexpect = { outcome = \"granted\", role = \"subscriber\", rule = \"students\", ttl = \"1h\" }\n",
    )
    .unwrap();
    let out = b.run(&["policy", "test", cases.to_str().unwrap()]);
    assert!(out.contains("1 passed, 0 failed"), "{out}");
    let out = b.run(&["policy", "test", cases.to_str().unwrap(), "--applied"]);
    assert!(out.contains("1 passed, 0 failed"), "{out}");
    std::fs::write(
        &cases,
        std::fs::read_to_string(&cases)
            .unwrap()
            .replace("subscriber", "moderator"),
    )
    .unwrap();
    let out = b
        .cmd()
        .args(["policy", "test", cases.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a failing case exits non-zero");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL students subscribe"));

    // token inspect: decode, then verify with the tenant's credential
    let port = free_port();
    let mut child = b.serve(port, &b.dir.path().join("broker.log"));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let mut tokens = Vec::new();
    for sid in [session_for(API_KEY, 1), session_for(T1_API_KEY, 1)] {
        let v: Value = client
            .post(format!("{base}/v1/tokens"))
            .bearer_auth(&key)
            .json(&json!({"session_id": sid, "user": user("ivy")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(v);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for v in &tokens {
        let token = v["token"].as_str().unwrap();
        let out: Value = serde_json::from_str(
            &b.run(&["token", "inspect", token, "--tenant", "acme", "--json"]),
        )
        .unwrap();
        assert_eq!(out["verification"]["signature_valid"], true, "{out}");
        assert_eq!(out["token"]["format"], v["format"]);
        assert_eq!(out["token"]["token_id"], v["token_id"]);
        assert_eq!(out["expired"], false);
        let text = b.run(&["token", "inspect", token]);
        assert!(
            text.contains("session_id:") && text.contains("ivy"),
            "{text}"
        );
    }
    // A token signed with another secret does not verify.
    let forged = token_broker::tokens::Signer::opentok(
        API_KEY,
        "not-the-secret",
        token_broker::domain::OpenTokFormat::Jwt,
    )
    .unwrap()
    .sign(
        &token_broker::tokens::TokenParams {
            session_id: &session_for(API_KEY, 1),
            role: token_broker::domain::Role::Moderator,
            expire_time: token_broker::clock::now_unix() + 60,
            connection_data: None,
            initial_layout_class_list: &[],
        },
        token_broker::clock::now_unix(),
        &token_broker::tokens::Entropy::random(),
    )
    .unwrap();
    let out = b
        .cmd()
        .args(["token", "inspect", &forged.token, "--tenant", "acme"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("INVALID"));
}

#[tokio::test]
async fn stored_credentials_through_cli_and_http_never_reach_logs_or_database_in_clear() {
    let b = Broker::new().await;
    let master = b.dir.path().join("master.key");
    b.run(&["credential", "keygen", master.to_str().unwrap()]);
    let key = b.setup();
    let admin: Value = serde_json::from_str(&b.run(&[
        "key", "create", "--tenant", "acme", "--scope", "admin", "--scope", "issue", "--json",
    ]))
    .unwrap();
    let admin = admin["key"].as_str().unwrap().to_owned();
    // The operator stores one credential from standard input (never argv).
    let cli_secret = format!("cli{}", uuid::Uuid::new_v4().simple());
    let mut child = b
        .cmd()
        .env("TOKEN_BROKER_MASTER_KEY_FILE", &master)
        .args([
            "credential",
            "set",
            "--tenant",
            "acme",
            "cli-made",
            "--provider",
            "opentok",
            "--api-key",
            "818181",
            "--secret-file",
            "-",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cli_secret.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("sha256:") && !shown.contains(&cli_secret),
        "{shown}"
    );

    let port = free_port();
    let log = b.dir.path().join("broker.log");
    let mut server = b
        .cmd()
        .args(["serve"])
        .env("TOKEN_BROKER_MASTER_KEY_FILE", &master)
        .env("TOKEN_BROKER_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOKEN_BROKER_LOG", "trace,sqlx=debug,h2=info,hyper=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    // A tenant admin uploads another over HTTP.
    let http_secret = format!("http{}", uuid::Uuid::new_v4().simple());
    let r = client
        .put(format!("{base}/v1/credentials/http-made"))
        .bearer_auth(&admin)
        .json(&json!({"provider": "opentok", "api_key": "828282", "api_secret": http_secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut tokens = Vec::new();
    for api_key in ["818181", "828282"] {
        let r = client
            .post(format!("{base}/v1/tokens"))
            .bearer_auth(&key)
            .json(&json!({"session_id": session_for(api_key, 1), "user": user("u")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{api_key}");
        let v: Value = r.json().await.unwrap();
        tokens.push(v["token"].as_str().unwrap().to_owned());
    }
    // The operator's status names the problems; nothing secret anywhere.
    let status = b.run(&["status", "--json"]);
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("credential stored"), "logs were captured");
    for secret in [&cli_secret, &http_secret] {
        assert!(!logs.contains(secret.as_str()), "secret in logs");
        assert!(!status.contains(secret.as_str()), "secret in status");
    }
    for t in &tokens {
        assert!(
            !logs.contains(t.rsplit('.').next().unwrap()),
            "token in logs"
        );
    }
    if let Some(path) = b.url.strip_prefix("sqlite://") {
        for suffix in ["", "-wal"] {
            if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                let hay = String::from_utf8_lossy(&bytes);
                assert!(!hay.contains(&cli_secret) && !hay.contains(&http_secret));
            }
        }
    }
    // `settings` redacts passwords in the database URL, query parameters included.
    let printed = b
        .cmd()
        .env(
            "TOKEN_BROKER_DATABASE_URL",
            "postgres://u:hunter2@db/x?password=hunter3&sslpassword=hunter4",
        )
        .args(["settings", "--json"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("postgres://u:***@db/x"), "{printed}");
    assert!(!printed.contains("hunter"), "{printed}");
}

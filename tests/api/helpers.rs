//! `spawn_app()` and a typed client for the tests.

use std::path::PathBuf;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Value, json};
use token_broker::admin::{self, Actor};
use token_broker::auth::Scopes;
use token_broker::settings::Settings;
use token_broker::startup::Application;
use token_broker::store::Store;

/// The spec's shared OpenTok fixture credential (vonage-tokens.md §2.2).
pub const API_KEY: &str = "123456";
pub const API_SECRET: &str = "1234567890abcdef1234567890abcdef1234567890";
/// A second project of the same tenant, signing legacy T1 tokens.
pub const T1_API_KEY: &str = "777777";

/// A session ID owned by `api_key` (the SDKs' layout: `1_` + base64url of
/// `1~<key>~~<time>~<random>~`).
pub fn session_for(api_key: &str, n: u32) -> String {
    let raw = format!("1~{api_key}~~1764000000000~session-{n}~");
    format!(
        "1_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

/// Where the test database lives: a temp SQLite file, or a fresh PostgreSQL database.
pub enum TestDb {
    /// Kept for its drop: the directory is removed with the test.
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres,
    /// Another instance's database (a second broker on it).
    Shared,
}

pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub db_url: String,
    #[allow(dead_code)] // kept for its drop (and for tests that need a scratch dir)
    pub dir: tempfile::TempDir,
    _handle: actix_web::dev::ServerHandle,
    pub app_state: actix_web::web::Data<token_broker::state::AppState>,
    _db: TestDb,
}

fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var("TEST_LOG").is_ok() {
            token_broker::telemetry::init(Default::default(), "info", std::io::stderr);
        }
    });
}

/// A database URL for one test.
pub async fn fresh_database() -> (String, TestDb) {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(base) if base.starts_with("postgres") => {
            use sqlx::Connection;
            let name = format!("tb_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&base)
                .await
                .expect("connect to TEST_DATABASE_URL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let (prefix, _) = base
                .rsplit_once('/')
                .expect("TEST_DATABASE_URL has a database name");
            (format!("{prefix}/{name}"), TestDb::Postgres)
        }
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("tb.db").display());
            (url, TestDb::Sqlite(dir))
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// `spawn_app_with`, its clock frozen (limiters move only when a test
/// advances it).
pub async fn spawn_frozen(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let app = spawn_app_with(tweak).await;
    app.app_state.clock.freeze();
    app
}

/// A test broker on a fresh database, with `tweak` applied to its settings.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let (url, db) = fresh_database().await;
    spawn_app_on(url, db, tweak).await
}

pub async fn spawn_app_on(url: String, db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::for_database(&url);
    // Each test broker has its own secrets namespace root and master keyring.
    settings.secrets_dir = dir.path().join("secrets");
    let master = dir.path().join("master.key");
    token_broker::secrets::Keyring::generate(&master).expect("master key");
    settings.master_key_file = Some(master);
    // The tests' identity providers serve their JWKS on loopback.
    settings.jwks_private_addresses = true;
    tweak(&mut settings);
    let app = Application::build(settings).await.expect("build app");
    let port = app.port();
    let handle = app.handle();
    let app_state = app.state();
    let store = app_state.store.clone();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        addr: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
        store,
        db_url: url,
        dir,
        _handle: handle,
        app_state,
        _db: db,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    /// A second broker on the same database, secrets directory and master key
    /// (as instances of one deployment share them).
    pub async fn spawn_second(&self) -> TestApp {
        let shared = self.app_state.settings.clone();
        spawn_app_on(self.db_url.clone(), TestDb::Shared, move |s| {
            s.secrets_dir = shared.secrets_dir;
            s.master_key_file = shared.master_key_file;
        })
        .await
    }

    pub async fn create_tenant(&self, slug: &str) {
        admin::create_tenant(&self.store, slug, &Actor::Cli, 1_000)
            .await
            .expect("create tenant");
    }

    /// Creates a key through the library (as the CLI does) and returns the whole key.
    pub async fn create_key(&self, tenant: &str, scopes: &[&str]) -> String {
        let scopes = Scopes::parse(scopes.iter().copied()).expect("scopes");
        admin::create_key(&self.store, tenant, scopes, None, &Actor::Cli, 1_000, None)
            .await
            .expect("create key")
            .key
    }

    /// Provisions a secret file in `tenant`'s namespace, as an operator does
    /// (`<secrets_dir>/<tenant>/<name>`), and returns its path.
    pub fn provision_secret(&self, tenant: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.app_state.settings.secrets_dir.join(tenant).join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write secret");
        path
    }

    /// Provisions the OpenTok secret in `tenant`'s namespace and returns the
    /// standard test policy for `tenant`, which references it.
    pub fn standard_policy(&self, tenant: &str) -> String {
        self.provision_secret(tenant, "opentok.secret", API_SECRET.as_bytes());
        standard_policy_text(tenant, "opentok.secret")
    }

    /// Applies a policy text through the library and reloads it into the server.
    pub async fn apply_policy(&self, text: &str) -> i64 {
        let out = admin::apply_policy(
            &self.store,
            &self.app_state.secrets,
            "test.toml",
            text,
            None,
            false,
            &Actor::Cli,
            None,
            1_000,
        )
        .await
        .expect("apply policy");
        let tenant = out.tenant.clone();
        self.app_state.reload_policy(&tenant).await.expect("reload");
        out.version.unwrap_or(out.previous_version)
    }

    /// Tenant `acme` with the standard policy and a key with every scope.
    pub async fn acme(&self) -> String {
        self.create_tenant("acme").await;
        let p = self.standard_policy("acme");
        self.apply_policy(&p).await;
        self.create_key("acme", &["issue", "audit", "admin"]).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
    }

    /// The `/metrics` page's text (no key: it is public when enabled).
    pub async fn metrics_text(&self) -> String {
        let r = self.client.get(self.url("/metrics")).send().await;
        r.expect("request").text().await.expect("text")
    }

    pub async fn put(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn issue(&self, key: &str, body: &Value) -> (u16, Value) {
        let r = self.post("/v1/tokens", key, body).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn audit(&self, key: &str, query: &str) -> Value {
        let r = self.get(&format!("/v1/audit?{query}"), key).await;
        assert_eq!(r.status(), 200, "audit query {query}");
        r.json().await.expect("json")
    }
}

/// The standard test policy; `secret` is a `file:` reference inside the tenant's namespace.
pub fn standard_policy_text(tenant: &str, secret: &str) -> String {
    format!(
        r#"tenant = "{tenant}"
description = "integration tests"

[[credentials]]
name = "main"
provider = "opentok"
api_key = "{API_KEY}"
api_secret = "file:{secret}"
token_format = "jwt"

[[credentials]]
name = "legacy"
provider = "opentok"
api_key = "{T1_API_KEY}"
api_secret = "file:{secret}"
token_format = "t1"

[defaults]
role = "publisher"
ttl = "1h"

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
max_ttl = "8h"

[[rules]]
id = "teachers"
priority = 20
subjects = ["*:group:teachers"]
sessions = ["label:kind=class-*"]
roles = ["subscriber", "publisher", "moderator"]
max_ttl = "4h"

[[rules]]
id = "students"
priority = 100
subjects = ["*"]
sessions = ["*"]
roles = ["subscriber", "publisher"]
default_role = "subscriber"
max_ttl = "2h"
on_role_excess = "downgrade"
"#
    )
}

/// A well-formed key with `key`'s id and a wrong secret.
pub fn wrong_secret(key: &str) -> String {
    format!("{}{}", &key[..key.len() - 64], "0".repeat(64))
}

/// A user body.
pub fn user(id: &str) -> Value {
    json!({"id": id})
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs raw SQL against the test database, as an attacker with database access would.
pub async fn raw_sql(app: &TestApp, sql: &str) {
    use sqlx::Connection;
    if app.db_url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

/// Another client of the test database with a transaction open, holding
/// what its statements locked (another writer, a stuck migration) until
/// `release`.
pub enum Held {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

/// Opens a transaction as another client and runs `sqlite` or `pg` (by the
/// test database) in it; the locks they take are held until `release`.
pub async fn hold(app: &TestApp, sqlite: &str, pg: &str) -> Held {
    use sqlx::Connection;
    if app.db_url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
        sqlx::raw_sql(sqlite).execute(&mut c).await.unwrap();
        Held::Sqlite(c)
    } else {
        let mut c = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
        sqlx::raw_sql(pg).execute(&mut c).await.unwrap();
        Held::Pg(c)
    }
}

impl Held {
    /// Rolls the other client's transaction back, releasing its locks.
    pub async fn release(self) {
        match self {
            Held::Sqlite(mut c) => sqlx::raw_sql("ROLLBACK").execute(&mut c).await.map(|_| ()),
            Held::Pg(mut c) => sqlx::raw_sql("ROLLBACK").execute(&mut c).await.map(|_| ()),
        }
        .unwrap()
    }

    /// Releases after `d`: joined with a call that must wait for the hold.
    pub async fn release_after(self, d: std::time::Duration) {
        tokio::time::sleep(d).await;
        self.release().await;
    }
}

/// Every text value of a table, as one string (to search for leaked secrets).
pub async fn table_text(app: &TestApp, table: &str) -> String {
    use sqlx::Connection;
    if app.db_url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
        let cols: Vec<String> =
            sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .fetch_all(&mut c)
                .await
                .unwrap();
        let expr = cols
            .iter()
            .map(|c| format!("COALESCE(CAST({c} AS TEXT), '')"))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT {expr} FROM {table}"))
            .fetch_all(&mut c)
            .await
            .unwrap();
        rows.join("\n")
    } else {
        let mut c = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t"))
                .fetch_all(&mut c)
                .await
                .unwrap();
        rows.join("\n")
    }
}

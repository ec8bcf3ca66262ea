//! Settings, from (highest first) command-line flags, environment variables,
//! an optional TOML config file (`--config`), then built-in defaults.
//!
//! Each setting is declared once, as a field of `SettingsArgs` (flag,
//! environment variable, config-file key, help); `token-broker --help` lists
//! them all. figment lays the flags and environment over the file; `resolve`
//! then applies the defaults and parses rates and networks into `Settings`.
//! `token-broker settings` prints `Settings` through its derived `Serialize`
//! (`--json`) or `Debug`, so the printer names every field and cannot drift.
//!
//! Defaults: listen `127.0.0.1:8080`; database `sqlite://<data dir>/token-broker.db`;
//! data dir `./data`; log format `text`; log filter `info`; body limit 16384
//! bytes; audit commit timeout 2000 ms; audit batch 512 rows; 10000 cached API
//! keys; 2 parallel argon2 checks; as many HTTP workers as CPUs; secrets dir
//! `<data dir>/secrets`; no master key file (uploads refused); tenant slugs as
//! metric labels (docs/operations.md); no trusted proxies; console cookies
//! `Secure` only when a trusted proxy reports https; no checkpoint key or log,
//! one checkpoint every 60 s or 10000 rows; rates as in `crate::limits`.
//!
//! The database URL may carry a password: it is a `DatabaseUrl` (a
//! `secrecy::SecretString`), shown redacted wherever settings are printed
//! (`Debug`, `token-broker settings`, start-up logs).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Serialized;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::domain::{Rate, Rates};
use crate::store::redact_url;

/// Every setting, declared once. A field's name is its config-file key and,
/// as `--field-name`, its flag; `env` names its environment variable (clap
/// reads it for the flag); the doc comment is its `--help` text. Everything is
/// optional here: `Settings::resolve` lays what is given (flag, else
/// environment) over the config file, and the file over the defaults.
///
/// `Serialize` exists for that merge only and shows the database URL as
/// given; print `Settings`, never this.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsArgs {
    /// Config file (TOML) with any of the settings below.
    #[arg(long, env = "TOKEN_BROKER_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "TOKEN_BROKER_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    #[serde(default, serialize_with = "expose_url")]
    pub database_url: Option<DatabaseUrl>,
    /// Directory for the embedded SQLite database (created if missing).
    #[arg(long, env = "TOKEN_BROKER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (host:port).
    #[arg(long, env = "TOKEN_BROKER_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long, env = "TOKEN_BROKER_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Log filter (`tracing` syntax), from TOKEN_BROKER_LOG, else RUST_LOG, else
    /// the config file's `log`; no flag.
    #[arg(skip)]
    pub log: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "TOKEN_BROKER_BODY_LIMIT", global = true)]
    pub body_limit: Option<usize>,
    /// How long a request waits for its audit row's commit before failing (ms).
    #[arg(long, env = "TOKEN_BROKER_AUDIT_TIMEOUT_MS", global = true)]
    pub audit_timeout_ms: Option<u64>,
    /// Most audit rows committed in one transaction.
    #[arg(long, env = "TOKEN_BROKER_AUDIT_MAX_BATCH", global = true)]
    pub audit_max_batch: Option<usize>,
    /// Longest one audit read (a page of `/v1/audit`, a page of an export, a
    /// summary) may run before it is stopped (ms).
    #[arg(long, env = "TOKEN_BROKER_AUDIT_READ_TIMEOUT_MS", global = true)]
    pub audit_read_timeout_ms: Option<u64>,
    /// Number of verified API keys kept in memory.
    #[arg(long, env = "TOKEN_BROKER_KEY_CACHE", global = true)]
    pub key_cache: Option<usize>,
    /// argon2 verifications allowed to run at once.
    #[arg(long, env = "TOKEN_BROKER_HASH_PARALLELISM", global = true)]
    pub hash_parallelism: Option<usize>,
    /// Label per-tenant metrics with the tenant's slug (true), or with `-`
    /// (false, the default: `/metrics` is anonymous, so it names no tenant).
    #[arg(long, env = "TOKEN_BROKER_METRICS_TENANT_LABELS", global = true)]
    pub metrics_tenant_labels: Option<bool>,
    /// HTTP worker threads.
    #[arg(long, env = "TOKEN_BROKER_WORKERS", global = true)]
    pub workers: Option<usize>,
    /// End-user requests per user: <per_second>/<burst>.
    #[arg(long, env = "TOKEN_BROKER_RATE_END_USER", global = true)]
    pub rate_end_user: Option<String>,
    /// End-user requests per client address: <per_second>/<burst>.
    #[arg(long, env = "TOKEN_BROKER_RATE_END_USER_IP", global = true)]
    pub rate_end_user_ip: Option<String>,
    /// API-key requests per key: <per_second>/<burst>.
    #[arg(long, env = "TOKEN_BROKER_RATE_API_KEY", global = true)]
    pub rate_api_key: Option<String>,
    /// Failed authentications per client address: <per_second>/<burst>.
    #[arg(long, env = "TOKEN_BROKER_RATE_FAILED_AUTH_IP", global = true)]
    pub rate_failed_auth_ip: Option<String>,
    /// Directory of operator-provisioned tenant secrets: tenant T's `file:`
    /// references resolve inside `<secrets_dir>/T/` only.
    #[arg(long, env = "TOKEN_BROKER_SECRETS_DIR", global = true)]
    pub secrets_dir: Option<PathBuf>,
    /// Master keyring file that seals stored credentials (kept outside the database).
    #[arg(long, env = "TOKEN_BROKER_MASTER_KEY_FILE", global = true)]
    pub master_key_file: Option<PathBuf>,
    /// Networks of reverse proxies whose `X-Forwarded-For` / `Forwarded` is
    /// believed (comma-separated CIDRs; empty: the TCP peer is the client).
    #[arg(long, env = "TOKEN_BROKER_TRUSTED_PROXIES", global = true)]
    pub trusted_proxies: Option<String>,
    /// Mark the console's cookies `Secure` on every response (true: set it
    /// whenever browsers reach the broker over https). Otherwise they are
    /// `Secure` only when a trusted proxy's `X-Forwarded-Proto` (or
    /// `Forwarded: proto=`) says https.
    #[arg(long, env = "TOKEN_BROKER_CONSOLE_SECURE_COOKIES", global = true)]
    pub console_secure_cookies: Option<bool>,
    /// Let tenants' identity providers fetch their JWKS from loopback,
    /// private, link-local and other non-public addresses (default false: a
    /// tenant admin must not make the broker probe its own network).
    #[arg(long, env = "TOKEN_BROKER_JWKS_PRIVATE_ADDRESSES", global = true)]
    pub jwks_private_addresses: Option<bool>,
    /// Ed25519 key that signs audit checkpoints (kept outside the database).
    #[arg(long, env = "TOKEN_BROKER_CHECKPOINT_KEY_FILE", global = true)]
    pub checkpoint_key_file: Option<PathBuf>,
    /// Append-only file the broker writes signed checkpoints to.
    #[arg(long, env = "TOKEN_BROKER_CHECKPOINT_FILE", global = true)]
    pub checkpoint_file: Option<PathBuf>,
    /// Write a checkpoint of every tenant whose history moved at least this often (seconds).
    #[arg(long, env = "TOKEN_BROKER_CHECKPOINT_INTERVAL_SECS", global = true)]
    pub checkpoint_interval_secs: Option<u64>,
    /// Also write one as soon as a tenant's history grew by this many rows.
    #[arg(long, env = "TOKEN_BROKER_CHECKPOINT_EVERY_ROWS", global = true)]
    pub checkpoint_every_rows: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A database URL. It may carry a password, so it is kept as a secret; its
/// `Debug` and `Serialize` show it with passwords redacted.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    /// The URL itself, password included: for connecting, never for printing.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(self.expose()), f)
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&redact_url(self.expose()))
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DatabaseUrl, D::Error> {
        String::deserialize(d).map(DatabaseUrl::from)
    }
}

/// For figment only: the URL as given, so that it survives the merge.
fn expose_url<S: Serializer>(url: &Option<DatabaseUrl>, s: S) -> Result<S::Ok, S::Error> {
    url.as_ref().map(DatabaseUrl::expose).serialize(s)
}

/// One source of settings (the config file; the flags and environment) as a
/// figment provider. Entries that are not set are left out, so that those of
/// the sources below show through.
struct Layer<T> {
    name: &'static str,
    values: T,
}

impl<T: Serialize> Provider for Layer<T> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = Serialized::defaults(&self.values).data()?;
        for dict in data.values_mut() {
            dict.retain(|_, v| !matches!(v, Value::Empty(..)));
        }
        Ok(data)
    }
}

/// Effective settings. `Serialize` is the printer (`token-broker settings
/// --json`): its keys are the config file's.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: DatabaseUrl,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub body_limit: usize,
    #[serde(rename = "audit_timeout_ms", serialize_with = "millis")]
    pub audit_timeout: Duration,
    pub audit_max_batch: usize,
    #[serde(rename = "audit_read_timeout_ms", serialize_with = "millis")]
    pub audit_read_timeout: Duration,
    pub key_cache: usize,
    pub hash_parallelism: usize,
    pub metrics_tenant_labels: bool,
    pub workers: usize,
    pub rates: Rates,
    pub secrets_dir: PathBuf,
    pub master_key_file: Option<PathBuf>,
    /// Only from peers in these networks are forwarding headers read.
    #[serde(serialize_with = "as_text")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Console cookies are always `Secure`, whatever the request says.
    pub console_secure_cookies: bool,
    /// JWKS may be fetched from non-public addresses (development, tests).
    pub jwks_private_addresses: bool,
    pub checkpoint_key_file: Option<PathBuf>,
    pub checkpoint_file: Option<PathBuf>,
    #[serde(rename = "checkpoint_interval_secs", serialize_with = "secs")]
    pub checkpoint_interval: Duration,
    pub checkpoint_every_rows: u64,
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn as_text<S: Serializer, T: fmt::Display>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(|i| i.to_string()))
}

impl Settings {
    /// Resolves flags/environment over the config file over defaults.
    pub fn resolve(args: &SettingsArgs) -> anyhow::Result<Settings> {
        let file: toml::Table = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let given: SettingsArgs = Figment::from(Layer {
            name: "the config file",
            values: file,
        })
        .merge(Layer {
            name: "flags and environment",
            values: args,
        })
        .extract()
        .map_err(|e| match &args.config {
            Some(path) => anyhow::anyhow!("config file {}: {e}", path.display()),
            None => anyhow::anyhow!("settings: {e}"),
        })?;
        Settings::with_defaults(given)
    }

    /// Fills what `g` leaves out with the defaults, and parses rates and networks.
    fn with_defaults(g: SettingsArgs) -> anyhow::Result<Settings> {
        let data_dir = g.data_dir.unwrap_or_else(|| PathBuf::from("data"));
        let database_url = g
            .database_url
            .unwrap_or_else(|| default_sqlite_url(&data_dir).into());
        let log_filter = std::env::var("TOKEN_BROKER_LOG")
            .or_else(|_| std::env::var("RUST_LOG"))
            .ok()
            .or(g.log)
            .unwrap_or_else(|| "info".into());
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let d = Rates::default();
        let rate = |given: Option<String>, default: Rate| -> anyhow::Result<Rate> {
            given.map_or(Ok(default), |s| Rate::parse(&s).map_err(anyhow::Error::msg))
        };
        let rates = Rates {
            end_user: rate(g.rate_end_user, d.end_user)?,
            end_user_ip: rate(g.rate_end_user_ip, d.end_user_ip)?,
            api_key: rate(g.rate_api_key, d.api_key)?,
            failed_auth_ip: rate(g.rate_failed_auth_ip, d.failed_auth_ip)?,
        };
        let trusted_proxies =
            crate::domain::parse_trusted_proxies(g.trusted_proxies.as_deref().unwrap_or(""))
                .map_err(anyhow::Error::msg)?;
        Ok(Settings {
            listen: g
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            secrets_dir: g.secrets_dir.unwrap_or_else(|| data_dir.join("secrets")),
            database_url,
            data_dir,
            log_format: g.log_format.unwrap_or_default(),
            log_filter,
            body_limit: g.body_limit.unwrap_or(16 * 1024),
            audit_timeout: Duration::from_millis(g.audit_timeout_ms.unwrap_or(2000)),
            audit_max_batch: g.audit_max_batch.unwrap_or(512),
            audit_read_timeout: Duration::from_millis(
                g.audit_read_timeout_ms.unwrap_or(10_000).max(1),
            ),
            key_cache: g.key_cache.unwrap_or(10_000),
            hash_parallelism: g.hash_parallelism.unwrap_or(2),
            metrics_tenant_labels: g.metrics_tenant_labels.unwrap_or(false),
            workers: g.workers.unwrap_or(cpus).max(1),
            rates,
            master_key_file: g.master_key_file,
            trusted_proxies,
            console_secure_cookies: g.console_secure_cookies.unwrap_or(false),
            jwks_private_addresses: g.jwks_private_addresses.unwrap_or(false),
            checkpoint_key_file: g.checkpoint_key_file,
            checkpoint_file: g.checkpoint_file,
            checkpoint_interval: Duration::from_secs(
                g.checkpoint_interval_secs.unwrap_or(60).max(1),
            ),
            checkpoint_every_rows: g.checkpoint_every_rows.unwrap_or(10_000).max(1),
        })
    }

    /// Settings for tests and embedding: defaults plus a database URL.
    pub fn for_database(database_url: &str) -> Settings {
        let mut s = Settings::resolve(&SettingsArgs::default()).unwrap_or_else(|_| unreachable!());
        s.database_url = database_url.to_owned().into();
        s.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        s.workers = 2;
        s
    }

    /// Creates the data directory when the database is the embedded SQLite file in it.
    pub fn ensure_data_dir(&self) -> std::io::Result<()> {
        if self.database_url.expose() == default_sqlite_url(&self.data_dir) {
            std::fs::create_dir_all(&self.data_dir)?;
        }
        Ok(())
    }
}

fn default_sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("token-broker.db").display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        s: SettingsArgs,
    }

    fn resolve(argv: &[&str]) -> anyhow::Result<Settings> {
        Settings::resolve(&Args::try_parse_from(argv)?.s)
    }

    #[test]
    fn checkpoint_settings_come_from_flags_and_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tb.toml");
        std::fs::write(
            &file,
            "checkpoint_key_file = \"/keys/cp.key\"\ncheckpoint_file = \"/var/cp.log\"\ncheckpoint_interval_secs = 30\n",
        )
        .unwrap();
        let cfg = file.to_str().unwrap();
        let s = resolve(&["t", "--config", cfg, "--checkpoint-every-rows", "500"]).unwrap();
        assert_eq!(s.checkpoint_key_file, Some(PathBuf::from("/keys/cp.key")));
        assert_eq!(s.checkpoint_file, Some(PathBuf::from("/var/cp.log")));
        assert_eq!(s.checkpoint_interval, Duration::from_secs(30));
        assert_eq!(s.checkpoint_every_rows, 500);
        let d = resolve(&["t"]).unwrap();
        assert_eq!(d.checkpoint_key_file, None, "no key unless configured");
        assert_eq!(d.checkpoint_interval, Duration::from_secs(60));
        assert_eq!(d.checkpoint_every_rows, 10_000);
        assert!(format!("{d:?}").contains("checkpoint_file"));
    }

    #[test]
    fn flags_beat_the_config_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tb.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9001\"\nbody_limit = 100\ndatabase_url = \"postgres://u:pw@db/x\"\nrate_end_user = \"2/4\"\n",
        )
        .unwrap();
        let cfg = file.to_str().unwrap();
        let s = resolve(&["t", "--config", cfg, "--listen", "127.0.0.1:9002"]).unwrap();
        assert_eq!(s.listen.port(), 9002, "the flag wins");
        assert_eq!(s.body_limit, 100, "the file beats the default");
        assert_eq!(
            s.rates.end_user,
            Rate {
                per_second: 2,
                burst: 4
            }
        );
        assert_eq!(s.audit_timeout, Duration::from_secs(2), "default");
        let shown = format!("{s:?}");
        assert!(
            shown.contains("postgres://u:***@db/x") && !shown.contains("pw"),
            "{shown}"
        );
    }

    #[test]
    fn a_config_file_with_an_unknown_key_or_bad_value_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tb.toml");
        std::fs::write(&file, "listen_addr = \"127.0.0.1:9001\"\n").unwrap();
        let e = resolve(&["t", "--config", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_addr"), "{e}");
        std::fs::write(&file, "rate_api_key = \"fast\"\n").unwrap();
        assert!(resolve(&["t", "--config", file.to_str().unwrap()]).is_err());
        assert!(resolve(&["t", "--config", "/nonexistent/tb.toml"]).is_err());
    }

    #[test]
    fn trusted_proxies_are_cidrs_and_a_bad_one_stops_startup() {
        let s = resolve(&["t", "--trusted-proxies", "10.0.0.0/8, 127.0.0.1"]).unwrap();
        let nets: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32"]);
        assert!(
            resolve(&["t"]).unwrap().trusted_proxies.is_empty(),
            "none by default"
        );
        assert!(!resolve(&["t"]).unwrap().console_secure_cookies);
        let s = resolve(&["t", "--console-secure-cookies", "true"]).unwrap();
        assert!(s.console_secure_cookies);
        assert!(!resolve(&["t"]).unwrap().jwks_private_addresses);
        let s = resolve(&["t", "--jwks-private-addresses", "true"]).unwrap();
        assert!(s.jwks_private_addresses);
        let e = resolve(&["t", "--trusted-proxies", "10.0.0.0/8,proxy.local"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.local"), "{e}");
    }

    #[test]
    fn the_default_database_is_sqlite_in_the_data_dir() {
        let s = resolve(&["t", "--data-dir", "/var/lib/tb"]).unwrap();
        assert_eq!(
            s.database_url.expose(),
            "sqlite:///var/lib/tb/token-broker.db"
        );
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn the_printer_names_every_setting_and_hides_the_password() {
        use clap::Args as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tb.toml");
        std::fs::write(
            &file,
            "log_format = \"json\"\nmetrics_tenant_labels = true\ndatabase_url = \"postgres://u:pw@db/x\"\n",
        )
        .unwrap();
        let s = resolve(&["t", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.metrics_tenant_labels);
        assert_eq!(s.database_url.expose(), "postgres://u:pw@db/x");
        let printed = serde_json::to_value(&s).unwrap();
        let text = printed.to_string();
        assert!(
            text.contains("postgres://u:***@db/x") && !text.contains("pw"),
            "{text}"
        );
        // Every flag (but --config) is printed, under its config-file key.
        let cmd = SettingsArgs::augment_args(clap::Command::new("t"));
        for arg in cmd.get_arguments() {
            let key = arg.get_id().as_str();
            if key == "config" {
                continue;
            }
            let shown = match key.strip_prefix("rate_") {
                Some(limit) => printed["rates"].get(limit),
                None => printed.get(key),
            };
            assert!(shown.is_some(), "{key} is not printed: {text}");
        }
        assert_eq!(printed["rates"]["end_user"], "5/20");
        assert_eq!(printed["audit_timeout_ms"], 2000);
        assert_eq!(printed["log_format"], "json");
    }
}

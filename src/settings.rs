//! Settings, from (highest first) command-line flags, environment variables,
//! an optional TOML config file, then built-in defaults.
//!
//! | setting | flag | environment | config key | default |
//! |---|---|---|---|---|
//! | listen address | `--listen` | `TOKEN_BROKER_LISTEN` | `listen` | `127.0.0.1:8080` |
//! | database | `--database-url` | `TOKEN_BROKER_DATABASE_URL` | `database_url` | `sqlite://<data dir>/token-broker.db` |
//! | data directory | `--data-dir` | `TOKEN_BROKER_DATA_DIR` | `data_dir` | `./data` |
//! | config file | `--config` | `TOKEN_BROKER_CONFIG` | — | none |
//! | log format | `--log-format` | `TOKEN_BROKER_LOG_FORMAT` | `log_format` | `text` (or `json`) |
//! | log filter | — | `TOKEN_BROKER_LOG`, else `RUST_LOG` | `log` | `info` |
//! | request body limit | `--body-limit` | `TOKEN_BROKER_BODY_LIMIT` | `body_limit` | 16384 bytes |
//! | audit commit timeout | `--audit-timeout-ms` | `TOKEN_BROKER_AUDIT_TIMEOUT_MS` | `audit_timeout_ms` | 2000 |
//! | audit batch size | `--audit-max-batch` | `TOKEN_BROKER_AUDIT_MAX_BATCH` | `audit_max_batch` | 512 |
//! | cached API keys | `--key-cache` | `TOKEN_BROKER_KEY_CACHE` | `key_cache` | 10000 |
//! | parallel argon2 checks | `--hash-parallelism` | `TOKEN_BROKER_HASH_PARALLELISM` | `hash_parallelism` | 2 |
//! | HTTP workers | `--workers` | `TOKEN_BROKER_WORKERS` | `workers` | CPUs available |
//! | tenants' secrets directory | `--secrets-dir` | `TOKEN_BROKER_SECRETS_DIR` | `secrets_dir` | `<data dir>/secrets` |
//! | master key file | `--master-key-file` | `TOKEN_BROKER_MASTER_KEY_FILE` | `master_key_file` | none (uploads refused) |
//! | tenant slugs as metric labels | `--metrics-tenant-labels` | `TOKEN_BROKER_METRICS_TENANT_LABELS` | `metrics_tenant_labels` | `true` (docs/operations.md) |
//! | checkpoint signing key | `--checkpoint-key-file` | `TOKEN_BROKER_CHECKPOINT_KEY_FILE` | `checkpoint_key_file` | none (no signed checkpoints) |
//! | checkpoint log | `--checkpoint-file` | `TOKEN_BROKER_CHECKPOINT_FILE` | `checkpoint_file` | none (checkpoints not written) |
//! | checkpoint period | `--checkpoint-interval-secs` | `TOKEN_BROKER_CHECKPOINT_INTERVAL_SECS` | `checkpoint_interval_secs` | 60 |
//! | checkpoint every N rows | `--checkpoint-every-rows` | `TOKEN_BROKER_CHECKPOINT_EVERY_ROWS` | `checkpoint_every_rows` | 10000 |
//! | rate limits | `--rate-end-user` etc. | `TOKEN_BROKER_RATE_END_USER`, `_END_USER_IP`, `_API_KEY`, `_FAILED_AUTH_IP` | `rate_end_user` etc. | see `crate::limits` |
//!
//! The database URL may carry a password: it is redacted wherever settings are
//! printed (`Debug`, `token-broker settings`, start-up logs).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{Rate, Rates};
use crate::store::redact_url;

/// Flags (each also read from its environment variable by clap).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// Config file (TOML) with any of the settings below.
    #[arg(long, env = "TOKEN_BROKER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "TOKEN_BROKER_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Directory for the embedded SQLite database (created if missing).
    #[arg(long, env = "TOKEN_BROKER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (host:port).
    #[arg(long, env = "TOKEN_BROKER_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long, env = "TOKEN_BROKER_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "TOKEN_BROKER_BODY_LIMIT", global = true)]
    pub body_limit: Option<usize>,
    /// How long a request waits for its audit row's commit before failing (ms).
    #[arg(long, env = "TOKEN_BROKER_AUDIT_TIMEOUT_MS", global = true)]
    pub audit_timeout_ms: Option<u64>,
    /// Most audit rows committed in one transaction.
    #[arg(long, env = "TOKEN_BROKER_AUDIT_MAX_BATCH", global = true)]
    pub audit_max_batch: Option<usize>,
    /// Number of verified API keys kept in memory.
    #[arg(long, env = "TOKEN_BROKER_KEY_CACHE", global = true)]
    pub key_cache: Option<usize>,
    /// argon2 verifications allowed to run at once.
    #[arg(long, env = "TOKEN_BROKER_HASH_PARALLELISM", global = true)]
    pub hash_parallelism: Option<usize>,
    /// Label per-tenant metrics with the tenant's slug (true, the default) or
    /// with `-` (false: /metrics then names no tenant).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The config file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    log: Option<String>,
    body_limit: Option<usize>,
    audit_timeout_ms: Option<u64>,
    audit_max_batch: Option<usize>,
    key_cache: Option<usize>,
    hash_parallelism: Option<usize>,
    metrics_tenant_labels: Option<bool>,
    workers: Option<usize>,
    rate_end_user: Option<String>,
    rate_end_user_ip: Option<String>,
    rate_api_key: Option<String>,
    rate_failed_auth_ip: Option<String>,
    secrets_dir: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    trusted_proxies: Option<String>,
    checkpoint_key_file: Option<PathBuf>,
    checkpoint_file: Option<PathBuf>,
    checkpoint_interval_secs: Option<u64>,
    checkpoint_every_rows: Option<u64>,
}

/// Effective settings.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub body_limit: usize,
    pub audit_timeout: Duration,
    pub audit_max_batch: usize,
    pub key_cache: usize,
    pub hash_parallelism: usize,
    pub metrics_tenant_labels: bool,
    pub workers: usize,
    pub rates: Rates,
    pub secrets_dir: PathBuf,
    pub master_key_file: Option<PathBuf>,
    /// Only from peers in these networks are forwarding headers read.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub checkpoint_key_file: Option<PathBuf>,
    pub checkpoint_file: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    pub checkpoint_every_rows: u64,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("data_dir", &self.data_dir)
            .field("log_format", &self.log_format)
            .field("log_filter", &self.log_filter)
            .field("body_limit", &self.body_limit)
            .field("audit_timeout", &self.audit_timeout)
            .field("audit_max_batch", &self.audit_max_batch)
            .field("key_cache", &self.key_cache)
            .field("hash_parallelism", &self.hash_parallelism)
            .field("metrics_tenant_labels", &self.metrics_tenant_labels)
            .field("workers", &self.workers)
            .field("rates", &self.rates)
            .field("secrets_dir", &self.secrets_dir)
            .field("master_key_file", &self.master_key_file)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("checkpoint_key_file", &self.checkpoint_key_file)
            .field("checkpoint_file", &self.checkpoint_file)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("checkpoint_every_rows", &self.checkpoint_every_rows)
            .finish()
    }
}

impl Settings {
    /// Resolves flags/environment over the config file over defaults.
    pub fn resolve(args: &SettingsArgs) -> anyhow::Result<Settings> {
        let file: FileSettings = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
            None => FileSettings::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        let database_url = args
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| default_sqlite_url(&data_dir));
        let log_filter = std::env::var("TOKEN_BROKER_LOG")
            .or_else(|_| std::env::var("RUST_LOG"))
            .ok()
            .or(file.log)
            .unwrap_or_else(|| "info".into());
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let d = Rates::default();
        let rate =
            |flag: &Option<String>, file: Option<String>, default: Rate| -> anyhow::Result<Rate> {
                match flag.clone().or(file) {
                    Some(s) => Rate::parse(&s).map_err(anyhow::Error::msg),
                    None => Ok(default),
                }
            };
        let rates = Rates {
            end_user: rate(&args.rate_end_user, file.rate_end_user, d.end_user)?,
            end_user_ip: rate(&args.rate_end_user_ip, file.rate_end_user_ip, d.end_user_ip)?,
            api_key: rate(&args.rate_api_key, file.rate_api_key, d.api_key)?,
            failed_auth_ip: rate(
                &args.rate_failed_auth_ip,
                file.rate_failed_auth_ip,
                d.failed_auth_ip,
            )?,
        };
        let secrets_dir = args
            .secrets_dir
            .clone()
            .or(file.secrets_dir)
            .unwrap_or_else(|| data_dir.join("secrets"));
        let master_key_file = args.master_key_file.clone().or(file.master_key_file);
        let trusted_proxies = crate::domain::parse_trusted_proxies(
            args.trusted_proxies
                .as_deref()
                .or(file.trusted_proxies.as_deref())
                .unwrap_or(""),
        )
        .map_err(anyhow::Error::msg)?;
        let checkpoint_key_file = args
            .checkpoint_key_file
            .clone()
            .or(file.checkpoint_key_file);
        let checkpoint_file = args.checkpoint_file.clone().or(file.checkpoint_file);
        let checkpoint_interval = Duration::from_secs(
            args.checkpoint_interval_secs
                .or(file.checkpoint_interval_secs)
                .unwrap_or(60)
                .max(1),
        );
        let checkpoint_every_rows = args
            .checkpoint_every_rows
            .or(file.checkpoint_every_rows)
            .unwrap_or(10_000)
            .max(1);
        Ok(Settings {
            trusted_proxies,
            checkpoint_key_file,
            checkpoint_file,
            checkpoint_interval,
            checkpoint_every_rows,
            rates,
            secrets_dir,
            master_key_file,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            database_url,
            data_dir,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            log_filter,
            body_limit: args.body_limit.or(file.body_limit).unwrap_or(16 * 1024),
            audit_timeout: Duration::from_millis(
                args.audit_timeout_ms
                    .or(file.audit_timeout_ms)
                    .unwrap_or(2000),
            ),
            audit_max_batch: args.audit_max_batch.or(file.audit_max_batch).unwrap_or(512),
            key_cache: args.key_cache.or(file.key_cache).unwrap_or(10_000),
            hash_parallelism: args.hash_parallelism.or(file.hash_parallelism).unwrap_or(2),
            metrics_tenant_labels: args
                .metrics_tenant_labels
                .or(file.metrics_tenant_labels)
                .unwrap_or(true),
            workers: args.workers.or(file.workers).unwrap_or(cpus).max(1),
        })
    }

    /// Settings for tests and embedding: defaults plus a database URL.
    pub fn for_database(database_url: &str) -> Settings {
        let mut s = Settings::resolve(&SettingsArgs::default()).unwrap_or_else(|_| unreachable!());
        s.database_url = database_url.to_owned();
        s.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        s.workers = 2;
        s
    }

    /// Creates the data directory when the database is the embedded SQLite file in it.
    pub fn ensure_data_dir(&self) -> std::io::Result<()> {
        if self.database_url == default_sqlite_url(&self.data_dir) {
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
        let e = resolve(&["t", "--trusted-proxies", "10.0.0.0/8,proxy.local"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.local"), "{e}");
    }

    #[test]
    fn the_default_database_is_sqlite_in_the_data_dir() {
        let s = resolve(&["t", "--data-dir", "/var/lib/tb"]).unwrap();
        assert_eq!(s.database_url, "sqlite:///var/lib/tb/token-broker.db");
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    }
}

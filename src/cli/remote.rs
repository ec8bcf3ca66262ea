//! `token-broker --server URL …`: the commands a tenant key may run, over the
//! HTTP API, for tenant admins and auditors who have the binary and a key but
//! no access to the broker's host or database. The key comes from
//! `TOKEN_BROKER_KEY` or `--key-file`; the tenant always comes from the key.
//! Output (tables and `--json`) is the local CLI's; `policy check` and
//! `policy test` run locally (they are pure). Errors print the API's code and
//! message, plus a hint for 401 and 403.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use super::output::{CmdResult, Failure, fmt_ms, out, out_json, read_file};
use crate::audit::AuditRow;
use crate::audit::chain::{self, ChainFault, Verifier};
use crate::audit::query::AuditParams;

/// Longest an API call answered by one body may take before the CLI gives
/// up; also the longest an export may go without sending a byte (an export
/// as a whole takes as long as the tenant's history does).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest the CLI waits to connect.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "token-broker",
    version,
    about = "token-broker's remote commands: run over the HTTP API with a tenant's key."
)]
pub struct RemoteCli {
    /// The broker's base URL, e.g. https://broker.example.com.
    #[arg(long)]
    pub server: String,
    /// A file holding the API key (default: the TOKEN_BROKER_KEY environment variable).
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
    /// Print JSON instead of text (before or after the subcommand).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: RemoteCmd,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum RemoteCmd {
    /// The key's tenant, id and scopes.
    Whoami,
    /// Query, summarise, export and verify the tenant's audit record.
    Audit {
        #[command(subcommand)]
        cmd: RemoteAudit,
    },
    /// Check and test (locally), apply, show, list and roll back the tenant's policy.
    Policy {
        #[command(subcommand)]
        cmd: RemotePolicy,
    },
    /// Decide a token request without issuing (no token is minted).
    Decide {
        /// The request body as JSON (a file path, or `-` for stdin).
        request: PathBuf,
        /// Include every rule's evaluation.
        #[arg(long)]
        explain: bool,
    },
    /// The tenant's API keys.
    Key {
        #[command(subcommand)]
        cmd: RemoteKey,
    },
    /// The tenant's stored video credentials.
    Credential {
        #[command(subcommand)]
        cmd: RemoteCredential,
    },
    /// Registered sessions (issue keys).
    Session {
        #[command(subcommand)]
        cmd: RemoteSession,
    },
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum RemoteAudit {
    /// A page of rows, newest first (table or --json); every row with --csv or --ndjson.
    Query {
        #[command(flatten)]
        filters: AuditParams,
        #[arg(long, conflicts_with_all = ["json", "ndjson"])]
        csv: bool,
        #[arg(long, conflicts_with = "json")]
        ndjson: bool,
    },
    /// Every matching row, streamed as NDJSON (default) or CSV.
    Export {
        #[command(flatten)]
        filters: AuditParams,
        #[arg(long)]
        csv: bool,
    },
    /// Counts of issued and refused tokens grouped by role, user, session, rule or day.
    Summary {
        #[arg(long, default_value = "role")]
        by: String,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// At most this many groups, most issued first (1-10000, default 1000).
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Recompute the tenant's hash chain from the rows the API returns, and
    /// compare with a checkpoint kept outside the broker.
    Verify {
        /// A checkpoint printed by `audit checkpoint --json` (a file path or the
        /// JSON itself); the entry of the key's tenant is used.
        #[arg(long)]
        checkpoint: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RemotePolicy {
    /// Validate policy files (locally; nothing is sent).
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run a file of test cases against its policy file (locally).
    Test { path: PathBuf },
    /// Print the difference to the version in force, then apply as a new version.
    Apply {
        path: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the policy in force (or --version N).
    Show {
        #[arg(long)]
        version: Option<i64>,
    },
    /// List the policy versions.
    History,
    /// Re-apply version N as a new version.
    Rollback {
        #[arg(long)]
        to: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum RemoteKey {
    /// Create a key of this tenant and print it once.
    Create {
        /// issue, audit or admin (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List the tenant's keys (never their secrets).
    List,
    /// Revoke a key of this tenant.
    Revoke { key_id: String },
}

#[derive(Debug, Subcommand)]
pub enum RemoteCredential {
    /// List the tenant's credentials, never a secret.
    List,
    /// Show one credential.
    Show { name: String },
    /// Upload (create or replace) a credential; the secret is read from a file.
    Set {
        name: String,
        /// opentok or vonage.
        #[arg(long)]
        provider: String,
        #[arg(long)]
        api_key: Option<String>,
        #[arg(long)]
        token_format: Option<String>,
        #[arg(long)]
        application_id: Option<String>,
        /// File holding the secret (OpenTok API secret, or Vonage private key PEM); `-` for stdin.
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// Delete a stored credential.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RemoteSession {
    /// Show a registered session.
    Get { session_id: String },
    /// Register a session with an owner and labels.
    Put {
        session_id: String,
        #[arg(long)]
        owner: Option<String>,
        /// KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
}

/// True when the command line asks for the remote CLI (`--server` before any `--`).
pub fn wanted(args: &[std::ffi::OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--server" || a.to_string_lossy().starts_with("--server="))
}

/// The HTTP side: one client, one key, the server's base URL. Its `Debug`
/// never shows the key.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(server: &str, key: String) -> Result<Client, Failure> {
        let base = server_base(server)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(TIMEOUT)
            // A redirect could carry the key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("token-broker-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::from(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, base, key })
    }

    /// A call answered by one body: `TIMEOUT` for all of it.
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.stream_req(method, path).timeout(TIMEOUT)
    }

    /// A call answered by a stream (an export): no limit on the whole, only
    /// on each wait for the next bytes (`read_timeout`).
    fn stream_req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let resp = rb.send().await.map_err(|e| Failure {
            message: format!("cannot reach {}: {e}", self.base),
            code: 1,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(api_failure(resp).await)
    }

    async fn json(&self, rb: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let resp = self.send(rb).await?;
        resp.json::<Value>().await.map_err(|e| Failure {
            message: format!("the server's answer is not JSON: {e}"),
            code: 1,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.json(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, Failure> {
        self.json(self.req(method, path).json(body)).await
    }
}

/// The server's base URL, parsed as the HTTP client will parse it: https,
/// or plain http only to a loopback host (the API key must not cross a
/// network unencrypted: tunnel to a loopback port instead), and no user name
/// or password (`http://[::1]@evil.example` goes to evil.example).
fn server_base(server: &str) -> Result<String, Failure> {
    let url = reqwest::Url::parse(server)
        .map_err(|_| usage("--server must be an http:// or https:// URL"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(usage("--server carries no user name or password"));
    }
    match url.scheme() {
        "https" => {}
        "http" if crate::domain::idp::is_loopback_host(&url) => {}
        "http" => {
            return Err(usage(
                "--server is plain http to a host that is not loopback: the API key would cross the network unencrypted; use https:// (or tunnel to a loopback port)",
            ));
        }
        _ => return Err(usage("--server must be an http:// or https:// URL")),
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn usage(msg: &str) -> Failure {
    Failure {
        message: msg.to_owned(),
        code: 2,
    }
}

/// An API error as `<status> <code>: <message> (field …)`, with a hint for 401/403.
async fn api_failure(resp: reqwest::Response) -> Failure {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let e = &body["error"];
    let code = e["code"].as_str().unwrap_or("unknown_error");
    let msg = e["message"].as_str().unwrap_or("");
    let mut message = format!("{} {code}: {msg}", status.as_u16());
    if let Some(f) = e["field"].as_str() {
        message.push_str(&format!(" (field {f})"));
    }
    match status.as_u16() {
        401 => message.push_str(
            "\nhint: the server did not accept the key. Check TOKEN_BROKER_KEY (or --key-file): the whole key, not revoked, for this server.",
        ),
        403 => message.push_str(
            "\nhint: the key is valid but lacks the scope for this command (run `whoami` to see its scopes; admin commands need an admin key, audit commands an audit or admin key, decide and session an issue key).",
        ),
        _ => {}
    }
    Failure { message, code: 1 }
}

/// The key: `--key-file` (first line, trimmed) or `TOKEN_BROKER_KEY`.
fn load_key(key_file: Option<&PathBuf>) -> Result<String, Failure> {
    let key = match key_file {
        Some(p) => {
            let meta = std::fs::metadata(p).map_err(|e| Failure {
                message: format!("cannot read {}: {e}", p.display()),
                code: 2,
            })?;
            if !meta.is_file() || meta.len() > 4096 {
                return Err(usage(&format!(
                    "{} is not a regular file of at most 4 KiB",
                    p.display()
                )));
            }
            read_file(p)?.lines().next().unwrap_or("").trim().to_owned()
        }
        None => std::env::var("TOKEN_BROKER_KEY")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    if key.is_empty() {
        return Err(usage(
            "no API key: set TOKEN_BROKER_KEY or pass --key-file PATH",
        ));
    }
    Ok(key)
}

/// Runs one remote command.
pub async fn run(cli: RemoteCli) -> CmdResult {
    let json = cli.json;
    // Pure commands need no key.
    if let RemoteCmd::Policy { cmd } = &cli.command {
        match cmd {
            RemotePolicy::Check { paths } => return local_check(paths, json),
            RemotePolicy::Test { path } => return local_test(path, json),
            _ => {}
        }
    }
    let c = Client::new(&cli.server, load_key(cli.key_file.as_ref())?)?;
    match cli.command {
        RemoteCmd::Whoami => {
            let v = c.get("/v1/whoami").await?;
            if json {
                out_json(&v);
            } else {
                out(format!(
                    "tenant: {}\nkey id: {}\nscopes: {}",
                    s(&v["tenant"]),
                    s(&v["key_id"]),
                    strs(&v["scopes"]).join(",")
                ));
            }
            Ok(())
        }
        RemoteCmd::Audit { cmd } => audit(&c, cmd, json).await,
        RemoteCmd::Policy { cmd } => policy(&c, cmd, json).await,
        RemoteCmd::Decide { request, explain } => {
            let text = if request.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                read_file(&request)?
            };
            let body: Value = serde_json::from_str(&text)
                .map_err(|e| usage(&format!("the request is not JSON: {e}")))?;
            let path = if explain {
                "/v1/decide?explain=true"
            } else {
                "/v1/decide"
            };
            let v = c.send_json(reqwest::Method::POST, path, &body).await?;
            if json {
                out_json(&v);
            } else {
                out(serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            Ok(())
        }
        RemoteCmd::Key { cmd } => key(&c, cmd, json).await,
        RemoteCmd::Credential { cmd } => credential(&c, cmd, json).await,
        RemoteCmd::Session { cmd } => session(&c, cmd, json).await,
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default()
}

/// `segment` percent-encoded for a URL path.
fn seg(segment: &str) -> String {
    let mut o = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn local_check(paths: &[PathBuf], json: bool) -> CmdResult {
    crate::cli::policy::check_files(paths, json)
}

fn policy_failure(errs: Vec<crate::policy::PolicyError>) -> Failure {
    Failure {
        message: errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        code: 1,
    }
}

fn local_test(path: &PathBuf, json: bool) -> CmdResult {
    use crate::policy;
    let cases_text = read_file(path)?;
    let cases_name = path.display().to_string();
    let policy_path = policy::cases_policy_path(path, &cases_text).map_err(policy_failure)?;
    let text = read_file(&policy_path)?;
    let doc = policy::parse(&policy_path.display().to_string(), &text).map_err(policy_failure)?;
    let compiled = policy::CompiledPolicy::compile(doc, 0);
    let report = policy::run_cases(&compiled, &cases_name, &cases_text).map_err(policy_failure)?;
    if json {
        out_json(&report);
    } else {
        out(report.to_string());
    }
    if report.failed() > 0 {
        return Err(Failure {
            message: format!("{} of {} cases failed", report.failed(), report.total()),
            code: 1,
        });
    }
    Ok(())
}

async fn audit(c: &Client, cmd: RemoteAudit, json: bool) -> CmdResult {
    match cmd {
        RemoteAudit::Query {
            filters,
            csv,
            ndjson,
        } => {
            if csv || ndjson {
                return export(c, filters, csv).await;
            }
            let rb = c.req(reqwest::Method::GET, "/v1/audit").query(&filters);
            let v = c.json(rb).await?;
            if json {
                out_json(&v);
            } else {
                let rows: Vec<AuditRow> =
                    serde_json::from_value(v["items"].clone()).map_err(|e| Failure {
                        message: format!("unexpected audit rows from the server: {e}"),
                        code: 1,
                    })?;
                crate::cli::audit::print_rows(&rows, v["next"].as_str());
            }
            Ok(())
        }
        RemoteAudit::Export { filters, csv } => export(c, filters, csv).await,
        RemoteAudit::Summary {
            by,
            since,
            until,
            limit,
        } => {
            let mut q = vec![("by", by.clone())];
            q.extend(since.map(|v| ("since", v)));
            q.extend(until.map(|v| ("until", v)));
            q.extend(limit.map(|v| ("limit", v.to_string())));
            let rb = c.req(reqwest::Method::GET, "/v1/audit/summary").query(&q);
            let v = c.json(rb).await?;
            if json {
                out_json(&v);
            } else {
                let groups: Vec<crate::store::SummaryRow> =
                    serde_json::from_value(v["groups"].clone()).map_err(|e| {
                        Failure::from(format!("the server's summary is not one: {e}"))
                    })?;
                crate::cli::audit::print_summary(&by, &groups, v["truncated"] == true);
            }
            Ok(())
        }
        RemoteAudit::Verify { checkpoint } => verify(c, checkpoint, json).await,
    }
}

/// Streams the server's export to stdout as it arrives.
async fn export(c: &Client, mut filters: AuditParams, csv: bool) -> CmdResult {
    use std::io::Write;
    filters.format = Some(if csv { "csv" } else { "ndjson" }.into());
    let rb = c
        .stream_req(reqwest::Method::GET, "/v1/audit")
        .query(&filters);
    let mut resp = c.send(rb).await?;
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some(chunk) = resp.chunk().await.map_err(|e| Failure {
        message: format!("the export was cut off: {e}"),
        code: 1,
    })? {
        o.write_all(&chunk)?;
    }
    o.flush()?;
    Ok(())
}

/// What the API lets a tenant verify: the rows it returns chain to each
/// other (each hash recomputed, each `prev_hash` the previous row's hash, no
/// gap in `seq`), starting at genesis or at the oldest row still kept, and the
/// checkpoint's row still carries the checkpoint's hash.
async fn verify(c: &Client, checkpoint: Option<String>, json: bool) -> CmdResult {
    let (tenant, cp) = key_tenant_checkpoint(c, checkpoint.as_deref()).await?;
    let rows = exported_rows(c).await?;
    let (result, from_seq) = verify_rows(tenant, &rows, cp.as_ref());
    let ok = result.ok;
    if json {
        out_json(
            &json!({"ok": ok, "rows": result.rows, "from_seq": from_seq, "tenants": [result]}),
        );
    } else {
        print_verify_result(&result, from_seq);
    }
    if !ok {
        return Err(Failure {
            message: "audit verification failed".into(),
            code: 1,
        });
    }
    Ok(())
}

/// The key's tenant and, when `--checkpoint` is given, its entry there (a
/// checkpoint file may hold every tenant's heads, `audit checkpoint --json`);
/// a checkpoint without an entry for the key's tenant is a usage error.
async fn key_tenant_checkpoint(
    c: &Client,
    checkpoint: Option<&str>,
) -> Result<(String, Option<crate::cli::audit::Checkpoint>), Failure> {
    let cps = match checkpoint {
        Some(arg) => crate::cli::audit::parse_checkpoints(arg)?,
        None => Vec::new(),
    };
    let me = c.get("/v1/whoami").await?;
    let tenant = s(&me["tenant"]);
    let cp = cps.into_iter().find(|c| c.tenant == tenant);
    if checkpoint.is_some() && cp.is_none() {
        return Err(usage(&format!(
            "the checkpoint has no entry for tenant {tenant} (the key's tenant)"
        )));
    }
    Ok((tenant, cp))
}

/// Every row the API exports for the key's tenant, in `seq` order, parsed
/// line by line as the export arrives (the text is never held whole).
async fn exported_rows(c: &Client) -> Result<Vec<AuditRow>, Failure> {
    let filters = AuditParams {
        format: Some("ndjson".into()),
        ..AuditParams::default()
    };
    let rb = c
        .stream_req(reqwest::Method::GET, "/v1/audit")
        .query(&filters);
    let mut resp = c.send(rb).await?;
    let mut rows = NdjsonRows::default();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Failure::from(format!("the export was cut off: {e}")))?
    {
        rows.feed(&chunk)?;
    }
    let mut rows = rows.finish()?;
    rows.sort_by_key(|r| r.seq);
    Ok(rows)
}

/// Audit rows parsed from NDJSON fed in chunks that may cut a line anywhere.
#[derive(Default)]
struct NdjsonRows {
    /// The line the last chunk left unfinished.
    line: Vec<u8>,
    rows: Vec<AuditRow>,
}

impl NdjsonRows {
    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Failure> {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&chunk[..i]);
            self.end_line()?;
            chunk = &chunk[i + 1..];
        }
        self.line.extend_from_slice(chunk);
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), Failure> {
        if !self.line.is_empty() {
            let r: AuditRow = serde_json::from_slice(&self.line).map_err(|e| {
                Failure::from(format!(
                    "row {} of the export is not a row: {e}",
                    self.rows.len() + 1
                ))
            })?;
            self.rows.push(r);
            self.line.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<AuditRow>, Failure> {
        self.end_line()?;
        Ok(self.rows)
    }
}

/// Walks the chain over `rows` (sorted by `seq`) and checks the checkpoint;
/// returns the tenant's result and the `seq` the walk started after.
fn verify_rows(
    tenant: String,
    rows: &[AuditRow],
    cp: Option<&crate::cli::audit::Checkpoint>,
) -> (crate::cli::audit::TenantVerify, i64) {
    // The oldest row kept: after a prune it is not seq 1; the chain is
    // checked from its predecessor's hash (which the API does not vouch for).
    let (from_seq, from_hash) = match rows.first() {
        Some(r) if r.seq > 1 => (r.seq - 1, r.prev_hash.clone()),
        _ => (0, chain::GENESIS.to_owned()),
    };
    let mut v = Verifier::new(from_seq, &from_hash);
    let mut fault: Option<ChainFault> = None;
    let mut at_cp: Option<String> = None;
    // A history that starts after seq 1 must hold the prune that says so: the
    // `audit_pruned` row of exactly that point. Otherwise its first rows were
    // deleted, and the walk below would start from whatever the rest claims.
    if from_seq > 0 && !records_prune(rows, from_seq, &from_hash) {
        fault = Some(ChainFault {
            audit_id: String::new(),
            seq: from_seq + 1,
            problem: "unrecorded_prune",
            message: format!(
                "the history starts after seq {from_seq}, but no audit_pruned row in it records that prune point: rows were deleted"
            ),
        });
    }
    let walked = if fault.is_some() { &rows[..0] } else { rows };
    for r in walked {
        if let Err(f) = v.push(r) {
            fault = Some(f);
            break;
        }
        if cp.map(|c| c.count) == Some(r.seq) {
            at_cp = Some(r.hash.clone());
        }
    }
    if fault.is_none()
        && let Some(cp) = cp
    {
        fault =
            crate::cli::audit::checkpoint_fault(cp, at_cp.as_deref(), from_seq, v.expected_seq - 1);
    }
    let result = crate::cli::audit::TenantVerify {
        tenant,
        ok: fault.is_none(),
        rows: v.rows,
        rows_fast: 0,
        head_seq: v.expected_seq - 1,
        head_hash: v.head_hash.clone(),
        fault,
    };
    (result, from_seq)
}

/// Whether `rows` hold the `audit_pruned` row of the prune through
/// `through_seq` (whose last row's hash was `through_hash`).
fn records_prune(rows: &[AuditRow], through_seq: i64, through_hash: &str) -> bool {
    rows.iter()
        .filter(|r| r.kind == crate::audit::kind::AUDIT_PRUNED)
        .filter_map(|r| serde_json::from_str::<Value>(r.detail.as_deref()?).ok())
        .any(|d| {
            d["through_seq"].as_i64() == Some(through_seq)
                && d["through_hash"].as_str() == Some(through_hash)
        })
}

fn print_verify_result(result: &crate::cli::audit::TenantVerify, from_seq: i64) {
    match &result.fault {
        None => out(format!(
            "{}: ok, {} rows verified (from seq {}), head seq {} hash {}",
            result.tenant,
            result.rows,
            from_seq + 1,
            result.head_seq,
            result.head_hash
        )),
        Some(f) => out(format!(
            "{}: FAILED at seq {}: {} ({})",
            result.tenant, f.seq, f.message, f.problem
        )),
    }
}

async fn policy(c: &Client, cmd: RemotePolicy, json: bool) -> CmdResult {
    match cmd {
        RemotePolicy::Check { paths } => local_check(&paths, json),
        RemotePolicy::Test { path } => local_test(&path, json),
        RemotePolicy::Apply { path, dry_run } => policy_apply(c, &path, dry_run, json).await,
        RemotePolicy::Show { version } => policy_show(c, version, json).await,
        RemotePolicy::History => policy_history(c, json).await,
        RemotePolicy::Rollback { to } => {
            let v = c
                .send_json(
                    reqwest::Method::POST,
                    "/v1/policy/rollback",
                    &json!({ "to": to }),
                )
                .await?;
            print_outcome(v, json)
        }
    }
}

/// `policy apply` (remote): validate locally, so errors name lines of the
/// local file, then send it.
async fn policy_apply(c: &Client, path: &std::path::Path, dry_run: bool, json: bool) -> CmdResult {
    let text = read_file(&path.to_path_buf())?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    if let Err(errs) = crate::policy::parse(&path.display().to_string(), &text) {
        for e in &errs {
            eprintln!("{e}");
        }
        return Err(Failure {
            message: format!("{} is invalid; nothing was applied", path.display()),
            code: 1,
        });
    }
    let v = c
        .send_json(
            reqwest::Method::POST,
            "/v1/policy",
            &json!({"source": text, "source_name": name, "dry_run": dry_run}),
        )
        .await?;
    print_outcome(v, json)
}

/// `policy show` (remote): the version in force, or version N.
async fn policy_show(c: &Client, version: Option<i64>, json: bool) -> CmdResult {
    let v = match version {
        Some(n) => c.get(&format!("/v1/policy/versions/{n}")).await?,
        None => c.get("/v1/policy").await?,
    };
    if json {
        out_json(&v);
    } else {
        out(format!(
            "# tenant {} version {} applied {} by {}",
            s(&v["tenant"]),
            s(&v["version"]),
            v["applied_at_ms"].as_i64().map(fmt_ms).unwrap_or_default(),
            s(&v["applied_by"])
        ));
        out(s(&v["source"]));
    }
    Ok(())
}

/// `policy history` (remote).
async fn policy_history(c: &Client, json: bool) -> CmdResult {
    let v = c.get("/v1/policy/versions").await?;
    if json {
        out_json(&v);
    } else {
        out("VERSION  APPLIED                   BY                  SHA-256       NOTE");
        for r in v["items"].as_array().into_iter().flatten() {
            let sha = s(&r["sha256"]);
            out(format!(
                "{:<8} {:<25} {:<19} {:<13} {}",
                s(&r["version"]),
                r["applied_at_ms"].as_i64().map(fmt_ms).unwrap_or_default(),
                s(&r["applied_by"]),
                sha.chars().take(12).collect::<String>(),
                s(&r["note"])
            ));
        }
    }
    Ok(())
}

fn print_outcome(v: Value, json: bool) -> CmdResult {
    let o: crate::admin::ApplyOutcome = serde_json::from_value(v)
        .map_err(|e| Failure::from(format!("unexpected answer from the server: {e}")))?;
    crate::cli::policy::print_outcome(&o, json);
    Ok(())
}

async fn key(c: &Client, cmd: RemoteKey, json: bool) -> CmdResult {
    match cmd {
        RemoteKey::Create { scopes, name } => {
            let scopes: Vec<String> = scopes
                .iter()
                .flat_map(|s| s.split(','))
                .map(str::to_owned)
                .collect();
            let v = c
                .send_json(
                    reqwest::Method::POST,
                    "/v1/keys",
                    &json!({"scopes": scopes, "name": name}),
                )
                .await?;
            if json {
                out_json(&v);
            } else {
                out(format!(
                    "key id: {}\nscopes: {}\n\n{}\n\nThis is the only time the key is shown. Present it as `Authorization: Bearer <key>`.",
                    s(&v["key_id"]),
                    strs(&v["scopes"]).join(","),
                    s(&v["key"])
                ));
            }
            Ok(())
        }
        RemoteKey::List => {
            let v = c.get("/v1/keys").await?;
            if json {
                out_json(&v);
            } else {
                out(
                    "KEY ID            SCOPES              CREATED                   STATUS   NAME",
                );
                for k in v["items"].as_array().into_iter().flatten() {
                    let status = if k["revoked_at_ms"].is_null() {
                        "active"
                    } else {
                        "revoked"
                    };
                    out(format!(
                        "{:<17} {:<19} {:<25} {:<8} {}",
                        s(&k["key_id"]),
                        strs(&k["scopes"]).join(","),
                        k["created_at_ms"].as_i64().map(fmt_ms).unwrap_or_default(),
                        status,
                        s(&k["name"])
                    ));
                }
            }
            Ok(())
        }
        RemoteKey::Revoke { key_id } => {
            let v = c
                .json(c.req(
                    reqwest::Method::DELETE,
                    &format!("/v1/keys/{}", seg(&key_id)),
                ))
                .await?;
            if json {
                out_json(&v);
            } else {
                out(format!("revoked {key_id}"));
            }
            Ok(())
        }
    }
}

fn print_credential(v: &Value) {
    let or_dash = |x: &Value| {
        let t = s(x);
        if t.is_empty() { "-".to_owned() } else { t }
    };
    let id = if v["api_key"].is_null() {
        &v["application_id"]
    } else {
        &v["api_key"]
    };
    out(format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        s(&v["name"]),
        s(&v["provider"]),
        s(&v["source"]),
        or_dash(id),
        or_dash(&v["fingerprint"]),
        v["updated_at_ms"]
            .as_i64()
            .map(fmt_ms)
            .unwrap_or_else(|| "-".into())
    ));
}

async fn credential(c: &Client, cmd: RemoteCredential, json: bool) -> CmdResult {
    match cmd {
        RemoteCredential::List => {
            let v = c.get("/v1/credentials").await?;
            if json {
                out_json(&v);
            } else {
                for i in v["items"].as_array().into_iter().flatten() {
                    print_credential(i);
                }
            }
        }
        RemoteCredential::Show { name } => {
            let v = c.get(&format!("/v1/credentials/{}", seg(&name))).await?;
            if json {
                out_json(&v);
            } else {
                print_credential(&v);
            }
        }
        RemoteCredential::Set {
            name,
            provider,
            api_key,
            token_format,
            application_id,
            secret_file,
        } => {
            let secret = super::output::read_secret(&secret_file)?;
            let secret = secret.trim_end_matches(['\n', '\r']).to_owned();
            let body = match provider.as_str() {
                "opentok" => json!({
                    "provider": "opentok",
                    "api_key": api_key.ok_or_else(|| usage("--api-key is required for opentok"))?,
                    "api_secret": secret,
                    "token_format": token_format,
                }),
                "vonage" => json!({
                    "provider": "vonage",
                    "application_id": application_id
                        .ok_or_else(|| usage("--application-id is required for vonage"))?,
                    "private_key": secret,
                }),
                _ => return Err(usage("--provider is opentok or vonage")),
            };
            let v = c
                .send_json(
                    reqwest::Method::PUT,
                    &format!("/v1/credentials/{}", seg(&name)),
                    &body,
                )
                .await?;
            if json {
                out_json(&v);
            } else {
                print_credential(&v);
            }
        }
        RemoteCredential::Delete { name } => {
            let v = c
                .json(c.req(
                    reqwest::Method::DELETE,
                    &format!("/v1/credentials/{}", seg(&name)),
                ))
                .await?;
            if json {
                out_json(&v);
            } else {
                out(format!("deleted {name}"));
            }
        }
    }
    Ok(())
}

async fn session(c: &Client, cmd: RemoteSession, json: bool) -> CmdResult {
    let (v, json) = match cmd {
        RemoteSession::Get { session_id } => (
            c.get(&format!("/v1/sessions/{}", seg(&session_id))).await?,
            json,
        ),
        RemoteSession::Put {
            session_id,
            owner,
            labels,
        } => {
            let mut map = serde_json::Map::new();
            for l in labels {
                let (k, val) = l
                    .split_once('=')
                    .ok_or_else(|| usage("--label is KEY=VALUE"))?;
                map.insert(k.to_owned(), Value::String(val.to_owned()));
            }
            let v = c
                .send_json(
                    reqwest::Method::PUT,
                    &format!("/v1/sessions/{}", seg(&session_id)),
                    &json!({"owner": owner, "labels": map}),
                )
                .await?;
            (v, json)
        }
    };
    if json {
        out_json(&v);
    } else {
        out(format!("session: {}", s(&v["session_id"])));
        out(format!("owner: {}", s(&v["owner"])));
        for (k, val) in v["labels"].as_object().into_iter().flatten() {
            out(format!("label: {k}={}", s(val)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_goes_only_to_loopback_and_never_with_a_user_part() {
        for ok in [
            "http://localhost:8080",
            "http://127.0.0.1:8080/",
            "http://[::1]:8080",
            "https://broker.example.com/",
        ] {
            assert!(server_base(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            server_base("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        for refused in [
            "http://broker.example.com",
            "http://10.0.0.5:8080",
            "http://localhost.evil.com",
            "http://127.0.0.1.nip.io",
            // The user part hides the real host: the key went to evil.example.
            "http://[::1]@evil.example",
            "http://localhost@evil.example:8080",
            "https://user:pw@broker.example.com",
            "ftp://broker.example.com",
            "broker.example.com",
        ] {
            assert!(server_base(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_client_never_shows_its_key_in_debug_text() {
        let c = Client::new("http://127.0.0.1:1", "tkb_secret".into()).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn an_export_is_parsed_whatever_its_chunks_cut() {
        use crate::audit::{Actor, Kind, Outcome};
        let text: String = (1..=3)
            .map(|seq| {
                let mut r =
                    AuditRow::new("acme", Kind::TokenIssued, Outcome::Issued, Actor::ApiKey, 0);
                r.seq = seq;
                r.session_id = Some("é✓".into());
                serde_json::to_string(&r).unwrap() + "\n"
            })
            .collect();
        let b = text.as_bytes();
        for cut in 0..=b.len() {
            let mut rows = NdjsonRows::default();
            rows.feed(&b[..cut]).unwrap();
            rows.feed(&b[cut..]).unwrap();
            let rows = rows.finish().unwrap();
            assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        }
        let mut torn = NdjsonRows::default();
        torn.feed(&b[..b.len() - 5]).unwrap();
        assert!(torn.finish().is_err(), "a cut-off last row is not a row");
    }

    #[test]
    fn the_remote_cli_is_chosen_only_by_a_server_flag_before_the_separator() {
        let a = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(wanted(&a(&["tb", "--server", "http://x", "whoami"])));
        assert!(wanted(&a(&["tb", "whoami", "--server=http://x"])));
        assert!(!wanted(&a(&["tb", "serve"])));
        assert!(!wanted(&a(&["tb", "policy", "check", "--", "--server"])));
    }
}

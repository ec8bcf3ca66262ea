//! Tenant administration shared by the CLI and the HTTP API: tenants, API keys,
//! policy versions. Each operation validates, writes, and records an admin event
//! in the tenant's audit chain.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::{AuditRow, chain};
use crate::auth::{NewKey, Scopes, generate_key};
use crate::policy::{self, PolicyError};
use crate::secrets::SecretResolver;
use crate::store::{KeyRow, PolicyVersionRow, Store, StoreError};

/// Who performed an admin action (recorded in the audit row).
#[derive(Debug, Clone)]
pub enum Actor {
    /// The command-line tool, run by an operator on the broker's machine.
    Cli,
    /// An `admin`-scoped API key of the tenant.
    Key {
        key_id: String,
        request_id: Option<String>,
    },
}

impl Actor {
    /// `cli` or `key:<key id>`, as tenant admins see it (`created_by`,
    /// `applied_by`, `updated_by`). The operator's OS user name is not in it:
    /// it tells a tenant about the broker's host (threat-model rule 5).
    pub fn label(&self) -> String {
        match self {
            Actor::Cli => "cli".into(),
            Actor::Key { key_id, .. } => format!("key:{key_id}"),
        }
    }

    pub(crate) fn stamp(&self, row: &mut AuditRow) {
        match self {
            Actor::Cli => row.actor = "cli".into(),
            Actor::Key { key_id, request_id } => {
                row.actor = "api_key".into();
                row.key_id = Some(key_id.clone());
                row.request_id = request_id.clone();
            }
        }
    }
}

/// Appends one audit row straight to the store (the CLI's reads and prunes;
/// the server's requests go through its group-commit writer instead).
pub async fn record(store: &Store, row: AuditRow) -> Result<(), AdminError> {
    let mut rows = [row];
    let mut heads = Default::default();
    crate::audit::append(store, &mut rows, &mut heads)
        .await
        .map_err(AdminError::Store)
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("tenant {0} does not exist; create it with `token-broker tenant create {0}`")]
    NoTenant(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("policy file is invalid:\n{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<PolicyError>),
    #[error("the audit record could not be written; nothing was changed")]
    AuditUnavailable,
    /// A bad input field (`field` names it).
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    /// The video project belongs to another tenant (says nothing else about it).
    #[error("this video project (api key or application id) is already used by another tenant")]
    Claimed,
    #[error("{0}")]
    Conflict(String),
    #[error(
        "no master key is configured, so credentials cannot be stored; the operator sets master_key_file (create one with `token-broker credential keygen PATH`)"
    )]
    NoMasterKey,
    /// Other admin work holds what this needs (the one-at-a-time replay
    /// gate, or a full argon2 queue), and it did not free in time; retry later.
    #[error("the broker is busy with other admin work; retry in a few seconds")]
    Busy,
    /// A tenant admin already holds `MAX_LIVE_KEYS_PER_TENANT` live keys.
    #[error(
        "this tenant has {MAX_LIVE_KEYS_PER_TENANT} live API keys, the most allowed; revoke one first"
    )]
    TooManyKeys,
    /// The operation ran past its time bound and was stopped (nothing written).
    #[error("{0}")]
    TimedOut(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub use crate::policy::file::valid_slug;

pub async fn create_tenant(
    store: &Store,
    slug: &str,
    actor: &Actor,
    now_ms: i64,
) -> Result<(), AdminError> {
    if !valid_slug(slug) {
        return Err(AdminError::Invalid(format!(
            "invalid tenant slug {slug:?}: use 1-63 of a-z, 0-9 and '-', starting with a letter or digit"
        )));
    }
    refuse_env_overlap(store, slug).await?;
    let mut row = AuditRow::new(
        slug,
        crate::audit::Kind::TenantCreated,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::Cli,
        now_ms,
    );
    actor.stamp(&mut row);
    retry_head(|| {
        let mut row = row.clone();
        async move {
            store
                .create_tenant(slug, now_ms, &mut row, chain::seal)
                .await
        }
    })
    .await?;
    Ok(())
}

pub(crate) use crate::audit::retry_head;

/// A new tenant's environment namespace (`TOKEN_BROKER_TENANT_ACME_WEST_`)
/// lies inside the namespace of any tenant whose slug is a prefix of it at a
/// dash (`acme`). Once the new tenant exists, such names are its own; until
/// then the older tenant may use them. So the new tenant is refused while an
/// older tenant's current policy references a variable in its namespace:
/// otherwise that tenant would keep signing with the new tenant's secret.
async fn refuse_env_overlap(store: &Store, slug: &str) -> Result<(), AdminError> {
    use crate::domain::{SecretRef, env_prefix};
    let theirs = env_prefix(slug);
    for other in store.tenant_slugs().await? {
        let mine = env_prefix(&other);
        if other == slug || mine.len() >= theirs.len() || !theirs.starts_with(&mine) {
            continue;
        }
        let Some(row) = store.current_policy(&other).await? else {
            continue;
        };
        let Ok(doc) = crate::policy::parse_stored(&row.source_name, &row.source) else {
            continue;
        };
        let inside = doc
            .secret_refs()
            .into_iter()
            .find_map(|(field, r)| match r {
                SecretRef::Env(name) if name.starts_with(&theirs) => Some((field, name)),
                _ => None,
            });
        if let Some((field, name)) = inside {
            return Err(AdminError::Invalid(format!(
                "tenant {other}'s policy (version {}) references env:{name} at {field}, which would belong to tenant {slug}: rename that variable in {other}'s policy first, or choose another slug",
                row.version
            )));
        }
    }
    Ok(())
}

/// A policy version as shown to admins (HTTP and CLI `--json` alike); the
/// source text only where one version is asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionView {
    pub tenant: String,
    pub version: i64,
    pub source_name: String,
    pub sha256: String,
    pub applied_by: String,
    pub applied_at_ms: i64,
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl VersionView {
    pub fn of(r: PolicyVersionRow, with_source: bool) -> VersionView {
        VersionView {
            tenant: r.tenant,
            version: r.version,
            source_name: r.source_name,
            sha256: r.sha256,
            applied_by: r.applied_by,
            applied_at_ms: r.applied_at_ms,
            note: r.note,
            source: with_source.then_some(r.source),
        }
    }
}

/// A key as shown to admins: never the secret or its hash.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub key_id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
}

impl From<KeyRow> for KeyInfo {
    fn from(r: KeyRow) -> KeyInfo {
        KeyInfo {
            key_id: r.key_id,
            tenant: r.tenant,
            name: r.name,
            scopes: r
                .scopes
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            created_at_ms: r.created_at_ms,
            created_by: r.created_by,
            revoked_at_ms: r.revoked_at_ms,
        }
    }
}

/// The most live (unrevoked) keys a tenant's admin may create over HTTP.
pub const MAX_LIVE_KEYS_PER_TENANT: usize = 100;

/// Creates a key; the returned `NewKey.key` is the only time the secret exists
/// outside the caller's hands. `hashers`: the broker's argon2 pool (HTTP);
/// the CLI hashes on its own blocking pool. A tenant admin (`Actor::Key`)
/// may hold at most `MAX_LIVE_KEYS_PER_TENANT` live keys.
pub async fn create_key(
    store: &Store,
    tenant: &str,
    scopes: Scopes,
    name: Option<String>,
    actor: &Actor,
    now_ms: i64,
    hashers: Option<&crate::auth::Authenticator>,
) -> Result<NewKey, AdminError> {
    if !store.tenant_exists(tenant).await? {
        return Err(AdminError::NoTenant(tenant.to_owned()));
    }
    if let Some(n) = &name
        && (n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control))
    {
        return Err(AdminError::Invalid(
            "key name must be 1-100 printable characters".into(),
        ));
    }
    // A quick refusal before the argon2 work; the insert counts again under
    // the tenant's lock, so concurrent creations cannot pass the bound.
    let max_live = matches!(actor, Actor::Key { .. }).then_some(MAX_LIVE_KEYS_PER_TENANT as i64);
    if let Some(max) = max_live
        && store.count_live_keys(tenant).await? >= max
    {
        return Err(AdminError::TooManyKeys);
    }
    let by = actor.label();
    let new = match hashers {
        Some(h) => h
            .generate_key(tenant, scopes, name, &by, now_ms)
            .await
            .map_err(|_| AdminError::Busy)?,
        None => {
            let t = tenant.to_owned();
            tokio::task::spawn_blocking(move || generate_key(&t, scopes, name, &by, now_ms))
                .await
                .map_err(|e| AdminError::Invalid(e.to_string()))?
        }
    }
    .map_err(AdminError::Invalid)?;
    let mut row = AuditRow::new(
        tenant,
        crate::audit::Kind::KeyCreated,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::Cli,
        now_ms,
    );
    actor.stamp(&mut row);
    row.detail = Some(
        serde_json::json!({"created_key_id": new.row.key_id, "scopes": scopes.names(), "name": new.row.name})
            .to_string(),
    );
    retry_head(|| {
        let mut row = row.clone();
        let key = &new.row;
        async move { store.insert_key(key, &mut row, chain::seal, max_live).await }
    })
    .await
    .map_err(|e| match e {
        StoreError::TooMany(_) => AdminError::TooManyKeys,
        other => AdminError::Store(other),
    })?;
    Ok(new)
}

/// Revokes a key (confined to `tenant` when given). Returns the key's tenant.
pub async fn revoke_key(
    store: &Store,
    key_id: &str,
    tenant: Option<&str>,
    actor: &Actor,
    now_ms: i64,
) -> Result<String, AdminError> {
    // The row's tenant is set by the store to the key's own tenant.
    let mut row = AuditRow::new(
        "",
        crate::audit::Kind::KeyRevoked,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::Cli,
        now_ms,
    );
    actor.stamp(&mut row);
    row.detail = Some(serde_json::json!({"revoked_key_id": key_id}).to_string());
    let owner = retry_head(|| {
        let mut row = row.clone();
        async move {
            store
                .revoke_key(key_id, tenant, now_ms, &mut row, chain::seal)
                .await
        }
    })
    .await
    .map_err(|e| match e {
        StoreError::NotFound => AdminError::NotFound(format!("no API key {key_id}")),
        other => AdminError::Store(other),
    })?;
    Ok(owner)
}

/// Runs CPU-heavy admin work (parsing, diffing, hashing a policy) on the
/// blocking pool, one job at a time per process: however many admins dry-run
/// large policies at once, they use at most one core and never an HTTP
/// worker, so issuance and health checks keep theirs.
async fn off_workers<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AdminError> {
    static ADMIN_CPU: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _permit = ADMIN_CPU
        .acquire()
        .await
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdminError::Invalid(e.to_string()))
}

/// Parses a proposed policy off the workers and checks that its tenant
/// exists and is `confine` (the tenant of the HTTP admin key), when given.
pub(crate) async fn parse_for_tenant(
    store: &Store,
    source_name: &str,
    text: &str,
    confine: Option<&str>,
) -> Result<policy::PolicyDoc, AdminError> {
    let (name, src) = (source_name.to_owned(), text.to_owned());
    let doc = off_workers(move || policy::parse(&name, &src))
        .await?
        .map_err(AdminError::Policy)?;
    if let Some(t) = confine
        && t != doc.tenant
    {
        return Err(AdminError::Forbidden(format!(
            "this key belongs to tenant {t}; the policy is for tenant {}",
            doc.tenant
        )));
    }
    if !store.tenant_exists(&doc.tenant).await? {
        return Err(AdminError::NoTenant(doc.tenant));
    }
    Ok(doc)
}

/// Maps a project claim refused by the store: another tenant's project says
/// nothing more (`Claimed`); one of the same tenant says which and how to fix it.
pub(crate) fn claim_error(e: StoreError, fix: &str) -> AdminError {
    match e {
        StoreError::Claimed {
            same_tenant: false, ..
        } => AdminError::Claimed,
        StoreError::Claimed {
            owner_id,
            same_tenant: true,
        } => AdminError::Conflict(format!(
            "another credential of this tenant already uses {owner_id}; {fix}"
        )),
        other => AdminError::Store(other),
    }
}

/// The result of applying (or dry-running) a policy.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ApplyOutcome {
    pub tenant: String,
    /// Version in force before.
    pub previous_version: i64,
    /// The new version (`None` on a dry run or when nothing changed).
    pub version: Option<i64>,
    pub dry_run: bool,
    pub unchanged: bool,
    /// Unified diff from the current version's text to the new one.
    pub diff: String,
    /// Secret references that cannot be resolved here.
    pub warnings: Vec<String>,
}

/// Validates `text` and, unless `dry_run`, writes it as the tenant's next
/// version. `confine` restricts the tenant (HTTP admin keys). Parsing,
/// hashing and diffing run on the blocking pool; every secret reference is
/// resolved inside the tenant's namespace (off the workers, time-bounded):
/// one that leaves the namespace or names something other than a small
/// regular file is refused; one not provisioned here is a warning.
#[allow(clippy::too_many_arguments)]
pub async fn apply_policy(
    store: &Store,
    secrets: &SecretResolver,
    source_name: &str,
    text: &str,
    confine: Option<&str>,
    dry_run: bool,
    actor: &Actor,
    note: Option<&str>,
    now_ms: i64,
) -> Result<ApplyOutcome, AdminError> {
    let doc = parse_for_tenant(store, source_name, text, confine).await?;
    let tenant = doc.tenant.clone();
    let warnings = check_references(store, secrets, &doc, source_name, text).await?;
    let current = store.current_policy(&tenant).await?;
    let previous_version = current.as_ref().map(|c| c.version).unwrap_or(0);
    let old_text = current.as_ref().map(|c| c.source.as_str()).unwrap_or("");
    let unchanged = current.as_ref().is_some_and(|c| c.source == text);
    let (old, new) = (old_text.to_owned(), text.to_owned());
    let (diff, sha) = off_workers(move || {
        (
            policy::diff(&old, &new),
            chain::hex(&Sha256::digest(new.as_bytes())),
        )
    })
    .await?;
    let mut out = ApplyOutcome {
        tenant: tenant.clone(),
        previous_version,
        version: None,
        dry_run,
        unchanged,
        diff,
        warnings,
    };
    if dry_run || unchanged {
        return Ok(out);
    }
    let owner_ids: Vec<String> = doc
        .credentials
        .iter()
        .map(|c| c.owner_id().to_owned())
        .collect();
    let mut row = AuditRow::new(
        &tenant,
        crate::audit::Kind::PolicyApplied,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::Cli,
        now_ms,
    );
    actor.stamp(&mut row);
    row.detail = Some(
        serde_json::json!({"previous_version": previous_version, "sha256": sha, "source_name": source_name, "note": note})
            .to_string(),
    );
    let label = actor.label();
    let version = retry_head(|| {
        let mut row = row.clone();
        let (tenant, sha, label, owner_ids) = (&tenant, &sha, &label, &owner_ids);
        async move {
            store
                .insert_policy_version(
                    tenant,
                    previous_version,
                    text,
                    source_name,
                    sha,
                    label,
                    note,
                    owner_ids,
                    now_ms,
                    &mut row,
                    chain::seal,
                )
                .await
        }
    })
    .await
    .map_err(|e| claim_error(e, "delete the stored credential or drop it from the policy"))?;
    out.version = Some(version);
    Ok(out)
}

/// Where in `text` a quoted value stands (for locating errors found after parsing).
fn locate(
    source_name: &str,
    text: &str,
    value: &str,
    field: String,
    message: String,
) -> PolicyError {
    let quoted = format!("\"{value}\"");
    let offset = text.find(&quoted).unwrap_or(0);
    let (line, column) = policy::file::line_col(text, offset);
    PolicyError {
        file: source_name.to_owned(),
        line,
        column,
        field,
        message,
    }
}

/// Resolves every secret reference of `doc` where the broker runs, inside the
/// tenant's namespace, and checks credential names against stored ones.
/// Refusals are errors (with their location); references not provisioned here
/// and keys that do not parse are warnings.
async fn check_references(
    store: &Store,
    secrets: &SecretResolver,
    doc: &policy::PolicyDoc,
    source_name: &str,
    text: &str,
) -> Result<Vec<String>, AdminError> {
    let tenants = store.tenant_slugs().await?;
    let refs = doc.secret_refs();
    let resolved = secrets
        .resolve_all(
            &doc.tenant,
            refs.iter().map(|(_, r)| r.clone()).collect(),
            &tenants,
        )
        .await;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for (field, r) in &refs {
        match resolved.get(r) {
            Err(e) if e.is_refusal() => errors.push(locate(
                source_name,
                text,
                &r.to_string(),
                field.clone(),
                e.to_string(),
            )),
            Err(e) => warnings.push(format!(
                "{field}: {e} (the credential stays unusable until the operator provisions it)"
            )),
            Ok(_) => {}
        }
    }
    // One video project, one tenant: said on a dry run too (the apply's own
    // transaction re-checks, so a race cannot slip through).
    let claims = store.project_claims().await?;
    if doc.credentials.iter().any(|c| {
        claims
            .iter()
            .any(|(owner, t)| owner == c.owner_id() && t != &doc.tenant)
    }) {
        return Err(AdminError::Claimed);
    }
    let stored = store.list_credentials(&doc.tenant).await?;
    for (i, c) in doc.credentials.iter().enumerate() {
        if stored.iter().any(|s| s.name == c.name) {
            errors.push(locate(
                source_name,
                text,
                &c.name,
                format!("credentials[{i}].name"),
                format!(
                    "a stored credential is already named {:?}; names are unique across policy and stored credentials",
                    c.name
                ),
            ));
        }
        let secret = c.secret();
        if let Ok(bytes) = resolved.get(secret)
            && let Err(e) = crate::tokens::Signer::from_spec(c, bytes)
        {
            warnings.push(format!(
                "credentials[{i}]: {e} (the credential will be unusable)"
            ));
        }
    }
    if !errors.is_empty() {
        return Err(AdminError::Policy(policy::file::cap_errors(errors)));
    }
    Ok(warnings)
}

/// Re-applies version `to` as a new version.
pub async fn rollback_policy(
    store: &Store,
    secrets: &SecretResolver,
    tenant: &str,
    to: i64,
    actor: &Actor,
    now_ms: i64,
) -> Result<ApplyOutcome, AdminError> {
    let old: PolicyVersionRow = store.policy_version(tenant, to).await?.ok_or_else(|| {
        AdminError::NotFound(format!("tenant {tenant} has no policy version {to}"))
    })?;
    let note = format!("rollback to {to}");
    let out = apply_policy(
        store,
        secrets,
        &old.source_name,
        &old.source,
        Some(tenant),
        false,
        actor,
        Some(&note),
        now_ms,
    )
    .await?;
    Ok(out)
}

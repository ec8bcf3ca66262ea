//! What a running broker keeps in memory, shared by every request: the store,
//! the key authenticator, the audit writer, each tenant's compiled policy with
//! its loaded signers, and a cache of registered sessions. The change poller
//! keeps these caches in step with the database (and so with other instances).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::audit::AuditWriter;
use crate::auth::Authenticator;
use crate::auth::idp::IdentityProvider;
use crate::clock::Clock;
use crate::limits::{Limits, Rates};
use crate::metrics::Metrics;
use crate::policy::{CompiledPolicy, SessionFacts};
use crate::secrets::{Keyring, Resolved, SecretResolver};
use crate::settings::Settings;
use crate::store::{ChangeRow, PolicyVersionRow, Store, StoreResult, StoredCredentialRow};
use crate::tokens::Signer;

/// A credential of a tenant, loaded (or why it could not be).
#[derive(Debug)]
pub struct LoadedCredential {
    pub name: String,
    pub owner_id: String,
    /// `policy` (an operator reference) or `stored` (uploaded, sealed).
    pub source: &'static str,
    pub signer: Result<Signer, String>,
}

/// A tenant's policy version in force, compiled, with its signers, identity
/// providers, CORS origins and any rate-limit overrides.
#[derive(Debug)]
pub struct TenantRuntime {
    pub policy: CompiledPolicy,
    pub credentials: Vec<LoadedCredential>,
    pub idps: Vec<(String, Result<IdentityProvider, String>)>,
    pub cors_origins: Vec<String>,
    /// This tenant's rates when its policy overrides the broker's (the
    /// buckets themselves live in `AppState::limits` and survive reloads).
    pub rate_limits: Option<Rates>,
}

/// What loading a tenant needs from outside the policy text.
#[derive(Debug)]
pub struct LoadInputs<'a> {
    /// The policy's secrets, resolved in the tenant's namespace.
    pub secrets: &'a Resolved,
    /// The tenant's stored credentials (sealed).
    pub stored: &'a [StoredCredentialRow],
    pub keyring: Option<&'a Keyring>,
    /// Which tenant claims each video project.
    pub claims: &'a HashMap<String, String>,
    /// JWKS URLs may reach non-public addresses (setting `jwks_private_addresses`).
    pub jwks_private_addresses: bool,
}

impl TenantRuntime {
    /// Compiles a stored version with its credentials: the policy's, from
    /// resolved references, and the stored ones, opened with the keyring. A
    /// credential whose project another tenant claims is never loaded.
    pub fn load(row: &PolicyVersionRow, inputs: &LoadInputs) -> Result<TenantRuntime, String> {
        let doc = crate::policy::parse_stored(&row.source_name, &row.source).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let tenant = row.tenant.as_str();
        let claimed_elsewhere = |owner: &str| {
            inputs
                .claims
                .get(owner)
                .is_some_and(|t| t.as_str() != tenant)
        };
        let mut credentials: Vec<LoadedCredential> = doc
            .credentials
            .iter()
            .map(|spec| {
                let secret = spec.secret();
                let signer = if claimed_elsewhere(spec.owner_id()) {
                    Err("its video project is claimed by another tenant".to_owned())
                } else {
                    inputs
                        .secrets
                        .get(secret)
                        .map_err(|e| e.to_string())
                        .and_then(|bytes| Signer::from_spec(spec, bytes).map_err(|e| e.to_string()))
                };
                LoadedCredential {
                    name: spec.name.clone(),
                    owner_id: spec.owner_id().to_owned(),
                    source: "policy",
                    signer,
                }
            })
            .collect();
        for stored in inputs.stored {
            let signer = if claimed_elsewhere(&stored.owner_id) {
                Err("its video project is claimed by another tenant".to_owned())
            } else if credentials
                .iter()
                .any(|c| c.name == stored.name || c.owner_id == stored.owner_id)
            {
                Err("a policy credential has the same name or project".to_owned())
            } else {
                crate::credentials::open_signer(inputs.keyring, stored)
            };
            credentials.push(LoadedCredential {
                name: stored.name.clone(),
                owner_id: stored.owner_id.clone(),
                source: "stored",
                signer,
            });
        }
        for c in &credentials {
            if let Err(e) = &c.signer {
                tracing::warn!(tenant = ?tenant, credential = ?c.name, error = ?e,
                    "credential unavailable; its sessions get 503 credential_unavailable");
            }
        }
        let idps = doc
            .identity_providers
            .iter()
            .map(|spec| {
                let idp =
                    IdentityProvider::load(spec, inputs.secrets, inputs.jwks_private_addresses);
                if let Err(e) = &idp {
                    tracing::warn!(tenant = ?tenant, idp = ?spec.name, error = ?e, "identity provider unavailable");
                }
                (spec.name.clone(), idp)
            })
            .collect();
        let cors_origins = doc.cors_allowed_origins.clone();
        let rate_limits = doc.rate_limits;
        Ok(TenantRuntime {
            policy: CompiledPolicy::compile(doc, row.version),
            credentials,
            idps,
            cors_origins,
            rate_limits,
        })
    }

    /// Gathers what `load` needs (secrets resolved in the tenant's namespace,
    /// stored credentials, project claims) and loads the version.
    pub async fn load_from_store(
        store: &Store,
        resolver: &SecretResolver,
        keyring: Option<&Keyring>,
        row: &PolicyVersionRow,
    ) -> StoreResult<Result<TenantRuntime, String>> {
        let refs = crate::policy::parse_stored(&row.source_name, &row.source)
            .map(|d| d.secret_refs().into_iter().map(|(_, r)| r).collect())
            .unwrap_or_default();
        let tenants = store.tenant_slugs().await?;
        let secrets = resolver.resolve_all(&row.tenant, refs, &tenants).await;
        let stored = store.list_credentials(&row.tenant).await?;
        let claims: HashMap<String, String> = store.project_claims().await?.into_iter().collect();
        Ok(TenantRuntime::load(
            row,
            &LoadInputs {
                secrets: &secrets,
                stored: &stored,
                keyring,
                claims: &claims,
                jwks_private_addresses: resolver.jwks_private_addresses(),
            },
        ))
    }

    /// The identity provider whose issuer is `iss`, loaded or not (one that
    /// failed to load answers `idp_unavailable`, never opens).
    pub fn idp_for(&self, iss: &str) -> Option<&(String, Result<IdentityProvider, String>)> {
        let spec = self
            .policy
            .doc
            .identity_providers
            .iter()
            .find(|s| s.issuer == iss)?;
        self.idps.iter().find(|(name, _)| *name == spec.name)
    }

    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == origin || o == "*")
    }

    /// The credential a session ID's owner id names.
    pub fn credential_for(&self, owner_id: &str) -> Option<&LoadedCredential> {
        self.credentials.iter().find(|c| c.owner_id == owner_id)
    }
}

/// Longest a tenant's secret references may take to read.
pub const SECRET_READ_BOUND: Duration = Duration::from_secs(2);

/// Shared application state (one per process; behind `web::Data`).
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub auth: Authenticator,
    pub audit: AuditWriter,
    pub limits: Limits,
    pub metrics: Metrics,
    /// The one source of time (tests freeze it and move it forward).
    pub clock: Clock,
    /// Resolves tenants' operator-provisioned references (namespace-confined).
    pub secrets: SecretResolver,
    /// Opens stored credentials; `None` when no master key is configured.
    pub keyring: Option<Keyring>,
    /// Bounds the audit work that reads a tenant's whole history (proofs,
    /// the console's chain check).
    pub heavy: crate::audit::heavy::Heavy,
    tenants: RwLock<HashMap<String, Arc<TenantRuntime>>>,
    /// Tenants whose stored policy failed to load (kept for `/readyz`).
    broken: RwLock<HashMap<String, String>>,
    sessions: SessionCache,
    /// The highest change id the feed has read.
    feed_position: AtomicI64,
    /// Tenant admins' policy replays run one at a time (`replay::for_tenant`).
    pub replay_gate: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The audit writer's and the key cache's counters, for `/metrics`.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        use std::sync::atomic::Ordering::Relaxed;
        let h = &self.audit.health;
        let (key_cache_hits, key_cache_misses) = self.auth.cache_stats();
        crate::metrics::Gauges {
            audit_committed_rows: h.committed_rows.load(Relaxed),
            audit_committed_batches: h.committed_batches.load(Relaxed),
            audit_failed_batches: h.failed_batches.load(Relaxed),
            audit_refused_rows: h.refused_rows.load(Relaxed),
            audit_failing: h.failing(),
            audit_queue_depth: self.audit.queue_depth(),
            key_cache_hits,
            key_cache_misses,
        }
    }

    pub fn new(
        settings: Settings,
        store: Store,
        audit: AuditWriter,
        keyring: Option<Keyring>,
        clock: Clock,
    ) -> AppState {
        let auth = Authenticator::new(store.clone(), settings.key_cache, settings.hash_parallelism);
        AppState {
            secrets: SecretResolver::new(settings.secrets_dir.clone(), SECRET_READ_BOUND)
                .with_jwks_private_addresses(settings.jwks_private_addresses),
            keyring,
            heavy: Default::default(),
            limits: Limits::new(settings.rates, clock.clone()),
            metrics: Metrics::new(&audit.health.metrics, settings.metrics_tenant_labels),
            clock,
            settings,
            store,
            auth,
            audit,
            tenants: RwLock::new(HashMap::new()),
            broken: RwLock::new(HashMap::new()),
            sessions: SessionCache::new(100_000),
            feed_position: AtomicI64::new(0),
            replay_gate: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The tenant's runtime, if it has an applied policy.
    pub fn tenant(&self, tenant: &str) -> Option<Arc<TenantRuntime>> {
        self.tenants.read().ok()?.get(tenant).cloned()
    }

    /// Loads every tenant's current policy (at start), all tenants at once: a
    /// tenant whose secrets hang or fail delays and breaks only itself (each
    /// read is off the workers and time-bounded).
    pub async fn load_all_policies(&self) -> StoreResult<()> {
        let rows = self.store.all_current_policies().await?;
        // Policies applied before project claims existed claim what is free.
        let now = self.clock.now_unix_ms();
        for row in &rows {
            if let Ok(doc) = crate::policy::parse_stored(&row.source_name, &row.source) {
                let owners: Vec<String> = doc
                    .credentials
                    .iter()
                    .map(|c| c.owner_id().to_owned())
                    .collect();
                self.store
                    .claim_free_projects(&row.tenant, &owners, now)
                    .await?;
            }
        }
        let loads = rows.iter().map(|row| self.install(row));
        for r in futures_util::future::join_all(loads).await {
            r?;
        }
        Ok(())
    }

    /// Reloads one tenant's current policy if it is newer than the one in
    /// memory, or always with `force` (its stored credentials changed).
    pub async fn reload_policy(&self, tenant: &str) -> StoreResult<()> {
        self.reload(tenant, false).await
    }

    /// Reloads a tenant whatever its version (credentials changed).
    pub async fn reload_tenant(&self, tenant: &str) -> StoreResult<()> {
        self.reload(tenant, true).await
    }

    async fn reload(&self, tenant: &str, force: bool) -> StoreResult<()> {
        if let Some(row) = self.store.current_policy(tenant).await? {
            let loaded = self.tenant(tenant).map(|t| t.policy.version).unwrap_or(0);
            if force || row.version > loaded {
                self.install(&row).await?;
            }
        }
        Ok(())
    }

    /// Loads stored policy version `row` and puts it in use, unless a newer
    /// version of the tenant came into use while it loaded (loading resolves
    /// secrets, up to seconds: a forced reload of version N that started
    /// before N+1 was applied must not end up deciding under N).
    pub async fn install(&self, row: &PolicyVersionRow) -> StoreResult<()> {
        let loaded =
            TenantRuntime::load_from_store(&self.store, &self.secrets, self.keyring.as_ref(), row)
                .await?;
        match loaded {
            Ok(rt) => {
                let Ok(mut m) = self.tenants.write() else {
                    return Ok(());
                };
                if let Some(newer) = m
                    .get(&row.tenant)
                    .map(|t| t.policy.version)
                    .filter(|v| *v > row.version)
                {
                    tracing::info!(tenant = ?row.tenant, version = row.version, newer, "policy load outdated: a newer version is in use");
                    return Ok(());
                }
                self.limits
                    .set_tenant_rates(&row.tenant, rt.rate_limits.as_ref());
                m.insert(row.tenant.clone(), Arc::new(rt));
                drop(m);
                tracing::info!(tenant = ?row.tenant, version = row.version, "policy loaded");
                if let Ok(mut b) = self.broken.write() {
                    b.remove(&row.tenant);
                }
            }
            // An outdated version that fails says nothing of the one in use.
            Err(_)
                if self
                    .tenant(&row.tenant)
                    .is_some_and(|t| t.policy.version > row.version) => {}
            Err(e) => {
                tracing::error!(tenant = ?row.tenant, version = row.version, error = ?e, "stored policy does not load");
                if let Ok(mut b) = self.broken.write() {
                    b.insert(row.tenant.clone(), e);
                }
            }
        }
        Ok(())
    }

    /// Counts for the unauthenticated `/readyz`: no names, paths or variables.
    pub fn problem_counts(&self) -> (usize, usize) {
        let tenants = self.tenants.read().map(|m| m.len()).unwrap_or(0);
        (tenants, self.problems().len())
    }

    /// Problems of one tenant (for its own admins: `GET /v1/status`).
    pub fn tenant_problems(&self, tenant: &str) -> Vec<String> {
        let prefix = format!("tenant {tenant}: ");
        self.problems()
            .into_iter()
            .filter_map(|p| p.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// Problems `/readyz` reports: policies that do not load, credentials whose
    /// secrets cannot be resolved.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(b) = self.broken.read() {
            for (t, e) in b.iter() {
                out.push(format!("tenant {t}: policy does not load: {e}"));
            }
        }
        if let Ok(m) = self.tenants.read() {
            for (t, rt) in m.iter() {
                for c in &rt.credentials {
                    if let Err(e) = &c.signer {
                        out.push(format!(
                            "tenant {t}: credential {} unavailable: {e}",
                            c.name
                        ));
                    }
                }
                for (name, idp) in &rt.idps {
                    if let Err(e) = idp {
                        out.push(format!(
                            "tenant {t}: identity provider {name} unavailable: {e}"
                        ));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// A session's registered facts (cached; unregistered sessions too).
    pub async fn session_facts(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> StoreResult<Arc<SessionFacts>> {
        let key = (tenant.to_owned(), session_id.to_owned());
        self.sessions
            .get_or_read(key, async {
                Ok(match self.store.get_session(tenant, session_id).await? {
                    Some(row) => SessionFacts {
                        owner: row.owner,
                        labels: serde_json::from_str(&row.labels).unwrap_or_default(),
                    },
                    None => SessionFacts::default(),
                })
            })
            .await
    }

    pub fn forget_session(&self, tenant: &str, session_id: &str) {
        self.sessions
            .forget(&(tenant.to_owned(), session_id.to_owned()));
    }

    /// After the feed was out of reach for over `FEED_TRUST_MS`, rows it
    /// never read may be gone (every instance prunes rows older than 10
    /// minutes): drops what the caches hold and loads every tenant again, as
    /// at start.
    async fn resync_after_feed_outage(&self) -> StoreResult<()> {
        self.auth.forget_all();
        self.sessions.forget_all();
        self.load_all_policies().await
    }

    /// Follows the change feed until the process ends: every `every`, drops what
    /// changed from the caches. The cursor reads every change exactly once,
    /// including ids that commit long after higher ones (see `ChangeCursor`).
    ///
    /// The caches are trusted only while the feed is read: once it has not
    /// been for `FEED_TRUST_MS`, each failed read drops the cached keys (a
    /// revoked key must not keep working on an instance cut off from the
    /// database), and the first successful one resyncs everything.
    pub async fn follow_changes(self: Arc<Self>, every: Duration) {
        let mut cursor: Option<ChangeCursor> = None;
        // When the feed was last read (ms), once it has been.
        let mut last_read: Option<i64> = None;
        let mut ticks: u64 = 0;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            ticks += 1;
            let c = match &mut cursor {
                Some(c) => c,
                None => match ChangeCursor::start(&self.store).await {
                    Ok(c) => cursor.insert(c),
                    Err(e) => {
                        tracing::warn!(error = ?e.to_string(), "change feed unavailable");
                        continue;
                    }
                },
            };
            let now_ms = self.clock.now_unix_ms();
            let out_of_reach = last_read.is_some_and(|t| now_ms - t > FEED_TRUST_MS);
            match c.poll(&self.store, now_ms).await {
                Ok(rows) => {
                    if out_of_reach {
                        tracing::warn!(
                            "change feed read again after an outage; dropping caches and reloading tenants"
                        );
                        match self.resync_after_feed_outage().await {
                            Ok(()) => last_read = Some(now_ms),
                            Err(e) => {
                                tracing::warn!(error = ?e.to_string(), "resync after a feed outage failed; will retry")
                            }
                        }
                    } else {
                        last_read = Some(now_ms);
                    }
                    for row in rows {
                        match row.kind.as_str() {
                            "key_revoked" => self.auth.forget(&row.subject),
                            "session_updated" => self.forget_session(&row.tenant, &row.subject),
                            "credential_changed" => {
                                if let Err(e) = self.reload_tenant(&row.tenant).await {
                                    tracing::warn!(tenant = ?row.tenant, error = ?e.to_string(), "credential reload failed; will retry");
                                    c.retry(&row, now_ms);
                                }
                            }
                            "policy_applied" => {
                                if let Err(e) = self.reload_policy(&row.tenant).await {
                                    tracing::warn!(tenant = ?row.tenant, error = ?e.to_string(), "policy reload failed; will retry");
                                    c.retry(&row, now_ms);
                                }
                            }
                            _ => {}
                        }
                    }
                    self.feed_position.store(c.position(), Ordering::Release);
                }
                Err(e) => {
                    if out_of_reach {
                        self.auth.forget_all();
                    }
                    tracing::warn!(error = ?e.to_string(), "change feed unavailable")
                }
            }
            // About once a minute, drop feed rows every instance has seen by now.
            if ticks.is_multiple_of(240) {
                self.limits.shrink();
                let cutoff = now_ms - 10 * 60 * 1000;
                let _ = self.store.prune_changes(cutoff).await;
            }
        }
    }

    /// The highest change id this instance's feed has read (for tests and
    /// diagnostics; 0 before the first read).
    pub fn change_feed_position(&self) -> i64 {
        self.feed_position.load(Ordering::Acquire)
    }
}

/// How long the caches are trusted without reading the change feed (ms):
/// far below the 10 minutes after which feed rows are pruned, whatever the
/// instances' clocks say, and long enough that a short database hiccup does
/// not cost every key an argon2 verification.
pub const FEED_TRUST_MS: i64 = 60 * 1000;

/// A complete reader of the `changes` table.
///
/// Ids come from a sequence, and on PostgreSQL a transaction takes its id
/// when it inserts and becomes visible when it commits, so a revocation that
/// waits on a lock can appear after hundreds of later ids. Reading a fixed
/// window below the last id seen skipped it under such a flood. Instead the
/// cursor reads everything above the highest id it has seen, page by page,
/// and remembers every id it stepped over ("gaps"); each poll asks for the
/// gaps again, so a late commit is read whenever it lands. A gap that never
/// fills (its transaction rolled back) is given up after `GAP_PATIENCE_MS`,
/// well before the feed's rows are pruned (10 minutes).
#[derive(Debug)]
pub struct ChangeCursor {
    high: i64,
    /// Ids below `high` not read yet, with when they were first missed (ms).
    gaps: BTreeMap<i64, i64>,
}

impl ChangeCursor {
    /// Rows per query when catching up.
    const PAGE: i64 = 1000;
    /// How far back a fresh cursor starts, so that changes still committing
    /// when the instance starts are read too.
    const START_BACKLOG: i64 = 1000;
    const GAP_PATIENCE_MS: i64 = 5 * 60 * 1000;
    /// Bounds memory if ids jump (a sequence restart, many rollbacks).
    const MAX_GAPS: usize = 100_000;

    /// A cursor near the current end of the feed (see `START_BACKLOG`).
    pub async fn start(store: &Store) -> StoreResult<ChangeCursor> {
        let (lo, hi) = store.change_id_bounds().await?;
        Ok(ChangeCursor::at(
            (hi - Self::START_BACKLOG).max(lo - 1).max(0),
        ))
    }

    /// A cursor that has read every id up to `high`.
    pub fn at(high: i64) -> ChangeCursor {
        ChangeCursor {
            high,
            gaps: BTreeMap::new(),
        }
    }

    /// The highest id read.
    pub fn position(&self) -> i64 {
        self.high
    }

    /// Ids stepped over and not read yet.
    pub fn gaps(&self) -> usize {
        self.gaps.len()
    }

    /// Every change not read before: late commits into gaps, then everything
    /// above the highest id, oldest first within each.
    pub async fn poll(&mut self, store: &Store, now_ms: i64) -> StoreResult<Vec<ChangeRow>> {
        let mut out = Vec::new();
        if !self.gaps.is_empty() {
            let ids: Vec<i64> = self.gaps.keys().copied().collect();
            for row in store.changes_with_ids(&ids).await? {
                self.gaps.remove(&row.change_id);
                out.push(row);
            }
        }
        loop {
            let page = match store.changes_since(self.high, Self::PAGE).await {
                Ok(p) => p,
                // What was read so far is handed out; the rest comes next time.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            let full = page.len() as i64 == Self::PAGE;
            for row in page {
                for id in (self.high + 1)..row.change_id {
                    if self.gaps.len() >= Self::MAX_GAPS {
                        break;
                    }
                    self.gaps.entry(id).or_insert(now_ms);
                }
                self.high = self.high.max(row.change_id);
                out.push(row);
            }
            if !full {
                break;
            }
        }
        self.gaps
            .retain(|_, since| now_ms - *since < Self::GAP_PATIENCE_MS);
        Ok(out)
    }

    /// Reads `row` again at the next poll (handling it failed).
    pub fn retry(&mut self, row: &ChangeRow, now_ms: i64) {
        self.gaps.insert(row.change_id, now_ms);
    }
}

/// Registered sessions' facts, cached. A read that began before a session's
/// update committed can finish after the update dropped the entry; were its
/// old facts cached then, they would stay until the next update (a former
/// owner keeping owner-only grants). So every drop bumps `forgets`, and a
/// read's facts stay cached only if no drop happened while it ran.
struct SessionCache {
    cache: quick_cache::sync::Cache<(String, String), Arc<SessionFacts>>,
    forgets: AtomicU64,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl SessionCache {
    fn new(capacity: usize) -> SessionCache {
        SessionCache {
            cache: quick_cache::sync::Cache::new(capacity),
            forgets: AtomicU64::new(0),
        }
    }

    /// The cached facts of `key`, or those `read` returns (cached unless a
    /// drop happened meanwhile: they may be older than it).
    async fn get_or_read(
        &self,
        key: (String, String),
        read: impl std::future::Future<Output = StoreResult<SessionFacts>>,
    ) -> StoreResult<Arc<SessionFacts>> {
        if let Some(f) = self.cache.get(&key) {
            return Ok(f);
        }
        let epoch = self.forgets.load(Ordering::SeqCst);
        let facts = Arc::new(read.await?);
        self.cache.insert(key.clone(), facts.clone());
        // A drop bumps before it removes: if it bumped after the load above,
        // either it removes this entry after the insert, or this sees it.
        if self.forgets.load(Ordering::SeqCst) != epoch {
            self.cache.remove(&key);
        }
        Ok(facts)
    }

    fn forget(&self, key: &(String, String)) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(key);
    }

    fn forget_all(&self) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::{ChangeCursor, SessionCache, SessionFacts};
    use crate::store::{Store, temp_store as store, with_pool};

    /// Inserts change rows with chosen ids, as out-of-order commits leave them.
    async fn insert(store: &Store, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            with_pool!(write store, p => sqlx::query(
                "INSERT INTO changes (change_id, tenant, kind, subject, at_ms) VALUES ($1, 't', 'session_updated', $2, 0)"
            ).bind(id).bind(id.to_string()).execute(p).await.map(|_| ()))
            .unwrap();
        }
    }

    fn ids(rows: &[crate::store::ChangeRow]) -> Vec<i64> {
        rows.iter().map(|r| r.change_id).collect()
    }

    /// A change whose id was taken before a flood of others and that commits
    /// after all of them is still read (a window of 256 below the last id
    /// seen skipped it), and so is every row of a flood larger than a page.
    #[tokio::test]
    async fn a_late_commit_below_a_flood_is_read_once() {
        let (store, _dir) = store().await;
        insert(&store, [1]).await;
        let mut c = ChangeCursor::start(&store).await.unwrap();
        assert_eq!(ids(&c.poll(&store, 0).await.unwrap()), [1]);

        // id 2 is taken by a slow transaction; 3..=2502 commit first.
        insert(&store, 3..=2502).await;
        let flood = c.poll(&store, 10).await.unwrap();
        assert_eq!(flood.len(), 2500, "every row, across pages");
        assert_eq!((c.position(), c.gaps()), (2502, 1));
        assert!(c.poll(&store, 20).await.unwrap().is_empty());

        insert(&store, [2]).await;
        assert_eq!(ids(&c.poll(&store, 30).await.unwrap()), [2]);
        assert_eq!(c.gaps(), 0);
        assert!(c.poll(&store, 40).await.unwrap().is_empty());
    }

    /// An id that never commits (a rollback) is given up after a while, and a
    /// failed handling is read again.
    #[tokio::test]
    async fn rolled_back_ids_are_given_up_and_retries_come_back() {
        let (store, _dir) = store().await;
        let mut c = ChangeCursor::at(0);
        insert(&store, [1, 3]).await;
        let rows = c.poll(&store, 0).await.unwrap();
        assert_eq!(ids(&rows), [1, 3]);
        assert_eq!(c.gaps(), 1);
        c.retry(&rows[1], 0);
        assert_eq!(ids(&c.poll(&store, 1).await.unwrap()), [3]);
        c.poll(&store, ChangeCursor::GAP_PATIENCE_MS + 1)
            .await
            .unwrap();
        assert_eq!(c.gaps(), 0);
    }

    /// A new instance starts near the end of the feed, not at its beginning,
    /// and does not count pruned ids as gaps.
    #[tokio::test]
    async fn a_fresh_cursor_starts_near_the_end() {
        let (store, _dir) = store().await;
        insert(&store, 5000..=5003).await;
        let mut c = ChangeCursor::start(&store).await.unwrap();
        assert_eq!(
            ids(&c.poll(&store, 0).await.unwrap()),
            [5000, 5001, 5002, 5003]
        );
        assert_eq!(c.gaps(), 0);
        insert(&store, 7000..=9500).await;
        let mut c = ChangeCursor::start(&store).await.unwrap();
        assert_eq!(c.poll(&store, 0).await.unwrap().len(), 1000);
        assert_eq!(c.gaps(), 0);
    }

    /// The review's race, played out: a read of the old facts is under way
    /// when the session's update commits and drops the entry; the old facts
    /// answer that read, but are not what the next request sees.
    #[tokio::test]
    async fn facts_read_before_an_update_are_not_cached_after_it() {
        let cache = SessionCache::new(16);
        let key = ("acme".to_owned(), "s1".to_owned());
        let old = SessionFacts {
            owner: Some("alice".into()),
            ..SessionFacts::default()
        };
        let got = cache
            .get_or_read(key.clone(), async {
                // The update lands while the read is in flight.
                cache.forget(&key);
                Ok(old.clone())
            })
            .await
            .unwrap();
        assert_eq!(got.owner.as_deref(), Some("alice"));
        assert!(cache.cache.get(&key).is_none(), "stale facts were cached");
        // A read with no update meanwhile is cached.
        cache
            .get_or_read(key.clone(), async { Ok(SessionFacts::default()) })
            .await
            .unwrap();
        assert!(cache.cache.get(&key).is_some());
    }
}

//! What a running broker keeps in memory, shared by every request: the store,
//! the key authenticator, the audit writer, each tenant's compiled policy with
//! its loaded signers, and a cache of registered sessions. The change poller
//! keeps these caches in step with the database (and so with other instances).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::audit::AuditWriter;
use crate::auth::Authenticator;
use crate::idp::IdentityProvider;
use crate::limits::{Limits, Rates};
use crate::metrics::Metrics;
use crate::policy::{CompiledPolicy, SessionFacts};
use crate::settings::Settings;
use crate::store::{PolicyVersionRow, Store, StoreResult};
use crate::tokens::Signer;

/// A credential of a tenant, loaded (or why it could not be).
#[derive(Debug)]
pub struct LoadedCredential {
    pub name: String,
    pub owner_id: String,
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

impl TenantRuntime {
    /// Compiles a stored version and loads its credentials' secrets.
    pub fn load(row: &PolicyVersionRow) -> Result<TenantRuntime, String> {
        let doc = crate::policy::parse(&row.source_name, &row.source).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let credentials = doc
            .credentials
            .iter()
            .map(|spec| {
                let signer = Signer::load(spec).map_err(|e| e.to_string());
                if let Err(e) = &signer {
                    tracing::warn!(tenant = %row.tenant, credential = %spec.name, error = %e,
                        "credential unavailable; its sessions get 503 credential_unavailable");
                }
                LoadedCredential {
                    name: spec.name.clone(),
                    owner_id: spec.owner_id().to_owned(),
                    signer,
                }
            })
            .collect();
        let idps = doc
            .identity_providers
            .iter()
            .map(|spec| {
                let idp = IdentityProvider::load(spec);
                if let Err(e) = &idp {
                    tracing::warn!(tenant = %row.tenant, idp = %spec.name, error = %e, "identity provider unavailable");
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

    /// The identity provider whose issuer is `iss`.
    pub fn idp_for(&self, iss: &str) -> Option<&(String, Result<IdentityProvider, String>)> {
        self.idps
            .iter()
            .find(|(_, i)| i.as_ref().is_ok_and(|i| i.spec.issuer == iss))
    }

    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == origin || o == "*")
    }

    /// The credential a session ID's owner id names.
    pub fn credential_for(&self, owner_id: &str) -> Option<&LoadedCredential> {
        self.credentials.iter().find(|c| c.owner_id == owner_id)
    }
}

/// Shared application state (one per process; behind `web::Data`).
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub auth: Authenticator,
    pub audit: AuditWriter,
    pub limits: Limits,
    pub metrics: Metrics,
    tenants: RwLock<HashMap<String, Arc<TenantRuntime>>>,
    /// Tenants whose stored policy failed to load (kept for `/readyz`).
    broken: RwLock<HashMap<String, String>>,
    sessions: quick_cache::sync::Cache<(String, String), Arc<SessionFacts>>,
}

impl AppState {
    pub fn new(settings: Settings, store: Store, audit: AuditWriter) -> AppState {
        let auth = Authenticator::new(store.clone(), settings.key_cache, settings.hash_parallelism);
        AppState {
            limits: Limits::new(settings.rates),
            metrics: Metrics::default(),
            settings,
            store,
            auth,
            audit,
            tenants: RwLock::new(HashMap::new()),
            broken: RwLock::new(HashMap::new()),
            sessions: quick_cache::sync::Cache::new(100_000),
        }
    }

    /// The tenant's runtime, if it has an applied policy.
    pub fn tenant(&self, tenant: &str) -> Option<Arc<TenantRuntime>> {
        self.tenants.read().ok()?.get(tenant).cloned()
    }

    /// Loads every tenant's current policy (at start).
    pub async fn load_all_policies(&self) -> StoreResult<()> {
        for row in self.store.all_current_policies().await? {
            self.install(&row);
        }
        Ok(())
    }

    /// Reloads one tenant's current policy if it is newer than the one in memory.
    pub async fn reload_policy(&self, tenant: &str) -> StoreResult<()> {
        if let Some(row) = self.store.current_policy(tenant).await? {
            let loaded = self.tenant(tenant).map(|t| t.policy.version).unwrap_or(0);
            if row.version > loaded {
                self.install(&row);
            }
        }
        Ok(())
    }

    fn install(&self, row: &PolicyVersionRow) {
        match TenantRuntime::load(row) {
            Ok(rt) => {
                tracing::info!(tenant = %row.tenant, version = row.version, "policy loaded");
                self.limits
                    .set_tenant_rates(&row.tenant, rt.rate_limits.as_ref());
                if let Ok(mut m) = self.tenants.write() {
                    m.insert(row.tenant.clone(), Arc::new(rt));
                }
                if let Ok(mut b) = self.broken.write() {
                    b.remove(&row.tenant);
                }
            }
            Err(e) => {
                tracing::error!(tenant = %row.tenant, version = row.version, error = %e, "stored policy does not load");
                if let Ok(mut b) = self.broken.write() {
                    b.insert(row.tenant.clone(), e);
                }
            }
        }
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
        if let Some(f) = self.sessions.get(&key) {
            return Ok(f);
        }
        let facts = match self.store.get_session(tenant, session_id).await? {
            Some(row) => SessionFacts {
                owner: row.owner,
                labels: serde_json::from_str(&row.labels).unwrap_or_default(),
            },
            None => SessionFacts::default(),
        };
        let facts = Arc::new(facts);
        self.sessions.insert(key, facts.clone());
        Ok(facts)
    }

    pub fn forget_session(&self, tenant: &str, session_id: &str) {
        self.sessions
            .remove(&(tenant.to_owned(), session_id.to_owned()));
    }

    /// Follows the change feed until the process ends: every `every`, drops what
    /// changed from the caches. Reads a window below the last id seen, because
    /// PostgreSQL sequence ids can commit out of order.
    pub async fn follow_changes(self: Arc<Self>, every: Duration) {
        const WINDOW: i64 = 256;
        let mut seen = self.store.last_change_id().await.unwrap_or(0);
        let mut done: HashSet<i64> = HashSet::new();
        let mut ticks: u64 = 0;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            ticks += 1;
            let low = (seen - WINDOW).max(0);
            match self.store.changes_since(low).await {
                Ok(rows) => {
                    for c in rows {
                        seen = seen.max(c.change_id);
                        if !done.insert(c.change_id) {
                            continue;
                        }
                        match c.kind.as_str() {
                            "key_revoked" => self.auth.forget(&c.subject),
                            "session_updated" => self.forget_session(&c.tenant, &c.subject),
                            "policy_applied" => {
                                if let Err(e) = self.reload_policy(&c.tenant).await {
                                    tracing::warn!(error = %e, "policy reload failed; will retry");
                                    done.remove(&c.change_id);
                                }
                            }
                            _ => {}
                        }
                    }
                    done.retain(|id| *id > seen - WINDOW);
                }
                Err(e) => tracing::warn!(error = %e, "change feed unavailable"),
            }
            // About once a minute, drop feed rows every instance has seen by now.
            if ticks.is_multiple_of(240) {
                self.limits.shrink();
                let cutoff = crate::clock::now_unix_ms() - 10 * 60 * 1000;
                let _ = self.store.prune_changes(cutoff).await;
            }
        }
    }
}

//! API key rows. Secrets are stored only as argon2id hashes (see `crate::auth`).

use super::audit::append_in_tx;
use super::{BeginWrite, Store, StoreError, StoreResult, with_pool};
use crate::domain::audit_row::{AuditRow, Seal};

/// One API key, as stored (the hash is never returned over the API).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub key_id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub scopes: String,
    pub secret_hash: String,
    pub created_at_ms: i64,
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
}

const LIVE_KEYS: &str = "SELECT count(*) FROM api_keys WHERE tenant = $1 AND revoked_at_ms IS NULL";

impl Store {
    /// Stores a new key and its `key_created` audit row in one transaction.
    /// With `max_live`, the tenant's live keys are counted once the
    /// transaction holds the tenant's chain head (the lock every key creation
    /// of the tenant takes), so concurrent creations cannot pass the bound
    /// together: over it, nothing is stored (`TooMany`).
    pub async fn insert_key(
        &self,
        k: &KeyRow,
        audit: &mut AuditRow,
        seal: Seal,
        max_live: Option<i64>,
    ) -> StoreResult<()> {
        with_pool!(write self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "INSERT INTO api_keys (key_id, tenant, name, scopes, secret_hash, created_at_ms, created_by, revoked_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)"
            ).bind(&k.key_id).bind(&k.tenant).bind(&k.name).bind(&k.scopes).bind(&k.secret_hash)
             .bind(k.created_at_ms).bind(&k.created_by).execute(&mut *tx).await
             .map_err(|e| StoreError::on_unique(e, "key id collision"))?;
            append_in_tx!(tx, audit, seal);
            if let Some(max) = max_live {
                let live: i64 = sqlx::query_scalar(LIVE_KEYS)
                    .bind(&k.tenant)
                    .fetch_one(&mut *tx)
                    .await?;
                if live > max {
                    return Err(StoreError::TooMany(max));
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// How many unrevoked keys `tenant` holds.
    pub async fn count_live_keys(&self, tenant: &str) -> StoreResult<i64> {
        Ok(with_pool!(self, p => sqlx::query_scalar(LIVE_KEYS).bind(tenant).fetch_one(p).await)?)
    }

    pub async fn get_key(&self, key_id: &str) -> StoreResult<Option<KeyRow>> {
        Ok(with_pool!(self, p => sqlx::query_as::<_, KeyRow>(
            "SELECT key_id, tenant, name, scopes, secret_hash, created_at_ms, created_by, revoked_at_ms \
             FROM api_keys WHERE key_id = $1"
        ).bind(key_id).fetch_optional(p).await)?)
    }

    pub async fn list_keys(&self, tenant: &str) -> StoreResult<Vec<KeyRow>> {
        Ok(with_pool!(self, p => sqlx::query_as::<_, KeyRow>(
            "SELECT key_id, tenant, name, scopes, secret_hash, created_at_ms, created_by, revoked_at_ms \
             FROM api_keys WHERE tenant = $1 ORDER BY created_at_ms, key_id"
        ).bind(tenant).fetch_all(p).await)?)
    }

    /// Marks a key revoked, records the change for other instances' caches and
    /// writes its `key_revoked` audit row (for the key's tenant), in one
    /// transaction. Returns the key's tenant; `NotFound` if there is no such key
    /// (or, with `tenant`, none in that tenant).
    pub async fn revoke_key(
        &self,
        key_id: &str,
        tenant: Option<&str>,
        now_ms: i64,
        audit: &mut AuditRow,
        seal: Seal,
    ) -> StoreResult<String> {
        with_pool!(write self, p => {
            let mut tx = p.begin_write().await?;
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT tenant FROM api_keys WHERE key_id = $1"
            ).bind(key_id).fetch_optional(&mut *tx).await?;
            let owner = match (owner, tenant) {
                (Some(o), Some(t)) if o != t => return Err(StoreError::NotFound),
                (Some(o), _) => o,
                (None, _) => return Err(StoreError::NotFound),
            };
            sqlx::query(
                "UPDATE api_keys SET revoked_at_ms = $2 WHERE key_id = $1 AND revoked_at_ms IS NULL"
            ).bind(key_id).bind(now_ms).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO changes (tenant, kind, subject, at_ms) VALUES ($1, 'key_revoked', $2, $3)"
            ).bind(&owner).bind(key_id).bind(now_ms).execute(&mut *tx).await?;
            audit.tenant = owner.clone();
            append_in_tx!(tx, audit, seal);
            tx.commit().await?;
            Ok(owner)
        })
    }
}

//! Stored (tenant-uploaded) video credentials, sealed, and the claims that give
//! each video project (OpenTok api_key, Vonage application_id) to at most one
//! tenant. Every change commits with its change-feed row and its audit row.

use super::audit::append_in_tx;
use super::{BeginWrite, Store, StoreError, StoreResult, with_pool};
use crate::domain::audit_row::{AuditRow, Seal};

/// One stored credential as in the database: public fields and the sealed secret.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredCredentialRow {
    pub tenant: String,
    pub name: String,
    pub provider: String,
    pub owner_id: String,
    pub token_format: Option<String>,
    pub fingerprint: String,
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

const COLS: &str = "tenant, name, provider, owner_id, token_format, fingerprint, key_id, nonce, \
    ciphertext, created_at_ms, updated_at_ms, updated_by";

/// Replaces the video projects tenant `$tenant` claims through `$via` with
/// `$owner_ids`, inside a transaction. `StoreError::Claimed` when another
/// tenant (or another credential of the same tenant) already holds one.
macro_rules! claim_projects {
    ($tx:ident, $tenant:expr, $via:expr, $owner_ids:expr, $now:expr) => {{
        let (tenant, via): (&str, &str) = ($tenant, $via);
        sqlx::query("DELETE FROM video_projects WHERE tenant = $1 AND via = $2")
            .bind(tenant)
            .bind(via)
            .execute(&mut *$tx)
            .await?;
        for owner in $owner_ids {
            let owner: &str = owner.as_ref();
            let n = sqlx::query(
                "INSERT INTO video_projects (owner_id, tenant, via, claimed_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (owner_id) DO NOTHING",
            )
            .bind(owner)
            .bind(tenant)
            .bind(via)
            .bind($now)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
            if n != 1 {
                let holder: Option<String> =
                    sqlx::query_scalar("SELECT tenant FROM video_projects WHERE owner_id = $1")
                        .bind(owner)
                        .fetch_optional(&mut *$tx)
                        .await?;
                return Err(StoreError::Claimed {
                    owner_id: owner.to_owned(),
                    same_tenant: holder.as_deref() == Some(tenant),
                });
            }
        }
    }};
}
pub(crate) use claim_projects;

/// The claim label of a stored credential.
pub fn stored_via(name: &str) -> String {
    format!("stored:{name}")
}

impl Store {
    /// Creates or replaces a stored credential, claiming its project. Returns
    /// true when it was created.
    pub async fn put_credential(
        &self,
        c: &StoredCredentialRow,
        audit: &mut AuditRow,
        seal: Seal,
    ) -> StoreResult<bool> {
        let via = stored_via(&c.name);
        with_pool!(write self, p => {
            let mut tx = p.begin_write().await?;
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT created_at_ms FROM stored_credentials WHERE tenant = $1 AND name = $2"
            ).bind(&c.tenant).bind(&c.name).fetch_optional(&mut *tx).await?;
            claim_projects!(tx, &c.tenant, &via, [&c.owner_id], c.updated_at_ms);
            sqlx::query("DELETE FROM stored_credentials WHERE tenant = $1 AND name = $2")
                .bind(&c.tenant).bind(&c.name).execute(&mut *tx).await?;
            sqlx::query(&format!(
                "INSERT INTO stored_credentials ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ))
            .bind(&c.tenant).bind(&c.name).bind(&c.provider).bind(&c.owner_id).bind(&c.token_format)
            .bind(&c.fingerprint).bind(&c.key_id).bind(&c.nonce).bind(&c.ciphertext)
            .bind(existing.unwrap_or(c.created_at_ms)).bind(c.updated_at_ms).bind(&c.updated_by)
            .execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO changes (tenant, kind, subject, at_ms) VALUES ($1, 'credential_changed', $2, $3)"
            ).bind(&c.tenant).bind(&c.name).bind(c.updated_at_ms).execute(&mut *tx).await?;
            append_in_tx!(tx, audit, seal);
            tx.commit().await?;
            Ok(existing.is_none())
        })
    }

    /// Deletes a stored credential and releases its project; `NotFound` if none.
    pub async fn delete_credential(
        &self,
        tenant: &str,
        name: &str,
        now_ms: i64,
        audit: &mut AuditRow,
        seal: Seal,
    ) -> StoreResult<()> {
        let via = stored_via(name);
        with_pool!(write self, p => {
            let mut tx = p.begin_write().await?;
            let n = sqlx::query("DELETE FROM stored_credentials WHERE tenant = $1 AND name = $2")
                .bind(tenant).bind(name).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("DELETE FROM video_projects WHERE tenant = $1 AND via = $2")
                .bind(tenant).bind(&via).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO changes (tenant, kind, subject, at_ms) VALUES ($1, 'credential_changed', $2, $3)"
            ).bind(tenant).bind(name).bind(now_ms).execute(&mut *tx).await?;
            append_in_tx!(tx, audit, seal);
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn list_credentials(&self, tenant: &str) -> StoreResult<Vec<StoredCredentialRow>> {
        let sql = format!("SELECT {COLS} FROM stored_credentials WHERE tenant = $1 ORDER BY name");
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, StoredCredentialRow>(&sql)
            .bind(tenant).fetch_all(p).await)?,
        )
    }

    pub async fn get_credential(
        &self,
        tenant: &str,
        name: &str,
    ) -> StoreResult<Option<StoredCredentialRow>> {
        let sql = format!("SELECT {COLS} FROM stored_credentials WHERE tenant = $1 AND name = $2");
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, StoredCredentialRow>(&sql)
            .bind(tenant).bind(name).fetch_optional(p).await)?,
        )
    }

    /// Every stored credential (for `credential rekey`).
    pub async fn all_credentials(&self) -> StoreResult<Vec<StoredCredentialRow>> {
        let sql = format!("SELECT {COLS} FROM stored_credentials ORDER BY tenant, name");
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, StoredCredentialRow>(&sql).fetch_all(p).await)?,
        )
    }

    /// Replaces a credential's sealed secret if it is still the one sealed
    /// as `old` (its master key id and nonce: a nonce is fresh for every
    /// seal, so an upload that landed meanwhile, even under the same master
    /// key, wins). `new` is (key id, nonce, ciphertext). Returns whether it
    /// changed.
    pub async fn reseal_credential(
        &self,
        tenant: &str,
        name: &str,
        old: (&str, &str),
        new: (&str, &str, &str),
    ) -> StoreResult<bool> {
        let n = with_pool!(write self, p => sqlx::query(
            "UPDATE stored_credentials SET key_id = $5, nonce = $6, ciphertext = $7 \
             WHERE tenant = $1 AND name = $2 AND key_id = $3 AND nonce = $4"
        ).bind(tenant).bind(name).bind(old.0).bind(old.1).bind(new.0).bind(new.1).bind(new.2)
         .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Which tenant claims each video project.
    pub async fn project_claims(&self) -> StoreResult<Vec<(String, String)>> {
        Ok(with_pool!(self, p => sqlx::query_as::<_, (String, String)>(
            "SELECT owner_id, tenant FROM video_projects"
        ).fetch_all(p).await)?)
    }

    /// Claims, for `tenant`'s policy, the projects nobody holds yet; keeps the
    /// ones another tenant holds (start-up backfill for policies applied
    /// before claims existed; the loader then refuses the contested ones).
    pub async fn claim_free_projects(
        &self,
        tenant: &str,
        owner_ids: &[String],
        now_ms: i64,
    ) -> StoreResult<()> {
        for owner in owner_ids {
            with_pool!(write self, p => sqlx::query(
                "INSERT INTO video_projects (owner_id, tenant, via, claimed_at_ms) VALUES ($1, $2, 'policy', $3) \
                 ON CONFLICT (owner_id) DO NOTHING"
            ).bind(owner).bind(tenant).bind(now_ms).execute(p).await.map(|_| ()))?;
        }
        Ok(())
    }
}

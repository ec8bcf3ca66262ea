//! Tenants: created by an operator, referenced by everything else.

use super::audit::append_in_tx;
use super::{BeginWrite, Store, StoreError, StoreResult, with_pool};
use crate::domain::audit_row::{AuditRow, Seal};

impl Store {
    /// Creates a tenant and its `tenant_created` audit row in one transaction;
    /// `Conflict` when the slug is taken.
    pub async fn create_tenant(
        &self,
        tenant: &str,
        now_ms: i64,
        audit: &mut AuditRow,
        seal: Seal,
    ) -> StoreResult<()> {
        with_pool!(write self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query("INSERT INTO tenants (tenant, created_at_ms) VALUES ($1, $2)")
                .bind(tenant).bind(now_ms).execute(&mut *tx).await
                .map_err(|e| StoreError::on_unique(e, &format!("tenant {tenant} already exists")))?;
            append_in_tx!(tx, audit, seal);
            tx.commit().await?;
            Ok(())
        })
    }

    /// All tenants with their creation time, by slug.
    pub async fn list_tenants(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(with_pool!(self, p => sqlx::query_as::<_, (String, i64)>(
            "SELECT tenant, created_at_ms FROM tenants ORDER BY tenant"
        ).fetch_all(p).await)?)
    }

    pub async fn tenant_exists(&self, tenant: &str) -> StoreResult<bool> {
        let n: i64 = with_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM tenants WHERE tenant = $1"
        ).bind(tenant).fetch_one(p).await)?;
        Ok(n > 0)
    }

    /// Every tenant's slug.
    pub async fn tenant_slugs(&self) -> StoreResult<Vec<String>> {
        Ok(self
            .list_tenants()
            .await?
            .into_iter()
            .map(|t| t.0)
            .collect())
    }
}

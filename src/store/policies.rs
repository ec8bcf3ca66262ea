//! Versioned policy storage: each apply or rollback is a new numbered version.

use super::audit::append_in_tx;
use super::{BeginWrite, Store, StoreError, StoreResult, with_pool};
use crate::domain::audit_row::{AuditRow, Seal};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyVersionRow {
    pub tenant: String,
    pub version: i64,
    pub source: String,
    pub source_name: String,
    pub sha256: String,
    pub applied_by: String,
    pub applied_at_ms: i64,
    pub note: Option<String>,
}

const COLS: &str = "tenant, version, source, source_name, sha256, applied_by, applied_at_ms, note";

impl Store {
    /// Writes `source` as the tenant's next version, atomically with its
    /// change-feed row and its `policy_applied` audit row (whose
    /// `policy_version` is set here). `expected_current` guards against a
    /// concurrent apply: if the newest version is no longer that, nothing is
    /// written and `Conflict` is returned. The policy's video projects
    /// (`owner_ids`) are claimed for the tenant in the same transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_policy_version(
        &self,
        tenant: &str,
        expected_current: i64,
        source: &str,
        source_name: &str,
        sha256: &str,
        applied_by: &str,
        note: Option<&str>,
        owner_ids: &[String],
        now_ms: i64,
        audit: &mut AuditRow,
        seal: Seal,
    ) -> StoreResult<i64> {
        let version = expected_current + 1;
        with_pool!(write self, p => {
            let mut tx = p.begin_write().await?;
            let current: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM policy_versions WHERE tenant = $1"
            ).bind(tenant).fetch_one(&mut *tx).await?;
            if current.unwrap_or(0) != expected_current {
                return Err(StoreError::Conflict(format!(
                    "policy of {tenant} changed concurrently (now version {}); review and apply again",
                    current.unwrap_or(0)
                )));
            }
            sqlx::query(
                "INSERT INTO policy_versions (tenant, version, source, source_name, sha256, applied_by, applied_at_ms, note) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ).bind(tenant).bind(version).bind(source).bind(source_name).bind(sha256).bind(applied_by)
             .bind(now_ms).bind(note).execute(&mut *tx).await
             .map_err(|e| StoreError::on_unique(e, "policy changed concurrently; apply again"))?;
            super::credentials::claim_projects!(tx, tenant, "policy", owner_ids, now_ms);
            sqlx::query(
                "INSERT INTO changes (tenant, kind, subject, at_ms) VALUES ($1, 'policy_applied', $2, $3)"
            ).bind(tenant).bind(version.to_string()).bind(now_ms).execute(&mut *tx).await?;
            audit.policy_version = Some(version);
            append_in_tx!(tx, audit, seal);
            tx.commit().await?;
            Ok::<_, StoreError>(())
        })?;
        Ok(version)
    }

    /// The version in force (the newest), if any.
    pub async fn current_policy(&self, tenant: &str) -> StoreResult<Option<PolicyVersionRow>> {
        let sql = format!(
            "SELECT {COLS} FROM policy_versions WHERE tenant = $1 ORDER BY version DESC LIMIT 1"
        );
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, PolicyVersionRow>(&sql)
            .bind(tenant).fetch_optional(p).await)?,
        )
    }

    pub async fn policy_version(
        &self,
        tenant: &str,
        version: i64,
    ) -> StoreResult<Option<PolicyVersionRow>> {
        let sql = format!("SELECT {COLS} FROM policy_versions WHERE tenant = $1 AND version = $2");
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, PolicyVersionRow>(&sql)
            .bind(tenant).bind(version).fetch_optional(p).await)?,
        )
    }

    /// All versions, newest first.
    pub async fn policy_history(&self, tenant: &str) -> StoreResult<Vec<PolicyVersionRow>> {
        let sql =
            format!("SELECT {COLS} FROM policy_versions WHERE tenant = $1 ORDER BY version DESC");
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, PolicyVersionRow>(&sql)
            .bind(tenant).fetch_all(p).await)?,
        )
    }

    /// The current version of every tenant that has one (loaded at start).
    pub async fn all_current_policies(&self) -> StoreResult<Vec<PolicyVersionRow>> {
        let sql = format!(
            "SELECT {COLS} FROM policy_versions pv WHERE version = \
             (SELECT MAX(version) FROM policy_versions WHERE tenant = pv.tenant)"
        );
        Ok(with_pool!(self, p => sqlx::query_as::<_, PolicyVersionRow>(&sql).fetch_all(p).await)?)
    }
}

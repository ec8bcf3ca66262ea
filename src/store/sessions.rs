//! Sessions registered by tenant apps (owner and labels for policy matching).

use super::{BeginWrite, Store, StoreResult, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: String,
    pub owner: Option<String>,
    /// JSON object of string -> string.
    pub labels: String,
    pub updated_at_ms: i64,
}

impl Store {
    /// Registers or replaces a session, and records the change for caches, atomically.
    pub async fn put_session(
        &self,
        tenant: &str,
        session_id: &str,
        owner: Option<&str>,
        labels_json: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        with_pool!(write self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "INSERT INTO sessions (tenant, session_id, owner, labels, updated_at_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (tenant, session_id) DO UPDATE SET owner = excluded.owner, labels = excluded.labels, \
                 updated_at_ms = excluded.updated_at_ms"
            ).bind(tenant).bind(session_id).bind(owner).bind(labels_json).bind(now_ms)
             .execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO changes (tenant, kind, subject, at_ms) VALUES ($1, 'session_updated', $2, $3)"
            ).bind(tenant).bind(session_id).bind(now_ms).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn get_session(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> StoreResult<Option<SessionRow>> {
        Ok(with_pool!(self, p => sqlx::query_as::<_, SessionRow>(
            "SELECT session_id, owner, labels, updated_at_ms FROM sessions WHERE tenant = $1 AND session_id = $2"
        ).bind(tenant).bind(session_id).fetch_optional(p).await)?)
    }
}

impl Store {
    /// The sessions a tenant registered that its recorded token requests in
    /// `since_ms <= at_ms < until_ms` name, at most `limit` of them (for
    /// `policy replay` of requests recorded before the decision's session
    /// facts were): sessions registered but never asked for are not loaded.
    pub async fn list_sessions(
        &self,
        tenant: &str,
        since_ms: i64,
        until_ms: i64,
        limit: u64,
    ) -> StoreResult<Vec<SessionRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(with_pool!(self, p => sqlx::query_as::<_, SessionRow>(
            "SELECT s.session_id, s.owner, s.labels, s.updated_at_ms FROM sessions s \
             WHERE s.tenant = $1 AND EXISTS (SELECT 1 FROM audit_events a WHERE a.tenant = $1 \
             AND a.session_id = s.session_id AND a.at_ms >= $2 AND a.at_ms < $3 \
             AND a.kind IN ('token_issued', 'token_refused')) LIMIT $4"
        ).bind(tenant).bind(since_ms).bind(until_ms).bind(limit).fetch_all(p).await)?)
    }
}

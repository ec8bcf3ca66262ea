//! `GET /v1/audit` for the tenant's `audit` or `admin` keys: filtered, newest
//! first, keyset-paginated. The tenant always comes from the key, never from
//! the request, so no filter can reach another tenant's rows.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extractors::ApiKey;
use crate::auth::Scopes;
use crate::state::AppState;
use crate::store::AuditFilter;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// Query parameters shared by the API and the CLI.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub kind: Option<String>,
    pub role: Option<String>,
    pub outcome: Option<String>,
    pub code: Option<String>,
    pub user: Option<String>,
    pub session_id: Option<String>,
    pub rule: Option<String>,
    pub policy_version: Option<i64>,
    pub key_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub token_id: Option<String>,
    /// A presented token: looked up by its SHA-256 fingerprint.
    pub token: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// RFC 3339 or unix seconds → unix milliseconds.
pub fn parse_time(field: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = v.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| ApiError::bad("invalid_time", field, format!("{field} must be RFC 3339 (2026-11-24T09:00:00Z) or unix seconds")))
}

impl AuditParams {
    /// Validates and turns the parameters into a store filter for `tenant`.
    pub fn to_filter(&self, tenant: &str) -> Result<AuditFilter, ApiError> {
        if let Some(o) = &self.outcome
            && o != "issued"
            && o != "refused"
            && o != "ok"
        {
            return Err(ApiError::bad("invalid_filter", "outcome", "outcome is issued, refused or ok"));
        }
        if let Some(r) = &self.role {
            crate::tokens::parse_role(r).map_err(|e| ApiError::bad("invalid_filter", "role", e.to_string()))?;
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad("invalid_filter", "limit", format!("limit is 1 to {MAX_LIMIT}")));
        }
        let before_seq = match &self.cursor {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::bad("invalid_cursor", "cursor", "cursor is not one this API returned"))?),
        };
        Ok(AuditFilter {
            tenant: tenant.to_owned(),
            kind: self.kind.clone(),
            role: self.role.clone(),
            outcome: self.outcome.clone(),
            code: self.code.clone(),
            user: self.user.clone(),
            session_id: self.session_id.clone(),
            rule: self.rule.clone(),
            policy_version: self.policy_version,
            key_id: self.key_id.clone(),
            since_ms: self.since.as_deref().map(|v| parse_time("since", v)).transpose()?,
            until_ms: self.until.as_deref().map(|v| parse_time("until", v)).transpose()?,
            token_id: self.token_id.clone(),
            token_sha256: self.token.as_deref().map(crate::audit::chain::fingerprint),
            before_seq,
            limit,
        })
    }
}

/// The cursor is opaque to clients: `c1.<seq>` base-36 encoded.
pub fn encode_cursor(seq: i64) -> String {
    let mut n = seq as u64;
    let mut s = Vec::new();
    loop {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    format!("c1.{}", String::from_utf8_lossy(&s))
}

pub fn decode_cursor(c: &str) -> Option<i64> {
    let body = c.strip_prefix("c1.")?;
    i64::from_str_radix(body, 36).ok().filter(|n| *n > 0)
}

pub async fn query(state: web::Data<AppState>, key: ApiKey, q: web::Query<AuditParams>) -> Result<HttpResponse, ApiError> {
    let p = key.require_any(&[Scopes::AUDIT, Scopes::ADMIN])?;
    let f = q.to_filter(&p.tenant)?;
    let rows = state.store.query_audit(&f).await?;
    let next = if rows.len() as i64 == f.limit {
        rows.last().map(|r| encode_cursor(r.seq))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next": next })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        for n in [1, 35, 36, 1_000_000, i64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(n)), Some(n));
        }
        for bad in ["", "c1.", "c2.1", "c1.-5", "c1.0", "12"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}

//! Authentication in handler signatures: a handler that takes `ApiKey` only
//! runs for a valid, unrevoked tenant API key; it then checks the scope it
//! needs with `require`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};

use super::error::ApiError;
use crate::auth::{AuthError, Principal, Scopes};
use crate::state::AppState;

/// A request authenticated by a tenant API key (`Authorization: Bearer tkb_…`).
#[derive(Debug, Clone)]
pub struct ApiKey(pub Arc<Principal>);

impl ApiKey {
    /// 403 `insufficient_scope` unless the key has `scope`.
    pub fn require(&self, scope: Scopes) -> Result<&Principal, ApiError> {
        if self.0.scopes.contains(scope) {
            Ok(&self.0)
        } else {
            Err(ApiError::forbidden(
                "insufficient_scope",
                format!("this API key lacks the {} scope", scope),
            ))
        }
    }

    /// Like `require`, but any one of `scopes` is enough.
    pub fn require_any(&self, scopes: &[Scopes]) -> Result<&Principal, ApiError> {
        if scopes.iter().any(|s| self.0.scopes.contains(*s)) {
            Ok(&self.0)
        } else {
            let names: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Err(ApiError::forbidden(
                "insufficient_scope",
                format!("this API key needs one of the scopes: {}", names.join(", ")),
            ))
        }
    }
}

/// The bearer credential of a request, if any.
pub fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let h = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "unauthenticated",
            "an Authorization: Bearer header is required",
        )
    })?;
    let v = h.to_str().map_err(|_| {
        ApiError::unauthorized("invalid_credentials", "malformed Authorization header")
    })?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "invalid_credentials",
                "the Authorization scheme must be Bearer",
            )
        })?;
    Ok(token.trim())
}

pub fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Missing => ApiError::unauthorized("unauthenticated", "an API key is required"),
        AuthError::Malformed | AuthError::Invalid => {
            tracing::info!(target: "broker::security", "API key authentication failed");
            ApiError::unauthorized(
                "invalid_credentials",
                "the API key is malformed, unknown or revoked",
            )
        }
        AuthError::Unavailable(e) => e.into(),
        AuthError::Busy => {
            let mut e = ApiError::unavailable(
                "auth_busy",
                "too many API key verifications in progress; retry shortly",
            );
            e.retry_after = Some(1);
            e
        }
    }
}

/// 429 with `Retry-After` (whole seconds, at least 1).
pub fn rate_limited(wait: std::time::Duration) -> ApiError {
    let mut e = ApiError::new(
        actix_web::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; retry after the time in Retry-After",
    );
    e.retry_after = Some(wait.as_secs().max(1));
    e
}

/// The client address the failed-authentication limit is keyed by.
fn client_ip(req: &HttpRequest) -> String {
    super::client_addr::client_addr_string(req).unwrap_or_default()
}

/// 429 before any credential is looked at (no argon2, no JWT verification)
/// when the client address has used up its failed-authentication budget, so
/// a guesser that is over its limit learns nothing, not even from a correct
/// guess. Takes no token: only failures do.
pub fn refuse_if_over_failed_auth_limit(
    state: &AppState,
    req: &HttpRequest,
) -> Result<(), ApiError> {
    if let Err(wait) = state.limits.failed_auth_ip.peek(&client_ip(req)) {
        state
            .metrics
            .rate_limited(crate::metrics::Limit::FailedAuthIp);
        return Err(rate_limited(wait));
    }
    Ok(())
}

/// Counts a failed authentication against the client address, slows the answer
/// down, and turns it into 429 once the address is over its limit.
pub async fn failed_auth(state: &AppState, req: &HttpRequest, err: ApiError) -> ApiError {
    if err.status != actix_web::http::StatusCode::UNAUTHORIZED {
        return err;
    }
    crate::metrics::Metrics::inc(&state.metrics.auth_failures);
    if let Err(wait) = state.limits.failed_auth_ip.check(&client_ip(req)) {
        state
            .metrics
            .rate_limited(crate::metrics::Limit::FailedAuthIp);
        return rate_limited(wait);
    }
    tokio::time::sleep(FAILED_AUTH_DELAY).await;
    err
}

/// Added to every failed authentication's answer.
pub const FAILED_AUTH_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

impl FromRequest for ApiKey {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<ApiKey, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::internal("AppState missing"))?
                .clone();
            let presented = bearer(&req)?;
            refuse_if_over_failed_auth_limit(&state, &req)?;
            match state.auth.authenticate(presented).await {
                Ok(p) => {
                    // The tenant's own `[rate_limits]` when its policy sets them.
                    let limits = state.limits.for_tenant(&p.tenant);
                    if let Err(wait) = limits.api_key.check(&p.key_id) {
                        state.metrics.rate_limited(crate::metrics::Limit::ApiKey);
                        return Err(rate_limited(wait));
                    }
                    Ok(ApiKey(p))
                }
                Err(e) => Err(failed_auth(&state, &req, auth_error(e)).await),
            }
        })
    }
}

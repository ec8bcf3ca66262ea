//! Authentication in handler signatures: a handler that takes `Authed<S>`
//! only runs for a valid, unrevoked tenant API key that holds the scope `S`
//! requires (`crate::auth::scope`); otherwise the extractor refuses, before
//! the handler runs, with 401 / 429 / 403 `insufficient_scope`. The checks
//! themselves live in `crate::auth`; this is the HTTP glue.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};

use super::error::ApiError;
use crate::auth::{AuthError, Caller, InsufficientScope, Principal, Required};
use crate::limits::Slot;
use crate::state::AppState;

/// A request authenticated by a tenant API key (`Authorization: Bearer tkb_…`)
/// that holds the scope `S` requires, e.g. `Authed<scope::Admin>`. Derefs to
/// the key's `Principal`.
pub struct Authed<S> {
    principal: Arc<Principal>,
    scope: PhantomData<S>,
}

impl<S> std::fmt::Debug for Authed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Authed").field(&self.principal).finish()
    }
}

impl<S> Deref for Authed<S> {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl<S> Authed<S> {
    /// The key as the caller of the issuance pipeline.
    pub fn app_caller(&self) -> Caller {
        Caller::AppKey {
            key_id: self.principal.key_id.clone(),
        }
    }
}

/// 403 `insufficient_scope`.
pub fn insufficient_scope(e: InsufficientScope) -> ApiError {
    ApiError::forbidden("insufficient_scope", e.to_string())
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
        AuthError::TooManyInFlight => too_many_in_flight(),
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

/// A slot for one credential check of the client address, or `None` (counted
/// in `/metrics`) when the address already has `MAX_AUTH_IN_FLIGHT` checks
/// running. The failed-auth limit is charged only once a check has finished,
/// so without this bound a concurrent wave would all pass its peek. Hold the
/// slot until a failure is charged and answered (`failed_auth`); dropping it,
/// on any exit, gives it back.
pub fn credential_check_slot(state: &AppState, req: &HttpRequest) -> Option<Slot> {
    let slot = state.limits.auth_in_flight.try_enter(&client_ip(req));
    if slot.is_none() {
        state
            .metrics
            .rate_limited(crate::metrics::Limit::AuthInFlight);
    }
    slot
}

/// 429 for an address with too many credential checks in flight.
pub fn too_many_in_flight() -> ApiError {
    rate_limited(std::time::Duration::from_secs(1))
}

/// Authenticates an API key. A key that needs work (not cached) takes a
/// credential-check slot of the client address first, held until a failure
/// is charged; requests waiting for another request's verification of the
/// same key take none.
pub async fn authenticate_key(
    state: &AppState,
    req: &HttpRequest,
    presented: &str,
) -> Result<Arc<Principal>, ApiError> {
    let (r, _slot) = state
        .auth
        .authenticate_with(presented, || credential_check_slot(state, req))
        .await;
    match r {
        Ok(p) => Ok(p),
        Err(e) => Err(failed_auth(state, req, auth_error(e)).await),
    }
}

/// Takes one token of the key's `api_key` bucket (the tenant's own
/// `[rate_limits]` when its policy sets them): every call by a key, the
/// console's pages and sign-ins included; 429 `rate_limited` when empty.
pub fn api_key_limit(state: &AppState, tenant: &str, key_id: &str) -> Result<(), ApiError> {
    if let Err(wait) = state.limits.for_tenant(tenant).api_key.check(key_id) {
        state.metrics.rate_limited(crate::metrics::Limit::ApiKey);
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

impl<S: Required> FromRequest for Authed<S> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Authed<S>, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::internal("AppState missing"))?
                .clone();
            let presented = bearer(&req)?;
            refuse_if_over_failed_auth_limit(&state, &req)?;
            let p = authenticate_key(&state, &req, presented).await?;
            api_key_limit(&state, &p.tenant, &p.key_id)?;
            S::check(p.scopes).map_err(insufficient_scope)?;
            Ok(Authed {
                principal: p,
                scope: PhantomData,
            })
        })
    }
}

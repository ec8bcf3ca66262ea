//! `POST /v1/tenants/{tenant}/tokens`: the same pipeline as `/v1/tokens`, for
//! browsers and mobile apps. `Authorization: Bearer` carries either the end
//! user's login JWT from one of the tenant's identity providers (the verified
//! claims are the identity; a `user` object in the body is refused) or one of
//! the tenant's API keys. `OPTIONS` answers CORS preflights for the origins the
//! tenant's policy allows; nothing is allowed by default.
//!
//! Refusals of login tokens are 401 with `WWW-Authenticate: Bearer
//! error="invalid_token"` and a code: `token_expired`, `token_not_yet_valid`,
//! `invalid_issuer`, `invalid_audience`, `missing_exp`, `unknown_kid`,
//! `invalid_signature`, `algorithm_not_allowed`, `malformed_token`,
//! `missing_user_claim`, `invalid_user_claim` (with the claim as `field`). A
//! provider whose keys cannot be used (a short HMAC secret, a JWKS that cannot
//! be fetched or is refused) answers 503 `idp_unavailable`. A name in the
//! path that is no tenant answers like a tenant that does not know the token's
//! issuer, so the endpoint tells no one which tenants exist.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};

use super::error::ApiError;
use super::extractors::{
    authenticate_key, bearer, credential_check_slot, failed_auth, insufficient_scope, rate_limited,
    refuse_if_over_failed_auth_limit, too_many_in_flight,
};
use super::json::Json;
use super::tokens::caller_from;
use crate::auth::{Caller, KEY_PREFIX, Required, scope};
use crate::broker::{self, Call, Mode, TokenRequest};
use crate::limits::LimitSet;
use crate::metrics::Limit;
use crate::state::{AppState, TenantRuntime};

fn origin(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
}

/// Adds the CORS headers when the request's origin is allowed.
fn with_cors(
    rt: Option<&TenantRuntime>,
    req: &HttpRequest,
    mut resp: HttpResponse,
) -> HttpResponse {
    if let (Some(rt), Some(o)) = (rt, origin(req))
        && rt.allows_origin(o)
        && let Ok(v) = header::HeaderValue::from_str(o)
    {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::VARY, header::HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::HeaderValue::from_static("Retry-After"),
        );
    }
    resp
}

/// `OPTIONS /v1/tenants/{tenant}/tokens`
pub async fn preflight(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let rt = state.tenant(&path);
    let allowed = match (&rt, origin(&req)) {
        (Some(rt), Some(o)) => rt.allows_origin(o),
        _ => false,
    };
    if !allowed {
        return ApiError::forbidden(
            "cors_origin_not_allowed",
            "this origin may not call this tenant's token endpoint",
        )
        .error_response_boxed();
    }
    let mut r = HttpResponse::NoContent();
    r.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "authorization, content-type",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"));
    with_cors(rt.as_deref(), &req, r.finish())
}

trait Boxed {
    fn error_response_boxed(self) -> HttpResponse;
}

impl Boxed for ApiError {
    fn error_response_boxed(self) -> HttpResponse {
        actix_web::ResponseError::error_response(&self)
    }
}

fn invalid_token(e: &crate::auth::idp::IdpError) -> ApiError {
    let err = ApiError::unauthorized(e.code(), e.to_string());
    match e.claim() {
        Some(c) => err.field(c),
        None => err,
    }
}

/// `POST /v1/tenants/{tenant}/tokens`
pub async fn issue(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    // Taken as a Result so that a bad body still gets the CORS headers a
    // browser needs to read the error.
    body: Result<Json<TokenRequest>, ApiError>,
) -> HttpResponse {
    let tenant = path.into_inner();
    let rt = state.tenant(&tenant);
    let result = match &body {
        Ok(b) => issue_inner(&state, &req, &tenant, rt.as_deref(), b).await,
        Err(e) => Err(e.clone()),
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => actix_web::ResponseError::error_response(&e),
    };
    with_cors(rt.as_deref(), &req, resp)
}

async fn issue_inner(
    state: &AppState,
    req: &HttpRequest,
    tenant: &str,
    rt: Option<&TenantRuntime>,
    body: &TokenRequest,
) -> Result<HttpResponse, ApiError> {
    let presented = bearer(req)?;
    refuse_if_over_failed_auth_limit(state, req)?;
    let limits = state.limits.for_tenant(tenant);
    let caller = if presented.starts_with(KEY_PREFIX) {
        app_key_caller(state, req, tenant, presented, &limits).await?
    } else {
        end_user_caller(state, req, tenant, rt, presented, &limits).await?
    };
    let out = broker::handle(state, &caller, body, Mode::Issue, state.clock.now_unix_ms()).await?;
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(out))
}

/// The caller behind one of the tenant's API keys: of this tenant, with the
/// issue scope, within the key's rate limit.
async fn app_key_caller(
    state: &AppState,
    req: &HttpRequest,
    tenant: &str,
    presented: &str,
    limits: &LimitSet,
) -> Result<Call, ApiError> {
    let p = authenticate_key(state, req, presented).await?;
    if p.tenant != tenant {
        return Err(ApiError::forbidden(
            "wrong_tenant",
            "this API key belongs to another tenant",
        ));
    }
    scope::Issue::check(p.scopes).map_err(insufficient_scope)?;
    if let Err(wait) = limits.api_key.check(&p.key_id) {
        state.metrics.rate_limited(Limit::ApiKey);
        return Err(rate_limited(wait));
    }
    Ok(caller_from(
        req,
        tenant,
        Caller::AppKey {
            key_id: p.key_id.clone(),
        },
    ))
}

/// The end user of a login token from one of the tenant's identity
/// providers, within the per-user and per-address rate limits.
async fn end_user_caller(
    state: &AppState,
    req: &HttpRequest,
    tenant: &str,
    rt: Option<&TenantRuntime>,
    presented: &str,
    limits: &LimitSet,
) -> Result<Call, ApiError> {
    // A name that is no tenant (or one with no policy yet) trusts no
    // provider, so it answers exactly as a tenant does to a token of an issuer
    // it does not know: a 404 here would let anyone list the tenants by trying
    // names (threat model: the anonymous client).
    // The signature checks take a credential-check slot of the address, held
    // until a failure is charged (waiting for a JWKS fetch takes none).
    let mut slot = None;
    let verified = crate::auth::idp::verify_login(
        presented,
        |iss| rt.and_then(|rt| rt.idp_for(iss)),
        state.clock.now_unix_ms(),
        || {
            slot = credential_check_slot(state, req);
            slot.is_some()
        },
    )
    .await;
    let (idp_name, identity) = match verified {
        Ok(v) => v,
        Err(crate::auth::idp::IdpError::KeysUnavailable) => {
            return Err(ApiError::unavailable(
                "idp_unavailable",
                "the identity provider's keys cannot be loaded right now",
            ));
        }
        Err(crate::auth::idp::IdpError::TooManyInFlight) => return Err(too_many_in_flight()),
        Err(e) => {
            tracing::info!(target: "broker::security", tenant = ?tenant, code = e.code(), "login token refused");
            return Err(failed_auth(state, req, invalid_token(&e)).await);
        }
    };
    drop(slot);
    // Per user first, so one user's burst does not use up its address's budget
    // for the other users behind it; the address limit then bounds many users.
    // The bucket carries the provider: `alice` of one provider never spends
    // `alice` of another's budget (ids hold no control characters).
    if let Err(wait) = limits
        .end_user
        .check(&format!("{tenant}\u{0}{idp_name}\u{0}{}", identity.user_id))
    {
        state.metrics.rate_limited(Limit::EndUser);
        return Err(rate_limited(wait));
    }
    let ip = super::client_addr::client_addr_string(req).unwrap_or_default();
    if let Err(wait) = limits.end_user_ip.check(&ip) {
        state.metrics.rate_limited(Limit::EndUserIp);
        return Err(rate_limited(wait));
    }
    Ok(caller_from(
        req,
        tenant,
        Caller::EndUser {
            idp: idp_name,
            identity,
        },
    ))
}

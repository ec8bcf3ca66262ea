//! `POST /v1/tokens` (issue scope): decide, stamp, sign, audit, answer 201.
//! `POST /v1/decide` (issue scope): the same decision, no token, no audit row.
//!
//! Errors: 400 (bad field; `field` names it), 401, 403 (`policy_denied`,
//! `no_matching_rule`, `role_not_allowed`, `session_not_owned`, `no_policy`,
//! `insufficient_scope`), 503 (`audit_unavailable`, `credential_unavailable`).

use actix_web::{HttpMessage, HttpRequest, HttpResponse, http::header, web};
use serde::Deserialize;

use super::error::ApiError;
use super::extractors::Authed;
use super::json::Json;
use crate::auth::Caller;
use crate::auth::scope;
use crate::broker::{self, Call, Mode, TokenRequest};
use crate::state::AppState;

/// The call `who` makes for `tenant`, with where it comes from.
pub fn caller_from(req: &HttpRequest, tenant: &str, who: Caller) -> Call {
    Call {
        tenant: tenant.to_owned(),
        who,
        client_addr: super::client_addr::client_addr_string(req),
        user_agent: super::client_addr::user_agent_string(req),
        request_id: req
            .extensions()
            .get::<tracing_actix_web::RequestId>()
            .map(|r| r.to_string()),
    }
}

pub async fn issue(
    state: web::Data<AppState>,
    p: Authed<scope::Issue>,
    req: HttpRequest,
    body: Json<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller_from(&req, &p.tenant, p.app_caller());
    let out = broker::handle(
        &state,
        &caller,
        &body,
        Mode::Issue,
        state.clock.now_unix_ms(),
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideQuery {
    #[serde(default)]
    pub explain: bool,
}

pub async fn decide(
    state: web::Data<AppState>,
    p: Authed<scope::Issue>,
    req: HttpRequest,
    q: web::Query<DecideQuery>,
    body: Json<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller_from(&req, &p.tenant, p.app_caller());
    let mode = Mode::Decide { explain: q.explain };
    let out = broker::handle(&state, &caller, &body, mode, state.clock.now_unix_ms()).await?;
    Ok(HttpResponse::Ok().json(out))
}

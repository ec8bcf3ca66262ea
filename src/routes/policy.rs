//! Policy management for a tenant's `admin` keys, confined to their tenant:
//! `GET /v1/policy` (the version in force), `GET /v1/policy/versions`,
//! `GET /v1/policy/versions/{n}`, `POST /v1/policy` (apply, or `dry_run`),
//! `POST /v1/policy/rollback` (re-apply an old version as a new one).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extractors::Authed;
use super::json::Json;
use super::keys::{actor, admin_error};
use crate::admin;
use crate::auth::scope;
use crate::state::AppState;

pub use crate::admin::VersionView;

pub async fn current(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
) -> Result<HttpResponse, ApiError> {
    match state.store.current_policy(&p.tenant).await? {
        Some(r) => Ok(HttpResponse::Ok().json(VersionView::of(r, true))),
        None => Err(ApiError::not_found(
            "policy_not_found",
            "this tenant has no policy applied yet",
        )),
    }
}

pub async fn history(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
) -> Result<HttpResponse, ApiError> {
    let items: Vec<VersionView> = state
        .store
        .policy_history(&p.tenant)
        .await?
        .into_iter()
        .map(|r| VersionView::of(r, false))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

pub async fn version(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let v = path.into_inner();
    match state.store.policy_version(&p.tenant, v).await? {
        Some(r) => Ok(HttpResponse::Ok().json(VersionView::of(r, true))),
        None => Err(ApiError::not_found(
            "not_found",
            format!("no policy version {v}"),
        )),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyBody {
    /// The policy file's TOML text.
    pub source: String,
    /// Its file name, for error locations and history (default `<tenant>.toml`):
    /// 1-128 characters without control characters.
    pub source_name: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

/// The longest `source_name` (characters) of an apply or replay.
pub const MAX_SOURCE_NAME: usize = 128;

/// A policy's `source_name`, checked at the edge: it is copied into every
/// error location of the answer, the version history and the audit chain, so
/// it is short and free of control characters (NUL included). Default:
/// `<tenant>.toml`.
fn source_name(given: Option<&str>, tenant: &str) -> Result<String, ApiError> {
    let Some(name) = given else {
        return Ok(format!("{tenant}.toml"));
    };
    if name.is_empty()
        || name.chars().nth(MAX_SOURCE_NAME).is_some()
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad(
            "invalid_source_name",
            "source_name",
            format!(
                "source_name must be 1-{MAX_SOURCE_NAME} characters without control characters"
            ),
        ));
    }
    Ok(name.to_owned())
}

pub async fn apply(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
    req: HttpRequest,
    body: Json<ApplyBody>,
) -> Result<HttpResponse, ApiError> {
    let name = source_name(body.source_name.as_deref(), &p.tenant)?;
    let out = admin::apply_policy(
        &state.store,
        &state.secrets,
        &name,
        &body.source,
        Some(&p.tenant),
        body.dry_run,
        &actor(&req, &p.key_id),
        None,
        state.clock.now_unix_ms(),
    )
    .await
    .map_err(admin_error)?;
    if out.version.is_some() {
        state.reload_policy(&p.tenant).await?;
    }
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    pub to: i64,
}

pub async fn rollback(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
    req: HttpRequest,
    body: Json<RollbackBody>,
) -> Result<HttpResponse, ApiError> {
    let out = admin::rollback_policy(
        &state.store,
        &state.secrets,
        &p.tenant,
        body.to,
        &actor(&req, &p.key_id),
        state.clock.now_unix_ms(),
    )
    .await
    .map_err(admin_error)?;
    if out.version.is_some() {
        state.reload_policy(&p.tenant).await?;
    }
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// The proposed policy's TOML text.
    pub source: String,
    /// As for apply: 1-128 characters without control characters.
    pub source_name: Option<String>,
    /// Window start: RFC 3339 or unix seconds (default: 7 days ago).
    pub since: Option<String>,
    /// Window end (default: now).
    pub until: Option<String>,
}

/// `POST /v1/policy/replay`: what the proposed policy would have decided on
/// the tenant's recorded requests in the window (nothing is applied), under
/// the bounds of `replay::for_tenant`.
pub async fn replay(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
    req: HttpRequest,
    body: Json<ReplayBody>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now_unix_ms();
    let time = |field: &'static str, v: &Option<String>, default: i64| match v {
        None => Ok(default),
        Some(v) => crate::audit::query::parse_time(field, v).map_err(ApiError::from),
    };
    let window = crate::replay::Window {
        since_ms: time("since", &body.since, now - 7 * 86_400_000)?,
        until_ms: time("until", &body.until, now + 1)?,
    };
    let name = source_name(body.source_name.as_deref(), &p.tenant)?;
    let report = crate::replay::for_tenant(
        &state.replay_gate,
        &state.store,
        &name,
        &body.source,
        &p.tenant,
        window,
        &actor(&req, &p.key_id),
        now,
    )
    .await
    .map_err(admin_error)?;
    Ok(HttpResponse::Ok().json(report))
}

//! API key management for a tenant's `admin` keys, confined to their tenant:
//! `GET /v1/whoami` (any key), `GET /v1/keys`, `POST /v1/keys` (the secret is
//! in this one response only), `DELETE /v1/keys/{key_id}`.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extractors::Authed;
use super::json::Json;
use crate::admin::{self, Actor, AdminError, KeyInfo};
use crate::auth::{Scopes, scope};
use crate::state::AppState;

/// Kept for the handlers' `map_err(admin_error)`; the mapping itself is
/// `From<AdminError> for ApiError` in `routes::error`.
pub fn admin_error(e: AdminError) -> ApiError {
    e.into()
}

pub fn actor(req: &HttpRequest, key_id: &str) -> Actor {
    Actor::Key {
        key_id: key_id.to_owned(),
        request_id: req
            .extensions()
            .get::<tracing_actix_web::RequestId>()
            .map(|r| r.to_string()),
    }
}

pub async fn whoami(p: Authed<scope::Any>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "tenant": p.tenant,
        "key_id": p.key_id,
        "scopes": p.scopes.names(),
    }))
}

pub async fn list(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
) -> Result<HttpResponse, ApiError> {
    let keys: Vec<KeyInfo> = state
        .store
        .list_keys(&p.tenant)
        .await?
        .into_iter()
        .map(KeyInfo::from)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": keys })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub scopes: Vec<String>,
    pub name: Option<String>,
}

pub async fn create(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
    req: HttpRequest,
    body: Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let scopes = Scopes::parse(body.scopes.iter().map(String::as_str))
        .map_err(|m| ApiError::bad("invalid_scope", "scopes", m))?;
    let new = admin::create_key(
        &state.store,
        &p.tenant,
        scopes,
        body.name.clone(),
        &actor(&req, &p.key_id),
        state.clock.now_unix_ms(),
        Some(&state.auth),
    )
    .await
    .map_err(admin_error)?;
    tracing::info!(target: "broker::security", created_key_id = ?new.row.key_id, by = ?p.key_id, "API key created");
    let info = KeyInfo::from(new.row.clone());
    Ok(HttpResponse::Created()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({"key_id": info.key_id, "key": new.key, "tenant": info.tenant, "scopes": info.scopes, "name": info.name})))
}

pub async fn revoke(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key_id = path.into_inner();
    admin::revoke_key(
        &state.store,
        &key_id,
        Some(&p.tenant),
        &actor(&req, &p.key_id),
        state.clock.now_unix_ms(),
    )
    .await
    .map_err(admin_error)?;
    state.auth.forget(&key_id);
    tracing::info!(target: "broker::security", revoked_key_id = ?key_id, by = ?p.key_id, "API key revoked");
    Ok(HttpResponse::Ok().json(json!({"key_id": key_id, "revoked": true})))
}

//! Video credentials for a tenant's `admin` keys, confined to their tenant:
//! `PUT /v1/credentials/{name}` (upload: 201 created, 200 replaced),
//! `GET /v1/credentials`, `GET /v1/credentials/{name}` (never the secret),
//! `DELETE /v1/credentials/{name}`; and `GET /v1/status`, the tenant's own
//! readiness detail (what `/readyz` no longer tells anonymous callers).

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::error::ApiError;
use super::extractors::Authed;
use super::json::Json;
use super::keys::{actor, admin_error};
use crate::auth::scope;
use crate::credentials::{self, CredentialInput};
use crate::state::AppState;

pub async fn put(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
    req: HttpRequest,
    path: web::Path<String>,
    body: Json<CredentialInput>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let (view, created) = credentials::put(
        &state.store,
        state.keyring.as_ref(),
        &p.tenant,
        &name,
        body.0,
        &actor(&req, &p.key_id),
        state.clock.now_unix_ms(),
    )
    .await
    .map_err(admin_error)?;
    state.reload_tenant(&p.tenant).await?;
    tracing::info!(target: "broker::security", tenant = ?p.tenant, credential = ?name, by = ?p.key_id, created, "credential stored");
    let mut r = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(r.json(view))
}

pub async fn list(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
) -> Result<HttpResponse, ApiError> {
    let items = credentials::list(&state.store, &p.tenant)
        .await
        .map_err(admin_error)?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

pub async fn show(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = credentials::show(&state.store, &p.tenant, &path.into_inner())
        .await
        .map_err(admin_error)?;
    Ok(HttpResponse::Ok().json(view))
}

pub async fn delete(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    credentials::delete(
        &state.store,
        &p.tenant,
        &name,
        &actor(&req, &p.key_id),
        state.clock.now_unix_ms(),
    )
    .await
    .map_err(admin_error)?;
    state.reload_tenant(&p.tenant).await?;
    Ok(HttpResponse::Ok().json(json!({"name": name, "deleted": true})))
}

/// `GET /v1/status`: the caller's own tenant only: its policy version and
/// every problem of its credentials and identity providers.
pub async fn status(
    state: web::Data<AppState>,
    p: Authed<scope::Admin>,
) -> Result<HttpResponse, ApiError> {
    let rt = state.tenant(&p.tenant);
    let credentials: Vec<serde_json::Value> = rt
        .as_ref()
        .map(|rt| {
            rt.credentials
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "source": c.source,
                        "available": c.signer.is_ok(),
                        "problem": c.signer.as_ref().err(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let idps: Vec<serde_json::Value> = rt
        .as_ref()
        .map(|rt| {
            rt.idps
                .iter()
                .map(|(name, i)| json!({"name": name, "available": i.is_ok(), "problem": i.as_ref().err()}))
                .collect()
        })
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(json!({
        "tenant": p.tenant,
        "policy_version": rt.as_ref().map(|r| r.policy.version),
        "credentials": credentials,
        "identity_providers": idps,
        "problems": state.tenant_problems(&p.tenant),
    })))
}

//! `PUT /v1/sessions/{session_id}` and `GET /v1/sessions/{session_id}` (issue
//! scope): the session's owner and labels, which policy rules match on.
//! Idempotent; the session must belong to one of the tenant's credentials.
//! Any accepted spelling of a session ID names the same registration: it is
//! stored and answered under the canonical form (`tokens::SessionId`).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extractors::Authed;
use super::json::Json;
use crate::auth::scope;
use crate::state::AppState;
use crate::tokens::SessionId;

use crate::domain::{MAX_LABEL_KEY, MAX_LABEL_VALUE, is_label_key};

const MAX_LABELS: usize = 32;
const MAX_OWNER: usize = 256;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionBody {
    pub owner: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct SessionView<'a> {
    session_id: &'a str,
    owner: Option<&'a str>,
    labels: &'a BTreeMap<String, String>,
    registered: bool,
}

fn validate(body: &SessionBody) -> Result<(), ApiError> {
    if let Some(o) = &body.owner
        && (o.is_empty() || o.len() > MAX_OWNER || o.chars().any(char::is_control))
    {
        return Err(ApiError::bad(
            "invalid_owner",
            "owner",
            format!("owner must be 1-{MAX_OWNER} bytes without control characters"),
        ));
    }
    if body.labels.len() > MAX_LABELS {
        return Err(ApiError::bad(
            "too_many_labels",
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in &body.labels {
        if !is_label_key(k) {
            return Err(ApiError::bad(
                "invalid_label",
                format!(
                    "labels.{}",
                    k.chars().take(MAX_LABEL_KEY).collect::<String>()
                ),
                format!("label keys are 1-{MAX_LABEL_KEY} of A-Z a-z 0-9 _ . - /"),
            ));
        }
        if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
            return Err(ApiError::bad(
                "invalid_label",
                format!("labels.{k}"),
                format!(
                    "label values are at most {MAX_LABEL_VALUE} bytes without control characters"
                ),
            ));
        }
    }
    Ok(())
}

fn parse_session(path: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(path).map_err(|e| ApiError::bad(e.code(), "session_id", e.to_string()))
}

fn owned_session(state: &AppState, tenant: &str, session: &SessionId) -> Result<(), ApiError> {
    let rt = state
        .tenant(tenant)
        .ok_or_else(|| ApiError::forbidden("no_policy", "this tenant has no policy applied yet"))?;
    if rt.credential_for(session.owner()).is_none() {
        return Err(ApiError::forbidden(
            "session_not_owned",
            "the session belongs to none of this tenant's credentials",
        )
        .field("session_id"));
    }
    Ok(())
}

pub async fn put(
    state: web::Data<AppState>,
    p: Authed<scope::Issue>,
    path: web::Path<String>,
    body: Json<SessionBody>,
) -> Result<HttpResponse, ApiError> {
    let session = parse_session(&path.into_inner())?;
    owned_session(&state, &p.tenant, &session)?;
    let session_id = session.canonical();
    validate(&body)?;
    let labels = serde_json::to_string(&body.labels).map_err(ApiError::internal)?;
    state
        .store
        .put_session(
            &p.tenant,
            session_id,
            body.owner.as_deref(),
            &labels,
            state.clock.now_unix_ms(),
        )
        .await?;
    state.forget_session(&p.tenant, session_id);
    Ok(HttpResponse::Ok().json(SessionView {
        session_id,
        owner: body.owner.as_deref(),
        labels: &body.labels,
        registered: true,
    }))
}

pub async fn get(
    state: web::Data<AppState>,
    p: Authed<scope::Issue>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let session = parse_session(&path.into_inner())?;
    let session_id = session.canonical();
    match state.store.get_session(&p.tenant, session_id).await? {
        Some(row) => {
            let labels: BTreeMap<String, String> =
                serde_json::from_str(&row.labels).unwrap_or_default();
            Ok(HttpResponse::Ok().json(SessionView {
                session_id,
                owner: row.owner.as_deref(),
                labels: &labels,
                registered: true,
            }))
        }
        None => Err(ApiError::not_found(
            "session_not_registered",
            "this session is not registered",
        )),
    }
}

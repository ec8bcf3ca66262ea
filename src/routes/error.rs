//! The one error shape of the HTTP API:
//! `{"error": {"code": "...", "message": "...", "field": "...", "rule": "...", "policy_version": N}}`
//! with a stable snake_case `code` (catalogue: docs/errors.md). 5xx bodies never
//! carry internals: the cause is logged with the request id instead. 401s carry
//! `WWW-Authenticate: Bearer`, 429s `Retry-After`.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// An API error: status, stable code, message, and where known the field at
/// fault or the deciding rule.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: errors travel through many `Result`s on the hot path.
    pub body: Box<ErrorBody>,
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<i64>,
    /// The decision that refused, for policy refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: Box::new(ErrorBody {
                code,
                message: message.into(),
                field: None,
                rule: None,
                policy_version: None,
                decision: None,
            }),
            retry_after: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.body.field = Some(field.into());
        self
    }

    /// 400 for a bad value of `field`.
    pub fn bad(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message).field(field)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 500 with a generic body; the cause goes to the log only.
    pub fn internal(cause: impl fmt::Display) -> ApiError {
        tracing::error!(error = ?cause.to_string(), "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the request id in the logs has the details",
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.body.code,
            self.body.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            r.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"token-broker\""));
        }
        if let Some(s) = self.retry_after {
            r.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        r.insert_header((header::CACHE_CONTROL, "no-store"));
        r.json(Envelope { error: &self.body })
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError as E;
        match e {
            E::NotFound => ApiError::not_found("not_found", "not found"),
            E::Conflict(m) => ApiError::conflict(m),
            E::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m),
            other => {
                tracing::error!(error = ?other.to_string(), "store error");
                ApiError::unavailable(
                    "store_unavailable",
                    "the database is unavailable; try again",
                )
            }
        }
    }
}

/// Pulls the field name out of serde's "unknown field `x`" / "missing field `x`".
fn unknown_or_missing_field(msg: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `", "invalid value for `"] {
        if let Some(i) = msg.find(marker) {
            let rest = &msg[i + marker.len()..];
            return rest.split('`').next().map(str::to_owned);
        }
    }
    None
}

pub fn query_error(err: actix_web::error::QueryPayloadError) -> ApiError {
    let msg = err.to_string();
    let mut a = ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", msg.clone());
    a.body.field = unknown_or_missing_field(&msg);
    a
}

pub fn path_error(err: actix_web::error::PathError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", err.to_string())
}

/// The error catalogue: every code the API answers with, its status and when.
/// One list for the OpenAPI document (`routes::openapi`) and docs/api.md.
pub const CATALOGUE: &[(u16, &str, &str)] = &[
    (400, "malformed_json", "the body is not JSON"),
    (
        400,
        "malformed_body",
        "the body could not be read (a broken transfer encoding)",
    ),
    (
        400,
        "invalid_body",
        "a field has the wrong type, or is unknown (`field` names it)",
    ),
    (400, "missing_field", "a required field is absent"),
    (400, "invalid_query", "a query parameter is malformed"),
    (400, "invalid_path", "a path segment is malformed"),
    (
        400,
        "invalid_session_id",
        "the session ID is not one the service issues",
    ),
    (
        400,
        "invalid_user",
        "a user id, name or group is empty, too long or has control characters",
    ),
    (
        400,
        "user_not_allowed",
        "an end user's request carries a `user` object",
    ),
    (400, "invalid_role", "not one of the four roles"),
    (400, "ttl_and_expire_time", "both were given"),
    (400, "invalid_ttl", "`ttl` is not 1 to 2 592 000 seconds"),
    (
        400,
        "expire_time_in_past",
        "`expire_time` is not in the future",
    ),
    (400, "expire_time_too_far", "more than 30 days ahead"),
    (
        400,
        "connection_data_too_long",
        "the stamped connection data would exceed 1000 bytes",
    ),
    (400, "invalid_data", "`data` contains a control character"),
    (
        400,
        "invalid_layout_class_list",
        "an empty or malformed class, or over 1000 characters joined",
    ),
    (400, "invalid_owner", "session registration: bad owner"),
    (400, "invalid_label", "session registration: bad label"),
    (
        400,
        "too_many_labels",
        "session registration: too many labels",
    ),
    (400, "invalid_filter", "audit query: bad filter"),
    (400, "invalid_time", "audit query: bad time"),
    (400, "invalid_cursor", "audit query: bad cursor"),
    (400, "invalid_scope", "key creation with an unknown scope"),
    (400, "invalid_policy", "a policy that does not validate"),
    (
        400,
        "invalid_request",
        "other invalid input to an admin operation",
    ),
    (401, "unauthenticated", "no `Authorization` header"),
    (
        401,
        "invalid_credentials",
        "malformed, unknown or revoked API key",
    ),
    (401, "token_expired", "login JWT refused: expired"),
    (
        401,
        "token_not_yet_valid",
        "login JWT refused: not yet valid",
    ),
    (401, "invalid_issuer", "login JWT refused: issuer"),
    (401, "invalid_audience", "login JWT refused: audience"),
    (401, "missing_exp", "login JWT refused: no numeric exp"),
    (401, "unknown_kid", "login JWT refused: unknown key id"),
    (401, "invalid_signature", "login JWT refused: signature"),
    (401, "algorithm_not_allowed", "login JWT refused: algorithm"),
    (401, "malformed_token", "login JWT refused: malformed"),
    (
        401,
        "missing_user_claim",
        "login JWT refused: no user claim",
    ),
    (
        401,
        "invalid_user_claim",
        "login JWT refused: identity claim not acceptable",
    ),
    (
        403,
        "insufficient_scope",
        "the key lacks the scope the route needs",
    ),
    (
        403,
        "policy_denied",
        "a deny rule matched (`rule` names it)",
    ),
    (403, "no_matching_rule", "no rule matched: deny by default"),
    (
        403,
        "role_not_allowed",
        "the role is not allowed by the deciding rule",
    ),
    (
        403,
        "session_not_owned",
        "the session belongs to none of the tenant's credentials",
    ),
    (403, "no_policy", "the tenant has no policy applied"),
    (403, "wrong_tenant", "another tenant's policy or token path"),
    (
        403,
        "cors_origin_not_allowed",
        "a CORS preflight from an origin the policy does not list",
    ),
    (404, "route_not_found", "no such route"),
    (404, "not_found", "no such object"),
    (
        404,
        "session_not_registered",
        "the session is not registered",
    ),
    (404, "tenant_not_found", "no such tenant"),
    (404, "no_policy", "the tenant has no policy"),
    (
        405,
        "method_not_allowed",
        "the route exists, the method does not",
    ),
    (409, "conflict", "a concurrent change; retry"),
    (
        409,
        "credential_claimed",
        "the project belongs to another tenant",
    ),
    (
        409,
        "credential_conflict",
        "the credential name or project is already used",
    ),
    (413, "body_too_large", "the body exceeds the limit"),
    (
        415,
        "unsupported_media_type",
        "the body is not `application/json`",
    ),
    (
        429,
        "rate_limited",
        "too many requests; `Retry-After` says when to retry",
    ),
    (500, "internal", "a bug; the body says nothing more"),
    (
        500,
        "audit_record_refused",
        "the database refused this request's own audit row",
    ),
    (
        503,
        "audit_unavailable",
        "the audit row could not be committed in time",
    ),
    (
        503,
        "credential_unavailable",
        "the session's credential cannot be loaded on this broker",
    ),
    (503, "store_unavailable", "the database is unreachable"),
    (
        503,
        "master_key_missing",
        "a credential upload on a broker without a master key",
    ),
    (
        503,
        "idp_unavailable",
        "an identity provider cannot verify right now",
    ),
    (
        503,
        "auth_busy",
        "too many API-key verifications are queued; `Retry-After`",
    ),
    (
        400,
        "invalid_proof_request",
        "a proof request that names not exactly one row or range, or sizes out of range",
    ),
    (
        404,
        "checkpoints_disabled",
        "the broker has no checkpoint signing key",
    ),
    (404, "no_checkpoint", "the tenant's audit history is empty"),
    (
        404,
        "audit_row_not_found",
        "no such row (or token) in the caller's tenant's history",
    ),
    (
        503,
        "audit_unverifiable",
        "the stored history no longer hashes to what the broker signed; no checkpoint or proof is signed over it",
    ),
    (
        503,
        "not_yet_checkpointed",
        "the row was committed after the latest checkpoint; ask again",
    ),
];

/// A query parameter of the audit API that does not hold: 400, its code and field.
impl From<crate::audit::query::QueryError> for ApiError {
    fn from(e: crate::audit::query::QueryError) -> ApiError {
        ApiError::bad(e.code, e.field, e.message)
    }
}

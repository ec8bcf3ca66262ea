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

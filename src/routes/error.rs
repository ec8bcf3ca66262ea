//! The one error shape of the HTTP API:
//! `{"error": {"code": "...", "message": "...", "field": "...", "rule": "...", "policy_version": N}}`
//! with a stable snake_case `code`. Every code is declared once, in `CATALOGUE`
//! below, with its status and meaning (docs/api.md "## Errors" lists the same);
//! the status of an error is always the catalogue's, and services' errors
//! (`AdminError`, `broker::IssueError`, `StoreError`) become `ApiError` here only. 5xx bodies never
//! carry internals: the cause is logged with the request id instead. 401s carry
//! `WWW-Authenticate: Bearer`, 429s `Retry-After`.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::admin::AdminError;
use crate::broker::{IssueError, Refusal};

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
    /// An error with `code`, at the status the catalogue gives it.
    pub fn coded(code: &'static str, message: impl Into<String>) -> ApiError {
        let status = status_of(code).unwrap_or_else(|| {
            debug_assert!(false, "error code {code:?} is not in the catalogue");
            StatusCode::INTERNAL_SERVER_ERROR
        });
        ApiError::with_status(status, code, message)
    }

    /// `coded`, for call sites that name the status they expect: the
    /// catalogue still decides, and debug builds check that the two agree.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        let e = ApiError::coded(code, message);
        debug_assert_eq!(
            e.status, status,
            "error code {code:?} has another status in the catalogue"
        );
        e
    }

    fn with_status(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
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
        ApiError::coded(
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
            E::ReadTimeout => ApiError::unavailable(
                "audit_timeout",
                "this audit read ran past its time limit and was stopped: narrow it with since and until, or with fewer filters that rarely match together",
            ),
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

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let invalid = r.class == crate::broker::Class::Invalid;
        let mut e = ApiError::coded(r.code, r.message);
        debug_assert!(
            !invalid || e.status == StatusCode::BAD_REQUEST,
            "{} is an invalid request but catalogued as {}",
            e.body.code,
            e.status
        );
        e.body.field = r.field;
        e.body.rule = r.rule;
        e.body.policy_version = r.policy_version;
        e.body.decision = r.decision;
        e
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> ApiError {
        match e {
            IssueError::Refused(r) => (*r).into(),
            IssueError::Store(e) => e.into(),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        match e {
            AdminError::Invalid(m) => ApiError::bad("invalid_request", "", m),
            AdminError::NoTenant(t) => {
                ApiError::not_found("tenant_not_found", format!("tenant {t} does not exist"))
            }
            AdminError::NotFound(m) => ApiError::not_found("not_found", m),
            AdminError::Forbidden(m) => ApiError::forbidden("wrong_tenant", m),
            AdminError::Policy(errs) => {
                let mut a = ApiError::bad(
                    "invalid_policy",
                    "source",
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
                a.body.field = errs.first().map(|e| e.field.clone());
                a.body.decision = serde_json::to_value(&errs).ok();
                a
            }
            AdminError::AuditUnavailable => ApiError::unavailable(
                "audit_unavailable",
                "the audit record cannot be written; nothing was changed",
            ),
            AdminError::Field { field, message } => {
                ApiError::bad("invalid_request", field, message)
            }
            AdminError::Claimed => ApiError::coded(
                "credential_claimed",
                "this video project (api key or application id) is already used by another tenant",
            ),
            AdminError::Conflict(m) => ApiError::coded("credential_conflict", m),
            AdminError::NoMasterKey => ApiError::unavailable(
                "master_key_missing",
                "this broker has no master key configured, so credentials cannot be stored; ask the operator",
            ),
            AdminError::Busy => {
                let mut e = ApiError::unavailable(
                    "admin_busy",
                    "the broker is busy with other admin work (a replay, key hashing); retry in a few seconds",
                );
                e.retry_after = Some(5);
                e
            }
            AdminError::TooManyKeys => ApiError::coded(
                "too_many_keys",
                format!(
                    "this tenant has {} live API keys, the most allowed; revoke one first",
                    crate::admin::MAX_LIVE_KEYS_PER_TENANT
                ),
            ),
            AdminError::TimedOut(m) => ApiError::unavailable("admin_timed_out", m),
            AdminError::Store(e) => e.into(),
        }
    }
}

/// The catalogue's status for `code`.
pub fn status_of(code: &str) -> Option<StatusCode> {
    CATALOGUE
        .iter()
        .find(|(_, c, _)| *c == code)
        .and_then(|(s, _, _)| StatusCode::from_u16(*s).ok())
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
        "invalid_source_name",
        "a policy's `source_name` is empty, too long or has control characters",
    ),
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
    (
        404,
        "policy_not_found",
        "`GET /v1/policy`: the tenant has not applied a policy yet",
    ),
    (
        405,
        "method_not_allowed",
        "the route exists, the method does not",
    ),
    (409, "conflict", "a concurrent change; retry"),
    (
        409,
        "too_many_keys",
        "the tenant holds the most live API keys allowed (100); revoke one first",
    ),
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
        "admin_busy",
        "other admin work (a replay, key hashing) holds what this needs; `Retry-After`",
    ),
    (
        503,
        "admin_timed_out",
        "a replay ran past its time bound and was stopped",
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
        429,
        "audit_busy",
        "a proof or chain check of the tenant is already running (or the broker is busy with others), or the tenant has 2 audit reads running; `Retry-After`",
    ),
    (
        503,
        "audit_timeout",
        "a proof took longer than its time bound, or an audit read (a page, an export, a summary) ran past `audit_read_timeout_ms` and was stopped",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_is_declared_once() {
        let mut seen = std::collections::BTreeMap::new();
        for (status, code, meaning) in CATALOGUE {
            assert!(!meaning.is_empty(), "{code} has no meaning");
            if let Some(other) = seen.insert(*code, *status) {
                panic!("{code} is in the catalogue twice ({other} and {status})");
            }
        }
    }

    /// The status a constructor names, and where its code literal starts.
    fn literal_uses(text: &str) -> Vec<(Option<u16>, String)> {
        const CTORS: &[(&str, Option<u16>)] = &[
            ("ApiError::bad(", Some(400)),
            ("ApiError::unauthorized(", Some(401)),
            ("ApiError::forbidden(", Some(403)),
            ("ApiError::not_found(", Some(404)),
            ("ApiError::unavailable(", Some(503)),
            ("ApiError::coded(", None),
            ("Refusal::invalid(", Some(400)),
            ("Refusal::new(", None),
        ];
        let mut out = Vec::new();
        for (ctor, status) in CTORS {
            for (i, _) in text.match_indices(ctor) {
                let mut rest = text[i + ctor.len()..].trim_start();
                if let Some(r) = rest.strip_prefix("Class::") {
                    // `Refusal::new` names its class first.
                    rest = r.split_once(',').map_or("", |(_, r)| r).trim_start();
                }
                if let Some(r) = rest.strip_prefix('"') {
                    let code = r.split('"').next().unwrap_or_default();
                    if is_code(code) {
                        out.push((*status, code.to_owned()));
                    }
                }
            }
        }
        // `new` with a status constant and a code literal.
        for (i, _) in text.match_indices("ApiError::new(") {
            let rest = text[i + "ApiError::new(".len()..].trim_start();
            let rest = rest.strip_prefix("actix_web::http::").unwrap_or(rest);
            let Some(r) = rest.strip_prefix("StatusCode::") else {
                continue;
            };
            let (name, r) = r.split_once(',').unwrap_or_default();
            let status = match name.trim() {
                "BAD_REQUEST" => 400,
                "UNAUTHORIZED" => 401,
                "FORBIDDEN" => 403,
                "NOT_FOUND" => 404,
                "METHOD_NOT_ALLOWED" => 405,
                "CONFLICT" => 409,
                "PAYLOAD_TOO_LARGE" => 413,
                "UNSUPPORTED_MEDIA_TYPE" => 415,
                "TOO_MANY_REQUESTS" => 429,
                "INTERNAL_SERVER_ERROR" => 500,
                "SERVICE_UNAVAILABLE" => 503,
                other => panic!("add StatusCode::{other} to this test"),
            };
            if let Some(r) = r.trim_start().strip_prefix('"') {
                let code = r.split('"').next().unwrap_or_default();
                if is_code(code) {
                    out.push((Some(status), code.to_owned()));
                }
            }
        }
        out
    }

    fn is_code(s: &str) -> bool {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                ));
            }
        }
    }

    /// Every code written at a call site is in the catalogue, with the status
    /// the call site's constructor names: a code cannot be used with two
    /// statuses, and none goes undocumented (docs/api.md is checked against
    /// the catalogue by `tests/api/openapi.rs`).
    #[test]
    fn every_code_used_in_src_is_catalogued_with_one_status() {
        let mut files = Vec::new();
        sources(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut uses = 0;
        let mut bad = Vec::new();
        for (path, text) in &files {
            for (status, code) in literal_uses(text) {
                uses += 1;
                match (status_of(&code), status) {
                    (None, _) => bad.push(format!("{path}: {code} is not in the catalogue")),
                    (Some(s), Some(want)) if s.as_u16() != want => bad.push(format!(
                        "{path}: {code} used as {want}, catalogued as {}",
                        s.as_u16()
                    )),
                    _ => {}
                }
            }
        }
        assert!(uses > 60, "the scan found only {uses} codes");
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    #[test]
    fn the_scan_catches_a_second_status_and_an_unknown_code() {
        // Spelled apart, so the scan of `src/` does not find these here.
        let uses = literal_uses(concat!(
            "ApiError::",
            "not_found(\"no_policy\", \"x\"); ",
            "Refusal::",
            "new(Class::Refused, \"nope\", \"m\");\n",
            "ApiError::",
            "new(StatusCode::CONFLICT, \"conflict\", \"m\")",
        ));
        assert_eq!(
            uses,
            vec![
                (Some(404), "no_policy".to_owned()),
                (None, "nope".to_owned()),
                (Some(409), "conflict".to_owned()),
            ]
        );
        assert_eq!(status_of("no_policy").map(|s| s.as_u16()), Some(403));
        assert_eq!(status_of("nope"), None);
    }
}

//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.
//!
//! Built with utoipa from three sources in the code: `OPERATIONS` below (one
//! row per method and path of the route table in `routes::configure`; the
//! integration test `tests/api/openapi.rs` compares the two), the request
//! body types (`utoipa::ToSchema` derives on the structs the handlers
//! deserialise), and the error catalogue `error::CATALOGUE` (every error
//! response lists exactly the catalogue's codes for its status).
//!
//! Security: one bearer scheme per API-key scope (`issue`, `audit`, `admin`)
//! and one for an end user's login JWT; an operation lists the schemes that
//! satisfy it (any one of them is enough).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, http::header};
use serde_json::{Value, json};
use utoipa::openapi::{
    self, ComponentsBuilder, ContentBuilder, HttpMethod, InfoBuilder, OpenApi, OpenApiBuilder,
    PathItem, PathsBuilder, RefOr, ResponseBuilder, Schema,
    path::{OperationBuilder, ParameterBuilder, ParameterIn},
    request_body::RequestBodyBuilder,
    security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme},
};
use utoipa::{PartialSchema, ToSchema};

use super::error::CATALOGUE;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anonymous.
    None,
    /// Any valid API key.
    AnyKey,
    Issue,
    AuditOrAdmin,
    Admin,
    /// An end user's login JWT, or an issue key of the tenant.
    EndUser,
}

impl Auth {
    fn schemes(self) -> &'static [&'static str] {
        match self {
            Auth::None => &[],
            Auth::AnyKey => &["issue", "audit", "admin"],
            Auth::Issue => &["issue"],
            Auth::AuditOrAdmin => &["audit", "admin"],
            Auth::Admin => &["admin"],
            Auth::EndUser => &["login_jwt", "issue"],
        }
    }
}

/// The request body of an operation.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    None,
    Token,
    CreateKey,
    Apply,
    Rollback,
    Replay,
    Session,
    /// A JSON object the handler validates itself (credential upload).
    Object,
}

/// The success answer of an operation.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// JSON object with this status.
    Json(u16),
    /// 201 created or 200 replaced, JSON.
    CreatedOrReplaced,
    /// Prometheus text (OpenMetrics).
    Metrics,
    /// 200, `text/plain` (a signed checkpoint note).
    Text,
    /// NDJSON or CSV (audit export).
    JsonOrStream,
    /// 204, no body (CORS preflight).
    NoContent,
    /// 200, or 503 with the same JSON shape (readiness).
    Ready,
}

/// One operation of the route table.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub id: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    pub body: Body,
    pub answer: Answer,
    /// Error codes beyond the ones every operation of its kind has.
    pub errors: &'static [&'static str],
}

const TOKEN_ERRORS: &[&str] = &[
    "invalid_session_id",
    "invalid_user",
    "invalid_role",
    "ttl_and_expire_time",
    "invalid_ttl",
    "expire_time_in_past",
    "expire_time_too_far",
    "connection_data_too_long",
    "invalid_data",
    "invalid_layout_class_list",
    "policy_denied",
    "no_matching_rule",
    "role_not_allowed",
    "session_not_owned",
    "no_policy",
    "audit_unavailable",
    "audit_record_refused",
    "credential_unavailable",
];

#[allow(clippy::too_many_arguments)] // one row of the table, positional like the table in docs/api.md
const fn op(
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    auth: Auth,
    body: Body,
    answer: Answer,
    errors: &'static [&'static str],
) -> Operation {
    Operation {
        method,
        path,
        id,
        summary,
        auth,
        body,
        answer,
        errors,
    }
}

/// Every method and path of `routes::configure`.
pub const OPERATIONS: &[Operation] = &[
    op(
        "get",
        "/healthz",
        "healthz",
        "The process is alive",
        Auth::None,
        Body::None,
        Answer::Json(200),
        &[],
    ),
    op(
        "get",
        "/readyz",
        "readyz",
        "Database reachable and migrated, audit writer committing",
        Auth::None,
        Body::None,
        Answer::Ready,
        &[],
    ),
    op(
        "get",
        "/metrics",
        "metrics",
        "Prometheus counters",
        Auth::None,
        Body::None,
        Answer::Metrics,
        &[],
    ),
    op(
        "get",
        "/v1/whoami",
        "whoami",
        "The key's tenant, key id and scopes",
        Auth::AnyKey,
        Body::None,
        Answer::Json(200),
        &[],
    ),
    op(
        "post",
        "/v1/tokens",
        "issue_token",
        "Decide, stamp, sign, audit; 201 with the token",
        Auth::Issue,
        Body::Token,
        Answer::Json(201),
        TOKEN_ERRORS,
    ),
    op(
        "post",
        "/v1/tenants/{tenant}/tokens",
        "issue_end_user_token",
        "The token pipeline for an end user's login JWT (or an issue key of the tenant)",
        Auth::EndUser,
        Body::Token,
        Answer::Json(201),
        &[
            "user_not_allowed",
            "invalid_user",
            "wrong_tenant",
            "token_expired",
            "token_not_yet_valid",
            "invalid_issuer",
            "invalid_audience",
            "missing_exp",
            "unknown_kid",
            "invalid_signature",
            "algorithm_not_allowed",
            "malformed_token",
            "missing_user_claim",
            "invalid_user_claim",
            "idp_unavailable",
            "invalid_session_id",
            "invalid_role",
            "ttl_and_expire_time",
            "invalid_ttl",
            "expire_time_in_past",
            "expire_time_too_far",
            "connection_data_too_long",
            "invalid_data",
            "invalid_layout_class_list",
            "policy_denied",
            "no_matching_rule",
            "role_not_allowed",
            "session_not_owned",
            "no_policy",
            "audit_unavailable",
            "audit_record_refused",
            "credential_unavailable",
        ],
    ),
    op(
        "options",
        "/v1/tenants/{tenant}/tokens",
        "preflight_end_user_token",
        "CORS preflight (per tenant policy)",
        Auth::None,
        Body::None,
        Answer::NoContent,
        &["cors_origin_not_allowed"],
    ),
    op(
        "post",
        "/v1/decide",
        "decide",
        "The token decision without a token or an audit row",
        Auth::Issue,
        Body::Token,
        Answer::Json(200),
        TOKEN_ERRORS,
    ),
    op(
        "put",
        "/v1/sessions/{session_id}",
        "put_session",
        "Register a session's owner and labels (idempotent)",
        Auth::Issue,
        Body::Session,
        Answer::Json(200),
        &[
            "invalid_session_id",
            "invalid_owner",
            "invalid_label",
            "too_many_labels",
            "session_not_owned",
            "no_policy",
            "conflict",
        ],
    ),
    op(
        "get",
        "/v1/sessions/{session_id}",
        "get_session",
        "A registered session's owner and labels",
        Auth::Issue,
        Body::None,
        Answer::Json(200),
        &["invalid_session_id", "session_not_registered"],
    ),
    op(
        "get",
        "/v1/keys",
        "list_keys",
        "The tenant's API keys (never their secrets)",
        Auth::Admin,
        Body::None,
        Answer::Json(200),
        &[],
    ),
    op(
        "post",
        "/v1/keys",
        "create_key",
        "Create an API key; the key is in this response only",
        Auth::Admin,
        Body::CreateKey,
        Answer::Json(201),
        &[
            "invalid_scope",
            "invalid_request",
            "conflict",
            "too_many_keys",
            "admin_busy",
        ],
    ),
    op(
        "delete",
        "/v1/keys/{key_id}",
        "revoke_key",
        "Revoke an API key",
        Auth::Admin,
        Body::None,
        Answer::Json(200),
        &["not_found", "invalid_request", "conflict"],
    ),
    op(
        "get",
        "/v1/policy",
        "current_policy",
        "The policy version in force",
        Auth::Admin,
        Body::None,
        Answer::Json(200),
        &["policy_not_found"],
    ),
    op(
        "post",
        "/v1/policy",
        "apply_policy",
        "Apply (or dry-run) a policy",
        Auth::Admin,
        Body::Apply,
        Answer::Json(200),
        &[
            "invalid_policy",
            "invalid_source_name",
            "invalid_request",
            "wrong_tenant",
            "conflict",
            "credential_claimed",
            "credential_conflict",
            "audit_unavailable",
        ],
    ),
    op(
        "get",
        "/v1/policy/versions",
        "policy_history",
        "The policy history",
        Auth::Admin,
        Body::None,
        Answer::Json(200),
        &[],
    ),
    op(
        "get",
        "/v1/policy/versions/{version}",
        "policy_version",
        "One policy version",
        Auth::Admin,
        Body::None,
        Answer::Json(200),
        &["not_found"],
    ),
    op(
        "post",
        "/v1/policy/rollback",
        "rollback_policy",
        "Re-apply version `to` as a new version",
        Auth::Admin,
        Body::Rollback,
        Answer::Json(200),
        &[
            "not_found",
            "invalid_policy",
            "invalid_request",
            "conflict",
            "credential_claimed",
            "credential_conflict",
            "audit_unavailable",
        ],
    ),
    op(
        "post",
        "/v1/policy/replay",
        "replay_policy",
        "What a proposed policy would have decided on recorded requests",
        Auth::Admin,
        Body::Replay,
        Answer::Json(200),
        &[
            "invalid_policy",
            "invalid_source_name",
            "invalid_time",
            "invalid_request",
            "wrong_tenant",
            "admin_busy",
            "admin_timed_out",
        ],
    ),
    op(
        "put",
        "/v1/credentials/{name}",
        "put_credential",
        "Upload a video credential (sealed at rest)",
        Auth::Admin,
        Body::Object,
        Answer::CreatedOrReplaced,
        &[
            "invalid_request",
            "credential_claimed",
            "credential_conflict",
            "conflict",
            "master_key_missing",
            "audit_unavailable",
        ],
    ),
    op(
        "get",
        "/v1/credentials/{name}",
        "show_credential",
        "One stored credential (never the secret)",
        Auth::Admin,
        Body::None,
        Answer::Json(200),
        &["not_found", "invalid_request"],
    ),
    op(
        "delete",
        "/v1/credentials/{name}",
        "delete_credential",
        "Delete a stored credential",
        Auth::Admin,
        Body::None,
        Answer::Json(200),
        &[
            "not_found",
            "invalid_request",
            "conflict",
            "audit_unavailable",
        ],
    ),
    op(
        "get",
        "/v1/credentials",
        "list_credentials",
        "The tenant's stored credentials",
        Auth::Admin,
        Body::None,
        Answer::Json(200),
        &[],
    ),
    op(
        "get",
        "/v1/status",
        "status",
        "Policy version, credentials and identity providers with their usability",
        Auth::Admin,
        Body::None,
        Answer::Json(200),
        &[],
    ),
    op(
        "get",
        "/v1/audit",
        "query_audit",
        "Filtered, paginated audit rows (JSON, or an NDJSON/CSV export)",
        Auth::AuditOrAdmin,
        Body::None,
        Answer::JsonOrStream,
        &[
            "invalid_filter",
            "invalid_time",
            "invalid_cursor",
            "audit_unavailable",
            "audit_busy",
            "audit_timeout",
        ],
    ),
    op(
        "get",
        "/v1/audit/checkpoint",
        "audit_checkpoint",
        "The tenant's latest signed checkpoint (C2SP signed note)",
        Auth::AuditOrAdmin,
        Body::None,
        Answer::Text,
        &[
            "checkpoints_disabled",
            "no_checkpoint",
            "audit_unverifiable",
            "audit_unavailable",
        ],
    ),
    op(
        "get",
        "/v1/audit/proof",
        "audit_proof",
        "An inclusion proof of a row (by audit_id, token_id or token) or a consistency proof (from, to) against signed checkpoints",
        Auth::AuditOrAdmin,
        Body::None,
        Answer::Json(200),
        &[
            "invalid_proof_request",
            "checkpoints_disabled",
            "no_checkpoint",
            "audit_row_not_found",
            "audit_unverifiable",
            "not_yet_checkpointed",
            "audit_unavailable",
        ],
    ),
    op(
        "get",
        "/v1/audit/summary",
        "audit_summary",
        "Counts of issued and refused tokens",
        Auth::AuditOrAdmin,
        Body::None,
        Answer::Json(200),
        &[
            "invalid_filter",
            "invalid_time",
            "audit_unavailable",
            "audit_busy",
            "audit_timeout",
        ],
    ),
    op(
        "get",
        "/openapi.json",
        "openapi",
        "This document",
        Auth::None,
        Body::None,
        Answer::Json(200),
        &[],
    ),
];

/// Codes every operation of a kind can answer with.
fn implied_errors(o: &Operation) -> Vec<&'static str> {
    let mut v = vec!["internal"];
    if o.auth != Auth::None {
        v.extend([
            "unauthenticated",
            "invalid_credentials",
            "insufficient_scope",
            "rate_limited",
            "auth_busy",
            "store_unavailable",
        ]);
    }
    if !matches!(o.body, Body::None) {
        v.extend([
            "malformed_json",
            "malformed_body",
            "invalid_body",
            "missing_field",
            "body_too_large",
            "unsupported_media_type",
        ]);
    }
    if o.path.contains('{') {
        v.push("invalid_path");
    }
    if matches!(o.answer, Answer::JsonOrStream) || o.id == "audit_summary" || o.id == "decide" {
        v.push("invalid_query");
    }
    v
}

fn schema(v: Value) -> RefOr<Schema> {
    serde_json::from_value(v).unwrap_or_else(|_| RefOr::T(Schema::default()))
}

fn error_schema(codes: &[&str]) -> RefOr<Schema> {
    schema(json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": codes},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the input at fault"},
                "rule": {"type": "string", "description": "the deciding rule (policy refusals)"},
                "policy_version": {"type": "integer"},
                "decision": {"type": ["object", "array"], "description": "the refusing decision; for invalid_policy, the list of diagnostics"}
            }
        }}
    }))
}

fn reason(status: u16) -> &'static str {
    actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
}

fn body_schema(b: Body) -> Option<(RefOr<Schema>, Value)> {
    let example_session = "1_MX4xMjM0NTZ-fjE3MDAwMDAwMDAwMDB-QWJjRGVmR2hpSktsTW5vUA";
    Some(match b {
        Body::None => return None,
        Body::Token => (
            crate::broker::TokenRequest::schema(),
            json!({"session_id": example_session, "user": {"id": "alice", "groups": ["teachers"]}, "role": "publisher", "ttl": 3600}),
        ),
        Body::CreateKey => (
            super::keys::CreateKey::schema(),
            json!({"scopes": ["issue"], "name": "web app"}),
        ),
        Body::Apply => (
            super::policy::ApplyBody::schema(),
            json!({"source": "tenant = \"acme\"\n…", "dry_run": true}),
        ),
        Body::Rollback => (super::policy::RollbackBody::schema(), json!({"to": 3})),
        Body::Replay => (
            super::policy::ReplayBody::schema(),
            json!({"source": "tenant = \"acme\"\n…", "since": "2026-11-01T00:00:00Z"}),
        ),
        Body::Session => (
            super::sessions::SessionBody::schema(),
            json!({"owner": "app:user:alice", "labels": {"course": "math"}}),
        ),
        Body::Object => (
            schema(json!({"type": "object"})),
            json!({"format": "opentok", "api_key": "123456", "secret": "…"}),
        ),
    })
}

fn json_object() -> RefOr<Schema> {
    schema(json!({"type": "object"}))
}

/// The success body of an operation, where it is more than "an object".
// A table, one JSON Schema per operation: longer than a function should be,
// read as a list.
#[allow(clippy::too_many_lines)]
fn success_schema(id: &str) -> RefOr<Schema> {
    let string = json!({"type": "string"});
    let items = json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"type": "object"}}}});
    let token = json!({
        "type": "object",
        "required": ["format", "session_id", "role", "expire_time", "connection_data", "credential", "decision"],
        "properties": {
            "token": string, "token_id": string, "format": string, "session_id": string,
            "role": {"type": "string", "enum": ["subscriber", "publisher", "publisheronly", "moderator"]},
            "expire_time": {"type": "integer"}, "connection_data": string, "credential": string,
            "decision": {"type": "object"}, "audit_id": string
        }
    });
    match id {
        "healthz" => schema(
            json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}),
        ),
        "whoami" => schema(json!({
            "type": "object", "required": ["tenant", "key_id", "scopes"],
            "properties": {"tenant": string, "key_id": string,
                "scopes": {"type": "array", "items": {"type": "string", "enum": ["issue", "audit", "admin"]}}}
        })),
        "issue_token" | "issue_end_user_token" | "decide" => schema(token),
        "apply_policy" | "rollback_policy" => schema(json!({
            "type": "object",
            "required": ["tenant", "previous_version", "dry_run", "unchanged", "diff", "warnings"],
            "properties": {"tenant": string, "previous_version": {"type": "integer"},
                "version": {"type": ["integer", "null"], "description": "the new version; null on a dry run or when nothing changed"},
                "dry_run": {"type": "boolean"}, "unchanged": {"type": "boolean"},
                "diff": {"type": "string", "description": "unified diff from the version in force"},
                "warnings": {"type": "array", "items": string}}
        })),
        "replay_policy" => {
            let count = json!({"type": "integer", "minimum": 0});
            let affected = json!({"type": "array", "items": {"type": "object", "required": ["id", "requests", "audit_ids"],
                "properties": {"id": string, "requests": count, "audit_ids": {"type": "array", "items": string}}}});
            schema(json!({
                "type": "object", "required": ["requests", "approximate", "changes", "examples"],
                "properties": {
                    "requests": count, "approximate": count,
                    "changes": {"type": "object",
                        "required": crate::policy::replay::KINDS,
                        "properties": crate::policy::replay::KINDS.iter().map(|k| ((*k).to_owned(), count.clone())).collect::<serde_json::Map<_, _>>()},
                    "examples": {"type": "object", "additionalProperties": {"type": "object",
                        "properties": {"users": affected, "sessions": affected}}}
                }
            }))
        }
        "put_credential" | "show_credential" => schema(json!({
            "type": "object", "required": ["name", "provider", "source"],
            "properties": {"name": string, "provider": {"type": "string", "enum": ["opentok", "vonage"]},
                "source": {"type": "string", "enum": ["stored", "policy"]},
                "api_key": string, "application_id": string, "token_format": {"type": "string", "enum": ["jwt", "t1"]},
                "fingerprint": {"type": "string", "description": "sha256: and 32 hex of the secret's SHA-256; never the secret"},
                "created_at_ms": {"type": "integer"}, "updated_at_ms": {"type": "integer"}, "updated_by": string}
        })),
        "status" => schema(json!({
            "type": "object", "required": ["tenant", "credentials", "identity_providers", "problems"],
            "properties": {"tenant": string, "policy_version": {"type": ["integer", "null"]},
                "credentials": {"type": "array", "items": {"type": "object", "required": ["name", "source", "available"],
                    "properties": {"name": string, "source": string, "available": {"type": "boolean"}, "problem": {"type": ["string", "null"]}}}},
                "identity_providers": {"type": "array", "items": {"type": "object", "required": ["name", "available"],
                    "properties": {"name": string, "available": {"type": "boolean"}, "problem": {"type": ["string", "null"]}}}},
                "problems": {"type": "array", "items": string}}
        })),
        "audit_summary" => schema(json!({
            "type": "object", "required": ["by", "groups", "truncated"],
            "properties": {"by": {"type": "string", "enum": ["role", "user", "session", "rule", "day"]},
                "since_ms": {"type": ["integer", "null"]}, "until_ms": {"type": ["integer", "null"]},
                "truncated": {"type": "boolean", "description": "more groups than `limit` (default 1000, at most 10000) matched; the first ones, most issued first, are here"},
                "groups": {"type": "array", "items": {"type": "object", "required": ["issued", "refused"],
                    "properties": {"key": {"type": ["string", "null"]}, "issued": {"type": "integer"}, "refused": {"type": "integer"}}}}}
        })),
        "audit_proof" => {
            let hex = json!({"type": "string", "pattern": "^[0-9a-f]{64}$"});
            schema(json!({"oneOf": [
                {"type": "object", "description": "inclusion proof (RFC 9162 audit path, hashes in hex)",
                 "required": ["leaf_index", "tree_size", "leaf_hash", "hashes", "root_hash", "checkpoint"],
                 "properties": {"leaf_index": {"type": "integer"}, "tree_size": {"type": "integer"}, "leaf_hash": hex,
                    "hashes": {"type": "array", "items": hex}, "root_hash": hex, "checkpoint": string,
                    "audit_id": string, "row_hash": string}},
                {"type": "object", "description": "consistency proof between two tree sizes",
                 "required": ["from_size", "to_size", "from_root", "to_root", "hashes", "old_checkpoint", "checkpoint"],
                 "properties": {"from_size": {"type": "integer"}, "to_size": {"type": "integer"}, "from_root": hex, "to_root": hex,
                    "hashes": {"type": "array", "items": hex}, "old_checkpoint": string, "checkpoint": string}}
            ]}))
        }
        "create_key" => schema(json!({
            "type": "object", "required": ["key_id", "key", "tenant", "scopes"],
            "properties": {"key_id": string, "key": {"type": "string", "description": "shown once"}, "tenant": string,
                "scopes": {"type": "array", "items": string}, "name": {"type": ["string", "null"]}}
        })),
        "revoke_key" => schema(
            json!({"type": "object", "required": ["key_id", "revoked"], "properties": {"key_id": string, "revoked": {"const": true}}}),
        ),
        "delete_credential" => schema(
            json!({"type": "object", "required": ["name", "deleted"], "properties": {"name": string, "deleted": {"const": true}}}),
        ),
        "list_keys" | "list_credentials" | "policy_history" => schema(items),
        "current_policy" | "policy_version" => super::policy::VersionView::schema(),
        "put_session" | "get_session" => schema(json!({
            "type": "object", "required": ["session_id", "labels", "registered"],
            "properties": {"session_id": string, "owner": {"type": ["string", "null"]},
                "labels": {"type": "object", "additionalProperties": string}, "registered": {"type": "boolean"}}
        })),
        _ => json_object(),
    }
}

fn operation(o: &Operation) -> openapi::path::Operation {
    let mut b = OperationBuilder::new()
        .operation_id(Some(o.id))
        .summary(Some(o.summary))
        .tag(o.path.split('/').nth(2).unwrap_or("service"));
    let scopes = o.auth.schemes();
    if o.auth != Auth::None {
        b = b.description(Some(format!(
            "Needs a bearer credential: {}.",
            scopes.join(" or ")
        )));
    }
    for s in scopes {
        b = b.security(SecurityRequirement::new(*s, Vec::<String>::new()));
    }
    b = path_parameters(b, o.path);
    if let Some((s, example)) = body_schema(o.body) {
        b = b.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(openapi::Required::True))
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(s))
                        .example(Some(example))
                        .build(),
                )
                .build(),
        ));
    }
    b = success_responses(b, o);
    b = error_responses(b, o);
    b.build()
}

/// A parameter for each `{name}` segment of `path`.
fn path_parameters(mut b: OperationBuilder, path: &str) -> OperationBuilder {
    for seg in path.split('/') {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let kind = match name {
                "version" => json!({"type": "integer", "format": "int64"}),
                "name" => {
                    json!({"type": "string", "pattern": "^[a-z0-9_-]{1,64}$", "example": "main"})
                }
                "tenant" => json!({"type": "string", "example": "acme"}),
                _ => json!({"type": "string"}),
            };
            b = b.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(openapi::Required::True)
                    .schema(Some(schema(kind))),
            );
        }
    }
    b
}

/// The success answer(s) of operation `o`.
fn success_responses(b: OperationBuilder, o: &Operation) -> OperationBuilder {
    match o.answer {
        Answer::Json(status) => b.response(
            status.to_string(),
            ResponseBuilder::new()
                .description(reason(status))
                .content("application/json", ContentBuilder::new().schema(Some(success_schema(o.id))).build()),
        ),
        Answer::CreatedOrReplaced => b
            .response(
                "201",
                ResponseBuilder::new()
                    .description("created")
                    .content("application/json", ContentBuilder::new().schema(Some(json_object())).build()),
            )
            .response(
                "200",
                ResponseBuilder::new()
                    .description("replaced")
                    .content("application/json", ContentBuilder::new().schema(Some(json_object())).build()),
            ),
        Answer::Metrics => b.response(
            "200",
            ResponseBuilder::new()
                .description("Prometheus metrics, OpenMetrics text exposition")
                .content("application/openmetrics-text", ContentBuilder::new().schema(Some(schema(json!({"type": "string"})))).build()),
        ),
        Answer::Text => b.response(
            "200",
            ResponseBuilder::new()
                .description("a C2SP signed note (tlog checkpoint)")
                .content("text/plain", ContentBuilder::new().schema(Some(schema(json!({"type": "string"})))).build()),
        ),
        Answer::JsonOrStream => b.response(
            "200",
            ResponseBuilder::new()
                .description("rows and the next cursor; or an export")
                .content("application/json", ContentBuilder::new().schema(Some(schema(json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"type": "object"}}, "next": {"type": ["string", "null"]}}})))).build())
                .content("application/x-ndjson", ContentBuilder::new().schema(Some(schema(json!({"type": "string"})))).build())
                .content("text/csv", ContentBuilder::new().schema(Some(schema(json!({"type": "string"})))).build()),
        ),
        Answer::NoContent => b.response("204", ResponseBuilder::new().description("preflight allowed")),
        Answer::Ready => {
            let s = schema(json!({"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}, "tenants_loaded": {"type": "integer"}, "problems": {"type": "integer"}}}));
            b.response(
                "200",
                ResponseBuilder::new()
                    .description("ready")
                    .content("application/json", ContentBuilder::new().schema(Some(s.clone())).build()),
            )
            .response(
                "503",
                ResponseBuilder::new()
                    .description("not ready")
                    .content("application/json", ContentBuilder::new().schema(Some(s)).build()),
            )
        }
    }
}

/// Error responses: each status with exactly the catalogue's codes operation
/// `o` can answer with, and one example per status.
fn error_responses(mut b: OperationBuilder, o: &Operation) -> OperationBuilder {
    let mut codes = implied_errors(o);
    codes.extend(o.errors.iter().copied());
    let mut by_status: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for (status, code, _) in CATALOGUE {
        if codes.contains(code) {
            let v = by_status.entry(*status).or_default();
            if !v.contains(code) {
                v.push(code);
            }
        }
    }
    for (status, codes) in by_status {
        let (_, first, meaning) = CATALOGUE
            .iter()
            .find(|(s, c, _)| *s == status && *c == codes[0])
            .copied()
            .unwrap_or((status, "internal", ""));
        let mut r =
            ResponseBuilder::new().description(format!("{}: {}", reason(status), codes.join(", ")));
        r = r.content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(error_schema(&codes)))
                .example(Some(json!({"error": {"code": first, "message": meaning}})))
                .build(),
        );
        b = b.response(status.to_string(), r);
    }
    b
}

fn method(m: &str) -> HttpMethod {
    match m {
        "get" => HttpMethod::Get,
        "post" => HttpMethod::Post,
        "put" => HttpMethod::Put,
        "delete" => HttpMethod::Delete,
        "options" => HttpMethod::Options,
        "patch" => HttpMethod::Patch,
        _ => HttpMethod::Head,
    }
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for o in OPERATIONS {
        paths = paths.path(o.path, PathItem::new(method(o.method), operation(o)));
    }
    let mut components = ComponentsBuilder::new();
    for (name, what) in [
        ("issue", "an API key with the `issue` scope (`tkb_…`)"),
        ("audit", "an API key with the `audit` scope (`tkb_…`)"),
        ("admin", "an API key with the `admin` scope (`tkb_…`)"),
        (
            "login_jwt",
            "an end user's login JWT from one of the tenant's identity providers",
        ),
    ] {
        let mut h = Http::new(HttpAuthScheme::Bearer);
        h.description = Some(what.to_owned());
        components = components.security_scheme(name, SecurityScheme::Http(h));
    }
    components = components
        .schema("TokenRequest", crate::broker::TokenRequest::schema())
        .schema("UserBody", crate::broker::UserBody::schema());
    let mut schemas = Vec::new();
    crate::broker::TokenRequest::schemas(&mut schemas);
    for (n, s) in schemas {
        components = components.schema(n, s);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("token-broker")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Issues Vonage Video (OpenTok) client tokens by per-tenant policy. Prose: docs/api.md.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .build()
}

/// `GET /openapi.json` (anonymous): the document above.
pub async fn serve() -> HttpResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(|| serde_json::to_string(&document()).unwrap_or_default());
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(body.as_str())
}

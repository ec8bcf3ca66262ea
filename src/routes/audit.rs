//! `GET /v1/audit` and `GET /v1/audit/summary` for the tenant's `audit` or
//! `admin` keys: filtered, newest first, keyset-paginated, or streamed as
//! NDJSON/CSV (`format=`). The tenant always comes from the key, never from the
//! request, so no filter can reach another tenant's rows. Every read is itself
//! recorded (`audit_read`, with its filters) before it is answered.

use crate::audit::checkpoint::{Checkpoints, ProveError, TreeError};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extractors::ApiKey;
use crate::audit::{AuditRow, kind};
use crate::auth::Scopes;
use crate::state::AppState;
use crate::store::{AuditFilter, Store};

/// Rows fetched per round trip while exporting.
const EXPORT_PAGE: i64 = 1000;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// Query parameters, shared by the API (query string) and the CLI (flags).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Event kind: token_issued, token_refused, key_created, audit_read, ...
    #[arg(long)]
    pub kind: Option<String>,
    /// Granted role.
    #[arg(long)]
    pub role: Option<String>,
    /// issued, refused or ok.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Refusal code.
    #[arg(long)]
    pub code: Option<String>,
    /// User id.
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub session_id: Option<String>,
    /// Deciding rule id.
    #[arg(long)]
    pub rule: Option<String>,
    #[arg(long)]
    pub policy_version: Option<i64>,
    /// Calling API key id.
    #[arg(long)]
    pub key_id: Option<String>,
    /// RFC 3339 or unix seconds.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 or unix seconds.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub token_id: Option<String>,
    /// A presented token: looked up by its SHA-256 fingerprint.
    #[arg(long)]
    pub token: Option<String>,
    /// The `next` cursor of the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Rows per page (1-1000, default 100).
    #[arg(long)]
    pub limit: Option<i64>,
    /// `json` (default, paginated), `ndjson` or `csv` (streamed, every matching row).
    #[arg(skip)]
    pub format: Option<String>,
}

/// RFC 3339 or unix seconds → unix milliseconds.
pub fn parse_time(field: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = v.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            ApiError::bad(
                "invalid_time",
                field,
                format!("{field} must be RFC 3339 (2026-11-24T09:00:00Z) or unix seconds"),
            )
        })
}

impl AuditParams {
    /// The filters as recorded in an `audit_read` event: a presented token is
    /// replaced by its fingerprint, so the record never holds a token.
    pub fn for_record(&self) -> serde_json::Value {
        let mut p = self.clone();
        p.token = p
            .token
            .as_deref()
            .map(|t| format!("sha256:{}", crate::audit::chain::fingerprint(t)));
        let mut v = serde_json::to_value(&p).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.retain(|_, x| !x.is_null());
        }
        v
    }

    /// Validates and turns the parameters into a store filter for `tenant`.
    pub fn to_filter(&self, tenant: &str) -> Result<AuditFilter, ApiError> {
        if let Some(o) = &self.outcome
            && o != "issued"
            && o != "refused"
            && o != "ok"
        {
            return Err(ApiError::bad(
                "invalid_filter",
                "outcome",
                "outcome is issued, refused or ok",
            ));
        }
        if let Some(r) = &self.role {
            crate::tokens::parse_role(r)
                .map_err(|e| ApiError::bad("invalid_filter", "role", e.to_string()))?;
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad(
                "invalid_filter",
                "limit",
                format!("limit is 1 to {MAX_LIMIT}"),
            ));
        }
        let before_seq = match &self.cursor {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                ApiError::bad(
                    "invalid_cursor",
                    "cursor",
                    "cursor is not one this API returned",
                )
            })?),
        };
        let (session_id, session_id_as_given) = session_filter(self.session_id.as_deref())?;
        Ok(AuditFilter {
            tenant: tenant.to_owned(),
            kind: self.kind.clone(),
            role: self.role.clone(),
            outcome: self.outcome.clone(),
            code: self.code.clone(),
            user: self.user.clone(),
            session_id,
            session_id_as_given,
            rule: self.rule.clone(),
            policy_version: self.policy_version,
            key_id: self.key_id.clone(),
            since_ms: self
                .since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()?,
            until_ms: self
                .until
                .as_deref()
                .map(|v| parse_time("until", v))
                .transpose()?,
            // A presented token is looked up by its id (indexed), then must match
            // the stored fingerprint.
            token_id: match &self.token {
                Some(t) => Some(
                    crate::tokens::inspect(t)
                        .ok()
                        .and_then(|i| i.token_id)
                        .ok_or_else(|| {
                            ApiError::bad(
                                "invalid_filter",
                                "token",
                                "token is not a token this broker makes",
                            )
                        })?,
                ),
                None => self.token_id.clone(),
            },
            token_sha256: self.token.as_deref().map(crate::audit::chain::fingerprint),
            before_seq,
            limit,
        })
    }
}

/// The cursor is opaque to clients: `c1.<seq>` base-36 encoded.
pub fn encode_cursor(seq: i64) -> String {
    let mut n = seq as u64;
    let mut s = Vec::new();
    loop {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    format!("c1.{}", String::from_utf8_lossy(&s))
}

/// The `session_id` filter: any accepted spelling of a session finds the rows
/// of every spelling (they are recorded under the canonical form). The text as
/// given is matched too, for rows recorded before session IDs were canonical;
/// text that is no session ID is matched as given, unless it could never have
/// been recorded (control characters, over-long).
fn session_filter(v: Option<&str>) -> Result<(Option<String>, Option<String>), ApiError> {
    let Some(v) = v else {
        return Ok((None, None));
    };
    match crate::tokens::SessionId::parse(v) {
        Ok(s) if s.canonical() == v => Ok((Some(v.to_owned()), None)),
        Ok(s) => Ok((Some(s.canonical().to_owned()), Some(v.to_owned()))),
        Err(_)
            if v.len() > crate::tokens::MAX_SESSION_ID_LEN || v.chars().any(char::is_control) =>
        {
            Err(ApiError::bad(
                "invalid_filter",
                "session_id",
                "session_id is a session ID (no control characters, at most 512 bytes)",
            ))
        }
        Err(_) => Ok((Some(v.to_owned()), None)),
    }
}

pub fn decode_cursor(c: &str) -> Option<i64> {
    let body = c.strip_prefix("c1.")?;
    i64::from_str_radix(body, 36).ok().filter(|n| *n > 0)
}

/// Records a read of the audit as an admin event (fail closed).
async fn record_read(
    state: &AppState,
    req: &HttpRequest,
    p: &crate::auth::Principal,
    what: &str,
    filters: serde_json::Value,
) -> Result<(), ApiError> {
    let mut row = AuditRow::new(
        &p.tenant,
        kind::AUDIT_READ,
        "ok",
        "api_key",
        state.clock.now_unix_ms(),
    );
    row.key_id = Some(p.key_id.clone());
    row.request_id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(|r| r.to_string());
    row.client_addr = super::client_addr::client_addr_string(req);
    row.detail = Some(json!({"read": what, "filters": filters}).to_string());
    state.audit.append(row).await.map_err(|_| {
        ApiError::unavailable("audit_unavailable", "reads of the audit are themselves audited, and that record cannot be written right now")
    })
}

pub async fn query(
    state: web::Data<AppState>,
    key: ApiKey,
    req: HttpRequest,
    q: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    let p = key.require_any(&[Scopes::AUDIT, Scopes::ADMIN])?;
    let mut f = q.to_filter(&p.tenant)?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => {}
        fmt @ ("ndjson" | "csv") => {
            record_read(&state, &req, p, fmt, q.for_record()).await?;
            f.limit = EXPORT_PAGE;
            return Ok(export(state.store.clone(), f, fmt == "csv"));
        }
        _ => {
            return Err(ApiError::bad(
                "invalid_filter",
                "format",
                "format is json, ndjson or csv",
            ));
        }
    }
    record_read(&state, &req, p, "query", q.for_record()).await?;
    let rows = state.store.query_audit(&f).await?;
    let next = if rows.len() as i64 == f.limit {
        rows.last().map(|r| encode_cursor(r.seq))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next": next })))
}

/// Streams every row matching `f`, a page at a time (constant memory).
pub fn export(store: Store, f: AuditFilter, csv: bool) -> HttpResponse {
    let first = csv.then(|| csv_header().into_bytes());
    let stream = futures_util::stream::unfold((Some(f), first), move |(f, header)| {
        let store = store.clone();
        async move {
            let mut f = f?;
            let rows = match store.query_audit(&f).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = ?e.to_string(), "audit export failed mid-stream");
                    return Some((
                        Err(actix_web::error::ErrorServiceUnavailable(
                            "export interrupted",
                        )),
                        (None, None),
                    ));
                }
            };
            let mut buf = header.unwrap_or_default();
            for r in &rows {
                if csv {
                    buf.extend_from_slice(csv_line(r).as_bytes());
                } else {
                    buf.extend_from_slice(serde_json::to_string(r).unwrap_or_default().as_bytes());
                    buf.push(b'\n');
                }
            }
            let next = (rows.len() as i64 == f.limit).then(|| {
                f.before_seq = rows.last().map(|r| r.seq);
                f
            });
            if buf.is_empty() {
                return None;
            }
            Some((
                Ok::<_, actix_web::Error>(web::Bytes::from(buf)),
                (next, None),
            ))
        }
    });
    let ctype = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    HttpResponse::Ok()
        .content_type(ctype)
        .insert_header(("cache-control", "no-store"))
        .streaming(stream)
}

const CSV_COLUMNS: [&str; 29] = [
    "audit_id",
    "tenant",
    "seq",
    "at_ms",
    "kind",
    "outcome",
    "code",
    "actor",
    "key_id",
    "idp",
    "user_id",
    "user_name",
    "user_groups",
    "session_id",
    "credential",
    "requested_role",
    "requested_expire_time",
    "granted_role",
    "granted_expire_time",
    "rule",
    "policy_version",
    "token_id",
    "token_sha256",
    "client_addr",
    "user_agent",
    "request_id",
    "detail",
    "prev_hash",
    "hash",
];

pub fn csv_header() -> String {
    let mut s = CSV_COLUMNS.join(",");
    s.push_str("\r\n");
    s
}

/// One CSV field: quoted when it holds a comma, quote or line break (quotes
/// doubled), and defused when a spreadsheet would read it as a formula
/// (leading `=`, `+`, `-`, `@`, tab or carriage return get a leading `'`).
pub fn csv_field(v: &str) -> String {
    let mut v = v.to_owned();
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        v.insert(0, '\'');
    }
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

pub fn csv_line(r: &AuditRow) -> String {
    let o = |v: &Option<String>| v.as_deref().map(csv_field).unwrap_or_default();
    let n = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let fields = [
        csv_field(&r.audit_id),
        csv_field(&r.tenant),
        r.seq.to_string(),
        r.at_ms.to_string(),
        csv_field(&r.kind),
        csv_field(&r.outcome),
        o(&r.code),
        csv_field(&r.actor),
        o(&r.key_id),
        o(&r.idp),
        o(&r.user_id),
        o(&r.user_name),
        o(&r.user_groups),
        o(&r.session_id),
        o(&r.credential),
        o(&r.requested_role),
        n(r.requested_expire_time),
        o(&r.granted_role),
        n(r.granted_expire_time),
        o(&r.rule),
        n(r.policy_version),
        o(&r.token_id),
        o(&r.token_sha256),
        o(&r.client_addr),
        o(&r.user_agent),
        o(&r.request_id),
        o(&r.detail),
        csv_field(&r.prev_hash),
        csv_field(&r.hash),
    ];
    let mut s = fields.join(",");
    s.push_str("\r\n");
    s
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryParams {
    pub by: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// `GET /v1/audit/summary?by=role|user|session|rule|day&since=&until=`
pub async fn summary(
    state: web::Data<AppState>,
    key: ApiKey,
    req: HttpRequest,
    q: web::Query<SummaryParams>,
) -> Result<HttpResponse, ApiError> {
    let p = key.require_any(&[Scopes::AUDIT, Scopes::ADMIN])?;
    let by = q.by.as_deref().unwrap_or("role");
    if !["role", "user", "session", "rule", "day"].contains(&by) {
        return Err(ApiError::bad(
            "invalid_filter",
            "by",
            "by is role, user, session, rule or day",
        ));
    }
    let since = q
        .since
        .as_deref()
        .map(|v| parse_time("since", v))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|v| parse_time("until", v))
        .transpose()?;
    record_read(
        &state,
        &req,
        p,
        "summary",
        json!({"by": by, "since": q.since, "until": q.until}),
    )
    .await?;
    let groups = state
        .store
        .audit_summary(&p.tenant, by, since, until)
        .await?;
    Ok(HttpResponse::Ok()
        .json(json!({"by": by, "since_ms": since, "until_ms": until, "groups": groups})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_csv_values_are_quoted_and_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        let mut r = AuditRow::new("t", "token_issued", "issued", "api_key", 1);
        r.user_id = Some("=1+1,\"x\"\n".into());
        let line = csv_line(&r);
        assert_eq!(
            line.matches(',').count() - 1,
            CSV_COLUMNS.len() - 1,
            "one extra comma is inside the quoted user id: {line}"
        );
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        for n in [1, 35, 36, 1_000_000, i64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(n)), Some(n));
        }
        for bad in ["", "c1.", "c2.1", "c1.-5", "c1.0", "12"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}

fn checkpointer(
    cps: &web::Data<Checkpoints>,
) -> Result<std::sync::Arc<crate::audit::checkpoint::Checkpointer>, ApiError> {
    cps.0.clone().ok_or_else(|| {
        ApiError::not_found(
            "checkpoints_disabled",
            "this broker does not sign audit checkpoints",
        )
    })
}

fn tree_error(e: TreeError) -> ApiError {
    match e {
        TreeError::Store(e) => e.into(),
        // The history is damaged: say so without detail (verify tells the operator).
        other => {
            tracing::error!(error = %other, "cannot build the tenant's audit tree");
            ApiError::unavailable(
                "audit_unverifiable",
                "the audit history cannot be checkpointed; the operator must run audit verify",
            )
        }
    }
}

/// `GET /v1/audit/checkpoint`: the latest signed checkpoint of the caller's
/// tenant (a C2SP signed note, `text/plain`), brought up to date first.
pub async fn checkpoint(
    state: web::Data<AppState>,
    cps: web::Data<Checkpoints>,
    key: ApiKey,
) -> Result<HttpResponse, ApiError> {
    let p = key.require_any(&[Scopes::AUDIT, Scopes::ADMIN])?;
    let c = checkpointer(&cps)?;
    let note = c
        .refresh(&state.store, &p.tenant, 1)
        .await
        .map_err(tree_error)?
        .ok_or_else(|| {
            ApiError::not_found("no_checkpoint", "the tenant's audit history is empty")
        })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(note))
}

/// Query of `GET /v1/audit/proof`: one of `audit_id`, `token_id`, `token`
/// (inclusion), or `from` and `to` (consistency).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofParams {
    pub audit_id: Option<String>,
    pub token_id: Option<String>,
    pub token: Option<String>,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// `GET /v1/audit/proof`: an inclusion proof of one of the tenant's rows, or a
/// consistency proof between two sizes of its history, against checkpoints
/// signed by the broker's key.
// The audit query and proof code moves under audit/ (#12 point 3), which
// splits this; allowed until then.
#[allow(clippy::too_many_lines)]
pub async fn proof(
    state: web::Data<AppState>,
    cps: web::Data<Checkpoints>,
    key: ApiKey,
    req: HttpRequest,
    q: web::Query<ProofParams>,
) -> Result<HttpResponse, ApiError> {
    let p = key.require_any(&[Scopes::AUDIT, Scopes::ADMIN])?;
    let c = checkpointer(&cps)?;
    let prove_err = |e: ProveError| match e {
        ProveError::Tree(t) => tree_error(t),
        ProveError::NoSuchRow => {
            ApiError::not_found("audit_row_not_found", "no such row in this tenant's audit")
        }
        ProveError::Proof(e) => ApiError::bad("invalid_proof_request", "from", e.to_string()),
        ProveError::NotYetCheckpointed => ApiError::unavailable(
            "not_yet_checkpointed",
            "the row was committed after the latest checkpoint; ask again",
        ),
        ProveError::Changed => {
            tracing::error!(tenant = %p.tenant, "the stored audit history no longer matches the signed checkpoint");
            ApiError::unavailable(
                "audit_unverifiable",
                "the audit history cannot be proven; the operator must run audit verify",
            )
        }
    };
    let q = q.into_inner();
    for (field, v) in [
        ("audit_id", &q.audit_id),
        ("token_id", &q.token_id),
        ("token", &q.token),
    ] {
        if v.as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 8192 || v.chars().any(char::is_control))
        {
            return Err(ApiError::bad(
                "invalid_proof_request",
                field,
                format!("{field} is empty, too long or has control characters"),
            ));
        }
    }
    let chosen = [
        q.audit_id.is_some(),
        q.token_id.is_some(),
        q.token.is_some(),
        q.from.is_some() || q.to.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if chosen != 1 {
        return Err(ApiError::bad(
            "invalid_proof_request",
            "audit_id",
            "give exactly one of audit_id, token_id, token, or from and to",
        ));
    }
    // Proofs are reads of the audit, and recorded as such (a token only by its fingerprint).
    let record = json!({
        "audit_id": q.audit_id,
        "token_id": q.token_id,
        "token": q.token.as_deref().map(|t| format!("sha256:{}", crate::audit::chain::fingerprint(t))),
        "from": q.from,
        "to": q.to,
    });
    record_read(&state, &req, p, "proof", record).await?;
    if q.from.is_some() || q.to.is_some() {
        let (Some(from), Some(to)) = (q.from, q.to) else {
            return Err(ApiError::bad(
                "invalid_proof_request",
                if q.from.is_none() { "from" } else { "to" },
                "a consistency proof needs from and to",
            ));
        };
        let proof =
            crate::audit::checkpoint::prove_consistency(&state.store, c.key(), &p.tenant, from, to)
                .await
                .map_err(prove_err)?;
        return Ok(HttpResponse::Ok().json(proof));
    }
    let id = match q.audit_id {
        Some(id) => id,
        None => crate::cli_audit::issued_row(
            &state.store,
            &p.tenant,
            q.token.as_deref(),
            q.token_id.as_deref(),
        )
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "audit_row_not_found",
                "no such token in this tenant's audit",
            )
        })?,
    };
    let proof = crate::audit::checkpoint::prove_inclusion(&state.store, &c, &p.tenant, &id)
        .await
        .map_err(prove_err)?;
    Ok(HttpResponse::Ok().json(proof))
}

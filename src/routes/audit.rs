//! `GET /v1/audit` and `GET /v1/audit/summary` for the tenant's `audit` or
//! `admin` keys: filtered, newest first, keyset-paginated, or streamed as
//! NDJSON/CSV (`format=`). The tenant always comes from the key, never from the
//! request, so no filter can reach another tenant's rows. Every read is itself
//! recorded (`audit_read`, with its filters) before it is answered.

use crate::audit::checkpoint::{Checkpoints, ProveError, TreeError};
use crate::audit::heavy::HeavyError;
use crate::limits::{MAX_AUDIT_READS_IN_FLIGHT, MAX_AUDIT_READS_TOTAL, Slot};
use std::sync::Arc;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extractors::Authed;
use crate::audit::AuditRow;
use crate::audit::query::{
    AuditParams, csv_header, csv_line, encode_cursor, parse_time, summary_groups, summary_limit,
};
use crate::auth::scope;
use crate::state::AppState;
use crate::store::{AuditCursor, AuditFilter, Store};

/// Rows fetched per round trip while exporting.
const EXPORT_PAGE: i64 = 1000;

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
        crate::audit::Kind::AuditRead,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::ApiKey,
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
    p: Authed<scope::Audit>,
    req: HttpRequest,
    q: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    let mut f = q.to_filter(&p.tenant)?;
    let slot = read_slot(&state, &p.tenant)?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => {}
        fmt @ ("ndjson" | "csv") => {
            record_read(&state, &req, &p, fmt, q.for_record()).await?;
            f.limit = EXPORT_PAGE;
            return export(state.store.clone(), f, fmt == "csv", slot).await;
        }
        _ => {
            return Err(ApiError::bad(
                "invalid_filter",
                "format",
                "format is json, ndjson or csv",
            ));
        }
    }
    record_read(&state, &req, &p, "query", q.for_record()).await?;
    let rows = state.store.query_audit(&f).await?;
    let next = if rows.len() as i64 == f.limit {
        rows.last().map(|r| encode_cursor(AuditCursor::after(r)))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next": next })))
}

/// The places an audit read holds until it ends (an export: its whole
/// stream): one of its tenant's (`MAX_AUDIT_READS_IN_FLIGHT`) and one of the
/// broker's (`MAX_AUDIT_READS_TOTAL`).
#[derive(Debug)]
pub(crate) struct ReadSlot {
    _tenant: Slot,
    _broker: tokio::sync::OwnedSemaphorePermit,
}

/// The places for an audit read of `tenant`, or 429 `audit_busy`.
pub(crate) fn read_slot(state: &AppState, tenant: &str) -> Result<ReadSlot, ApiError> {
    let busy = |msg: String| {
        let mut e = ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "audit_busy",
            msg,
        );
        e.retry_after = Some(1);
        e
    };
    let tenant_slot = state.limits.audit_reads.try_enter(tenant).ok_or_else(|| {
        busy(format!(
            "this tenant already has {MAX_AUDIT_READS_IN_FLIGHT} audit reads running; retry after the time in Retry-After"
        ))
    })?;
    let broker_slot = Arc::clone(&state.limits.audit_reads_total)
        .try_acquire_owned()
        .map_err(|_| {
            busy(format!(
                "the broker already runs {MAX_AUDIT_READS_TOTAL} audit reads; retry after the time in Retry-After"
            ))
        })?;
    Ok(ReadSlot {
        _tenant: tenant_slot,
        _broker: broker_slot,
    })
}

/// Streams every row matching `f`, a page at a time (constant memory),
/// holding the tenant's read `slot` until the stream ends or is dropped. The
/// first page is read before the status is sent, so a read that fails (or
/// runs out of time) answers with its error rather than a cut stream.
pub(crate) async fn export(
    store: Store,
    f: AuditFilter,
    csv: bool,
    slot: ReadSlot,
) -> Result<HttpResponse, ApiError> {
    let first = store.query_audit(&f).await?;
    let header = csv.then(|| csv_header().into_bytes());
    let stream = futures_util::stream::unfold(
        (Some(f), Some(first), header),
        move |(f, read, header)| {
            let _held = &slot;
            let store = store.clone();
            async move {
                let mut f = f?;
                let rows = match read {
                    Some(rows) => rows,
                    None => match store.query_audit(&f).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = ?e.to_string(), "audit export failed mid-stream");
                            return Some((
                                Err(actix_web::error::ErrorServiceUnavailable(
                                    "export interrupted",
                                )),
                                (None, None, None),
                            ));
                        }
                    },
                };
                let mut buf = header.unwrap_or_default();
                for r in &rows {
                    if csv {
                        buf.extend_from_slice(csv_line(r).as_bytes());
                    } else {
                        buf.extend_from_slice(
                            serde_json::to_string(r).unwrap_or_default().as_bytes(),
                        );
                        buf.push(b'\n');
                    }
                }
                let next = (rows.len() as i64 == f.limit).then(|| {
                    f.before = rows.last().map(AuditCursor::after);
                    f
                });
                if buf.is_empty() {
                    return None;
                }
                Some((
                    Ok::<_, actix_web::Error>(web::Bytes::from(buf)),
                    (next, None, None),
                ))
            }
        },
    );
    let ctype = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    Ok(HttpResponse::Ok()
        .content_type(ctype)
        .insert_header(("cache-control", "no-store"))
        .streaming(stream))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryParams {
    pub by: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /v1/audit/summary?by=role|user|session|rule|day&since=&until=&limit=`:
/// the first `limit` groups, most issued first; `truncated` says whether
/// there were more.
pub async fn summary(
    state: web::Data<AppState>,
    p: Authed<scope::Audit>,
    req: HttpRequest,
    q: web::Query<SummaryParams>,
) -> Result<HttpResponse, ApiError> {
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
    let limit = summary_limit(q.limit)?;
    record_read(
        &state,
        &req,
        &p,
        "summary",
        json!({"by": by, "since": q.since, "until": q.until, "limit": q.limit}),
    )
    .await?;
    let _slot = read_slot(&state, &p.tenant)?;
    let (groups, truncated) =
        summary_groups(&state.store, &p.tenant, by, (since, until), limit).await?;
    Ok(HttpResponse::Ok().json(json!({
        "by": by, "since_ms": since, "until_ms": until, "groups": groups, "truncated": truncated
    })))
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
    p: Authed<scope::Audit>,
) -> Result<HttpResponse, ApiError> {
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
pub async fn proof(
    state: web::Data<AppState>,
    cps: web::Data<Checkpoints>,
    p: Authed<scope::Audit>,
    req: HttpRequest,
    q: web::Query<ProofParams>,
) -> Result<HttpResponse, ApiError> {
    let c = checkpointer(&cps)?;
    let prove_err = |e: ProveError| prove_error(&p.tenant, e);
    let q = q.into_inner();
    check_proof_params(&q)?;
    // Proofs are reads of the audit, and recorded as such (a token only by its fingerprint).
    let record = json!({
        "audit_id": q.audit_id,
        "token_id": q.token_id,
        "token": q.token.as_deref().map(|t| format!("sha256:{}", crate::audit::chain::fingerprint(t))),
        "from": q.from,
        "to": q.to,
    });
    record_read(&state, &req, &p, "proof", record).await?;
    if q.from.is_some() || q.to.is_some() {
        let (Some(from), Some(to)) = (q.from, q.to) else {
            return Err(ApiError::bad(
                "invalid_proof_request",
                if q.from.is_none() { "from" } else { "to" },
                "a consistency proof needs from and to",
            ));
        };
        let (store, tenant) = (state.store.clone(), p.tenant.clone());
        let proof = state
            .heavy
            .run(&p.tenant, async move {
                crate::audit::checkpoint::prove_consistency(&store, &c, &tenant, from, to).await
            })
            .await
            .map_err(heavy_error)?
            .map_err(prove_err)?;
        return Ok(HttpResponse::Ok().json(proof));
    }
    let id = match q.audit_id {
        Some(id) => id,
        None => crate::audit::query::issued_row(
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
    let (store, tenant) = (state.store.clone(), p.tenant.clone());
    let proof = state
        .heavy
        .run(&p.tenant, async move {
            crate::audit::checkpoint::prove_inclusion(&store, &c, &tenant, &id).await
        })
        .await
        .map_err(heavy_error)?
        .map_err(prove_err)?;
    Ok(HttpResponse::Ok().json(proof))
}

/// A proof that did not get to run, or to its end (`crate::audit::heavy`).
pub(crate) fn heavy_error(e: HeavyError) -> ApiError {
    match e {
        HeavyError::Busy => {
            let mut e = ApiError::new(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                "audit_busy",
                "a proof or chain check of this tenant is already running, or the broker is busy with others; retry after the time in Retry-After",
            );
            e.retry_after = Some(1);
            e
        }
        HeavyError::TimedOut => ApiError::unavailable(
            "audit_timeout",
            "the proof took longer than its time bound; the operator can make it with audit prove",
        ),
        HeavyError::Failed => ApiError::internal("the audit-heavy job failed"),
    }
}

/// A proof request names exactly one thing to prove, in well-formed values.
fn check_proof_params(q: &ProofParams) -> Result<(), ApiError> {
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
    Ok(())
}

/// The HTTP answer to a proof that cannot be given (the console's too).
pub(crate) fn prove_error(tenant: &str, e: ProveError) -> ApiError {
    match e {
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
            tracing::error!(tenant = %tenant, "the stored audit history no longer matches the signed checkpoint");
            ApiError::unavailable(
                "audit_unverifiable",
                "the audit history cannot be proven; the operator must run audit verify",
            )
        }
    }
}

//! The console's pages. Each handler first resolves the session (tenant and
//! scopes come only from it), checks the scope the API would check, and then
//! calls the same store and admin operations as the API handlers.

use crate::routes::extractors::api_key_limit;
use std::collections::{BTreeMap, HashMap};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::html::{self, url};
use super::session::{self, COOKIE, PRE_COOKIE, Session};
use super::views;
use crate::audit::query::{AuditParams, DEFAULT_SUMMARY_GROUPS, encode_cursor};
use crate::audit::verify::VerifyError;
use crate::audit::{AuditRow, Kind, kind};
use crate::auth::{Required, Scopes, scope};
use crate::routes::error::ApiError;
use crate::state::AppState;

/// Audit event kind of a console sign-in.
pub const CONSOLE_SIGN_IN: Kind = Kind::ConsoleSignIn;

type Page = Result<HttpResponse, Fail>;

/// A finished error page travelling through `?` (actix needs a
/// `ResponseError`; this one just hands the page out once).
#[derive(Debug)]
pub struct Fail(Box<actix_web::error::InternalError<&'static str>>);

impl From<HttpResponse> for Fail {
    fn from(r: HttpResponse) -> Fail {
        Fail(Box::new(actix_web::error::InternalError::from_response(
            "console", r,
        )))
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl actix_web::ResponseError for Fail {
    fn status_code(&self) -> StatusCode {
        actix_web::ResponseError::status_code(&*self.0)
    }
    fn error_response(&self) -> HttpResponse {
        actix_web::ResponseError::error_response(&*self.0)
    }
}

fn now(state: &AppState) -> i64 {
    state.clock.now_unix_ms()
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The request's live session, or a redirect to the sign-in page. A session
/// whose key has been revoked (here or on another broker) ends now.
/// The guard of every admin form: a signed-in session, its own CSRF token,
/// and the admin scope, in that order.
async fn admin_form(state: &AppState, req: &HttpRequest, csrf: &str) -> Result<Session, Fail> {
    let s = signed_in(state, req).await?;
    csrf_ok(&s, csrf)?;
    require_admin(&s)?;
    Ok(s)
}

async fn signed_in(state: &AppState, req: &HttpRequest) -> Result<Session, Fail> {
    let to_sign_in = || Fail::from(see_other("/console/sign-in"));
    let id = session::cookie(req, COOKIE).ok_or_else(to_sign_in)?;
    let s = session::lookup(id, now(state)).ok_or_else(to_sign_in)?;
    // A console page is a call by the session's key: it takes that key's
    // `api_key` token, as every API route does, before any database work.
    api_key_limit(state, &s.tenant, &s.key_id).map_err(|e| api_error(&s, e))?;
    match state.store.get_key(&s.key_id).await {
        Ok(Some(k)) if k.revoked_at_ms.is_none() && k.tenant == s.tenant => Ok(s),
        Ok(_) => {
            session::remove(id);
            Err(to_sign_in())
        }
        Err(e) => Err(api_error(&s, e.into()).into()),
    }
}

/// An API error as a page inside the session's layout, with the API's
/// status, code and message (and its `Retry-After`).
fn api_error(s: &Session, e: ApiError) -> HttpResponse {
    with_retry_after(
        html::error_in_page(s, e.status, e.body.code, &e.body.message),
        &e,
    )
}

fn with_retry_after(mut r: HttpResponse, e: &ApiError) -> HttpResponse {
    if let Some(secs) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    r
}

fn require_admin(s: &Session) -> Result<(), Fail> {
    if s.is_admin() {
        Ok(())
    } else {
        Err(Fail::from(html::error_in_page(
            s,
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "this page needs a key with the admin scope",
        )))
    }
}

fn require_audit(s: &Session) -> Result<(), Fail> {
    if s.can_audit() {
        Ok(())
    } else {
        Err(Fail::from(html::error_in_page(
            s,
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "this page needs a key with the audit or admin scope",
        )))
    }
}

fn csrf_ok(s: &Session, presented: &str) -> Result<(), Fail> {
    if !presented.is_empty() && session::same(&s.csrf, presented) {
        Ok(())
    } else {
        tracing::info!(target: "broker::security", tenant = ?s.tenant, key_id = ?s.key_id, "console CSRF token mismatch");
        Err(Fail::from(html::error_in_page(
            s,
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "this form did not carry this session's CSRF token; reload the page and try again",
        )))
    }
}

/// Appends a console event to the tenant's audit chain (fail closed).
async fn record(
    state: &AppState,
    req: &HttpRequest,
    s: &Session,
    kind: Kind,
    detail: serde_json::Value,
) -> Result<(), HttpResponse> {
    let mut row = AuditRow::new(
        &s.tenant,
        kind,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::ApiKey,
        now(state),
    );
    row.key_id = Some(s.key_id.clone());
    row.request_id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(|r| r.to_string());
    // As the API records it: the forwarded client behind a trusted proxy.
    row.client_addr = crate::routes::client_addr::client_addr_string(req);
    row.user_agent = crate::routes::client_addr::user_agent_string(req);
    row.detail = Some(detail.to_string());
    state.audit.append(row).await.map_err(|_| {
        html::error_in_page(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit record cannot be written right now, so this was not done",
        )
    })
}

fn actor(req: &HttpRequest, s: &Session) -> crate::admin::Actor {
    crate::routes::keys::actor(req, &s.key_id)
}

// ---------------------------------------------------------------- sign-in

pub async fn home(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    match signed_in(&state, &req).await {
        Ok(s) if s.is_admin() => see_other("/console/overview"),
        // Auditors land on who got moderator.
        Ok(_) => see_other("/console/moderators"),
        Err(f) => actix_web::ResponseError::error_response(&f),
    }
}

/// The page for a request that needed fresh randomness the OS could not give.
fn no_randomness(e: &session::NoRandomness) -> HttpResponse {
    tracing::error!(error = %e, "console cannot make a session token");
    html::error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "internal error",
    )
}

fn sign_in_page(status: StatusCode, error: Option<(&str, &str)>, secure: bool) -> HttpResponse {
    let pre = match session::random_token() {
        Ok(t) => t,
        Err(e) => return no_randomness(&e),
    };
    let mut r = html::bare(status, "Sign in", &views::SignIn { error, csrf: &pre });
    if let Ok(v) =
        header::HeaderValue::from_str(&session::set_cookie(PRE_COOKIE, &pre, Some(3600), secure))
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The sign-in page again, showing why the sign-in was refused.
fn sign_in_refused(e: &ApiError, secure: bool) -> HttpResponse {
    with_retry_after(
        sign_in_page(e.status, Some((e.body.code, &e.body.message)), secure),
        e,
    )
}

pub async fn sign_in_form(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if signed_in(&state, &req).await.is_ok() {
        return see_other("/console");
    }
    sign_in_page(StatusCode::OK, None, super::secure_cookies(&req))
}

/// The sign-in form; its `Debug` shows neither the key nor the CSRF token.
#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    csrf: String,
}

impl std::fmt::Debug for SignInForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInForm").finish_non_exhaustive()
    }
}

pub async fn sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<SignInForm>,
) -> HttpResponse {
    let secure = super::secure_cookies(&req);
    // Login CSRF: the form's token must match the pre-session cookie.
    let pre = session::cookie(&req, PRE_COOKIE).unwrap_or_default();
    if pre.is_empty() || !session::same(pre, &form.csrf) {
        return sign_in_page(
            StatusCode::FORBIDDEN,
            Some((
                "csrf_failed",
                "the sign-in form's CSRF token is missing or wrong; try again",
            )),
            secure,
        );
    }
    if let Err(e) = crate::routes::extractors::refuse_if_over_failed_auth_limit(&state, &req) {
        return sign_in_refused(&e, secure);
    }
    let p = match crate::routes::extractors::authenticate_key(&state, &req, form.key.trim()).await {
        Ok(p) => p,
        Err(e) => return sign_in_refused(&e, secure),
    };
    // A sign-in is a call by the key, like any other: it takes a token.
    if let Err(e) = api_key_limit(&state, &p.tenant, &p.key_id) {
        return sign_in_refused(&e, secure);
    }
    if !scope::Audit::allows(p.scopes) {
        return sign_in_page(
            StatusCode::FORBIDDEN,
            Some((
                "insufficient_scope",
                "the console needs a key with the audit or admin scope",
            )),
            secure,
        );
    }
    let now = now(&state);
    let s = match Session::new(&p, now) {
        Ok(s) => s,
        Err(e) => return no_randomness(&e),
    };
    if let Err(r) = record(
        &state,
        &req,
        &s,
        CONSOLE_SIGN_IN,
        json!({"console": "sign_in", "scopes": p.scopes.names()}),
    )
    .await
    {
        return r;
    }
    let id = match session::insert(s, now) {
        Ok(id) => id,
        Err(e) => return no_randomness(&e),
    };
    tracing::info!(target: "broker::security", tenant = ?p.tenant, key_id = ?p.key_id, "console sign-in");
    let mut r = see_other("/console");
    for c in [
        session::set_cookie(COOKIE, &id, Some(session::ABSOLUTE_TTL_MS / 1000), secure),
        session::set_cookie(PRE_COOKIE, "", None, secure),
    ] {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn sign_out(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> Page {
    let s = signed_in(&state, &req).await?;
    csrf_ok(&s, &form.csrf)?;
    if let Some(id) = session::cookie(&req, COOKIE) {
        session::remove(id);
    }
    let mut r = see_other("/console/sign-in");
    if let Ok(v) = header::HeaderValue::from_str(&session::set_cookie(
        COOKIE,
        "",
        None,
        super::secure_cookies(&req),
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

// ---------------------------------------------------------------- overview

/// Checks the tenant's history against the latest checkpoint this broker
/// signed for it: `Ok(Some(size))` when it matches, `Ok(None)` when there is
/// none yet (or no signing key), `Err` with what the page says otherwise.
async fn signed_state(
    store: &crate::store::Store,
    cpr: Option<&crate::audit::checkpoint::Checkpointer>,
    tenant: &str,
) -> Result<Option<u64>, views::Chain> {
    use crate::audit::checkpoint::verify_tenant_signed;
    let Some(c) = cpr else {
        return Ok(None);
    };
    let Some(note) = c.latest(tenant).await else {
        return Ok(None);
    };
    let key = c.verifier();
    let cp = key
        .open_checkpoint(&note)
        .map_err(|e| views::Chain::Broken(e.to_string()))?;
    let checked = verify_tenant_signed(store, tenant, std::slice::from_ref(&cp), &key).await;
    signed_view(checked, cp.size)
}

/// The overview's chain check: the whole chain re-hashed, then the latest
/// signed checkpoint. It reads the tenant's whole history, so it runs as an
/// `audit::heavy` job (one per tenant and per process, off the workers).
async fn chain_check(
    store: crate::store::Store,
    cpr: Option<std::sync::Arc<crate::audit::checkpoint::Checkpointer>>,
    tenant: String,
) -> views::Chain {
    match crate::audit::verify::verify_tenant(&store, &tenant, None).await {
        Ok(v) if v.ok => match signed_state(&store, cpr.as_deref(), &tenant).await {
            Ok(signed) => views::Chain::Verified {
                rows: v.rows,
                head_seq: v.head_seq,
                hash: v.head_hash.get(..16).unwrap_or(&v.head_hash).to_owned(),
                signed,
            },
            Err(chain) => chain,
        },
        Ok(v) => views::Chain::Broken(
            v.fault
                .map(|f| format!("{} at seq {}: {}", f.problem, f.seq, f.message))
                .unwrap_or_default(),
        ),
        Err(e) => not_checked(e),
    }
}

/// The signed check's result as the overview shows it. A fault is a broken
/// chain; a database error is not (the chain could not be checked now), and
/// its text goes to the log, never to the page.
fn signed_view(
    checked: Result<Option<crate::audit::checkpoint::SignedFault>, crate::store::StoreError>,
    size: u64,
) -> Result<Option<u64>, views::Chain> {
    match checked {
        Ok(None) => Ok(Some(size)),
        Ok(Some(f)) => Err(views::Chain::Broken(format!(
            "{} (signed checkpoint of {} rows): {}",
            f.problem, f.size, f.message
        ))),
        Err(e) => Err(not_checked(VerifyError::Store(e))),
    }
}

/// The overview's chain when verification could not run: the API's generic
/// wording for the cause (which `ApiError` logs).
fn not_checked(e: VerifyError) -> views::Chain {
    let e = match e {
        VerifyError::Store(e) => ApiError::from(e),
        other => ApiError::internal(other),
    };
    views::Chain::NotRun(e.body.message)
}

pub async fn overview(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let s = signed_in(&state, &req).await?;
    require_audit(&s)?;
    record(
        &state,
        &req,
        &s,
        Kind::AuditRead,
        json!({"read": "summary", "console": "overview"}),
    )
    .await?;
    let now = now(&state);
    let days = daily_counts(&state, &s, now).await?;
    let week = now - 7 * 86_400_000;
    let by_role = state
        .store
        .audit_summary(&s.tenant, "role", Some(week), None, DEFAULT_SUMMARY_GROUPS)
        .await
        .map_err(|e| api_error(&s, e.into()))?;
    let moderators: i64 = by_role
        .iter()
        .filter(|r| r.key.as_deref() == Some("moderator"))
        .map(|r| r.issued)
        .sum();
    let (issued, refused) = days.iter().fold((0, 0), |a, d| (a.0 + d.1, a.1 + d.2));
    let by_code = refusal_codes(&state, &s, week).await?;
    let cpr = req
        .app_data::<web::Data<crate::audit::checkpoint::Checkpoints>>()
        .and_then(|c| c.0.clone());
    let job = chain_check(state.store.clone(), cpr, s.tenant.clone());
    let chain = match state.heavy.run(&s.tenant, job).await {
        Ok(chain) => chain,
        Err(e) => views::Chain::NotRun(crate::routes::audit::heavy_error(e).body.message),
    };
    let body = views::Overview {
        issued,
        refused,
        moderators,
        chart: views::Chart::of(&days),
        codes: by_code.into_iter().collect(),
        chain,
    };
    Ok(html::page(&s, "overview", "Overview", &body))
}

/// Issued and refused tokens on each of the last 14 UTC days, empty ones
/// included, oldest first.
async fn daily_counts(
    state: &AppState,
    s: &Session,
    now: i64,
) -> Result<Vec<(String, i64, i64)>, Fail> {
    let since = now - 14 * 86_400_000;
    let by_day = state
        .store
        .audit_summary(&s.tenant, "day", Some(since), None, DEFAULT_SUMMARY_GROUPS)
        .await
        .map_err(|e| api_error(s, e.into()))?;
    let counted: HashMap<String, (i64, i64)> = by_day
        .into_iter()
        .map(|r| (r.key.unwrap_or_default(), (r.issued, r.refused)))
        .collect();
    // Every one of the 14 UTC days, empty ones included, oldest first.
    Ok((0..14)
        .rev()
        .map(|back| {
            let day = html::rfc3339(now - back * 86_400_000)
                .get(..10)
                .unwrap_or_default()
                .to_owned();
            let (i, r) = counted.get(&day).copied().unwrap_or((0, 0));
            (day, i, r)
        })
        .collect())
}

/// Refusals by code over the last 7 days (the newest 1000).
async fn refusal_codes(
    state: &AppState,
    s: &Session,
    week: i64,
) -> Result<BTreeMap<String, i64>, Fail> {
    let refusals = state
        .store
        .query_audit(&crate::store::AuditFilter {
            tenant: s.tenant.clone(),
            kind: Some(kind::TOKEN_REFUSED.into()),
            since_ms: Some(week),
            limit: 1000,
            ..Default::default()
        })
        .await
        .map_err(|e| api_error(s, e.into()))?;
    let mut by_code: BTreeMap<String, i64> = BTreeMap::new();
    for r in &refusals {
        *by_code
            .entry(r.code.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
    }
    Ok(by_code)
}

// ---------------------------------------------------------------- who got moderator

/// Non-empty query values only (empty form fields mean "no filter").
fn given(q: &HashMap<String, String>, k: &str) -> Option<String> {
    q.get(k)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `<input type=datetime-local>` gives `2026-11-24T09:00` (no zone, treated
/// as UTC here); the API's forms (RFC 3339, unix seconds) pass through.
fn form_time(v: Option<String>) -> Option<String> {
    v.map(|v| {
        if v.len() == 16 && v.as_bytes().get(10) == Some(&b'T') {
            format!("{v}:00Z")
        } else {
            v
        }
    })
}

/// Runs an audit query of the session's tenant, recorded first as a read
/// (every read of the audit is, as in the API).
async fn recorded_query(
    state: &AppState,
    req: &HttpRequest,
    s: &Session,
    page: &str,
    params: &AuditParams,
) -> Result<(Vec<crate::audit::AuditRow>, i64), Fail> {
    let f = params
        .to_filter(&s.tenant)
        .map_err(|e| api_error(s, e.into()))?;
    record(
        state,
        req,
        s,
        Kind::AuditRead,
        json!({"read": "query", "console": page, "filters": params.for_record()}),
    )
    .await?;
    let rows = state
        .store
        .query_audit(&f)
        .await
        .map_err(|e| api_error(s, e.into()))?;
    Ok((rows, f.limit))
}

/// The session's tenant's audit event number `seq` (another tenant's number
/// finds nothing), or the not-found page.
async fn event_row(
    state: &AppState,
    s: &Session,
    seq: &str,
) -> Result<crate::audit::AuditRow, Fail> {
    let not_found = || -> Fail {
        html::error_in_page(
            s,
            StatusCode::NOT_FOUND,
            "not_found",
            "this tenant has no audit event with that number",
        )
        .into()
    };
    let seq: i64 = seq
        .parse()
        .ok()
        .filter(|n| *n > 0 && *n < i64::MAX)
        .ok_or_else(not_found)?;
    let f = crate::store::AuditFilter {
        tenant: s.tenant.clone(),
        seq: Some(seq),
        limit: 1,
        ..Default::default()
    };
    state
        .store
        .query_audit(&f)
        .await
        .map_err(|e| api_error(s, e.into()))?
        .into_iter()
        .find(|r| r.seq == seq)
        .ok_or_else(not_found)
}

fn moderator_params(q: &HashMap<String, String>) -> AuditParams {
    AuditParams {
        kind: Some(kind::TOKEN_ISSUED.into()),
        role: Some("moderator".into()),
        user: given(q, "user"),
        session_id: given(q, "session_id"),
        since: form_time(given(q, "since")),
        until: form_time(given(q, "until")),
        cursor: given(q, "cursor"),
        limit: Some(100),
        ..Default::default()
    }
}

/// The given filters as a raw query string (templates escape it).
fn query_string(q: &HashMap<String, String>, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|k| given(q, k).map(|v| format!("{k}={}", url(&v))))
        .collect::<Vec<_>>()
        .join("&")
}

fn inputs(
    q: &HashMap<String, String>,
    fields: &[(&'static str, &'static str)],
) -> Vec<views::FilterInput> {
    fields
        .iter()
        .map(|(name, label)| views::FilterInput {
            name,
            label,
            value: given(q, name).unwrap_or_default(),
        })
        .collect()
}

pub async fn moderators(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<HashMap<String, String>>,
) -> Page {
    let s = signed_in(&state, &req).await?;
    require_audit(&s)?;
    let params = moderator_params(&q);
    let (rows, limit) = recorded_query(&state, &req, &s, "moderators", &params).await?;
    let qs = query_string(&q, &["since", "until", "user", "session_id"]);
    let body = views::Moderators {
        inputs: inputs(
            &q,
            &[
                ("since", "From (UTC)"),
                ("until", "Until (UTC)"),
                ("user", "User"),
                ("session_id", "Session"),
            ],
        ),
        qs: &qs,
        rows: &rows,
        next: next_query(&rows, limit, &qs),
    };
    Ok(html::page(&s, "moderators", "Who got moderator", &body))
}

/// The query string of the next (older) keyset page, when there may be one.
fn next_query(rows: &[AuditRow], limit: i64, qs: &str) -> Option<String> {
    if rows.len() as i64 == limit
        && let Some(last) = rows.last()
    {
        let sep = if qs.is_empty() { "" } else { "&" };
        Some(format!(
            "{qs}{sep}cursor={}",
            url(&encode_cursor(crate::store::AuditCursor::after(last)))
        ))
    } else {
        None
    }
}

pub async fn moderators_csv(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<HashMap<String, String>>,
) -> Page {
    let s = signed_in(&state, &req).await?;
    require_audit(&s)?;
    let mut params = moderator_params(&q);
    params.cursor = None;
    params.format = Some("csv".into());
    let mut f = params
        .to_filter(&s.tenant)
        .map_err(|e| api_error(&s, e.into()))?;
    record(
        &state,
        &req,
        &s,
        Kind::AuditRead,
        json!({"read": "csv", "console": "moderators", "filters": params.for_record()}),
    )
    .await?;
    f.limit = 1000;
    let slot = crate::routes::audit::read_slot(&state, &s.tenant).map_err(|e| api_error(&s, e))?;
    let mut r = crate::routes::audit::export(state.store.clone(), f, true, slot)
        .await
        .map_err(|e| api_error(&s, e))?;
    r.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        header::HeaderValue::from_static("attachment; filename=\"moderator-grants.csv\""),
    );
    Ok(r)
}

// ---------------------------------------------------------------- audit browser

const AUDIT_FILTERS: [(&str, &str); 13] = [
    ("kind", "Kind"),
    ("outcome", "Outcome"),
    ("role", "Role"),
    ("code", "Code"),
    ("user", "User"),
    ("session_id", "Session"),
    ("rule", "Rule"),
    ("policy_version", "Policy version"),
    ("key_id", "Key id"),
    ("token_id", "Token id"),
    ("since", "From (UTC)"),
    ("until", "Until (UTC)"),
    ("limit", "Rows per page"),
];

pub async fn audit_browser(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<HashMap<String, String>>,
) -> Page {
    let s = signed_in(&state, &req).await?;
    require_audit(&s)?;
    let bad = |field: &str| {
        Fail::from(api_error(
            &s,
            ApiError::bad("invalid_filter", field, format!("{field} must be a number")),
        ))
    };
    let params = AuditParams {
        kind: given(&q, "kind"),
        role: given(&q, "role"),
        outcome: given(&q, "outcome"),
        code: given(&q, "code"),
        user: given(&q, "user"),
        session_id: given(&q, "session_id"),
        rule: given(&q, "rule"),
        policy_version: given(&q, "policy_version")
            .map(|v| v.parse().map_err(|_| bad("policy_version")))
            .transpose()?,
        key_id: given(&q, "key_id"),
        since: form_time(given(&q, "since")),
        until: form_time(given(&q, "until")),
        token_id: given(&q, "token_id"),
        cursor: given(&q, "cursor"),
        limit: Some(
            given(&q, "limit")
                .map(|v| v.parse().map_err(|_| bad("limit")))
                .transpose()?
                .unwrap_or(50),
        ),
        ..Default::default()
    };
    let (rows, limit) = recorded_query(&state, &req, &s, "audit", &params).await?;
    let keys: Vec<&str> = AUDIT_FILTERS.iter().map(|(k, _)| *k).collect();
    let qs = query_string(&q, &keys);
    let body = views::Audit {
        inputs: inputs(&q, &AUDIT_FILTERS),
        rows: &rows,
        next: next_query(&rows, limit, &qs),
    };
    Ok(html::page(&s, "audit", "Audit", &body))
}

pub async fn audit_event(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Page {
    let s = signed_in(&state, &req).await?;
    require_audit(&s)?;
    let row = event_row(&state, &s, &path).await?;
    let seq = row.seq;
    record(
        &state,
        &req,
        &s,
        Kind::AuditRead,
        json!({"read": "event", "console": "audit", "seq": seq}),
    )
    .await?;
    let mut v = serde_json::to_value(&row).unwrap_or_default();
    let detail = v
        .as_object_mut()
        .and_then(|m| m.remove("detail"))
        .and_then(|d| d.as_str().and_then(|d| serde_json::from_str(d).ok()))
        .unwrap_or(serde_json::Value::Null);
    let fields: Vec<views::EventField> = v
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| views::EventField {
                    key: k.clone(),
                    value: match x {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                    is_time: k == "at_ms",
                })
                .collect()
        })
        .unwrap_or_default();
    let decided = match (row.kind.as_str(), &row.granted_role) {
        (kind::TOKEN_ISSUED, Some(g)) => views::Decided::Issued(g.clone()),
        (kind::TOKEN_REFUSED, _) => views::Decided::Refused,
        _ => views::Decided::Other,
    };
    let body = views::Event {
        seq,
        row: &row,
        fields,
        decided,
        detail: (!detail.is_null())
            .then(|| serde_json::to_string_pretty(&detail).unwrap_or_default()),
    };
    Ok(html::page(
        &s,
        "audit",
        &format!("Audit event #{seq}"),
        &body,
    ))
}

/// `GET /console/audit/{seq}/proof`: the event's inclusion proof against the
/// latest signed checkpoint, as a JSON download (the same proof as
/// `GET /v1/audit/proof`, and recorded as a read the same way).
pub async fn audit_event_proof(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, Fail> {
    use crate::audit::checkpoint::{Checkpoints, prove_inclusion};
    let s = signed_in(&state, &req).await?;
    require_audit(&s)?;
    let fail = |status: StatusCode, code: &'static str, message: &str| -> Fail {
        html::error_in_page(&s, status, code, message).into()
    };
    let row = event_row(&state, &s, &path).await?;
    let seq = row.seq;
    let Some(c) = req
        .app_data::<web::Data<Checkpoints>>()
        .and_then(|c| c.0.clone())
    else {
        return Err(fail(
            StatusCode::NOT_FOUND,
            "checkpoints_disabled",
            "this broker does not sign audit checkpoints, so it has no proofs",
        ));
    };
    record(
        &state,
        &req,
        &s,
        Kind::AuditRead,
        json!({"read": "proof", "console": "audit", "seq": seq}),
    )
    .await?;
    // The API's answer to a proof that cannot be given: a database error
    // reads "the database is unavailable", never the database's own text.
    let (store, tenant, id) = (state.store.clone(), s.tenant.clone(), row.audit_id.clone());
    let job = async move { prove_inclusion(&store, &c, &tenant, &id).await };
    let proof = state
        .heavy
        .run(&s.tenant, job)
        .await
        .map_err(|e| api_error(&s, crate::routes::audit::heavy_error(e)))?
        .map_err(|e| api_error(&s, crate::routes::audit::prove_error(&s.tenant, e)))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"proof-{}-{seq}.json\"", s.tenant),
        ))
        .json(proof))
}

// ---------------------------------------------------------------- policy (admin)

pub async fn policy(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let s = signed_in(&state, &req).await?;
    require_admin(&s)?;
    let history = state
        .store
        .policy_history(&s.tenant)
        .await
        .map_err(|e| api_error(&s, e.into()))?;
    let current = state
        .store
        .current_policy(&s.tenant)
        .await
        .map_err(|e| api_error(&s, e.into()))?;
    let body = views::Policy {
        history: &history,
        in_force: current.as_ref().map(|c| c.version),
        current: current.as_ref(),
        csrf: &s.csrf,
    };
    Ok(html::page(&s, "policy", "Policy", &body))
}

pub async fn policy_version(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Page {
    let s = signed_in(&state, &req).await?;
    require_admin(&s)?;
    let not_found = || {
        html::error_in_page(
            &s,
            StatusCode::NOT_FOUND,
            "not_found",
            "this tenant has no such policy version",
        )
    };
    let v: i64 = path.parse().map_err(|_| not_found())?;
    let row = state
        .store
        .policy_version(&s.tenant, v)
        .await
        .map_err(|e| api_error(&s, e.into()))?
        .ok_or_else(not_found)?;
    let prev = state
        .store
        .policy_version(&s.tenant, v - 1)
        .await
        .map_err(|e| api_error(&s, e.into()))?;
    let diff = similar::TextDiff::from_lines(
        prev.as_ref().map(|p| p.source.as_str()).unwrap_or(""),
        &row.source,
    )
    .unified_diff()
    .header(&format!("v{}", v - 1), &format!("v{v}"))
    .to_string();
    let body = views::PolicyVersion {
        row: &row,
        diff: views::diff_lines(&diff),
    };
    Ok(html::page(&s, "policy", &format!("Policy v{v}"), &body))
}

#[derive(Debug, Deserialize)]
pub struct DryRunForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    source: String,
}

pub async fn policy_dry_run(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<DryRunForm>,
) -> Page {
    let s = admin_form(&state, &req, &form.csrf).await?;
    let out = crate::admin::apply_policy(
        &state.store,
        &state.secrets,
        &format!("{}.toml", s.tenant),
        &form.source,
        Some(&s.tenant),
        true,
        &actor(&req, &s),
        None,
        now(&state),
    )
    .await;
    let outcome = match out {
        Ok(o) => views::DryRun::Valid {
            unchanged: o.unchanged,
            warnings: o.warnings,
            diff: views::diff_lines(&o.diff),
            replay: replay_last_week(&state, &req, &s, &form.source).await,
        },
        Err(e) => {
            let e = crate::routes::keys::admin_error(e);
            views::DryRun::Invalid {
                code: e.body.code.to_owned(),
                field: e.body.field.clone(),
                message: e.body.message.clone(),
            }
        }
    };
    Ok(html::page(
        &s,
        "policy",
        "Policy dry run",
        &views::DryRunPage { outcome },
    ))
}

/// The pasted policy replayed over the tenant's last 7 days of requests (a
/// replay is recorded as such; it decides nothing for real).
async fn replay_last_week(
    state: &AppState,
    req: &HttpRequest,
    s: &Session,
    source: &str,
) -> Option<views::ReplayView> {
    let now = now(state);
    let report = crate::replay::for_tenant(
        &state.replay_gate,
        &state.store,
        &format!("{}.toml", s.tenant),
        source,
        &s.tenant,
        crate::replay::Window {
            since_ms: now - 7 * 86_400_000,
            until_ms: now + 1,
        },
        &actor(req, s),
        now,
    )
    .await
    .ok()?;
    let rows = crate::policy::replay::KINDS
        .iter()
        .map(|k| {
            let users = report
                .examples
                .get(k)
                .map(|e| {
                    e.users
                        .iter()
                        .map(|u| format!("{} ({})", u.id, u.requests))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            (
                (*k).to_owned(),
                report.changes.get(k).unwrap_or_default(),
                users,
            )
        })
        .collect();
    Some(views::ReplayView {
        requests: report.requests,
        approximate: report.approximate,
        rows,
    })
}

#[derive(Debug, Deserialize)]
pub struct RollbackQuery {
    to: i64,
}

pub async fn policy_rollback_confirm(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<RollbackQuery>,
) -> Page {
    let s = signed_in(&state, &req).await?;
    require_admin(&s)?;
    Ok(html::page(
        &s,
        "policy",
        "Confirm rollback",
        &views::Rollback {
            to: q.to,
            csrf: &s.csrf,
        },
    ))
}

#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    #[serde(default)]
    csrf: String,
    to: i64,
}

pub async fn policy_rollback(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<RollbackForm>,
) -> Page {
    let s = admin_form(&state, &req, &form.csrf).await?;
    let out = crate::admin::rollback_policy(
        &state.store,
        &state.secrets,
        &s.tenant,
        form.to,
        &actor(&req, &s),
        now(&state),
    )
    .await
    .map_err(|e| api_error(&s, crate::routes::keys::admin_error(e)))?;
    if out.version.is_some() {
        state
            .reload_policy(&s.tenant)
            .await
            .map_err(|e| api_error(&s, e.into()))?;
    }
    Ok(see_other("/console/policy"))
}

// ---------------------------------------------------------------- keys and credentials (admin)

async fn keys_page(state: &AppState, s: &Session, created: Option<(String, String)>) -> Page {
    let keys = state
        .store
        .list_keys(&s.tenant)
        .await
        .map_err(|e| api_error(s, e.into()))?;
    let creds = crate::credentials::list(&state.store, &s.tenant)
        .await
        .map_err(|e| api_error(s, crate::routes::keys::admin_error(e)))?;
    let body = views::Keys {
        created,
        keys: &keys,
        own_key_id: &s.key_id,
        csrf: &s.csrf,
        creds: &creds,
    };
    Ok(html::page(s, "keys", "Keys & credentials", &body))
}

pub async fn keys(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let s = signed_in(&state, &req).await?;
    require_admin(&s)?;
    keys_page(&state, &s, None).await
}

#[derive(Debug, Deserialize)]
pub struct CreateKeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    scope_issue: Option<String>,
    scope_audit: Option<String>,
    scope_admin: Option<String>,
}

pub async fn key_create(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<CreateKeyForm>,
) -> Page {
    let s = admin_form(&state, &req, &form.csrf).await?;
    let mut names = Vec::new();
    for (on, n) in [
        (&form.scope_issue, "issue"),
        (&form.scope_audit, "audit"),
        (&form.scope_admin, "admin"),
    ] {
        if on.is_some() {
            names.push(n);
        }
    }
    if names.is_empty() {
        return Err(api_error(
            &s,
            ApiError::bad("invalid_scope", "scopes", "choose at least one scope"),
        )
        .into());
    }
    let scopes = Scopes::parse(names)
        .map_err(|m| api_error(&s, ApiError::bad("invalid_scope", "scopes", m)))?;
    let name = Some(form.name.trim().to_owned()).filter(|n| !n.is_empty());
    let new = crate::admin::create_key(
        &state.store,
        &s.tenant,
        scopes,
        name,
        &actor(&req, &s),
        now(&state),
        Some(&state.auth),
    )
    .await
    .map_err(|e| api_error(&s, crate::routes::keys::admin_error(e)))?;
    tracing::info!(target: "broker::security", created_key_id = ?new.row.key_id, by = ?s.key_id, "API key created in the console");
    keys_page(&state, &s, Some((new.row.key_id.clone(), new.key.clone()))).await
}

pub async fn key_revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Page {
    let s = admin_form(&state, &req, &form.csrf).await?;
    let key_id = path.into_inner();
    crate::admin::revoke_key(
        &state.store,
        &key_id,
        Some(&s.tenant),
        &actor(&req, &s),
        now(&state),
    )
    .await
    .map_err(|e| api_error(&s, crate::routes::keys::admin_error(e)))?;
    state.auth.forget(&key_id);
    session::remove_key(&key_id);
    tracing::info!(target: "broker::security", revoked_key_id = ?key_id, by = ?s.key_id, "API key revoked in the console");
    Ok(see_other("/console/keys"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn a_sign_in_form_never_shows_its_key_in_debug_text() {
        let f = SignInForm {
            key: "tkb_secret".into(),
            csrf: "csrf-secret".into(),
        };
        assert!(!format!("{f:?}").contains("secret"));
    }

    fn shown(c: &views::Chain) -> String {
        match c {
            views::Chain::Broken(m) => format!("broken: {m}"),
            views::Chain::NotRun(m) => format!("not run: {m}"),
            views::Chain::Verified { .. } => "verified".into(),
        }
    }

    /// D3: a database error during the signed check (after the chain itself
    /// verified) is "could not be checked", with the API's wording: not a
    /// broken chain, and not the database's text.
    #[test]
    fn a_database_error_in_the_signed_check_is_no_tamper_alarm() {
        let db = || {
            StoreError::Db(sqlx::Error::Protocol(
                "relation \"audit_prunes\" does not exist".into(),
            ))
        };
        let c = signed_view(Err(db()), 7).err().map(|c| shown(&c));
        let c = c.unwrap_or_default();
        assert!(c.starts_with("not run: the database is unavailable"), "{c}");
        assert!(
            !c.contains("audit_prunes") && !c.contains("database error"),
            "{c}"
        );
        let c = shown(&not_checked(VerifyError::Store(db())));
        assert!(c.starts_with("not run: the database is unavailable"), "{c}");
        assert!(!c.contains("audit_prunes"), "{c}");
        let c = shown(&not_checked(VerifyError::Thread));
        assert!(c.starts_with("not run: internal error"), "{c}");

        // A real fault still says so.
        let fault = crate::audit::checkpoint::SignedFault {
            size: 7,
            problem: "rewritten",
            message: "row 3 changed".into(),
        };
        let c = signed_view(Ok(Some(fault)), 7).err().map(|c| shown(&c));
        assert_eq!(
            c.as_deref(),
            Some("broken: rewritten (signed checkpoint of 7 rows): row 3 changed")
        );
        assert!(matches!(signed_view(Ok(None), 7), Ok(Some(7))));
    }
}

//! The issuance pipeline, the only place that knows the order of operations:
//! validate the request → find the tenant's policy and the credential the
//! session belongs to → decide → stamp the identity into connection data →
//! sign → record the audit row durably → answer. No audit row, no token.

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditRow, Kind, Outcome as AuditOutcome, chain};
use crate::auth::Caller;
use crate::domain::{Identity, Role};
use crate::metrics::Metrics;
use crate::policy::{self, Decision, DecisionRequest, Expiry, Outcome, SessionFacts};
use crate::state::AppState;
use crate::store::StoreError;
use crate::tokens::{self, Entropy, SessionId, TokenParams};

/// Most groups accepted for one user, and the longest id/name/group.
const MAX_GROUPS: usize = 64;
const MAX_IDENT_LEN: usize = 256;

/// Body of `POST /v1/tokens` and `POST /v1/decide`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub session_id: String,
    /// The end user, vouched for by the tenant app (API-key callers only).
    pub user: Option<UserBody>,
    pub role: Option<String>,
    pub ttl: Option<i64>,
    pub expire_time: Option<i64>,
    /// The app's own connection data, carried under `data` in the stamped JSON.
    pub data: Option<String>,
    pub initial_layout_class_list: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    pub id: String,
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One call of the pipeline: who is asking, as established by
/// authentication, for which tenant, and from where.
#[derive(Debug, Clone)]
pub struct Call {
    pub tenant: String,
    /// An application's API key, or an end user with the provider that vouched.
    pub who: Caller,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// The decision part of a response.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionView {
    pub rule: Option<String>,
    pub policy_version: i64,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clamped: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<serde_json::Value>,
}

impl DecisionView {
    fn of(d: &Decision) -> DecisionView {
        DecisionView {
            rule: d.rule.clone(),
            policy_version: d.policy_version,
            reason: d.reason.clone(),
            clamped: d
                .clamped
                .as_ref()
                .and_then(|c| serde_json::to_value(c).ok()),
            explain: d
                .explain
                .as_ref()
                .and_then(|e| serde_json::to_value(e).ok()),
        }
    }
}

/// A granted token (201), or the same minus the token fields for `/v1/decide`.
/// Its `Debug` never shows the token.
#[derive(Clone, Serialize)]
pub struct Issued {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    pub format: &'static str,
    pub session_id: String,
    pub role: Role,
    pub expire_time: i64,
    pub connection_data: String,
    pub credential: String,
    pub decision: DecisionView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_id", &self.token_id)
            .field("format", &self.format)
            .field("session_id", &self.session_id)
            .field("role", &self.role)
            .field("expire_time", &self.expire_time)
            .field("credential", &self.credential)
            .field("decision", &self.decision)
            .field("audit_id", &self.audit_id)
            .finish_non_exhaustive()
    }
}

/// What the pipeline should do past the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sign and audit (`POST /v1/tokens`).
    Issue,
    /// Decide only: no signing, no audit (`POST /v1/decide`).
    Decide { explain: bool },
}

/// What kind of "no" a refusal is; the HTTP layer picks the status from the
/// code (`routes::error::CATALOGUE`), this only says which family it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The request itself is malformed (counted as a bad request).
    Invalid,
    /// A well-formed request the tenant's policy or credentials refuse.
    Refused,
    /// The broker cannot serve it right now (the audit record, a credential).
    Unavailable,
    /// This request's own audit row cannot be stored (a gap in the checks).
    Failed,
}

/// Why the pipeline gives no token: a code of the error catalogue and a
/// message, and where known the field at fault or the deciding rule. No HTTP
/// status: the HTTP layer maps the code to one (in one place).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub class: Class,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub rule: Option<String>,
    pub policy_version: Option<i64>,
    /// The decision that refused, for policy refusals.
    pub decision: Option<serde_json::Value>,
}

impl Refusal {
    pub fn new(class: Class, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            class,
            code,
            message: message.into(),
            field: None,
            rule: None,
            policy_version: None,
            decision: None,
        }
    }

    /// A bad value of `field` (boxed: it travels through `validate`'s results).
    pub fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Box<Refusal> {
        Box::new(Refusal {
            field: Some(field.into()),
            ..Refusal::new(Class::Invalid, code, message)
        })
    }
}

/// Why `handle` gave no answer: a refusal, or the store failing under it.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Refused(Box<Refusal>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Refusal> for IssueError {
    fn from(r: Refusal) -> IssueError {
        IssueError::Refused(Box::new(r))
    }
}

impl From<Box<Refusal>> for IssueError {
    fn from(r: Box<Refusal>) -> IssueError {
        IssueError::Refused(r)
    }
}

impl IssueError {
    /// A malformed request (what the bad-request counter counts).
    fn is_invalid(&self) -> bool {
        match self {
            IssueError::Refused(r) => r.class == Class::Invalid,
            IssueError::Store(e) => matches!(e, StoreError::Invalid(_)),
        }
    }
}

fn check_ident(field: &str, v: &str) -> Result<(), Box<Refusal>> {
    if v.is_empty() || v.len() > MAX_IDENT_LEN || v.chars().any(char::is_control) {
        return Err(Refusal::invalid(
            "invalid_user",
            field,
            format!("{field} must be 1-{MAX_IDENT_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

/// A request that passed the edge checks.
struct Checked<'r> {
    who: Identity,
    role: Option<Role>,
    expiry: Option<Expiry>,
    session: SessionId,
    /// The app's own connection data, checked once here.
    app_data: Option<AppData<'r>>,
}

/// The app's connection data after `check_connection_data`: within the size
/// limit and free of raw control characters. Only that check makes one, so
/// the stamping step cannot be handed unchecked data.
#[derive(Debug, Clone, Copy)]
struct AppData<'r>(&'r str);

/// Checks the request's shape at the edge, before any arithmetic, lookup or
/// audit row: every identifier free of control characters (NUL included) and
/// bounded, the session ID in a spelling the service uses, the expiry within
/// the 30-day limit. The fields are checked in this order, so the first bad
/// one is the one reported.
fn validate<'r>(
    caller: &Call,
    req: &'r TokenRequest,
    now: i64,
) -> Result<Checked<'r>, Box<Refusal>> {
    let session = SessionId::parse(&req.session_id)
        .map_err(|e| Refusal::invalid(e.code(), "session_id", e.to_string()))?;
    let who = checked_identity(caller, req.user.as_ref())?;
    let role = match &req.role {
        None => None,
        Some(r) => Some(
            tokens::parse_role(r).map_err(|e| Refusal::invalid(e.code(), "role", e.to_string()))?,
        ),
    };
    let expiry = checked_expiry(req.ttl, req.expire_time, now)?;
    if let Some(list) = &req.initial_layout_class_list {
        check_layout_class_list(list)?;
    }
    let app_data = req.data.as_deref().map(check_connection_data).transpose()?;
    Ok(Checked {
        who,
        role,
        expiry,
        session,
        app_data,
    })
}

/// The identity the token is for: the end user's own (from the login
/// token), or the user object an app vouches for, which then must be given
/// and well formed. Never both.
fn checked_identity(caller: &Call, user: Option<&UserBody>) -> Result<Identity, Box<Refusal>> {
    match (caller.who.identity(), user) {
        (Some(_), Some(_)) => Err(Refusal::invalid(
            "user_not_allowed",
            "user",
            "the identity comes from your login token; a user object in the body is not accepted",
        )),
        (Some(id), None) => Ok(id.clone()),
        (None, None) => Err(Refusal::invalid(
            "missing_field",
            "user",
            "user.id is required",
        )),
        (None, Some(u)) => {
            check_ident("user.id", &u.id)?;
            if let Some(n) = &u.name {
                check_ident("user.name", n)?;
            }
            if u.groups.len() > MAX_GROUPS {
                return Err(Refusal::invalid(
                    "invalid_user",
                    "user.groups",
                    format!("at most {MAX_GROUPS} groups"),
                ));
            }
            for g in &u.groups {
                check_ident("user.groups", g)?;
            }
            Ok(Identity {
                user_id: u.id.clone(),
                name: u.name.clone(),
                groups: u.groups.clone(),
                // Vouched by the app (its API key), not by an identity provider.
                idp: None,
            })
        }
    }
}

/// The requested expiry: a ttl or an expire time (not both), either within
/// 30 days of `now`, and an expire time in the future.
fn checked_expiry(
    ttl: Option<i64>,
    expire_time: Option<i64>,
    now: i64,
) -> Result<Option<Expiry>, Box<Refusal>> {
    match (ttl, expire_time) {
        (Some(_), Some(_)) => Err(Refusal::invalid(
            "ttl_and_expire_time",
            "ttl",
            "give ttl or expire_time, not both",
        )),
        (Some(t), None) if !(1..=tokens::MAX_TTL_SECS).contains(&t) => Err(Refusal::invalid(
            "invalid_ttl",
            "ttl",
            format!(
                "ttl must be 1 to {} seconds (30 days)",
                tokens::MAX_TTL_SECS
            ),
        )),
        (Some(t), None) => Ok(Some(Expiry::Ttl(t))),
        (None, Some(e)) if e <= now => Err(Refusal::invalid(
            "expire_time_in_past",
            "expire_time",
            format!("expire_time {e} is not in the future"),
        )),
        (None, Some(e)) if e - now > tokens::MAX_TTL_SECS => Err(Refusal::invalid(
            "expire_time_too_far",
            "expire_time",
            format!("expire_time {e} is more than 30 days from now"),
        )),
        (None, Some(e)) => Ok(Some(Expiry::At(e))),
        (None, None) => Ok(None),
    }
}

/// `initial_layout_class_list`: no control characters, then the token
/// format's own limits.
fn check_layout_class_list(list: &[String]) -> Result<(), Box<Refusal>> {
    if list.iter().any(|c| c.chars().any(char::is_control)) {
        return Err(Refusal::invalid(
            "invalid_layout_class_list",
            "initial_layout_class_list",
            "a class name contains a control character",
        ));
    }
    tokens::validate_layout_class_list(list)
        .map_err(|e| Refusal::invalid(e.code(), "initial_layout_class_list", e.to_string()))?;
    Ok(())
}

/// The app's connection data: bounded, and free of raw control characters.
fn check_connection_data(d: &str) -> Result<AppData<'_>, Box<Refusal>> {
    if d.len() > tokens::MAX_CONNECTION_DATA_BYTES {
        return Err(Refusal::invalid(
            "connection_data_too_long",
            "data",
            format!(
                "data is {} bytes; connection data is limited to {} bytes",
                d.len(),
                tokens::MAX_CONNECTION_DATA_BYTES
            ),
        ));
    }
    // Tab, newline and carriage return are ordinary text (and whitespace
    // between JSON tokens); any other control character, NUL above all,
    // is refused: JSON text carries those escaped, never raw.
    if d.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Refusal::invalid(
            "invalid_data",
            "data",
            "data contains a control character (only tab, newline and carriage return are allowed; escape others as \\uXXXX in JSON text)",
        ));
    }
    Ok(AppData(d))
}

/// The connection data the broker signs: compact JSON with the authenticated
/// identity and the app's own data under its own key, so app data can never
/// pose as identity. Key order is fixed: tenant, sub, name, idp, data.
pub fn stamp(tenant: &str, who: &Identity, idp: Option<&str>, data: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Stamp<'a> {
        tenant: &'a str,
        sub: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        idp: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a str>,
    }
    serde_json::to_string(&Stamp {
        tenant,
        sub: &who.user_id,
        name: who.name.as_deref(),
        idp,
        data,
    })
    .unwrap_or_default()
}

/// The audit row of a token request. Besides what was asked, it records the
/// session's registered owner and labels as the decision saw them (in
/// `detail.session`, inside the hash chain), so `policy replay` can decide
/// the request again exactly as it was decided.
fn base_row(
    caller: &Call,
    c: &Checked<'_>,
    facts: &SessionFacts,
    now_ms: i64,
    k: Kind,
    outcome: AuditOutcome,
) -> AuditRow {
    let mut row = AuditRow::new(
        &caller.tenant,
        k,
        outcome,
        match caller.who {
            Caller::EndUser { .. } => Actor::EndUser,
            Caller::AppKey { .. } => Actor::ApiKey,
        },
        now_ms,
    );
    let who = &c.who;
    row.key_id = caller.who.key_id().map(str::to_owned);
    row.idp = caller.who.idp().map(str::to_owned);
    row.user_id = Some(who.user_id.clone());
    row.user_name = who.name.clone();
    row.user_groups = Some(serde_json::to_string(&who.groups).unwrap_or_default());
    // The canonical form, so one audit search finds every spelling; the
    // spelling the token carries is kept in `detail` when it differs.
    row.session_id = Some(c.session.canonical().to_owned());
    let mut detail = serde_json::Map::new();
    if c.session.for_token() != c.session.canonical() {
        detail.insert("token_session_id".into(), c.session.for_token().into());
    }
    detail.insert("session".into(), facts.to_json());
    row.detail = Some(serde_json::Value::Object(detail).to_string());
    row.requested_role = c.role.map(|r| r.as_str().to_owned());
    // `validate` bounded both to 30 days: no overflow here.
    row.requested_expire_time = match c.expiry {
        Some(Expiry::Ttl(t)) => (now_ms / 1000).checked_add(t),
        Some(Expiry::At(e)) => Some(e),
        None => None,
    };
    row.client_addr = caller.client_addr.clone();
    row.user_agent = caller.user_agent.clone();
    row.request_id = caller.request_id.clone();
    row
}

/// Records a refusal, then returns it (or `audit_unavailable` when even the
/// refusal cannot be recorded).
async fn refuse(state: &AppState, mode: Mode, mut row: AuditRow, err: Refusal) -> Refusal {
    if mode != Mode::Issue {
        return err;
    }
    row.code = Some(err.code.to_owned());
    row.rule = err.rule.clone();
    row.policy_version = err.policy_version;
    let caller_tenant = row.tenant.clone();
    match state.audit.append(row).await {
        Ok(()) => {
            let known = state.tenant(&caller_tenant).is_some();
            state
                .metrics
                .token_refused(state.metrics.tenant_label(&caller_tenant, known), err.code);
            err
        }
        Err(e) => audit_unavailable(state, e),
    }
}

fn audit_unavailable(state: &AppState, e: crate::audit::AuditUnavailable) -> Refusal {
    if matches!(e, crate::audit::AuditUnavailable::Refused) {
        // This request's own record cannot be stored (the edge checks should
        // have caught it); no token, and nobody else is affected.
        tracing::error!(target: "broker::security", "audit record refused: refusing to issue");
        return Refusal::new(
            Class::Failed,
            "audit_record_refused",
            "the audit record of this request cannot be stored, so no token is issued",
        );
    }
    Metrics::inc(&state.metrics.audit_unavailable);
    tracing::error!(target: "broker::security", error = ?e.to_string(), "audit unavailable: refusing to issue");
    Refusal::new(
        Class::Unavailable,
        "audit_unavailable",
        "the audit record cannot be written right now, so no token is issued; try again shortly",
    )
}

/// Runs the pipeline for one request; counts malformed requests.
pub async fn handle(
    state: &AppState,
    caller: &Call,
    req: &TokenRequest,
    mode: Mode,
    now_ms: i64,
) -> Result<Issued, IssueError> {
    let r = run(state, caller, req, mode, now_ms).await;
    if let Err(e) = &r
        && e.is_invalid()
    {
        Metrics::inc(&state.metrics.bad_requests);
    }
    r
}

/// The pipeline's steps, in the order the module comment gives them.
async fn run(
    state: &AppState,
    caller: &Call,
    req: &TokenRequest,
    mode: Mode,
    now_ms: i64,
) -> Result<Issued, IssueError> {
    let now = now_ms / 1000;
    let checked = validate(caller, req, now)?;
    let (who, role, expiry) = (&checked.who, checked.role, checked.expiry);
    // Input checks all come before any lookup or decision: a request the
    // policy would grant must not answer otherwise than one it would refuse,
    // without a row (a probe of grants that leaves no trace).
    let connection_data = stamped_within_limit(caller, who, checked.app_data)?;
    let sid = &checked.session;
    let facts = state.session_facts(&caller.tenant, sid.canonical()).await?;
    let row = |k, o| base_row(caller, &checked, &facts, now_ms, k, o);
    let refused_row = || row(Kind::TokenRefused, AuditOutcome::Refused);

    let Some(rt) = state.tenant(&caller.tenant) else {
        return Err(refuse(state, mode, refused_row(), no_policy()).await.into());
    };
    let Some(cred) = rt.credential_for(sid.owner()) else {
        let e = session_not_owned(rt.policy.version);
        return Err(refuse(state, mode, refused_row(), e).await.into());
    };
    // Refusals from here on name the credential in their audit row.
    let cred_row = || {
        let mut r = refused_row();
        r.credential = Some(cred.name.clone());
        r
    };
    let decision = policy::decide(
        &rt.policy,
        who,
        sid.canonical(),
        &facts,
        &DecisionRequest { role, expiry },
        now,
        matches!(mode, Mode::Decide { explain: true }),
    )
    .map_err(|e| Refusal::invalid(e.code(), e.field(), e.to_string()))?;
    let (granted_role, expire_time) = match granted(&decision) {
        Ok(g) => g,
        Err(e) => return Err(refuse(state, mode, cred_row(), *e).await.into()),
    };
    let Ok(signer) = &cred.signer else {
        let e = credential_unavailable(&cred.name);
        return Err(refuse(state, mode, cred_row(), e).await.into());
    };
    let mut out = Issued {
        token: None,
        token_id: None,
        format: signer.format().as_str(),
        session_id: sid.for_token().to_owned(),
        role: granted_role,
        expire_time,
        connection_data,
        credential: cred.name.clone(),
        decision: DecisionView::of(&decision),
        audit_id: None,
    };
    if mode != Mode::Issue {
        return Ok(out);
    }
    let signed = sign(signer, req, &out, now)?;
    let r = issued_row(
        row(Kind::TokenIssued, AuditOutcome::Issued),
        &out,
        &decision,
        &signed,
    );
    let audit_id = r.audit_id.clone();
    state
        .audit
        .append(r)
        .await
        .map_err(|e| audit_unavailable(state, e))?;
    count_issued(state, caller, who, req, &out, &decision);
    out.token = Some(signed.token);
    out.token_id = Some(signed.token_id);
    out.audit_id = Some(audit_id);
    Ok(out)
}

fn no_policy() -> Refusal {
    Refusal::new(
        Class::Refused,
        "no_policy",
        "this tenant has no policy applied, so nothing is granted",
    )
}

fn session_not_owned(policy_version: i64) -> Refusal {
    Refusal {
        field: Some("session_id".into()),
        policy_version: Some(policy_version),
        ..Refusal::new(
            Class::Refused,
            "session_not_owned",
            "the session belongs to none of this tenant's credentials",
        )
    }
}

fn credential_unavailable(name: &str) -> Refusal {
    Refusal::new(
        Class::Unavailable,
        "credential_unavailable",
        format!(
            "credential {name} cannot be used on this broker (its secret reference does not resolve)"
        ),
    )
}

/// The granted role and expire time, or the policy's refusal (carrying the
/// deciding rule and the decision).
fn granted(decision: &Decision) -> Result<(Role, i64), Box<Refusal>> {
    match &decision.outcome {
        Outcome::Granted {
            role, expire_time, ..
        } => Ok((*role, *expire_time)),
        Outcome::Refused(code) => Err(Box::new(Refusal {
            rule: decision.rule.clone(),
            policy_version: Some(decision.policy_version),
            decision: serde_json::to_value(DecisionView::of(decision)).ok(),
            ..Refusal::new(Class::Refused, code.code(), decision.reason.clone())
        })),
    }
}

/// Signs the granted token (`out`'s session, role, expiry and connection data).
fn sign(
    signer: &tokens::Signer,
    req: &TokenRequest,
    out: &Issued,
    now: i64,
) -> Result<tokens::SignedToken, Box<Refusal>> {
    let layout = req.initial_layout_class_list.as_deref().unwrap_or(&[]);
    signer
        .sign(
            &TokenParams {
                session_id: &out.session_id,
                role: out.role,
                expire_time: out.expire_time,
                connection_data: Some(&out.connection_data),
                initial_layout_class_list: layout,
            },
            now,
            &Entropy::random(),
        )
        .map_err(|e| Refusal::invalid(e.code(), e.field(), e.to_string()))
}

/// The stamped connection data, refused when identity plus the app's data
/// exceed the limit the token formats allow.
fn stamped_within_limit(
    caller: &Call,
    who: &Identity,
    app_data: Option<AppData<'_>>,
) -> Result<String, Box<Refusal>> {
    let data = app_data.map(|d| d.0);
    let connection_data = stamp(&caller.tenant, who, caller.who.idp(), data);
    if connection_data.len() > tokens::MAX_CONNECTION_DATA_BYTES {
        return Err(Refusal::invalid(
            "connection_data_too_long",
            "data",
            format!(
                "the stamped connection data would be {} bytes (identity plus data); the limit is {} bytes",
                connection_data.len(),
                tokens::MAX_CONNECTION_DATA_BYTES
            ),
        ));
    }
    Ok(connection_data)
}

/// The audit row of an issued token: what was granted, by which rule, and
/// the token's id and fingerprint.
fn issued_row(
    mut r: AuditRow,
    out: &Issued,
    decision: &Decision,
    signed: &tokens::SignedToken,
) -> AuditRow {
    r.credential = Some(out.credential.clone());
    r.granted_role = Some(out.role.as_str().to_owned());
    r.granted_expire_time = Some(out.expire_time);
    r.rule = decision.rule.clone();
    r.policy_version = Some(decision.policy_version);
    r.token_id = Some(signed.token_id.clone());
    r.token_sha256 = Some(chain::fingerprint(&signed.token));
    r
}

/// Counts an issued token; a moderator token is also logged for security.
fn count_issued(
    state: &AppState,
    caller: &Call,
    who: &Identity,
    req: &TokenRequest,
    out: &Issued,
    decision: &Decision,
) {
    state.metrics.token_issued(
        state.metrics.tenant_label(&caller.tenant, true),
        out.role.as_str(),
        out.format,
    );
    if out.role == Role::Moderator {
        Metrics::inc(&state.metrics.moderator_tokens);
        tracing::info!(target: "broker::security", tenant = ?caller.tenant, user = ?who.user_id, session_id = ?req.session_id, rule = ?decision.rule, "moderator token issued");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_is_never_in_its_debug_text() {
        let i = Issued {
            token: Some("T1==secret-token".into()),
            token_id: Some("t".into()),
            format: "t1",
            session_id: "s".into(),
            role: Role::Publisher,
            expire_time: 0,
            connection_data: String::new(),
            credential: "main".into(),
            decision: DecisionView {
                rule: None,
                policy_version: 1,
                reason: String::new(),
                clamped: None,
                explain: None,
            },
            audit_id: None,
        };
        assert!(!format!("{i:?}").contains("secret-token"));
    }

    #[test]
    fn stamped_data_keeps_app_data_apart_from_identity() {
        let who = Identity {
            user_id: "alice".into(),
            name: Some("Alice".into()),
            groups: vec![],
            idp: None,
        };
        let s = stamp("acme", &who, None, Some(r#"{"sub":"mallory"}"#));
        assert_eq!(
            s,
            r#"{"tenant":"acme","sub":"alice","name":"Alice","data":"{\"sub\":\"mallory\"}"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["sub"], "alice");
    }
}

//! The audit query, shared by the HTTP API, the CLI (local and `--server`)
//! and the console: its parameters (query string or flags), their validation
//! into a store filter, the opaque page cursor, and CSV export. Below the HTTP
//! layer and the CLI; neither imports the other for it.

use serde::Deserialize;

use crate::audit::AuditRow;
use crate::store::{AuditCursor, AuditFilter, Store, StoreError};

/// A query parameter that does not hold: a stable error code (`invalid_filter`,
/// `invalid_time`, `invalid_cursor`), the parameter at fault, and a message.
/// The HTTP layer answers it as 400 with the same code and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub code: &'static str,
    pub field: &'static str,
    pub message: String,
}

impl QueryError {
    fn new(code: &'static str, field: &'static str, message: impl Into<String>) -> QueryError {
        QueryError {
            code,
            field,
            message: message.into(),
        }
    }
}

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// Groups a summary returns unless asked for fewer or more (`limit`), and the
/// most it returns: `by=user` or `by=session` can have a group per caller.
pub const DEFAULT_SUMMARY_GROUPS: i64 = 1000;
pub const MAX_SUMMARY_GROUPS: i64 = 10_000;

/// A summary's `limit` (default `DEFAULT_SUMMARY_GROUPS`), checked.
pub fn summary_limit(limit: Option<i64>) -> Result<i64, QueryError> {
    let limit = limit.unwrap_or(DEFAULT_SUMMARY_GROUPS);
    if !(1..=MAX_SUMMARY_GROUPS).contains(&limit) {
        return Err(QueryError::new(
            "invalid_filter",
            "limit",
            format!("limit is 1 to {MAX_SUMMARY_GROUPS} groups"),
        ));
    }
    Ok(limit)
}

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

/// A summary's first `limit` groups (most issued first) and whether more
/// matched: one group more is read to tell.
pub async fn summary_groups(
    store: &Store,
    tenant: &str,
    by: &str,
    (since_ms, until_ms): (Option<i64>, Option<i64>),
    limit: i64,
) -> Result<(Vec<crate::store::SummaryRow>, bool), StoreError> {
    let mut groups = store
        .audit_summary(tenant, by, since_ms, until_ms, limit + 1)
        .await?;
    let truncated = groups.len() as i64 > limit;
    groups.truncate(limit as usize);
    Ok((groups, truncated))
}

/// RFC 3339 or unix seconds → unix milliseconds.
pub fn parse_time(field: &'static str, v: &str) -> Result<i64, QueryError> {
    if let Ok(secs) = v.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            QueryError::new(
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

    /// Text no row can hold is refused at the edge, so it never reaches a
    /// database (PostgreSQL refuses a NUL in text outright).
    fn check_text(&self) -> Result<(), QueryError> {
        for (field, v) in [
            ("kind", &self.kind),
            ("code", &self.code),
            ("user", &self.user),
            ("rule", &self.rule),
            ("key_id", &self.key_id),
            ("token_id", &self.token_id),
            ("token", &self.token),
        ] {
            if v.as_deref()
                .is_some_and(|v| v.len() > MAX_FILTER_BYTES || v.chars().any(char::is_control))
            {
                return Err(QueryError::new(
                    "invalid_filter",
                    field,
                    format!("{field} has control characters or is over {MAX_FILTER_BYTES} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// Validates and turns the parameters into a store filter for `tenant`.
    pub fn to_filter(&self, tenant: &str) -> Result<AuditFilter, QueryError> {
        self.check_text()?;
        if let Some(o) = &self.outcome
            && o != "issued"
            && o != "refused"
            && o != "ok"
        {
            return Err(QueryError::new(
                "invalid_filter",
                "outcome",
                "outcome is issued, refused or ok",
            ));
        }
        if let Some(r) = &self.role {
            crate::tokens::parse_role(r)
                .map_err(|e| QueryError::new("invalid_filter", "role", e.to_string()))?;
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(QueryError::new(
                "invalid_filter",
                "limit",
                format!("limit is 1 to {MAX_LIMIT}"),
            ));
        }
        let before = match &self.cursor {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                QueryError::new(
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
                            QueryError::new(
                                "invalid_filter",
                                "token",
                                "token is not a token this broker makes",
                            )
                        })?,
                ),
                None => self.token_id.clone(),
            },
            token_sha256: self.token.as_deref().map(crate::audit::chain::fingerprint),
            before,
            limit,
            seq: None,
        })
    }
}

/// The longest text filter value (a presented token is the longest value
/// a row can be searched by).
const MAX_FILTER_BYTES: usize = 8192;

/// The cursor is opaque to clients: `c2.<at_ms>.<seq>`, both base 36 (the
/// page order is newest first by time, then by chain position). Cursors of the
/// `c1.` form (chain position only) came from brokers before that order and
/// are refused as `invalid_cursor`: start the listing again.
pub fn encode_cursor(c: AuditCursor) -> String {
    format!("c2.{}.{}", base36(c.at_ms), base36(c.seq))
}

fn base36(n: i64) -> String {
    let mut u = n.unsigned_abs();
    let mut s = Vec::new();
    loop {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(u % 36) as usize]);
        u /= 36;
        if u == 0 {
            break;
        }
    }
    if n < 0 {
        s.push(b'-');
    }
    s.reverse();
    String::from_utf8_lossy(&s).into_owned()
}

/// The `session_id` filter: any accepted spelling of a session finds the rows
/// of every spelling (they are recorded under the canonical form). The text as
/// given is matched too, for rows recorded before session IDs were canonical;
/// text that is no session ID is matched as given, unless it could never have
/// been recorded (control characters, over-long).
fn session_filter(v: Option<&str>) -> Result<(Option<String>, Option<String>), QueryError> {
    let Some(v) = v else {
        return Ok((None, None));
    };
    match crate::tokens::SessionId::parse(v) {
        Ok(s) if s.canonical() == v => Ok((Some(v.to_owned()), None)),
        Ok(s) => Ok((Some(s.canonical().to_owned()), Some(v.to_owned()))),
        Err(_)
            if v.len() > crate::tokens::MAX_SESSION_ID_LEN || v.chars().any(char::is_control) =>
        {
            Err(QueryError::new(
                "invalid_filter",
                "session_id",
                "session_id is a session ID (no control characters, at most 512 bytes)",
            ))
        }
        Err(_) => Ok((Some(v.to_owned()), None)),
    }
}

pub fn decode_cursor(c: &str) -> Option<AuditCursor> {
    let (at, seq) = c.strip_prefix("c2.")?.split_once('.')?;
    let digits = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    let at = at
        .strip_prefix('-')
        .map_or(digits(at), digits)
        .then(|| i64::from_str_radix(at, 36).ok())??;
    let seq = digits(seq).then(|| i64::from_str_radix(seq, 36).ok())??;
    (seq > 0).then_some(AuditCursor { at_ms: at, seq })
}

/// The CSV header row: every column, in table order.
pub fn csv_header() -> String {
    csv_text(
        crate::audit::schema::COLUMN_NAMES
            .iter()
            .map(|c| (*c).to_owned()),
    )
}

/// One CSV field's text before quoting: defused when a spreadsheet would read
/// it as a formula (a leading `=`, `+`, `-`, `@`, tab or carriage return gets a
/// leading `'`). Quoting (a comma, quote or line break) is the `csv` writer's.
fn defuse(v: String) -> String {
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v
    }
}

/// One CSV record (RFC 4180, CRLF-terminated).
fn csv_text(fields: impl IntoIterator<Item = String>) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(512));
    // Writing strings into a Vec cannot fail.
    let _ = w.write_record(fields.into_iter().map(defuse));
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

/// A row as one CSV record, in `csv_header` order.
pub fn csv_line(r: &AuditRow) -> String {
    csv_text(r.as_row_ref().csv_record())
}

/// The audit id of the `token_issued` row of a token (by token or token id).
pub async fn issued_row(
    store: &Store,
    tenant: &str,
    token: Option<&str>,
    token_id: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let f = AuditFilter {
        tenant: tenant.to_owned(),
        kind: Some(crate::audit::kind::TOKEN_ISSUED.to_owned()),
        token_sha256: token.map(crate::audit::chain::fingerprint),
        token_id: token_id.map(str::to_owned),
        limit: 1,
        ..AuditFilter::default()
    };
    Ok(store.query_audit(&f).await?.pop().map(|r| r.audit_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One field as its own CSV text (without the record terminator).
    fn csv_text_of(v: &str) -> String {
        csv_text([v.to_owned(), String::new()])
            .trim_end_matches(",\r\n")
            .to_owned()
    }

    #[test]
    fn hostile_csv_values_are_quoted_and_defused() {
        assert_eq!(csv_text_of("plain"), "plain");
        assert_eq!(csv_text_of("a,b"), "\"a,b\"");
        assert_eq!(csv_text_of("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_text_of("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(
            csv_text_of("=HYPERLINK(\"x\")"),
            "\"'=HYPERLINK(\"\"x\"\")\""
        );
        assert_eq!(csv_text_of("+1"), "'+1");
        assert_eq!(csv_text_of("@SUM(A1)"), "'@SUM(A1)");
        let mut r = AuditRow::new(
            "t",
            crate::audit::Kind::TokenIssued,
            crate::audit::Outcome::Issued,
            crate::audit::Actor::ApiKey,
            1,
        );
        r.user_id = Some("=1+1,\"x\"\n".into());
        let line = csv_line(&r);
        assert_eq!(
            line.matches(',').count() - 1,
            crate::audit::schema::COLUMN_NAMES.len() - 1,
            "one extra comma is inside the quoted user id: {line}"
        );
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        for at_ms in [0, 1, -1, 1_764_000_000_123, i64::MAX, i64::MIN] {
            for seq in [1, 35, 36, 1_000_000, i64::MAX] {
                let c = AuditCursor { at_ms, seq };
                assert_eq!(decode_cursor(&encode_cursor(c)), Some(c));
            }
        }
        for bad in [
            "", "c1.", "c2.1", "c1.-5", "c1.0", "12", "c1.zz", "c2..1", "c2.1.", "c2.1.0",
            "c2.1.-5", "c2.+1.1", "c2.1.+1", "c2.--1.1", "c2.1.1.1", "c2.ZZ.1",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}

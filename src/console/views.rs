//! The console's page templates (askama, in `templates/console/`): checked
//! at compile time, embedded in the binary, and HTML-escaped automatically.
//! Every value shown on a page is interpolated by a template; the only
//! pre-rendered HTML is a page body handed to the layout, itself the output
//! of one of these templates.

use askama::Template;

use super::Session;
use crate::audit::AuditRow;
use crate::credentials::CredentialView;
use crate::store::{KeyRow, PolicyVersionRow};

/// A time as the pages show it: RFC 3339 UTC for `datetime` and the hover
/// title, and a readable UTC text our script rewrites into the viewer's zone.
#[derive(Debug)]
pub struct Time {
    pub iso: String,
    pub text: String,
}

impl Time {
    pub fn of(ms: impl Millis) -> Time {
        let iso = super::html::rfc3339(ms.millis());
        let text = iso.replace('T', " ").replace('Z', " UTC");
        Time { iso, text }
    }
}

/// Unix milliseconds, however deeply a template's macro argument is borrowed.
pub trait Millis {
    fn millis(&self) -> i64;
}

impl Millis for i64 {
    fn millis(&self) -> i64 {
        *self
    }
}

impl<T: Millis + ?Sized> Millis for &T {
    fn millis(&self) -> i64 {
        (**self).millis()
    }
}

#[derive(Debug)]
pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// Every page: the head, then (signed in) the header with the session's
/// tenant, key and sign-out form and the navigation for its scopes.
#[derive(Template, Debug)]
#[template(path = "console/layout.html")]
pub struct Layout<'a> {
    pub title: &'a str,
    pub session: Option<&'a Session>,
    pub scopes: String,
    pub nav: Vec<NavItem>,
    pub body: &'a str,
}

#[derive(Template, Debug)]
#[template(path = "console/error.html")]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
    pub back: bool,
}

#[derive(Template, Debug)]
#[template(path = "console/sign_in.html")]
pub struct SignIn<'a> {
    pub error: Option<(&'a str, &'a str)>,
    pub csrf: &'a str,
}

#[derive(Debug)]
pub struct Bar {
    pub day: String,
    pub label: String,
    pub issued: i64,
    pub refused: i64,
    pub x: i64,
    pub issued_h: i64,
    pub refused_h: i64,
}

#[derive(Debug)]
pub struct Chart {
    pub width: i64,
    pub height: i64,
    pub bar_w: i64,
    pub max: i64,
    pub bars: Vec<Bar>,
}

impl Chart {
    /// Issued/refused per day as an inline SVG bar chart (no script, no
    /// styles); `None` when there is nothing to draw.
    pub fn of(days: &[(String, i64, i64)]) -> Option<Chart> {
        if days.iter().all(|d| d.1 == 0 && d.2 == 0) {
            return None;
        }
        let max = days.iter().map(|d| d.1.max(d.2)).max().unwrap_or(1).max(1);
        let bars = days
            .iter()
            .enumerate()
            .map(|(i, (day, issued, refused))| Bar {
                label: day.get(5..).unwrap_or(day).to_owned(),
                day: day.clone(),
                issued: *issued,
                refused: *refused,
                x: 20 + 40 * i as i64,
                issued_h: issued * 120 / max,
                refused_h: refused * 120 / max,
            })
            .collect();
        Some(Chart {
            width: 40 * days.len() as i64 + 20,
            height: 160,
            bar_w: 14,
            max,
            bars,
        })
    }
}

#[derive(Debug)]
pub enum Chain {
    Verified {
        rows: u64,
        head_seq: i64,
        hash: String,
        /// The size of the latest signed checkpoint the history was also checked against.
        signed: Option<u64>,
    },
    /// The history does not verify: what no longer matches.
    Broken(String),
    /// The check could not run now (the database is unavailable): the
    /// generic reason, never the database's own text.
    NotRun(String),
}

#[derive(Template, Debug)]
#[template(path = "console/overview.html")]
pub struct Overview {
    pub issued: i64,
    pub refused: i64,
    pub moderators: i64,
    pub chart: Option<Chart>,
    pub codes: Vec<(String, i64)>,
    pub chain: Chain,
}

/// One text filter of a filter form, with its current value.
#[derive(Debug)]
pub struct FilterInput {
    pub name: &'static str,
    pub label: &'static str,
    pub value: String,
}

#[derive(Template, Debug)]
#[template(path = "console/moderators.html")]
pub struct Moderators<'a> {
    pub inputs: Vec<FilterInput>,
    /// The filters as a raw query string (the template escapes it).
    pub qs: &'a str,
    pub rows: &'a [AuditRow],
    pub next: Option<String>,
}

#[derive(Template, Debug)]
#[template(path = "console/audit.html")]
pub struct Audit<'a> {
    pub inputs: Vec<FilterInput>,
    pub rows: &'a [AuditRow],
    pub next: Option<String>,
}

#[derive(Debug)]
pub struct EventField {
    pub key: String,
    pub value: String,
    pub is_time: bool,
}

#[derive(Debug)]
pub enum Decided {
    Issued(String),
    Refused,
    Other,
}

#[derive(Template, Debug)]
#[template(path = "console/event.html")]
pub struct Event<'a> {
    pub seq: i64,
    pub row: &'a AuditRow,
    pub fields: Vec<EventField>,
    pub decided: Decided,
    pub detail: Option<String>,
}

#[derive(Debug)]
pub struct DiffLine {
    pub class: &'static str,
    pub text: String,
}

/// A unified diff's lines, classed for colouring.
pub fn diff_lines(diff: &str) -> Vec<DiffLine> {
    diff.lines()
        .map(|l| DiffLine {
            class: match l.as_bytes().first() {
                Some(b'+') => "add",
                Some(b'-') => "del",
                Some(b'@') => "hunk",
                _ => "ctx",
            },
            text: l.to_owned(),
        })
        .collect()
}

#[derive(Template, Debug)]
#[template(path = "console/policy.html")]
pub struct Policy<'a> {
    pub history: &'a [PolicyVersionRow],
    pub in_force: Option<i64>,
    pub current: Option<&'a PolicyVersionRow>,
    pub csrf: &'a str,
}

#[derive(Template, Debug)]
#[template(path = "console/policy_version.html")]
pub struct PolicyVersion<'a> {
    pub row: &'a PolicyVersionRow,
    pub diff: Vec<DiffLine>,
}

#[derive(Debug)]
pub enum DryRun {
    Valid {
        unchanged: bool,
        warnings: Vec<String>,
        diff: Vec<DiffLine>,
        /// What the policy would have decided on the last 7 days' requests.
        replay: Option<ReplayView>,
    },
    Invalid {
        code: String,
        field: Option<String>,
        message: String,
    },
}

#[derive(Template, Debug)]
#[template(path = "console/dry_run.html")]
pub struct DryRunPage {
    pub outcome: DryRun,
}

#[derive(Template, Debug)]
#[template(path = "console/rollback.html")]
pub struct Rollback<'a> {
    pub to: i64,
    pub csrf: &'a str,
}

#[derive(Template, Debug)]
#[template(path = "console/keys.html")]
pub struct Keys<'a> {
    pub created: Option<(String, String)>,
    pub keys: &'a [KeyRow],
    pub own_key_id: &'a str,
    pub csrf: &'a str,
    pub creds: &'a [CredentialView],
}

/// A replay's counts and its most affected users, for the dry-run page.
#[derive(Debug)]
pub struct ReplayView {
    pub requests: u64,
    pub approximate: u64,
    /// (change kind, requests, most affected users)
    pub rows: Vec<(String, u64, String)>,
}

//! `token-broker policy test`: a file of cases, each an identity, a session,
//! a request and the expected decision, run against a policy.
//!
//! ```toml
//! policy = "acme.toml"            # the policy file, relative to this file
//! now = 1764000000                # optional default clock for every case
//!
//! [[cases]]
//! name = "a teacher moderates a class"
//! user = { id = "tina", groups = ["teachers"] }                   # vouched by the app
//! # user = { id = "tina", idp = "corp" }                           # an end user of provider corp
//! session = { owner = "olga", labels = { kind = "class-math" } }   # omit: unregistered
//! # owner = "idp:corp:tina" is provider corp's tina (policies/README.md)
//! request = { role = "moderator", ttl = "8h" }                    # or expire_time = <unix s>
//! expect = { outcome = "granted", role = "moderator", ttl = "4h", rule = "teachers" }
//! ```
//!
//! `expect` keys are all optional but `outcome`; `code` names a refusal
//! (`policy_denied`, `no_matching_rule`, `role_not_allowed`, or a 400 code
//! such as `expire_time_in_past`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::decide::{
    CompiledPolicy, Decision, DecisionRequest, Expiry, Outcome, SessionFacts, decide,
};
use super::duration::{self, RawDuration, human};
use super::file::{PolicyError, toml_error};
use crate::domain::{Identity, Role};

const DEFAULT_NOW: i64 = 1_764_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    policy: Option<String>,
    tenant: Option<String>,
    now: Option<i64>,
    #[serde(default)]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    now: Option<i64>,
    user: CaseUser,
    #[serde(default)]
    session: Option<CaseSession>,
    #[serde(default)]
    request: CaseRequest,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseUser {
    id: String,
    /// The identity provider that vouched (omit: the app did).
    idp: Option<String>,
    name: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSession {
    id: Option<String>,
    owner: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    role: Option<Role>,
    ttl: Option<RawDuration>,
    expire_time: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    outcome: String,
    code: Option<String>,
    role: Option<Role>,
    ttl: Option<RawDuration>,
    rule: Option<String>,
    clamped: Option<bool>,
}

/// One failed case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseFailure {
    pub name: String,
    pub problems: Vec<String>,
}

/// The result of a case file.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub policy_tenant: String,
    pub policy_version: i64,
    pub passed: usize,
    pub failures: Vec<CaseFailure>,
}

impl CaseReport {
    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    pub fn total(&self) -> usize {
        self.passed + self.failures.len()
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.failures {
            writeln!(f, "FAIL {}", c.name)?;
            for p in &c.problems {
                writeln!(f, "     {p}")?;
            }
        }
        write!(f, "{} passed, {} failed", self.passed, self.failed())
    }
}

fn parse_file(name: &str, text: &str) -> Result<CaseFile, Vec<PolicyError>> {
    toml::from_str(text).map_err(|e| vec![toml_error(name, text, &e)])
}

/// The policy file a case file names, resolved relative to the case file.
pub fn cases_policy_path(cases_path: &Path, text: &str) -> Result<PathBuf, Vec<PolicyError>> {
    let name = cases_path.display().to_string();
    let cf = parse_file(&name, text)?;
    let p = cf.policy.ok_or_else(|| {
        vec![PolicyError {
            file: name.clone(),
            line: 1,
            column: 1,
            field: "policy".into(),
            message: "name the policy file to test: policy = \"acme.toml\"".into(),
        }]
    })?;
    Ok(cases_path.parent().unwrap_or(Path::new(".")).join(p))
}

/// The tenant a case file is for (its `tenant` key, else its policy file's stem).
pub fn cases_tenant(name: &str, text: &str) -> Result<String, Vec<PolicyError>> {
    let cf = parse_file(name, text)?;
    cf.tenant
        .or_else(|| {
            cf.policy
                .as_deref()
                .and_then(|p| Path::new(p).file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .ok_or_else(|| {
            vec![PolicyError {
                file: name.into(),
                line: 1,
                column: 1,
                field: "tenant".into(),
                message: "name the tenant: tenant = \"acme\"".into(),
            }]
        })
}

/// Runs every case against `policy`.
pub fn run_cases(
    policy: &CompiledPolicy,
    name: &str,
    text: &str,
) -> Result<CaseReport, Vec<PolicyError>> {
    let cf = parse_file(name, text)?;
    let mut report = CaseReport {
        policy_tenant: policy.tenant.clone(),
        policy_version: policy.version,
        passed: 0,
        failures: Vec::new(),
    };
    for c in &cf.cases {
        let now = c.now.or(cf.now).unwrap_or(DEFAULT_NOW);
        let problems = run_case(policy, c, now);
        if problems.is_empty() {
            report.passed += 1;
        } else {
            report.failures.push(CaseFailure {
                name: c.name.clone(),
                problems,
            });
        }
    }
    Ok(report)
}

/// What is wrong with one case's outcome (nothing when it passes).
fn run_case(policy: &CompiledPolicy, c: &Case, now: i64) -> Vec<String> {
    let who = Identity {
        user_id: c.user.id.clone(),
        name: c.user.name.clone(),
        groups: c.user.groups.clone(),
        idp: c.user.idp.clone(),
    };
    let (sid, facts) = case_session(c.session.as_ref());
    let mut problems = Vec::new();
    if let Some(p) = &c.user.idp
        && !policy.doc.identity_providers.iter().any(|s| s.name == *p)
    {
        problems.push(format!(
            "user.idp: the policy declares no identity provider named {p:?}"
        ));
    }
    let ttl = match c.request.ttl.as_ref().map(duration::parse).transpose() {
        Ok(t) => t,
        Err(m) => {
            problems.push(format!("request.ttl: {m}"));
            None
        }
    };
    let expiry = match (ttl, c.request.expire_time) {
        (Some(t), _) => Some(Expiry::Ttl(t)),
        (None, Some(at)) => Some(Expiry::At(at)),
        _ => None,
    };
    let got = decide(
        policy,
        &who,
        &sid,
        &facts,
        &DecisionRequest {
            role: c.request.role,
            expiry,
        },
        now,
        false,
    );
    let e = &c.expect;
    match got {
        Err(err) => {
            if e.outcome != "invalid" || e.code.as_deref().is_some_and(|x| x != err.code()) {
                problems.push(format!(
                    "expected {}, got a 400 {}: {err}",
                    e.outcome,
                    err.code()
                ));
            }
        }
        Ok(d) => check_decision(e, &d, &mut problems),
    }
    problems
}

/// The session a case names (its id canonical, as the broker matches `id:`
/// rules) and its facts.
fn case_session(s: Option<&CaseSession>) -> (String, SessionFacts) {
    match s {
        None => ("session".to_owned(), SessionFacts::default()),
        Some(s) => (
            s.id.as_deref()
                .map(|id| {
                    crate::domain::SessionId::parse(id)
                        .map_or_else(|_| id.to_owned(), |sid| sid.canonical().to_owned())
                })
                .unwrap_or_else(|| "session".into()),
            SessionFacts {
                owner: s.owner.clone(),
                labels: s.labels.clone(),
            },
        ),
    }
}

/// Where decision `d` differs from what the case expects.
fn check_decision(e: &Expect, d: &Decision, problems: &mut Vec<String>) {
    let (outcome, code, role, dttl) = match &d.outcome {
        Outcome::Granted { role, ttl, .. } => ("granted", None, Some(*role), Some(*ttl)),
        Outcome::Refused(code) => ("refused", Some(code.code()), None, None),
    };
    if e.outcome != outcome {
        problems.push(format!(
            "expected {}, got {outcome} ({})",
            e.outcome, d.reason
        ));
    }
    if let Some(want) = &e.code
        && code != Some(want.as_str())
    {
        problems.push(format!(
            "expected code {want}, got {}",
            code.unwrap_or("none")
        ));
    }
    if let Some(want) = e.role
        && role != Some(want)
    {
        problems.push(format!(
            "expected role {want}, got {}",
            role.map(|r| r.as_str()).unwrap_or("none")
        ));
    }
    if let Some(want) = &e.ttl {
        match duration::parse(want) {
            Ok(w) if dttl != Some(w) => problems.push(format!(
                "expected ttl {}, got {}",
                human(w),
                dttl.map(human).unwrap_or_else(|| "none".into())
            )),
            Err(m) => problems.push(format!("expect.ttl: {m}")),
            _ => {}
        }
    }
    if let Some(want) = &e.rule
        && d.rule.as_deref() != Some(want.as_str())
    {
        problems.push(format!(
            "expected rule {want}, got {}",
            d.rule.as_deref().unwrap_or("none")
        ));
    }
    if let Some(want) = e.clamped
        && want != d.clamped.is_some()
    {
        problems.push(format!(
            "expected clamped = {want}, got {}",
            d.clamped.is_some()
        ));
    }
}

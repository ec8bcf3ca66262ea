//! The decision: a pure function of (compiled policy, caller, session facts,
//! request, now). No I/O, no clock reads; a few comparisons per rule.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::duration::human;
use super::file::{Effect, Excess, MAX_TTL, PolicyDoc, Rule, SessionMatch, Source, Subject};
use crate::domain::{Identity, Role};

/// A policy version in force, rules sorted by priority.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub tenant: String,
    pub version: i64,
    pub doc: PolicyDoc,
    order: Vec<usize>,
    subjects: SubjectIndex,
}

/// Which rules name a caller, found from the caller's user id and groups
/// instead of by reading every subject of every rule: a policy may list
/// thousands of subjects, and a caller up to 64 groups, so the plain scan
/// cost every decision millions of comparisons. Rules are by position in
/// the order they are tried.
#[derive(Debug, Clone, Default)]
struct SubjectIndex {
    anyone: Vec<usize>,
    users: HashMap<String, Vec<(usize, Source)>>,
    groups: HashMap<String, Vec<(usize, Source)>>,
}

impl SubjectIndex {
    fn of(doc: &PolicyDoc, order: &[usize]) -> SubjectIndex {
        let mut ix = SubjectIndex::default();
        for (pos, i) in order.iter().enumerate() {
            for s in &doc.rules[*i].subjects {
                match s {
                    Subject::Any => ix.anyone.push(pos),
                    Subject::User(src, u) => {
                        ix.users
                            .entry(u.clone())
                            .or_default()
                            .push((pos, src.clone()));
                    }
                    Subject::Group(src, g) => {
                        ix.groups
                            .entry(g.clone())
                            .or_default()
                            .push((pos, src.clone()));
                    }
                }
            }
        }
        ix
    }

    /// For each rule position, whether one of its subjects names `who`.
    fn named(&self, who: &Identity, rules: usize) -> Vec<bool> {
        let mut named = vec![false; rules];
        for &pos in &self.anyone {
            named[pos] = true;
        }
        let hits = self
            .users
            .get(&who.user_id)
            .into_iter()
            .chain(who.groups.iter().filter_map(|g| self.groups.get(g)));
        for list in hits {
            for (pos, src) in list {
                if source_matches(src, who) {
                    named[*pos] = true;
                }
            }
        }
        named
    }
}

impl CompiledPolicy {
    /// Project ids (api keys, application ids) the policy's credentials sign for.
    pub fn credential_projects(&self) -> impl Iterator<Item = String> + '_ {
        self.doc.credentials.iter().map(|c| c.owner_id().to_owned())
    }

    pub fn compile(doc: PolicyDoc, version: i64) -> CompiledPolicy {
        let mut order: Vec<usize> = (0..doc.rules.len()).collect();
        order.sort_by_key(|i| doc.rules[*i].priority);
        let subjects = SubjectIndex::of(&doc, &order);
        CompiledPolicy {
            tenant: doc.tenant.clone(),
            version,
            doc,
            order,
            subjects,
        }
    }

    /// Rules in the order they are tried.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.order.iter().map(|i| &self.doc.rules[*i])
    }
}

/// What the broker knows of a session: registered owner and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFacts {
    pub owner: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl SessionFacts {
    /// As recorded with each decision: `{}` for an unregistered session, else
    /// `{"owner": …, "labels": {…}}`.
    pub fn to_json(&self) -> serde_json::Value {
        if self.owner.is_none() && self.labels.is_empty() {
            return serde_json::json!({});
        }
        serde_json::json!({"owner": self.owner, "labels": self.labels})
    }

    /// The inverse of `to_json`; `None` when `v` is not such a record.
    pub fn from_json(v: &serde_json::Value) -> Option<SessionFacts> {
        let o = v.as_object()?;
        let owner = match o.get("owner") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return None,
        };
        let labels = match o.get("labels") {
            None => BTreeMap::new(),
            Some(l) => serde_json::from_value(l.clone()).ok()?,
        };
        Some(SessionFacts { owner, labels })
    }
}

/// A requested lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Seconds from now.
    Ttl(i64),
    /// Absolute unix seconds.
    At(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecisionRequest {
    pub role: Option<Role>,
    pub expiry: Option<Expiry>,
}

/// Bad input, refused before any rule is tried (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("expire_time {0} is not in the future")]
    ExpireTimeInPast(i64),
    #[error("ttl must be a positive number of seconds")]
    InvalidTtl,
}

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::ExpireTimeInPast(_) => "expire_time_in_past",
            RequestError::InvalidTtl => "invalid_ttl",
        }
    }

    pub fn field(&self) -> &'static str {
        match self {
            RequestError::ExpireTimeInPast(_) => "expire_time",
            RequestError::InvalidTtl => "ttl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    PolicyDenied,
    NoMatchingRule,
    RoleNotAllowed,
}

impl RefusalCode {
    pub fn code(self) -> &'static str {
        match self {
            RefusalCode::PolicyDenied => "policy_denied",
            RefusalCode::NoMatchingRule => "no_matching_rule",
            RefusalCode::RoleNotAllowed => "role_not_allowed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Granted {
        role: Role,
        expire_time: i64,
        ttl: i64,
    },
    Refused(RefusalCode),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change<T> {
    pub requested: T,
    pub granted: T,
}

/// What was clamped: only the parts that were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Clamped {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Change<Role>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Change<i64>>,
}

/// Why an earlier rule did not decide (`explain=true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleMiss {
    pub rule: String,
    pub priority: i64,
    /// `subject` or `session`.
    pub failed: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// The deciding rule (none when no rule matched).
    pub rule: Option<String>,
    pub policy_version: i64,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clamped: Option<Clamped>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Vec<RuleMiss>>,
}

/// Whether `who` was vouched for by `source`.
fn source_matches(source: &Source, who: &Identity) -> bool {
    match source {
        Source::Any => true,
        Source::App => who.idp.is_none(),
        Source::Idp(p) => who.idp.as_deref() == Some(p.as_str()),
    }
}

fn describe_source(s: &Source) -> String {
    match s {
        Source::App => "vouched by the app".to_owned(),
        Source::Idp(p) => format!("from identity provider {p}"),
        Source::Any => "from any source".to_owned(),
    }
}

fn session_matches(m: &SessionMatch, who: &Identity, session_id: &str, f: &SessionFacts) -> bool {
    match m {
        SessionMatch::Any => true,
        SessionMatch::Id(id) => id == session_id,
        // Same source and same id: `idp:<p>:<id>` owners are provider users.
        SessionMatch::Owner => f.owner.as_deref().is_some_and(|o| who.owns(o)),
        SessionMatch::Label { key, value, .. } => {
            f.labels.get(key).is_some_and(|v| value.matches(v))
        }
    }
}

fn describe_subjects(r: &Rule) -> String {
    r.subjects
        .iter()
        .map(|s| match s {
            Subject::Any => "anyone".to_owned(),
            Subject::User(src, u) => format!("user {u} ({})", describe_source(src)),
            Subject::Group(src, g) => format!("group {g} ({})", describe_source(src)),
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn describe_sessions(r: &Rule) -> String {
    r.sessions
        .iter()
        .map(|s| match s {
            SessionMatch::Any => "any session".to_owned(),
            SessionMatch::Id(i) => format!("session {i}"),
            SessionMatch::Owner => "a session the caller owns".to_owned(),
            SessionMatch::Label { key, pattern, .. } => format!("label {key}={pattern}"),
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Decides a request.
pub fn decide(
    p: &CompiledPolicy,
    who: &Identity,
    session_id: &str,
    facts: &SessionFacts,
    req: &DecisionRequest,
    now: i64,
    explain: bool,
) -> Result<Decision, RequestError> {
    let requested_ttl = requested_ttl(req, now)?;
    let mut misses = explain.then(Vec::new);
    let named = p.subjects.named(who, p.order.len());
    for (r, subject_ok) in p.rules().zip(named) {
        let session_ok = subject_ok
            && r.sessions
                .iter()
                .any(|s| session_matches(s, who, session_id, facts));
        if subject_ok && session_ok {
            return Ok(apply(p, r, req, requested_ttl, now, misses));
        }
        if let Some(m) = misses.as_mut() {
            m.push(miss(r, subject_ok));
        }
    }
    Ok(Decision {
        outcome: Outcome::Refused(RefusalCode::NoMatchingRule),
        rule: None,
        policy_version: p.version,
        reason: "no rule matches this caller and session: denied by default".into(),
        clamped: None,
        explain: misses,
    })
}

/// The lifetime the request asks for, in seconds (`None`: the rule's or the
/// policy's default).
fn requested_ttl(req: &DecisionRequest, now: i64) -> Result<Option<i64>, RequestError> {
    match req.expiry {
        None => Ok(None),
        Some(Expiry::Ttl(t)) if t <= 0 => Err(RequestError::InvalidTtl),
        Some(Expiry::Ttl(t)) => Ok(Some(t)),
        Some(Expiry::At(at)) if at <= now => Err(RequestError::ExpireTimeInPast(at)),
        Some(Expiry::At(at)) => Ok(Some(at - now)),
    }
}

/// Why rule `r` did not match (for `explain`): its subjects, or else its sessions.
fn miss(r: &Rule, subject_ok: bool) -> RuleMiss {
    let (failed, detail) = if !subject_ok {
        (
            "subject",
            format!("the caller is not {}", describe_subjects(r)),
        )
    } else {
        (
            "session",
            format!("the session is not {}", describe_sessions(r)),
        )
    };
    RuleMiss {
        rule: r.id.clone(),
        priority: r.priority,
        failed,
        detail,
    }
}

/// The decision of `r`, the first rule that matches: refused by a deny rule
/// or a role it does not allow, else granted (role and lifetime clamped).
fn apply(
    p: &CompiledPolicy,
    r: &Rule,
    req: &DecisionRequest,
    requested_ttl: Option<i64>,
    now: i64,
    misses: Option<Vec<RuleMiss>>,
) -> Decision {
    let refused = |code: RefusalCode, reason: String, misses: Option<Vec<RuleMiss>>| Decision {
        outcome: Outcome::Refused(code),
        rule: Some(r.id.clone()),
        policy_version: p.version,
        reason,
        clamped: None,
        explain: misses,
    };
    if r.effect == Effect::Deny {
        return refused(
            RefusalCode::PolicyDenied,
            // Not the rule's subjects: the refusal goes to the caller, who
            // must not learn who else the rule names (nor wait for a list
            // of thousands to be written out).
            format!("rule {} denies this caller", r.id),
            misses,
        );
    }
    let wanted = req.role.or(r.default_role).unwrap_or(p.doc.defaults.role);
    let mut clamped = Clamped::default();
    let role = match granted_role(r, wanted, &mut clamped) {
        Ok(role) => role,
        Err(allowed) => {
            return refused(
                RefusalCode::RoleNotAllowed,
                format!("rule {} allows {allowed}, not {wanted}", r.id),
                misses,
            );
        }
    };
    let want_ttl = requested_ttl
        .or(r.default_ttl)
        .unwrap_or(p.doc.defaults.ttl);
    let cap = r.max_ttl.unwrap_or(MAX_TTL).min(MAX_TTL);
    let ttl = want_ttl.min(cap);
    if ttl < want_ttl {
        clamped.ttl = Some(Change {
            requested: want_ttl,
            granted: ttl,
        });
    }
    let mut reason = format!("rule {} grants {role} for {}", r.id, human(ttl));
    if let Some(c) = &clamped.role {
        reason.push_str(&format!(
            "; role downgraded from {} to {}",
            c.requested, c.granted
        ));
    }
    if let Some(c) = &clamped.ttl {
        reason.push_str(&format!(
            "; ttl clamped from {} to {}",
            human(c.requested),
            human(c.granted)
        ));
    }
    let any_clamp = clamped.role.is_some() || clamped.ttl.is_some();
    Decision {
        outcome: Outcome::Granted {
            role,
            expire_time: now + ttl,
            ttl,
        },
        rule: Some(r.id.clone()),
        policy_version: p.version,
        reason,
        clamped: any_clamp.then_some(clamped),
        explain: misses,
    }
}

/// The role `r` grants for `wanted`: itself, or the rule's default when it
/// downgrades (noted in `clamped`); else the roles it allows, for the refusal.
fn granted_role(r: &Rule, wanted: Role, clamped: &mut Clamped) -> Result<Role, String> {
    if r.roles.contains(&wanted) {
        return Ok(wanted);
    }
    match (r.on_role_excess, r.default_role) {
        (Excess::Downgrade, Some(d)) if r.roles.contains(&d) => {
            clamped.role = Some(Change {
                requested: wanted,
                granted: d,
            });
            Ok(d)
        }
        _ => {
            let allowed: Vec<&str> = r.roles.iter().map(|x| x.as_str()).collect();
            Err(if allowed.is_empty() {
                "no role".to_owned()
            } else {
                allowed.join(", ")
            })
        }
    }
}

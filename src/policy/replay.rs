//! Policy replay, the pure part: recorded token requests decided again under
//! a proposed policy, compared with what was decided then, and summed up as
//! the changes an admin cares about (who loses access, who gains moderator,
//! whose tokens get shorter). Reading the record is the caller's job
//! (`crate::replay`); this module only decides and counts.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::decide::{CompiledPolicy, DecisionRequest, Outcome, SessionFacts, decide};
use crate::domain::{Identity, Role};

/// What was decided then (or is decided now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Granted { role: Role, expire_time: i64 },
    Refused { code: String },
}

/// One recorded token request, as replay needs it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub audit_id: String,
    /// When it was decided (unix seconds): the replay decides "as of" then.
    pub at: i64,
    pub who: Identity,
    pub session_id: String,
    /// The project id the session ID names (`None` when it does not decode).
    pub session_project: Option<String>,
    /// The session's registered owner and labels at that time.
    pub facts: SessionFacts,
    /// False when the row predates recorded session facts (today's were used).
    pub facts_recorded: bool,
    pub request: DecisionRequest,
    pub then: Verdict,
    pub then_rule: Option<String>,
}

/// How many requests changed, by kind of change. A request counts in every
/// kind that applies (a grant can be both lowered and shortened), except
/// `unchanged`, and the two flips, which exclude the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub granted_to_refused: u64,
    pub refused_to_granted: u64,
    pub role_raised: u64,
    pub role_lowered: u64,
    pub ttl_shortened: u64,
    pub ttl_lengthened: u64,
    pub rule_changed: u64,
    pub unchanged: u64,
    /// Requests now granted moderator that were not before (refused, or a lower role).
    pub granted_moderator: u64,
}

/// Names of the change kinds (as in `Changes` and `--fail-on`).
pub const KINDS: [&str; 9] = [
    "granted_to_refused",
    "refused_to_granted",
    "role_raised",
    "role_lowered",
    "ttl_shortened",
    "ttl_lengthened",
    "rule_changed",
    "unchanged",
    "granted_moderator",
];

impl Changes {
    pub fn get(&self, kind: &str) -> Option<u64> {
        Some(match kind {
            "granted_to_refused" => self.granted_to_refused,
            "refused_to_granted" => self.refused_to_granted,
            "role_raised" => self.role_raised,
            "role_lowered" => self.role_lowered,
            "ttl_shortened" => self.ttl_shortened,
            "ttl_lengthened" => self.ttl_lengthened,
            "rule_changed" => self.rule_changed,
            "unchanged" => self.unchanged,
            "granted_moderator" => self.granted_moderator,
            _ => return None,
        })
    }

    fn bump(&mut self, kind: &str) {
        let c = match kind {
            "granted_to_refused" => &mut self.granted_to_refused,
            "refused_to_granted" => &mut self.refused_to_granted,
            "role_raised" => &mut self.role_raised,
            "role_lowered" => &mut self.role_lowered,
            "ttl_shortened" => &mut self.ttl_shortened,
            "ttl_lengthened" => &mut self.ttl_lengthened,
            "rule_changed" => &mut self.rule_changed,
            "granted_moderator" => &mut self.granted_moderator,
            _ => &mut self.unchanged,
        };
        *c += 1;
    }
}

/// One affected user or session of a change kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Affected {
    pub id: String,
    pub requests: u64,
    /// A few audit ids of the requests, as examples.
    pub audit_ids: Vec<String>,
}

/// The users and sessions a change kind affects, most affected first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Examples {
    pub users: Vec<Affected>,
    pub sessions: Vec<Affected>,
}

/// The answer of a replay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Recorded requests decided again.
    pub requests: u64,
    /// Of those, how many predate recorded session facts (decided with today's).
    pub approximate: u64,
    pub changes: Changes,
    /// For each change kind that occurred (not `unchanged`): who and which sessions.
    pub examples: BTreeMap<&'static str, Examples>,
}

/// Most users and sessions listed per change kind, and audit ids per entry.
const TOP: usize = 10;
const IDS: usize = 3;

/// Privilege order of roles (a publisher can do what a publisheronly can, and more).
fn rank(r: Role) -> u8 {
    match r {
        Role::Subscriber => 0,
        Role::PublisherOnly => 1,
        Role::Publisher => 2,
        Role::Moderator => 3,
    }
}

/// Accumulates a replay, one recorded request at a time (constant work per
/// request; memory grows only with the distinct users and sessions affected).
#[derive(Debug)]
pub struct Replayer<'a> {
    policy: &'a CompiledPolicy,
    /// Projects the proposed policy (or the tenant's stored credentials) sign for.
    projects: HashSet<String>,
    report: ReplayReport,
    users: HashMap<&'static str, HashMap<String, (u64, Vec<String>)>>,
    sessions: HashMap<&'static str, HashMap<String, (u64, Vec<String>)>>,
}

impl<'a> Replayer<'a> {
    /// `stored_projects`: project ids of the tenant's stored credentials, which
    /// sign whatever the policy file says.
    pub fn new(
        policy: &'a CompiledPolicy,
        stored_projects: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut projects: HashSet<String> = stored_projects.into_iter().collect();
        projects.extend(policy.credential_projects());
        Replayer {
            policy,
            projects,
            report: ReplayReport::default(),
            users: HashMap::new(),
            sessions: HashMap::new(),
        }
    }

    /// What the proposed policy decides for `r`.
    pub fn decide_now(&self, r: &Recorded) -> (Verdict, Option<String>) {
        let owned = r
            .session_project
            .as_ref()
            .is_some_and(|p| self.projects.contains(p));
        if !owned {
            return (
                Verdict::Refused {
                    code: "session_not_owned".into(),
                },
                None,
            );
        }
        match decide(
            self.policy,
            &r.who,
            &r.session_id,
            &r.facts,
            &r.request,
            r.at,
            false,
        ) {
            Ok(d) => {
                let v = match d.outcome {
                    Outcome::Granted {
                        role, expire_time, ..
                    } => Verdict::Granted { role, expire_time },
                    Outcome::Refused(code) => Verdict::Refused {
                        code: code.code().to_owned(),
                    },
                };
                (v, d.rule)
            }
            Err(e) => (
                Verdict::Refused {
                    code: e.code().to_owned(),
                },
                None,
            ),
        }
    }

    /// Decides `r` again and counts how it changed.
    pub fn push(&mut self, r: &Recorded) {
        self.report.requests += 1;
        if !r.facts_recorded {
            self.report.approximate += 1;
        }
        let (now, now_rule) = self.decide_now(r);
        let mut kinds: Vec<&'static str> = Vec::new();
        match (&r.then, &now) {
            (Verdict::Granted { .. }, Verdict::Refused { .. }) => kinds.push("granted_to_refused"),
            (Verdict::Refused { .. }, Verdict::Granted { role, .. }) => {
                kinds.push("refused_to_granted");
                if *role == Role::Moderator {
                    kinds.push("granted_moderator");
                }
            }
            (
                Verdict::Granted {
                    role: r0,
                    expire_time: e0,
                },
                Verdict::Granted {
                    role: r1,
                    expire_time: e1,
                },
            ) => {
                if rank(*r1) > rank(*r0) {
                    kinds.push("role_raised");
                    if *r1 == Role::Moderator {
                        kinds.push("granted_moderator");
                    }
                } else if rank(*r1) < rank(*r0) {
                    kinds.push("role_lowered");
                }
                if e1 < e0 {
                    kinds.push("ttl_shortened");
                } else if e1 > e0 {
                    kinds.push("ttl_lengthened");
                }
                if now_rule != r.then_rule {
                    kinds.push("rule_changed");
                }
            }
            (Verdict::Refused { .. }, Verdict::Refused { .. }) => {
                if now_rule != r.then_rule {
                    kinds.push("rule_changed");
                }
            }
        }
        if kinds.is_empty() {
            self.report.changes.bump("unchanged");
            return;
        }
        for k in kinds {
            self.report.changes.bump(k);
            for (map, id) in [
                (&mut self.users, &r.who.user_id),
                (&mut self.sessions, &r.session_id),
            ] {
                let e = map.entry(k).or_default().entry(id.clone()).or_default();
                e.0 += 1;
                if e.1.len() < IDS {
                    e.1.push(r.audit_id.clone());
                }
            }
        }
    }

    /// The report, with each change kind's most affected users and sessions.
    pub fn finish(mut self) -> ReplayReport {
        let top = |m: HashMap<String, (u64, Vec<String>)>| {
            let mut v: Vec<Affected> = m
                .into_iter()
                .map(|(id, (requests, audit_ids))| Affected {
                    id,
                    requests,
                    audit_ids,
                })
                .collect();
            v.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.id.cmp(&b.id)));
            v.truncate(TOP);
            v
        };
        for k in KINDS {
            let users = self.users.remove(k).map(top).unwrap_or_default();
            let sessions = self.sessions.remove(k).map(top).unwrap_or_default();
            if !users.is_empty() || !sessions.is_empty() {
                self.report.examples.insert(k, Examples { users, sessions });
            }
        }
        self.report
    }
}

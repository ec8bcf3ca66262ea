#![allow(clippy::too_many_lines)] // a table of cases reads top to bottom
//! Table-driven decision tests and validation tests with locations.

use super::*;
use crate::domain::{Identity, Role};

const POLICY: &str = r#"tenant = "acme"

[[credentials]]
name = "main"
provider = "opentok"
api_key = "123456"
api_secret = "env:TOKEN_BROKER_TENANT_ACME_SECRET"

[defaults]
role = "publisher"
ttl = "1h"

[[rules]]
id = "banned"
priority = 1
effect = "deny"
subjects = ["group:banned"]
sessions = ["*"]

[[rules]]
id = "owner-moderates"
priority = 10
subjects = ["*"]
sessions = ["owner"]
roles = ["subscriber", "publisher", "publisheronly", "moderator"]
default_role = "moderator"
max_ttl = "8h"

[[rules]]
id = "teachers"
priority = 20
subjects = ["group:teachers", "user:principal"]
sessions = ["label:kind=class-*"]
roles = ["subscriber", "publisher", "moderator"]
max_ttl = "4h"

[[rules]]
id = "lobby"
priority = 30
subjects = ["*"]
sessions = ["id:1_MX4xMjM0NTZ-fjE3NjQwMDAwMDAwMDB-c2Vzc2lvbi0xfg"]
roles = ["subscriber"]

[[rules]]
id = "students"
priority = 100
subjects = ["*"]
sessions = ["label:kind=class-*"]
roles = ["subscriber", "publisher"]
default_role = "subscriber"
max_ttl = "2h"
on_role_excess = "downgrade"
"#;

const NOW: i64 = 1_764_000_000;
/// The `lobby` rule's session (a real session ID: `id:` rules take only those).
const LOBBY: &str = "1_MX4xMjM0NTZ-fjE3NjQwMDAwMDAwMDB-c2Vzc2lvbi0xfg";

fn policy() -> CompiledPolicy {
    CompiledPolicy::compile(parse("acme.toml", POLICY).expect("valid"), 7)
}

fn who(id: &str, groups: &[&str]) -> Identity {
    Identity {
        user_id: id.into(),
        name: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        idp: None,
    }
}

fn class(owner: Option<&str>) -> SessionFacts {
    SessionFacts {
        owner: owner.map(str::to_owned),
        labels: [("kind".to_owned(), "class-math".to_owned())].into(),
    }
}

struct Case {
    name: &'static str,
    who: Identity,
    session: &'static str,
    facts: SessionFacts,
    role: Option<Role>,
    expiry: Option<Expiry>,
    // expected: outcome code ("granted" or refusal), role, ttl, rule, clamped role?, clamped ttl?
    want: (
        &'static str,
        Option<Role>,
        Option<i64>,
        Option<&'static str>,
        bool,
        bool,
    ),
}

#[test]
fn decisions_table() {
    use Role::*;
    let p = policy();
    let cases = vec![
        Case {
            name: "deny rule beats everything",
            who: who("x", &["banned", "teachers"]),
            session: "s",
            facts: class(Some("x")),
            role: None,
            expiry: None,
            want: ("policy_denied", None, None, Some("banned"), false, false),
        },
        Case {
            name: "owner gets the rule's default role",
            who: who("olga", &[]),
            session: "s",
            facts: class(Some("olga")),
            role: None,
            expiry: None,
            want: (
                "granted",
                Some(Moderator),
                Some(3600),
                Some("owner-moderates"),
                false,
                false,
            ),
        },
        Case {
            name: "owner ttl clamped to 8h",
            who: who("olga", &[]),
            session: "s",
            facts: class(Some("olga")),
            role: Some(Publisher),
            expiry: Some(Expiry::Ttl(86_400)),
            want: (
                "granted",
                Some(Publisher),
                Some(8 * 3600),
                Some("owner-moderates"),
                false,
                true,
            ),
        },
        Case {
            name: "group matcher",
            who: who("tina", &["teachers"]),
            session: "s",
            facts: class(None),
            role: Some(Moderator),
            expiry: None,
            want: (
                "granted",
                Some(Moderator),
                Some(3600),
                Some("teachers"),
                false,
                false,
            ),
        },
        Case {
            name: "user matcher",
            who: who("principal", &[]),
            session: "s",
            facts: class(None),
            role: Some(Moderator),
            expiry: Some(Expiry::Ttl(5 * 3600)),
            want: (
                "granted",
                Some(Moderator),
                Some(4 * 3600),
                Some("teachers"),
                false,
                true,
            ),
        },
        Case {
            name: "absolute expire_time clamps too",
            who: who("tina", &["teachers"]),
            session: "s",
            facts: class(None),
            role: None,
            expiry: Some(Expiry::At(NOW + 10 * 3600)),
            want: (
                "granted",
                Some(Publisher),
                Some(4 * 3600),
                Some("teachers"),
                false,
                true,
            ),
        },
        Case {
            name: "role excess denied by a deny-excess rule",
            who: who("tina", &["teachers"]),
            session: "s",
            facts: class(None),
            role: Some(PublisherOnly),
            expiry: None,
            want: (
                "role_not_allowed",
                None,
                None,
                Some("teachers"),
                false,
                false,
            ),
        },
        Case {
            name: "role excess downgraded",
            who: who("sam", &[]),
            session: "s",
            facts: class(None),
            role: Some(Moderator),
            expiry: None,
            want: (
                "granted",
                Some(Subscriber),
                Some(3600),
                Some("students"),
                true,
                false,
            ),
        },
        Case {
            name: "role below the ceiling is kept",
            who: who("sam", &[]),
            session: "s",
            facts: class(None),
            role: Some(Publisher),
            expiry: Some(Expiry::Ttl(60)),
            want: (
                "granted",
                Some(Publisher),
                Some(60),
                Some("students"),
                false,
                false,
            ),
        },
        Case {
            name: "id matcher",
            who: who("sam", &[]),
            session: LOBBY,
            facts: SessionFacts::default(),
            role: None,
            expiry: None,
            want: ("role_not_allowed", None, None, Some("lobby"), false, false),
        },
        Case {
            name: "id matcher, allowed role",
            who: who("sam", &[]),
            session: LOBBY,
            facts: SessionFacts::default(),
            role: Some(Subscriber),
            expiry: None,
            want: (
                "granted",
                Some(Subscriber),
                Some(3600),
                Some("lobby"),
                false,
                false,
            ),
        },
        Case {
            name: "unregistered session: owner and label rules do not match",
            who: who("olga", &["teachers"]),
            session: "s",
            facts: SessionFacts::default(),
            role: None,
            expiry: None,
            want: ("no_matching_rule", None, None, None, false, false),
        },
        Case {
            name: "glob must match the label",
            who: who("sam", &[]),
            session: "s",
            facts: SessionFacts {
                owner: None,
                labels: [("kind".to_owned(), "webinar".to_owned())].into(),
            },
            role: None,
            expiry: None,
            want: ("no_matching_rule", None, None, None, false, false),
        },
    ];
    for c in cases {
        let d = decide(
            &p,
            &c.who,
            c.session,
            &c.facts,
            &DecisionRequest {
                role: c.role,
                expiry: c.expiry,
            },
            NOW,
            false,
        )
        .unwrap();
        let (outcome, role, ttl) = match d.outcome {
            Outcome::Granted {
                role,
                ttl,
                expire_time,
            } => {
                assert_eq!(expire_time, NOW + ttl, "{}", c.name);
                ("granted", Some(role), Some(ttl))
            }
            Outcome::Refused(code) => (code.code(), None, None),
        };
        let clamped_role = d.clamped.as_ref().is_some_and(|x| x.role.is_some());
        let clamped_ttl = d.clamped.as_ref().is_some_and(|x| x.ttl.is_some());
        assert_eq!(
            (
                outcome,
                role,
                ttl,
                d.rule.as_deref(),
                clamped_role,
                clamped_ttl
            ),
            c.want,
            "{}: {}",
            c.name,
            d.reason
        );
        assert_eq!(d.policy_version, 7);
        assert!(!d.reason.is_empty());
    }
}

#[test]
fn priority_not_file_order_decides() {
    let text = POLICY.replace("priority = 100", "priority = 5");
    let p = CompiledPolicy::compile(parse("acme.toml", &text).unwrap(), 1);
    let d = decide(
        &p,
        &who("tina", &["teachers"]),
        "s",
        &class(None),
        &DecisionRequest {
            role: Some(Role::Moderator),
            expiry: None,
        },
        NOW,
        false,
    )
    .unwrap();
    assert_eq!(
        d.rule.as_deref(),
        Some("students"),
        "students now has priority 5, before teachers"
    );
}

#[test]
fn the_thirty_day_cap_applies_without_max_ttl() {
    let text = POLICY.replace(
        "roles = [\"subscriber\"]\n",
        "roles = [\"subscriber\"]\ndefault_role = \"subscriber\"\n",
    );
    let p = CompiledPolicy::compile(parse("acme.toml", &text).unwrap(), 1);
    let d = decide(
        &p,
        &who("x", &[]),
        LOBBY,
        &SessionFacts::default(),
        &DecisionRequest {
            role: None,
            expiry: Some(Expiry::Ttl(90 * 86_400)),
        },
        NOW,
        false,
    )
    .unwrap();
    assert_eq!(
        d.outcome,
        Outcome::Granted {
            role: Role::Subscriber,
            expire_time: NOW + 30 * 86_400,
            ttl: 30 * 86_400
        }
    );
    assert_eq!(d.clamped.unwrap().ttl.unwrap().granted, 30 * 86_400);
}

#[test]
fn bad_requests_are_errors_not_decisions() {
    let p = policy();
    let r = |e| {
        decide(
            &p,
            &who("x", &[]),
            "s",
            &class(None),
            &DecisionRequest {
                role: None,
                expiry: Some(e),
            },
            NOW,
            false,
        )
    };
    assert_eq!(
        r(Expiry::At(NOW)).unwrap_err().code(),
        "expire_time_in_past"
    );
    assert_eq!(r(Expiry::At(NOW - 1)).unwrap_err().field(), "expire_time");
    assert_eq!(r(Expiry::Ttl(0)).unwrap_err().code(), "invalid_ttl");
}

#[test]
fn explain_says_why_each_earlier_rule_missed() {
    let p = policy();
    let d = decide(
        &p,
        &who("sam", &[]),
        "s",
        &class(None),
        &DecisionRequest::default(),
        NOW,
        true,
    )
    .unwrap();
    assert_eq!(d.rule.as_deref(), Some("students"));
    let misses = d.explain.unwrap();
    let got: Vec<(&str, &str)> = misses.iter().map(|m| (m.rule.as_str(), m.failed)).collect();
    assert_eq!(
        got,
        [
            ("banned", "subject"),
            ("owner-moderates", "session"),
            ("teachers", "subject"),
            ("lobby", "session")
        ]
    );
    assert!(misses[1].detail.contains("owns"), "{}", misses[1].detail);
}

/// A decision of a default request (no role, no expiry asked), not explained.
fn decide_default(p: &CompiledPolicy, w: &Identity, facts: &SessionFacts) -> Decision {
    decide(p, w, "s", facts, &DecisionRequest::default(), NOW, false).unwrap()
}

fn errors(text: &str) -> Vec<PolicyError> {
    parse("t.toml", text).unwrap_err()
}

#[test]
fn validation_errors_name_file_line_column_and_field() {
    let cases: Vec<(&str, String, &str, usize)> = vec![
        (
            "unknown key",
            POLICY.replace("max_ttl = \"4h\"", "max_ttl = \"4h\"\nmax_tll = \"1h\""),
            "max_tll",
            36,
        ),
        (
            "duplicate priority",
            POLICY.replace("priority = 30", "priority = 20"),
            "rules[3].priority",
            39,
        ),
        (
            "duplicate id",
            POLICY.replace("id = \"lobby\"", "id = \"teachers\""),
            "rules[3].id",
            38,
        ),
        (
            "bad role",
            POLICY.replace("roles = [\"subscriber\"]\n", "roles = [\"admin\"]\n"),
            "rules[3].roles",
            42,
        ),
        (
            "ttl over 30 days",
            POLICY.replace("max_ttl = \"8h\"", "max_ttl = \"31d\""),
            "rules[1].max_ttl",
            27,
        ),
        (
            "inline secret",
            POLICY.replace("env:TOKEN_BROKER_TENANT_ACME_SECRET", "abcdef0123456789"),
            "credentials[0].api_secret",
            7,
        ),
        (
            "bad slug",
            POLICY.replace("tenant = \"acme\"", "tenant = \"Acme Corp\""),
            "tenant",
            1,
        ),
        (
            "downgrade without default_role",
            POLICY.replace("default_role = \"subscriber\"\n", ""),
            "rules[4].on_role_excess",
            51,
        ),
        (
            "bad subject",
            POLICY.replace("group:banned", "banned"),
            "rules[0].subjects",
            17,
        ),
        (
            "bad session matcher",
            POLICY.replace("[\"owner\"]", "[\"owned\"]"),
            "rules[1].sessions",
            24,
        ),
        (
            "bad duration",
            POLICY.replace("ttl = \"1h\"", "ttl = \"1 hour\""),
            "defaults.ttl",
            11,
        ),
        (
            "wrong type",
            POLICY.replace("priority = 1\n", "priority = \"first\"\n"),
            "priority",
            15,
        ),
    ];
    for (what, text, field, line) in cases {
        let errs = errors(&text);
        let e = errs
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("{what}: no error for {field}: {errs:?}"));
        assert_eq!(e.file, "t.toml", "{what}");
        assert_eq!(e.line, line, "{what}: {e}");
        assert!(e.column >= 1, "{what}");
        assert!(
            e.to_string().starts_with(&format!("t.toml:{line}:")),
            "{what}: {e}"
        );
    }
    // A pasted secret is never echoed back.
    let errs = errors(&POLICY.replace("env:TOKEN_BROKER_TENANT_ACME_SECRET", "abcdef0123456789"));
    assert!(errs.iter().all(|e| !e.message.contains("abcdef0123456789")));
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = POLICY
        .replace("max_ttl = \"8h\"", "max_ttl = \"31d\"")
        .replace("roles = [\"subscriber\"]\n", "roles = [\"admin\"]\n");
    assert!(errors(&text).len() >= 2);
}

#[test]
fn the_shipped_example_passes_its_own_cases() {
    let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/acme.toml"));
    let doc = parse("acme.toml", text).expect("policies/acme.toml is valid");
    let p = CompiledPolicy::compile(doc, 1);
    let cases = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/acme.tests.toml"
    ));
    let report = run_cases(&p, "acme.tests.toml", cases).expect("cases parse");
    assert_eq!(report.failed(), 0, "{report}");
    assert!(report.total() >= 8);
}

#[test]
fn a_wrong_expectation_fails_with_a_clear_message() {
    let p = policy();
    let cases = r#"
[[cases]]
name = "wrongly expects moderator"
user = { id = "sam" }
session = { labels = { kind = "class-math" } }
expect = { outcome = "granted", role = "moderator", rule = "teachers" }
"#;
    let r = run_cases(&p, "c.toml", cases).unwrap();
    assert_eq!(r.failed(), 1);
    let text = r.to_string();
    assert!(
        text.contains("FAIL wrongly expects moderator")
            && text.contains("expected role moderator, got subscriber")
            && text.contains("expected rule teachers, got students"),
        "{text}"
    );
}

#[test]
fn id_rules_are_canonical_and_only_take_session_ids() {
    // Written with the `2_` prefix, `+` for `-` and `=` padding: the rule holds
    // the canonical form, so decisions (made on canonical IDs) meet it.
    let other = format!("2_{}==", LOBBY[2..].replace('-', "+"));
    let text = POLICY.replace(LOBBY, &other);
    let p = CompiledPolicy::compile(parse("acme.toml", &text).unwrap(), 1);
    let lobby = p.rules().find(|r| r.id == "lobby").unwrap();
    assert_eq!(lobby.sessions, vec![SessionMatch::Id(LOBBY.to_owned())]);
    // Text that is no session ID could never match a request: refused.
    for bad in ["lobby-session", "\\u0000\\u0000MX4xMjM0NTZ-fg"] {
        let errs = errors(&POLICY.replace(LOBBY, bad));
        assert!(
            errs.iter()
                .any(|e| e.message.contains("invalid session ID")),
            "{bad:?}: {errs:?}"
        );
    }
}

/// A policy with `providers` identity providers, the first with `audiences`
/// and `keys` (the others with one of each).
fn idp_policy(providers: usize, audiences: &[String], keys: &[String]) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = String::from("tenant = \"acme\"\n");
    for i in 0..providers {
        let (aud, pk) = if i == 0 {
            (list(audiences), list(keys))
        } else {
            ("\"broker\"".to_owned(), "\"file:a.pem\"".to_owned())
        };
        text.push_str(&format!(
            "\n[[identity_providers]]\nname = \"idp{i}\"\nissuer = \"https://login{i}.example\"\n\
             audiences = [{aud}]\nalgorithms = [\"RS256\"]\npublic_keys = [{pk}]\n"
        ));
    }
    text
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The error at `field`, or a panic listing what was reported.
fn error_at(text: &str, field: &str) -> PolicyError {
    let errs = errors(text);
    errs.iter()
        .find(|e| e.field == field)
        .cloned()
        .unwrap_or_else(|| panic!("no error at {field}: {errs:?}"))
}

#[test]
fn a_login_token_costs_a_bounded_number_of_signature_checks() {
    // Every public key of the token's family is a full signature check per
    // login token (and per failed one): a hostile admin listing one key many
    // times, or many keys, must be refused before it reaches the broker.
    let keys = numbered("file:k", MAX_IDP_PUBLIC_KEYS);
    parse("t.toml", &idp_policy(1, &["broker".into()], &keys)).expect("the bound itself is fine");

    let over = numbered("file:k", MAX_IDP_PUBLIC_KEYS + 1);
    let e = error_at(
        &idp_policy(1, &["broker".into()], &over),
        "identity_providers[0].public_keys",
    );
    assert!(e.message.contains(&MAX_IDP_PUBLIC_KEYS.to_string()), "{e}");
    assert_eq!(e.line, 8, "{e}");

    // The attack as the review describes it: one key thousands of times.
    let repeated = vec!["file:a.pem".to_owned(); 2_000];
    error_at(
        &idp_policy(1, &["broker".into()], &repeated),
        "identity_providers[0].public_keys",
    );
    // Twice is already refused, also spelled another way.
    for twin in ["file:a.pem", "file:./a.pem", "file:.//a.pem"] {
        let keys = vec!["file:a.pem".to_owned(), twin.to_owned()];
        let errs = errors(&idp_policy(1, &["broker".into()], &keys));
        assert!(
            errs.iter()
                .any(|e| e.field == "identity_providers[0].public_keys"),
            "{twin}: {errs:?}"
        );
    }
    let dup = vec!["file:a.pem".to_owned(), "file:./a.pem".to_owned()];
    let e = error_at(
        &idp_policy(1, &["broker".into()], &dup),
        "identity_providers[0].public_keys",
    );
    assert!(e.message.contains("more than once"), "{e}");
}

#[test]
fn providers_and_audiences_are_bounded() {
    let one = ["file:a.pem".to_owned()];
    let auds = numbered("aud", MAX_IDP_AUDIENCES);
    parse("t.toml", &idp_policy(1, &auds, &one)).expect("the bound itself is fine");
    let auds = numbered("aud", MAX_IDP_AUDIENCES + 1);
    let e = error_at(
        &idp_policy(1, &auds, &one),
        "identity_providers[0].audiences",
    );
    assert!(e.message.contains(&MAX_IDP_AUDIENCES.to_string()), "{e}");
    assert_eq!(e.line, 6, "{e}");

    let aud = ["broker".to_owned()];
    parse("t.toml", &idp_policy(MAX_IDENTITY_PROVIDERS, &aud, &one))
        .expect("the bound itself is fine");
    let e = error_at(
        &idp_policy(MAX_IDENTITY_PROVIDERS + 1, &aud, &one),
        "identity_providers",
    );
    assert!(
        e.message.contains(&MAX_IDENTITY_PROVIDERS.to_string()),
        "{e}"
    );
    // At the first provider over the bound.
    let first_extra = 2 + 7 * MAX_IDENTITY_PROVIDERS + 2;
    assert_eq!(e.line, first_extra, "{e}");
}

/// The example policy with the `students` rule's sessions replaced.
fn with_student_sessions(sessions: &[String]) -> String {
    let list = sessions
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    POLICY.replacen(
        "sessions = [\"label:kind=class-*\"]\nroles = [\"subscriber\", \"publisher\"]",
        &format!("sessions = [{list}]\nroles = [\"subscriber\", \"publisher\"]"),
        1,
    )
}

#[test]
fn what_a_decision_may_try_on_labels_is_bounded() {
    // A hostile admin's label globs ran on every decision, each a backtracking
    // match over the registered value: thousands of them, made to almost match.
    let near = format!("label:k=*{}b", "a".repeat(45));
    let field = "rules[4].sessions";
    // "teachers" holds one glob already.
    let most = vec![near.clone(); MAX_LABEL_GLOBS - 1];
    parse("t.toml", &with_student_sessions(&most)).expect("the bound itself is fine");
    let over = vec![near.clone(); MAX_LABEL_GLOBS];
    let e = error_at(&with_student_sessions(&over), field);
    assert!(e.message.contains(&MAX_LABEL_GLOBS.to_string()), "{e}");
    // Literal labels are string comparisons: not counted.
    let literal = numbered("label:k=v", 500);
    parse("t.toml", &with_student_sessions(&literal)).expect("literals are not globs");
    // Longer than any value: refused, not kept to run.
    let long = format!("label:k={}*", "a".repeat(200));
    error_at(&with_student_sessions(&[long]), field);
    error_at(
        &with_student_sessions(&[format!("label:k={}", "a".repeat(300))]),
        field,
    );
    // What no session can be registered with would make the rule dead.
    for dead in ["label:locked = true", "label:a b=1", "label:é=1"] {
        let e = error_at(&with_student_sessions(&[dead.to_owned()]), field);
        assert!(e.message.contains("no session can have"), "{dead}: {e}");
    }
    // The worst glob left matches a 256-byte value in one pass.
    let p = CompiledPolicy::compile(parse("t.toml", &with_student_sessions(&[near])).unwrap(), 1);
    let mut facts = class(None);
    facts.labels.insert("k".into(), "a".repeat(256));
    decide_default(&p, &who("u", &[]), &facts);
}

#[test]
fn a_deny_tells_the_caller_the_rule_not_whom_else_it_names() {
    let text = POLICY.replace(
        "subjects = [\"group:banned\"]",
        "subjects = [\"user:alice\", \"user:bob\", \"group:banned\"]",
    );
    let p = CompiledPolicy::compile(parse("t.toml", &text).unwrap(), 1);
    let d = decide_default(&p, &who("bob", &[]), &class(None));
    assert_eq!(d.rule.as_deref(), Some("banned"));
    assert!(
        !d.reason.contains("alice") && !d.reason.contains("group"),
        "{}",
        d.reason
    );
}

/// The subject index decides as reading every subject of every rule would:
/// the first rule (by priority) one of whose subjects names the caller, by
/// user or group, from the source it names.
#[test]
fn the_subject_index_agrees_with_reading_every_subject() {
    let subjects = [
        "*",
        "user:u1",
        "app:user:u1",
        "*:user:u2",
        "group:g1",
        "app:group:g2",
        "*:group:g3",
        "app:user:u3",
        "group:g2",
    ];
    let mut seed = 7u64;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    let mut text =
        String::from("tenant = \"acme\"\n\n[defaults]\nrole = \"publisher\"\nttl = \"1h\"\n");
    let mut rules = Vec::new();
    for i in 0..40 {
        let n = 1 + next(3);
        let mut mine: Vec<&str> = (0..n)
            .map(|_| subjects[1 + next(subjects.len() - 1)])
            .collect();
        if next(10) == 0 {
            mine.push("*");
        }
        let priority = 1000 - i * 7 % 41 * 10 - i;
        text.push_str(&format!(
            "\n[[rules]]\nid = \"r{i}\"\npriority = {priority}\nsubjects = {mine:?}\nsessions = [\"*\"]\nroles = [\"publisher\"]\n"
        ));
        rules.push((priority, format!("r{i}"), mine));
    }
    rules.sort_by_key(|r| r.0);
    let p = CompiledPolicy::compile(parse("t.toml", &text).unwrap(), 1);
    let names = |s: &str, who: &Identity| -> bool {
        // Without a source: vouched by the app (as with `app:`).
        let (app_only, rest) = match s.strip_prefix("*:") {
            Some(r) => (false, r),
            None => (true, s.strip_prefix("app:").unwrap_or(s)),
        };
        let source_ok = !app_only || who.idp.is_none();
        s == "*"
            || source_ok
                && match rest.split_once(':') {
                    Some(("user", u)) => who.user_id == u,
                    Some(("group", g)) => who.groups.iter().any(|x| x == g),
                    _ => false,
                }
    };
    for user in ["u1", "u2", "u3", "u4"] {
        for groups in [&[][..], &["g1"], &["g2", "g3"], &["g3", "g3", "g1"]] {
            for idp in [None, Some("corp")] {
                let mut w = who(user, groups);
                w.idp = idp.map(str::to_owned);
                let want = rules
                    .iter()
                    .find(|r| r.2.iter().any(|s| names(s, &w)))
                    .map(|r| r.1.clone());
                let d = decide_default(&p, &w, &class(None));
                assert_eq!(d.rule, want, "{user} {groups:?} {idp:?}");
            }
        }
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark with broken fixtures should stop loudly
//! The cost of one policy decision (pure, from memory): `cargo bench --bench decide`.
//! Runs the shipped example policy (policies/acme.toml) for a caller who falls
//! through to its last rules, the slow path; and the costliest decision a
//! hostile tenant admin can write within the policy caps (`hostile_largest`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use token_broker::domain::{Identity, Role};
use token_broker::policy::{CompiledPolicy, DecisionRequest, Expiry, SessionFacts, decide, parse};

fn decisions(c: &mut Criterion) {
    let text = include_str!("../policies/acme.toml");
    let p = CompiledPolicy::compile(parse("acme.toml", text).expect("valid"), 1);
    let who = Identity {
        user_id: "sam".into(),
        name: Some("Sam".into()),
        groups: vec!["students".into(), "chess-club".into()],
        idp: None,
    };
    let facts = SessionFacts {
        owner: Some("olga".into()),
        labels: [("kind".to_owned(), "webinar".to_owned())].into(),
    };
    let req = DecisionRequest {
        role: Some(Role::Moderator),
        expiry: Some(Expiry::Ttl(86_400)),
    };
    let mut g = c.benchmark_group("decide");
    g.throughput(Throughput::Elements(1));
    let mut run = |name: &str,
                   p: &CompiledPolicy,
                   who: &Identity,
                   facts: &SessionFacts,
                   req: &DecisionRequest,
                   explain: bool| {
        g.bench_function(name, |b| {
            b.iter(|| {
                decide(
                    black_box(p),
                    black_box(who),
                    "1_session",
                    facts,
                    req,
                    1_764_000_000,
                    explain,
                )
                .expect("decides")
            })
        });
    };
    run("acme_last_rule", &p, &who, &facts, &req, false);
    run("acme_last_rule_explained", &p, &who, &facts, &req, true);
    let (p, who, facts) = hostile();
    run(
        "hostile_largest",
        &p,
        &who,
        &facts,
        &DecisionRequest::default(),
        false,
    );
    g.finish();
}

/// A policy at the caps, written to make one decision as slow as it can: a
/// rule naming as many groups as fit in the file, with the most label globs
/// allowed, each made to almost match; a caller with 64 groups, the last of
/// them named; a session whose 256-byte label the globs all try.
fn hostile() -> (CompiledPolicy, Identity, SessionFacts) {
    use token_broker::policy::{MAX_LABEL_GLOBS, MAX_POLICY_BYTES};
    let near = format!("\"label:k=*{}b\"", "a".repeat(45));
    let globs = vec![near; MAX_LABEL_GLOBS].join(", ");
    let mut text = format!(
        "tenant = \"evil\"\n\n[defaults]\nrole = \"publisher\"\nttl = \"1h\"\n\n[[rules]]\nid = \"slow\"\npriority = 1\nsessions = [{globs}]\nroles = [\"publisher\"]\nsubjects = ["
    );
    let mut n = 0;
    while text.len() + 32 < MAX_POLICY_BYTES {
        text.push_str(&format!("\"group:g{n}\","));
        n += 1;
    }
    text.push_str("\"group:named\"]\n");
    let p = CompiledPolicy::compile(parse("evil.toml", &text).expect("within the caps"), 1);
    let mut groups: Vec<String> = (0..63).map(|i| format!("x{i}")).collect();
    groups.push("named".into());
    let who = Identity {
        user_id: "mallory".into(),
        name: None,
        groups,
        idp: None,
    };
    let facts = SessionFacts {
        owner: None,
        labels: [("k".to_owned(), "a".repeat(256))].into(),
    };
    (p, who, facts)
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = decisions
}
criterion_main!(benches);

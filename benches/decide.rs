#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark with broken fixtures should stop loudly
//! The cost of one policy decision (pure, from memory): `cargo bench --bench decide`.
//! Runs the shipped example policy (policies/acme.toml) for a caller who falls
//! through to its last rules, the slow path.

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
    g.bench_function("acme_last_rule", |b| {
        b.iter(|| {
            decide(
                black_box(&p),
                black_box(&who),
                "1_session",
                &facts,
                &req,
                1_764_000_000,
                false,
            )
            .expect("decides")
        })
    });
    g.bench_function("acme_last_rule_explained", |b| {
        b.iter(|| {
            decide(
                black_box(&p),
                black_box(&who),
                "1_session",
                &facts,
                &req,
                1_764_000_000,
                true,
            )
            .expect("decides")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = decisions
}
criterion_main!(benches);

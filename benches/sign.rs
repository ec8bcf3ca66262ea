#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark with broken fixtures should stop loudly
//! Signer throughput on one core: `cargo bench --bench sign`.
//!
//! Each format signs a realistic token (stamped connection data, a layout
//! class); RS256 is compared in the same run with a bare aws-lc RSA-2048
//! signature over the same bytes (the floor), and with jsonwebtoken's own
//! RS256 path (which re-parses the key for every token).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use token_broker::domain::{OpenTokFormat, Role};
use token_broker::tokens::{Entropy, Signer, TokenParams};

const SECRET: &str = "1234567890abcdef1234567890abcdef1234567890";
const SID: &str = "1_MX4xMjM0NTZ-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4";
const APP: &str = "29f760f8-7ce1-46c9-ade3-f2dedee4ed5f";
const APP_SID: &str = "1_MX4yOWY3NjBmOC03Y2UxLTQ2YzktYWRlMy1mMmRlZGVlNGVkNWZ-fjE3MjY0NjI1ODg2NDd-MTF4TGExYmJoelBlR1FHbVhzbWd4STBrfn5-";
const DATA: &str = r#"{"tenant":"acme","sub":"alice","name":"Alice","data":"seat=4"}"#;

fn key_pem() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vonage-jwt-jdk-test.key"
    ))
    .expect("fixture key")
}

fn signers(c: &mut Criterion) {
    let layout = vec!["focus".to_owned()];
    let now = 1_764_000_000;
    let e = Entropy::random();
    let mut g = c.benchmark_group("sign");
    g.throughput(Throughput::Elements(1));
    for (name, signer, sid) in [
        (
            "t1",
            Signer::opentok("123456", SECRET, OpenTokFormat::T1).expect("signer"),
            SID,
        ),
        (
            "opentok_jwt_hs256",
            Signer::opentok("123456", SECRET, OpenTokFormat::Jwt).expect("signer"),
            SID,
        ),
        (
            "vonage_jwt_rs256",
            Signer::vonage(APP, &key_pem()).expect("signer"),
            APP_SID,
        ),
    ] {
        let p = TokenParams {
            session_id: sid,
            role: Role::Publisher,
            expire_time: now + 3600,
            connection_data: Some(DATA),
            initial_layout_class_list: &layout,
        };
        g.bench_function(name, |b| {
            b.iter(|| black_box(signer.sign(black_box(&p), now, &e).expect("sign")))
        });
    }
    // The floor for RS256: one bare aws-lc RSA-2048 PKCS#1 v1.5 SHA-256 signature of the same
    // number of bytes (a Vonage token's signing input), key parsed once.
    let vonage = Signer::vonage(APP, &key_pem()).expect("signer");
    let p = TokenParams {
        session_id: APP_SID,
        role: Role::Publisher,
        expire_time: now + 3600,
        connection_data: Some(DATA),
        initial_layout_class_list: &layout,
    };
    let token = vonage.sign(&p, now, &e).expect("sign").token;
    let signing_input = token.rsplit_once('.').expect("jwt").0.as_bytes().to_vec();
    let der = jsonwebtoken::EncodingKey::from_rsa_pem(&key_pem()).expect("pem");
    let kp = aws_lc_rs::signature::RsaKeyPair::from_der(der.as_bytes()).expect("key");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut sig = vec![0u8; kp.public_modulus_len()];
    g.bench_function("bare_aws_lc_rsa2048_sign", |b| {
        b.iter(|| {
            kp.sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &rng,
                black_box(&signing_input),
                &mut sig,
            )
            .expect("sign")
        })
    });
    let claims: serde_json::Value = serde_json::json!({"session_id": APP_SID, "role": "publisher", "application_id": APP, "exp": now + 3600});
    g.bench_function("jsonwebtoken_encode_rs256_reparsing_key", |b| {
        b.iter(|| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                black_box(&claims),
                &der,
            )
            .expect("encode")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = signers
}
criterion_main!(benches);

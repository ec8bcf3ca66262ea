//! Vonage application JWTs, RS256 (vonage-tokens.md §5): header
//! `{"alg":"RS256","typ":"JWT"}` and the `@vonage/video` claims in its order:
//! `scope, session_id, role, initial_layout_class_list, exp, sub ("video"),
//! acl {"paths":{"/session/**":{}}}, [connection_data], jti, iat, application_id`.
//!
//! The private key is parsed once into an aws-lc `RsaKeyPair` (jsonwebtoken
//! parses the PEM; its own signer would re-parse the DER on every token, which
//! costs more than the signature's margin allows).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::Serialize;

use super::encoding::{b64url, b64url_into};
use super::{CredentialError, TokenParams};

/// `{"alg":"RS256","typ":"JWT"}`.
pub const HEADER_B64: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";

/// An RSA private key parsed once, and its public half for verification.
pub struct RsaSigner {
    key: RsaKeyPair,
    rng: SystemRandom,
    /// PKCS#1 DER of the public key (for `inspect` to verify our tokens).
    public_der: Vec<u8>,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaSigner({} bits)", self.key.public_modulus_len() * 8)
    }
}

/// The RSA modulus sizes accepted for signing (2048 to 4096 bits).
pub const MIN_RSA_BYTES: usize = 256;
pub const MAX_RSA_BYTES: usize = 512;

impl RsaSigner {
    /// From a PEM private key (PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<RsaSigner, CredentialError> {
        let bad = || CredentialError::BadPrivateKey {
            reference: "the PEM".into(),
        };
        let enc = jsonwebtoken::EncodingKey::from_rsa_pem(pem).map_err(|_| bad())?;
        let key = RsaKeyPair::from_der(enc.as_bytes()).map_err(|_| bad())?;
        // 2048 to 4096 bits: larger keys cost up to 64x more per signature
        // (8192 bits: ~20 ms of a shared worker per token), for no benefit.
        if !(MIN_RSA_BYTES..=MAX_RSA_BYTES).contains(&key.public_modulus_len()) {
            return Err(bad());
        }
        use aws_lc_rs::signature::KeyPair;
        let public_der = key.public_key().as_ref().to_vec();
        Ok(RsaSigner {
            key,
            rng: SystemRandom::new(),
            public_der,
        })
    }

    /// RSASSA-PKCS1-v1_5 SHA-256 signature of `msg`, base64url.
    pub fn sign_b64(&self, msg: &[u8]) -> String {
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        // Signing with a validated key into a buffer of the modulus length cannot fail.
        if self
            .key
            .sign(&RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
            .is_err()
        {
            return String::new();
        }
        b64url(&sig)
    }

    /// The public key for jsonwebtoken's verifier.
    pub fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        jsonwebtoken::DecodingKey::from_rsa_der(&self.public_der)
    }
}

#[derive(Serialize)]
struct Acl {
    paths: Paths,
}

#[derive(Serialize)]
struct Paths {
    #[serde(rename = "/session/**")]
    session: Empty,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Claims<'a> {
    scope: &'static str,
    session_id: &'a str,
    role: &'static str,
    initial_layout_class_list: &'a str,
    exp: i64,
    sub: &'static str,
    acl: Acl,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_data: Option<&'a str>,
    jti: &'a str,
    iat: i64,
    application_id: &'a str,
}

/// Signs `header.payload` with RS256.
pub fn sign_payload(key: &RsaSigner, payload_json: &[u8]) -> String {
    let mut msg = String::with_capacity(HEADER_B64.len() + payload_json.len() * 4 / 3 + 400);
    msg.push_str(HEADER_B64);
    msg.push('.');
    b64url_into(payload_json, &mut msg);
    let sig = key.sign_b64(msg.as_bytes());
    msg.push('.');
    msg.push_str(&sig);
    msg
}

pub(super) fn sign(
    application_id: &str,
    key: &RsaSigner,
    p: &TokenParams,
    layout: &str,
    now: i64,
    jti: &str,
) -> String {
    let claims = Claims {
        scope: "session.connect",
        session_id: p.session_id,
        role: p.role.as_str(),
        initial_layout_class_list: layout,
        exp: p.expire_time,
        sub: "video",
        acl: Acl {
            paths: Paths { session: Empty {} },
        },
        connection_data: p.connection_data,
        jti,
        iat: now,
        application_id,
    };
    let payload = serde_json::to_vec(&claims).unwrap_or_default();
    sign_payload(key, &payload)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::{Entropy, Signer, TokenParams};
    use super::*;
    use crate::domain::Role;
    use jsonwebtoken::{Algorithm, Validation};
    use serde_json::Value;

    pub(crate) fn jdk_key() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/vonage-jwt-jdk-test.key"
        ))
        .unwrap()
    }

    /// vonage-tokens.md §7.4: vonage-jwt-jdk JwtGeneratorTest (generic RS256; the spec gives the
    /// signature's first 40 characters).
    #[test]
    fn vonage_jwt_jdk_vector() {
        let key = RsaSigner::from_pem(&jdk_key()).unwrap();
        let payload = br#"{"application_id":"00000000-0000-4000-8000-000000000000","sub":"subject","exp":636508800,"nbf":636508800,"iat":636508800,"jti":"id","foo":"bar"}"#;
        let t = sign_payload(&key, payload);
        let sig = t.rsplit('.').next().unwrap();
        assert!(t.starts_with("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."));
        assert!(
            sig.starts_with("CCq0rpkBtw-vgcAv1OB46044g60MtHK-839jn4xu"),
            "{sig}"
        );
    }

    #[test]
    fn claims_follow_the_vonage_video_order_and_verify() {
        let app = "29f760f8-7ce1-46c9-ade3-f2dedee4ed5f";
        let sid = "1_MX4yOWY3NjBmOC03Y2UxLTQ2YzktYWRlMy1mMmRlZGVlNGVkNWZ-fjE3MjY0NjI1ODg2NDd-MTF4TGExYmJoelBlR1FHbVhzbWd4STBrfn5-";
        let s = Signer::vonage(app, &jdk_key()).unwrap();
        let e = Entropy {
            nonce: 0.5,
            jti: uuid::Uuid::parse_str("4cab89ca-b637-41c8-b62f-7b9ce10c3971").unwrap(),
        };
        let layout = vec!["focus".to_owned()];
        let p = TokenParams {
            session_id: sid,
            role: Role::Publisher,
            expire_time: 1000 + 86400,
            connection_data: Some("connection-data"),
            initial_layout_class_list: &layout,
        };
        let t = s.sign(&p, 1000, &e).unwrap();
        let payload = t.token.split('.').nth(1).unwrap();
        let json = String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            json,
            format!(
                "{{\"scope\":\"session.connect\",\"session_id\":\"{sid}\",\"role\":\"publisher\",\"initial_layout_class_list\":\"focus\",\"exp\":87400,\"sub\":\"video\",\"acl\":{{\"paths\":{{\"/session/**\":{{}}}}}},\"connection_data\":\"connection-data\",\"jti\":\"4cab89ca-b637-41c8-b62f-7b9ce10c3971\",\"iat\":1000,\"application_id\":\"{app}\"}}"
            )
        );
        // Independent verification with jsonwebtoken and the public key.
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let dk = RsaSigner::from_pem(&jdk_key()).unwrap().decoding_key();
        let c = jsonwebtoken::decode::<Value>(&t.token, &dk, &v)
            .expect("RS256 verifies")
            .claims;
        assert_eq!(c["application_id"], app);
        assert_eq!(t.token_id, "4cab89ca-b637-41c8-b62f-7b9ce10c3971");
    }

    #[test]
    fn a_non_rsa_or_garbage_key_is_refused_without_echoing_it() {
        for bad in [
            &b"not a key"[..],
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let e = Signer::vonage("app", bad).unwrap_err();
            assert!(!e.to_string().contains("AAAA"));
        }
    }
}

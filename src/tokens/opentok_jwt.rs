//! OpenTok project JWTs, HS256 (vonage-tokens.md §4): header
//! `{"alg":"HS256","typ":"JWT"}` and the opentok-node >= 2.19 claims in its
//! order: `iss, ist, iat, exp, session_id, create_time, nonce, role,
//! expire_time, [connection_data], initial_layout_class_list, scope`, then our
//! `jti` (a unique id for the audit; harmless to the service, as Java's SDK
//! sends one too). Signed with the API secret's own bytes.

use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Serialize;

use super::TokenParams;
use super::encoding::b64url_into;

/// `{"alg":"HS256","typ":"JWT"}`, in that key order (as the SDKs send it).
pub const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    ist: &'static str,
    iat: i64,
    exp: i64,
    session_id: &'a str,
    create_time: i64,
    nonce: super::js_number::JsNumber,
    role: &'static str,
    expire_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_data: Option<&'a str>,
    initial_layout_class_list: &'a str,
    scope: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<&'a str>,
}

/// Signs `header.payload` with HS256 and appends the signature.
pub(super) fn sign_payload(key: &EncodingKey, payload_json: &[u8]) -> String {
    let mut msg = String::with_capacity(HEADER_B64.len() + 1 + payload_json.len() * 4 / 3 + 48);
    msg.push_str(HEADER_B64);
    msg.push('.');
    b64url_into(payload_json, &mut msg);
    // HS256 with a secret key cannot fail.
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, Algorithm::HS256).unwrap_or_default();
    msg.push('.');
    msg.push_str(&sig);
    msg
}

#[allow(clippy::too_many_arguments)]
pub(super) fn sign(
    api_key: &str,
    key: &EncodingKey,
    p: &TokenParams,
    layout: &str,
    now: i64,
    nonce: f64,
    jti: Option<&str>,
) -> String {
    let claims = Claims {
        iss: api_key,
        ist: "project",
        iat: now,
        exp: p.expire_time,
        session_id: p.session_id,
        create_time: now,
        nonce: super::js_number::JsNumber(nonce),
        role: p.role.as_str(),
        expire_time: p.expire_time,
        connection_data: p.connection_data,
        initial_layout_class_list: layout,
        scope: "session.connect",
        jti,
    };
    let payload = serde_json::to_vec(&claims).unwrap_or_default();
    sign_payload(key, &payload)
}

#[cfg(test)]
mod tests {
    use super::super::{Entropy, Signer, TokenParams};
    use super::*;
    use crate::domain::{OpenTokFormat, Role};
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    const KEY: &str = "123456";
    const SECRET: &str = "1234567890abcdef1234567890abcdef1234567890";
    const SID: &str = "1_MX4xMjM0NTZ-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4";

    fn params<'a>(data: Option<&'a str>, layout: &'a [String]) -> TokenParams<'a> {
        TokenParams {
            session_id: SID,
            role: Role::Moderator,
            expire_time: 1424307413,
            connection_data: data,
            initial_layout_class_list: layout,
        }
    }

    /// vonage-tokens.md §7.5: opentok-node 2.23.1 default JWT, clock and RNG frozen (no jti).
    #[test]
    fn opentok_node_vector() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let t = sign(
            KEY,
            &key,
            &params(Some("{\"name\":\"value\"}"), &[]),
            "",
            1424221013,
            0.3942609881050885,
            None,
        );
        assert_eq!(
            t,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiIxMjM0NTYiLCJpc3QiOiJwcm9qZWN0IiwiaWF0IjoxNDI0MjIxMDEzLCJleHAiOjE0MjQzMDc0MTMsInNlc3Npb25faWQiOiIxX01YNHhNak0wTlRaLWZsTmhkQ0JOWVhJZ01UVWdNVFE2TkRJNk1qTWdVRVJVSURJd01UUi1NQzQwT1RBeE16QXlOWDQiLCJjcmVhdGVfdGltZSI6MTQyNDIyMTAxMywibm9uY2UiOjAuMzk0MjYwOTg4MTA1MDg4NSwicm9sZSI6Im1vZGVyYXRvciIsImV4cGlyZV90aW1lIjoxNDI0MzA3NDEzLCJjb25uZWN0aW9uX2RhdGEiOiJ7XCJuYW1lXCI6XCJ2YWx1ZVwifSIsImluaXRpYWxfbGF5b3V0X2NsYXNzX2xpc3QiOiIiLCJzY29wZSI6InNlc3Npb24uY29ubmVjdCJ9.5f5pEHleP3mvfaV-OuIqOaJdG5vb8KG_GDJ0V6Qy29c"
        );
    }

    /// §7.5: opentok Python 3.13.0 JWT (its claim order), as signing-primitive check.
    #[test]
    fn python_sdk_vector() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let payload = format!(
            "{{\"session_id\":\"{SID}\",\"role\":\"moderator\",\"iat\":1424221013,\"exp\":1424307413,\"scope\":\"session.connect\",\"initial_layout_class_list\":\"focus inactive\",\"connection_data\":\"{{\\\"name\\\":\\\"value\\\"}}\",\"iss\":\"123456\",\"ist\":\"project\",\"nonce\":50885}}"
        );
        assert_eq!(
            sign_payload(&key, payload.as_bytes()),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzZXNzaW9uX2lkIjoiMV9NWDR4TWpNME5UWi1mbE5oZENCTllYSWdNVFVnTVRRNk5ESTZNak1nVUVSVUlESXdNVFItTUM0ME9UQXhNekF5Tlg0Iiwicm9sZSI6Im1vZGVyYXRvciIsImlhdCI6MTQyNDIyMTAxMywiZXhwIjoxNDI0MzA3NDEzLCJzY29wZSI6InNlc3Npb24uY29ubmVjdCIsImluaXRpYWxfbGF5b3V0X2NsYXNzX2xpc3QiOiJmb2N1cyBpbmFjdGl2ZSIsImNvbm5lY3Rpb25fZGF0YSI6IntcIm5hbWVcIjpcInZhbHVlXCJ9IiwiaXNzIjoiMTIzNDU2IiwiaXN0IjoicHJvamVjdCIsIm5vbmNlIjo1MDg4NX0.YcyTkzQdqNKYt316ySdXg0gzvGe2kGffcTPa0-1FolU"
        );
    }

    fn decode(token: &str) -> Value {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
            .expect("verifies")
            .claims
    }

    #[test]
    fn signer_tokens_verify_independently_and_carry_a_jti() {
        let s = Signer::opentok(KEY, SECRET, OpenTokFormat::Jwt).unwrap();
        let e = Entropy::random();
        let layout = vec!["focus".to_owned(), "inactive".to_owned()];
        let t = s.sign(&params(None, &layout), 1424221013, &e).unwrap();
        let c = decode(&t.token);
        assert_eq!(c["jti"], e.jti.to_string());
        assert_eq!(t.token_id, e.jti.to_string());
        assert_eq!(c["initial_layout_class_list"], "focus inactive");
        assert!(c.get("connection_data").is_none());
        assert_eq!(
            (
                c["iss"].as_str(),
                c["exp"].as_i64(),
                c["create_time"].as_i64()
            ),
            (Some(KEY), Some(1424307413), Some(1424221013))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_connection_data_survives(data in "\\PC{0,300}") {
            proptest::prop_assume!(data.len() <= 1000);
            let s = Signer::opentok(KEY, SECRET, OpenTokFormat::Jwt).unwrap();
            let t = s.sign(&params(Some(&data), &[]), 1424221013, &Entropy::random()).unwrap();
            let claims = decode(&t.token);
            proptest::prop_assert_eq!(claims["connection_data"].as_str().unwrap(), data.as_str());
        }
    }
}

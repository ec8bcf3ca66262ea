//! Legacy `T1==` tokens (vonage-tokens.md §3).
//!
//! `T1==` + base64(`partner_id=<key>&sig=<hex HMAC-SHA1(secret, DATA)>:` + DATA),
//! where DATA is the form-encoded field list in opentok-node >= 2.21 order:
//! `session_id, create_time, nonce, role, expire_time, [connection_data],
//! initial_layout_class_list, scope=session.connect`, values escaped as Node's
//! `querystring` does. The HMAC key is the API secret's own bytes.

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::TokenParams;
use super::encoding::{b64_std, hex_lower, js_uri_escape};

/// Encodes an ordered field list into a signed T1 token. The lower-level form,
/// used by `sign` and by the tests that reproduce other SDKs' field orders.
pub fn encode_fields(api_key: &str, secret: &[u8], fields: &[(&str, &str)]) -> String {
    let mut data = String::with_capacity(256);
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            data.push('&');
        }
        data.push_str(k);
        data.push('=');
        js_uri_escape(v, &mut data);
    }
    encode_data(api_key, secret, &data)
}

/// Signs an already-encoded DATA string.
pub fn encode_data(api_key: &str, secret: &[u8], data: &str) -> String {
    let sig = hex_lower(&hmac_sha1(secret, data.as_bytes()));
    let inner = format!("partner_id={api_key}&sig={sig}:{data}");
    let mut out = String::with_capacity(4 + inner.len() * 4 / 3 + 4);
    out.push_str("T1==");
    out.push_str(&b64_std(inner.as_bytes()));
    out
}

pub(super) fn hmac_sha1(secret: &[u8], msg: &[u8]) -> [u8; 20] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Signs a validated request.
pub(super) fn sign(
    api_key: &str,
    secret: &[u8],
    p: &TokenParams,
    layout: &str,
    now: i64,
    nonce: &str,
) -> String {
    let create = now.to_string();
    let expire = p.expire_time.to_string();
    let mut fields: Vec<(&str, &str)> = Vec::with_capacity(8);
    fields.extend([
        ("session_id", p.session_id),
        ("create_time", create.as_str()),
        ("nonce", nonce),
        ("role", p.role.as_str()),
        ("expire_time", expire.as_str()),
    ]);
    if let Some(d) = p.connection_data {
        fields.push(("connection_data", d));
    }
    fields.push(("initial_layout_class_list", layout));
    fields.push(("scope", "session.connect"));
    encode_fields(api_key, secret, &fields)
}

#[cfg(test)]
mod tests {
    use super::super::encoding::percent_decode;
    use super::super::{Entropy, Signer, TokenParams};
    use super::*;
    use crate::domain::{OpenTokFormat, Role};

    const KEY: &str = "123456";
    const SECRET: &str = "1234567890abcdef1234567890abcdef1234567890";
    const SID: &str = "1_MX4xMjM0NTZ-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4";

    /// vonage-tokens.md §7.1: opentok/token-encoder "encodes a known token".
    #[test]
    fn token_encoder_vector() {
        let t = encode_fields(
            KEY,
            SECRET.as_bytes(),
            &[
                ("session_id", SID),
                ("create_time", "1424221013"),
                ("nonce", "0.3942609881050885"),
                ("role", "moderator"),
                ("expire_time", "1424307413"),
                ("connection_data", "{\"name\":\"value\"}"),
            ],
        );
        assert_eq!(
            t,
            "T1==cGFydG5lcl9pZD0xMjM0NTYmc2lnPWRmOTRhNjQ1NTlhY2MwNjFkN2EzNzUyYTZmYzY5NDkzZTkzOGMxOTE6c2Vzc2lvbl9pZD0xX01YNHhNak0wTlRaLWZsTmhkQ0JOWVhJZ01UVWdNVFE2TkRJNk1qTWdVRVJVSURJd01UUi1NQzQwT1RBeE16QXlOWDQmY3JlYXRlX3RpbWU9MTQyNDIyMTAxMyZub25jZT0wLjM5NDI2MDk4ODEwNTA4ODUmcm9sZT1tb2RlcmF0b3ImZXhwaXJlX3RpbWU9MTQyNDMwNzQxMyZjb25uZWN0aW9uX2RhdGE9JTdCJTIybmFtZSUyMiUzQSUyMnZhbHVlJTIyJTdE"
        );
    }

    /// vonage-tokens.md §7.5: opentok-node 2.23.1 `generateToken(..., true)`, clock and RNG frozen.
    #[test]
    fn opentok_node_vector_through_the_signer() {
        let s = Signer::opentok(KEY, SECRET, OpenTokFormat::T1).unwrap();
        let e = Entropy {
            nonce: 0.3942609881050885,
            jti: uuid::Uuid::nil(),
        };
        let p = TokenParams {
            session_id: SID,
            role: Role::Moderator,
            expire_time: 1424307413,
            connection_data: Some("{\"name\":\"value\"}"),
            initial_layout_class_list: &[],
        };
        let t = s.sign(&p, 1424221013, &e).unwrap();
        assert_eq!(
            t.token,
            "T1==cGFydG5lcl9pZD0xMjM0NTYmc2lnPWFkZmQ3MTY4NmI2OTk3MTJlZDE2M2Y5YTU2MTNhNmQ5YTU3NzIwMGY6c2Vzc2lvbl9pZD0xX01YNHhNak0wTlRaLWZsTmhkQ0JOWVhJZ01UVWdNVFE2TkRJNk1qTWdVRVJVSURJd01UUi1NQzQwT1RBeE16QXlOWDQmY3JlYXRlX3RpbWU9MTQyNDIyMTAxMyZub25jZT0wLjM5NDI2MDk4ODEwNTA4ODUmcm9sZT1tb2RlcmF0b3ImZXhwaXJlX3RpbWU9MTQyNDMwNzQxMyZjb25uZWN0aW9uX2RhdGE9JTdCJTIybmFtZSUyMiUzQSUyMnZhbHVlJTIyJTdEJmluaXRpYWxfbGF5b3V0X2NsYXNzX2xpc3Q9JnNjb3BlPXNlc3Npb24uY29ubmVjdA=="
        );
        assert_eq!(t.token_id, "0.3942609881050885");
    }

    /// §7.2: the community Go SDK sorts fields; the HMAC covers whatever is sent.
    #[test]
    fn go_sdk_vector_signature() {
        let data = "connection_data=foo%3Dbar&create_time=1577865600&expire_time=1577865600&initial_layout_class_list=&nonce=0.49893371771268225&role=publisher&session_id=1_MX40MDAwMDAwMX5-MTU3Nzg2NTYwMDAwMH54N2I0OE1RZ0RmK1lRRnFQUWg4dlZmT0t-QX4";
        assert_eq!(
            hex_lower(&hmac_sha1(b"<your api secret here>", data.as_bytes())),
            "2b4239d658a5dba44da0c22e39061c9eb5845115"
        );
        let t = encode_data("<your api key here>", b"<your api secret here>", data);
        assert!(
            t.starts_with("T1==cGFydG5lcl9pZD08eW91ciBhcGkga2V5IGhlcmU+JnNpZz0yYjQyMzlk"),
            "{t}"
        );
    }

    /// §7.5: opentok Python 3.13.0 T1 (its own field order and quote_plus encoding).
    #[test]
    fn python_sdk_vector_signature() {
        let data = format!(
            "session_id={SID}&create_time=1424221013&expire_time=1424307413&role=moderator&nonce=50885&initial_layout_class_list=&connection_data=%7B%22name%22%3A%22value%22%7D"
        );
        assert_eq!(
            hex_lower(&hmac_sha1(SECRET.as_bytes(), data.as_bytes())),
            "31cc37f7b36e192d9dc8a6b8d3011be74d217ef0"
        );
    }

    /// Independent verification: split at the first ':', recompute the HMAC, decode the fields.
    pub(crate) fn verify_and_fields(token: &str, secret: &[u8]) -> Vec<(String, String)> {
        use base64::Engine;
        let inner = base64::engine::general_purpose::STANDARD
            .decode(token.strip_prefix("T1==").unwrap())
            .unwrap();
        let inner = String::from_utf8(inner).unwrap();
        let (head, data) = inner.split_once(':').unwrap();
        let sig = head.split("&sig=").nth(1).unwrap();
        assert_eq!(sig, hex_lower(&hmac_sha1(secret, data.as_bytes())));
        data.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), percent_decode(v).unwrap())
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn any_connection_data_and_layout_survive_encoding(
            data in "\\PC{0,200}",
            classes in proptest::collection::vec("[^\\s]{1,12}", 0..6),
        ) {
            proptest::prop_assume!(data.len() <= 1000);
            let s = Signer::opentok(KEY, SECRET, OpenTokFormat::T1).unwrap();
            let e = Entropy { nonce: 0.25, jti: uuid::Uuid::nil() };
            let p = TokenParams { session_id: SID, role: Role::Publisher, expire_time: 2000, connection_data: Some(&data), initial_layout_class_list: &classes };
            let t = s.sign(&p, 1000, &e).unwrap();
            let fields = verify_and_fields(&t.token, SECRET.as_bytes());
            let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone()).unwrap();
            proptest::prop_assert_eq!(get("connection_data"), data);
            proptest::prop_assert_eq!(get("initial_layout_class_list"), classes.join(" "));
            proptest::prop_assert_eq!(get("scope"), "session.connect");
        }
    }
}

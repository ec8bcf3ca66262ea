//! Byte-level helpers shared by the three formats.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Percent-encodes like Node's `querystring.escape` (what opentok-node and
/// opentok-token use): every UTF-8 byte except `A-Z a-z 0-9 - _ . ! ~ * ' ( )`
/// becomes `%XX` with uppercase hex; a space is `%20`.
pub fn js_uri_escape(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// Decodes `%XX` escapes (and nothing else); `None` on a malformed escape or
/// invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub fn b64_std(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_into(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

pub use crate::domain::session_id::b64_lenient;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_node_querystring() {
        let mut s = String::new();
        js_uri_escape("a b!'()*~{\"name\":\"value\"}ç&=", &mut s);
        assert_eq!(s, "a%20b!'()*~%7B%22name%22%3A%22value%22%7D%C3%A7%26%3D");
        assert_eq!(
            percent_decode(&s).unwrap(),
            "a b!'()*~{\"name\":\"value\"}ç&="
        );
    }
}

//! Session IDs: their one canonical form, and which credential a session
//! belongs to.
//!
//! A session ID is a 2-character prefix (`1_`, `2_`) followed by URL-safe
//! base64 of `~`-separated fields; field 1 is the API key (OpenTok projects)
//! or the application id (Vonage applications). The SDKs decode leniently
//! (any prefix, either base64 alphabet, padding optional), so one session has
//! many spellings. The broker accepts only spellings with the prefix the
//! service uses (a digit and `_`) and names every session by one canonical
//! form: `1_` + unpadded URL-safe base64 of the decoded bytes. Rules, the
//! registration table, the session cache and the audit all use that form.
//! Ownership is strict: `fields[1]` must equal the credential's id exactly
//! (opentok-node's rule).

use super::TokenError;
use super::encoding::b64_lenient;
use crate::domain::session_id::owner_of;
pub use crate::domain::session_id::{InvalidSessionId, MAX_SESSION_ID_LEN, SessionId};

impl From<InvalidSessionId> for TokenError {
    fn from(e: InvalidSessionId) -> TokenError {
        TokenError::InvalidSessionId(e.0)
    }
}

/// The owner id (`fields[1]`) a session ID names. Lenient about the prefix
/// (as the SDKs are): used by signers and `token inspect`, after the edge.
pub fn session_owner(session_id: &str) -> Result<String, TokenError> {
    let invalid = |why: &str| TokenError::InvalidSessionId(why.to_owned());
    if session_id.is_empty() || session_id.len() > MAX_SESSION_ID_LEN {
        return Err(invalid("a session ID is 1 to 512 characters"));
    }
    let body = session_id.get(2..).ok_or_else(|| invalid("too short"))?;
    let bytes = b64_lenient(body).ok_or_else(|| invalid("it does not decode as base64"))?;
    Ok(owner_of(&bytes)?)
}

/// `Ok` when the session belongs to `owner_id`.
pub fn check_session_owned(session_id: &str, owner_id: &str) -> Result<(), TokenError> {
    let owner = session_owner(session_id)?;
    if owner == owner_id {
        Ok(())
    } else {
        Err(TokenError::SessionNotOwned { owner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoded samples of vonage-tokens.md §2.2.
    #[test]
    fn the_spec_samples_name_their_owner() {
        let cases = [
            (
                "1_MX4xMjM0NTZ-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4",
                "123456",
            ),
            (
                "1_MX42NTQzMjF-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4",
                "654321",
            ),
            (
                "2_MX44NTQ1MTF-flR1ZSBOb3YgMTIgMDk6NDA6NTkgUFNUIDIwMTN-MC43NjU0Nzh-",
                "854511",
            ),
            (
                "2_MX44NTQ1MTF-fjE0NzI0MzU2MDUyMjN-eVgwNFJhZmR6MjdockFHanpxNzBXaEFXfn4",
                "854511",
            ),
            (
                "2_MX4xNzAxMjYzMX4xMjcuMC4wLjF-V2VkIEZlYiAyNiAxODo1NzoyNCBQU1QgMjAxNH4wLjU0MDU4ODc0fg",
                "17012631",
            ),
            (
                "1_MX40MDAwMDAwMX5-MTU3Nzg2NTYwMDAwMH54N2I0OE1RZ0RmK1lRRnFQUWg4dlZmT0t-QX4",
                "40000001",
            ),
            (
                "1_MX40NzY2NTk3MX5-MTczOTUzODg5NDk1OX5ROW1jWEcxUXJOM1RJWXU4eStwcHgvZ3N-UH5-",
                "47665971",
            ),
            (
                "1_MX4yOWY3NjBmOC03Y2UxLTQ2YzktYWRlMy1mMmRlZGVlNGVkNWZ-fjE3MjY0NjI1ODg2NDd-MTF4TGExYmJoelBlR1FHbVhzbWd4STBrfn5-",
                "29f760f8-7ce1-46c9-ade3-f2dedee4ed5f",
            ),
            // The PHP fixture with one corrupted separator still names its key.
            (
                "1_MX4xMjM0NTY3OH4-VGh1IEZlYiAyNyAwNDozODozMSBQU1QgMjAxNH4wLjI0NDgyMjI",
                "12345678",
            ),
        ];
        for (sid, owner) in cases {
            assert_eq!(session_owner(sid).unwrap(), owner, "{sid}");
        }
    }

    #[test]
    fn ownership_is_exact_and_garbage_is_refused() {
        let sid = "1_MX4xMjM0NTZ-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4";
        assert!(check_session_owned(sid, "123456").is_ok());
        for other in ["12345", "1234567", "654321", ""] {
            let e = check_session_owned(sid, other).unwrap_err();
            assert_eq!(e.code(), "session_not_owned");
        }
        for bad in [
            "",
            "1_",
            "NOT A REAL SESSIONID",
            "blahblahblah",
            "1_!!!!",
            "1_YWJj",
        ] {
            let e = session_owner(bad).unwrap_err();
            assert_eq!(
                (e.code(), e.field()),
                ("invalid_session_id", "session_id"),
                "{bad:?}"
            );
        }
    }

    /// `1~123456~~1764000000000~session-1~`: its base64 has `-` (so a `+`
    /// spelling exists) and needs padding (so a `=` spelling exists).
    const SID: &str = "1_MX4xMjM0NTZ-fjE3NjQwMDAwMDAwMDB-c2Vzc2lvbi0xfg";

    #[test]
    fn every_spelling_of_one_session_has_one_canonical_form() {
        let canonical = SessionId::parse(SID).unwrap();
        assert_eq!(canonical.canonical(), SID);
        assert_eq!(canonical.for_token(), SID);
        assert_eq!(canonical.owner(), "123456");
        let body = &SID[2..];
        let std_alphabet = body.replace('-', "+").replace('_', "/");
        assert_ne!(std_alphabet, body, "the fixture must exercise the alphabet");
        for (spelling, token) in [
            (format!("2_{body}"), format!("2_{body}")),
            (format!("9_{body}"), format!("9_{body}")),
            (format!("1_{body}=="), SID.to_owned()),
            (format!("1_{std_alphabet}"), SID.to_owned()),
            (format!("2_{std_alphabet}=="), format!("2_{body}")),
        ] {
            let s = SessionId::parse(&spelling).unwrap();
            assert_eq!(s.canonical(), SID, "{spelling}");
            assert_eq!(s.for_token(), token, "{spelling}");
            assert_eq!(s.owner(), "123456");
        }
    }

    #[test]
    fn the_prefix_must_be_a_digit_and_underscore() {
        let body = &SID[2..];
        for bad in [
            format!("\u{0}\u{0}{body}"),
            format!("ab{body}"),
            format!("1-{body}"),
            format!("__{body}"),
            format!("_1{body}"),
            format!("\u{663}_{body}"), // an Arabic-Indic digit is not ASCII
            body.to_owned(),
            "1_".to_owned(),
        ] {
            let e = SessionId::parse(&bad).unwrap_err();
            assert_eq!(
                (e.code(), e.field()),
                ("invalid_session_id", "session_id"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_body_is_base64_and_nothing_else() {
        let body = &SID[2..];
        for bad in [
            format!("1_{body}==="),
            format!("1_{body}\u{0}"),
            format!("1_\u{0}{body}"),
            format!("1_{body} "),
            format!("1_{body}\n"),
            format!("1_{}={}", &body[..8], &body[8..]),
            format!("1_{body}%3D"),
            "1_".to_owned() + &"A".repeat(MAX_SESSION_ID_LEN),
        ] {
            let e = SessionId::parse(&bad).unwrap_err();
            assert_eq!(e.code(), "invalid_session_id", "{bad:?}");
        }
    }

    #[test]
    fn spec_samples_are_their_own_canonical_form_up_to_the_prefix() {
        for sid in [
            "1_MX4xMjM0NTZ-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4",
            "2_MX44NTQ1MTF-flR1ZSBOb3YgMTIgMDk6NDA6NTkgUFNUIDIwMTN-MC43NjU0Nzh-",
            "1_MX4yOWY3NjBmOC03Y2UxLTQ2YzktYWRlMy1mMmRlZGVlNGVkNWZ-fjE3MjY0NjI1ODg2NDd-MTF4TGExYmJoelBlR1FHbVhzbWd4STBrfn5-",
        ] {
            let s = SessionId::parse(sid).unwrap();
            assert_eq!(
                s.for_token(),
                sid,
                "a service-issued ID reaches the token unchanged"
            );
            assert_eq!(&s.canonical()[2..], &sid[2..]);
            assert!(s.canonical().starts_with("1_"));
        }
    }
}

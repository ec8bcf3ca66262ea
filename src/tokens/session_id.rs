//! Session IDs: which credential a session belongs to.
//!
//! A session ID is a 2-character prefix (`1_`, `2_`) followed by URL-safe
//! base64 of `~`-separated fields; field 1 is the API key (OpenTok projects)
//! or the application id (Vonage applications). Decoding is lenient about
//! padding, the alphabet and the prefix (as the SDKs are); ownership is strict:
//! `fields[1]` must equal the credential's id exactly (opentok-node's rule).

use super::TokenError;
use super::encoding::b64_lenient;

/// The owner id (`fields[1]`) a session ID names.
pub fn session_owner(session_id: &str) -> Result<String, TokenError> {
    let invalid = |why: &str| TokenError::InvalidSessionId(why.to_owned());
    if session_id.is_empty() || session_id.len() > 512 {
        return Err(invalid("a session ID is 1 to 512 characters"));
    }
    let body = session_id.get(2..).ok_or_else(|| invalid("too short"))?;
    let bytes = b64_lenient(body).ok_or_else(|| invalid("it does not decode as base64"))?;
    let text = String::from_utf8_lossy(&bytes);
    let fields: Vec<&str> = text.split('~').collect();
    match fields.get(1) {
        Some(owner) if fields.len() >= 2 && !owner.is_empty() => Ok((*owner).to_owned()),
        _ => Err(invalid(
            "it does not name the project or application it belongs to",
        )),
    }
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
}

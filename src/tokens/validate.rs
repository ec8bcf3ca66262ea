//! The validation rules of vonage-tokens.md §6, taking the strictest SDK at
//! each point: roles are the four wire values; the expiry is after `now` and at
//! most 30 days (2 592 000 s) after it, in whole seconds; connection data is at
//! most 1000 bytes of UTF-8; layout classes are non-empty, contain no
//! whitespace, and joined with single spaces are at most 1000 characters.

use super::{TokenError, TokenParams};
use crate::domain::Role;

pub const MAX_CONNECTION_DATA_BYTES: usize = 1000;
pub const MAX_LAYOUT_CLASS_LIST_CHARS: usize = 1000;
pub const MAX_TTL_SECS: i64 = 30 * 86_400;

pub fn parse_role(s: &str) -> Result<Role, TokenError> {
    s.parse::<Role>()
        .map_err(|_| TokenError::InvalidRole(s.chars().take(64).collect()))
}

/// Checks the list and returns it joined with single spaces.
pub fn validate_layout_class_list(list: &[String]) -> Result<String, TokenError> {
    for c in list {
        if c.is_empty() {
            return Err(TokenError::InvalidLayoutClassList(
                "a class name is empty".into(),
            ));
        }
        if c.chars().any(char::is_whitespace) {
            return Err(TokenError::InvalidLayoutClassList(
                "a class name contains whitespace; give each class separately".into(),
            ));
        }
    }
    let joined = list.join(" ");
    let n = joined.chars().count();
    if n > MAX_LAYOUT_CLASS_LIST_CHARS {
        return Err(TokenError::InvalidLayoutClassList(format!(
            "the classes joined are {n} characters; the limit is {MAX_LAYOUT_CLASS_LIST_CHARS}"
        )));
    }
    Ok(joined)
}

/// Validates everything but ownership; returns the joined layout list.
pub(super) fn validate(p: &TokenParams, now: i64) -> Result<String, TokenError> {
    // Strictly after now: a token expiring the second it is made is useless,
    // and every SDK that checks refuses it.
    if p.expire_time <= now {
        return Err(TokenError::ExpireTimeInPast {
            expire_time: p.expire_time,
            now,
        });
    }
    if p.expire_time > now + MAX_TTL_SECS {
        return Err(TokenError::ExpireTimeTooFar {
            expire_time: p.expire_time,
            now,
        });
    }
    if let Some(d) = p.connection_data
        && d.len() > MAX_CONNECTION_DATA_BYTES
    {
        return Err(TokenError::ConnectionDataTooLong { len: d.len() });
    }
    validate_layout_class_list(p.initial_layout_class_list)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "1_MX4xMjM0NTZ-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4";

    fn p<'a>(exp: i64, data: Option<&'a str>, layout: &'a [String]) -> TokenParams<'a> {
        TokenParams {
            session_id: SID,
            role: Role::Publisher,
            expire_time: exp,
            connection_data: data,
            initial_layout_class_list: layout,
        }
    }

    fn code(r: Result<String, TokenError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn expiry_boundaries() {
        let now = 1_000_000;
        assert_eq!(
            code(validate(&p(now - 1, None, &[]), now)),
            "expire_time_in_past"
        );
        assert_eq!(
            code(validate(&p(now, None, &[]), now)),
            "expire_time_in_past",
            "must be after now"
        );
        assert_eq!(code(validate(&p(now + 1, None, &[]), now)), "ok");
        assert_eq!(
            code(validate(&p(now + MAX_TTL_SECS, None, &[]), now)),
            "ok",
            "exactly 30 days is allowed"
        );
        assert_eq!(
            code(validate(&p(now + MAX_TTL_SECS + 1, None, &[]), now)),
            "expire_time_too_far"
        );
        let e = validate(&p(now + MAX_TTL_SECS + 1, None, &[]), now).unwrap_err();
        assert_eq!(e.field(), "expire_time");
    }

    #[test]
    fn connection_data_is_counted_in_utf8_bytes() {
        let ok = "x".repeat(1000);
        let over = "x".repeat(1001);
        let multibyte = "é".repeat(501); // 1002 bytes, 501 characters
        assert_eq!(code(validate(&p(2, Some(&ok), &[]), 1)), "ok");
        assert_eq!(
            code(validate(&p(2, Some(&over), &[]), 1)),
            "connection_data_too_long"
        );
        assert_eq!(
            code(validate(&p(2, Some(&multibyte), &[]), 1)),
            "connection_data_too_long"
        );
        assert_eq!(
            validate(&p(2, Some(&over), &[]), 1).unwrap_err().field(),
            "data"
        );
    }

    #[test]
    fn layout_class_lists() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            validate_layout_class_list(&s(&["focus", "inactive"])).unwrap(),
            "focus inactive"
        );
        assert_eq!(validate_layout_class_list(&[]).unwrap(), "");
        for bad in [s(&["focus", ""]), s(&["a b"]), s(&["tab\tbed"])] {
            assert_eq!(
                validate_layout_class_list(&bad).unwrap_err().code(),
                "invalid_layout_class_list",
                "{bad:?}"
            );
        }
        // 1000 characters joined is the limit: 500 + 1 space + 499.
        let at = vec!["a".repeat(500), "b".repeat(499)];
        assert!(validate_layout_class_list(&at).is_ok());
        let over = vec!["a".repeat(500), "b".repeat(500)];
        assert!(validate_layout_class_list(&over).is_err());
    }

    #[test]
    fn roles_are_the_four_wire_values() {
        for ok in ["subscriber", "publisher", "publisheronly", "moderator"] {
            assert_eq!(parse_role(ok).unwrap().as_str(), ok);
        }
        for bad in ["admin", "Publisher", "publisher-only", "5", ""] {
            let e = parse_role(bad).unwrap_err();
            assert_eq!((e.code(), e.field()), ("invalid_role", "role"));
        }
    }
}

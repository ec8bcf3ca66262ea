//! Page plumbing for the console: every page is rendered by a template in
//! `templates/console/` (see `views`), which escapes every interpolated
//! value, and goes out through `respond`, which sets the
//! Content-Security-Policy and no-store.

use actix_web::HttpResponse;
use actix_web::http::{StatusCode, header};
use askama::Template;

use super::Session;
use super::views::{ErrorBody, Layout, NavItem};

/// Percent-encodes a query-string value.
pub fn url(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// RFC 3339 UTC text of unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.replace_millisecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Security headers shared by every console page.
pub fn respond(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("content-security-policy", super::CSP))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("x-frame-options", "DENY"))
        .insert_header(("referrer-policy", "no-referrer"))
        .body(body)
}

fn layout(s: Option<&Session>, active: &str, title: &str, body: &str) -> askama::Result<String> {
    let mut nav = Vec::new();
    if let Some(s) = s {
        let mut items = vec![
            ("overview", "/console/overview", "Overview"),
            ("moderators", "/console/moderators", "Who got moderator"),
            ("audit", "/console/audit", "Audit"),
        ];
        if s.is_admin() {
            items.push(("policy", "/console/policy", "Policy"));
            items.push(("keys", "/console/keys", "Keys & credentials"));
        }
        nav = items
            .into_iter()
            .map(|(id, href, label)| NavItem {
                href,
                label,
                current: id == active,
            })
            .collect();
    }
    Layout {
        title,
        session: s,
        scopes: s.map(|s| s.scopes.names().join(", ")).unwrap_or_default(),
        nav,
        body,
    }
    .render()
}

/// Sends a rendered page; a template that cannot render (a bug, never
/// input) becomes a plain 500 page.
fn finish(status: StatusCode, page: askama::Result<String>) -> HttpResponse {
    match page {
        Ok(text) => respond(status, text),
        Err(e) => {
            tracing::error!(error = %e, "console template failed to render");
            respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Internal error</title><p>internal_error</p>".into(),
            )
        }
    }
}

/// A signed-in page: navigation for the session's scopes, the sign-out form
/// (with the CSRF token), and the body (rendered by a template).
pub fn page(s: &Session, active: &str, title: &str, body: &impl Template) -> HttpResponse {
    finish(
        StatusCode::OK,
        body.render()
            .and_then(|b| layout(Some(s), active, title, &b)),
    )
}

/// A page for a visitor without a session (sign-in, errors).
pub fn bare(status: StatusCode, title: &str, body: &impl Template) -> HttpResponse {
    finish(
        status,
        body.render().and_then(|b| layout(None, "", title, &b)),
    )
}

/// An error page: the status, the stable code and a message.
pub fn error_page(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    bare(
        status,
        "Refused",
        &ErrorBody {
            code,
            message,
            back: true,
        },
    )
}

/// An error shown inside a signed-in page.
pub fn error_in_page(s: &Session, status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let body = ErrorBody {
        code,
        message,
        back: false,
    };
    finish(
        status,
        body.render()
            .and_then(|b| layout(Some(s), "", "Refused", &b)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::views::{Chain, DryRun, DryRunPage, Overview, diff_lines};

    const HOSTILE: &str = "<script>\"x\"&'y'</script>";

    #[test]
    fn hostile_text_is_escaped_by_the_templates() {
        let page = error_page(StatusCode::BAD_REQUEST, HOSTILE, HOSTILE);
        let body = actix_web::body::to_bytes(page.into_body());
        let body = futures_util::FutureExt::now_or_never(body)
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        assert!(!body.contains("<script>"), "{body}");
        assert!(!body.contains("'y'"), "{body}");
        assert!(
            body.contains("&#60;script&#62;&#34;x&#34;&#38;&#39;y&#39;&#60;/script&#62;"),
            "{body}"
        );

        // Attribute values and diff lines too.
        let text = Overview {
            issued: 0,
            refused: 1,
            moderators: 0,
            chart: None,
            codes: vec![(format!("a\" onmouseover=\"x{HOSTILE}"), 1)],
            chain: Chain::Broken(HOSTILE.into()),
        }
        .render()
        .unwrap_or_default();
        assert!(
            !text.contains("<script>") && !text.contains("\" onmouseover"),
            "{text}"
        );
        let text = DryRunPage {
            outcome: DryRun::Valid {
                unchanged: false,
                warnings: vec![HOSTILE.into()],
                diff: diff_lines(&format!("+{HOSTILE}")),
                replay: Some(crate::console::views::ReplayView {
                    requests: 1,
                    approximate: 0,
                    rows: vec![("role_lowered".into(), 1, HOSTILE.into())],
                }),
            },
        }
        .render()
        .unwrap_or_default();
        assert!(
            !text.contains("<script>") && text.contains("+&#60;script&#62;"),
            "{text}"
        );
    }

    #[test]
    fn urls_and_times() {
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}

//! HTML building for the console: every interpolated value goes through
//! `esc` (text and attribute values alike), and every page goes out through
//! `respond`, which sets the Content-Security-Policy and no-store.

use actix_web::HttpResponse;
use actix_web::http::{StatusCode, header};

use super::Session;

/// Escapes text for HTML text and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

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

/// A `<time>` element: UTC in the text and the hover title; our script
/// rewrites the text into the viewer's time zone.
pub fn time(ms: i64) -> String {
    let t = rfc3339(ms);
    format!(
        "<time datetime=\"{t}\" title=\"{t} (UTC)\">{}</time>",
        t.replace('T', " ").replace('Z', " UTC")
    )
}

pub fn opt(v: &Option<String>) -> String {
    v.as_deref().map(esc).unwrap_or_else(|| "—".into())
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

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · token-broker console</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head>",
        esc(title)
    )
}

/// A signed-in page: navigation for the session's scopes, the sign-out form
/// (with the CSRF token), and `body`.
pub fn page(s: &Session, active: &str, title: &str, body: &str) -> HttpResponse {
    respond(StatusCode::OK, page_text(s, active, title, body))
}

pub fn page_text(s: &Session, active: &str, title: &str, body: &str) -> String {
    let mut nav = vec![
        ("overview", "/console/overview", "Overview"),
        ("moderators", "/console/moderators", "Who got moderator"),
        ("audit", "/console/audit", "Audit"),
    ];
    if s.is_admin() {
        nav.push(("policy", "/console/policy", "Policy"));
        nav.push(("keys", "/console/keys", "Keys &amp; credentials"));
    }
    let links: String = nav
        .iter()
        .map(|(id, href, label)| {
            let cur = if *id == active {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<li><a href=\"{href}\"{cur}>{label}</a></li>")
        })
        .collect();
    let scopes = s.scopes.names().join(", ");
    format!(
        "{}<body><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><span class=\"brand\">token-broker</span>\
         <span class=\"who\">tenant <strong id=\"tenant\">{}</strong> · key {} ({})</span>\
         <form method=\"post\" action=\"/console/sign-out\">{}<button type=\"submit\">Sign out</button></form>\
         </header><nav aria-label=\"Console\"><ul>{links}</ul></nav>\
         <main id=\"main\"><h1>{}</h1>{body}</main></body></html>",
        head(title),
        esc(&s.tenant),
        esc(&s.key_id),
        esc(&scopes),
        csrf_field(&s.csrf),
        esc(title),
    )
}

pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// A page for a visitor without a session (sign-in, errors).
pub fn bare(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    respond(
        status,
        format!(
            "{}<body><header><span class=\"brand\">token-broker</span></header>\
             <main id=\"main\"><h1>{}</h1>{body}</main></body></html>",
            head(title),
            esc(title)
        ),
    )
}

/// An error page: the status, the stable code and a message.
pub fn error_page(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    bare(
        status,
        "Refused",
        &format!(
            "<div class=\"error\" role=\"alert\"><p><code id=\"error-code\">{}</code></p><p>{}</p></div>\
             <p><a href=\"/console\">Back to the console</a></p>",
            esc(code),
            esc(message)
        ),
    )
}

/// An error shown inside a signed-in page.
pub fn error_in_page(s: &Session, status: StatusCode, code: &str, message: &str) -> HttpResponse {
    respond(
        status,
        page_text(
            s,
            "",
            "Refused",
            &format!(
                "<div class=\"error\" role=\"alert\"><p><code id=\"error-code\">{}</code></p><p>{}</p></div>",
                esc(code),
                esc(message)
            ),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped() {
        assert_eq!(
            esc("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}

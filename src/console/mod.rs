//! The web console at `/console`: server-rendered pages for a tenant's
//! auditors (`audit` keys) and admins (`admin` keys), served by the broker
//! itself with its assets embedded in the binary.
//!
//! Security model, in one place:
//! - Sign-in exchanges a tenant API key for a server-side session (a random
//!   256-bit id in an `HttpOnly; SameSite=Strict; Path=/console` cookie,
//!   `Secure` behind https as a trusted proxy reports it, or always with
//!   `console_secure_cookies`). The key is verified once and never stored: not
//!   in the browser, not in the session.
//! - Sessions expire (8 h absolute, 30 min idle) and end at sign-out or when
//!   their key is revoked (checked on every request against the store).
//! - Every POST carries the session's CSRF token (sign-in: a pre-session
//!   double-submit token); a mismatch is refused with 403 `csrf_failed`.
//! - Every page asks the same store and admin calls as the API with the
//!   tenant taken from the session, and checks the same scopes.
//! - A strict Content-Security-Policy: only our own script and stylesheet.

pub mod html;
mod pages;
pub mod session;
mod views;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

pub use session::{ABSOLUTE_TTL_MS, IDLE_TTL_MS, Session};

/// The policy every console response carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

async fn css() -> HttpResponse {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(ctype: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ctype)
        .insert_header((header::CACHE_CONTROL, "max-age=300"))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(body)
}

/// Registers the console's routes under `/console`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use pages::*;
    cfg.service(
        web::scope("/console")
            .app_data(
                web::FormConfig::default()
                    .limit(crate::routes::POLICY_BODY_LIMIT)
                    .error_handler(|e, _| {
                        actix_web::error::InternalError::from_response(
                            e.to_string(),
                            html::error_page(
                                actix_web::http::StatusCode::BAD_REQUEST,
                                "invalid_form",
                                "the form could not be read",
                            ),
                        )
                        .into()
                    }),
            )
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                actix_web::error::InternalError::from_response(
                    e.to_string(),
                    html::error_page(
                        actix_web::http::StatusCode::BAD_REQUEST,
                        "invalid_query",
                        &e.to_string(),
                    ),
                )
                .into()
            }))
            .route("", web::get().to(home))
            .route("/", web::get().to(home))
            .route("/assets/console.css", web::get().to(css))
            .route("/assets/console.js", web::get().to(js))
            .route("/sign-in", web::get().to(sign_in_form))
            .route("/sign-in", web::post().to(sign_in))
            .route("/sign-out", web::post().to(sign_out))
            .route("/overview", web::get().to(overview))
            .route("/moderators", web::get().to(moderators))
            .route("/moderators.csv", web::get().to(moderators_csv))
            .route("/audit", web::get().to(audit_browser))
            .route("/audit/{seq}", web::get().to(audit_event))
            .route("/audit/{seq}/proof", web::get().to(audit_event_proof))
            .route("/policy", web::get().to(policy))
            .route("/policy/versions/{version}", web::get().to(policy_version))
            .route("/policy/dry-run", web::post().to(policy_dry_run))
            .route("/policy/rollback", web::get().to(policy_rollback_confirm))
            .route("/policy/rollback", web::post().to(policy_rollback))
            .route("/keys", web::get().to(keys))
            .route("/keys", web::post().to(key_create))
            .route("/keys/{key_id}/revoke", web::post().to(key_revoke))
            .default_service(web::to(|| async {
                html::error_page(
                    actix_web::http::StatusCode::NOT_FOUND,
                    "route_not_found",
                    "no such console page",
                )
            })),
    );
}

/// Whether the console's cookies are marked `Secure`: always when the
/// operator set `console_secure_cookies`; otherwise when the request reached
/// the broker over https, directly or as a trusted proxy reports it
/// (`X-Forwarded-Proto`, `Forwarded: proto=`). From any other peer those
/// headers are ignored: a client does not choose its cookies' flags.
pub fn secure_cookies(req: &HttpRequest) -> bool {
    let forced = req
        .app_data::<web::Data<crate::state::AppState>>()
        .is_some_and(|s| s.settings.console_secure_cookies);
    forced
        || req.app_config().secure()
        || (crate::routes::client_addr::peer_is_trusted_proxy(req)
            && req.connection_info().scheme() == "https")
}

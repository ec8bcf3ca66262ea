//! The HTTP API: the whole route table is `configure` below. Handlers parse,
//! call one operation (`crate::broker`, `crate::admin`, the store), and map
//! the result; every failure is an `error::ApiError`.

pub mod audit;
pub mod client_addr;
pub mod credentials;
pub mod end_user;
pub mod error;
pub mod extractors;
pub mod health;
pub mod json;
pub mod keys;
pub mod openapi;
pub mod policy;
pub mod sessions;
pub mod span;
pub mod tokens;

use actix_web::{HttpResponse, web};

use error::ApiError;

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("route_not_found", "no such route"))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    ))
}

/// A resource whose unmatched methods get 405 in the API error shape.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// Largest policy apply body accepted over HTTP.
pub const POLICY_BODY_LIMIT: usize = 512 * 1024;

/// Registers every route, the extractor error handlers and the 404 fallback.
/// (The console, an HTML surface over the same services, is registered
/// beside it by `startup`, so the console may use this layer's pieces.)
pub fn configure(cfg: &mut web::ServiceConfig, body_limit: usize) {
    cfg.app_data(web::Data::new(json::BodyLimit(body_limit)))
        .app_data(web::QueryConfig::default().error_handler(|e, _| error::query_error(e).into()))
        .app_data(web::PathConfig::default().error_handler(|e, _| error::path_error(e).into()))
        .service(resource("/healthz").route(web::get().to(health::healthz)))
        .service(resource("/readyz").route(web::get().to(health::readyz)))
        .service(resource("/metrics").route(web::get().to(health::metrics)))
        .service(resource("/v1/whoami").route(web::get().to(keys::whoami)))
        .service(resource("/v1/tokens").route(web::post().to(tokens::issue)))
        .service(
            resource("/v1/tenants/{tenant}/tokens")
                .route(web::post().to(end_user::issue))
                .route(web::method(actix_web::http::Method::OPTIONS).to(end_user::preflight)),
        )
        .service(resource("/v1/decide").route(web::post().to(tokens::decide)))
        .service(
            resource("/v1/sessions/{session_id}")
                .route(web::put().to(sessions::put))
                .route(web::get().to(sessions::get)),
        )
        .service(
            resource("/v1/keys")
                .route(web::get().to(keys::list))
                .route(web::post().to(keys::create)),
        )
        .service(resource("/v1/keys/{key_id}").route(web::delete().to(keys::revoke)))
        .service(
            resource("/v1/policy")
                // Policy files are larger than token requests.
                .app_data(web::Data::new(json::BodyLimit(
                    POLICY_BODY_LIMIT.max(body_limit),
                )))
                .route(web::get().to(policy::current))
                .route(web::post().to(policy::apply)),
        )
        .service(resource("/v1/policy/versions").route(web::get().to(policy::history)))
        .service(resource("/v1/policy/versions/{version}").route(web::get().to(policy::version)))
        .service(resource("/v1/policy/rollback").route(web::post().to(policy::rollback)))
        .service(
            resource("/v1/policy/replay")
                .app_data(web::Data::new(json::BodyLimit(
                    POLICY_BODY_LIMIT.max(body_limit),
                )))
                .route(web::post().to(policy::replay)),
        )
        .service(
            resource("/v1/credentials/{name}")
                .route(web::put().to(credentials::put))
                .route(web::get().to(credentials::show))
                .route(web::delete().to(credentials::delete)),
        )
        .service(resource("/v1/credentials").route(web::get().to(credentials::list)))
        .service(resource("/v1/status").route(web::get().to(credentials::status)))
        .service(resource("/v1/audit").route(web::get().to(audit::query)))
        .service(resource("/v1/audit/summary").route(web::get().to(audit::summary)))
        .service(resource("/openapi.json").route(web::get().to(openapi::serve)))
        .service(resource("/v1/audit/checkpoint").route(web::get().to(audit::checkpoint)))
        .service(resource("/v1/audit/proof").route(web::get().to(audit::proof)))
        .default_service(web::to(not_found));
}

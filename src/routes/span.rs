//! The per-request span: method, path (never the query string: `GET
//! /v1/audit?token=…` must not put a token in the logs), request id, and the
//! response status recorded at the end.
//!
//! Every value a client controls is recorded with `Debug` (quoted, newlines
//! and control characters escaped), so it cannot end a log line and forge the
//! next: the unmatched path, and the error message, which may quote the body
//! (`unknown field …`).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

#[derive(Debug)]
pub struct BrokerRootSpan;

impl RootSpanBuilder for BrokerRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|r| r.to_string())
            .unwrap_or_default();
        tracing::info_span!(
            "http_request",
            http.method = %request.method(),
            http.route = ?request.match_pattern().unwrap_or_else(|| request.path().to_owned()),
            request_id = %request_id,
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let (status, error) = match outcome {
            Ok(r) => (r.status(), r.response().error()),
            Err(e) => (e.as_response_error().status_code(), Some(e)),
        };
        span.record("http.status_code", i64::from(status.as_u16()));
        if let Some(e) = error {
            // Like tracing-actix-web's default, but escaped (it records `Display`).
            let e = e.as_response_error();
            span.record("exception.message", tracing::field::debug(e.to_string()));
            span.record("exception.details", tracing::field::debug(format!("{e:?}")));
        }
        span.record(
            "otel.status_code",
            if status.is_server_error() {
                "ERROR"
            } else {
                "OK"
            },
        );
    }
}

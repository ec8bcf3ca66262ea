//! The per-request span: method, path (never the query string: `GET
//! /v1/audit?token=…` must not put a token in the logs), request id, and the
//! response status recorded at the end.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};

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
            http.route = %request.match_pattern().unwrap_or_else(|| request.path().to_owned()),
            request_id = %request_id,
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

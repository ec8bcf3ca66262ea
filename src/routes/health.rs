//! `GET /healthz` (the process is alive) and `GET /readyz` (the database is
//! reachable and migrated and the audit writer is committing; 503 otherwise).
//! Both are unauthenticated, so they say status and counts only: never a
//! tenant, credential, path or variable name (operators read the details in
//! `token-broker status` and the logs; a tenant admin reads its own tenant's
//! at `GET /v1/status`).

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let db =
        match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ready()).await {
            Ok(Ok(true)) => "ok",
            Ok(Ok(false)) => "not_migrated",
            Ok(Err(_)) => "unreachable",
            Err(_) => "timeout",
        };
    let audit = if state.audit.health.failing() {
        "failing"
    } else {
        "ok"
    };
    let (tenants, problems) = state.problem_counts();
    let ready = db == "ok" && audit == "ok";
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": db,
        "audit": audit,
        "tenants_loaded": tenants,
        "problems": problems,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: OpenMetrics text (docs/operations.md). No secrets; tenant
/// slugs as labels unless `metrics_tenant_labels` is off.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render(&state.gauges()))
}

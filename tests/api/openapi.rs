//! The OpenAPI document (issue 14, point 1): served anonymously at
//! `GET /openapi.json`, OpenAPI 3.1, and listing exactly the route table of
//! `routes::configure` (read from its source, so a route added without a row
//! in `routes::openapi::OPERATIONS` fails here) and exactly the error
//! catalogue that docs/api.md documents.

use std::collections::BTreeSet;

use serde_json::Value;
use token_broker::routes::error::CATALOGUE;

use crate::helpers::*;

/// (method, path) pairs registered in src/routes/mod.rs.
fn route_table() -> BTreeSet<(String, String)> {
    let src = include_str!("../../src/routes/mod.rs");
    let mut out = BTreeSet::new();
    for chunk in src.split("resource(\"").skip(1) {
        let path = chunk.split('"').next().unwrap().to_owned();
        // The chunk ends where the next service starts.
        let chunk = chunk.split(".service(").next().unwrap();
        for m in ["get", "post", "put", "delete", "patch"] {
            if chunk.contains(&format!("web::{m}()")) {
                out.insert((m.to_owned(), path.clone()));
            }
        }
        if chunk.contains("Method::OPTIONS") {
            out.insert(("options".to_owned(), path.clone()));
        }
    }
    out
}

async fn document(app: &TestApp) -> Value {
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_every_route_of_the_table() {
    let app = spawn_app().await;
    // Anonymous: no Authorization header.
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            documented.insert((m.clone(), path.clone()));
            assert!(op["operationId"].is_string(), "{m} {path}");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        }
    }
    let table = route_table();
    assert!(table.len() > 20, "the table parser found {table:?}");
    assert_eq!(documented, table, "document vs route table");
}

#[tokio::test]
async fn every_authenticated_route_names_its_scopes_and_every_error_is_in_the_catalogue() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for s in ["issue", "audit", "admin", "login_jwt"] {
        assert_eq!(schemes[s]["type"], "http", "{s}");
        assert_eq!(schemes[s]["scheme"], "bearer", "{s}");
    }
    let catalogue: BTreeSet<(String, String)> = CATALOGUE
        .iter()
        .map(|(s, c, _)| (s.to_string(), c.to_string()))
        .collect();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            let public = ["/healthz", "/readyz", "/metrics", "/openapi.json"]
                .contains(&path.as_str())
                || m == "options";
            let security = op["security"].as_array().cloned().unwrap_or_default();
            assert_eq!(security.is_empty(), public, "{m} {path}: {security:?}");
            let responses = op["responses"].as_object().unwrap();
            if !public {
                assert!(
                    responses.contains_key("401") && responses.contains_key("403"),
                    "{m} {path}"
                );
            }
            for (status, r) in responses {
                if !status.starts_with('4') && !status.starts_with('5') {
                    continue;
                }
                let codes = &r["content"]["application/json"]["schema"]["properties"]["error"]["properties"]
                    ["code"]["enum"];
                if m == "get" && path == "/readyz" && status == "503" {
                    continue; // readiness answers its own status shape
                }
                for c in codes
                    .as_array()
                    .unwrap_or_else(|| panic!("{m} {path} {status}: {r}"))
                {
                    let c = c.as_str().unwrap().to_owned();
                    assert!(
                        catalogue.contains(&(status.clone(), c.clone())),
                        "{m} {path}: {status} {c} not in the catalogue"
                    );
                }
            }
        }
    }
}

#[test]
fn docs_api_md_and_the_catalogue_list_the_same_codes() {
    let md = include_str!("../../docs/api.md");
    // The JSON API's catalogue is the `## Errors` section (the console, an
    // HTML surface, documents its own answers in its own section).
    let errors = &md[md.find("\n## Errors").unwrap()..];
    let errors = &errors[..errors[1..].find("\n## ").map_or(errors.len(), |i| i + 1)];
    let mut documented = BTreeSet::new();
    for line in errors.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let Ok(status) = cells[1].parse::<u16>() else {
            continue;
        };
        for code in cells[2].split(',') {
            documented.insert((status, code.trim().trim_matches('`').to_owned()));
        }
    }
    let catalogue: BTreeSet<(u16, String)> = CATALOGUE
        .iter()
        .map(|(s, c, _)| (*s, c.to_string()))
        .collect();
    assert_eq!(documented, catalogue);
}

//! The served OpenAPI document: valid 3.1, the same as the copy in
//! `api/openapi.json`, and listing exactly the routes the router serves.
//!
//! After changing an annotation, refresh the copy with
//! `UPDATE_OPENAPI=1 cargo test -p checkline-e2e openapi::`.

use checkline_e2e::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const COPY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.json");

#[tokio::test]
async fn the_served_document_is_the_contract_and_covers_every_route() {
    let mut app = TestApp::spawn_without_worker().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();

    // The copy in the repository is the served document.
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COPY, format!("{text}\n")).unwrap();
    }
    let copy: Value = serde_json::from_str(&std::fs::read_to_string(COPY).unwrap()).unwrap();
    assert!(
        copy == doc,
        "api/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test -p checkline-e2e openapi::"
    );

    // Structurally an OpenAPI 3.1 document.
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().unwrap();
    let mut operation_ids = std::collections::HashSet::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'));
        for (method, op) in item.as_object().unwrap() {
            assert!(
                ["get", "post", "patch", "put", "delete"].contains(&method.as_str()),
                "{method} {path}"
            );
            assert!(operation_ids.insert(op["operationId"].as_str().unwrap().to_owned()));
            assert!(!op["responses"].as_object().unwrap().is_empty());
            // Every path parameter is declared.
            for name in path
                .split('{')
                .skip(1)
                .map(|p| p.split('}').next().unwrap())
            {
                assert!(
                    op["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path"),
                    "{method} {path}: {name}"
                );
            }
        }
    }

    // The router serves every documented operation, and answers 405 to
    // every other method on a documented path.
    let product = app.create_product(3, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let alice = app.customer("alice");
    let order: Value = app.order(&alice, "k", &pid, 1).await.json().await.unwrap();
    let oid = order["id"].as_str().unwrap().to_owned();
    let all = [
        Method::GET,
        Method::POST,
        Method::PATCH,
        Method::PUT,
        Method::DELETE,
    ];
    let mut documented = 0;
    for (path, item) in paths {
        let concrete = if path.starts_with("/v1/orders/") {
            path.replace("{id}", &oid)
        } else {
            path.replace("{id}", &pid).replace("{sequence}", "1")
        };
        for method in &all {
            let listed = item.get(method.as_str().to_ascii_lowercase()).is_some();
            if path.ends_with("/events") && listed {
                // A stream: only its status line is awaited.
                let response = app
                    .http
                    .get(app.url(&concrete))
                    .bearer_auth(&alice)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK, "GET {path}");
                documented += 1;
                continue;
            }
            let token = if path.starts_with("/v1/orders") {
                &alice
            } else {
                &app.admin
            };
            let response = app
                .http
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(token)
                .header("idempotency-key", "route-check")
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if listed {
                documented += 1;
                assert_ne!(body["code"], "not_found", "{method} {path} is not routed");
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                let op = &item[method.as_str().to_ascii_lowercase()];
                assert!(
                    op["responses"][status.as_str()].is_object(),
                    "{method} {path} answered an undocumented {status}"
                );
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert_eq!(body["code"], "method_not_allowed");
            }
        }
    }
    assert_eq!(documented, 22);
    // Anything else is 404 not_found.
    let response = app.http.get(app.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.stop_worker().await;
    app.shutdown().await;
}

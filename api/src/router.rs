//! The router and the OpenAPI document, both from one list of routes.
//!
//! [`api_router`] is every resource's routes (`crate::routes`), each
//! registered with its OpenAPI operation, plus `GET /openapi.json`, which is
//! served here because it describes all the others. The router ([`router`],
//! with its middleware) and the document ([`document`]) are the two halves
//! of that one value, so the router cannot serve an API route the document
//! does not describe. The pages for people (`crate::pages`) are merged in
//! beside it: they are HTML, not part of the JSON API the document covers.

use std::sync::{Arc, OnceLock};

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge;
use crate::error::ApiError;
use crate::openapi::{self, ApiDoc};
use crate::pages;
use crate::routes;
use crate::state::AppState;

/// Every route, registered with its OpenAPI operation: the router and the
/// document come from this one list.
pub fn api_router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::router())
        .routes(routes!(serve_document))
}

/// The router, with its middleware.
///
/// From the outside in: request id and tracing (so every answer, refusals
/// included, carries `x-request-id`); `edge::admit` (431 for oversized
/// heads, the per-address rate limit); the body limit; then, on matched
/// routes only, `edge::bound` (the request time limit, the event stream
/// cap, the fingerprint of an idempotent write for the rate limit's retry
/// exemption, and axum's own extractor rejections turned into problem
/// documents). The per-subject rate limit is charged where the caller is
/// known (`edge`'s extractor of `auth::Caller`).
pub fn router(state: Arc<AppState>) -> Router {
    let body_max = state.config.body_max_bytes;
    let (routes, _openapi) = api_router().split_for_parts();
    routes
        .merge(pages::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), edge::bound))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_max))
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge::admit))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id)
                }))
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

/// The document the API serves.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_router, openapi) = api_router().split_for_parts();
    openapi::finish(openapi)
}

/// The served document as JSON, built once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut value = serde_json::to_value(document()).unwrap_or(Value::Null);
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "jsonSchemaDialect".to_owned(),
                json!("https://spec.openapis.org/oas/3.1/dialect/base"),
            );
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    })
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "getOpenApi",
    tag = "operations",
    summary = "This OpenAPI document",
    description = "Public. Generated from the code; `api/openapi.json` is a copy.",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.", body = Object)),
)]
pub async fn serve_document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProblemCode;
    use crate::openapi::operations;

    #[test]
    fn every_error_code_is_in_the_document() {
        let doc: Value = serde_json::from_str(document_json()).unwrap();
        let listed: Vec<&str> = doc["components"]["schemas"]["ProblemCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let codes: Vec<&str> = ProblemCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, codes);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc: Value = serde_json::from_str(document_json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let ops = operations(&document());
        let expected = [
            ("/v1/products", vec!["GET", "POST"]),
            ("/v1/products/{id}", vec!["GET", "PATCH"]),
            ("/v1/products/{id}/restock", vec!["POST"]),
            ("/v1/products/{id}/events", vec!["GET"]),
            ("/v1/products/events", vec!["GET"]),
            ("/v1/orders", vec!["GET", "POST"]),
            ("/v1/orders/{id}", vec!["GET"]),
            ("/v1/orders/{id}/events", vec!["GET"]),
            ("/v1/orders/{id}/confirm", vec!["POST"]),
            ("/v1/orders/{id}/cancel", vec!["POST"]),
            ("/v1/admin/stats", vec!["GET"]),
            ("/v1/admin/activity", vec!["GET"]),
            ("/v1/admin/audit", vec!["GET"]),
            ("/v1/admin/dead-letters", vec!["GET"]),
            ("/v1/admin/dead-letters/{sequence}/replay", vec!["POST"]),
            ("/healthz", vec!["GET"]),
            ("/readyz", vec!["GET"]),
            ("/metrics", vec!["GET"]),
            ("/openapi.json", vec!["GET"]),
        ];
        assert_eq!(ops.len(), expected.len(), "{ops:?}");
        for (path, methods) in expected {
            assert_eq!(ops[path], methods, "{path}");
        }
        // Every reference resolves.
        let text = document_json();
        for (marker, section) in [
            ("#/components/schemas/", "schemas"),
            ("#/components/responses/", "responses"),
        ] {
            for piece in text.split(marker).skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                assert!(
                    doc["components"][section][&name].is_object(),
                    "{marker}{name} is missing"
                );
            }
        }
        // Every operation answers the edge's problems and has an id.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                assert!(op["operationId"].is_string(), "{method} {path}");
                for status in ["429", "431", "503", "default"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

//! Operations endpoints: liveness, readiness, metrics, the OpenAPI document.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::app::AppState;

/// The contract as OpenAPI 3.1, kept beside the code.
pub const OPENAPI: &str = include_str!("../../openapi.json");

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when PostgreSQL and NATS are reachable; Redis only degrades.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let database = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let queue = state.client.connection_state() == async_nats::connection::State::Connected;
    let cache = state.cache.ping().await;
    let up = |ok: bool| if ok { "up" } else { "down" };
    let (status, word) = match (database && queue, cache) {
        (true, true) => (StatusCode::OK, "ok"),
        (true, false) => (StatusCode::OK, "degraded"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let body = json!({
        "status": word,
        "checks": {
            "database": up(database),
            "queue": up(queue),
            "cache": if cache { "up" } else { "degraded" },
        }
    });
    (status, Json(body)).into_response()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

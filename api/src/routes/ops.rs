//! Operations endpoints: liveness, readiness, metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// The operations routes, with their OpenAPI operations. `GET /openapi.json`
/// is served by `crate::router`, which builds the document from every route.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "getHealth",
    tag = "operations",
    summary = "Liveness",
    description = "Public. Answers `200` while the process runs, whatever the state of its dependencies.",
    responses((status = 200, description = "The process is running.", body = crate::openapi::Health)),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when PostgreSQL and NATS are reachable; Redis only degrades.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "getReadiness",
    tag = "operations",
    summary = "Readiness",
    description = "Public. `200` when the queue and the database are reachable, else `503`.",
    responses(
        (status = 200, description = "The database and the queue are reachable. A cache outage degrades (`status: degraded`) but does not make the API unready.",
            body = crate::openapi::Ready,
            examples(
                ("ok" = (summary = "Everything up", value = json!({"status": "ok", "checks": {"database": "up", "queue": "up", "cache": "up"}}))),
                ("degraded" = (summary = "Cache down", value = json!({"status": "degraded", "checks": {"database": "up", "queue": "up", "cache": "degraded"}}))),
            )),
        (status = 503, description = "Not ready: the body names what is down (or, like any request, the edge refused it: then a problem document).",
            content(
                (crate::openapi::Ready = "application/json",
                    example = json!({"status": "unavailable", "checks": {"database": "up", "queue": "down", "cache": "up"}})),
                (crate::openapi::ProblemDoc = "application/problem+json"),
            ),
            headers(("Retry-After" = Option<i64>, description = "With a problem document: seconds to wait before retrying."))),
    )
)]
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

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Public.",
    responses((status = 200, description = "Metrics in the Prometheus text exposition format.",
        content_type = "text/plain", body = String,
        example = json!("# HELP checkline_orders_accepted_total Orders queued and answered 202.\n# TYPE checkline_orders_accepted_total counter\ncheckline_orders_accepted_total 1027\n"))),
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render() + &state.products.metrics.render() + &state.backlog.render(),
    )
        .into_response()
}

//! `GET /v1/products/{id}/events`: a product's stock as server-sent events.
//! The first event is the current stock; then changes, coalesced to at most
//! one per `CHECKLINE_STOCK_EVENT_INTERVAL_MS`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use checkline_shared::domain::StockEvent;
use futures::Stream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::path_id;
use crate::hub::Watch;
use crate::state::AppState;

/// The stock events' route, with its OpenAPI operation.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(events))
}

#[utoipa::path(
    get,
    path = "/v1/products/{id}/events",
    operation_id = "streamProductStock",
    tag = "products",
    summary = "Stream stock changes",
    description = "Public. Answered as a problem document, before any event, when the id is invalid or unknown. Open streams are capped per deployment and per client address (`503 overloaded` beyond).",
    params(("id" = uuid::Uuid, Path, description = "Product id (canonical UUID); anything else is `400 invalid_id`.")),
    responses(
        (status = 200, description = "A server-sent event stream. Every event is named `stock` and its `data` is a `StockEvent` JSON object (`#/components/schemas/StockEvent`). The first event is the current stock; then one per change, possibly coalesced (at most a few per second).",
            content_type = "text/event-stream", body = crate::openapi::StockStreamEvent,
            example = json!({"event": "stock", "data": "{\"product_id\":\"0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d\",\"stock\":3,\"sold_out\":false}"})),
        (status = 400, response = crate::openapi::InvalidId),
        (status = 404, response = crate::openapi::ProductNotFound),
    )
)]
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = path_id(&id)?;
    // Subscribe before reading, so no change falls between the two.
    let watch = state.hub.stock.subscribe(id);
    let first = current(&state.pool, id)
        .await?
        .ok_or(ApiError::ProductNotFound)?;
    let keepalive = state.config.sse_keepalive;
    struct Cursor {
        state: Arc<AppState>,
        watch: Watch<uuid::Uuid, StockEvent>,
        last_sent: Option<StockEvent>,
        pending_first: Option<StockEvent>,
    }
    let cursor = Cursor {
        state,
        watch,
        last_sent: None,
        pending_first: Some(first),
    };
    let stream = futures::stream::unfold(cursor, |mut c| async move {
        if let Some(first) = c.pending_first.take() {
            c.last_sent = Some(first);
            return Some((Ok(stock_event(&first)), c));
        }
        loop {
            let interval = c.state.config.stock_event_interval;
            tokio::time::sleep(interval).await;
            let next = tokio::select! {
                changed = c.watch.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    *c.watch.rx.borrow_and_update()
                }
                () = tokio::time::sleep(c.state.config.stock_refresh) => {
                    let product_id = c.last_sent.map(|e| e.product_id)?;
                    current(&c.state.pool, product_id).await.ok().flatten()
                }
            };
            if let Some(event) = next.filter(|e| Some(*e) != c.last_sent) {
                c.last_sent = Some(event);
                return Some((Ok(stock_event(&event)), c));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keepalive)))
}

/// The product's stock event as PostgreSQL has it now; `None` if there is
/// no such product.
async fn current(pool: &sqlx::PgPool, id: uuid::Uuid) -> Result<Option<StockEvent>, ApiError> {
    Ok(checkline_shared::stock::events(pool, &[id])
        .await?
        .into_iter()
        .next())
}

fn stock_event(event: &StockEvent) -> Event {
    Event::default()
        .event("stock")
        .json_data(event)
        .unwrap_or_else(|_| Event::default().event("stock"))
}

//! Orders: the accept path (`POST /v1/orders`) and the ways to learn a
//! decision (poll, long poll, server-sent events).
//!
//! Accepting an order is: parse and authorize here, then hand the request to
//! the acceptor (`crate::accept`), which answers retries from the stored
//! order, refuses at once what can be refused (an unknown product, a product
//! sold out), writes the pending row (the unique (customer, key) constraint
//! settles races between identical requests), publishes it to the product's
//! queue subject and waits for JetStream's acknowledgement; only then 202.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use checkline_shared::db::{OrderRow, ORDER_COLUMNS};
use checkline_shared::domain::{Order, OrderStatus};
use futures::Stream;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use checkline_shared::reservations::{self, Asked, Refusal};

use crate::accept::{self, Accepted};
use crate::auth::Caller;
use crate::cart::CartRequest;
use crate::error::ApiError;
use crate::extract::{idempotency_key, json_body, page, path_id, request_id, split_page};
use crate::hub::Watch;
use crate::order_request::{CreateOrder, Limits};
use crate::state::AppState;

/// The orders' routes, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get))
        .routes(routes!(events))
        .routes(routes!(confirm))
        .routes(routes!(cancel))
}

/// One page of the caller's orders, newest first.
#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    items: Vec<Order>,
    /// Cursor for the next page (pass as `cursor`); null on the last page.
    next_cursor: Option<String>,
}

fn order_response(status: StatusCode, order: &Order, replayed: bool) -> Response {
    let mut response = (status, Json(order)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/orders/{}", order.id)) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

#[utoipa::path(
    post,
    path = "/v1/orders",
    operation_id = "createOrder",
    tag = "orders",
    summary = "Place an order",
    description = "Requires the `customer` role. Acceptance is asynchronous: the order is queued on its product's partition and decided in the order received, first come, first served. Follow it with `GET /v1/orders/{id}?wait=` or `GET /v1/orders/{id}/events`.\n\nHowever many identical requests (same customer, key and body) arrive, concurrently or not, at most one order exists for them. If a request with the same key and a different body races the original so closely that it cannot be refused with `422`, it ends as an order `rejected` with reason `idempotency_key_reused` and never takes stock. A request answered with a 4xx leaves no order and moves no stock.",
    security(("bearerAuth" = [])),
    params(
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[\\x21-\\x7E]{1,255}$",
            description = "Client-chosen key, 1-255 visible ASCII characters (0x21-0x7E), scoped per customer and kept at least 24 hours. Retrying the same key with the same body returns the same order; the same key with a different body is `422 idempotency_key_reused`. Absent: `400 missing_idempotency_key`; malformed: `400 invalid_idempotency_key`.",
            example = "checkout-7d1c2f9e"),
    ),
    request_body(content = CreateOrder, description = "The product and quantity."),
    responses(
        (status = 202, description = "The order is durably queued and will be decided (confirmed or rejected), even if any process is killed right after this answer. The body is the order, `pending`. A retry racing the original request may also get `202` with the same order id.",
            body = Order,
            headers(("Location" = String, description = "URL of the order, `/v1/orders/{id}`.")),
            example = json!({"id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "customer_id": "alice",
                "product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "quantity": 1, "status": "pending",
                "reason": null, "unit_price_cents": null, "total_cents": null,
                "created_at": "2026-11-22T10:00:01Z", "decided_at": null})),
        (status = 200, description = "Replay: a retry with the same Idempotency-Key and body (same customer). The body is the same order in its current state.",
            body = Order,
            headers(
                ("Location" = String, description = "URL of the order, `/v1/orders/{id}`."),
                ("Idempotent-Replayed" = String, description = "`true`: the answer replays an earlier request with the same Idempotency-Key."),
            ),
            example = json!({"id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "customer_id": "alice",
                "product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "quantity": 1, "status": "confirmed",
                "reason": null, "unit_price_cents": 19900, "total_cents": 19900,
                "created_at": "2026-11-22T10:00:01Z", "decided_at": "2026-11-22T10:00:01.042Z"})),
        (status = 400, response = crate::openapi::OrderBadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::ProductNotFound),
        (status = 409, response = crate::openapi::SoldOut),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 422, response = crate::openapi::IdempotencyKeyReused),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    // The extractors `Caller`, `HeaderMap` and `Bytes` in that order, by
    // hand: a `HeaderMap` extractor would copy every header of every order.
    let (mut parts, body) = request.into_parts();
    let caller = Caller::from_request_parts(&mut parts, &state).await?;
    let headers = std::mem::take(&mut parts.headers);
    let body = Bytes::from_request(Request::from_parts(parts, body), &state).await;
    let customer = caller.require_customer()?.clone();
    let key = idempotency_key(&headers)?;
    let input: CreateOrder = json_body(&headers, body, state.config.body_max_bytes)?;
    let limits = Limits {
        quantity_max: state.config.order_quantity_max,
        lines_max: state.config.order_lines_max,
        reserve_secs_max: state.config.reserve_secs_max,
    };
    let input = input.validate(&limits)?;
    let hash = input.hash();
    let request_id = request_id(&headers).map(str::to_owned);
    let accepted = match input.lines.as_slice() {
        [(product_id, quantity)] => {
            let request = accept::Request {
                customer,
                key,
                hash,
                product_id: *product_id,
                quantity: *quantity,
                reserve_secs: input.reserve_secs,
                request_id,
            };
            state.acceptor.submit(request).await?
        }
        _ => {
            let request = CartRequest {
                customer,
                key,
                hash,
                lines: input.lines,
                reserve_secs: input.reserve_secs,
                request_id,
            };
            state.carts.submit(request).await?
        }
    };
    match accepted {
        Accepted::New(order) => {
            tracing::debug!(order_id = %order.id, "order queued");
            Ok(order_response(StatusCode::ACCEPTED, &order, false))
        }
        Accepted::Replayed(order) => {
            state.products.saw_order(&order);
            Ok(order_response(StatusCode::OK, &order, true))
        }
    }
}

/// Reads an order the caller may see: cache first (decided orders only),
/// then PostgreSQL.
async fn load_visible(state: &AppState, caller: &Caller, id: Uuid) -> Result<Order, ApiError> {
    let order = match state.cache.order(id).await {
        Some(order) => order,
        None => {
            let order = crate::db::fetch_order(&state.pool, id)
                .await?
                .ok_or(ApiError::OrderNotFound)?;
            if order.status.is_final() {
                state.cache.put_orders(std::slice::from_ref(&order)).await;
            }
            order
        }
    };
    if caller.may_read_order_of(&order.customer_id) {
        state.products.saw_order(&order);
        Ok(order)
    } else {
        // Someone else's order does not exist, as far as this caller knows.
        Err(ApiError::OrderNotFound)
    }
}

/// How far an order has come: pending, then reserved, then a final state.
/// Events may arrive late or out of order; only a later stage counts.
fn stage(order: &Order) -> u8 {
    match order.status {
        OrderStatus::Pending => 0,
        OrderStatus::Reserved => 1,
        _ => 2,
    }
}

/// Waits until `order` moves on (pending to decided, reserved to final) or
/// `deadline` passes; returns the latest state.
pub async fn wait_for_change(
    state: &AppState,
    order: Order,
    deadline: tokio::time::Instant,
) -> Result<Order, ApiError> {
    if order.status.is_final() {
        return Ok(order);
    }
    let watch = state.hub.orders.subscribe(order.id);
    // Re-read after subscribing: the change may have come in between.
    wait_subscribed(state, order, watch, deadline, true).await
}

/// Waits on an order whose change events are already subscribed to.
/// `reread`: whether `order` may predate the subscription.
async fn wait_subscribed(
    state: &AppState,
    order: Order,
    watch: Watch<Uuid, Order>,
    deadline: tokio::time::Instant,
    reread: bool,
) -> Result<Order, ApiError> {
    let order = wait_for_stage(state, order, watch, deadline, reread).await?;
    state.products.saw_order(&order);
    Ok(order)
}

async fn wait_for_stage(
    state: &AppState,
    order: Order,
    mut watch: Watch<Uuid, Order>,
    deadline: tokio::time::Instant,
    mut reread: bool,
) -> Result<Order, ApiError> {
    let from = stage(&order);
    let mut latest = order;
    loop {
        // Also re-read periodically: a lost event must not leave us waiting.
        if reread {
            if let Some(current) = crate::db::fetch_order(&state.pool, latest.id).await? {
                latest = current;
            }
        }
        reread = true;
        if stage(&latest) > from {
            return Ok(latest);
        }
        tokio::select! {
            changed = watch.rx.changed() => {
                if changed.is_ok() {
                    if let Some(order) = watch.rx.borrow().clone().filter(|o| stage(o) > from) {
                        return Ok(order);
                    }
                }
            }
            () = tokio::time::sleep(state.config.wait_poll_interval) => {}
            () = tokio::time::sleep_until(deadline) => return Ok(latest),
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    operation_id = "getOrder",
    tag = "orders",
    summary = "Get an order",
    description = "The order's owner (role `customer`) or an `admin`. Another customer's order answers `404 order_not_found`. With `wait`, long-polls until the order is decided or the wait ends.",
    security(("bearerAuth" = [])),
    params(
        ("id" = Uuid, Path, description = "Order id (canonical UUID); anything else is `400 invalid_id`.", example = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"),
        ("wait" = Option<f64>, Query, minimum = 0, maximum = 30, example = 10,
            description = "Long-poll: seconds to wait for a pending order to be decided. The call returns as soon as the order is decided or the wait ends, whichever comes first. 0 (the default) answers at once."),
    ),
    responses(
        (status = 200, description = "The order. Visible at once after the `202` (pending), never pending again once decided.", body = Order),
        (status = 400, response = crate::openapi::InvalidIdOrRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::OrderNotFound),
    )
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Order>, ApiError> {
    caller.require_order_reader()?;
    let id = path_id(&id)?;
    let wait = crate::extract::wait(&query, state.config.wait_max_secs)?;
    if wait.is_zero() {
        return Ok(Json(load_visible(&state, &caller, id).await?));
    }
    // Subscribe before reading, so that one read covers the whole wait.
    let deadline = tokio::time::Instant::now() + wait;
    let watch = state.hub.orders.subscribe(id);
    let order = load_visible(&state, &caller, id).await?;
    if order.status.is_decided() {
        return Ok(Json(order));
    }
    Ok(Json(
        wait_subscribed(&state, order, watch, deadline, false).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/orders",
    operation_id = "listOrders",
    tag = "orders",
    summary = "List my orders",
    description = "Requires the `customer` role. Lists only the caller's own orders, newest first; follow `next_cursor` until it is null.",
    security(("bearerAuth" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Page size (default 50)."),
        ("cursor" = Option<String>, Query, format = Uuid, description = "`next_cursor` from the previous page. Omit for the first page; anything else is `400 invalid_request`."),
    ),
    responses(
        (status = 200, description = "One page of the caller's orders, newest first.", body = OrderPage),
        (status = 400, response = crate::openapi::InvalidRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<OrderPage>, ApiError> {
    let customer = caller.require_customer()?;
    let (limit, cursor) = page(&query)?;
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = $1 AND ($2::uuid IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(customer.as_str())
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let items: Vec<Order> = rows.into_iter().map(Order::from).collect();
    let (items, next_cursor) = split_page(items, limit, |o| o.id);
    for order in &items {
        state.products.saw_order(order);
    }
    Ok(Json(OrderPage { items, next_cursor }))
}

/// Server-sent events: the current state first, then the decision, then the
/// stream ends. A reconnect (with `Last-Event-ID` or not) starts again from
/// the current state, so it cannot miss the decision.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/events",
    operation_id = "streamOrder",
    tag = "orders",
    summary = "Stream an order's state",
    description = "The order's owner (role `customer`) or an `admin`. A reconnect, with `Last-Event-ID` or not, never misses the decision. Open streams are capped per deployment and per client address (`503 overloaded` beyond).",
    security(("bearerAuth" = [])),
    params(
        ("id" = Uuid, Path, description = "Order id (canonical UUID); anything else is `400 invalid_id`."),
        ("Last-Event-ID" = Option<String>, Header, description = "Sent by an EventSource client when it reconnects. Accepted; the stream always starts with the order's current state, so a reconnect never misses the decision."),
    ),
    responses(
        (status = 200, description = "A server-sent event stream. Every event is named `order` and its `data` is an `Order` JSON object (`#/components/schemas/Order`). The first event is the current state, then one per change; the stream ends after the decision (at once if already decided).",
            content_type = "text/event-stream", body = crate::openapi::OrderStreamEvent,
            example = json!({"event": "order", "id": "confirmed", "data": "{\"id\":\"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d\",\"customer_id\":\"alice\",\"product_id\":\"0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d\",\"quantity\":1,\"status\":\"confirmed\",\"reason\":null,\"unit_price_cents\":19900,\"total_cents\":19900,\"created_at\":\"2026-11-22T10:00:01Z\",\"decided_at\":\"2026-11-22T10:00:01.042Z\"}"})),
        (status = 400, response = crate::openapi::InvalidId),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::OrderNotFound),
    )
)]
pub async fn events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require_order_reader()?;
    let id = path_id(&id)?;
    let order = load_visible(&state, &caller, id).await?;
    let keepalive = state.config.sse_keepalive;
    enum Phase {
        Current(Order),
        Waiting(Order),
        Done,
    }
    let stream = futures::stream::unfold(Phase::Current(order), move |phase| {
        let state = state.clone();
        async move {
            let order = match phase {
                Phase::Done => return None,
                Phase::Current(order) => order,
                Phase::Waiting(order) => {
                    // No deadline: the stream lives until the decision or
                    // until the client goes away (which drops this future).
                    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
                    match wait_for_change(&state, order, far).await {
                        Ok(order) => order,
                        Err(err) => {
                            tracing::warn!(error = %err, "order stream ended early");
                            return None;
                        }
                    }
                }
            };
            let event = order_event(&order);
            let next = if order.status.is_final() {
                Phase::Done
            } else {
                Phase::Waiting(order)
            };
            Some((Ok(event), next))
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keepalive)))
}

fn order_event(order: &Order) -> Event {
    Event::default()
        .event("order")
        .id(order.status.as_str())
        .json_data(order)
        .unwrap_or_else(|_| Event::default().event("order"))
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/confirm",
    operation_id = "confirmOrder",
    tag = "orders",
    summary = "Confirm a reserved order",
    description = "The order's owner (role `customer`) or an `admin`; no body. Moves a `reserved` order to `confirmed` (call it once payment went through). Confirming a confirmed order answers `200` with the same order. A confirm answered `200` is never undone by expiry; a confirm that finds the reservation over expires it and answers `409 reservation_expired`.",
    security(("bearerAuth" = [])),
    params(("id" = Uuid, Path, description = "Order id (canonical UUID); anything else is `400 invalid_id`.")),
    responses(
        (status = 200, description = "The order, `confirmed`.", body = Order),
        (status = 400, response = crate::openapi::InvalidId),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::OrderNotFound),
        (status = 409, response = crate::openapi::ConfirmConflict),
    )
)]
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    change(&state, &caller, &id, Asked::Confirm).await
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/cancel",
    operation_id = "cancelOrder",
    tag = "orders",
    summary = "Cancel a pending or reserved order",
    description = "The order's owner (role `customer`) or an `admin`; no body. A `reserved` order becomes `cancelled` and its units go back to stock (to orders queued after the return); a `pending` order becomes `cancelled` and takes nothing when its turn comes. Cancelling a cancelled order answers `200` with the same order.",
    security(("bearerAuth" = [])),
    params(("id" = Uuid, Path, description = "Order id (canonical UUID); anything else is `400 invalid_id`.")),
    responses(
        (status = 200, description = "The order, `cancelled`.", body = Order),
        (status = 400, response = crate::openapi::InvalidId),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::OrderNotFound),
        (status = 409, response = crate::openapi::CancelConflict),
    )
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    change(&state, &caller, &id, Asked::Cancel).await
}

/// A confirm or cancel: the change in PostgreSQL (`shared::reservations`),
/// then, after its commit, the returned units queued and everyone told.
async fn change(
    state: &AppState,
    caller: &Caller,
    id: &str,
    asked: Asked,
) -> Result<Json<Order>, ApiError> {
    caller.require_order_reader()?;
    let id = path_id(id)?;
    // Another customer's order does not exist, as far as this caller knows.
    let customer = (!caller.admin).then(|| caller.subject.as_str());
    let change = reservations::change(&state.pool, id, customer, asked)
        .await?
        .ok_or(ApiError::OrderNotFound)?;
    // Units on their way back keep the products open at the door (here at
    // once, on the other instances by the announcement).
    for (_, message) in &change.returns {
        if let checkline_shared::messages::QueueMessage::Return {
            return_id,
            product_id,
            ..
        } = message
        {
            state.catalog.restocking(*product_id, *return_id);
        }
    }
    checkline_shared::events::announce_returns(&state.client, &state.subjects, &change.returns)
        .await;
    // The return rows are the outbox: what is not queued here, the
    // worker's sweep queues.
    for chunk in change.returns.chunks(state.publisher.batch_max().max(1)) {
        if let Err(err) = state.publisher.publish_atomic(chunk, None).await {
            tracing::warn!(error = %err, "returned units not queued; the sweep will");
        }
    }
    checkline_shared::events::publish_orders(
        &state.client,
        &state.subjects,
        std::slice::from_ref(&change.order),
    )
    .await;
    state.products.order_changed(&change.order);
    let products: Vec<Uuid> = change.order.lines.iter().map(|l| l.product_id).collect();
    checkline_shared::events::publish_stock(&state.client, &state.subjects, &state.pool, &products)
        .await;
    change.result.map_err(|refusal| match refusal {
        Refusal::Pending => ApiError::OrderPending,
        Refusal::Expired => ApiError::ReservationExpired,
        Refusal::Cancelled => ApiError::OrderCancelled,
        Refusal::Rejected => ApiError::OrderRejected,
        Refusal::Confirmed => ApiError::OrderConfirmed,
    })?;
    Ok(Json(change.order))
}

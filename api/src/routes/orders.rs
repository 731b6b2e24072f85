//! Orders: the accept path (`POST /v1/orders`) and the ways to learn a
//! decision (poll, long poll, server-sent events).
//!
//! Accepting an order is: parse and authorize; look the key up (a retry is
//! answered from the stored order); refuse at once what can be refused (an
//! unknown product, a product sold out); write the pending row, whose unique
//! (customer, key) constraint settles races between identical requests;
//! publish to the product's queue subject and wait for JetStream's
//! acknowledgement; only then answer 202.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use checkline_shared::db::{OrderRow, ORDER_COLUMNS};
use checkline_shared::domain::{parse_id, CustomerId, IdempotencyKey, Order};
use checkline_shared::messages::QueueMessage;
use futures::Stream;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{idempotency_key, json_body, page, path_id, request_id};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrder {
    product_id: String,
    quantity: i64,
}

#[derive(Serialize)]
pub struct OrderPage {
    items: Vec<Order>,
    next_cursor: Option<String>,
}

/// SHA-256 over the parts of a request that a retry must repeat.
pub fn request_hash(parts: &[&str]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher.finalize().to_vec()
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

pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let customer = caller.require_customer()?.clone();
    let key = idempotency_key(&headers)?;
    let input: CreateOrder = json_body(&headers, body, state.config.body_max_bytes)?;
    let product_id = parse_id(&input.product_id)
        .ok_or_else(|| ApiError::InvalidRequest("product_id must be a UUID".into()))?;
    let max = state.config.order_quantity_max;
    if !(1..=max).contains(&input.quantity) {
        return Err(ApiError::InvalidRequest(format!(
            "quantity must be from 1 to {max}"
        )));
    }
    let quantity = input.quantity as i32;
    let hash = request_hash(&["order", &product_id.to_string(), &quantity.to_string()]);
    let request_id = request_id(&headers).map(str::to_owned);

    // Two passes at most: a lost insert race is answered as a replay.
    for _ in 0..2 {
        if let Some(response) =
            replay(&state, &customer, &key, &hash, request_id.as_deref()).await?
        {
            return Ok(response);
        }
        let product = crate::routes::products::fetch(&state.pool, product_id)
            .await?
            .ok_or(ApiError::ProductNotFound)?;
        if product.stock == 0 {
            state.metrics.sold_out_fast.inc();
            return Err(ApiError::SoldOut);
        }
        let row: Option<OrderRow> = sqlx::query_as(&format!(
            "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING {ORDER_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(customer.as_str())
        .bind(key.as_str())
        .bind(&hash)
        .bind(product_id)
        .bind(quantity)
        .bind(product.partition)
        .fetch_optional(&state.pool)
        .await?;
        let Some(row) = row else { continue };
        let order = Order::from(row);
        let message = QueueMessage::Order {
            order_id: order.id,
            product_id,
            customer_id: order.customer_id.clone(),
            quantity,
            accepted_at: order.created_at,
        };
        if let Err(err) = state
            .enqueue(product.partition, &message, request_id.as_deref())
            .await
        {
            // Not accepted: take the row back so the 503 means "nothing
            // happened". If the message did reach the queue after all, the
            // worker finds no pending row and skips it; if the delete fails,
            // the worker's sweep queues the order later and a retry with the
            // same key shows its fate.
            let _ = sqlx::query("DELETE FROM orders WHERE id = $1 AND status = 'pending'")
                .bind(order.id)
                .execute(&state.pool)
                .await;
            return Err(err);
        }
        state.metrics.orders_accepted.inc();
        tracing::debug!(order_id = %order.id, %product_id, partition = product.partition, "order queued");
        return Ok(order_response(StatusCode::ACCEPTED, &order, false));
    }
    Err(ApiError::Internal(
        "idempotency key lookup did not settle".into(),
    ))
}

/// Answers a retry of a known key: the stored order if the request matches,
/// 422 if the key was used for something else.
async fn replay(
    state: &Arc<AppState>,
    customer: &CustomerId,
    key: &IdempotencyKey,
    hash: &[u8],
    request_id: Option<&str>,
) -> Result<Option<Response>, ApiError> {
    #[derive(sqlx::FromRow)]
    struct Existing {
        #[sqlx(flatten)]
        order: OrderRow,
        request_hash: Vec<u8>,
        partition: i32,
    }
    let existing: Option<Existing> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS}, request_hash, partition FROM orders \
         WHERE customer_id = $1 AND idempotency_key = $2"
    ))
    .bind(customer.as_str())
    .bind(key.as_str())
    .fetch_optional(&state.pool)
    .await?;
    let Some(existing) = existing else {
        return Ok(None);
    };
    if existing.request_hash != hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let order = Order::from(existing.order);
    let age = (chrono::Utc::now() - order.created_at)
        .to_std()
        .unwrap_or_default();
    if !order.status.is_decided() && age > state.config.common.requeue_after {
        // Its first publish may never have reached the queue.
        let message = QueueMessage::Order {
            order_id: order.id,
            product_id: order.product_id,
            customer_id: order.customer_id.clone(),
            quantity: order.quantity,
            accepted_at: order.created_at,
        };
        let _ = state
            .enqueue(existing.partition, &message, request_id)
            .await;
    }
    state.metrics.orders_replayed.inc();
    Ok(Some(order_response(StatusCode::OK, &order, true)))
}

/// Reads an order the caller may see: cache first (decided orders only),
/// then PostgreSQL.
async fn load_visible(state: &AppState, caller: &Caller, id: Uuid) -> Result<Order, ApiError> {
    let order = match state.cache.order(id).await {
        Some(order) => order,
        None => {
            let order = checkline_shared::db::fetch_order(&state.pool, id)
                .await?
                .ok_or(ApiError::OrderNotFound)?;
            if order.status.is_decided() {
                state.cache.put_orders(std::slice::from_ref(&order)).await;
            }
            order
        }
    };
    if caller.may_read_order_of(&order.customer_id) {
        Ok(order)
    } else {
        // Someone else's order does not exist, as far as this caller knows.
        Err(ApiError::OrderNotFound)
    }
}

/// Waits until `order` is decided or `deadline` passes; returns the latest state.
pub async fn wait_for_decision(
    state: &AppState,
    order: Order,
    deadline: tokio::time::Instant,
) -> Result<Order, ApiError> {
    if order.status.is_decided() {
        return Ok(order);
    }
    let mut watch = state.hub.orders.subscribe(order.id);
    let mut latest = order;
    loop {
        // Re-read after subscribing, and periodically: an event published
        // before the subscription, or lost, must not leave us waiting.
        if let Some(current) = checkline_shared::db::fetch_order(&state.pool, latest.id).await? {
            latest = current;
        }
        if latest.status.is_decided() {
            return Ok(latest);
        }
        tokio::select! {
            changed = watch.rx.changed() => {
                if changed.is_ok() {
                    if let Some(order) = watch.rx.borrow().clone().filter(|o| o.status.is_decided()) {
                        return Ok(order);
                    }
                }
            }
            () = tokio::time::sleep(state.config.wait_poll_interval) => {}
            () = tokio::time::sleep_until(deadline) => return Ok(latest),
        }
    }
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Order>, ApiError> {
    let id = path_id(&id)?;
    let mut wait = Duration::ZERO;
    for (name, value) in &query {
        if name != "wait" {
            return Err(ApiError::InvalidRequest(format!(
                "unknown query parameter {name:?}"
            )));
        }
        let max = state.config.wait_max_secs as f64;
        let secs = value
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && (0.0..=max).contains(s))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "wait must be a number of seconds from 0 to {max}"
                ))
            })?;
        wait = Duration::from_secs_f64(secs);
    }
    let order = load_visible(&state, &caller, id).await?;
    if wait.is_zero() || order.status.is_decided() {
        return Ok(Json(order));
    }
    let deadline = tokio::time::Instant::now() + wait;
    Ok(Json(wait_for_decision(&state, order, deadline).await?))
}

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
    let mut items: Vec<Order> = rows.into_iter().map(Order::from).collect();
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|o| o.id.to_string())
    } else {
        None
    };
    Ok(Json(OrderPage { items, next_cursor }))
}

/// Server-sent events: the current state first, then the decision, then the
/// stream ends. A reconnect (with `Last-Event-ID` or not) starts again from
/// the current state, so it cannot miss the decision.
pub async fn events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
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
                    match wait_for_decision(&state, order, far).await {
                        Ok(order) => order,
                        Err(err) => {
                            tracing::warn!(error = %err, "order stream ended early");
                            return None;
                        }
                    }
                }
            };
            let event = order_event(&order);
            let next = if order.status.is_decided() {
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

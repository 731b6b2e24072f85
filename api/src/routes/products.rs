//! Products: catalogue reads (public), management and restock (admin).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use checkline_shared::db::{ProductRow, PRODUCT_COLUMNS};
use checkline_shared::domain::{Product, RestockResult};
use checkline_shared::messages::QueueMessage;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{idempotency_key, json_body, page, path_id, request_id};

pub const SKU_MAX: usize = 64;
pub const NAME_MAX: usize = 200;
pub const PRICE_MAX: i64 = 1_000_000_000_000;
pub const STOCK_MAX: i64 = 1_000_000_000;
pub const MAX_PER_CUSTOMER_MAX: i64 = 1_000_000;
pub const RESTOCK_MAX: i64 = 1_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProduct {
    sku: String,
    name: String,
    price_cents: i64,
    stock: i64,
    #[serde(default)]
    max_per_customer: Option<i64>,
    #[serde(default)]
    active: Option<bool>,
}

/// `Some(None)` when the field is present and null, `None` when absent.
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchProduct {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    price_cents: Option<i64>,
    #[serde(default, deserialize_with = "double_option")]
    max_per_customer: Option<Option<i64>>,
    #[serde(default)]
    active: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    quantity: i64,
}

#[derive(sqlx::FromRow)]
struct ExistingRestock {
    id: Uuid,
    request_hash: Vec<u8>,
    status: String,
    stock_after: Option<i64>,
    partition: i32,
    created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize)]
pub struct ProductPage {
    items: Vec<Product>,
    next_cursor: Option<String>,
}

fn check_sku(sku: &str) -> Result<(), ApiError> {
    let ok = (1..=SKU_MAX).contains(&sku.chars().count()) && !sku.chars().any(char::is_control);
    ok.then_some(()).ok_or_else(|| {
        ApiError::InvalidRequest(format!("sku must be 1-{SKU_MAX} printable characters"))
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=NAME_MAX).contains(&name.chars().count()) && !name.chars().any(char::is_control);
    ok.then_some(()).ok_or_else(|| {
        ApiError::InvalidRequest(format!("name must be 1-{NAME_MAX} printable characters"))
    })
}

fn check_range(field: &str, value: i64, min: i64, max: i64) -> Result<(), ApiError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "{field} must be from {min} to {max}"
        )))
    }
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let input: CreateProduct = json_body(&headers, body, state.config.body_max_bytes)?;
    check_sku(&input.sku)?;
    check_name(&input.name)?;
    check_range("price_cents", input.price_cents, 0, PRICE_MAX)?;
    check_range("stock", input.stock, 0, STOCK_MAX)?;
    if let Some(max) = input.max_per_customer {
        check_range("max_per_customer", max, 1, MAX_PER_CUSTOMER_MAX)?;
    }
    let id = Uuid::now_v7();
    let result: Result<ProductRow, sqlx::Error> = sqlx::query_as(&format!(
        "INSERT INTO products (id, sku, name, price_cents, stock, initial_stock, max_per_customer, active, partition) \
         VALUES ($1, $2, $3, $4, $5, $5, $6, $7, (nextval('product_partition_seq') % $8)::int) \
         RETURNING {PRODUCT_COLUMNS}"
    ))
    .bind(id)
    .bind(&input.sku)
    .bind(&input.name)
    .bind(input.price_cents)
    .bind(input.stock)
    .bind(input.max_per_customer.map(|m| m as i32))
    .bind(input.active.unwrap_or(true))
    .bind(i64::from(state.config.common.partitions))
    .fetch_one(&state.pool)
    .await;
    let product = match result {
        Ok(row) => Product::from(row),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("products_sku_key") => {
            return Err(ApiError::SkuTaken)
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(product_id = %product.id, partition = product.partition, "product created");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/products/{}", product.id))],
        Json(product),
    )
        .into_response())
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<ProductPage>, ApiError> {
    let (limit, cursor) = page(&query)?;
    let rows: Vec<ProductRow> = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
    ))
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let mut items: Vec<Product> = rows.into_iter().map(Product::from).collect();
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|p| p.id.to_string())
    } else {
        None
    };
    Ok(Json(ProductPage { items, next_cursor }))
}

pub async fn fetch(pool: &PgPool, id: Uuid) -> Result<Option<Product>, ApiError> {
    let row: Option<ProductRow> = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Product::from))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Product>, ApiError> {
    let id = path_id(&id)?;
    fetch(&state.pool, id)
        .await?
        .map(Json)
        .ok_or(ApiError::ProductNotFound)
}

pub async fn patch(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Product>, ApiError> {
    caller.require_admin()?;
    let id = path_id(&id)?;
    let input: PatchProduct = json_body(&headers, body, state.config.body_max_bytes)?;
    if input.name.is_none()
        && input.price_cents.is_none()
        && input.max_per_customer.is_none()
        && input.active.is_none()
    {
        return Err(ApiError::InvalidRequest(
            "give at least one of name, price_cents, max_per_customer, active".into(),
        ));
    }
    if let Some(name) = &input.name {
        check_name(name)?;
    }
    if let Some(price) = input.price_cents {
        check_range("price_cents", price, 0, PRICE_MAX)?;
    }
    if let Some(Some(max)) = input.max_per_customer {
        check_range("max_per_customer", max, 1, MAX_PER_CUSTOMER_MAX)?;
    }
    let row: Option<ProductRow> = sqlx::query_as(&format!(
        "UPDATE products SET name = COALESCE($2, name), price_cents = COALESCE($3, price_cents), \
             max_per_customer = CASE WHEN $4 THEN $5 ELSE max_per_customer END, \
             active = COALESCE($6, active), updated_at = now() \
         WHERE id = $1 RETURNING {PRODUCT_COLUMNS}"
    ))
    .bind(id)
    .bind(&input.name)
    .bind(input.price_cents)
    .bind(input.max_per_customer.is_some())
    .bind(input.max_per_customer.flatten().map(|m| m as i32))
    .bind(input.active)
    .fetch_optional(&state.pool)
    .await?;
    row.map(|r| Json(Product::from(r)))
        .ok_or(ApiError::ProductNotFound)
}

/// Restocks travel through the product's queue like orders, so they take
/// effect in order with the checkouts around them. The call waits a bounded
/// time for the worker: 200 once applied, 202 if still queued.
pub async fn restock(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let product_id = path_id(&id)?;
    let key = idempotency_key(&headers)?;
    let input: RestockBody = json_body(&headers, body, state.config.body_max_bytes)?;
    check_range("quantity", input.quantity, 1, RESTOCK_MAX)?;
    let hash = crate::routes::orders::request_hash(&[
        "restock",
        &product_id.to_string(),
        &input.quantity.to_string(),
    ]);

    for _ in 0..3 {
        let existing: Option<ExistingRestock> = sqlx::query_as(
            "SELECT id, request_hash, status, stock_after, partition, created_at FROM restocks \
             WHERE requested_by = $1 AND idempotency_key = $2",
        )
        .bind(caller.subject.as_str())
        .bind(key.as_str())
        .fetch_optional(&state.pool)
        .await?;
        if let Some(ExistingRestock {
            id: restock_id,
            request_hash: stored_hash,
            status,
            stock_after,
            partition,
            created_at,
        }) = existing
        {
            if stored_hash != hash {
                return Err(ApiError::IdempotencyKeyReused);
            }
            if let (true, Some(stock)) = (status == "applied", stock_after) {
                return Ok(restock_response(
                    StatusCode::OK,
                    RestockResult { product_id, stock },
                ));
            }
            let message = QueueMessage::Restock {
                restock_id,
                product_id,
                quantity: input.quantity,
            };
            if age(created_at) > state.config.common.requeue_after {
                let _ = state
                    .enqueue(partition, &message, request_id(&headers))
                    .await;
            }
            return wait_for_restock(&state, restock_id, product_id).await;
        }

        let Some(product) = fetch(&state.pool, product_id).await? else {
            return Err(ApiError::ProductNotFound);
        };
        let restock_id = Uuid::now_v7();
        let inserted = sqlx::query(
            "INSERT INTO restocks (id, product_id, requested_by, idempotency_key, request_hash, quantity, partition) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (requested_by, idempotency_key) DO NOTHING",
        )
        .bind(restock_id)
        .bind(product_id)
        .bind(caller.subject.as_str())
        .bind(key.as_str())
        .bind(&hash)
        .bind(input.quantity)
        .bind(product.partition)
        .execute(&state.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            continue; // a concurrent request with this key won: answer as a replay
        }
        let message = QueueMessage::Restock {
            restock_id,
            product_id,
            quantity: input.quantity,
        };
        // Before the restock is queued, every API instance stops answering
        // "sold out" for the product, so the new stock is never hidden.
        state.announce_restocking(product_id).await;
        if let Err(err) = state
            .enqueue(product.partition, &message, request_id(&headers))
            .await
        {
            let _ = sqlx::query("DELETE FROM restocks WHERE id = $1 AND status = 'pending'")
                .bind(restock_id)
                .execute(&state.pool)
                .await;
            return Err(err);
        }
        tracing::info!(%restock_id, %product_id, quantity = input.quantity, "restock queued");
        return wait_for_restock(&state, restock_id, product_id).await;
    }
    Err(ApiError::Internal(
        "idempotency key lookup did not settle".into(),
    ))
}

fn age(created_at: chrono::DateTime<chrono::Utc>) -> Duration {
    (chrono::Utc::now() - created_at)
        .to_std()
        .unwrap_or_default()
}

fn restock_response(status: StatusCode, result: RestockResult) -> Response {
    (status, Json(result)).into_response()
}

async fn wait_for_restock(
    state: &Arc<AppState>,
    restock_id: Uuid,
    product_id: Uuid,
) -> Result<Response, ApiError> {
    let mut watch = state.hub.restocks.subscribe(restock_id);
    let deadline = tokio::time::Instant::now() + state.config.restock_wait;
    loop {
        let applied: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT stock_after FROM restocks WHERE id = $1 AND status = 'applied'",
        )
        .bind(restock_id)
        .fetch_optional(&state.pool)
        .await?;
        if let Some(Some(stock)) = applied {
            return Ok(restock_response(
                StatusCode::OK,
                RestockResult { product_id, stock },
            ));
        }
        let pause = tokio::time::sleep(state.config.wait_poll_interval);
        tokio::select! {
            changed = watch.rx.changed() => {
                if changed.is_ok() {
                    if let Some(result) = *watch.rx.borrow() {
                        return Ok(restock_response(StatusCode::OK, result));
                    }
                }
            }
            () = pause => {}
            () = tokio::time::sleep_until(deadline) => {
                let stock = fetch(&state.pool, product_id).await?.map_or(0, |p| p.stock);
                return Ok(restock_response(StatusCode::ACCEPTED, RestockResult { product_id, stock }));
            }
        }
    }
}

//! Products: catalogue reads (public), management and restock (admin).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use checkline_shared::domain::{Product, RestockResult};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::db::{product_columns, ProductRow};
use crate::error::ApiError;
use crate::extract::{idempotency_key, json_body, page, path_id, request_id};
use crate::product_cache::etag_of;
use crate::restock::{self, Restocked};
use crate::state::AppState;

/// The products' routes (stock events are in `stock`), with their
/// OpenAPI operations.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, patch))
        .routes(routes!(restock))
}

pub const SKU_MAX: usize = 64;
pub const NAME_MAX: usize = 200;
pub const PRICE_MAX: i64 = 1_000_000_000_000;
pub const STOCK_MAX: i64 = 1_000_000_000;
pub const MAX_PER_CUSTOMER_MAX: i64 = 1_000_000;
pub const RESTOCK_MAX: i64 = 1_000_000_000;

/// Body of `POST /v1/products`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = ProductCreate,
    examples(json!({"sku": "FLASH-1", "name": "Flash phone", "price_cents": 19900,
        "stock": 100, "max_per_customer": 2, "active": true}))
)]
pub struct CreateProduct {
    /// Must be unique (else `409 sku_taken`).
    #[schema(min_length = 1, max_length = 64)]
    sku: String,
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// Unit price in integer cents.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    price_cents: i64,
    /// Initial stock.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    stock: i64,
    /// Maximum units one customer may buy in total; null or absent for no limit.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_per_customer: Option<i64>,
    /// Whether the product can be ordered; null or absent: true.
    #[serde(default)]
    #[schema(value_type = Option<bool>, default = true)]
    active: Option<bool>,
}

/// `Some(None)` when the field is present and null, `None` when absent.
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Body of `PATCH /v1/products/{id}`: any non-empty subset of the fields.
/// Absent fields are left unchanged; `max_per_customer: null` removes the
/// limit. `sku` and `stock` cannot be patched (stock changes only through
/// orders and restocks).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = ProductPatch,
    examples(json!({"price_cents": 17900, "max_per_customer": null}))
)]
pub struct PatchProduct {
    /// Null is the same as absent (unchanged).
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Null is the same as absent (unchanged).
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000_000_i64)]
    price_cents: Option<i64>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000)]
    max_per_customer: Option<Option<i64>>,
    /// Null is the same as absent (unchanged).
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    active: Option<bool>,
}

/// Body of `POST /v1/products/{id}/restock`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Restock, examples(json!({"quantity": 50})))]
pub struct RestockBody {
    /// Units to add to the stock.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    quantity: i64,
}

/// One page of products: the schema of the page `list` writes from its
/// products' JSON, encoded once each, rather than through this type.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ProductPage {
    items: Vec<Product>,
    /// Cursor for the next page (pass as `cursor`); null on the last page.
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

#[utoipa::path(
    post,
    path = "/v1/products",
    operation_id = "createProduct",
    tag = "products",
    summary = "Create a product",
    description = "Requires the `admin` role. The product is assigned a queue partition at creation.",
    security(("bearerAuth" = [])),
    request_body(content = CreateProduct, description = "The new product."),
    responses(
        (status = 201, description = "The created product.", body = Product,
            headers(("Location" = String, description = "URL of the created product, `/v1/products/{id}`."))),
        (status = 400, response = crate::openapi::InvalidRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 409, response = crate::openapi::SkuTaken),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
    )
)]
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
    let columns = product_columns();
    let result: Result<ProductRow, sqlx::Error> = sqlx::query_as(&format!(
        "INSERT INTO products (id, sku, name, price_cents, stock, initial_stock, max_per_customer, active, partition) \
         VALUES ($1, $2, $3, $4, $5, $5, $6, $7, (nextval('product_partition_seq') % $8)::int) \
         RETURNING {columns}"
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
    tracing::info!(product_id = %product.id, partition = %product.partition, "product created");
    catalog_changed(&state, product.id).await;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/products/{}", product.id))],
        Json(product),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/products",
    operation_id = "listProducts",
    tag = "products",
    summary = "List products",
    description = "Public. Cursor-paginated; follow `next_cursor` until it is null. The cursor is a product id, so a product created meanwhile never shifts a page. Served from memory like a product (see `getProduct`), with an `ETag` and `If-None-Match`.",
    params(
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a copy of this page held: `304` if it is still current."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Page size (default 50)."),
        ("cursor" = Option<String>, Query, format = Uuid, description = "`next_cursor` from the previous page. Omit for the first page; anything else is `400 invalid_request`."),
    ),
    responses(
        (status = 200, description = "One page of products.", body = ProductPage, headers(
            ("ETag" = String, description = "Strong validator of the page."),
            ("Cache-Control" = String, description = "How long the page may be kept without asking again; never past `CHECKLINE_CATALOG_FRESH_MS`."))),
        (status = 304, description = "The copy named in `If-None-Match` is current.", headers(
            ("ETag" = String, description = "Strong validator of the page."))),
        (status = 400, response = crate::openapi::InvalidRequest),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (limit, cursor) = page(&query)?;
    let page = state.products.list(cursor, limit).await?;
    // The page's JSON from its products' own, encoded once each.
    let mut body =
        Vec::with_capacity(page.items.iter().map(|e| e.body.len() + 1).sum::<usize>() + 64);
    body.extend_from_slice(b"{\"items\":[");
    for (i, entry) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&entry.body);
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    match page.next_cursor {
        Some(next) => body.extend_from_slice(format!("\"{next}\"").as_bytes()),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    let etag = etag_of(&body);
    Ok(cached(
        &state,
        &headers,
        Bytes::from(body),
        &etag,
        page.read_started,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/products/{id}",
    operation_id = "getProduct",
    tag = "products",
    summary = "Get a product",
    description = "Public. Served from the API's memory: the product as PostgreSQL had it at most `CHECKLINE_CATALOG_FRESH_MS` (250 ms by default) before the request, and, on the instance that reported an order's decision, never from before that decision. `updated_at` is the product's version: it only grows.",
    params(
        ("id" = Uuid, Path, description = "Product id (canonical UUID); anything else is `400 invalid_id`.", example = "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d"),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a copy of this product held: `304` if it is still current."),
    ),
    responses(
        (status = 200, description = "The product; `stock` reflects every order decided up to `CHECKLINE_CATALOG_FRESH_MS` before the request.", body = Product, headers(
            ("ETag" = String, description = "Strong validator of the representation."),
            ("Cache-Control" = String, description = "How long the product may be kept without asking again; never past `CHECKLINE_CATALOG_FRESH_MS`."))),
        (status = 304, description = "The copy named in `If-None-Match` is current.", headers(
            ("ETag" = String, description = "Strong validator of the representation."))),
        (status = 400, response = crate::openapi::InvalidId),
        (status = 404, response = crate::openapi::ProductNotFound),
    )
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path_id(&id)?;
    let entry = state
        .products
        .product(id)
        .await?
        .ok_or(ApiError::ProductNotFound)?;
    Ok(cached(
        &state,
        &headers,
        entry.body.clone(),
        &entry.etag,
        entry.read_started(),
    ))
}

/// A product read's response: `304` when the client's copy is current,
/// else the body; either way with its validator and how long a browser or
/// CDN may keep it without asking (never past the freshness bound).
fn cached(
    state: &AppState,
    headers: &HeaderMap,
    body: Bytes,
    etag: &str,
    read_started: std::time::Instant,
) -> Response {
    let cache_control = match state.products.max_age_secs(read_started) {
        0 => "public, max-age=0, must-revalidate".to_owned(),
        secs => format!("public, max-age={secs}, must-revalidate"),
    };
    let common = [
        (header::ETAG, etag.to_owned()),
        (header::CACHE_CONTROL, cache_control),
    ];
    if if_none_match(headers, etag) {
        state.products.metrics.not_modified.inc();
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

#[utoipa::path(
    patch,
    path = "/v1/products/{id}",
    operation_id = "updateProduct",
    tag = "products",
    summary = "Update a product",
    description = "Requires the `admin` role. Changes apply to orders decided after the update; a confirmed order keeps the price it was confirmed at.",
    security(("bearerAuth" = [])),
    params(("id" = Uuid, Path, description = "Product id (canonical UUID); anything else is `400 invalid_id`.")),
    request_body(content = PatchProduct, description = "The fields to change (at least one)."),
    responses(
        (status = 200, description = "The updated product.", body = Product),
        (status = 400, response = crate::openapi::InvalidIdOrRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::ProductNotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
    )
)]
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
    let columns = product_columns();
    let row: Option<ProductRow> = sqlx::query_as(&format!(
        "UPDATE products SET name = COALESCE($2, name), price_cents = COALESCE($3, price_cents), \
             max_per_customer = CASE WHEN $4 THEN $5 ELSE max_per_customer END, \
             active = COALESCE($6, active), updated_at = {version} \
         WHERE id = $1 RETURNING {columns}",
        version = checkline_shared::db::next_product_version("products"),
    ))
    .bind(id)
    .bind(&input.name)
    .bind(input.price_cents)
    .bind(input.max_per_customer.is_some())
    .bind(input.max_per_customer.flatten().map(|m| m as i32))
    .bind(input.active)
    .fetch_optional(&state.pool)
    .await?;
    let product = Product::from(row.ok_or(ApiError::ProductNotFound)?);
    catalog_changed(&state, product.id).await;
    Ok(Json(product))
}

/// After an admin's change is committed: this instance and every other
/// read the product (and the list pages) again before serving them.
async fn catalog_changed(state: &AppState, id: Uuid) {
    state.products.admin_changed(id);
    let from = state.activity.instance();
    checkline_shared::events::announce_catalog_change(&state.client, &state.subjects, id, from)
        .await;
}

/// Restocks travel through the product's queue like orders (`crate::restock`),
/// so they take effect in order with the checkouts around them. The call
/// waits a bounded time for the worker: 200 once applied, 202 if still queued.
#[utoipa::path(
    post,
    path = "/v1/products/{id}/restock",
    operation_id = "restockProduct",
    tag = "products",
    summary = "Restock a product",
    description = "Requires the `admin` role. The restock travels through the product's queue partition, so it is ordered with the checkouts around it. A retried restock with the same Idempotency-Key adds stock once.",
    security(("bearerAuth" = [])),
    params(
        ("id" = Uuid, Path, description = "Product id (canonical UUID); anything else is `400 invalid_id`."),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[\\x21-\\x7E]{1,255}$",
            description = "Client-chosen key, 1-255 visible ASCII characters (0x21-0x7E), scoped per caller. A retried restock with the same key and body adds stock once; the same key with a different body is `422 idempotency_key_reused`. Absent: `400 missing_idempotency_key`; malformed: `400 invalid_idempotency_key`.",
            example = "restock-2026-11-22-01"),
    ),
    request_body(content = RestockBody, description = "Units to add."),
    responses(
        (status = 200, description = "The restock is applied; `stock` includes it.", body = RestockResult),
        (status = 202, description = "The restock is durably queued but was not yet applied after a bounded wait; it will be applied. Same shape as `200`; `stock` does not yet include it.", body = RestockResult),
        (status = 400, response = crate::openapi::RestockBadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::ProductNotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 422, response = crate::openapi::IdempotencyKeyReused),
    )
)]
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
    let request = restock::Request {
        product_id,
        quantity: input.quantity,
        requested_by: &caller.subject,
        key: &key,
        request_id: request_id(&headers),
    };
    let (status, result) = match restock::restock(&state, request).await? {
        Restocked::Applied(result) => (StatusCode::OK, result),
        Restocked::Queued(result) => (StatusCode::ACCEPTED, result),
    };
    Ok((status, Json(result)).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn asking(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn if_none_match_names_the_copy_held() {
        let etag = "\"00ab\"";
        assert!(!if_none_match(&HeaderMap::new(), etag));
        assert!(if_none_match(&asking(&["\"00ab\""]), etag));
        assert!(if_none_match(&asking(&["W/\"00ab\""]), etag));
        assert!(if_none_match(&asking(&["\"x\", \"00ab\""]), etag));
        assert!(if_none_match(&asking(&["\"x\"", "\"00ab\""]), etag));
        assert!(if_none_match(&asking(&["*"]), etag));
        assert!(!if_none_match(&asking(&["\"00ac\""]), etag));
        assert!(!if_none_match(&asking(&["00ab"]), etag));
    }
}

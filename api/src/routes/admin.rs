//! `GET /v1/admin/stats`: per-product sales and per-partition queue state.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use checkline_shared::partition::Partition;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The administrative routes, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(stats))
}

/// Sales of one product.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
pub struct ProductStats {
    id: Uuid,
    #[schema(min_length = 1, max_length = 64)]
    sku: String,
    #[schema(minimum = 0)]
    stock: i64,
    /// Sum of the quantities of confirmed orders (their lines of this
    /// product). Orders of several lines count for each of their products.
    #[schema(minimum = 0)]
    confirmed_units: i64,
    #[schema(minimum = 0)]
    confirmed_orders: i64,
    #[schema(minimum = 0)]
    rejected_orders: i64,
    /// Sum of `total_cents` of confirmed orders (for an order of several
    /// lines, this product's line).
    #[schema(minimum = 0)]
    revenue_cents: i64,
    /// Units in other buyers' carts: held by unsettled orders and reserved
    /// by orders not paid yet (the product's `reserved`).
    #[schema(minimum = 0)]
    reserved_units: i64,
    #[schema(minimum = 0)]
    expired_orders: i64,
    #[schema(minimum = 0)]
    cancelled_orders: i64,
}

/// Queue state of one partition.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
pub struct PartitionStats {
    #[schema(value_type = i32, minimum = 0)]
    partition: Partition,
    /// Orders and restocks queued on this partition and not yet decided.
    #[schema(minimum = 0)]
    pending: i64,
    /// Id of the worker that holds the partition, or null when none does.
    owner: Option<String>,
    /// When this partition last decided an order or applied a restock; null if never.
    last_decided_at: Option<DateTime<Utc>>,
}

/// Per-product sales and per-partition queue state.
#[derive(Serialize, ToSchema)]
#[schema(
    as = AdminStats,
    examples(json!({"products": [{"id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "sku": "FLASH-1",
        "stock": 0, "confirmed_units": 100, "confirmed_orders": 100, "rejected_orders": 4211,
        "revenue_cents": 1990000, "reserved_units": 0, "expired_orders": 3, "cancelled_orders": 1}],
        "partitions": [{"partition": 3, "pending": 0, "owner": "worker-7f3a",
        "last_decided_at": "2026-11-22T10:00:09.310Z"},
        {"partition": 4, "pending": 0, "owner": null, "last_decided_at": null}]}))
)]
pub struct Stats {
    products: Vec<ProductStats>,
    partitions: Vec<PartitionStats>,
}

#[utoipa::path(
    get,
    path = "/v1/admin/stats",
    operation_id = "getAdminStats",
    tag = "admin",
    summary = "Sales and queue statistics",
    description = "Requires the `admin` role.",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Per-product sales and per-partition queue state.", body = Stats),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
    )
)]
pub async fn stats(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Stats>, ApiError> {
    caller.require_admin()?;
    let products: Vec<ProductStats> = sqlx::query_as(
        "WITH lines AS ( \
             SELECT product_id, quantity, status, total_cents AS amount FROM orders \
              WHERE line_count = 1 \
             UNION ALL \
             SELECT l.product_id, l.quantity, o.status, l.unit_price_cents * l.quantity \
               FROM order_lines l JOIN orders o ON o.id = l.order_id \
         ) \
         SELECT p.id, p.sku, p.stock, \
             COALESCE(SUM(x.quantity) FILTER (WHERE x.status = 'confirmed'), 0)::bigint AS confirmed_units, \
             COUNT(x.status) FILTER (WHERE x.status = 'confirmed') AS confirmed_orders, \
             COUNT(x.status) FILTER (WHERE x.status = 'rejected') AS rejected_orders, \
             COALESCE(SUM(x.amount) FILTER (WHERE x.status = 'confirmed'), 0)::bigint AS revenue_cents, \
             (p.held + COALESCE((SELECT SUM(r.quantity) FROM reservations r \
                                 WHERE r.product_id = p.id), 0))::bigint AS reserved_units, \
             COUNT(x.status) FILTER (WHERE x.status = 'expired') AS expired_orders, \
             COUNT(x.status) FILTER (WHERE x.status = 'cancelled') AS cancelled_orders \
         FROM products p LEFT JOIN lines x ON x.product_id = p.id \
         GROUP BY p.id ORDER BY p.id",
    )
    .fetch_all(&state.pool)
    .await?;
    // Pending orders are read from the partition's low-water mark on: no
    // index covers the status (checkline_shared::pending).
    let partitions: Vec<PartitionStats> = sqlx::query_as(&format!(
        "SELECT c.partition, \
             (SELECT COUNT(*) FROM orders o WHERE o.partition = c.partition AND {pending}) \
             + (SELECT COUNT(*) FROM restocks r WHERE r.partition = c.partition AND r.status = 'pending') AS pending, \
             c.owner, c.last_decided_at \
         FROM partition_cursors c ORDER BY c.partition",
        pending = checkline_shared::pending::pending_in_partition("c.partition")
    ))
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Stats {
        products,
        partitions,
    }))
}

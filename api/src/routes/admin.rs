//! `GET /v1/admin/stats`: per-product sales and per-partition queue state.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

#[derive(Serialize, sqlx::FromRow)]
pub struct ProductStats {
    id: Uuid,
    sku: String,
    stock: i64,
    confirmed_units: i64,
    confirmed_orders: i64,
    rejected_orders: i64,
    revenue_cents: i64,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct PartitionStats {
    partition: i32,
    pending: i64,
    owner: Option<String>,
    last_decided_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
pub struct Stats {
    products: Vec<ProductStats>,
    partitions: Vec<PartitionStats>,
}

pub async fn stats(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Stats>, ApiError> {
    caller.require_admin()?;
    let products: Vec<ProductStats> = sqlx::query_as(
        "SELECT p.id, p.sku, p.stock, \
             COALESCE(SUM(o.quantity) FILTER (WHERE o.status = 'confirmed'), 0)::bigint AS confirmed_units, \
             COUNT(o.id) FILTER (WHERE o.status = 'confirmed') AS confirmed_orders, \
             COUNT(o.id) FILTER (WHERE o.status = 'rejected') AS rejected_orders, \
             COALESCE(SUM(o.total_cents) FILTER (WHERE o.status = 'confirmed'), 0)::bigint AS revenue_cents \
         FROM products p LEFT JOIN orders o ON o.product_id = p.id \
         GROUP BY p.id ORDER BY p.id",
    )
    .fetch_all(&state.pool)
    .await?;
    let partitions: Vec<PartitionStats> = sqlx::query_as(
        "SELECT c.partition, \
             (SELECT COUNT(*) FROM orders o WHERE o.partition = c.partition AND o.status = 'pending') \
             + (SELECT COUNT(*) FROM restocks r WHERE r.partition = c.partition AND r.status = 'pending') AS pending, \
             c.owner, c.last_decided_at \
         FROM partition_cursors c ORDER BY c.partition",
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Stats {
        products,
        partitions,
    }))
}

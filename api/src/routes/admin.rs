//! `GET /v1/admin/stats`: per-product sales and per-partition queue state;
//! `GET /v1/admin/audit`: whether invariant 1 (the stock balance) holds
//! right now, per product.

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
    OpenApiRouter::new()
        .routes(routes!(stats))
        .routes(routes!(audit))
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
    let rows: Vec<StatsRow> = sqlx::query_as(&format!(
        "WITH lines AS ( \
             SELECT product_id, quantity, status, total_cents AS amount FROM orders \
              WHERE line_count = 1 \
             UNION ALL \
             SELECT l.product_id, l.quantity, o.status, l.unit_price_cents * l.quantity \
               FROM order_lines l JOIN orders o ON o.id = l.order_id \
         ) \
         SELECT p.id, p.sku, p.stock, p.updated_at, \
             COALESCE(SUM(x.quantity) FILTER (WHERE x.status = 'confirmed'), 0)::bigint AS confirmed_units, \
             COUNT(x.status) FILTER (WHERE x.status = 'confirmed') AS confirmed_orders, \
             COUNT(x.status) FILTER (WHERE x.status = 'rejected') AS rejected_orders, \
             COALESCE(SUM(x.amount) FILTER (WHERE x.status = 'confirmed'), 0)::bigint AS revenue_cents, \
             (p.held + COALESCE(MAX(ru.units), 0))::bigint AS reserved_units, \
             COUNT(x.status) FILTER (WHERE x.status = 'expired') AS expired_orders, \
             COUNT(x.status) FILTER (WHERE x.status = 'cancelled') AS cancelled_orders \
         FROM products p LEFT JOIN lines x ON x.product_id = p.id \
         LEFT JOIN ({}) ru ON ru.product_id = p.id \
         GROUP BY p.id ORDER BY p.id",
        checkline_shared::stock::reserved_units("true")
    ))
    .fetch_all(&state.pool)
    .await?;
    // Whoever reads these figures may read a product next: it must not show
    // stock from before them.
    state
        .products
        .saw_products(rows.iter().map(|row| (row.stats.id, row.updated_at)));
    let products = rows.into_iter().map(|row| row.stats).collect();
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

/// A product's sales, with the version of the product they were read at.
#[derive(sqlx::FromRow)]
struct StatsRow {
    #[sqlx(flatten)]
    stats: ProductStats,
    updated_at: DateTime<Utc>,
}

/// Where a product stands with invariant 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditState {
    /// initial + restocked = stock + held + taken + returning.
    Balanced,
    /// Off by exactly the units of kept lines still settling: they count
    /// in `held` and in `taken_units` until their settle entry's turn.
    Settling,
    /// Off by anything else: the invariant is broken.
    Unbalanced,
}

impl AuditState {
    /// The state of a product whose `stock_audit` row is `balanced` (or
    /// not), off by `gap` units (stock + held + taken + returning − initial
    /// − restocked), while lines of its holding `kept_units` units are kept
    /// by a decided order and wait for their settle entry.
    fn of(balanced: bool, gap: i128, kept_units: i64) -> Self {
        if balanced {
            Self::Balanced
        } else if kept_units > 0 && gap == i128::from(kept_units) {
            Self::Settling
        } else {
            Self::Unbalanced
        }
    }
}

/// A product's row of the `stock_audit` view, with its settling lines.
#[derive(sqlx::FromRow)]
struct AuditRow {
    id: Uuid,
    sku: String,
    initial_stock: i64,
    restocked: i64,
    stock: i64,
    held: i64,
    taken_units: i64,
    returning_units: i64,
    settling_lines: i64,
    kept_units: i64,
    balanced: Option<bool>,
}

/// Invariant 1 for one product: initial_stock + restocked = stock + held +
/// taken_units + returning_units.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductAudit {
    id: Uuid,
    #[schema(min_length = 1, max_length = 64)]
    sku: String,
    #[schema(minimum = 0)]
    initial_stock: i64,
    /// Units of applied restocks.
    #[schema(minimum = 0)]
    restocked: i64,
    #[schema(minimum = 0)]
    stock: i64,
    /// Units held by lines of orders of several lines not settled yet, and
    /// by kept lines whose settle entry has not had its turn.
    #[schema(minimum = 0)]
    held: i64,
    /// Units of reserved and confirmed orders (their lines of this product).
    #[schema(minimum = 0)]
    taken_units: i64,
    /// Units of expired and cancelled reservations on their way back to stock.
    #[schema(minimum = 0)]
    returning_units: i64,
    /// Lines of this product whose order settled and whose settle entry has
    /// not had its turn yet (state `keep` or `release`).
    #[schema(minimum = 0)]
    settling_lines: i64,
    state: AuditState,
}

impl From<AuditRow> for ProductAudit {
    fn from(row: AuditRow) -> Self {
        let gap = [row.stock, row.held, row.taken_units, row.returning_units]
            .into_iter()
            .map(i128::from)
            .sum::<i128>()
            - i128::from(row.initial_stock)
            - i128::from(row.restocked);
        Self {
            state: AuditState::of(row.balanced.unwrap_or(false), gap, row.kept_units),
            id: row.id,
            sku: row.sku,
            initial_stock: row.initial_stock,
            restocked: row.restocked,
            stock: row.stock,
            held: row.held,
            taken_units: row.taken_units,
            returning_units: row.returning_units,
            settling_lines: row.settling_lines,
        }
    }
}

/// Whether invariant 1 holds, per product.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    as = StockAudit,
    examples(json!({"holds": true, "products": [
        {"id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "sku": "FLASH-1", "initial_stock": 100,
         "restocked": 20, "stock": 7, "held": 2, "taken_units": 111, "returning_units": 2,
         "settling_lines": 1, "state": "settling"},
        {"id": "1c8d2f63-4a1b-4d9f-8e2b-6f3a7b8c9d0e", "sku": "FLASH-2", "initial_stock": 50,
         "restocked": 0, "stock": 0, "held": 0, "taken_units": 50, "returning_units": 0,
         "settling_lines": 0, "state": "balanced"}]}))
)]
pub struct StockAudit {
    /// No product is `unbalanced`.
    holds: bool,
    /// Every product, by sku.
    products: Vec<ProductAudit>,
}

#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    operation_id = "getStockAudit",
    tag = "admin",
    summary = "Stock audit (invariant 1)",
    description = "Requires the `admin` role. Per product, from one consistent read of the database: initial_stock + restocked = stock + held + taken_units + returning_units (invariant 1, with the units of carts being settled and of reservations on their way back). Once the queues are drained `held` and `returning_units` are 0. While they are not, a line kept by a decided order counts both in `held` and in `taken_units` until its settle entry's turn: a product off by exactly those units is `settling`, not `unbalanced`. Nothing else in flight unbalances it.",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Whether invariant 1 holds, per product.", body = StockAudit),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
    )
)]
pub async fn audit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<StockAudit>, ApiError> {
    caller.require_admin()?;
    // One statement, so one snapshot: the view and the lines agree.
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT p.id, p.sku, a.initial_stock, a.restocked, a.stock, a.held, \
             a.confirmed_units AS taken_units, a.returning_units, \
             COALESCE(s.lines, 0) AS settling_lines, COALESCE(s.kept_units, 0)::bigint AS kept_units, \
             a.balanced \
         FROM stock_audit a JOIN products p ON p.id = a.product_id \
         LEFT JOIN ( \
             SELECT product_id, COUNT(*) AS lines, \
                 SUM(quantity) FILTER (WHERE state = 'keep') AS kept_units \
             FROM order_lines WHERE state IN ('keep', 'release') GROUP BY product_id \
         ) s ON s.product_id = p.id \
         ORDER BY p.sku",
    )
    .fetch_all(&state.pool)
    .await?;
    let products: Vec<ProductAudit> = rows.into_iter().map(ProductAudit::from).collect();
    Ok(Json(StockAudit {
        holds: products.iter().all(|p| p.state != AuditState::Unbalanced),
        products,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kept_units_in_flight_excuse_a_gap() {
        assert_eq!(AuditState::of(true, 0, 0), AuditState::Balanced);
        // Released lines settle without a gap: nothing to excuse.
        assert_eq!(AuditState::of(true, 0, 3), AuditState::Balanced);
        assert_eq!(AuditState::of(false, 3, 3), AuditState::Settling);
        // A gap other than the kept units is a broken invariant, lines
        // settling or not.
        assert_eq!(AuditState::of(false, 4, 3), AuditState::Unbalanced);
        assert_eq!(AuditState::of(false, -3, 3), AuditState::Unbalanced);
        assert_eq!(AuditState::of(false, 1, 0), AuditState::Unbalanced);
        assert_eq!(AuditState::of(false, 0, 0), AuditState::Unbalanced);
    }
}

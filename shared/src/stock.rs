//! What a product's stock event says, read from PostgreSQL: free units,
//! units in other buyers' carts (held by orders not settled yet, and
//! reserved by orders not paid yet), and when the first reservation ends.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::StockEvent;

/// The stock events of `products` (unknown ids are left out).
pub async fn events(pool: &PgPool, products: &[Uuid]) -> Result<Vec<StockEvent>, sqlx::Error> {
    if products.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Uuid, i64, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT p.id, p.stock, p.held + COALESCE(r.units, 0)::bigint, r.next \
         FROM products p \
         LEFT JOIN (SELECT product_id, SUM(quantity) AS units, min(reserved_until) AS next \
                    FROM reservations WHERE product_id = ANY($1) GROUP BY product_id) r \
                ON r.product_id = p.id \
         WHERE p.id = ANY($1)",
    )
    .bind(products)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, stock, reserved, next)| StockEvent::with_reserved(id, stock, reserved, next))
        .collect())
}

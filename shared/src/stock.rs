//! What a product's stock event says, read from PostgreSQL: free units,
//! units in other buyers' carts (held by orders not settled yet, and
//! reserved by orders not paid yet), and when the first reservation ends.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::StockEvent;

/// Units of reserved orders per product, as a SQL relation `(product_id,
/// units, next)` over the reservations matching `filter` (a condition on
/// `r`): the reservations, less the lines of reserved orders whose settle
/// entry has not taken their held units yet (those are still counted in
/// the product's `held`, and must not count twice).
pub fn reserved_units(filter: &str) -> String {
    format!(
        "SELECT r.product_id, SUM(r.quantity) AS units, min(r.reserved_until) AS next \
         FROM reservations r \
         WHERE ({filter}) AND NOT EXISTS (SELECT 1 FROM order_lines l \
             WHERE l.order_id = r.order_id AND l.product_id = r.product_id AND l.state = 'keep') \
         GROUP BY r.product_id"
    )
}

/// The stock events of `products` (unknown ids are left out).
pub async fn events(pool: &PgPool, products: &[Uuid]) -> Result<Vec<StockEvent>, sqlx::Error> {
    if products.is_empty() {
        return Ok(Vec::new());
    }
    /// id, stock, held, reserved, next release, version.
    type Row = (Uuid, i64, i64, i64, Option<DateTime<Utc>>, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT p.id, p.stock, p.held, p.held + COALESCE(r.units, 0)::bigint, r.next, p.updated_at \
         FROM products p \
         LEFT JOIN ({}) r ON r.product_id = p.id \
         WHERE p.id = ANY($1)",
        reserved_units("r.product_id = ANY($1)")
    ))
    .bind(products)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, stock, held, reserved, next, version)| {
            StockEvent::with_reserved(id, stock, held, reserved, next).at(version)
        })
        .collect())
}

//! Rows only the API reads (those both binaries read are in
//! `checkline_shared::db`).

use checkline_shared::db::{OrderRow, ORDER_COLUMNS};
use checkline_shared::domain::{Order, Product};
use checkline_shared::partition::Partition;
use chrono::{DateTime, Utc};
use std::sync::OnceLock;

use sqlx::PgPool;
use uuid::Uuid;

/// Columns selected for a [`Product`], in [`ProductRow`]'s order, from the
/// `products` table (not aliased: `reserved` refers to it by name). A
/// product's `reserved` is what is in other buyers' carts: units held by
/// orders not settled yet and units of reserved orders, counted by the
/// rule of `checkline_shared::stock::reserved_units`.
pub fn product_columns() -> &'static str {
    static COLUMNS: OnceLock<String> = OnceLock::new();
    COLUMNS.get_or_init(|| {
        format!(
            "id, sku, name, price_cents, stock, max_per_customer, active, partition, updated_at, \
             held + COALESCE((SELECT r.units FROM ({}) r), 0)::bigint AS reserved",
            checkline_shared::stock::reserved_units("r.product_id = products.id")
        )
    })
}

#[derive(Debug, sqlx::FromRow)]
pub struct ProductRow {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    pub max_per_customer: Option<i32>,
    pub active: bool,
    pub partition: Partition,
    pub updated_at: DateTime<Utc>,
    pub reserved: i64,
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Product {
            id: row.id,
            sku: row.sku,
            name: row.name,
            price_cents: row.price_cents,
            stock: row.stock,
            reserved: row.reserved,
            max_per_customer: row.max_per_customer,
            active: row.active,
            partition: row.partition,
            updated_at: row.updated_at,
        }
    }
}

/// Reads one order.
pub async fn fetch_order(pool: &PgPool, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<OrderRow> =
        sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(Order::from))
}

//! The baseline's own schema, `baseline`, in the load test's database: its
//! tables (created if missing), the products a run creates in them, and what
//! the checks read from them.

use anyhow::{ensure, Context, Result};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::checks::{DbView, DuplicateKey, OrderRow, StockAudit};
use crate::db::sql_error;

/// The baseline's tables, created if missing (under an advisory lock, so two
/// load tests starting at once do not race on the DDL).
pub const SCHEMA_SQL: &str = "\
CREATE SCHEMA IF NOT EXISTS baseline;
CREATE TABLE IF NOT EXISTS baseline.products (
    id            uuid        PRIMARY KEY,
    sku           text        NOT NULL,
    price_cents   bigint      NOT NULL CHECK (price_cents >= 0),
    stock         bigint      NOT NULL CHECK (stock >= 0),
    initial_stock bigint      NOT NULL CHECK (initial_stock >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS baseline.orders (
    id               uuid        PRIMARY KEY,
    customer_id      text        NOT NULL,
    idempotency_key  text        NOT NULL,
    product_id       uuid        NOT NULL REFERENCES baseline.products (id),
    quantity         integer     NOT NULL CHECK (quantity > 0),
    status           text        NOT NULL CHECK (status IN ('confirmed', 'rejected')),
    reason           text,
    unit_price_cents bigint,
    total_cents      bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT baseline_orders_customer_key UNIQUE (customer_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS baseline_orders_product_status
    ON baseline.orders (product_id, status);
";

/// Key of the advisory lock held while the schema is created.
const SCHEMA_LOCK: i64 = 0x6368_6b6c_6e62_6173;

/// Fails early, with the figures, when PostgreSQL cannot give the baseline
/// `pool_size` connections (a pool would only report a timeout).
pub(super) async fn check_connection_headroom(pool: &PgPool, pool_size: u32) -> Result<()> {
    let row = sqlx::query(
        "SELECT current_setting('max_connections')::bigint AS max, \
                (SELECT count(*) FROM pg_stat_activity) AS used",
    )
    .fetch_one(pool)
    .await
    .map_err(sql_error("reading PostgreSQL's connection limit"))?;
    let max: i64 = row
        .try_get("max")
        .map_err(sql_error("decoding max_connections"))?;
    let used: i64 = row
        .try_get("used")
        .map_err(sql_error("decoding the connection count"))?;
    // One of the used connections is the pool's own.
    let free = max - used + 1;
    ensure!(
        i64::from(pool_size) <= free,
        "--baseline-pool {pool_size} needs {pool_size} PostgreSQL connections, but only {free} \
         of max_connections {max} are free ({used} in use); lower --baseline-pool or raise \
         max_connections"
    );
    Ok(())
}

pub(super) async fn create_schema(pool: &PgPool) -> Result<()> {
    let mut tx = pool
        .begin()
        .await
        .map_err(sql_error("connecting for the baseline schema"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(sql_error("locking for the baseline schema"))?;
    sqlx::raw_sql(SCHEMA_SQL)
        .execute(&mut *tx)
        .await
        .map_err(sql_error("creating the baseline schema"))?;
    tx.commit()
        .await
        .map_err(sql_error("committing the baseline schema"))
}

/// Inserts a fresh product with `stock` units.
pub(super) async fn create_product(
    pool: &PgPool,
    sku: &str,
    stock: u64,
    price_cents: i64,
) -> Result<Uuid> {
    let id = Uuid::new_v4();
    let stock = i64::try_from(stock).context("stock out of range")?;
    sqlx::query(
        "INSERT INTO baseline.products (id, sku, price_cents, stock, initial_stock) \
         VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(id)
    .bind(sku)
    .bind(price_cents)
    .bind(stock)
    .execute(pool)
    .await
    .map_err(sql_error("creating the baseline product"))?;
    Ok(id)
}

pub(super) async fn stock(pool: &PgPool, product_id: Uuid) -> Result<i64> {
    sqlx::query_scalar("SELECT stock FROM baseline.products WHERE id = $1")
        .bind(product_id)
        .fetch_one(pool)
        .await
        .map_err(sql_error("reading the baseline product's stock"))
}

/// What the checks need to know about `product_id`, from the baseline's
/// tables (no queue positions, no per-customer totals).
pub(super) async fn fetch_view(pool: &PgPool, product_id: Uuid) -> Result<DbView> {
    let audit = sqlx::query(
        "SELECT p.initial_stock, p.stock, c.units AS confirmed_units, \
                p.initial_stock = p.stock + c.units AS balanced \
         FROM baseline.products p, \
              LATERAL (SELECT COALESCE(SUM(quantity), 0)::bigint AS units \
                       FROM baseline.orders \
                       WHERE product_id = p.id AND status = 'confirmed') c \
         WHERE p.id = $1",
    )
    .bind(product_id)
    .fetch_optional(pool)
    .await
    .map_err(sql_error("auditing the baseline product's stock"))?
    .map(|row| -> Result<StockAudit, sqlx::Error> {
        Ok(StockAudit {
            initial_stock: row.try_get("initial_stock")?,
            restocked: 0,
            stock: row.try_get("stock")?,
            confirmed_units: row.try_get("confirmed_units")?,
            balanced: row.try_get("balanced")?,
        })
    })
    .transpose()
    .map_err(sql_error("decoding the baseline stock audit"))?;

    let duplicate_keys = sqlx::query(
        "SELECT customer_id, idempotency_key, count(*) AS n FROM baseline.orders \
         WHERE product_id = $1 GROUP BY customer_id, idempotency_key HAVING count(*) > 1",
    )
    .bind(product_id)
    .fetch_all(pool)
    .await
    .map_err(sql_error("looking for baseline keys used twice"))?
    .into_iter()
    .map(|row| {
        Ok(DuplicateKey {
            customer_id: row.try_get("customer_id")?,
            idempotency_key: row.try_get("idempotency_key")?,
            count: row.try_get("n")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()
    .map_err(sql_error("decoding baseline duplicate keys"))?;

    let orders = sqlx::query(
        "SELECT id, status, reason, quantity::bigint AS quantity \
         FROM baseline.orders WHERE product_id = $1",
    )
    .bind(product_id)
    .fetch_all(pool)
    .await
    .map_err(sql_error("reading the baseline orders"))?
    .into_iter()
    .map(|row| {
        Ok(OrderRow {
            id: row.try_get("id")?,
            status: row.try_get("status")?,
            reason: row.try_get("reason")?,
            quantity: row.try_get("quantity")?,
            queue_sequence: None,
            queue_index: None,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()
    .map_err(sql_error("decoding the baseline orders"))?;

    Ok(DbView {
        audit,
        duplicate_keys,
        orders,
        ..DbView::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_namespaced() {
        // Every table and index the baseline creates lives in its own schema.
        for line in SCHEMA_SQL.lines().filter(|line| line.starts_with("CREATE")) {
            assert!(line.contains("baseline"), "{line}");
        }
    }
}

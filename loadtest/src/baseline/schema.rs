//! The baseline's own schema, `baseline`, in the load test's database: its
//! tables (created if missing), the products a run creates in them, and
//! where the checks' queries ([`crate::db`]) find its orders and stock.

use anyhow::{ensure, Context, Result};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::db::{sql_error, Tables};

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

/// The baseline's tables as the checks read them ([`crate::db::fetch_view`]):
/// its orders, and a stock audit with the columns of checkline's
/// `stock_audit` view (nothing is ever restocked); no queue.
pub const TABLES: Tables = Tables {
    orders: "baseline.orders",
    stock_audit: "(SELECT p.id AS product_id, p.initial_stock, 0::bigint AS restocked, p.stock, \
                          c.units AS confirmed_units, \
                          p.initial_stock = p.stock + c.units AS balanced \
                   FROM baseline.products p, \
                        LATERAL (SELECT COALESCE(SUM(quantity), 0)::bigint AS units \
                                 FROM baseline.orders \
                                 WHERE product_id = p.id AND status = 'confirmed') c) \
                  AS stock_audit",
    queued: false,
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_namespaced() {
        // Every table and index the baseline creates lives in its own schema.
        for line in SCHEMA_SQL.lines().filter(|line| line.starts_with("CREATE")) {
            assert!(line.contains("baseline"), "{line}");
        }
        // And the checks read only from it.
        assert!(TABLES.orders.starts_with("baseline."));
        assert!(TABLES.stock_audit.contains("FROM baseline.products p"));
        assert!(!TABLES.stock_audit.contains(" orders"));
    }
}

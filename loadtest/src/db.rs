//! Read-only PostgreSQL queries: the invariant checks, on checkline's tables
//! or the baseline's ([`Tables`]), and `--decisions db` on checkline's
//! (pending counts, decisions with their timestamps). The baseline's schema
//! itself is created in [`crate::baseline`].
//!
//! Plain runtime queries (no compile-time checked macros): the load test is
//! built without a database at hand.

use std::time::Duration;

use anyhow::{anyhow, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use uuid::Uuid;

use crate::checks::{
    CustomerTotal, DbView, DuplicateKey, FifoBoundary, OrderRow, QueuePos, StockAudit,
};
use crate::client::{Order, OrderStatus};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure the database answers, then returns a small pool for the checks.
pub async fn connect(url: &str) -> Result<PgPool> {
    let options: PgConnectOptions = url.parse().map_err(sql_error(
        "--database-url (CHECKLINE_DATABASE_URL) is not a valid PostgreSQL URL",
    ))?;
    // One direct connection first: a pool would only report "timed out"
    // where this reports the actual cause (refused, authentication, ...).
    let mut probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_elapsed| {
            anyhow!(
                "connecting to PostgreSQL (--database-url / CHECKLINE_DATABASE_URL) timed out after {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(sql_error(
            "connecting to PostgreSQL (--database-url / CHECKLINE_DATABASE_URL)",
        ))?;
    sqlx::query("SELECT 1")
        .execute(&mut probe)
        .await
        .map_err(sql_error("querying PostgreSQL"))?;
    // The probe has done its job; a failed goodbye does not matter.
    let _ = probe.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options))
}

/// sqlx errors repeat their source in their own message; keep one copy.
pub fn sql_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> anyhow::Error {
    move |err| anyhow!("{context}: {err}")
}

/// Where a system keeps what the checks read: checkline's tables
/// ([`CHECKLINE`]), or the baseline's schema ([`crate::baseline::TABLES`]).
/// The queries below name them as `{orders}`, `{stock_audit}` and
/// `{queue_columns}`.
#[derive(Debug, Clone, Copy)]
pub struct Tables {
    /// The orders, with checkline's `orders` columns for the checks.
    pub orders: &'static str,
    /// A relation with the columns of checkline's `stock_audit` view.
    pub stock_audit: &'static str,
    /// Whether the orders carry a queue position (`queue_sequence`,
    /// `queue_index`), hence a FIFO boundary to read.
    pub queued: bool,
}

/// checkline's own tables.
pub const CHECKLINE: Tables = Tables {
    orders: "orders",
    stock_audit: "stock_audit",
    queued: true,
};

impl Tables {
    /// `template` with the tables named.
    fn sql(&self, template: &str) -> String {
        let queue_columns = if self.queued {
            QUEUE_COLUMNS
        } else {
            NO_QUEUE_COLUMNS
        };
        template
            .replace("{orders}", self.orders)
            .replace("{stock_audit}", self.stock_audit)
            .replace("{queue_columns}", queue_columns)
    }
}

/// The product's stock audit: `initial + restocked = stock + confirmed`.
const STOCK_AUDIT: &str = "SELECT initial_stock, restocked, stock, confirmed_units, balanced \
     FROM {stock_audit} WHERE product_id = $1";

/// (customer, idempotency key) pairs found on more than one order.
const DUPLICATE_KEYS: &str = "SELECT customer_id, idempotency_key, count(*) AS n \
     FROM {orders} WHERE product_id = $1 \
     GROUP BY customer_id, idempotency_key HAVING count(*) > 1 \
     ORDER BY customer_id, idempotency_key";

/// The product's orders, in queue order when they have one.
const ORDERS: &str = "SELECT id, status, reason, quantity::bigint AS quantity, {queue_columns} \
     FROM {orders} WHERE product_id = $1 \
     ORDER BY queue_sequence NULLS LAST, queue_index NULLS FIRST, id";
/// The queue position of an order, or none where orders have no queue.
const QUEUE_COLUMNS: &str = "queue_sequence, queue_index::bigint AS queue_index";
const NO_QUEUE_COLUMNS: &str = "NULL::bigint AS queue_sequence, NULL::bigint AS queue_index";

/// Confirmed quantity per customer (the per-customer limit).
const CONFIRMED_PER_CUSTOMER: &str =
    "SELECT customer_id, SUM(quantity)::bigint AS confirmed_quantity \
     FROM {orders} WHERE product_id = $1 AND status = 'confirmed' \
     GROUP BY customer_id ORDER BY customer_id";

/// Everything the checks need to know about `product_id`, from `tables`.
pub async fn fetch_view(pool: &PgPool, tables: &Tables, product_id: Uuid) -> Result<DbView> {
    let product = ProductQuery {
        pool,
        tables,
        product_id,
    };
    let audit = product
        .fetch_optional(STOCK_AUDIT, "reading stock_audit", |row| {
            Ok(StockAudit {
                initial_stock: row.try_get("initial_stock")?,
                restocked: row.try_get("restocked")?,
                stock: row.try_get("stock")?,
                confirmed_units: row.try_get("confirmed_units")?,
                balanced: row.try_get("balanced")?,
            })
        })
        .await?;
    let duplicate_keys = product
        .fetch_all(
            DUPLICATE_KEYS,
            "looking for idempotency keys used twice",
            |row| {
                Ok(DuplicateKey {
                    customer_id: row.try_get("customer_id")?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    count: row.try_get("n")?,
                })
            },
        )
        .await?;
    let orders = product
        .fetch_all(ORDERS, "reading the product's orders", |row| {
            Ok(OrderRow {
                id: row.try_get("id")?,
                status: decode_status(row)?,
                reason: row.try_get("reason")?,
                quantity: row.try_get("quantity")?,
                queue_sequence: row.try_get("queue_sequence")?,
                queue_index: row.try_get("queue_index")?,
            })
        })
        .await?;
    let confirmed_per_customer = product
        .fetch_all(
            CONFIRMED_PER_CUSTOMER,
            "summing confirmed quantities per customer",
            |row| {
                Ok(CustomerTotal {
                    customer_id: row.try_get("customer_id")?,
                    confirmed_quantity: row.try_get("confirmed_quantity")?,
                })
            },
        )
        .await?;
    let fifo = if tables.queued {
        FifoBoundary {
            last_confirmed: product.queue_boundary(LAST_CONFIRMED).await?,
            first_stock_rejection: product.queue_boundary(FIRST_STOCK_REJECTION).await?,
        }
    } else {
        FifoBoundary::default()
    };
    Ok(DbView {
        audit,
        duplicate_keys,
        orders,
        confirmed_per_customer,
        fifo,
    })
}

/// The latest queue position `(queue_sequence, queue_index)` of a confirmed
/// order. Row comparisons in `max()` are not portable across PostgreSQL
/// versions, so the boundary is the first row of an `ORDER BY ... LIMIT 1`.
const LAST_CONFIRMED: &str =
    "SELECT queue_sequence, COALESCE(queue_index, 0)::bigint AS queue_index \
     FROM {orders} \
     WHERE product_id = $1 AND status = 'confirmed' AND queue_sequence IS NOT NULL \
     ORDER BY queue_sequence DESC, COALESCE(queue_index, 0) DESC LIMIT 1";

/// The earliest queue position of an order rejected for stock reasons.
const FIRST_STOCK_REJECTION: &str =
    "SELECT queue_sequence, COALESCE(queue_index, 0)::bigint AS queue_index \
     FROM {orders} \
     WHERE product_id = $1 AND status = 'rejected' \
       AND reason IN ('sold_out', 'insufficient_stock') AND queue_sequence IS NOT NULL \
     ORDER BY queue_sequence ASC, COALESCE(queue_index, 0) ASC LIMIT 1";

/// The checks' queries about one product: each takes it as `$1`.
struct ProductQuery<'a> {
    pool: &'a PgPool,
    tables: &'a Tables,
    product_id: Uuid,
}

impl ProductQuery<'_> {
    /// Every row of `template`, decoded; `what` says what failed.
    async fn fetch_all<T>(
        &self,
        template: &str,
        what: &'static str,
        decode: impl Fn(&PgRow) -> Result<T, sqlx::Error>,
    ) -> Result<Vec<T>> {
        sqlx::query(&self.tables.sql(template))
            .bind(self.product_id)
            .fetch_all(self.pool)
            .await
            .map_err(sql_error(what))?
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_error(what))
    }

    /// The row of `template`, if there is one, decoded.
    async fn fetch_optional<T>(
        &self,
        template: &str,
        what: &'static str,
        decode: impl Fn(&PgRow) -> Result<T, sqlx::Error>,
    ) -> Result<Option<T>> {
        sqlx::query(&self.tables.sql(template))
            .bind(self.product_id)
            .fetch_optional(self.pool)
            .await
            .map_err(sql_error(what))?
            .as_ref()
            .map(decode)
            .transpose()
            .map_err(sql_error(what))
    }

    async fn queue_boundary(&self, template: &str) -> Result<Option<QueuePos>> {
        self.fetch_optional(
            template,
            "reading a FIFO boundary (queue_sequence, queue_index)",
            |row| {
                Ok(QueuePos::new(
                    row.try_get("queue_sequence")?,
                    row.try_get("queue_index")?,
                ))
            },
        )
        .await
    }
}

/// `--decisions db`: how many orders of `product_ids` are still pending.
pub async fn count_pending(pool: &PgPool, product_ids: &[Uuid]) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE product_id = ANY($1) AND status = 'pending'",
    )
    .bind(product_ids)
    .fetch_one(pool)
    .await
    .map_err(sql_error("counting pending orders"))
}

/// `--decisions db`: every order of `product_ids`, with its decision and
/// timestamps.
pub async fn fetch_decisions(pool: &PgPool, product_ids: &[Uuid]) -> Result<Vec<Order>> {
    sqlx::query(
        "SELECT id, status, reason, created_at, decided_at \
         FROM orders WHERE product_id = ANY($1)",
    )
    .bind(product_ids)
    .fetch_all(pool)
    .await
    .map_err(sql_error("reading the decisions"))?
    .into_iter()
    .map(|row| {
        Ok(Order {
            id: row.try_get("id")?,
            status: decode_status(&row)?,
            reason: row.try_get("reason")?,
            created_at: row.try_get("created_at")?,
            decided_at: row.try_get("decided_at")?,
            rejected_product_id: None,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()
    .map_err(sql_error("decoding the decisions"))
}

/// An order row's `status` column.
fn decode_status(row: &PgRow) -> Result<OrderStatus, sqlx::Error> {
    let status: String = row.try_get("status")?;
    OrderStatus::parse(&status)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown order status {status:?}").into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_of_a_query_is_filled() {
        for tables in [CHECKLINE, crate::baseline::TABLES] {
            for template in [
                STOCK_AUDIT,
                DUPLICATE_KEYS,
                ORDERS,
                CONFIRMED_PER_CUSTOMER,
                LAST_CONFIRMED,
                FIRST_STOCK_REJECTION,
            ] {
                let sql = tables.sql(template);
                assert!(!sql.contains('{'), "{sql}");
            }
        }
        assert_eq!(
            CHECKLINE.sql(DUPLICATE_KEYS),
            "SELECT customer_id, idempotency_key, count(*) AS n \
             FROM orders WHERE product_id = $1 \
             GROUP BY customer_id, idempotency_key HAVING count(*) > 1 \
             ORDER BY customer_id, idempotency_key"
        );
    }
}

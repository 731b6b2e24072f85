//! What happens to a reserved order after its decision: confirm, cancel or
//! expiry. All three are conditional changes of the order's row from
//! `reserved`, in transactions that lock the row first: the row lock orders
//! them and whichever comes second no longer finds the order reserved, so
//! exactly one of them takes effect (invariant 8). Confirm and cancel
//! compare `reserved_until` with the database's clock, as the expirer does,
//! and a confirm or cancel that finds the reservation over expires it
//! itself: "confirmed at 14:04:59.9" and "expired at 14:05" never both hold.
//!
//! The units of an expired or cancelled reservation go back to stock
//! through their product's queue (a `stock_returns` row, then a `Return`
//! entry), so they go to orders queued after the return and never jump the
//! queue. The rows are the outbox: what is not published after the commit,
//! the worker's sweep publishes.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::db::{order_columns, OrderRow};
use crate::domain::{Order, OrderStatus};
use crate::messages::QueueMessage;
use crate::partition::Partition;

/// Why a confirm or cancel did not change the order. Each is a `409` of the
/// contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not decided yet; retry.
    Pending,
    Expired,
    Cancelled,
    Rejected,
    Confirmed,
}

/// A confirm or cancel: what it did, and the queue entries it produced.
#[derive(Debug)]
pub struct Change {
    /// The order as it stands after the call.
    pub order: Order,
    /// `Ok` when the order is (now or already) in the state asked for.
    pub result: Result<(), Refusal>,
    /// Returned units to queue (after the commit).
    pub returns: Vec<(Partition, QueueMessage)>,
}

/// What the caller asks of the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// `POST /v1/orders/{id}/confirm`: `reserved` to `confirmed`.
    Confirm,
    /// `POST /v1/orders/{id}/cancel`: `pending` or `reserved` to `cancelled`.
    Cancel,
}

/// Confirms or cancels an order. `customer`: only that customer's order
/// (`None` for an admin). `Ok(None)`: no such order (for this customer).
pub async fn change(
    pool: &PgPool,
    order_id: Uuid,
    customer: Option<&str>,
    asked: Asked,
) -> Result<Option<Change>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, bool)> = sqlx::query_as(
        "SELECT status, reserved_until IS NOT NULL AND reserved_until <= now() FROM orders \
         WHERE id = $1 AND ($2::text IS NULL OR customer_id = $2) FOR UPDATE",
    )
    .bind(order_id)
    .bind(customer)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, due)) = row else {
        return Ok(None);
    };
    let status = OrderStatus::parse(&status).unwrap_or(OrderStatus::Pending);
    let mut returns = Vec::new();
    let result = match (status, asked) {
        (OrderStatus::Reserved, _) if due => {
            returns = end_reservations(&mut tx, &[order_id], "expired").await?;
            Err(Refusal::Expired)
        }
        (OrderStatus::Reserved, Asked::Confirm) => {
            sqlx::query("UPDATE orders SET status = 'confirmed' WHERE id = $1")
                .bind(order_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM reservations WHERE order_id = $1")
                .bind(order_id)
                .execute(&mut *tx)
                .await?;
            Ok(())
        }
        (OrderStatus::Reserved, Asked::Cancel) => {
            returns = end_reservations(&mut tx, &[order_id], "cancelled").await?;
            Ok(())
        }
        (OrderStatus::Pending, Asked::Cancel) => {
            // It takes nothing when its turn comes (or, for an order of
            // several lines, gives back what its lines held when it settles).
            sqlx::query("UPDATE orders SET status = 'cancelled', decided_at = now() WHERE id = $1")
                .bind(order_id)
                .execute(&mut *tx)
                .await?;
            Ok(())
        }
        (OrderStatus::Pending, Asked::Confirm) => Err(Refusal::Pending),
        (OrderStatus::Confirmed, Asked::Confirm) | (OrderStatus::Cancelled, Asked::Cancel) => {
            Ok(())
        }
        (OrderStatus::Confirmed, Asked::Cancel) => Err(Refusal::Confirmed),
        (OrderStatus::Cancelled, Asked::Confirm) => Err(Refusal::Cancelled),
        (OrderStatus::Rejected, _) => Err(Refusal::Rejected),
        (OrderStatus::Expired, _) => Err(Refusal::Expired),
    };
    let order: OrderRow = sqlx::query_as(&format!(
        "SELECT {} FROM orders o WHERE o.id = $1",
        order_columns("o")
    ))
    .bind(order_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Change {
        order: Order::from(order),
        result,
        returns,
    }))
}

/// Expires up to `limit` reservations that are due, oldest first. Several
/// expirers share the work: rows another one holds are skipped, not waited
/// for. Returns the expired orders and their returned units to queue.
pub async fn expire_due(
    pool: &PgPool,
    limit: i64,
) -> Result<(Vec<Order>, Vec<(Partition, QueueMessage)>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT o.id FROM orders o \
         WHERE o.id IN (SELECT order_id FROM reservations WHERE reserved_until <= now() \
                        ORDER BY reserved_until LIMIT $1) \
           AND o.status = 'reserved' AND o.reserved_until <= now() \
         FOR UPDATE OF o SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let returns = end_reservations(&mut tx, &ids, "expired").await?;
    let orders: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {} FROM orders o WHERE o.id = ANY($1)",
        order_columns("o")
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((orders.into_iter().map(Order::from).collect(), returns))
}

/// Ends the reservations of `orders` (locked, reserved) with `status`
/// (`expired` or `cancelled`): their units go back through the queue.
async fn end_reservations(
    tx: &mut Transaction<'_, Postgres>,
    orders: &[Uuid],
    status: &str,
) -> Result<Vec<(Partition, QueueMessage)>, sqlx::Error> {
    sqlx::query("UPDATE orders SET status = $2 WHERE id = ANY($1) AND status = 'reserved'")
        .bind(orders)
        .bind(status)
        .execute(&mut **tx)
        .await?;
    let rows: Vec<(Uuid, Uuid, Uuid, i32, Partition)> = sqlx::query_as(
        "WITH ended AS ( \
             DELETE FROM reservations WHERE order_id = ANY($1) \
             RETURNING order_id, product_id, quantity \
         ) \
         INSERT INTO stock_returns (id, order_id, product_id, customer_id, quantity, partition) \
         SELECT gen_random_uuid(), e.order_id, e.product_id, o.customer_id, e.quantity, p.partition \
         FROM ended e JOIN orders o ON o.id = e.order_id JOIN products p ON p.id = e.product_id \
         RETURNING id, order_id, product_id, quantity, partition",
    )
    .bind(orders)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(return_id, order_id, product_id, quantity, partition)| {
            (
                partition,
                QueueMessage::Return {
                    return_id,
                    order_id,
                    product_id,
                    quantity,
                },
            )
        })
        .collect())
}

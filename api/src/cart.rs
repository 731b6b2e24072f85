//! The accept path of an order of several lines.
//!
//! Not batched like one-line orders (carts are a fraction of a drop's
//! orders, and each is already one atomic queue write): a retry of a known
//! key is answered from the stored order; every line passes the door (an
//! unknown product 404, a product known to be sold out 409 naming it, a
//! full partition 503) before anything is written; the order and its lines
//! are written pending in one statement; then every line is published to
//! its product's queue, all of them as **one atomic JetStream write**, so
//! the queue holds all lines of the order or none, and the stream gives the
//! order one position on every product it names (docs/architecture.md,
//! "Carts and reservations"). A failed publish answers 503; the order is
//! written, and the worker's sweep queues it whole (the same rule as for a
//! one-line order: after a 5xx, retry with the same key).

use checkline_shared::db::{order_columns, OrderRow};
use checkline_shared::domain::{CustomerId, IdempotencyKey, Order, OrderLine};
use checkline_shared::messages::QueueMessage;
use checkline_shared::partition::Partition;
use uuid::Uuid;

use crate::accept::{self, Accepted, Deps};
use crate::catalog::Known;
use crate::error::ApiError;

/// An order request of several lines, validated and authenticated.
pub struct CartRequest {
    pub customer: CustomerId,
    pub key: IdempotencyKey,
    pub hash: Vec<u8>,
    /// (product, quantity) in request order; at least two.
    pub lines: Vec<(Uuid, i32)>,
    pub reserve_secs: Option<i32>,
    pub request_id: Option<String>,
}

pub async fn accept(deps: &Deps, request: CartRequest) -> Result<Accepted, ApiError> {
    if let Some(known) = known_key(deps, &request).await? {
        return known;
    }
    let products: Vec<Uuid> = request.lines.iter().map(|(p, _)| *p).collect();
    accept::refresh_products(deps, products.clone()).await?;
    let mut partitions = Vec::with_capacity(products.len());
    for product_id in &products {
        match deps.catalog.lookup(*product_id) {
            Known::Unknown => return Err(ApiError::ProductNotFound),
            Known::SoldOut { .. } | Known::Stale { .. } => {
                deps.metrics.sold_out_fast.inc();
                return Err(ApiError::SoldOutLine(*product_id));
            }
            Known::Open { partition } if deps.backlog.is_full(partition) => {
                return Err(ApiError::Overloaded(
                    "a product's queue is full; retry shortly with the same Idempotency-Key".into(),
                ))
            }
            Known::Open { partition } => partitions.push(partition),
        }
    }

    let Some(order) = insert(deps, &request, &partitions).await? else {
        // Another request with this key got in first.
        return known_key(deps, &request)
            .await?
            .unwrap_or_else(|| Err(ApiError::Internal("order key neither new nor known".into())));
    };
    let messages: Vec<(Partition, QueueMessage)> = partitions
        .iter()
        .copied()
        .zip(QueueMessage::cart_lines(&order))
        .collect();
    match deps
        .publisher
        .publish_atomic(&messages, request.request_id.as_deref())
        .await
    {
        Ok(()) => {
            for partition in &partitions {
                deps.backlog.add(*partition, 1);
            }
            deps.metrics.orders_accepted.inc();
            Ok(Accepted::New(order))
        }
        Err(err) => {
            deps.metrics.publish_failures.inc();
            tracing::warn!(error = %err, order_id = %order.id, "queueing an order of several lines failed; the sweep will queue it");
            Err(ApiError::Unavailable(
                "the order was recorded but its queueing is not confirmed; \
                 retry with the same Idempotency-Key to follow it"
                    .into(),
            ))
        }
    }
}

/// The stored order of the request's key: 200 if the request is the same,
/// 422 if not; `None` if the key is new.
async fn known_key(
    deps: &Deps,
    request: &CartRequest,
) -> Result<Option<Result<Accepted, ApiError>>, ApiError> {
    #[derive(sqlx::FromRow)]
    struct Existing {
        #[sqlx(flatten)]
        order: OrderRow,
        request_hash: Vec<u8>,
    }
    let existing: Option<Existing> = sqlx::query_as(&format!(
        "SELECT {}, o.request_hash FROM orders o \
         WHERE o.customer_id = $1 AND o.idempotency_key = $2",
        order_columns("o")
    ))
    .bind(request.customer.as_str())
    .bind(request.key.as_str())
    .fetch_optional(&deps.pool)
    .await?;
    Ok(existing.map(|e| {
        if e.request_hash == request.hash {
            deps.metrics.orders_replayed.inc();
            Ok(Accepted::Replayed(Order::from(e.order)))
        } else {
            Err(ApiError::IdempotencyKeyReused)
        }
    }))
}

/// Writes the order and its lines, pending, in one statement; `None` if the
/// key already has an order.
async fn insert(
    deps: &Deps,
    request: &CartRequest,
    partitions: &[Partition],
) -> Result<Option<Order>, ApiError> {
    // UUIDv7: time-ordered, so "newest first" lists need no extra index.
    let id = Uuid::now_v7();
    let view: Vec<OrderLine> = request
        .lines
        .iter()
        .map(|(product_id, quantity)| OrderLine {
            product_id: *product_id,
            quantity: *quantity,
            unit_price_cents: None,
        })
        .collect();
    let lines_json = serde_json::to_string(&view).map_err(ApiError::internal)?;
    let (products, quantities): (Vec<Uuid>, Vec<i32>) = request.lines.iter().copied().unzip();
    let line_nos: Vec<i32> = (0..i32::try_from(products.len()).unwrap_or(i32::MAX)).collect();
    let count = i32::try_from(products.len()).map_err(ApiError::internal)?;
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "WITH o AS ( \
             INSERT INTO orders (id, customer_id, idempotency_key, request_hash, partition, \
                                 lines, line_count, reserve_secs) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8) \
             ON CONFLICT (customer_id, idempotency_key) DO NOTHING \
             RETURNING * \
         ), l AS ( \
             INSERT INTO order_lines (order_id, line_no, product_id, quantity, partition) \
             SELECT o.id, k.line_no, k.product_id, k.quantity, k.partition \
             FROM o, unnest($9::int[], $10::uuid[], $11::int[], $12::int[]) \
                 AS k(line_no, product_id, quantity, partition) \
         ) \
         SELECT {} FROM o",
        order_columns("o")
    ))
    .bind(id)
    .bind(request.customer.as_str())
    .bind(request.key.as_str())
    .bind(&request.hash)
    .bind(partitions[0])
    .bind(&lines_json)
    .bind(count)
    .bind(request.reserve_secs)
    .bind(&line_nos)
    .bind(&products)
    .bind(&quantities)
    .bind(partitions)
    .fetch_optional(&deps.pool)
    .await?;
    Ok(row.map(Order::from))
}

//! Restocks, the steps behind `POST /v1/products/{id}/restock`.
//!
//! Restocks travel through the product's queue like orders, so they take
//! effect in order with the checkouts around them. A restock is: answered
//! from the stored row when its idempotency key is known (a retry), else
//! written as a pending row (the unique (caller, key) constraint settles
//! races between identical requests), announced to every API instance (so
//! none keeps answering "sold out"), published to the product's queue
//! (through the one `Publisher`) and, should that fail, published again in
//! the background. Then it waits a bounded time for the worker to apply it.

use checkline_shared::domain::{request_hash, CustomerId, IdempotencyKey, RestockResult};
use checkline_shared::messages::QueueMessage;
use checkline_shared::partition::Partition;
use checkline_shared::queue;
use uuid::Uuid;

use crate::catalog;
use crate::error::ApiError;
use crate::state::AppState;

/// One restock request, validated and authorized.
pub struct Request<'a> {
    pub product_id: Uuid,
    /// Units to add, already checked against the contract's range.
    pub quantity: i64,
    pub requested_by: &'a CustomerId,
    pub key: &'a IdempotencyKey,
    pub request_id: Option<&'a str>,
}

/// How a restock request ended, when it did not fail.
#[derive(Debug)]
pub enum Restocked {
    /// Applied by the worker: `stock` includes it (200).
    Applied(RestockResult),
    /// Durably queued, not yet applied after the bounded wait (202).
    Queued(RestockResult),
}

#[derive(sqlx::FromRow)]
struct ExistingRestock {
    id: Uuid,
    request_hash: Vec<u8>,
    status: String,
    stock_after: Option<i64>,
    partition: Partition,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// Records, queues and waits for one restock; a retry with the same key and
/// request adds stock once.
pub async fn restock(state: &AppState, request: Request<'_>) -> Result<Restocked, ApiError> {
    let Request {
        product_id,
        quantity,
        requested_by,
        key,
        request_id,
    } = request;
    let hash = request_hash(&["restock", &product_id.to_string(), &quantity.to_string()]);

    for _ in 0..3 {
        let existing: Option<ExistingRestock> = sqlx::query_as(
            "SELECT id, request_hash, status, stock_after, partition, created_at FROM restocks \
             WHERE requested_by = $1 AND idempotency_key = $2",
        )
        .bind(requested_by.as_str())
        .bind(key.as_str())
        .fetch_optional(&state.pool)
        .await?;
        if let Some(ExistingRestock {
            id: restock_id,
            request_hash: stored_hash,
            status,
            stock_after,
            partition,
            created_at,
        }) = existing
        {
            if stored_hash != hash {
                return Err(ApiError::IdempotencyKeyReused);
            }
            if let (true, Some(stock)) = (status == "applied", stock_after) {
                return Ok(Restocked::Applied(RestockResult { product_id, stock }));
            }
            let message = QueueMessage::Restock {
                restock_id,
                product_id,
                quantity,
            };
            state.requeuer.submit_if_stranded(
                partition,
                message,
                created_at,
                request_id.map(str::to_owned),
            );
            return wait_for_restock(state, restock_id, product_id).await;
        }

        let Some(product) = catalog::fetch_product(&state.pool, product_id).await? else {
            return Err(ApiError::ProductNotFound);
        };
        let restock_id = Uuid::now_v7();
        let inserted = sqlx::query(
            "INSERT INTO restocks (id, product_id, requested_by, idempotency_key, request_hash, quantity, partition) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (requested_by, idempotency_key) DO NOTHING",
        )
        .bind(restock_id)
        .bind(product_id)
        .bind(requested_by.as_str())
        .bind(key.as_str())
        .bind(&hash)
        .bind(quantity)
        .bind(product.partition)
        .execute(&state.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            continue; // a concurrent request with this key won: answer as a replay
        }
        let message = QueueMessage::Restock {
            restock_id,
            product_id,
            quantity,
        };
        // Before the restock is queued, every API instance stops answering
        // "sold out" for the product, so the new stock is never hidden.
        announce_restocking(state, product_id, restock_id).await;
        state
            .config
            .common
            .faults
            .at("restock_before_enqueue")
            .await;
        if let Err(err) = enqueue(state, product.partition, &message, request_id).await {
            // The row stays: another request may already have answered 202
            // for it (a retry waiting on it), and the message may be in the
            // queue after all. It is published again in the background; the
            // worker's sweep catches whatever that misses.
            state
                .requeuer
                .submit(product.partition, message, request_id.map(str::to_owned));
            return Err(err);
        }
        tracing::info!(%restock_id, %product_id, quantity, "restock queued");
        return wait_for_restock(state, restock_id, product_id).await;
    }
    Err(ApiError::Internal(
        "idempotency key lookup did not settle".into(),
    ))
}

/// Tells every API instance (this one at once) that the restock
/// `restock_id` of the product is on its way.
async fn announce_restocking(state: &AppState, product_id: Uuid, restock_id: Uuid) {
    state.catalog.restocking(product_id, restock_id);
    let subject = state.subjects.restocking_event(product_id);
    let payload = bytes::Bytes::from(restock_id.to_string());
    if let Err(err) = state.client.publish(subject, payload).await {
        tracing::warn!(error = %err, "restock announcement not published");
    }
    let _ = state.client.flush().await;
}

/// Publishes to the product's queue subject and waits for JetStream's
/// acknowledgement.
async fn enqueue(
    state: &AppState,
    partition: Partition,
    message: &QueueMessage,
    request_id: Option<&str>,
) -> Result<(), ApiError> {
    let published = if state.config.common.faults.fail("restock_publish") {
        Err(queue::PublishError::Failed("fault point".into()))
    } else {
        state
            .publisher
            .publish(partition, message, request_id)
            .await
    };
    match published {
        Ok(_sequence) => Ok(()),
        Err(err) => {
            state.metrics.publish_failures.inc();
            tracing::warn!(error = %err, %partition, "queue publish failed");
            Err(ApiError::Unavailable(
                "recorded, but its queueing is not confirmed; retry with the same Idempotency-Key to follow it".into(),
            ))
        }
    }
}

/// Waits, up to `CHECKLINE_RESTOCK_WAIT_MS`, for the worker to apply the
/// restock.
async fn wait_for_restock(
    state: &AppState,
    restock_id: Uuid,
    product_id: Uuid,
) -> Result<Restocked, ApiError> {
    let mut watch = state.hub.restocks.subscribe(restock_id);
    let deadline = tokio::time::Instant::now() + state.config.restock_wait;
    loop {
        let applied: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT stock_after FROM restocks WHERE id = $1 AND status = 'applied'",
        )
        .bind(restock_id)
        .fetch_optional(&state.pool)
        .await?;
        if let Some(Some(stock)) = applied {
            return Ok(Restocked::Applied(RestockResult { product_id, stock }));
        }
        let pause = tokio::time::sleep(state.config.wait_poll_interval);
        tokio::select! {
            changed = watch.rx.changed() => {
                if changed.is_ok() {
                    if let Some(result) = *watch.rx.borrow() {
                        return Ok(Restocked::Applied(result));
                    }
                }
            }
            () = pause => {}
            () = tokio::time::sleep_until(deadline) => {
                let stock = catalog::fetch_product(&state.pool, product_id)
                    .await?
                    .map_or(0, |p| p.stock);
                return Ok(Restocked::Queued(RestockResult { product_id, stock }));
            }
        }
    }
}

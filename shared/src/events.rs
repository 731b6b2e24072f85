//! Result events published outside a partition's batch (confirm, cancel,
//! expiry): core NATS notifications, best effort like the workers' (a
//! missed one costs a reader a fallback to PostgreSQL, never correctness).

use async_nats::Client;
use uuid::Uuid;

use crate::domain::Order;
use crate::subjects::Subjects;

/// Tells every API instance that `orders` changed.
pub async fn publish_orders(client: &Client, subjects: &Subjects, orders: &[Order]) {
    if orders.is_empty() {
        return;
    }
    send(client, subjects.order_changes_event(), orders).await;
}

/// Announces units on their way back to stock (returned by an expiry or a
/// cancel), as restocks are announced: an API instance does not answer
/// "sold out" at its door for such a product until the return is applied
/// (the worker then publishes the return's result like a restock's).
pub async fn announce_returns(
    client: &Client,
    subjects: &Subjects,
    returns: &[(crate::partition::Partition, crate::messages::QueueMessage)],
) {
    for (_, message) in returns {
        if let crate::messages::QueueMessage::Return {
            return_id,
            product_id,
            ..
        } = message
        {
            let payload = bytes::Bytes::from(return_id.to_string());
            if let Err(err) = client
                .publish(subjects.restocking_event(*product_id), payload)
                .await
            {
                tracing::debug!(error = %err, "return announcement not published");
            }
        }
    }
}

/// Tells every API instance that an admin created or changed a product, so
/// that none serves it (or a list page) from before the change. The
/// payload names the instance that made the change (`from`), which has
/// already dropped what it held and skips its own announcement.
pub async fn announce_catalog_change(
    client: &Client,
    subjects: &Subjects,
    product_id: Uuid,
    from: Uuid,
) {
    if let Err(err) = client
        .publish(subjects.catalog_event(product_id), from.to_string().into())
        .await
    {
        tracing::debug!(error = %err, "catalog change not announced");
    }
}

/// Publishes the current stock events of `products`, read from `pool`.
pub async fn publish_stock(
    client: &Client,
    subjects: &Subjects,
    pool: &sqlx::PgPool,
    products: &[Uuid],
) {
    match crate::stock::events(pool, products).await {
        Ok(events) => {
            for event in events {
                send(client, subjects.stock_event(event.product_id), &event).await;
            }
        }
        Err(err) => tracing::debug!(error = %err, "stock events not read"),
    }
}

/// Publishes `value` as JSON on `subject`, best effort: a failure is
/// logged, never returned.
pub async fn send<T: serde::Serialize + ?Sized>(client: &Client, subject: String, value: &T) {
    let Ok(payload) = serde_json::to_vec(value) else {
        return;
    };
    if let Err(err) = client.publish(subject, payload.into()).await {
        tracing::debug!(error = %err, "result event not published");
    }
}

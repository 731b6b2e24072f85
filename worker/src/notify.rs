//! After a batch commits: tell the API (core NATS result events) and warm the
//! cache. Both are best effort: the decision is already durable, and readers
//! fall back to PostgreSQL if an event is lost.

use async_nats::Client;
use checkline_shared::cache::Cache;
use checkline_shared::subjects::Subjects;

use crate::store::Applied;

pub async fn publish(client: &Client, cache: &Cache, subjects: &Subjects, applied: &Applied) {
    // Cache first: a reader woken by the event then finds the decision in Redis.
    cache.put_orders(&applied.orders).await;
    for order in &applied.orders {
        send(client, subjects.order_event(order.id), order).await;
    }
    for (id, result) in &applied.restocks {
        send(client, subjects.restock_event(*id), result).await;
    }
    for stock in &applied.stock {
        send(client, subjects.stock_event(stock.product_id), stock).await;
    }
}

async fn send<T: serde::Serialize>(client: &Client, subject: String, value: &T) {
    let Ok(payload) = serde_json::to_vec(value) else {
        return;
    };
    if let Err(err) = client.publish(subject, payload.into()).await {
        tracing::debug!(error = %err, "result event not published");
    }
}

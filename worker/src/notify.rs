//! After a batch commits: tell the API instances, with one core NATS message
//! per changed product's stock, one per restock and one for the batch's
//! decisions, in that order. Best effort: the decisions are already
//! durable, and readers fall back to PostgreSQL if an event is lost.

use std::time::Duration;

use async_nats::Client;
use checkline_shared::events::send;
use checkline_shared::faults::Faults;
use checkline_shared::partition::Partition;
use checkline_shared::subjects::Subjects;

use crate::store::Applied;

/// Bounded by `limit`: a NATS that stops answering must not hold the
/// partition (and a hand-over waiting for it) for longer.
pub async fn publish(
    client: &Client,
    faults: &Faults,
    subjects: &Subjects,
    partition: Partition,
    applied: &Applied,
    limit: Duration,
) {
    faults.at("publish").await;
    // Stock first: an API instance applies events in the order sent, so by
    // the time it tells anyone of a decision or a restock, the products it
    // serves from memory already show it.
    let all = async {
        for stock in &applied.stock {
            send(client, subjects.stock_event(stock.product_id), stock).await;
        }
        for (id, result) in &applied.restocks {
            send(client, subjects.restock_event(*id), result).await;
        }
        if !applied.orders.is_empty() {
            send(client, subjects.decisions_event(partition), &applied.orders).await;
            let _ = client.flush().await;
            faults.at("mid_publish").await;
        }
    };
    if tokio::time::timeout(limit, all).await.is_err() {
        tracing::debug!(?limit, "result events not all published in time");
    }
}

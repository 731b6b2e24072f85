//! The expirer: reserved orders whose `reserved_until` has passed become
//! `expired`, and their units go back to stock through their products'
//! queues. It is a query on the database's clock, not a queue entry, so it
//! runs on time however long a backlog the queues hold: a reservation is
//! expired within `CHECKLINE_EXPIRY_INTERVAL_MS` of its end (plus one
//! round), and its units return at their entry's turn, behind the backlog.
//! Every worker runs one; they share the due rows without waiting on each
//! other (`shared::reservations::expire_due`).

use std::time::Duration;

use async_nats::Client;
use checkline_shared::queue::Publisher;
use checkline_shared::reservations;
use checkline_shared::subjects::Subjects;
use sqlx::PgPool;
use tokio::sync::watch;

/// What the expirer needs.
pub struct Expirer {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub client: Client,
    pub subjects: Subjects,
    pub interval: Duration,
    pub batch_max: i64,
}

impl Expirer {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let full = self.round().await;
            if full {
                continue;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// One round; true when it expired a full batch (more may be due).
    async fn round(&self) -> bool {
        let (orders, returns) = match reservations::expire_due(&self.pool, self.batch_max).await {
            Ok(expired) => expired,
            Err(err) => {
                tracing::warn!(error = %err, "expiry round failed; retrying next round");
                return false;
            }
        };
        if orders.is_empty() {
            return false;
        }
        tracing::debug!(count = orders.len(), "reservations expired");
        checkline_shared::events::announce_returns(&self.client, &self.subjects, &returns).await;
        // The returns' rows are the outbox: what is not queued here, the
        // partitions' sweeps queue.
        for chunk in returns.chunks(self.publisher.batch_max().max(1)) {
            if let Err(err) = self.publisher.publish_atomic(chunk, None).await {
                tracing::warn!(error = %err, "returned units not queued; the sweep will");
            }
        }
        checkline_shared::events::publish_orders(&self.client, &self.subjects, &orders).await;
        let mut products: Vec<uuid::Uuid> = returns.iter().map(|(_, m)| m.product_id()).collect();
        products.sort_unstable();
        products.dedup();
        checkline_shared::events::publish_stock(
            &self.client,
            &self.subjects,
            &self.pool,
            &products,
        )
        .await;
        orders.len() as i64 >= self.batch_max
    }
}

//! The worker's Prometheus metrics, served on `CHECKLINE_WORKER_METRICS_ADDR`
//! (off when empty): decisions by outcome, batch sizes, accept-to-decision
//! latency, dead letters, lease changes and owned partitions.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use checkline_shared::histogram::SecondsHistogram;

/// Upper bounds of the batch size histogram.
const BATCH_BUCKETS: [u64; 9] = [1, 2, 5, 10, 50, 100, 500, 1000, 10_000];

#[derive(Default)]
pub struct Metrics {
    pub confirmed: AtomicU64,
    /// Decided `reserved` (held until confirm, cancel or expiry).
    pub reserved: AtomicU64,
    pub rejected: [AtomicU64; 5],
    pub duplicates: AtomicU64,
    /// Accepted orders whose rows were missing, written again.
    pub rewritten: AtomicU64,
    pub batches: AtomicU64,
    batch_buckets: [AtomicU64; 9],
    batch_items: AtomicU64,
    decision_latency: SecondsHistogram,
    pub dead_letters: AtomicU64,
    pub requeued: AtomicU64,
    pub rebases: AtomicU64,
    pub dead_letter_failures: AtomicU64,
    pub leases_acquired: AtomicU64,
    pub leases_lost: AtomicU64,
    pub leases_released: AtomicU64,
    pub partitions_owned: AtomicU64,
}

const REASONS: [&str; 5] = [
    "sold_out",
    "insufficient_stock",
    "limit_exceeded",
    "product_unavailable",
    "idempotency_key_reused",
];

impl Metrics {
    pub fn observe_batch(&self, items: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_items.fetch_add(items as u64, Ordering::Relaxed);
        for (bound, bucket) in BATCH_BUCKETS.iter().zip(&self.batch_buckets) {
            if items as u64 <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn observe_decision(&self, order: &checkline_shared::domain::Order) {
        match order.reason {
            None if order.status == checkline_shared::domain::OrderStatus::Reserved => {
                self.reserved.fetch_add(1, Ordering::Relaxed)
            }
            None => self.confirmed.fetch_add(1, Ordering::Relaxed),
            Some(reason) => {
                let i = REASONS
                    .iter()
                    .position(|r| *r == reason.as_str())
                    .unwrap_or(0);
                self.rejected[i].fetch_add(1, Ordering::Relaxed)
            }
        };
        if let Some(decided_at) = order.decided_at {
            let latency = (decided_at - order.created_at).to_std().unwrap_or_default();
            self.decision_latency.observe(latency);
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP checkline_worker_decisions_total Orders decided, by outcome."
        );
        let _ = writeln!(out, "# TYPE checkline_worker_decisions_total counter");
        let _ = writeln!(
            out,
            "checkline_worker_decisions_total{{outcome=\"confirmed\"}} {}",
            get(&self.confirmed)
        );
        let _ = writeln!(
            out,
            "checkline_worker_decisions_total{{outcome=\"reserved\"}} {}",
            get(&self.reserved)
        );
        for (reason, n) in REASONS.iter().zip(&self.rejected) {
            let _ = writeln!(
                out,
                "checkline_worker_decisions_total{{outcome=\"{reason}\"}} {}",
                get(n)
            );
        }
        let simple = [
            (
                "checkline_worker_requeued_total",
                "counter",
                "Stranded orders and restocks published again by the sweep.",
                get(&self.requeued),
            ),
            (
                "checkline_worker_cursor_rebases_total",
                "counter",
                "Partitions re-read from the start because the queue stream was created anew.",
                get(&self.rebases),
            ),
            (
                "checkline_worker_duplicate_messages_total",
                "counter",
                "Queued items already decided (redeliveries, republishes).",
                get(&self.duplicates),
            ),
            (
                "checkline_worker_orders_rewritten_total",
                "counter",
                "Accepted orders whose rows were missing (a PostgreSQL failover lost their commit), written again and decided.",
                get(&self.rewritten),
            ),
            (
                "checkline_worker_dead_letters_total",
                "counter",
                "Messages moved to the dead-letter stream.",
                get(&self.dead_letters),
            ),
            (
                "checkline_worker_dead_letter_failures_total",
                "counter",
                "Dead letters that could not be stored (the dead-letter stream full or \
                 unreachable); their partition waits at them.",
                get(&self.dead_letter_failures),
            ),
            (
                "checkline_worker_leases_acquired_total",
                "counter",
                "Partition leases taken.",
                get(&self.leases_acquired),
            ),
            (
                "checkline_worker_leases_released_total",
                "counter",
                "Partition leases handed over.",
                get(&self.leases_released),
            ),
            (
                "checkline_worker_leases_lost_total",
                "counter",
                "Partition leases lost (expired or taken).",
                get(&self.leases_lost),
            ),
            (
                "checkline_worker_partitions_owned",
                "gauge",
                "Partitions this worker runs.",
                get(&self.partitions_owned),
            ),
        ];
        for (name, kind, help, value) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(out, "# HELP checkline_worker_batch_size Items per committed batch.\n# TYPE checkline_worker_batch_size histogram");
        for (bound, bucket) in BATCH_BUCKETS.iter().zip(&self.batch_buckets) {
            let _ = writeln!(
                out,
                "checkline_worker_batch_size_bucket{{le=\"{bound}\"}} {}",
                get(bucket)
            );
        }
        let _ = writeln!(
            out,
            "checkline_worker_batch_size_bucket{{le=\"+Inf\"}} {}",
            get(&self.batches)
        );
        let _ = writeln!(
            out,
            "checkline_worker_batch_size_sum {}\ncheckline_worker_batch_size_count {}",
            get(&self.batch_items),
            get(&self.batches)
        );
        self.decision_latency.render(
            &mut out,
            "checkline_worker_decision_latency_seconds",
            "From the order's acceptance to its decision.",
        );
        out
    }
}

/// Serves `/metrics` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    metrics.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "metrics server stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_and_counters() {
        let m = Metrics::default();
        m.observe_batch(3);
        m.observe_batch(700);
        let text = m.render();
        assert!(text.contains("checkline_worker_batch_size_bucket{le=\"5\"} 1"));
        assert!(text.contains("checkline_worker_batch_size_bucket{le=\"1000\"} 2"));
        assert!(text.contains("checkline_worker_batch_size_count 2"));
        assert!(text.contains("checkline_worker_decisions_total{outcome=\"confirmed\"} 0"));
    }

    #[test]
    fn reserved_decisions_are_counted_apart() {
        use checkline_shared::domain::{Order, OrderStatus};
        let m = Metrics::default();
        let mut order = Order {
            id: uuid::Uuid::nil(),
            customer_id: "c".into(),
            product_id: None,
            quantity: None,
            lines: Vec::new(),
            status: OrderStatus::Reserved,
            reason: None,
            rejected_product_id: None,
            unit_price_cents: None,
            total_cents: Some(1),
            created_at: chrono::Utc::now(),
            decided_at: Some(chrono::Utc::now()),
            reserved_until: Some(chrono::Utc::now()),
        };
        m.observe_decision(&order);
        order.status = OrderStatus::Confirmed;
        m.observe_decision(&order);
        let text = m.render();
        assert!(text.contains("checkline_worker_decisions_total{outcome=\"reserved\"} 1"));
        assert!(text.contains("checkline_worker_decisions_total{outcome=\"confirmed\"} 1"));
    }
}

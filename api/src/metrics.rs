//! The API's own counters, rendered for `GET /metrics` (Prometheus text).
//! A module of its own so that everything that counts (the accept path,
//! the requeuer, the rate limiter, the server) depends on it, not on `app`.

use std::sync::atomic::{AtomicU64, Ordering};

use checkline_shared::histogram::SecondsHistogram;

/// A monotonic counter for `/metrics`.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Metrics {
    pub orders_accepted: Counter,
    pub orders_replayed: Counter,
    pub sold_out_fast: Counter,
    pub publish_failures: Counter,
    pub accept_batches: Counter,
    pub accept_batch_orders: Counter,
    pub requeues: Counter,
    pub requeues_dropped: Counter,
    pub rate_limited: Counter,
    pub rate_local_decisions: Counter,
    pub connections_refused: Counter,
    pub streams_refused: Counter,
    pub stock_streams_lagged: Counter,
    pub request_timeouts: Counter,
    /// An accept batch's queue write, from its first message sent to the
    /// acknowledgement of its last (JetStream's fsync included).
    pub publish_latency: SecondsHistogram,
}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = render_counters(&[
            (
                "checkline_orders_accepted_total",
                "Orders queued and answered 202.",
                self.orders_accepted.get(),
            ),
            (
                "checkline_orders_replayed_total",
                "Retries answered from the stored order.",
                self.orders_replayed.get(),
            ),
            (
                "checkline_orders_sold_out_fast_total",
                "Orders refused 409 sold_out without queueing.",
                self.sold_out_fast.get(),
            ),
            (
                "checkline_queue_publish_failures_total",
                "Queue publishes that were not acknowledged.",
                self.publish_failures.get(),
            ),
            (
                "checkline_accept_batches_total",
                "Accept batches processed (orders written and queued together).",
                self.accept_batches.get(),
            ),
            (
                "checkline_accept_batch_orders_total",
                "Order requests handled in accept batches; divided by the batches, the mean batch size.",
                self.accept_batch_orders.get(),
            ),
            (
                "checkline_requeues_total",
                "Orders and restocks published again in the background (failed publish, stranded retry).",
                self.requeues.get(),
            ),
            (
                "checkline_requeues_dropped_total",
                "Background requeues given up or not taken (queue full); the worker's sweep queues them.",
                self.requeues_dropped.get(),
            ),
            (
                "checkline_rate_limited_total",
                "Requests refused 429 by a rate limit.",
                self.rate_limited.get(),
            ),
            (
                "checkline_rate_local_decisions_total",
                "Rate-limit checks decided in process because Redis did not answer.",
                self.rate_local_decisions.get(),
            ),
            (
                "checkline_connections_refused_total",
                "Connections over CHECKLINE_MAX_CONNECTIONS (answered 503 or closed).",
                self.connections_refused.get(),
            ),
            (
                "checkline_streams_refused_total",
                "Event streams refused 503 over the stream caps.",
                self.streams_refused.get(),
            ),
            (
                "checkline_stock_streams_lagged_total",
                "Stock streams of every product ended because their client fell behind (it reconnects).",
                self.stock_streams_lagged.get(),
            ),
            (
                "checkline_request_timeouts_total",
                "Requests answered 503 after CHECKLINE_REQUEST_TIMEOUT_MS.",
                self.request_timeouts.get(),
            ),
        ]);
        self.publish_latency.render(
            &mut out,
            "checkline_queue_publish_seconds",
            "An accept batch's queue write, sent to acknowledged (JetStream's fsync included); failed writes too.",
        );
        out
    }
}

/// Counters as Prometheus text: name, help, value.
pub fn render_counters(counters: &[(&str, &str, u64)]) -> String {
    let mut out = String::new();
    for (name, help, value) in counters {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    out
}

//! Publishing again, in the background, what was written but may not be in
//! the queue: orders and restocks whose publish failed or timed out, and
//! stranded ones that a retry brought back.
//!
//! Off the request path on purpose: a slow or absent NATS must not hold an
//! accept pipeline or a request. The queue of work is bounded; what does not
//! fit, or still fails after a few attempts, is left to the worker's
//! stranded-order sweep, which finds every pending row in the end (see
//! docs/operations.md, "What a status means to a client"). A copy of a message
//! that is in the queue after all is harmless: the worker decides only
//! pending rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use checkline_shared::faults::Faults;
use checkline_shared::messages::QueueMessage;
use checkline_shared::partition::Partition;
use checkline_shared::queue::{self, Publisher, StreamLimits};
use checkline_shared::subjects::Subjects;
use tokio::sync::{mpsc, Mutex, Semaphore};

use crate::metrics::Metrics;

/// Attempts per item before the sweep is left to find it.
const ATTEMPTS: u32 = 3;
/// Publishes in flight at once.
const CONCURRENCY: usize = 16;

struct Item {
    partition: Partition,
    message: QueueMessage,
    request_id: Option<String>,
}

/// Handle to the background requeue task.
#[derive(Clone)]
pub struct Requeuer {
    tx: mpsc::Sender<Item>,
    metrics: Arc<Metrics>,
    requeue_after: Duration,
}

/// What the requeue task publishes with.
pub struct Deps {
    pub pool: sqlx::PgPool,
    pub js: async_nats::jetstream::Context,
    pub publisher: Publisher,
    pub subjects: Subjects,
    pub stream_limits: StreamLimits,
    pub faults: Arc<Faults>,
    pub metrics: Arc<Metrics>,
    /// How long a pending row may be unqueued before a retry that finds it
    /// publishes it again (`CHECKLINE_REQUEUE_AFTER_MS`).
    pub requeue_after: Duration,
}

impl Requeuer {
    pub fn start(deps: Deps, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let (metrics, requeue_after) = (deps.metrics.clone(), deps.requeue_after);
        tokio::spawn(run(rx, Arc::new(deps)));
        Self {
            tx,
            metrics,
            requeue_after,
        }
    }

    /// What a retry does with a row it finds still pending: one written
    /// longer than `CHECKLINE_REQUEUE_AFTER_MS` ago may never have reached
    /// the queue, so it is [`submit`](Self::submit)ted again (a copy of a
    /// message that is queued after all is harmless); a younger one is left
    /// to its own publish.
    pub fn submit_if_stranded(
        &self,
        partition: Partition,
        message: QueueMessage,
        written_at: chrono::DateTime<chrono::Utc>,
        request_id: Option<String>,
    ) {
        let age = (chrono::Utc::now() - written_at)
            .to_std()
            .unwrap_or_default();
        if age > self.requeue_after {
            self.submit(partition, message, request_id);
        }
    }

    /// Queues `message` for publishing on `partition`; never waits. When the
    /// requeue queue is full the item is dropped (and counted): the worker's
    /// sweep will find the row.
    pub fn submit(&self, partition: Partition, message: QueueMessage, request_id: Option<String>) {
        let item = Item {
            partition,
            message,
            request_id,
        };
        if self.tx.try_send(item).is_err() {
            self.metrics.requeues_dropped.inc();
            tracing::warn!("requeue queue full; the worker's sweep will queue the item");
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Item>, deps: Arc<Deps>) {
    let in_flight = Arc::new(Semaphore::new(CONCURRENCY));
    let stream_checked = Arc::new(Mutex::new(None::<Instant>));
    while let Some(item) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let deps = deps.clone();
        let stream_checked = stream_checked.clone();
        tokio::spawn(async move {
            requeue(&deps, &stream_checked, item).await;
            drop(permit);
        });
    }
}

async fn requeue(deps: &Deps, stream_checked: &Mutex<Option<Instant>>, item: Item) {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        deps.faults.at("requeue_publish").await;
        let published =
            deps.publisher
                .publish(item.partition, &item.message, item.request_id.as_deref());
        match published.await {
            Ok(_) => {
                deps.metrics.requeues.inc();
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, attempt, message_id = %item.message.message_id(), "requeue failed");
                ensure_stream(deps, stream_checked).await;
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
    }
    deps.metrics.requeues_dropped.inc();
    tracing::warn!(message_id = %item.message.message_id(), "requeue given up; the worker's sweep will queue it");
}

/// A publish that keeps failing may mean the stream is gone (deleted, or
/// NATS lost its store): declare it again, at most once a second.
async fn ensure_stream(deps: &Deps, checked: &Mutex<Option<Instant>>) {
    let mut checked = checked.lock().await;
    if checked.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
        return;
    }
    *checked = Some(Instant::now());
    let first_sequence = match checkline_shared::db::next_queue_sequence(&deps.pool).await {
        Ok(first_sequence) => first_sequence,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the partition cursors to declare the queue stream");
            return;
        }
    };
    let declared =
        queue::ensure_stream(&deps.js, &deps.subjects, deps.stream_limits, first_sequence);
    if let Err(err) = declared.await {
        tracing::warn!(error = %err, "cannot declare the queue stream");
    }
}

//! One partition's consumer loop.
//!
//! The partition's position is its cursor in PostgreSQL (the stream sequence
//! of the last applied message), not a JetStream ack floor. The loop reads the
//! cursor, opens an ordered consumer on the partition's subjects starting
//! right after it, and applies whatever is ready as one batch in one
//! transaction that also advances the cursor. A crash anywhere replays from
//! the committed cursor; a message is applied at most once because the cursor
//! only moves by compare-and-set, and at least once because nothing moves it
//! but a commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, stream::Stream as JsStream};
use backon::{BackoffBuilder, ExponentialBuilder};
use checkline_shared::messages::QueueMessage;
use checkline_shared::partition::Partition;
use checkline_shared::queue::{self, Publisher, StreamLimits};
use checkline_shared::subjects::Subjects;
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::WorkerConfig;
use crate::store::{
    self, AcceptedOrder, QueuedKind, QueuedRef, StoreError, StrandedBefore, StreamIdentity,
};
use crate::{deadletter, notify};
use chrono::{DateTime, Utc};

/// Everything a partition loop needs; shared by all partitions of a worker.
#[derive(Clone)]
pub struct Deps {
    pub config: Arc<WorkerConfig>,
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Where the sweep queues stranded rows again.
    pub publisher: Publisher,
    /// The latest look at the queue stream (`stream_watch`).
    pub stream_seen: watch::Receiver<Option<crate::stream_watch::Seen>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub subjects: Subjects,
}

#[derive(Debug, thiserror::Error)]
enum LoopError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("queue: {0}")]
    Queue(String),
    #[error("shutting down")]
    Shutdown,
}

/// Runs the partition until `shutdown` turns true or the partition is fenced
/// (taken over by another worker), restarting from the database cursor after
/// any other error. `token` is the fencing token of this worker's lease.
pub async fn run(
    deps: Deps,
    partition: Partition,
    token: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    let span =
        tracing::info_span!("partition", partition = %partition, worker = %deps.config.worker_id);
    async move {
        let mut backoff = retry_delays(&deps.config);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match consume(&deps, partition, token, &mut shutdown).await {
                Ok(()) | Err(LoopError::Shutdown) => return,
                Err(LoopError::Store(StoreError::Fenced { .. })) => {
                    tracing::warn!("partition taken over by another worker; stopping");
                    return;
                }
                Err(err) => {
                    let delay = backoff.next().unwrap_or(deps.config.retry_max_delay);
                    tracing::warn!(error = %err, retry_in = ?delay, "partition loop restarting");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
}

fn retry_delays(config: &WorkerConfig) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(config.retry_max_delay)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn consume(
    deps: &Deps,
    partition: Partition,
    token: i64,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), LoopError> {
    let config = &deps.config;
    // Declared again on every (re)start: if the stream was lost, this
    // creates it, and the cursor is re-based onto it below.
    let first_sequence = checkline_shared::db::next_queue_sequence(&deps.pool).await?;
    let declare = queue::ensure_stream(
        &deps.js,
        &deps.subjects,
        StreamLimits::from_config(&config.common),
        first_sequence,
    );
    let stream = tokio::select! {
        _ = shutdown.changed() => return Err(LoopError::Shutdown),
        stream = declare => stream.map_err(|e| LoopError::Queue(e.to_string()))?,
    };
    let identity = StreamIdentity {
        created: queue::utc(stream.cached_info().created),
        last_sequence: stream.cached_info().state.last_sequence,
    };
    // Pending rows written before this instant cannot be in the queue ahead
    // of the cursor (see `sweep`); `None` until a message is applied.
    let mut applied_through: Option<DateTime<Utc>> = None;
    let mut last_sweep = Instant::now();
    let mut cursor = match store::align_cursor(&deps.pool, partition, token, identity).await? {
        store::Aligned::Kept(kept) => kept,
        store::Aligned::Rebased { was } => {
            // Everything queued in the lost stream is gone with it: whatever
            // is still pending and was written before this stream existed is
            // queued again right away, oldest first, behind what the new
            // stream already holds.
            tracing::warn!(
                old_cursor = was,
                stream_created = %identity.created,
                "the queue stream is not the one the cursor counted in; re-reading the partition and queueing its pending orders again"
            );
            deps.metrics
                .rebases
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            sweep(
                deps,
                partition,
                StrandedBefore {
                    age: None,
                    written_before: Some(identity.created - margin(config)),
                },
            )
            .await;
            last_sweep = Instant::now();
            0
        }
    };
    let deliver_policy = if cursor == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: cursor + 1,
        }
    };
    // Opening the consumer waits on NATS; a shutdown must not wait for it.
    let open = async {
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: deps.subjects.partition_filter(partition),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| LoopError::Queue(e.to_string()))?;
        consumer
            .messages()
            .await
            .map_err(|e| LoopError::Queue(e.to_string()))
    };
    let messages = tokio::select! {
        _ = shutdown.changed() => return Err(LoopError::Shutdown),
        messages = open => messages?,
    };
    // Tests: a consumer that never delivers, as one did after its server died.
    let messages = if config.common.faults.fail("consumer_deaf") {
        futures::stream::pending().left_stream()
    } else {
        messages.right_stream()
    };
    // Whatever is ready, up to batch_max: a lone order is decided at once, a
    // burst in large batches.
    let mut batches = messages.ready_chunks(config.batch_max);
    tracing::info!(cursor, "consuming");

    let mut last_purge = Instant::now();
    let mut purged_below = 0;
    let started = Instant::now();
    // When the consumer last delivered anything, and when a sweep last
    // queued stranded items again (their copies arrive within milliseconds).
    let mut last_delivery = Instant::now();
    let mut requeued_at: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => return Err(LoopError::Shutdown),
            next = tokio::time::timeout(config.idle_after, batches.next()) => next,
        };
        // An ordered consumer may carry on quietly on a stream created anew
        // under the same name; only its identity tells.
        same_stream(deps, identity, started)?;
        // The sweep runs busy or idle: a partition whose backlog never
        // drains still gets its stranded orders queued, within
        // CHECKLINE_REQUEUE_AFTER_MS and half of it again.
        let idle = next.is_err();
        if last_sweep.elapsed() >= config.common.requeue_after / 2 {
            last_sweep = Instant::now();
            let written_before = if idle {
                None
            } else {
                applied_through.map(|t| t - margin(config))
            };
            // Busy and nothing applied yet in this run: no bound is known.
            if idle || written_before.is_some() {
                // Items queued again a whole sweep ago and still nothing
                // delivered: the consumer has gone deaf. Seen after the NATS
                // server it was opened on died: the client reconnected to
                // another member, but the ordered consumer delivered no
                // more. It is opened again from the cursor.
                if requeued_at.is_some_and(|at| last_delivery < at) {
                    return Err(LoopError::Queue(
                        "the consumer delivered nothing since stranded items were queued again; reopening it"
                            .into(),
                    ));
                }
                let before = StrandedBefore {
                    age: Some(config.common.requeue_after),
                    written_before,
                };
                requeued_at = (sweep(deps, partition, before).await > 0).then(Instant::now);
            }
        }
        let chunk = match next {
            Err(_idle) => {
                if cursor + 1 > purged_below && same_stream(deps, identity, started)? {
                    purge(deps, &stream, partition, cursor).await;
                    purged_below = cursor + 1;
                    last_purge = Instant::now();
                }
                continue;
            }
            Ok(None) => return Err(LoopError::Queue("consumer stream ended".into())),
            Ok(Some(chunk)) => {
                last_delivery = Instant::now();
                chunk
            }
        };

        let mut batch = Vec::with_capacity(chunk.len());
        let mut dead = Vec::new();
        let mut last_stored_at = None;
        for item in chunk {
            let message = item.map_err(|e| LoopError::Queue(e.to_string()))?;
            let info = message
                .info()
                .map_err(|e| LoopError::Queue(e.to_string()))?;
            let (sequence, stored_at) = (info.stream_sequence, queue::utc(info.published));
            if sequence <= cursor {
                continue;
            }
            last_stored_at = Some(stored_at);
            let single = |kind| QueuedRef {
                sequence,
                index: 0,
                kind,
                accepted: None,
            };
            match QueueMessage::decode(&message.payload) {
                Ok(QueueMessage::Orders { orders, product_id }) => {
                    batch.extend(orders.into_iter().enumerate().map(|(i, o)| QueuedRef {
                        sequence,
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        kind: QueuedKind::Order(o.order_id),
                        accepted: AcceptedOrder::carried(
                            o.key,
                            o.customer_id,
                            product_id,
                            o.quantity,
                            o.reserve_secs,
                        ),
                    }));
                }
                Ok(QueueMessage::Order {
                    order_id,
                    product_id,
                    customer_id,
                    quantity,
                    key,
                    reserve_secs,
                    ..
                }) => batch.push(QueuedRef {
                    accepted: AcceptedOrder::carried(
                        key,
                        customer_id,
                        product_id,
                        quantity,
                        reserve_secs,
                    ),
                    ..single(QueuedKind::Order(order_id))
                }),
                Ok(QueueMessage::Restock { restock_id, .. }) => {
                    batch.push(single(QueuedKind::Restock(restock_id)));
                }
                Ok(QueueMessage::Line {
                    order_id, line_no, ..
                }) => batch.push(single(QueuedKind::Line(order_id, line_no))),
                Ok(QueueMessage::Settle {
                    order_id, line_no, ..
                }) => batch.push(single(QueuedKind::Settle(order_id, line_no))),
                Ok(QueueMessage::Return { return_id, .. }) => {
                    batch.push(single(QueuedKind::Return(return_id)));
                }
                Err(err) => {
                    tracing::error!(sequence, error = %err, subject = %message.subject, "undecodable message; dead-lettering it");
                    dead.push((
                        message.subject.to_string(),
                        sequence,
                        message.payload.clone(),
                        err.to_string(),
                    ));
                    batch.push(single(QueuedKind::Skip));
                }
            }
        }
        let Some(last) = batch.last().map(|r| r.sequence) else {
            continue;
        };

        // Dead letters are stored before the cursor can move past them; if
        // storing fails, the batch is read again from the cursor.
        for (subject, sequence, payload, reason) in dead {
            deadletter::send(
                &deps.js,
                &deps.subjects,
                partition,
                &subject,
                sequence,
                payload,
                &reason,
                config.common.publish_timeout,
            )
            .await
            .map_err(|e| {
                // Never move past a dead letter that was not stored.
                deps.metrics
                    .dead_letter_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(sequence, error = %e, "dead letter not stored; the partition waits at it (make room: replay or purge dead letters, or raise CHECKLINE_DEAD_LETTER_MAX_BYTES)");
                LoopError::Queue(e.to_string())
            })?;
            deps.metrics
                .dead_letters
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }

        let started = Instant::now();
        let applied = apply_with_retry(deps, partition, token, cursor, &batch, shutdown).await?;
        cursor = last;
        applied_through = last_stored_at.or(applied_through);
        deps.metrics.observe_batch(batch.len());
        deps.metrics.duplicates.fetch_add(
            applied.duplicates as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        deps.metrics.rewritten.fetch_add(
            applied.rewritten as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        for order in &applied.orders {
            deps.metrics.observe_decision(order);
        }
        tracing::debug!(
            size = batch.len(),
            decided = applied.orders.len(),
            duplicates = applied.duplicates,
            elapsed_ms = started.elapsed().as_millis() as u64,
            cursor,
            "batch committed"
        );
        // The settled orders' settle entries go to their lines' queues. Their
        // lines are the outbox: what fails here the sweep queues later.
        for settles in applied.settles.chunks(deps.publisher.batch_max().max(1)) {
            if let Err(err) = deps.publisher.publish_atomic(settles, None).await {
                tracing::warn!(error = %err, count = settles.len(), "settle entries not queued; the sweep will");
            }
        }
        let limit = config.common.publish_timeout;
        notify::publish(
            &deps.client,
            &deps.config.common.faults,
            &deps.subjects,
            partition,
            &applied,
            limit,
        )
        .await;

        if last_purge.elapsed() >= config.purge_interval && same_stream(deps, identity, started)? {
            purge(deps, &stream, partition, cursor).await;
            purged_below = cursor + 1;
            last_purge = Instant::now();
        }
    }
}

/// Retries transient failures (database down, connection lost) with backoff
/// for as long as it takes; anything else goes back to the caller, which
/// restarts from the database cursor.
async fn apply_with_retry(
    deps: &Deps,
    partition: Partition,
    token: i64,
    cursor: u64,
    batch: &[QueuedRef],
    shutdown: &mut watch::Receiver<bool>,
) -> Result<store::Applied, LoopError> {
    let mut delays = retry_delays(&deps.config);
    loop {
        let attempt = store::apply_batch(
            &deps.pool,
            &deps.config.common.faults,
            partition,
            token,
            cursor,
            batch,
        );
        // Given up, the transaction is dropped with its connection: nothing
        // it wrote stays. Had its commit landed unseen, the retry finds the
        // cursor moved and the loop re-aligns, as after a lost reply.
        let result = match tokio::time::timeout(deps.config.batch_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::TimedOut(deps.config.batch_timeout)),
        };
        match result {
            Ok(applied) => return Ok(applied),
            Err(err) if err.is_transient() => {
                let delay = delays.next().unwrap_or(deps.config.retry_max_delay);
                tracing::warn!(error = %err, retry_in = ?delay, "batch failed, retrying");
                tokio::select! {
                    _ = shutdown.changed() => return Err(LoopError::Shutdown),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Drops the partition's messages below `cursor + 1`: they are decided, and
/// the database holds everything about them.
async fn purge(deps: &Deps, stream: &JsStream, partition: Partition, cursor: u64) {
    if cursor == 0 {
        return;
    }
    let purge = async {
        stream
            .purge()
            .filter(deps.subjects.partition_filter(partition))
            .sequence(cursor + 1)
            .await
    };
    // Bounded like a publish: a NATS that stops answering must not hold the
    // partition.
    match tokio::time::timeout(deps.config.common.publish_timeout, purge).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "purge failed; will retry"),
        Err(_) => tracing::warn!("purge timed out; will retry"),
    }
}

/// Whether the queue stream is still the one `identity` describes, by the
/// worker's latest look at it (`stream_watch`) taken after `since`:
/// `Ok(true)` when a recent look (within three check intervals) saw it,
/// `Ok(false)` when no recent look says (purges wait), and an error when it
/// is gone or was created anew, so that the loop restarts, declares it and
/// re-bases its cursor. A purge by sequence must never run on another stream
/// than the cursor's: it would delete undecided messages.
fn same_stream(deps: &Deps, identity: StreamIdentity, since: Instant) -> Result<bool, LoopError> {
    let Some(seen) = *deps.stream_seen.borrow() else {
        return Ok(false);
    };
    if seen.at < since {
        return Ok(false);
    }
    match seen.created {
        Some(created) if created == identity.created => {
            Ok(seen.at.elapsed() <= deps.config.stream_check_interval * 3)
        }
        Some(_) => Err(LoopError::Queue("the queue stream was created anew".into())),
        None => Err(LoopError::Queue("the queue stream is gone".into())),
    }
}

/// How much earlier than a stored message a row must have been written to
/// prove that its own publish is over: the publish timeout, plus a second
/// for the clocks of PostgreSQL and NATS to disagree.
fn margin(config: &WorkerConfig) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(config.common.publish_timeout + Duration::from_secs(1))
        .unwrap_or(chrono::TimeDelta::MAX)
}

/// Publishes again what was written as pending but never made it into the
/// queue (its publish failed, the API died before it, or the stream that
/// held it was lost). A copy of something that is in the queue after all is
/// harmless: the worker decides only pending rows. Bounded: the publishes go
/// out together and the whole sweep waits at most twice the publish
/// timeout; what fails is found by the next sweep.
///
/// Returns how many items it found stranded.
async fn sweep(deps: &Deps, partition: Partition, before: StrandedBefore) -> usize {
    let stranded =
        match store::stranded(&deps.pool, partition, before, deps.config.requeue_batch_max).await {
            Ok(stranded) => stranded,
            Err(err) => {
                tracing::warn!(error = %err, "stranded-order sweep failed; will retry");
                return 0;
            }
        };
    if stranded.is_empty() {
        return 0;
    }
    let count = stranded.len();
    tracing::warn!(count, "requeueing stranded items");
    // Each sweep's copies get ids of their own (see `Publisher::publish_copy`):
    // a row is swept only when its message cannot be in the queue.
    let sweep_at = chrono::Utc::now().timestamp_millis();
    let messages: Vec<QueueMessage> = stranded
        .orders
        .iter()
        .filter_map(QueueMessage::lone_order)
        .chain(
            stranded
                .restocks
                .into_iter()
                .map(|r| QueueMessage::Restock {
                    restock_id: r.id,
                    product_id: r.product_id,
                    quantity: r.quantity,
                }),
        )
        .chain(stranded.entries)
        .collect();
    let mut publishes: Vec<futures::future::BoxFuture<'_, Result<(), queue::PublishError>>> =
        messages
            .iter()
            .map(|message| {
                Box::pin(async move {
                    deps.publisher
                        .publish_copy(partition, message, sweep_at)
                        .await
                        .map(|_| ())
                }) as futures::future::BoxFuture<'_, _>
            })
            .collect();
    // An order of several lines goes back whole, as one atomic write.
    publishes.extend(stranded.carts.iter().map(|lines| {
        Box::pin(deps.publisher.publish_atomic_copy(lines, sweep_at))
            as futures::future::BoxFuture<'_, _>
    }));
    let all = futures::stream::iter(publishes)
        .buffer_unordered(64)
        .collect::<Vec<_>>();
    match tokio::time::timeout(deps.publisher.timeout() * 2, all).await {
        Ok(results) => {
            let failed = results.iter().filter(|r| r.is_err()).count();
            deps.metrics.requeued.fetch_add(
                (results.len() - failed) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            if failed > 0 {
                tracing::warn!(
                    failed,
                    "some stranded items not requeued; the next sweep retries"
                );
            }
        }
        Err(_) => tracing::warn!("stranded-order sweep timed out; the next sweep retries"),
    }
    count
}

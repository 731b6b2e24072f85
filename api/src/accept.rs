//! The accept path, batched.
//!
//! One order per database round trip and per fsynced queue message caps a
//! node at a few thousand orders a second. So order requests are handed to
//! the acceptor, which gathers whatever has arrived into a batch (a lone
//! order goes alone; under load, batches grow while the previous ones are in
//! flight, like a database's group commit) and for the whole batch:
//!
//! 1. refuses unknown products (404), products known to be sold out (409) and
//!    full partitions (503), after answering those that retry an accepted
//!    key from the stored order (one query),
//! 2. writes the new orders as pending (one multi-row insert; the unique
//!    (customer, key) constraint settles every race and finds the retries,
//!    which are answered from the stored order: one more query, if any),
//! 3. publishes one queue message per product holding its orders in arrival
//!    order, all of them as one atomic JetStream batch (one fsynced write and
//!    one acknowledgement however many products the batch spans),
//! 4. answers each request: 202, 200 replayed, or its error.
//!
//! A request waits at most for its own batch. Every bound is a setting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use checkline_shared::db::{order_columns, OrderRow, ORDER_COLUMNS};
use checkline_shared::domain::{CustomerId, IdempotencyKey, Order};
use checkline_shared::messages::{QueueMessage, QueuedOrder};
use checkline_shared::partition::Partition;
use checkline_shared::queue::{self, Publisher};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use crate::catalog::{Catalog, Known, ProductRead};
use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::requeue::Requeuer;

/// One order request, validated and authenticated.
pub struct Request {
    pub customer: CustomerId,
    pub key: IdempotencyKey,
    /// SHA-256 of product id and quantity: a retry must repeat them.
    pub hash: Vec<u8>,
    pub product_id: Uuid,
    pub quantity: i32,
    /// Reserve instead of buy (`reserve_secs`).
    pub reserve_secs: Option<i32>,
    pub request_id: Option<String>,
}

/// How an order request ended, when it did not fail.
#[derive(Debug)]
pub enum Accepted {
    /// Newly queued: 202.
    New(Order),
    /// A retry of a known key: 200 with `Idempotent-Replayed: true`.
    Replayed(Order),
}

pub(crate) type Reply = oneshot::Sender<Result<Accepted, ApiError>>;

/// Handle to the batching task.
#[derive(Clone)]
pub struct Acceptor {
    tx: mpsc::Sender<(Request, Reply)>,
    deps: Arc<Deps>,
}

/// What the batching task works with.
pub struct Deps {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<Metrics>,
    pub backlog: Arc<Backlog>,
    pub requeuer: Requeuer,
    pub config: ApiConfig,
}

impl Acceptor {
    pub fn start(deps: Deps) -> Self {
        let (tx, rx) = mpsc::channel(deps.config.accept_queue_max);
        let deps = Arc::new(deps);
        tokio::spawn(run(rx, deps.clone()));
        Self { tx, deps }
    }

    /// What the acceptor works with, shared with the carts' acceptor
    /// (`crate::cart`).
    pub fn deps(&self) -> Arc<Deps> {
        self.deps.clone()
    }

    pub async fn submit(&self, request: Request) -> Result<Accepted, ApiError> {
        submit_to(&self.tx, request).await
    }
}

/// Hands `request` to a batching task's channel and waits for its answer:
/// `503 overloaded` at once when the channel is full.
pub(crate) async fn submit_to<R>(
    tx: &mpsc::Sender<(R, Reply)>,
    request: R,
) -> Result<Accepted, ApiError> {
    let (reply, answer) = oneshot::channel();
    tx.try_send((request, reply)).map_err(|err| match err {
        mpsc::error::TrySendError::Full(_) => ApiError::Overloaded(
            "too many orders are waiting; retry shortly with the same Idempotency-Key".into(),
        ),
        mpsc::error::TrySendError::Closed(_) => {
            ApiError::Unavailable("the api is shutting down".into())
        }
    })?;
    answer.await.unwrap_or_else(|_| {
        Err(ApiError::Internal(
            "accept batch ended without an answer".into(),
        ))
    })
}

/// The batching task: gathers whatever has arrived into a batch (up to
/// `CHECKLINE_ACCEPT_BATCH_MAX`) and hands it to `process`, at most
/// `CHECKLINE_ACCEPT_PIPELINES` batches at once. Used for one-line orders
/// and for carts.
pub(crate) async fn gather<R, F, Fut>(
    mut rx: mpsc::Receiver<(R, Reply)>,
    deps: Arc<Deps>,
    process: F,
) where
    R: Send + 'static,
    F: Fn(Arc<Deps>, Vec<(R, Reply)>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let pipelines = Arc::new(Semaphore::new(deps.config.accept_pipelines));
    loop {
        // Take a pipeline first: while all are busy, requests pile up in the
        // channel and the next batch is larger.
        let Ok(permit) = pipelines.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < deps.config.accept_batch_max {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let work = process(deps.clone(), batch);
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

async fn run(rx: mpsc::Receiver<(Request, Reply)>, deps: Arc<Deps>) {
    gather(rx, deps, |deps, batch| async move {
        deps.metrics.accept_batches.inc();
        deps.metrics.accept_batch_orders.add(batch.len() as u64);
        process(&deps, batch).await;
    })
    .await;
}

/// Where a request of the batch stands.
enum Slot {
    Done,
    Pending(Request, Reply),
}

/// What the door said about a request: read from the catalog once per
/// request, and every later step of the batch follows that one reading. A
/// stock event landing in the middle of a batch must not make a retry of an
/// accepted key look like a refusal (its key was not looked up), nor leave a
/// request that passed the door neither refused nor written.
#[derive(Debug, Clone, Copy)]
enum Door {
    Refuse(Refusal),
    Open { partition: Partition },
}

#[derive(Debug, Clone, Copy)]
enum Refusal {
    ProductNotFound,
    SoldOut,
    PartitionFull,
}

impl Refusal {
    fn error(self) -> ApiError {
        match self {
            Self::ProductNotFound => ApiError::ProductNotFound,
            Self::SoldOut => ApiError::SoldOut,
            Self::PartitionFull => ApiError::Overloaded(
                "this product's queue is full; retry shortly with the same Idempotency-Key".into(),
            ),
        }
    }
}

/// Every step answers what it settles; whatever fails, a request is
/// answered exactly once. Once the insert has committed, the batch's orders
/// exist and are never taken back: a failure after it answers 503 and the
/// order is queued again in the background (the rule of docs/operations.md:
/// after a 5xx, retry with the same key; the order, if written, is decided
/// and the retry returns it).
async fn process(deps: &Deps, batch: Vec<(Request, Reply)>) {
    let faults = &deps.config.common.faults;
    faults.at("accept_batch_start").await;
    let mut slots: Vec<Slot> = batch
        .into_iter()
        .map(|(r, tx)| Slot::Pending(r, tx))
        .collect();
    if let Err(err) = refresh_catalog(deps, &slots).await {
        return fail_all(slots, err);
    }
    let doors: Vec<Door> = slots
        .iter()
        .map(|slot| match slot {
            Slot::Pending(r, _) => door(deps, r),
            Slot::Done => Door::Refuse(Refusal::ProductNotFound),
        })
        .collect();
    // A request about to be refused may be the retry of an accepted order:
    // look its key up first, so that a buyer who got in always gets their
    // order back. New orders for an open product skip the look-up: the
    // insert's unique constraint finds the retries among them.
    let refused = |i: usize| matches!(doors[i], Door::Refuse(_));
    if let Err(err) = answer_known_keys(deps, &mut slots, refused).await {
        return fail_all(slots, err);
    }
    faults.at("accept_after_door").await;
    refuse_at_the_door(deps, &mut slots, &doors);
    let inserted = match insert_pending(deps, &mut slots, &doors).await {
        Ok(inserted) => inserted,
        Err(err) => return fail_all(slots, err),
    };
    // Keys that already had an order (retries, or an insert race lost to
    // another batch) are answered from the stored order, while the new ones
    // are published: neither waits for the other, and a failure of the
    // look-up cannot strand what was written.
    let lookup = async {
        if faults.fail("accept_second_lookup") {
            return Err(ApiError::Unavailable("fault point".into()));
        }
        answer_known_keys(deps, &mut slots, |_| true).await
    };
    let ((), looked_up) = tokio::join!(publish(deps, inserted), lookup);
    match looked_up {
        Ok(()) => {
            // Nothing may be left: a request not refused, not written and
            // not known would be a bug in the steps above.
            fail_all(
                slots,
                ApiError::Internal("order request neither written nor refused".into()),
            );
        }
        Err(err) => fail_all(slots, err),
    }
}

/// Answers every request still waiting in the batch with the batch's error.
fn fail_all(slots: Vec<Slot>, err: ApiError) {
    if !slots.iter().any(|s| matches!(s, Slot::Pending(..))) {
        return;
    }
    let unavailable = err.status().as_u16() == 503;
    let message = err.to_string();
    if !unavailable {
        // The cause is logged here once; each request gets a generic 500.
        tracing::error!(error = ?err, "accept batch failed");
    }
    for slot in slots {
        if let Slot::Pending(_, reply) = slot {
            let err = if unavailable {
                ApiError::Unavailable(message.clone())
            } else {
                ApiError::Internal("accept batch failed".into())
            };
            let _ = reply.send(Err(err));
        }
    }
}

fn take(slot: &mut Slot) -> Option<(Request, Reply)> {
    match std::mem::replace(slot, Slot::Done) {
        Slot::Pending(r, tx) => Some((r, tx)),
        Slot::Done => None,
    }
}

/// Retries of keys that already have an order: the stored order (200), or
/// 422 if the request differs.
async fn answer_known_keys(
    deps: &Deps,
    slots: &mut [Slot],
    which: impl Fn(usize) -> bool,
) -> Result<(), ApiError> {
    let (customers, keys): (Vec<&str>, Vec<&str>) = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Slot::Pending(r, _) if which(i) => Some((r.customer.as_str(), r.key.as_str())),
            _ => None,
        })
        .unzip();
    if customers.is_empty() {
        return Ok(());
    }
    #[derive(sqlx::FromRow)]
    struct Existing {
        #[sqlx(flatten)]
        order: OrderRow,
        idempotency_key: String,
        request_hash: Vec<u8>,
        partition: Partition,
    }
    let columns = order_columns("o");
    let rows: Vec<Existing> = sqlx::query_as(&format!(
        "SELECT {columns}, o.idempotency_key, o.request_hash, o.partition \
         FROM orders o JOIN unnest($1::text[], $2::text[]) AS k(customer_id, idempotency_key) \
           ON o.customer_id = k.customer_id AND o.idempotency_key = k.idempotency_key"
    ))
    .bind(&customers)
    .bind(&keys)
    .fetch_all(&deps.pool)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let known: HashMap<(String, String), Existing> = rows
        .into_iter()
        .map(|e| ((e.order.customer_id.clone(), e.idempotency_key.clone()), e))
        .collect();
    for slot in slots.iter_mut() {
        let Slot::Pending(r, _) = slot else { continue };
        let lookup = (r.customer.as_str().to_owned(), r.key.as_str().to_owned());
        let Some(existing) = known.get(&lookup) else {
            continue;
        };
        let same = existing.request_hash == r.hash;
        let partition = existing.partition;
        let order = Order::from(existing.order.clone());
        let Some((request, reply)) = take(slot) else {
            continue;
        };
        if !same {
            let _ = reply.send(Err(ApiError::IdempotencyKeyReused));
            continue;
        }
        requeue_if_stranded(deps, &order, partition, request.request_id);
        deps.metrics.orders_replayed.inc();
        let _ = reply.send(Ok(Accepted::Replayed(order)));
    }
    Ok(())
}

/// A retried order that is still pending may never have reached the queue
/// (see [`Requeuer::submit_if_stranded`]).
fn requeue_if_stranded(
    deps: &Deps,
    order: &Order,
    partition: Partition,
    request_id: Option<String>,
) {
    if order.status.is_decided() {
        return;
    }
    // An order of several lines never reaches here (its request hash
    // differs from any one-line request's); the worker's sweep queues it.
    if let Some(message) = QueueMessage::lone_order(order) {
        deps.requeuer
            .submit_if_stranded(partition, message, order.created_at, request_id);
    }
}

/// Reads the products the catalog does not know, or whose "sold out" is too
/// old to trust, in one query.
async fn refresh_catalog(deps: &Deps, slots: &[Slot]) -> Result<(), ApiError> {
    let ask: Vec<Uuid> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Pending(r, _) => Some(r.product_id),
            Slot::Done => None,
        })
        .collect();
    refresh_products(deps, ask).await
}

/// Reads those of `products` the catalog does not know, or whose "sold out"
/// is too old to trust, in one query.
pub(crate) async fn refresh_products(deps: &Deps, products: Vec<Uuid>) -> Result<(), ApiError> {
    let mut ask: Vec<Uuid> = products
        .into_iter()
        .filter(|id| {
            matches!(
                deps.catalog.lookup(*id),
                Known::Unknown | Known::Stale { .. }
            )
        })
        .collect();
    ask.sort_unstable();
    ask.dedup();
    if !ask.is_empty() {
        let read_at = std::time::Instant::now();
        let rows: Vec<(Uuid, Partition, i64, Vec<Uuid>)> = sqlx::query_as(
            "SELECT p.id, p.partition, p.stock + p.held, \
                 ARRAY(SELECT r.id FROM restocks r WHERE r.product_id = p.id AND r.status = 'pending') \
                 || ARRAY(SELECT s.id FROM stock_returns s \
                          WHERE s.product_id = p.id AND s.status = 'pending') \
             FROM products p WHERE p.id = ANY($1)",
        )
        .bind(&ask)
        .fetch_all(&deps.pool)
        .await?;
        for (id, partition, stock, pending_restocks) in rows {
            let read = ProductRead {
                partition,
                stock,
                pending_restocks,
            };
            deps.catalog.observe_read(id, read, read_at);
        }
    }
    Ok(())
}

/// Whether a request is refused at the door: 404 for an unknown product,
/// 409 for a product known to be sold out, 503 for a partition whose
/// backlog is full.
fn door(deps: &Deps, request: &Request) -> Door {
    match deps.catalog.lookup(request.product_id) {
        Known::Unknown => Door::Refuse(Refusal::ProductNotFound),
        // Just read from PostgreSQL (refresh_catalog), so truthful.
        Known::SoldOut { .. } | Known::Stale { .. } => Door::Refuse(Refusal::SoldOut),
        Known::Open { partition } if deps.backlog.is_full(partition) => {
            Door::Refuse(Refusal::PartitionFull)
        }
        Known::Open { partition } => Door::Open { partition },
    }
}

/// Answers the requests that are refused (known keys were answered before).
fn refuse_at_the_door(deps: &Deps, slots: &mut [Slot], doors: &[Door]) {
    for (slot, door) in slots.iter_mut().zip(doors) {
        let Door::Refuse(refusal) = door else {
            continue;
        };
        if let Some((_, reply)) = take(slot) {
            if matches!(refusal, Refusal::SoldOut) {
                deps.metrics.sold_out_fast.inc();
            }
            let _ = reply.send(Err(refusal.error()));
        }
    }
}

/// A freshly written order waiting for its queue acknowledgement.
struct Written {
    order: Order,
    /// The order's one line (a one-line order's `product_id` and `quantity`).
    product_id: Uuid,
    quantity: i32,
    /// Travel with the order so that its row can be written again
    /// ([`QueuedOrder::key`]).
    key: String,
    reserve_secs: Option<i32>,
    partition: Partition,
    request_id: Option<String>,
    reply: Reply,
}

/// Writes the batch's new orders as pending, in arrival order.
async fn insert_pending(
    deps: &Deps,
    slots: &mut [Slot],
    doors: &[Door],
) -> Result<Vec<Written>, ApiError> {
    let mut ids = Vec::new();
    let mut customers = Vec::new();
    let mut keys = Vec::new();
    let mut hashes = Vec::new();
    let mut products = Vec::new();
    let mut quantities = Vec::new();
    let mut reserves = Vec::new();
    let mut partitions = Vec::new();
    let mut positions = HashMap::new();
    for (i, (slot, door)) in slots.iter().zip(doors).enumerate() {
        let Slot::Pending(r, _) = slot else { continue };
        let Door::Open { partition } = *door else {
            continue;
        };
        // UUIDv7: time-ordered, so "newest first" lists need no extra index.
        let id = Uuid::now_v7();
        positions.insert(id, i);
        ids.push(id);
        customers.push(r.customer.as_str());
        keys.push(r.key.as_str());
        hashes.push(r.hash.as_slice());
        products.push(r.product_id);
        quantities.push(r.quantity);
        reserves.push(r.reserve_secs);
        partitions.push(partition);
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(OrderRow, Partition)> = sqlx::query_as::<_, OrderRowWithPartition>(&format!(
        "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition, reserve_secs) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::uuid[], $6::int[], $7::int[], $8::int[]) \
         ON CONFLICT (customer_id, idempotency_key) DO NOTHING \
         RETURNING {ORDER_COLUMNS}, partition"
    ))
    .bind(&ids)
    .bind(&customers)
    .bind(&keys)
    .bind(&hashes)
    .bind(&products)
    .bind(&quantities)
    .bind(&partitions)
    .bind(&reserves)
    .fetch_all(&deps.pool)
    .await?
    .into_iter()
    .map(|r| (r.order, r.partition))
    .collect();
    let mut written = Vec::with_capacity(rows.len());
    for (row, partition) in rows {
        let Some(&i) = positions.get(&row.id) else {
            continue;
        };
        if let Some((request, reply)) = take(&mut slots[i]) {
            written.push(Written {
                product_id: request.product_id,
                quantity: request.quantity,
                key: request.key.as_str().to_owned(),
                reserve_secs: request.reserve_secs,
                order: Order::from(row),
                partition,
                request_id: request.request_id,
                reply,
            });
        }
    }
    // Keep arrival order: RETURNING does not promise it.
    written.sort_by_key(|w| positions.get(&w.order.id).copied().unwrap_or(usize::MAX));
    Ok(written)
}

#[derive(sqlx::FromRow)]
struct OrderRowWithPartition {
    #[sqlx(flatten)]
    order: OrderRow,
    partition: Partition,
}

/// The orders of one product in one accept batch, in arrival order: one
/// queue message, or a few consecutive ones in the same atomic write when
/// their keys make them long (see [`MESSAGE_BYTES_MAX`]).
struct Group {
    product_id: Uuid,
    partition: Partition,
    orders: Vec<Written>,
}

/// A message and the partition it is queued in.
type Queued = (Partition, QueueMessage);

/// Most bytes of orders in one queue message: a quarter of NATS's default
/// `max_payload` (1 MiB), which the server configurations keep. A group of
/// `CHECKLINE_ACCEPT_BATCH_MAX` (up to 4,096) orders with 255-character
/// keys would exceed it in one message.
const MESSAGE_BYTES_MAX: usize = 256 * 1024;

impl Group {
    /// The group's queue messages, in arrival order.
    fn messages(&self) -> Vec<Queued> {
        chunks(
            self.orders.iter().map(Written::queued_len_bound),
            MESSAGE_BYTES_MAX,
        )
        .into_iter()
        .map(|range| {
            let message = QueueMessage::Orders {
                product_id: self.product_id,
                orders: self.orders[range].iter().map(Written::queued).collect(),
            };
            (self.partition, message)
        })
        .collect()
    }
}

impl Written {
    fn queued(&self) -> QueuedOrder {
        QueuedOrder {
            order_id: self.order.id,
            customer_id: self.order.customer_id.clone(),
            quantity: self.quantity,
            key: Some(self.key.clone()),
            reserve_secs: self.reserve_secs,
        }
    }

    /// At least the bytes of [`Written::queued`] in a message: every field
    /// but the two strings fits in 128, and a key's character may be
    /// escaped to two.
    fn queued_len_bound(&self) -> usize {
        128 + self.order.customer_id.len() + 2 * self.key.len()
    }
}

/// Cuts items of the given sizes, in order, into consecutive ranges of at
/// most `max` bytes each (an item larger than `max` goes alone).
fn chunks(sizes: impl Iterator<Item = usize>, max: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, size) in sizes.enumerate() {
        match ranges.last_mut() {
            Some(open) if bytes + size <= max => {
                open.end = i + 1;
                bytes += size;
            }
            _ => {
                ranges.push(i..i + 1);
                bytes = size;
            }
        }
    }
    ranges
}

/// One message per product, all of them one atomic queue write (one fsync,
/// one acknowledgement, whatever the number of products): each request is
/// answered when that write is acknowledged, or told 503 with the rest of
/// its write when it is not. Only a batch spanning more products than
/// `CHECKLINE_QUEUE_BATCH_MAX` is cut into several writes, published
/// concurrently; an order is always inside exactly one of them.
async fn publish(deps: &Deps, written: Vec<Written>) {
    if written.is_empty() {
        return;
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    for w in written {
        let product_id = w.product_id;
        match index.get(&product_id) {
            Some(&i) => groups[i].orders.push(w),
            None => {
                index.insert(product_id, groups.len());
                groups.push(Group {
                    product_id,
                    partition: w.partition,
                    orders: vec![w],
                });
            }
        }
    }
    // A product's messages stay in one write: writes go out concurrently,
    // and only one write keeps its messages in order.
    let mut writes: Vec<(Vec<Group>, Vec<Queued>)> = Vec::new();
    for group in groups {
        let messages = group.messages();
        match writes.last_mut() {
            Some((write, queued))
                if queued.len() + messages.len() <= deps.publisher.batch_max() =>
            {
                write.push(group);
                queued.extend(messages);
            }
            _ => writes.push((vec![group], messages)),
        }
    }
    let sends = writes.into_iter().map(|(write, messages)| async move {
        let result = publish_write(deps, &write, &messages).await;
        (write, result)
    });
    for (write, result) in futures::future::join_all(sends).await {
        match result {
            Ok(()) => {
                for group in write {
                    deps.backlog.add(group.partition, group.orders.len() as i64);
                    for w in group.orders {
                        deps.metrics.orders_accepted.inc();
                        let _ = w.reply.send(Ok(Accepted::New(w.order)));
                    }
                }
            }
            Err(err) => {
                deps.metrics.publish_failures.inc();
                let orders: usize = write.iter().map(|g| g.orders.len()).sum();
                tracing::warn!(error = %err, orders, "queue publish failed; requeueing in the background");
                // The rows stay: the messages may be in the queue after all
                // (a lost acknowledgement), and taking them back would race
                // the worker deciding them. Each order is published again on
                // its own; the worker decides only pending rows, so a copy is
                // harmless, and the sweep catches whatever this misses.
                for w in write.into_iter().flat_map(|g| g.orders) {
                    let message = QueueMessage::Order {
                        order_id: w.order.id,
                        product_id: w.product_id,
                        customer_id: w.order.customer_id.clone(),
                        quantity: w.quantity,
                        accepted_at: w.order.created_at,
                        key: Some(w.key.clone()),
                        reserve_secs: w.reserve_secs,
                    };
                    deps.requeuer
                        .submit(w.partition, message, w.request_id.clone());
                    let _ = w.reply.send(Err(ApiError::Unavailable(
                        "the order was recorded but its queueing is not confirmed; \
                         retry with the same Idempotency-Key to follow it"
                            .into(),
                    )));
                }
            }
        }
    }
}

/// Publishes one atomic write. Its messages are published once, by the
/// batch that wrote their orders: a duplicate means JetStream dropped them,
/// and the write fails.
async fn publish_write(
    deps: &Deps,
    write: &[Group],
    messages: &[Queued],
) -> Result<(), queue::PublishError> {
    let request_id = write
        .first()
        .and_then(|g| g.orders.first())
        .and_then(|w| w.request_id.as_deref());
    let started = std::time::Instant::now();
    let published = deps.publisher.publish_atomic(messages, request_id).await;
    deps.metrics.publish_latency.observe(started.elapsed());
    published?;
    if deps.config.common.faults.fail("accept_ack_lost") {
        return Err(queue::PublishError::Timeout(
            deps.config.common.publish_timeout,
        ));
    }
    Ok(())
}

/// Undecided orders per partition, measured periodically from PostgreSQL and
/// bumped by each accepted batch in between.
pub struct Backlog {
    pending: Vec<AtomicI64>,
    max: i64,
}

impl Backlog {
    pub fn new(partitions: u32, max: i64) -> Self {
        Self {
            pending: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            max,
        }
    }

    /// Prometheus gauges: undecided orders per partition.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP checkline_partition_backlog Undecided orders per queue partition.\n\
             # TYPE checkline_partition_backlog gauge\n",
        );
        for (partition, count) in self.pending.iter().enumerate() {
            out.push_str(&format!(
                "checkline_partition_backlog{{partition=\"{partition}\"}} {}\n",
                count.load(Ordering::Relaxed)
            ));
        }
        out
    }

    pub fn is_full(&self, partition: Partition) -> bool {
        self.pending
            .get(partition.index())
            .is_some_and(|n| n.load(Ordering::Relaxed) >= self.max)
    }

    pub fn add(&self, partition: Partition, n: i64) {
        if let Some(counter) = self.pending.get(partition.index()) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Re-measures every partition's backlog until the process ends. Each
    /// measure also raises the partitions' low-water marks, which keeps the
    /// next one (and the worker's sweep) to the orders of the last interval
    /// and the backlog (`checkline_shared::pending`).
    pub async fn monitor(self: Arc<Self>, pool: PgPool, interval: std::time::Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let partitions: Vec<Partition> =
            Partition::all(u32::try_from(self.pending.len()).unwrap_or(u32::MAX)).collect();
        loop {
            ticker.tick().await;
            let counts = checkline_shared::pending::measure(&pool, &partitions).await;
            let Ok(counts) = counts else { continue };
            let mut fresh = vec![0; self.pending.len()];
            for (partition, count) in counts {
                if let Some(slot) = fresh.get_mut(partition.index()) {
                    *slot = count;
                }
            }
            for (counter, value) in self.pending.iter().zip(fresh) {
                counter.store(value, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_order_and_stay_under_the_bound() {
        assert_eq!(
            chunks([].into_iter(), 10),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert_eq!(chunks([3, 3, 3].into_iter(), 10), vec![0..3]);
        assert_eq!(chunks([4, 4, 4, 4].into_iter(), 10), vec![0..2, 2..4]);
        // Larger than the bound: alone, never dropped.
        assert_eq!(chunks([4, 20, 4].into_iter(), 10), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn the_largest_accept_batch_fits_nats_messages() {
        // The worst a group can be: 4,096 orders of one product, each with
        // the longest customer id and a 255-character key of characters
        // JSON escapes.
        let queued = QueuedOrder {
            order_id: Uuid::now_v7(),
            customer_id: "c".repeat(64),
            quantity: 100,
            key: Some("\"".repeat(255)),
            reserve_secs: Some(3600),
        };
        let one = serde_json::to_vec(&queued).unwrap().len();
        let bound = 128 + 64 + 2 * 255;
        assert!(one < bound, "{one} bytes, bound {bound}");
        let ranges = chunks(std::iter::repeat_n(bound, 4096), MESSAGE_BYTES_MAX);
        assert_eq!(
            ranges.iter().map(ExactSizeIterator::len).sum::<usize>(),
            4096
        );
        for range in ranges {
            let message = QueueMessage::Orders {
                product_id: Uuid::nil(),
                orders: vec![queued.clone(); range.len()],
            };
            assert!(message.encode().len() < 1024 * 1024 / 2);
        }
    }
}

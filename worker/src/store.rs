//! PostgreSQL side of the worker: one transaction per batch that advances the
//! partition cursor, decides the batch and writes every effect, or nothing.
//!
//! A batch may span any number of products (a store's drop puts dozens in
//! one partition's batch): every step is one statement over arrays, so a
//! batch costs the same round trips whether it holds one product or a
//! hundred: the cursor, the pending orders (and restocks, when it holds
//! any), the products, the customers' purchases, then one write each for
//! stock, orders, purchases and restocks (those with something to write),
//! and the commit: at most ten, whatever the batch.

use std::collections::{HashMap, HashSet};

use checkline_shared::db::{order_columns, OrderRow};
use checkline_shared::domain::order_request_hash;
use checkline_shared::domain::{Order, RestockResult, StockEvent};
use checkline_shared::faults::Faults;
use checkline_shared::messages::QueueMessage;
use checkline_shared::partition::Partition;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::carts;
use crate::decide::{self, Decision, Entry, Item, Outcome, Parked, ProductState, Purchases};

pub use crate::batch_error::StoreError;

/// A queued message of a batch, with its JetStream stream sequence.
#[derive(Debug, Clone)]
pub struct QueuedRef {
    pub sequence: u64,
    /// Position inside a multi-order message (0 for single items).
    pub index: u32,
    pub kind: QueuedKind,
    /// For a one-line order's first message: what writes its row again
    /// should it be missing.
    pub accepted: Option<Box<AcceptedOrder>>,
}

/// A one-line order as its accept published it: enough to write its row
/// again, pending, when the row is missing. The API commits the row before
/// it publishes, so a missing row was lost with its commit (an asynchronous
/// PostgreSQL failover); the `202` the buyer holds is kept all the same.
#[derive(Debug, Clone)]
pub struct AcceptedOrder {
    pub customer_id: String,
    pub key: String,
    pub product_id: Uuid,
    pub quantity: i32,
    pub reserve_secs: Option<i32>,
}

impl AcceptedOrder {
    /// What a queue message says of its order: `None` when it carries no
    /// key (a sweep's republish, or a message from before keys travelled).
    pub fn carried(
        key: Option<String>,
        customer_id: String,
        product_id: Uuid,
        quantity: i32,
        reserve_secs: Option<i32>,
    ) -> Option<Box<Self>> {
        key.map(|key| {
            Box::new(Self {
                customer_id,
                key,
                product_id,
                quantity,
                reserve_secs,
            })
        })
    }
}

/// What a queue entry refers to; also the key that makes an entry count
/// once in a batch however often the batch holds its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueuedKind {
    Order(Uuid),
    Restock(Uuid),
    /// A line of an order of several lines: (order, line number).
    Line(Uuid, i32),
    /// A settled line's hold: (order, line number).
    Settle(Uuid, i32),
    /// Units of a reserved order coming back.
    Return(Uuid),
    /// A message that could not be decoded: it only advances the cursor.
    Skip,
}

/// What a committed batch changed, for the notifications that follow.
#[derive(Debug, Default)]
pub struct Applied {
    /// Orders decided (one-line orders, and orders of several lines that
    /// settled) in this batch.
    pub orders: Vec<Order>,
    pub stock: Vec<StockEvent>,
    pub restocks: Vec<(Uuid, RestockResult)>,
    /// Settle entries of the orders settled in this batch, to be queued
    /// (their lines are the outbox: the sweep queues what this misses).
    pub settles: Vec<(Partition, QueueMessage)>,
    /// Messages whose order or restock was already decided (redeliveries).
    pub duplicates: usize,
    /// Accepted orders whose rows were missing, written again and decided.
    pub rewritten: usize,
}
/// The queue stream a partition is consumed from, as the worker found it.
#[derive(Debug, Clone, Copy)]
pub struct StreamIdentity {
    /// When the stream was created (to the microsecond, as stored).
    pub created: DateTime<Utc>,
    /// Its last sequence so far.
    pub last_sequence: u64,
}

/// Where the partition's cursor stands in `stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aligned {
    /// The cursor counts in this stream.
    Kept(u64),
    /// The cursor counted in another stream (this one was created since,
    /// or it is behind the cursor): it is back at 0.
    Rebased { was: u64 },
}

/// Makes sure the partition's cursor counts in `stream`: a cursor from a
/// stream that was lost and created again would skip every new message
/// below it. Re-reading from 0 is always safe (decided orders are skipped),
/// so any doubt re-bases. Fenced like a batch: only the owner moves it.
pub async fn align_cursor(
    pool: &PgPool,
    partition: Partition,
    token: i64,
    stream: StreamIdentity,
) -> Result<Aligned, StoreError> {
    let created = stream.created.trunc_subsecs(6);
    let (cursor, recorded): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT last_sequence, stream_created FROM partition_cursors WHERE partition = $1",
    )
    .bind(partition)
    .fetch_one(pool)
    .await?;
    let cursor = u64::try_from(cursor).unwrap_or(0);
    let keep = recorded.is_none_or(|r| r == created) && cursor <= stream.last_sequence;
    if keep && recorded.is_some() {
        return Ok(Aligned::Kept(cursor));
    }
    // First sight of this stream (recorded then), or a different one.
    let new_cursor = if keep { cursor } else { 0 };
    let updated = sqlx::query(
        "UPDATE partition_cursors SET last_sequence = $3, stream_created = $4, updated_at = now() \
         WHERE partition = $1 AND fencing_token = $2",
    )
    .bind(partition)
    .bind(token)
    .bind(seq_i64(new_cursor))
    .bind(created)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::Fenced { token });
    }
    Ok(if keep {
        Aligned::Kept(cursor)
    } else {
        Aligned::Rebased { was: cursor }
    })
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Applies one batch (messages in queue order, all after `expected_cursor`)
/// in a single transaction.
pub async fn apply_batch(
    pool: &PgPool,
    faults: &Faults,
    partition: Partition,
    token: i64,
    expected_cursor: u64,
    batch: &[QueuedRef],
) -> Result<Applied, StoreError> {
    let Some(last) = batch.last() else {
        return Ok(Applied::default());
    };
    let mut tx = pool.begin().await?;
    advance_cursor(&mut tx, partition, token, expected_cursor, last.sequence).await?;

    let Read {
        entries,
        duplicates,
        rewritten,
    } = read_entries(&mut tx, batch).await?;
    if entries.is_empty() {
        tx.commit().await?;
        return Ok(Applied {
            duplicates,
            ..Applied::default()
        });
    }

    let mut product_ids: Vec<Uuid> = entries
        .iter()
        .map(|e| e.item.product_id())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    product_ids.sort_unstable();
    let mut products = lock_products(&mut tx, &product_ids).await?;
    let before = products.clone();

    // Entries wait only behind held units (decide's rule 5), so a product
    // without any has none parked: most batches skip this read.
    let holding: Vec<Uuid> = product_ids
        .iter()
        .copied()
        .filter(|id| products.get(id).is_some_and(|p| p.held > 0))
        .collect();
    let (mut parked, was_parked) = carts::read_parked(&mut tx, &holding).await?;

    let mut purchases = read_purchases(&mut tx, &entries, &parked).await?;
    let purchases_before = purchases.clone();

    let decisions = decide::decide(&mut products, &mut purchases, &mut parked, entries);
    let mut decided_orders = write_orders(&mut tx, &decisions).await?;
    let settled = carts::write_lines(&mut tx, &decisions).await?;
    decided_orders.extend(settled.orders);
    carts::write_settles(&mut tx, &decisions).await?;
    let returned = write_returns(&mut tx, &decisions).await?;
    write_purchases(&mut tx, &purchases_before, &purchases).await?;
    faults.at("mid_batch").await;
    let mut restock_results = write_restocks(&mut tx, &decisions).await?;
    // A return's result is published like a restock's: the API instances
    // that were told it was on its way open their door until then.
    restock_results.extend(returned);
    carts::write_parked(&mut tx, &was_parked, &parked).await?;
    // Last: its stock events read the reservations this batch wrote.
    let stock = write_products(&mut tx, &before, &products).await?;
    faults.at("before_commit").await;
    tx.commit().await?;
    faults.at("after_commit").await;

    Ok(Applied {
        orders: decided_orders,
        stock,
        restocks: restock_results,
        settles: settled.settles,
        duplicates,
        rewritten,
    })
}

/// Moves the cursor to `last`, or fails with nothing written.
///
/// The cursor row is the first lock taken: two workers that both think
/// they own the partition serialize here. The fencing token shuts out a
/// former owner that lost its lease; the cursor compare-and-set shuts out
/// anyone replaying from an old position.
async fn advance_cursor(
    tx: &mut Transaction<'_, Postgres>,
    partition: Partition,
    token: i64,
    expected: u64,
    last: u64,
) -> Result<(), StoreError> {
    let advanced = sqlx::query(
        "UPDATE partition_cursors \
         SET last_sequence = $3, last_decided_at = now(), updated_at = now() \
         WHERE partition = $1 AND last_sequence = $2 AND fencing_token = $4",
    )
    .bind(partition)
    .bind(seq_i64(expected))
    .bind(seq_i64(last))
    .bind(token)
    .execute(&mut **tx)
    .await?;
    if advanced.rows_affected() == 1 {
        return Ok(());
    }
    let current: i64 =
        sqlx::query_scalar("SELECT fencing_token FROM partition_cursors WHERE partition = $1")
            .bind(partition)
            .fetch_one(&mut **tx)
            .await?;
    Err(if current == token {
        StoreError::CursorMoved { expected }
    } else {
        StoreError::Fenced { token }
    })
}

/// What [`read_entries`] found.
struct Read {
    /// The batch's entries still to be applied, in queue order.
    entries: Vec<Entry>,
    /// Entries decided or applied already: redeliveries and copies.
    duplicates: usize,
    /// Accepted orders written again (see [`AcceptedOrder`]).
    rewritten: usize,
}

/// The batch's entries still to be applied, in queue order, each at most
/// once even if the batch holds its message twice; and how many were not
/// (decided or applied already: redeliveries and copies).
///
/// Only still-pending rows are read, which is what makes applying
/// exactly-once. The rows are read without a row lock: only a batch of
/// this partition ever decides them, and the cursor row locked before lets
/// one such batch at a time past this point (a second waits for the first
/// to commit, then finds the cursor moved). A lock per order would write a
/// lock record to each row (WAL and a dirtied page per order) to guard
/// against a writer that cannot exist; the writes' own conditions and
/// count checks stay as the backstop. (A cancel can race a one-line
/// order's decision: the count check then rolls the batch back, and the
/// retry no longer reads the order.)
async fn read_entries(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[QueuedRef],
) -> Result<Read, StoreError> {
    let mut order_ids = Vec::new();
    let mut restock_ids = Vec::new();
    let mut return_ids = Vec::new();
    let mut line_keys = (Vec::new(), Vec::new());
    let mut settle_keys = (Vec::new(), Vec::new());
    for r in batch {
        match r.kind {
            QueuedKind::Order(id) => order_ids.push(id),
            QueuedKind::Restock(id) => restock_ids.push(id),
            QueuedKind::Return(id) => return_ids.push(id),
            QueuedKind::Line(id, n) => {
                line_keys.0.push(id);
                line_keys.1.push(n);
            }
            QueuedKind::Settle(id, n) => {
                settle_keys.0.push(id);
                settle_keys.1.push(n);
            }
            QueuedKind::Skip => {}
        }
    }
    let mut items: HashMap<QueuedKind, Item> = HashMap::new();
    if !order_ids.is_empty() {
        let rows: Vec<OrderItemRow> = sqlx::query_as(
            "SELECT id, customer_id, product_id, quantity, reserve_secs IS NOT NULL FROM orders \
             WHERE id = ANY($1) AND status = 'pending' AND line_count = 1 \
               AND queue_sequence IS NULL",
        )
        .bind(&order_ids)
        .fetch_all(&mut **tx)
        .await?;
        add_order_items(&mut items, rows);
    }
    let rewritten = rewrite_lost_orders(tx, batch, &mut items).await?;
    // Restocks, returns and carts are rare next to one-line orders: most
    // batches skip these round trips.
    if !restock_ids.is_empty() {
        let rows: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
            "SELECT id, product_id, quantity FROM restocks \
             WHERE id = ANY($1) AND status = 'pending' FOR NO KEY UPDATE",
        )
        .bind(&restock_ids)
        .fetch_all(&mut **tx)
        .await?;
        for (restock_id, product_id, quantity) in rows {
            items.insert(
                QueuedKind::Restock(restock_id),
                Item::Restock {
                    restock_id,
                    product_id,
                    quantity,
                },
            );
        }
    }
    if !return_ids.is_empty() {
        let rows: Vec<(Uuid, Uuid, String, i32)> = sqlx::query_as(
            "SELECT id, product_id, customer_id, quantity FROM stock_returns \
             WHERE id = ANY($1) AND status = 'pending'",
        )
        .bind(&return_ids)
        .fetch_all(&mut **tx)
        .await?;
        for (return_id, product_id, customer_id, quantity) in rows {
            items.insert(
                QueuedKind::Return(return_id),
                Item::Return {
                    return_id,
                    product_id,
                    customer_id,
                    quantity,
                },
            );
        }
    }
    if !line_keys.0.is_empty() {
        for (order_id, line_no, product_id, quantity, customer_id, cancelled) in
            carts::read_lines(tx, &line_keys.0, &line_keys.1, &["queued"]).await?
        {
            items.insert(
                QueuedKind::Line(order_id, line_no),
                Item::Line {
                    order_id,
                    line_no,
                    product_id,
                    customer_id,
                    quantity,
                    cancelled: cancelled == "cancelled",
                },
            );
        }
    }
    if !settle_keys.0.is_empty() {
        for (order_id, line_no, product_id, quantity, customer_id, state) in
            carts::read_lines(tx, &settle_keys.0, &settle_keys.1, &["keep", "release"]).await?
        {
            items.insert(
                QueuedKind::Settle(order_id, line_no),
                Item::Settle {
                    order_id,
                    line_no,
                    product_id,
                    customer_id,
                    quantity,
                    keep: state == "keep",
                },
            );
        }
    }
    let mut entries = Vec::with_capacity(items.len());
    let mut duplicates = 0;
    for r in batch {
        if r.kind == QueuedKind::Skip {
            continue;
        }
        match items.remove(&r.kind) {
            Some(item) => entries.push(Entry {
                position: (r.sequence, r.index),
                item,
            }),
            None => duplicates += 1,
        }
    }
    Ok(Read {
        entries,
        duplicates,
        rewritten,
    })
}

/// Writes again, pending, the one-line orders of `batch` whose rows are
/// missing, and adds them to `items`; returns how many.
///
/// An order not read as pending is usually decided already (a redelivery).
/// Its row is missing only if its accept's commit was lost (an asynchronous
/// PostgreSQL failover promoted a standby without it) while its message
/// reached the queue. The insert skips an order whose row exists, and one
/// whose (customer, key) a retry after the failover has taken: at most one
/// order per key, as ever. A product lost with it leaves the order missing.
async fn rewrite_lost_orders(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[QueuedRef],
    items: &mut HashMap<QueuedKind, Item>,
) -> Result<usize, StoreError> {
    let mut seen = HashSet::new();
    let lost: Vec<(Uuid, &AcceptedOrder)> = batch
        .iter()
        .filter_map(|r| match (r.kind, r.accepted.as_deref()) {
            (QueuedKind::Order(id), Some(accepted)) if !items.contains_key(&r.kind) => {
                seen.insert(id).then_some((id, accepted))
            }
            _ => None,
        })
        .collect();
    if lost.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = lost.iter().map(|(id, _)| *id).collect();
    let customers: Vec<&str> = lost.iter().map(|(_, o)| o.customer_id.as_str()).collect();
    let keys: Vec<&str> = lost.iter().map(|(_, o)| o.key.as_str()).collect();
    let hashes: Vec<Vec<u8>> = lost
        .iter()
        .map(|(_, o)| order_request_hash(&[(o.product_id, o.quantity)], o.reserve_secs))
        .collect();
    let products: Vec<Uuid> = lost.iter().map(|(_, o)| o.product_id).collect();
    let quantities: Vec<i32> = lost.iter().map(|(_, o)| o.quantity).collect();
    let reserves: Vec<Option<i32>> = lost.iter().map(|(_, o)| o.reserve_secs).collect();
    // The ids are UUIDv7, taken at the accept: their time is the order's.
    let created: Vec<DateTime<Utc>> = ids.iter().map(|id| accepted_at(*id)).collect();
    let rows: Vec<OrderItemRow> = sqlx::query_as(
        "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, \
                             quantity, partition, reserve_secs, created_at) \
         SELECT u.id, u.customer_id, u.key, u.hash, u.product_id, u.quantity, p.partition, \
                u.reserve_secs, u.created_at \
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::uuid[], $6::int[], \
                       $7::int[], $8::timestamptz[]) \
                AS u(id, customer_id, key, hash, product_id, quantity, reserve_secs, created_at) \
           JOIN products p ON p.id = u.product_id \
         ON CONFLICT DO NOTHING \
         RETURNING id, customer_id, product_id, quantity, reserve_secs IS NOT NULL",
    )
    .bind(&ids)
    .bind(&customers)
    .bind(&keys)
    .bind(&hashes)
    .bind(&products)
    .bind(&quantities)
    .bind(&reserves)
    .bind(&created)
    .fetch_all(&mut **tx)
    .await?;
    if !rows.is_empty() {
        let ids: Vec<Uuid> = rows.iter().map(|row| row.0).collect();
        tracing::warn!(
            count = rows.len(),
            orders = ?ids,
            "accepted orders had no row (a PostgreSQL failover lost their commit?); written again as pending and decided in turn"
        );
    }
    let rewritten = rows.len();
    add_order_items(items, rows);
    Ok(rewritten)
}

/// A one-line order as a batch reads it: id, customer, product, quantity,
/// and whether it reserves.
type OrderItemRow = (Uuid, String, Uuid, i32, bool);

fn add_order_items(items: &mut HashMap<QueuedKind, Item>, rows: Vec<OrderItemRow>) {
    for (order_id, customer_id, product_id, quantity, reserve) in rows {
        items.insert(
            QueuedKind::Order(order_id),
            Item::Order {
                order_id,
                product_id,
                customer_id,
                quantity,
                reserve,
            },
        );
    }
}

/// When a UUIDv7 was made; now for any other id.
fn accepted_at(id: Uuid) -> DateTime<Utc> {
    id.get_timestamp()
        .and_then(|ts| {
            let (secs, nanos) = ts.to_unix();
            DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
        })
        .unwrap_or_else(Utc::now)
}

/// The products' rows, locked. A fixed lock order keeps two transactions
/// from deadlocking. NO KEY UPDATE (what an UPDATE of a non-key column takes
/// anyway), not UPDATE: the API's inserts of new orders check their
/// product's foreign key with a KEY SHARE lock, which a FOR UPDATE lock
/// would block until this batch commits, serializing accepting behind
/// deciding.
async fn lock_products(
    tx: &mut Transaction<'_, Postgres>,
    sorted_ids: &[Uuid],
) -> Result<HashMap<Uuid, ProductState>, StoreError> {
    let rows: Vec<(Uuid, i64, i64, i64, Option<i32>, bool)> = sqlx::query_as(
        "SELECT id, stock, held, price_cents, max_per_customer, active FROM products \
         WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(sorted_ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, stock, held, price_cents, max_per_customer, active)| {
            (
                id,
                ProductState {
                    stock,
                    held,
                    price_cents,
                    max_per_customer,
                    active,
                },
            )
        })
        .collect())
}

/// The customers' units so far of every (customer, product) the batch and
/// the parked entries touch.
async fn read_purchases(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[Entry],
    parked: &Parked,
) -> Result<Purchases, StoreError> {
    let (customers, products): (Vec<String>, Vec<Uuid>) = entries
        .iter()
        .chain(parked.values().flatten())
        .filter_map(|e| {
            e.item
                .customer()
                .map(|c| (c.to_owned(), e.item.product_id()))
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .unzip();
    if customers.is_empty() {
        return Ok(Purchases::new());
    }
    let rows: Vec<(String, Uuid, i64)> = sqlx::query_as(
        "SELECT cp.customer_id, cp.product_id, cp.confirmed_quantity \
         FROM customer_purchases cp \
         JOIN unnest($1::text[], $2::uuid[]) AS k(customer_id, product_id) \
           ON cp.customer_id = k.customer_id AND cp.product_id = k.product_id",
    )
    .bind(&customers)
    .bind(&products)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(c, p, q)| ((c, p), q)).collect())
}

/// One conditional update per changed product: the changes must leave
/// stock and held units non-negative and land exactly where the decision
/// says (the CHECK constraints back it up). If the database disagrees with
/// the in-memory decision, the whole batch rolls back. Returns the changed
/// products' stock events, read in the same statement (with the units of
/// their reservations, this batch's included): no extra round trip.
async fn write_products(
    tx: &mut Transaction<'_, Postgres>,
    before: &HashMap<Uuid, ProductState>,
    after: &HashMap<Uuid, ProductState>,
) -> Result<Vec<StockEvent>, StoreError> {
    let mut ids = Vec::new();
    let mut stock_deltas = Vec::new();
    let mut held_deltas = Vec::new();
    for (id, now) in after {
        let Some(was) = before.get(id) else { continue };
        if (now.stock, now.held) != (was.stock, was.held) {
            ids.push(*id);
            stock_deltas.push(now.stock - was.stock);
            held_deltas.push(now.held - was.held);
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    /// id, stock, held, units of reserved orders, earliest end, version.
    type Row = (Uuid, i64, i64, i64, Option<DateTime<Utc>>, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "UPDATE products p SET stock = p.stock + d.stock, held = p.held + d.held, updated_at = {1} \
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS d(id, stock, held) \
         WHERE p.id = d.id AND p.stock + d.stock >= 0 AND p.held + d.held >= 0 \
         RETURNING p.id, p.stock, p.held, \
             COALESCE((SELECT r.units FROM ({0}) r), 0)::bigint, \
             (SELECT r.next FROM ({0}) r), p.updated_at",
        checkline_shared::stock::reserved_units("r.product_id = p.id"),
        checkline_shared::db::next_product_version("p"),
    ))
    .bind(&ids)
    .bind(&stock_deltas)
    .bind(&held_deltas)
    .fetch_all(&mut **tx)
    .await?;
    let updated: HashMap<Uuid, (i64, i64)> = rows
        .iter()
        .map(|(id, s, h, _, _, _)| (*id, (*s, *h)))
        .collect();
    for id in &ids {
        let expected = after.get(id).map(|p| (p.stock, p.held));
        if updated.get(id).copied() != expected {
            tracing::error!(
                product_id = %id,
                before = ?before.get(id),
                expected = ?expected,
                got = ?updated.get(id),
                "stock guard disagrees with the decision; rolling back"
            );
            return Err(StoreError::StockGuard { product_id: *id });
        }
    }
    Ok(rows
        .into_iter()
        .map(|(id, stock, held, reserved, next, version)| {
            StockEvent::with_reserved(id, stock, held, held + reserved, next).at(version)
        })
        .collect())
}

/// The decisions of one-line orders: confirmed, reserved (with its
/// reservation) or rejected.
async fn write_orders(
    tx: &mut Transaction<'_, Postgres>,
    decisions: &[Decision],
) -> Result<Vec<Order>, StoreError> {
    let mut ids = Vec::new();
    let mut taken = Vec::new();
    let mut reasons: Vec<Option<&'static str>> = Vec::new();
    let mut prices: Vec<Option<i64>> = Vec::new();
    let mut totals: Vec<Option<i64>> = Vec::new();
    let mut seqs = Vec::new();
    let mut indexes = Vec::new();
    for d in decisions {
        let Item::Order { order_id, .. } = d.entry.item else {
            continue;
        };
        ids.push(order_id);
        seqs.push(seq_i64(d.entry.position.0));
        indexes.push(i32::try_from(d.entry.position.1).unwrap_or(i32::MAX));
        match d.outcome {
            Outcome::Taken {
                unit_price_cents,
                total_cents,
            } => {
                taken.push(true);
                reasons.push(None);
                prices.push(Some(unit_price_cents));
                totals.push(Some(total_cents));
            }
            Outcome::Refused(reason) => {
                taken.push(false);
                reasons.push(Some(reason.as_str()));
                prices.push(None);
                totals.push(None);
            }
            Outcome::Withdrawn | Outcome::Applied { .. } => {
                // Not an outcome of a one-line order.
                ids.pop();
                seqs.pop();
                indexes.pop();
            }
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // The decision; with a reservation row for each order reserved. Most
    // batches reserve nothing and skip the insert (and the CTE it needs).
    let reserving = decisions.iter().any(|d| {
        matches!(
            (&d.entry.item, d.outcome),
            (Item::Order { reserve: true, .. }, Outcome::Taken { .. })
        )
    });
    let decide = format!(
        "UPDATE orders o SET \
             status = CASE WHEN NOT d.taken THEN 'rejected' \
                           WHEN o.reserve_secs IS NULL THEN 'confirmed' ELSE 'reserved' END, \
             reason = d.reason, \
             rejected_product_id = CASE WHEN d.taken THEN NULL ELSE o.product_id END, \
             unit_price_cents = d.unit_price_cents, total_cents = d.total_cents, \
             decided_at = now(), \
             reserved_until = CASE WHEN d.taken AND o.reserve_secs IS NOT NULL \
                                   THEN now() + make_interval(secs => o.reserve_secs) END, \
             queue_sequence = d.seq, queue_index = d.idx \
         FROM unnest($1::uuid[], $2::bool[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::int[]) \
             AS d(id, taken, reason, unit_price_cents, total_cents, seq, idx) \
         WHERE o.id = d.id AND o.status = 'pending' \
         RETURNING {}",
        order_columns("o")
    );
    let sql = if reserving {
        format!(
            "WITH decided AS ({decide}), reserved AS ( \
                 INSERT INTO reservations (order_id, product_id, quantity, reserved_until) \
                 SELECT id, product_id, quantity, reserved_until FROM decided WHERE status = 'reserved' \
             ) \
             SELECT * FROM decided"
        )
    } else {
        decide
    };
    let rows: Vec<OrderRow> = sqlx::query_as(&sql)
        .bind(&ids)
        .bind(&taken)
        .bind(&reasons)
        .bind(&prices)
        .bind(&totals)
        .bind(&seqs)
        .bind(&indexes)
        .fetch_all(&mut **tx)
        .await?;
    // Every row read pending at the start of the transaction is still
    // pending unless a cancel got in between (see `read_entries`); then the
    // stock taken for it must not stand: the whole batch rolls back, and
    // the retry reads the order cancelled.
    if rows.len() != ids.len() {
        return Err(StoreError::DecidedElsewhere {
            expected: ids.len(),
            decided: rows.len(),
        });
    }
    Ok(rows.into_iter().map(Order::from).collect())
}

/// Returned units applied; their results, as restocks' are.
async fn write_returns(
    tx: &mut Transaction<'_, Postgres>,
    decisions: &[Decision],
) -> Result<Vec<(Uuid, RestockResult)>, StoreError> {
    let mut ids = Vec::new();
    let mut seqs = Vec::new();
    let mut results = Vec::new();
    for d in decisions {
        if let (
            Item::Return {
                return_id,
                product_id,
                ..
            },
            Outcome::Applied { stock_after },
        ) = (&d.entry.item, d.outcome)
        {
            ids.push(*return_id);
            seqs.push(seq_i64(d.entry.position.0));
            results.push((
                *return_id,
                RestockResult {
                    product_id: *product_id,
                    stock: stock_after,
                },
            ));
        }
    }
    if ids.is_empty() {
        return Ok(results);
    }
    sqlx::query(
        "UPDATE stock_returns r SET status = 'applied', applied_at = now(), queue_sequence = d.seq \
         FROM unnest($1::uuid[], $2::bigint[]) AS d(id, seq) \
         WHERE r.id = d.id AND r.status = 'pending'",
    )
    .bind(&ids)
    .bind(&seqs)
    .execute(&mut **tx)
    .await?;
    Ok(results)
}

async fn write_purchases(
    tx: &mut Transaction<'_, Postgres>,
    before: &Purchases,
    after: &Purchases,
) -> Result<(), StoreError> {
    let mut customers = Vec::new();
    let mut products = Vec::new();
    let mut deltas = Vec::new();
    for ((customer, product), total) in after {
        let delta = total
            - before
                .get(&(customer.clone(), *product))
                .copied()
                .unwrap_or(0);
        if delta != 0 {
            customers.push(customer.clone());
            products.push(*product);
            deltas.push(delta);
        }
    }
    if customers.is_empty() {
        return Ok(());
    }
    // Units given back only lower rows that exist (they were counted when
    // taken); an upsert would check its insert row, negative, first.
    sqlx::query(
        "WITH d AS (SELECT * FROM unnest($1::text[], $2::uuid[], $3::bigint[]) \
                        AS d(customer_id, product_id, delta)), \
              lowered AS ( \
                  UPDATE customer_purchases cp SET confirmed_quantity = cp.confirmed_quantity + d.delta \
                  FROM d WHERE d.delta < 0 \
                    AND cp.customer_id = d.customer_id AND cp.product_id = d.product_id) \
         INSERT INTO customer_purchases (customer_id, product_id, confirmed_quantity) \
         SELECT customer_id, product_id, delta FROM d WHERE delta > 0 \
         ON CONFLICT (customer_id, product_id) DO UPDATE \
         SET confirmed_quantity = customer_purchases.confirmed_quantity + EXCLUDED.confirmed_quantity",
    )
    .bind(&customers)
    .bind(&products)
    .bind(&deltas)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_restocks(
    tx: &mut Transaction<'_, Postgres>,
    decisions: &[Decision],
) -> Result<Vec<(Uuid, RestockResult)>, StoreError> {
    let mut ids = Vec::new();
    let mut after = Vec::new();
    let mut seqs = Vec::new();
    let mut results = Vec::new();
    for d in decisions {
        if let (
            Item::Restock {
                restock_id,
                product_id,
                ..
            },
            Outcome::Applied { stock_after },
        ) = (&d.entry.item, d.outcome)
        {
            ids.push(*restock_id);
            after.push(stock_after);
            seqs.push(seq_i64(d.entry.position.0));
            results.push((
                *restock_id,
                RestockResult {
                    product_id: *product_id,
                    stock: stock_after,
                },
            ));
        }
    }
    if ids.is_empty() {
        return Ok(results);
    }
    sqlx::query(
        "UPDATE restocks r SET status = 'applied', applied_at = now(), \
             stock_after = d.stock_after, queue_sequence = d.seq \
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS d(id, stock_after, seq) \
         WHERE r.id = d.id AND r.status = 'pending'",
    )
    .bind(&ids)
    .bind(&after)
    .bind(&seqs)
    .execute(&mut **tx)
    .await?;
    Ok(results)
}

/// Which pending rows the sweep takes as stranded.
#[derive(Debug, Clone, Copy)]
pub struct StrandedBefore {
    /// Written at least this long ago (by the database's clock): longer than
    /// any publish may take. `None` when the bound below alone is proof.
    pub age: Option<std::time::Duration>,
    /// Written before this instant: had their publish succeeded, their
    /// message would be stored before a message the partition has already
    /// applied. `None` when the partition is caught up (idle).
    pub written_before: Option<DateTime<Utc>>,
}

/// Rows of a partition that are pending but cannot be waiting in the queue
/// (see [`StrandedBefore`]): their publish failed, the API died between
/// writing and publishing them, or the stream that held them was lost.
#[derive(Debug, Default)]
pub struct Stranded {
    pub orders: Vec<Order>,
    /// Orders of several lines (in this partition: their first line's)
    /// none of whose lines has had its turn: their queued lines, to be
    /// published together as one atomic write.
    pub carts: Vec<Vec<(Partition, QueueMessage)>>,
    pub restocks: Vec<PendingRestock>,
    /// Units of reserved orders on their way back, and settle entries of
    /// settled orders, that never made it into the queue.
    pub entries: Vec<QueueMessage>,
}

/// A restock still to be applied.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingRestock {
    pub id: Uuid,
    pub product_id: Uuid,
    pub quantity: i64,
}

impl Stranded {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.orders.len() + self.carts.len() + self.restocks.len() + self.entries.len()
    }
}

/// The partition's [`Stranded`] rows, oldest first, at most `limit` of each
/// kind.
pub async fn stranded(
    pool: &PgPool,
    partition: Partition,
    before: StrandedBefore,
    limit: i64,
) -> Result<Stranded, sqlx::Error> {
    let age = before.age.map_or(0.0, |a| a.as_secs_f64());
    // No index knows which orders are pending (the decision is a HOT
    // update): the rows at or above the partition's low-water mark are
    // read, so raise it first. Every pending row is at or above it
    // (`checkline_shared::pending` has the argument), whatever its
    // created_at, so the sweep still finds every stranded order. An order
    // with a queue position but still pending is parked: it had its turn.
    // An order of several lines is stranded only while its first line (in
    // this partition) has not had its turn: its lines are published in one
    // atomic write, so then none has.
    checkline_shared::pending::measure(pool, &[partition]).await?;
    let orders: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {} FROM orders o \
         WHERE o.partition = $1 AND {} \
           AND o.queue_sequence IS NULL \
           AND (o.line_count = 1 OR EXISTS (SELECT 1 FROM order_lines l \
                WHERE l.order_id = o.id AND l.line_no = 0 AND l.state = 'queued')) \
           AND o.created_at < now() - make_interval(secs => $2) \
           AND ($4::timestamptz IS NULL OR o.created_at < $4) \
         ORDER BY o.created_at LIMIT $3",
        order_columns("o"),
        checkline_shared::pending::pending_in_partition("$1")
    ))
    .bind(partition)
    .bind(age)
    .bind(limit)
    .bind(before.written_before)
    .fetch_all(pool)
    .await?;
    let (orders, carts): (Vec<Order>, Vec<Order>) = orders
        .into_iter()
        .map(Order::from)
        .partition(|o| o.product_id.is_some());
    let cart_ids: Vec<Uuid> = carts.iter().map(|o| o.id).collect();
    let mut cart_lines: HashMap<Uuid, Vec<(Partition, QueueMessage)>> = HashMap::new();
    if !cart_ids.is_empty() {
        let rows: Vec<(Uuid, i32, Uuid, i32, Partition, String)> = sqlx::query_as(
            "SELECT l.order_id, l.line_no, l.product_id, l.quantity, l.partition, o.customer_id \
             FROM order_lines l JOIN orders o ON o.id = l.order_id \
             WHERE l.order_id = ANY($1) AND l.state = 'queued' ORDER BY l.order_id, l.line_no",
        )
        .bind(&cart_ids)
        .fetch_all(pool)
        .await?;
        for (order_id, line_no, product_id, quantity, line_partition, customer_id) in rows {
            cart_lines.entry(order_id).or_default().push((
                line_partition,
                QueueMessage::Line {
                    order_id,
                    line_no,
                    product_id,
                    customer_id,
                    quantity,
                },
            ));
        }
    }
    let carts = cart_ids
        .iter()
        .filter_map(|id| cart_lines.remove(id))
        .collect();
    let restocks: Vec<PendingRestock> = sqlx::query_as(
        "SELECT id, product_id, quantity FROM restocks \
         WHERE partition = $1 AND status = 'pending' \
           AND created_at < now() - make_interval(secs => $2) \
           AND ($4::timestamptz IS NULL OR created_at < $4) \
         ORDER BY created_at LIMIT $3",
    )
    .bind(partition)
    .bind(age)
    .bind(limit)
    .bind(before.written_before)
    .fetch_all(pool)
    .await?;
    let returns: Vec<(Uuid, Uuid, Uuid, i32)> = sqlx::query_as(
        "SELECT id, order_id, product_id, quantity FROM stock_returns \
         WHERE partition = $1 AND status = 'pending' \
           AND created_at < now() - make_interval(secs => $2) \
           AND ($4::timestamptz IS NULL OR created_at < $4) \
         ORDER BY created_at LIMIT $3",
    )
    .bind(partition)
    .bind(age)
    .bind(limit)
    .bind(before.written_before)
    .fetch_all(pool)
    .await?;
    // A settle entry is published right after its order settles (its
    // decision time), so the same bounds apply to that time.
    let settles: Vec<(Uuid, i32, Uuid)> = sqlx::query_as(
        "SELECT l.order_id, l.line_no, l.product_id FROM order_lines l \
         JOIN orders o ON o.id = l.order_id \
         WHERE l.partition = $1 AND l.state IN ('keep', 'release') \
           AND o.decided_at < now() - make_interval(secs => $2) \
           AND ($4::timestamptz IS NULL OR o.decided_at < $4) \
         ORDER BY o.decided_at LIMIT $3",
    )
    .bind(partition)
    .bind(age)
    .bind(limit)
    .bind(before.written_before)
    .fetch_all(pool)
    .await?;
    let entries =
        returns
            .into_iter()
            .map(
                |(return_id, order_id, product_id, quantity)| QueueMessage::Return {
                    return_id,
                    order_id,
                    product_id,
                    quantity,
                },
            )
            .chain(settles.into_iter().map(|(order_id, line_no, product_id)| {
                QueueMessage::Settle {
                    order_id,
                    line_no,
                    product_id,
                }
            }))
            .collect();
    Ok(Stranded {
        orders,
        carts,
        restocks,
        entries,
    })
}

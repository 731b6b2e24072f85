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
use checkline_shared::domain::{Order, RestockResult, StockEvent};
use checkline_shared::faults::Faults;
use checkline_shared::partition::Partition;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::decide::{self, Decision, Item, Outcome, ProductState, Purchases};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The cursor is not where this worker left it: another worker applied
    /// messages of this partition. Nothing was written; resume from the
    /// database's cursor.
    #[error("partition cursor moved: expected {expected}")]
    CursorMoved { expected: u64 },
    /// Another worker took the partition over (its fencing token is newer).
    /// Nothing was written; this worker must stop consuming the partition.
    #[error("partition fenced: token {token} is no longer current")]
    Fenced { token: i64 },
    /// The database refused the batch's stock change although the in-memory
    /// decision allowed it. Nothing was written; this is a bug, never an
    /// oversell.
    #[error("stock guard refused the batch for product {product_id}")]
    StockGuard { product_id: Uuid },
    /// Some of the batch's orders were no longer pending when their
    /// decisions were written: something other than this partition's owner
    /// decided them. Nothing was written; the batch is read again.
    #[error("{decided} of {expected} orders were still pending at the decision")]
    DecidedElsewhere { expected: usize, decided: usize },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// Worth retrying the same batch (after a backoff): the database or the
    /// network failed, not the batch.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(err) => checkline_shared::db::is_transient(err),
            Self::CursorMoved { .. }
            | Self::Fenced { .. }
            | Self::StockGuard { .. }
            | Self::DecidedElsewhere { .. } => false,
        }
    }
}

/// A queued message of a batch, with its JetStream stream sequence.
#[derive(Debug, Clone)]
pub struct QueuedRef {
    pub sequence: u64,
    /// Position inside a multi-order message (0 for single items).
    pub index: u32,
    pub kind: QueuedKind,
}

#[derive(Debug, Clone, Copy)]
pub enum QueuedKind {
    Order(Uuid),
    Restock(Uuid),
    /// A message that could not be decoded: it only advances the cursor.
    Skip,
}

/// What a committed batch changed, for the notifications that follow.
#[derive(Debug, Default)]
pub struct Applied {
    pub orders: Vec<Order>,
    pub stock: Vec<StockEvent>,
    pub restocks: Vec<(Uuid, RestockResult)>,
    /// Messages whose order or restock was already decided (redeliveries).
    pub duplicates: usize,
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

    // The cursor row is the first lock taken: two workers that both think
    // they own the partition serialize here. The fencing token shuts out a
    // former owner that lost its lease; the cursor compare-and-set shuts out
    // anyone replaying from an old position. Either way nothing is written.
    let advanced = sqlx::query(
        "UPDATE partition_cursors \
         SET last_sequence = $3, last_decided_at = now(), updated_at = now() \
         WHERE partition = $1 AND last_sequence = $2 AND fencing_token = $4",
    )
    .bind(partition)
    .bind(seq_i64(expected_cursor))
    .bind(seq_i64(last.sequence))
    .bind(token)
    .execute(&mut *tx)
    .await?;
    if advanced.rows_affected() != 1 {
        let current: i64 =
            sqlx::query_scalar("SELECT fencing_token FROM partition_cursors WHERE partition = $1")
                .bind(partition)
                .fetch_one(&mut *tx)
                .await?;
        return Err(if current == token {
            StoreError::CursorMoved {
                expected: expected_cursor,
            }
        } else {
            StoreError::Fenced { token }
        });
    }

    let order_ids: Vec<Uuid> = batch
        .iter()
        .filter_map(|r| match r.kind {
            QueuedKind::Order(id) => Some(id),
            _ => None,
        })
        .collect();
    let restock_ids: Vec<Uuid> = batch
        .iter()
        .filter_map(|r| match r.kind {
            QueuedKind::Restock(id) => Some(id),
            _ => None,
        })
        .collect();

    // Only still-pending rows are decided: a redelivered or republished
    // message of a decided order finds nothing here, which is what makes
    // deciding exactly-once. The rows are read without a row lock: only a
    // batch of this partition ever decides its orders, and the cursor row
    // locked above lets one such batch at a time past this point (a second
    // waits for the first to commit, then finds the cursor moved). A lock per
    // order would write a lock record to each row (WAL and a dirtied page
    // per order) to guard against a writer that cannot exist; the decision's
    // `WHERE status = 'pending'` and the count check after it stay as the
    // backstop.
    let pending_orders: Vec<(Uuid, String, Uuid, i32)> = sqlx::query_as(
        "SELECT id, customer_id, product_id, quantity FROM orders \
         WHERE id = ANY($1) AND status = 'pending'",
    )
    .bind(&order_ids)
    .fetch_all(&mut *tx)
    .await?;
    // Restocks are rare: most batches skip this round trip.
    let pending_restocks: Vec<(Uuid, Uuid, i64)> = if restock_ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT id, product_id, quantity FROM restocks \
             WHERE id = ANY($1) AND status = 'pending' FOR NO KEY UPDATE",
        )
        .bind(&restock_ids)
        .fetch_all(&mut *tx)
        .await?
    };
    let orders: HashMap<Uuid, (String, Uuid, i32)> = pending_orders
        .into_iter()
        .map(|(id, c, p, q)| (id, (c, p, q)))
        .collect();
    let restocks: HashMap<Uuid, (Uuid, i64)> = pending_restocks
        .into_iter()
        .map(|(id, p, q)| (id, (p, q)))
        .collect();

    // Items in queue order; each id at most once even if the batch holds a
    // message twice.
    let mut seen = HashSet::new();
    let mut items = Vec::with_capacity(batch.len());
    let mut sequences = Vec::with_capacity(batch.len());
    let mut duplicates = 0;
    for r in batch {
        let item = match r.kind {
            QueuedKind::Order(id) => orders.get(&id).map(|(c, p, q)| Item::Order {
                order_id: id,
                product_id: *p,
                customer_id: c.clone(),
                quantity: *q,
            }),
            QueuedKind::Restock(id) => restocks.get(&id).map(|(p, q)| Item::Restock {
                restock_id: id,
                product_id: *p,
                quantity: *q,
            }),
            QueuedKind::Skip => continue,
        };
        let id = match r.kind {
            QueuedKind::Order(id) | QueuedKind::Restock(id) => id,
            QueuedKind::Skip => continue,
        };
        match item {
            Some(item) if seen.insert(id) => {
                items.push(item);
                sequences.push((r.sequence, r.index));
            }
            _ => duplicates += 1,
        }
    }
    if items.is_empty() {
        tx.commit().await?;
        return Ok(Applied {
            duplicates,
            ..Applied::default()
        });
    }

    let mut product_ids: Vec<Uuid> = items
        .iter()
        .map(|i| match i {
            Item::Order { product_id, .. } | Item::Restock { product_id, .. } => *product_id,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // A fixed lock order keeps two transactions from deadlocking. NO KEY
    // UPDATE (what an UPDATE of a non-key column takes anyway), not UPDATE:
    // the API's inserts of new orders check their product's foreign key with
    // a KEY SHARE lock, which a FOR UPDATE lock would block until this batch
    // commits, serializing accepting behind deciding.
    product_ids.sort_unstable();
    let product_rows: Vec<(Uuid, i64, i64, Option<i32>, bool)> = sqlx::query_as(
        "SELECT id, stock, price_cents, max_per_customer, active FROM products \
         WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(&product_ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut products: HashMap<Uuid, ProductState> = product_rows
        .into_iter()
        .map(|(id, stock, price_cents, max_per_customer, active)| {
            (
                id,
                ProductState {
                    stock,
                    price_cents,
                    max_per_customer,
                    active,
                },
            )
        })
        .collect();
    let stock_before: HashMap<Uuid, i64> = products.iter().map(|(id, p)| (*id, p.stock)).collect();

    let (pair_customers, pair_products): (Vec<String>, Vec<Uuid>) = items
        .iter()
        .filter_map(|i| match i {
            Item::Order {
                customer_id,
                product_id,
                ..
            } => Some((customer_id.clone(), *product_id)),
            Item::Restock { .. } => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .unzip();
    let purchase_rows: Vec<(String, Uuid, i64)> = if pair_customers.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT cp.customer_id, cp.product_id, cp.confirmed_quantity \
         FROM customer_purchases cp \
         JOIN unnest($1::text[], $2::uuid[]) AS k(customer_id, product_id) \
           ON cp.customer_id = k.customer_id AND cp.product_id = k.product_id",
        )
        .bind(&pair_customers)
        .bind(&pair_products)
        .fetch_all(&mut *tx)
        .await?
    };
    let mut purchases: Purchases = purchase_rows
        .into_iter()
        .map(|(c, p, q)| ((c, p), q))
        .collect();
    let purchases_before = purchases.clone();

    let decisions = decide::decide(&mut products, &mut purchases, &items);

    write_stock(&mut tx, &decisions, &stock_before, &products).await?;
    let decided_orders = write_orders(&mut tx, &decisions, &sequences).await?;
    write_purchases(&mut tx, &purchases_before, &purchases).await?;
    faults.at("mid_batch").await;
    let restock_results = write_restocks(&mut tx, &decisions, &sequences).await?;
    faults.at("before_commit").await;
    tx.commit().await?;
    faults.at("after_commit").await;

    let stock = product_ids
        .iter()
        .filter_map(|id| products.get(id).map(|p| StockEvent::new(*id, p.stock)))
        .collect();
    Ok(Applied {
        orders: decided_orders,
        stock,
        restocks: restock_results,
        duplicates,
    })
}

/// One conditional update per touched product: the combined decrement must
/// leave stock non-negative (`stock + added >= taken`), and the CHECK
/// constraint backs it up. If the database disagrees with the in-memory
/// decision, the whole batch rolls back.
async fn write_stock(
    tx: &mut Transaction<'_, Postgres>,
    decisions: &[Decision],
    before: &HashMap<Uuid, i64>,
    after: &HashMap<Uuid, ProductState>,
) -> Result<(), StoreError> {
    let mut taken: HashMap<Uuid, i64> = HashMap::new();
    let mut added: HashMap<Uuid, i64> = HashMap::new();
    for d in decisions {
        match d {
            Decision::Order {
                product_id,
                quantity,
                outcome: Outcome::Confirmed { .. },
                ..
            } => *taken.entry(*product_id).or_default() += i64::from(*quantity),
            Decision::Restock {
                product_id,
                quantity,
                ..
            } => *added.entry(*product_id).or_default() += *quantity,
            Decision::Order { .. } => {}
        }
    }
    let changed: Vec<Uuid> = taken
        .keys()
        .chain(added.keys())
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let ids = changed.clone();
    let takes: Vec<i64> = ids
        .iter()
        .map(|id| taken.get(id).copied().unwrap_or(0))
        .collect();
    let adds: Vec<i64> = ids
        .iter()
        .map(|id| added.get(id).copied().unwrap_or(0))
        .collect();
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "UPDATE products p SET stock = p.stock + d.added - d.taken, updated_at = now() \
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS d(id, taken, added) \
         WHERE p.id = d.id AND p.stock + d.added >= d.taken \
         RETURNING p.id, p.stock",
    )
    .bind(&ids)
    .bind(&takes)
    .bind(&adds)
    .fetch_all(&mut **tx)
    .await?;
    let updated: HashMap<Uuid, i64> = rows.into_iter().collect();
    for id in &ids {
        let expected = after.get(id).map(|p| p.stock);
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
    Ok(())
}

async fn write_orders(
    tx: &mut Transaction<'_, Postgres>,
    decisions: &[Decision],
    sequences: &[(u64, u32)],
) -> Result<Vec<Order>, StoreError> {
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    let mut reasons: Vec<Option<&'static str>> = Vec::new();
    let mut prices: Vec<Option<i64>> = Vec::new();
    let mut totals: Vec<Option<i64>> = Vec::new();
    let mut seqs = Vec::new();
    let mut indexes = Vec::new();
    for (d, (seq, index)) in decisions.iter().zip(sequences) {
        if let Decision::Order {
            order_id, outcome, ..
        } = d
        {
            ids.push(*order_id);
            seqs.push(seq_i64(*seq));
            indexes.push(i32::try_from(*index).unwrap_or(i32::MAX));
            match outcome {
                Outcome::Confirmed {
                    unit_price_cents,
                    total_cents,
                } => {
                    statuses.push("confirmed");
                    reasons.push(None);
                    prices.push(Some(*unit_price_cents));
                    totals.push(Some(*total_cents));
                }
                Outcome::Rejected(reason) => {
                    statuses.push("rejected");
                    reasons.push(Some(reason.as_str()));
                    prices.push(None);
                    totals.push(None);
                }
            }
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "UPDATE orders o SET status = d.status, reason = d.reason, \
             unit_price_cents = d.unit_price_cents, total_cents = d.total_cents, \
             decided_at = now(), queue_sequence = d.seq, queue_index = d.idx \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::int[]) \
             AS d(id, status, reason, unit_price_cents, total_cents, seq, idx) \
         WHERE o.id = d.id AND o.status = 'pending' \
         RETURNING {}",
        order_columns("o")
    ))
    .bind(&ids)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&prices)
    .bind(&totals)
    .bind(&seqs)
    .bind(&indexes)
    .fetch_all(&mut **tx)
    .await?;
    // Every row read pending at the start of the transaction is still
    // pending (see `apply_batch`); if one was not, the stock taken for it
    // must not stand: the whole batch rolls back.
    if rows.len() != ids.len() {
        return Err(StoreError::DecidedElsewhere {
            expected: ids.len(),
            decided: rows.len(),
        });
    }
    Ok(rows.into_iter().map(Order::from).collect())
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
        if delta > 0 {
            customers.push(customer.clone());
            products.push(*product);
            deltas.push(delta);
        }
    }
    if customers.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO customer_purchases (customer_id, product_id, confirmed_quantity) \
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::bigint[]) \
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
    sequences: &[(u64, u32)],
) -> Result<Vec<(Uuid, RestockResult)>, StoreError> {
    let mut ids = Vec::new();
    let mut after = Vec::new();
    let mut seqs = Vec::new();
    let mut results = Vec::new();
    for (d, (seq, _)) in decisions.iter().zip(sequences) {
        if let Decision::Restock {
            restock_id,
            product_id,
            stock_after,
            ..
        } = d
        {
            ids.push(*restock_id);
            after.push(*stock_after);
            seqs.push(seq_i64(*seq));
            results.push((
                *restock_id,
                RestockResult {
                    product_id: *product_id,
                    stock: *stock_after,
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
    pub restocks: Vec<PendingRestock>,
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
        self.orders.is_empty() && self.restocks.is_empty()
    }

    pub fn len(&self) -> usize {
        self.orders.len() + self.restocks.len()
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
    // created_at, so the sweep still finds every stranded order.
    checkline_shared::pending::measure(pool, &[partition]).await?;
    let orders: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {} FROM orders o \
         WHERE o.partition = $1 AND {} \
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
    Ok(Stranded {
        orders: orders.into_iter().map(Order::from).collect(),
        restocks,
    })
}

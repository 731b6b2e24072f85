//! The worker's side of orders of several lines: each line at its turn in
//! its own product's queue, the order's settlement by whichever partition
//! reports its last line, settle entries, and the entries waiting (parked)
//! behind held units. docs/architecture.md, "Carts and reservations", has
//! the design and the argument; `decide` has the rules.
//!
//! Lock order, the same in every transaction that takes more than one:
//! the partition's cursor, its products (by id), then orders of several
//! lines (by id). Lines are written only by a transaction that holds their
//! order's row, or (settle entries) after their order has settled.

use std::collections::{HashMap, HashSet};

use checkline_shared::db::{order_columns, OrderRow};
use checkline_shared::domain::{Order, OrderLine, RejectReason};
use checkline_shared::messages::QueueMessage;
use checkline_shared::partition::Partition;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::batch_error::StoreError;
use crate::decide::{Decision, Entry, Item, Outcome, Parked, Position};

/// A line's product, quantity, customer and one more text column (the
/// order's status or the line's state), as [`read_lines`] returns them.
pub type LineRow = (Uuid, i32, Uuid, i32, String, String);

/// The lines `(order_ids[i], line_nos[i])` that are in one of `states`,
/// with their order's customer and, for queued lines, the order's status
/// (other states: the line's state).
pub async fn read_lines(
    tx: &mut Transaction<'_, Postgres>,
    order_ids: &[Uuid],
    line_nos: &[i32],
    states: &[&str],
) -> Result<Vec<LineRow>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT l.order_id, l.line_no, l.product_id, l.quantity, o.customer_id, \
                CASE WHEN l.state = 'queued' THEN o.status ELSE l.state END \
         FROM unnest($1::uuid[], $2::int[]) AS k(order_id, line_no) \
         JOIN order_lines l ON l.order_id = k.order_id AND l.line_no = k.line_no \
         JOIN orders o ON o.id = l.order_id \
         WHERE l.state = ANY($3)",
    )
    .bind(order_ids)
    .bind(line_nos)
    .bind(states)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}

/// Where a parked entry is stored: its product and queue position.
pub type ParkedKey = (Uuid, Position);

/// A parked entry with what deciding it needs.
#[derive(Debug, sqlx::FromRow)]
struct ParkedRow {
    product_id: Uuid,
    queue_sequence: i64,
    queue_index: i32,
    order_id: Uuid,
    line_no: Option<i32>,
    customer_id: String,
    status: String,
    quantity: i32,
    reserve: bool,
}

/// The entries parked behind held units of `products`, in queue order, and
/// the keys they are stored under. A one-line order cancelled while it
/// waited is left out (its key is returned, so its row goes).
pub async fn read_parked(
    tx: &mut Transaction<'_, Postgres>,
    products: &[Uuid],
) -> Result<(Parked, HashSet<ParkedKey>), StoreError> {
    let mut parked = Parked::new();
    let mut keys = HashSet::new();
    if products.is_empty() {
        return Ok((parked, keys));
    }
    let rows: Vec<ParkedRow> = sqlx::query_as(
        "SELECT pk.product_id, pk.queue_sequence, pk.queue_index, pk.order_id, pk.line_no, \
                    o.customer_id, o.status, COALESCE(l.quantity, o.quantity) AS quantity, \
                    o.reserve_secs IS NOT NULL AS reserve \
             FROM parked pk \
             JOIN orders o ON o.id = pk.order_id \
             LEFT JOIN order_lines l ON l.order_id = pk.order_id AND l.line_no = pk.line_no \
             WHERE pk.product_id = ANY($1) \
             ORDER BY pk.product_id, pk.queue_sequence, pk.queue_index",
    )
    .bind(products)
    .fetch_all(&mut **tx)
    .await?;
    for ParkedRow {
        product_id,
        queue_sequence,
        queue_index,
        order_id,
        line_no,
        customer_id,
        status,
        quantity,
        reserve,
    } in rows
    {
        let position = (
            u64::try_from(queue_sequence).unwrap_or(0),
            u32::try_from(queue_index).unwrap_or(0),
        );
        keys.insert((product_id, position));
        let item = match line_no {
            None if status != "pending" => continue,
            None => Item::Order {
                order_id,
                product_id,
                customer_id,
                quantity,
                reserve,
            },
            Some(line_no) => Item::Line {
                order_id,
                line_no,
                product_id,
                customer_id,
                quantity,
                cancelled: status == "cancelled",
            },
        };
        parked
            .entry(product_id)
            .or_default()
            .push_back(Entry { position, item });
    }
    Ok((parked, keys))
}

/// Stores what changed in the parked entries: rows of entries decided (or
/// dropped) go, entries newly parked are written.
pub async fn write_parked(
    tx: &mut Transaction<'_, Postgres>,
    was: &HashSet<ParkedKey>,
    now: &Parked,
) -> Result<(), StoreError> {
    let now_keys: HashSet<ParkedKey> = now
        .iter()
        .flat_map(|(p, q)| q.iter().map(|e| (*p, e.position)))
        .collect();
    let gone: Vec<&ParkedKey> = was.difference(&now_keys).collect();
    if !gone.is_empty() {
        let (products, seqs, idxs) = split_keys(gone.iter().copied());
        sqlx::query(
            "DELETE FROM parked pk USING unnest($1::uuid[], $2::bigint[], $3::int[]) AS k(p, s, i) \
             WHERE pk.product_id = k.p AND pk.queue_sequence = k.s AND pk.queue_index = k.i",
        )
        .bind(&products)
        .bind(&seqs)
        .bind(&idxs)
        .execute(&mut **tx)
        .await?;
    }
    let mut products = Vec::new();
    let mut seqs = Vec::new();
    let mut idxs = Vec::new();
    let mut orders = Vec::new();
    let mut lines: Vec<Option<i32>> = Vec::new();
    for (product_id, queue) in now {
        for entry in queue {
            if was.contains(&(*product_id, entry.position)) {
                continue;
            }
            let (order_id, line_no) = match &entry.item {
                Item::Order { order_id, .. } => (*order_id, None),
                Item::Line {
                    order_id, line_no, ..
                } => (*order_id, Some(*line_no)),
                _ => continue,
            };
            products.push(*product_id);
            seqs.push(i64::try_from(entry.position.0).unwrap_or(i64::MAX));
            idxs.push(i32::try_from(entry.position.1).unwrap_or(i32::MAX));
            orders.push(order_id);
            lines.push(line_no);
        }
    }
    if !products.is_empty() {
        // The entries are marked as having had their turn, so that neither a
        // copy of their message nor the stranded sweep takes them for
        // unqueued.
        sqlx::query(
            "WITH p AS ( \
                 INSERT INTO parked (product_id, queue_sequence, queue_index, order_id, line_no) \
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::uuid[], $5::int[]) \
                 RETURNING order_id, line_no, queue_sequence, queue_index \
             ), one AS ( \
                 UPDATE orders o SET queue_sequence = p.queue_sequence, queue_index = p.queue_index \
                 FROM p WHERE p.line_no IS NULL AND o.id = p.order_id \
             ) \
             UPDATE order_lines l SET state = 'parked', queue_sequence = p.queue_sequence, \
                 queue_index = p.queue_index \
             FROM p WHERE l.order_id = p.order_id AND l.line_no = p.line_no",
        )
        .bind(&products)
        .bind(&seqs)
        .bind(&idxs)
        .bind(&orders)
        .bind(&lines)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn split_keys<'a>(keys: impl Iterator<Item = &'a ParkedKey>) -> (Vec<Uuid>, Vec<i64>, Vec<i32>) {
    let mut products = Vec::new();
    let mut seqs = Vec::new();
    let mut idxs = Vec::new();
    for (p, (s, i)) in keys {
        products.push(*p);
        seqs.push(i64::try_from(*s).unwrap_or(i64::MAX));
        idxs.push(i32::try_from(*i).unwrap_or(i32::MAX));
    }
    (products, seqs, idxs)
}

/// What settling orders produced.
#[derive(Debug, Default)]
pub struct Settled {
    /// The orders that settled (reserved, confirmed or rejected; an order
    /// cancelled while pending settles without a change of its own).
    pub orders: Vec<Order>,
    /// A settle entry for every held line of a settled order.
    pub settles: Vec<(Partition, QueueMessage)>,
}

/// What a batch reports on one order: how many of its lines had their
/// turn, and the first of them (in line order) that failed, with why.
#[derive(Debug, Default, Clone, Copy)]
struct Report {
    lines: i32,
    first_failed: Option<(i32, &'static str)>,
}

/// A line of an order being settled.
#[derive(Debug, sqlx::FromRow)]
struct LineState {
    order_id: Uuid,
    line_no: i32,
    product_id: Uuid,
    quantity: i32,
    state: String,
    unit_price_cents: Option<i64>,
}

/// Writes the lines decided in this batch (held, failed or withdrawn),
/// reports them on their orders, and settles every order whose last line
/// this was.
pub async fn write_lines(
    tx: &mut Transaction<'_, Postgres>,
    decisions: &[Decision],
) -> Result<Settled, StoreError> {
    let mut order_ids = Vec::new();
    let mut line_nos = Vec::new();
    let mut states = Vec::new();
    let mut reasons: Vec<Option<&'static str>> = Vec::new();
    let mut prices: Vec<Option<i64>> = Vec::new();
    let mut seqs = Vec::new();
    let mut idxs = Vec::new();
    let mut reports: HashMap<Uuid, Report> = HashMap::new();
    for d in decisions {
        let Item::Line {
            order_id, line_no, ..
        } = d.entry.item
        else {
            continue;
        };
        let (state, reason, price) = match d.outcome {
            Outcome::Taken {
                unit_price_cents, ..
            } => ("held", None, Some(unit_price_cents)),
            Outcome::Refused(reason) => ("failed", Some(reason.as_str()), None),
            Outcome::Withdrawn => ("failed", None, None),
            Outcome::Applied { .. } => continue,
        };
        order_ids.push(order_id);
        line_nos.push(line_no);
        states.push(state);
        reasons.push(reason);
        prices.push(price);
        seqs.push(i64::try_from(d.entry.position.0).unwrap_or(i64::MAX));
        idxs.push(i32::try_from(d.entry.position.1).unwrap_or(i32::MAX));
        let report = reports.entry(order_id).or_default();
        report.lines += 1;
        if let Some(reason) = reason {
            if report.first_failed.is_none_or(|(first, _)| line_no < first) {
                report.first_failed = Some((line_no, reason));
            }
        }
    }
    if order_ids.is_empty() {
        return Ok(Settled::default());
    }
    // The orders' rows first, in id order: partitions reporting lines of
    // the same orders serialize here without deadlocking.
    let mut ids: Vec<Uuid> = reports.keys().copied().collect();
    ids.sort_unstable();
    sqlx::query("SELECT 1 FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    let written = sqlx::query(
        "UPDATE order_lines l SET state = d.state, reason = d.reason, unit_price_cents = d.price, \
             queue_sequence = d.seq, queue_index = d.idx \
         FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::int[]) \
             AS d(order_id, line_no, state, reason, price, seq, idx) \
         WHERE l.order_id = d.order_id AND l.line_no = d.line_no AND l.state IN ('queued', 'parked')",
    )
    .bind(&order_ids)
    .bind(&line_nos)
    .bind(&states)
    .bind(&reasons)
    .bind(&prices)
    .bind(&seqs)
    .bind(&idxs)
    .execute(&mut **tx)
    .await?;
    if written.rows_affected() != order_ids.len() as u64 {
        return Err(StoreError::DecidedElsewhere {
            expected: order_ids.len(),
            decided: written.rows_affected() as usize,
        });
    }

    let mut counts = Vec::with_capacity(ids.len());
    let mut failed_lines: Vec<Option<i32>> = Vec::with_capacity(ids.len());
    let mut failed_reasons: Vec<Option<&'static str>> = Vec::with_capacity(ids.len());
    for id in &ids {
        let report = reports[id];
        counts.push(report.lines);
        failed_lines.push(report.first_failed.map(|(n, _)| n));
        failed_reasons.push(report.first_failed.map(|(_, r)| r));
    }
    let complete: Vec<(Uuid, String, Option<i32>, Option<String>)> = sqlx::query_as(
        "UPDATE orders o SET lines_reported = o.lines_reported + d.n, \
             failed_line = CASE WHEN d.failed_line IS NOT NULL \
                                 AND (o.failed_line IS NULL OR d.failed_line < o.failed_line) \
                                THEN d.failed_line ELSE o.failed_line END, \
             failed_reason = CASE WHEN d.failed_line IS NOT NULL \
                                   AND (o.failed_line IS NULL OR d.failed_line < o.failed_line) \
                                  THEN d.failed_reason ELSE o.failed_reason END \
         FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[]) AS d(id, n, failed_line, failed_reason) \
         WHERE o.id = d.id \
         RETURNING o.id, o.status, o.failed_line, o.failed_reason, o.lines_reported = o.line_count",
    )
    .bind(&ids)
    .bind(&counts)
    .bind(&failed_lines)
    .bind(&failed_reasons)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .filter_map(|(id, status, line, reason, complete): (Uuid, String, Option<i32>, Option<String>, bool)| {
        complete.then_some((id, status, line, reason))
    })
    .collect();
    settle(tx, complete).await
}

/// Settles orders whose every line has reported: confirmed or reserved if
/// every line holds its units, rejected (with the first failed line's
/// reason and product) if not, unchanged if cancelled while pending. Their
/// held lines become settle entries (keep or release) for their own
/// partitions to apply.
async fn settle(
    tx: &mut Transaction<'_, Postgres>,
    complete: Vec<(Uuid, String, Option<i32>, Option<String>)>,
) -> Result<Settled, StoreError> {
    if complete.is_empty() {
        return Ok(Settled::default());
    }
    let ids: Vec<Uuid> = complete.iter().map(|c| c.0).collect();
    let lines: Vec<LineState> = sqlx::query_as(
        "SELECT order_id, line_no, product_id, quantity, state, unit_price_cents FROM order_lines \
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut by_order: HashMap<Uuid, Vec<LineState>> = HashMap::new();
    for line in lines {
        by_order.entry(line.order_id).or_default().push(line);
    }

    let mut settle_ids = Vec::new();
    let mut statuses = Vec::new();
    let mut reasons: Vec<Option<String>> = Vec::new();
    let mut rejected_products: Vec<Option<Uuid>> = Vec::new();
    let mut totals: Vec<Option<i64>> = Vec::new();
    let mut lines_json = Vec::new();
    let mut keep = Vec::new();
    for (id, status, failed_line, failed_reason) in complete {
        let lines = by_order.remove(&id).unwrap_or_default();
        let all_held = lines.iter().all(|l| l.state == "held");
        let kept = status == "pending" && all_held && failed_line.is_none();
        keep.push(kept);
        settle_ids.push(id);
        if status != "pending" {
            // Cancelled while pending: it stays cancelled; its holds go back.
            statuses.push(String::new());
            reasons.push(None);
            rejected_products.push(None);
            totals.push(None);
            lines_json.push(String::new());
            continue;
        }
        let view: Vec<OrderLine> = lines
            .iter()
            .map(|l| OrderLine {
                product_id: l.product_id,
                quantity: l.quantity,
                unit_price_cents: if kept { l.unit_price_cents } else { None },
            })
            .collect();
        lines_json.push(serde_json::to_string(&view).unwrap_or_else(|_| "[]".into()));
        if kept {
            let total = lines
                .iter()
                .map(|l| {
                    l.unit_price_cents
                        .unwrap_or(0)
                        .saturating_mul(i64::from(l.quantity))
                })
                .fold(0i64, i64::saturating_add);
            statuses.push("taken".into());
            reasons.push(None);
            rejected_products.push(None);
            totals.push(Some(total));
        } else {
            statuses.push("rejected".into());
            let reason = failed_reason
                .as_deref()
                .and_then(RejectReason::parse)
                .unwrap_or(RejectReason::ProductUnavailable);
            reasons.push(Some(reason.as_str().to_owned()));
            rejected_products.push(
                failed_line
                    .and_then(|n| lines.iter().find(|l| l.line_no == n).map(|l| l.product_id)),
            );
            totals.push(None);
        }
    }

    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "WITH settled AS ( \
             UPDATE orders o SET \
                 status = CASE WHEN d.status = 'rejected' THEN 'rejected' \
                               WHEN o.reserve_secs IS NULL THEN 'confirmed' ELSE 'reserved' END, \
                 reason = d.reason, rejected_product_id = d.rejected_product_id, \
                 total_cents = d.total_cents, lines = d.lines::jsonb, decided_at = now(), \
                 reserved_until = CASE WHEN d.status = 'taken' AND o.reserve_secs IS NOT NULL \
                                       THEN now() + make_interval(secs => o.reserve_secs) END \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::bigint[], $6::text[]) \
                 AS d(id, status, reason, rejected_product_id, total_cents, lines) \
             WHERE o.id = d.id AND o.status = 'pending' AND d.status <> '' \
             RETURNING {} \
         ), reserved AS ( \
             INSERT INTO reservations (order_id, product_id, quantity, reserved_until) \
             SELECT l.order_id, l.product_id, l.quantity, s.reserved_until \
             FROM settled s JOIN order_lines l ON l.order_id = s.id \
             WHERE s.status = 'reserved' \
         ) \
         SELECT * FROM settled",
        order_columns("o")
    ))
    .bind(&settle_ids)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&rejected_products)
    .bind(&totals)
    .bind(&lines_json)
    .fetch_all(&mut **tx)
    .await?;

    let held: Vec<(Uuid, i32, Uuid, Partition)> = sqlx::query_as(
        "UPDATE order_lines l SET state = CASE WHEN d.keep THEN 'keep' ELSE 'release' END \
         FROM unnest($1::uuid[], $2::bool[]) AS d(order_id, keep) \
         WHERE l.order_id = d.order_id AND l.state = 'held' \
         RETURNING l.order_id, l.line_no, l.product_id, l.partition",
    )
    .bind(&settle_ids)
    .bind(&keep)
    .fetch_all(&mut **tx)
    .await?;
    let settles = held
        .into_iter()
        .map(|(order_id, line_no, product_id, partition)| {
            (
                partition,
                QueueMessage::Settle {
                    order_id,
                    line_no,
                    product_id,
                },
            )
        })
        .collect();
    Ok(Settled {
        orders: rows.into_iter().map(Order::from).collect(),
        settles,
    })
}

/// Settle entries applied: the line's units are taken for good or back in
/// stock (the product's counts were written with the batch's products).
pub async fn write_settles(
    tx: &mut Transaction<'_, Postgres>,
    decisions: &[Decision],
) -> Result<(), StoreError> {
    let mut order_ids = Vec::new();
    let mut line_nos = Vec::new();
    let mut seqs = Vec::new();
    for d in decisions {
        if let Item::Settle {
            order_id, line_no, ..
        } = d.entry.item
        {
            order_ids.push(order_id);
            line_nos.push(line_no);
            seqs.push(i64::try_from(d.entry.position.0).unwrap_or(i64::MAX));
        }
    }
    if order_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE order_lines l SET \
             state = CASE l.state WHEN 'keep' THEN 'taken' ELSE 'released' END, \
             settle_sequence = d.seq \
         FROM unnest($1::uuid[], $2::int[], $3::bigint[]) AS d(order_id, line_no, seq) \
         WHERE l.order_id = d.order_id AND l.line_no = d.line_no AND l.state IN ('keep', 'release')",
    )
    .bind(&order_ids)
    .bind(&line_nos)
    .bind(&seqs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

//! Undecided orders without an index on their status.
//!
//! The worker's decision rewrites an order's status, reason, prices, decision
//! time and queue position. For PostgreSQL to apply it as a HOT update (no
//! new index entries) no index may cover those columns, so no index can say
//! which orders are pending. What says it instead is a per-partition
//! *low-water mark* (`order_low_water`): a transaction id below which every
//! order of the partition is decided. Each order records the transaction
//! that inserted it (`orders.insert_xid`, never updated, indexed with the
//! partition), so the pending orders of a partition are found by reading
//! the index from the mark on: a few milliseconds of orders in steady state,
//! the backlog when there is one.
//!
//! # Why no pending order is ever below the mark
//!
//! [`measure`] scans a partition's orders from its mark, under one statement
//! snapshot S, and moves the mark to the lower of
//!
//! - the oldest `insert_xid` among the pending orders it saw, and
//! - S's xmin: every transaction id below it had finished when S was taken.
//!
//! Suppose the old mark M0 was right (every order below it decided). An
//! order with M0 ≤ `insert_xid` < the new mark M was written by a transaction
//! below S's xmin, so it had committed before S (or aborted, and the row does
//! not exist): S sees it, the scan read it, and it was not pending, or M
//! would not be above its id. An order below M0 was decided by assumption.
//! Decisions are final (nothing ever sets an order pending again, and rows
//! are never deleted), so "decided" stays true after S: the mark, once
//! written, is right forever. Two processes moving it at once each write a
//! right mark, and the greater of two right marks is right, so the update
//! only ever raises it. The mark starts at 0, right by definition.
//!
//! Nothing here depends on clocks or on `created_at`: a row written with any
//! `created_at` is found as long as it is pending. A transaction that writes
//! and then stays open holds every mark below its id until it ends; that
//! makes the scans longer, never wrong.

use sqlx::PgPool;

use crate::partition::Partition;

/// Counts the undecided orders of each of `partitions`, and moves their
/// low-water marks up as far as the count proves they may go. One statement:
/// the counts and the marks come from the same snapshot.
pub async fn measure(
    pool: &PgPool,
    partitions: &[Partition],
) -> Result<Vec<(Partition, i64)>, sqlx::Error> {
    let partitions: Vec<i32> = partitions.iter().map(|p| p.get()).collect();
    sqlx::query_as(
        "WITH snap AS MATERIALIZED ( \
             SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin), \
         scanned AS MATERIALIZED ( \
             SELECT p.partition, c.pending, c.oldest \
             FROM unnest($1::int[]) AS p(partition) \
             LEFT JOIN order_low_water w ON w.partition = p.partition \
             CROSS JOIN LATERAL ( \
                 SELECT count(*) AS pending, min(o.insert_xid) AS oldest FROM orders o \
                 WHERE o.partition = p.partition \
                   AND o.insert_xid >= COALESCE(w.low_water, '0'::xid8) \
                   AND o.status = 'pending') c), \
         raised AS ( \
             INSERT INTO order_low_water AS w (partition, low_water) \
             SELECT s.partition, LEAST(s.oldest, snap.xmin) FROM scanned s, snap \
             ON CONFLICT (partition) DO UPDATE \
                 SET low_water = EXCLUDED.low_water, updated_at = now() \
                 WHERE w.low_water < EXCLUDED.low_water) \
         SELECT partition, pending FROM scanned ORDER BY partition",
    )
    .bind(&partitions)
    .fetch_all(pool)
    .await
}

/// The condition "this order (alias `o`) is pending", for a query that is
/// restricted to partition `$N` = `partition_param`: reads only the rows at
/// or above the partition's low-water mark.
pub fn pending_in_partition(partition_param: &str) -> String {
    format!(
        "o.insert_xid >= COALESCE((SELECT w.low_water FROM order_low_water w \
             WHERE w.partition = {partition_param}), '0'::xid8) \
         AND o.status = 'pending'"
    )
}

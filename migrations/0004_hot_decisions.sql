-- The decision is a HOT update.
--
-- Each order is written twice: the API inserts it pending, the worker's
-- batch transaction decides it. PostgreSQL can apply that second write as a
-- heap-only (HOT) update -- no new entry in any index, less WAL -- only if
-- no index covers or is predicated on a column the update changes (status,
-- reason, unit_price_cents, total_cents, decided_at, queue_sequence,
-- queue_index) and the new row version fits on the same page. 0001 indexed
-- the status twice; this migration replaces both indexes and leaves room in
-- the pages (docs/architecture.md, "The orders table's write path").

-- Which transaction wrote the row: the transaction id, 64-bit so it never
-- wraps. Never updated. It orders rows by when they became visible far
-- better than created_at can: every transaction id below a snapshot's xmin
-- has finished, so a scan under that snapshot has seen every row such a
-- transaction committed. (Rows that exist already all get this migration's
-- own id, which is below any later mark.)
ALTER TABLE orders ADD COLUMN insert_xid xid8 NOT NULL DEFAULT pg_current_xact_id();

-- Per partition, a transaction id below which every order is decided: the
-- backlog count and the stranded sweep read only the rows at or above it.
-- It moves only forward, to the oldest pending row it finds or to the
-- snapshot's xmin (see shared::db::scan_pending_orders, which holds the
-- argument). Kept out of partition_cursors so that moving it never waits on
-- a batch transaction, which holds the cursor row until it commits.
CREATE TABLE order_low_water (
    partition  integer PRIMARY KEY CHECK (partition >= 0),
    low_water  xid8    NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The pending orders of a partition from its low-water mark on.
CREATE INDEX orders_partition_xid ON orders (partition, insert_xid);
-- Per-product audits and stats (and the products foreign key).
CREATE INDEX orders_product ON orders (product_id);
DROP INDEX orders_pending;
DROP INDEX orders_product_status;

-- Room in each page for the decided version of its rows. A page's orders
-- usually arrive in one accept batch and are decided by one worker
-- transaction, so the page must hold a second, larger version (prices,
-- decision time, queue position: ~250 bytes against ~210) of every row at
-- once; the old versions are pruned only after that transaction commits.
-- 45% is the highest fill at which every decision measured HOT
-- (scripts/pg-cost: 0.12 of updates at 90, 0.43 at 70, 0.88 at 50, 1.00 at
-- 45 and 40). Applies to pages written from now on; existing pages keep
-- their fill until the table is rewritten (VACUUM FULL), and their orders
-- are decided already.
ALTER TABLE orders SET (fillfactor = 45);

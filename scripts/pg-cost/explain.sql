-- EXPLAIN ANALYZE of every query that reads pending orders, on a copy of a
-- pg-cost template (1,000,000 decided orders): run with
--   psql -d <copy> -f scripts/pg-cost/explain.sql
-- Traffic after the preload: per partition a pending order, 5,000 decided
-- ones (half a second of a busy partition), then two more pending, one of
-- them backdated an hour (a stranded row).
INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition)
SELECT md5('old-pending.' || p)::uuid, 'late-' || p, 'k', '\x00', md5('product' || p)::uuid, 1, p
FROM generate_series(0, 7) p;
INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition,
                    status, unit_price_cents, total_cents, decided_at, queue_sequence, queue_index)
SELECT md5('recent.' || g)::uuid, 'recent-' || g, 'k', '\x00', md5('product' || (g % 8))::uuid, 1, g % 8,
       'confirmed', 100, 100, now(), g, 0
FROM generate_series(1, 40000) g;
INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition, created_at)
SELECT md5('pending.' || p || '.' || i)::uuid, 'pend-' || p || '-' || i, 'k', '\x00',
       md5('product' || p)::uuid, 1, p, now() - (i * interval '1 hour')
FROM generate_series(0, 7) p, generate_series(0, 1) i;
VACUUM ANALYZE orders;
\timing on
\echo '== today (0001-0003) or HOT (0004): which schema this is'
SELECT to_regclass('order_low_water') IS NOT NULL AS hot_schema;
\if :{?hot}
\else
SELECT to_regclass('order_low_water') IS NOT NULL AS hot \gset
\endif
\if :hot
-- shared::pending::measure, as the backlog monitor and the sweep run it.
PREPARE measure AS
WITH snap AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
scanned AS MATERIALIZED (
    SELECT p.partition, c.pending, c.oldest
    FROM unnest(ARRAY[0,1,2,3,4,5,6,7]) AS p(partition)
    LEFT JOIN order_low_water w ON w.partition = p.partition
    CROSS JOIN LATERAL (
        SELECT count(*) AS pending, min(o.insert_xid) AS oldest FROM orders o
        WHERE o.partition = p.partition
          AND o.insert_xid >= COALESCE(w.low_water, '0'::xid8)
          AND o.status = 'pending') c),
raised AS (
    INSERT INTO order_low_water AS w (partition, low_water)
    SELECT s.partition, LEAST(s.oldest, snap.xmin) FROM scanned s, snap
    ON CONFLICT (partition) DO UPDATE SET low_water = EXCLUDED.low_water, updated_at = now()
    WHERE w.low_water < EXCLUDED.low_water)
SELECT partition, pending FROM scanned ORDER BY partition;
\echo '== backlog monitor and sweep: first measure, from a mark of 0 (right after the migration)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE measure;
\echo '== backlog monitor (api Backlog::monitor, every CHECKLINE_BACKLOG_CHECK_MS), steady state'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE measure;
\echo '== stranded sweep (worker store::stranded), busy partition'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT o.id, o.customer_id, o.product_id, o.quantity, o.status, o.reason, o.unit_price_cents,
       o.total_cents, o.created_at, o.decided_at
FROM orders o
WHERE o.partition = 3
  AND o.insert_xid >= COALESCE((SELECT w.low_water FROM order_low_water w WHERE w.partition = 3), '0'::xid8)
  AND o.status = 'pending'
  AND o.created_at < now() - make_interval(secs => 15)
  AND (now() - interval '6 seconds' IS NULL OR o.created_at < now() - interval '6 seconds')
ORDER BY o.created_at LIMIT 1000;
\echo '== admin stats, pending per partition'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT c.partition,
       (SELECT COUNT(*) FROM orders o WHERE o.partition = c.partition
            AND o.insert_xid >= COALESCE((SELECT w.low_water FROM order_low_water w
                                          WHERE w.partition = c.partition), '0'::xid8)
            AND o.status = 'pending')
       + (SELECT COUNT(*) FROM restocks r WHERE r.partition = c.partition AND r.status = 'pending') AS pending,
       c.owner, c.last_decided_at
FROM partition_cursors c ORDER BY c.partition;
\else
\echo '== backlog monitor, today'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT partition, count(*) FROM orders WHERE status = 'pending' GROUP BY partition;
\echo '== stranded sweep, today'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT o.id, o.customer_id, o.product_id, o.quantity, o.status, o.reason, o.unit_price_cents,
       o.total_cents, o.created_at, o.decided_at
FROM orders o
WHERE o.partition = 3 AND o.status = 'pending'
  AND o.created_at < now() - make_interval(secs => 15)
  AND (now() - interval '6 seconds' IS NULL OR o.created_at < now() - interval '6 seconds')
ORDER BY o.created_at LIMIT 1000;
\endif
\echo '== loadtest: pending orders of the products under test'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT count(*) FROM orders WHERE product_id = ANY(ARRAY[md5('product3')::uuid]) AND status = 'pending';
\echo '== admin stats per product'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT p.id, p.sku, p.stock,
     COALESCE(SUM(o.quantity) FILTER (WHERE o.status = 'confirmed'), 0)::bigint AS confirmed_units,
     COUNT(o.id) FILTER (WHERE o.status = 'confirmed') AS confirmed_orders,
     COUNT(o.id) FILTER (WHERE o.status = 'rejected') AS rejected_orders,
     COALESCE(SUM(o.total_cents) FILTER (WHERE o.status = 'confirmed'), 0)::bigint AS revenue_cents
FROM products p LEFT JOIN orders o ON o.product_id = p.id
GROUP BY p.id ORDER BY p.id;
\echo '== stock audit (one product)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT * FROM stock_audit WHERE product_id = md5('product3')::uuid;

-- Seed of a scratch database for the pg-cost runs (after the migrations):
-- one product and one cursor per partition, a batch counter, and :preload
-- decided orders so that tables and indexes have a realistic size.
INSERT INTO products (id, sku, name, price_cents, stock, initial_stock, partition)
SELECT md5('product' || p)::uuid, 'sku-' || p, 'product ' || p, 100,
       1000000000000000, 1000000000, p
FROM generate_series(0, 7) p;
INSERT INTO partition_cursors (partition) SELECT generate_series(0, 7);
CREATE SEQUENCE pgcost_batch;
INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity,
                    partition, status, unit_price_cents, total_cents, decided_at,
                    queue_sequence, queue_index)
SELECT md5('pre.' || g)::uuid, 'customer-pre-' || g, md5('key.pre.' || g),
       sha256(('pre.' || g)::bytea), md5('product' || (g % 8))::uuid, 1, g % 8,
       'confirmed', 100, 100, now(), g, 0
FROM generate_series(1, :preload) g;

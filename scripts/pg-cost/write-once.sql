-- Write once: the batch's orders inserted already decided, in the decision
-- transaction (the pending state would live only in the queue). Same
-- cursor, product and per-customer work as decide.sql.
\set p :client_id % 8
SELECT nextval('pgcost_batch') AS b \gset
BEGIN;
UPDATE partition_cursors SET last_sequence = last_sequence + 1, last_decided_at = now(), updated_at = now()
 WHERE partition = :p;
SELECT id, stock, price_cents, max_per_customer, active FROM products
 WHERE id = md5('product' || :p)::uuid FOR NO KEY UPDATE;
UPDATE products SET stock = stock - 100, updated_at = now()
 WHERE id = md5('product' || :p)::uuid AND stock >= 100;
INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition,
                    status, unit_price_cents, total_cents, decided_at, queue_sequence, queue_index)
SELECT md5(:b || '.' || g)::uuid, 'customer-' || :b || '-' || g, md5('key.' || :b || '.' || g),
       sha256((:b || '.' || g)::bytea), md5('product' || :p)::uuid, 1, :p,
       'confirmed', 100, 100, now(), :b, g - 1
FROM generate_series(1, 100) g
RETURNING id, status, decided_at;
INSERT INTO customer_purchases (customer_id, product_id, confirmed_quantity)
SELECT 'customer-' || :b || '-' || g, md5('product' || :p)::uuid, 1 FROM generate_series(1, 100) g
ON CONFLICT (customer_id, product_id) DO UPDATE
SET confirmed_quantity = customer_purchases.confirmed_quantity + EXCLUDED.confirmed_quantity;
COMMIT;

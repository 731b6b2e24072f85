-- Today's accept batch: 100 pending orders of one product in one statement
-- (what api/src/accept.rs insert_pending does). Client N works on
-- partition N % 8, as one worker loop owns a partition.
\set p :client_id % 8
SELECT nextval('pgcost_batch') AS b \gset
INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition)
SELECT md5(:b || '.' || g)::uuid, 'customer-' || :b || '-' || g, md5('key.' || :b || '.' || g),
       sha256((:b || '.' || g)::bytea), md5('product' || :p)::uuid, 1, :p
FROM generate_series(1, 100) g;

-- Today's decision of that batch, in a second transaction shaped like
-- worker/src/store.rs apply_batch: cursor compare-and-set, lock the pending
-- rows and the product, conditional stock update, the decisions as one
-- UPDATE ... FROM unnest, per-customer totals.
BEGIN;
UPDATE partition_cursors SET last_sequence = last_sequence + 1, last_decided_at = now(), updated_at = now()
 WHERE partition = :p;
SELECT id, customer_id, product_id, quantity FROM orders
 WHERE id = ANY(ARRAY(SELECT md5(:b || '.' || g)::uuid FROM generate_series(1, 100) g))
   AND status = 'pending' FOR NO KEY UPDATE;
SELECT id, stock, price_cents, max_per_customer, active FROM products
 WHERE id = md5('product' || :p)::uuid FOR NO KEY UPDATE;
UPDATE products SET stock = stock - 100, updated_at = now()
 WHERE id = md5('product' || :p)::uuid AND stock >= 100;
UPDATE orders o SET status = d.status, reason = d.reason, unit_price_cents = d.price,
       total_cents = d.total, decided_at = now(), queue_sequence = d.seq, queue_index = d.idx
  FROM unnest(ARRAY(SELECT md5(:b || '.' || g)::uuid FROM generate_series(1, 100) g),
              array_fill('confirmed'::text, ARRAY[100]), array_fill(NULL::text, ARRAY[100]),
              array_fill(100::bigint, ARRAY[100]), array_fill(100::bigint, ARRAY[100]),
              array_fill(:b::bigint, ARRAY[100]), ARRAY(SELECT generate_series(0, 99)))
       AS d(id, status, reason, price, total, seq, idx)
 WHERE o.id = d.id AND o.status = 'pending'
RETURNING o.id, o.status, o.decided_at;
INSERT INTO customer_purchases (customer_id, product_id, confirmed_quantity)
SELECT 'customer-' || :b || '-' || g, md5('product' || :p)::uuid, 1 FROM generate_series(1, 100) g
ON CONFLICT (customer_id, product_id) DO UPDATE
SET confirmed_quantity = customer_purchases.confirmed_quantity + EXCLUDED.confirmed_quantity;
COMMIT;

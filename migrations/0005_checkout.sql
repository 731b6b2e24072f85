-- Checkout 1.1: orders of several lines, reservations, cancel and expiry.
-- docs/architecture.md, "Carts and reservations", has the design and the
-- argument; this file only states the data.

-- An order of several lines has no single product or quantity: its lines
-- are in `lines` (what the contract shows) and `order_lines` (each line's
-- progress through its product's queue). A one-line order keeps the v1
-- columns and no `lines` value.
ALTER TABLE orders ALTER COLUMN product_id DROP NOT NULL;
ALTER TABLE orders ALTER COLUMN quantity DROP NOT NULL;
ALTER TABLE orders
    -- [{"product_id", "quantity", "unit_price_cents"}] in request order, for
    -- an order of several lines; prices filled in when it takes its units.
    ADD COLUMN lines               jsonb,
    ADD COLUMN line_count          integer NOT NULL DEFAULT 1 CHECK (line_count BETWEEN 1 AND 100),
    -- Lines whose turn has come and gone (held or failed); the transaction
    -- that makes it line_count settles the order.
    ADD COLUMN lines_reported      integer NOT NULL DEFAULT 0 CHECK (lines_reported >= 0),
    -- The first line (in request order) that could not take its units.
    ADD COLUMN failed_line         integer,
    ADD COLUMN failed_reason       text,
    ADD COLUMN rejected_product_id uuid,
    ADD COLUMN reserve_secs        integer CHECK (reserve_secs > 0),
    ADD COLUMN reserved_until      timestamptz,
    ADD CONSTRAINT orders_lines_reported CHECK (lines_reported <= line_count),
    ADD CONSTRAINT orders_one_line CHECK (
        (line_count = 1) = (product_id IS NOT NULL AND quantity IS NOT NULL AND lines IS NULL));

ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN (
    'pending', 'reserved', 'confirmed', 'rejected', 'cancelled', 'expired'));
-- Prices: present once the order took its units (reserved, confirmed, and a
-- reservation that expired or was cancelled keeps what it was going to
-- cost), absent while pending and when rejected. An order of several lines
-- has no single unit price.
ALTER TABLE orders DROP CONSTRAINT orders_prices;
ALTER TABLE orders ADD CONSTRAINT orders_prices CHECK (
    CASE status
        WHEN 'reserved'  THEN total_cents IS NOT NULL
        WHEN 'confirmed' THEN total_cents IS NOT NULL
        WHEN 'pending'   THEN total_cents IS NULL AND unit_price_cents IS NULL
        WHEN 'rejected'  THEN total_cents IS NULL AND unit_price_cents IS NULL
        ELSE true
    END);
ALTER TABLE orders ADD CONSTRAINT orders_reserved_until CHECK (
    status <> 'reserved' OR reserved_until IS NOT NULL);

-- Each line of an order of several lines. Written with the order; `state`
-- moves queued -> held | failed at the line's turn in its product's queue
-- (queued -> parked -> held | failed if it had to wait behind held units)
-- (by that partition's worker), held -> keep | release when the order
-- settles, and keep -> taken | release -> released at the settle entry's
-- turn, again in the line's own partition. A line in keep or release is an
-- entry still to be queued (the settle outbox).
CREATE TABLE order_lines (
    order_id         uuid    NOT NULL REFERENCES orders (id),
    line_no          integer NOT NULL CHECK (line_no >= 0),
    product_id       uuid    NOT NULL REFERENCES products (id),
    quantity         integer NOT NULL CHECK (quantity > 0),
    partition        integer NOT NULL,
    state            text    NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'parked', 'held', 'failed', 'keep', 'release', 'taken', 'released')),
    reason           text,
    unit_price_cents bigint,
    -- The line's turn: where it held its units or failed.
    queue_sequence   bigint,
    queue_index      integer,
    -- Where its settle entry took effect (keep -> taken, release ->
    -- released): released units go to entries after this position.
    settle_sequence  bigint,
    PRIMARY KEY (order_id, line_no),
    CONSTRAINT order_lines_product UNIQUE (order_id, product_id)
);
CREATE INDEX order_lines_product ON order_lines (product_id);
-- The settle outbox, per partition.
CREATE INDEX order_lines_settling ON order_lines (partition) WHERE state IN ('keep', 'release');
-- Lines whose turn has not come: the backlog and the stranded sweep.
CREATE INDEX order_lines_queued ON order_lines (partition) WHERE state = 'queued';

-- Units set aside by lines whose order has not settled. Only the product's
-- own partition moves them, at a line's turn and at its settle entry's turn.
ALTER TABLE products ADD COLUMN held bigint NOT NULL DEFAULT 0 CHECK (held >= 0);

-- Entries that reached their turn while units of their product were held by
-- an unsettled order: they wait, in queue order, for those holds to settle
-- instead of being refused for units that may come back. Only ever behind
-- holds of orders earlier in the queue. A parked one-line order has its
-- queue position set while still pending (so neither a copy of its message
-- nor the stranded sweep takes it for unqueued); a parked line is in state
-- parked.
CREATE TABLE parked (
    product_id     uuid    NOT NULL REFERENCES products (id),
    queue_sequence bigint  NOT NULL,
    queue_index    integer NOT NULL,
    order_id       uuid    NOT NULL REFERENCES orders (id),
    -- NULL for a one-line order.
    line_no        integer,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, queue_sequence, queue_index)
);

-- The units of reserved orders, one row per line, until the order is
-- confirmed, cancelled or expires. A product's `reserved` is the sum of its
-- rows plus its `held`; the expirer reads the due rows.
CREATE TABLE reservations (
    order_id       uuid        NOT NULL REFERENCES orders (id),
    product_id     uuid        NOT NULL REFERENCES products (id),
    quantity       integer     NOT NULL CHECK (quantity > 0),
    reserved_until timestamptz NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX reservations_product ON reservations (product_id, reserved_until);
CREATE INDEX reservations_due ON reservations (reserved_until);

-- Units of a reserved order that expired or was cancelled, on their way
-- back to stock: queued like a restock, so they go to orders queued after
-- the return. Pending rows are the outbox; the sweep republishes them.
CREATE TABLE stock_returns (
    id             uuid        PRIMARY KEY,
    order_id       uuid        NOT NULL REFERENCES orders (id),
    product_id     uuid        NOT NULL REFERENCES products (id),
    customer_id    text        NOT NULL,
    quantity       integer     NOT NULL CHECK (quantity > 0),
    partition      integer     NOT NULL,
    status         text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    applied_at     timestamptz,
    -- Where the return took effect in its product's queue.
    queue_sequence bigint,
    CONSTRAINT stock_returns_once UNIQUE (order_id, product_id)
);
CREATE INDEX stock_returns_pending ON stock_returns (partition, created_at) WHERE status = 'pending';

-- Purchases now count reserved and confirmed units (invariant 5); the
-- column keeps its name.
COMMENT ON COLUMN customer_purchases.confirmed_quantity IS
    'units of this product in the customer''s held, reserved and confirmed orders';

-- Invariant 1, with carts and reservations: initial + restocks = stock +
-- held + units of reserved and confirmed orders + units on their way back.
-- Once the queue is drained, held and returning are 0.
DROP VIEW stock_audit;
CREATE VIEW stock_audit AS
WITH taken AS (
    SELECT product_id, quantity FROM orders
     WHERE line_count = 1 AND status IN ('reserved', 'confirmed')
    UNION ALL
    SELECT l.product_id, l.quantity FROM order_lines l JOIN orders o ON o.id = l.order_id
     WHERE o.status IN ('reserved', 'confirmed')
), returning_units AS (
    SELECT product_id, SUM(quantity)::bigint AS units FROM stock_returns
     WHERE status = 'pending' GROUP BY product_id
)
SELECT p.id AS product_id,
       p.initial_stock,
       COALESCE(r.restocked, 0)                                    AS restocked,
       p.stock,
       p.held,
       -- Units of reserved and confirmed orders (the name is v1's).
       COALESCE(t.units, 0)                                        AS confirmed_units,
       COALESCE(ret.units, 0)                                      AS returning_units,
       p.initial_stock + COALESCE(r.restocked, 0)
           = p.stock + p.held + COALESCE(t.units, 0) + COALESCE(ret.units, 0) AS balanced
FROM products p
LEFT JOIN (SELECT product_id, SUM(quantity)::bigint AS restocked
           FROM restocks WHERE status = 'applied' GROUP BY product_id) r
       ON r.product_id = p.id
LEFT JOIN (SELECT product_id, SUM(quantity)::bigint AS units FROM taken GROUP BY product_id) t
       ON t.product_id = p.id
LEFT JOIN returning_units ret ON ret.product_id = p.id;

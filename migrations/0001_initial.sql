-- checkline schema. PostgreSQL is the source of truth: every invariant of the
-- contract (docs/architecture.md) is either enforced by a constraint here or
-- checkable with one query against these tables (see the stock_audit view).

-- Products. `stock` is the only column the worker writes on the hot path; the
-- CHECK makes overselling impossible even if application code were wrong.
-- `initial_stock` is kept so that invariant 1 (initial + restocks = stock +
-- confirmed) can be audited at any time.
CREATE TABLE products (
    id               uuid        PRIMARY KEY,
    sku              text        NOT NULL CHECK (char_length(sku) BETWEEN 1 AND 64),
    name             text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    price_cents      bigint      NOT NULL CHECK (price_cents BETWEEN 0 AND 1000000000000),
    -- bigint: restocks of up to 10^9 each may accumulate past 2^31.
    stock            bigint      NOT NULL CHECK (stock >= 0),
    initial_stock    bigint      NOT NULL CHECK (initial_stock BETWEEN 0 AND 1000000000),
    max_per_customer integer     CHECK (max_per_customer BETWEEN 1 AND 1000000),
    active           boolean     NOT NULL DEFAULT true,
    -- The queue partition this product's orders and restocks travel through.
    -- Fixed at creation: moving a product between partitions could reorder its
    -- queue, which would break first-come first-served.
    partition        integer     NOT NULL CHECK (partition >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_sku_key UNIQUE (sku)
);

-- Round-robin partition assignment: spreads a handful of hot products over the
-- partitions better than hashing their ids would.
CREATE SEQUENCE product_partition_seq MINVALUE 0 START 0;

-- Orders. The row is written by the API *before* the order is queued (an
-- outbox of sorts): the unique (customer_id, idempotency_key) constraint makes
-- idempotency a database guarantee rather than a cache's best effort, and the
-- row gives read-your-writes right after the 202.
CREATE TABLE orders (
    id               uuid        PRIMARY KEY,
    customer_id      text        NOT NULL CHECK (char_length(customer_id) BETWEEN 1 AND 64),
    idempotency_key  text        NOT NULL CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    -- SHA-256 of the canonical request (product id and quantity): a retry with
    -- the same key must carry the same request, or it is refused with 422.
    request_hash     bytea       NOT NULL,
    product_id       uuid        NOT NULL REFERENCES products (id),
    quantity         integer     NOT NULL CHECK (quantity > 0),
    partition        integer     NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'confirmed', 'rejected')),
    reason           text        CHECK (reason IN ('sold_out', 'insufficient_stock',
                                     'limit_exceeded', 'product_unavailable',
                                     'idempotency_key_reused')),
    unit_price_cents bigint,
    total_cents      bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    decided_at       timestamptz,
    -- JetStream stream sequence of the message that decided the order: the
    -- queue order, against which first-come first-served is audited.
    queue_sequence   bigint,
    CONSTRAINT orders_customer_key UNIQUE (customer_id, idempotency_key),
    -- A decision is complete or absent, never half-written.
    CONSTRAINT orders_decided_at CHECK ((status = 'pending') = (decided_at IS NULL)),
    CONSTRAINT orders_reason CHECK ((status = 'rejected') = (reason IS NOT NULL)),
    CONSTRAINT orders_prices CHECK (
        (status = 'confirmed') = (unit_price_cents IS NOT NULL AND total_cents IS NOT NULL))
);

-- "My orders, newest first" with keyset pagination.
CREATE INDEX orders_customer_newest ON orders (customer_id, id DESC);
-- Pending orders per partition: the admin backlog figure and the requeue sweep.
CREATE INDEX orders_pending ON orders (partition, created_at) WHERE status = 'pending';
-- Per-product audits and stats.
CREATE INDEX orders_product_status ON orders (product_id, status);

-- Running total of confirmed units per (customer, product), so that the
-- per-customer limit (invariant 5) is checked in O(1) and held by a constraint.
CREATE TABLE customer_purchases (
    customer_id        text   NOT NULL,
    product_id         uuid   NOT NULL REFERENCES products (id),
    confirmed_quantity bigint NOT NULL CHECK (confirmed_quantity >= 0),
    PRIMARY KEY (customer_id, product_id)
);

-- Restocks travel through the product's partition like orders, so they are
-- ordered with the checkouts around them. Keys are scoped per admin subject.
CREATE TABLE restocks (
    id              uuid        PRIMARY KEY,
    product_id      uuid        NOT NULL REFERENCES products (id),
    requested_by    text        NOT NULL,
    idempotency_key text        NOT NULL CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    request_hash    bytea       NOT NULL,
    quantity        bigint      NOT NULL CHECK (quantity BETWEEN 1 AND 1000000000),
    partition       integer     NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied')),
    stock_after     bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    applied_at      timestamptz,
    queue_sequence  bigint,
    CONSTRAINT restocks_requester_key UNIQUE (requested_by, idempotency_key),
    CONSTRAINT restocks_applied CHECK ((status = 'applied') = (applied_at IS NOT NULL AND stock_after IS NOT NULL))
);
CREATE INDEX restocks_pending ON restocks (partition, created_at) WHERE status = 'pending';

-- One row per queue partition: the position of the last JetStream message
-- whose effects are committed. The worker advances it in the same transaction
-- as the decisions (compare-and-set on last_sequence), which makes applying a
-- message exactly-once however often JetStream delivers it.
CREATE TABLE partition_cursors (
    partition       integer     PRIMARY KEY CHECK (partition >= 0),
    last_sequence   bigint      NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    owner           text,
    fencing_token   bigint      NOT NULL DEFAULT 0,
    last_decided_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Invariant 1 per product, checkable at any time once the queue is drained:
-- initial_stock + applied restocks = stock + confirmed quantity.
CREATE VIEW stock_audit AS
SELECT p.id AS product_id,
       p.initial_stock,
       COALESCE(r.restocked, 0)                                   AS restocked,
       p.stock,
       COALESCE(o.confirmed_units, 0)                             AS confirmed_units,
       p.initial_stock + COALESCE(r.restocked, 0)
           = p.stock + COALESCE(o.confirmed_units, 0)             AS balanced
FROM products p
LEFT JOIN (SELECT product_id, SUM(quantity)::bigint AS restocked
           FROM restocks WHERE status = 'applied' GROUP BY product_id) r
       ON r.product_id = p.id
LEFT JOIN (SELECT product_id, SUM(quantity)::bigint AS confirmed_units
           FROM orders WHERE status = 'confirmed' GROUP BY product_id) o
       ON o.product_id = p.id;

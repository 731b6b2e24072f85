-- Several orders can share one queue message (the API publishes the orders
-- of a product that arrive together as one message, so that one fsync
-- carries many of them). An order's place in its product's queue is then
-- (queue_sequence, queue_index): the stream sequence of its message, and its
-- position inside that message.
ALTER TABLE orders ADD COLUMN queue_index integer;
ALTER TABLE orders ADD CONSTRAINT orders_queue_index CHECK (queue_index >= 0);

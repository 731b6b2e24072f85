-- A partition's cursor is a sequence of one particular queue stream. If that
-- stream is lost and created again (NATS lost its store, an operator deleted
-- it), sequences start over at 1 and a cursor left from the old stream would
-- skip every new message below it. So each cursor records the creation time
-- of the stream it counts in; a worker that finds a different stream re-reads
-- the partition from the start and queues every pending order again (see
-- worker::partition).
ALTER TABLE partition_cursors ADD COLUMN stream_created timestamptz;

-- What an outbox row holds: 'raw' bytes to publish as they are (dead letters),
-- or an 'order_event' stored as JSON and encoded at publish time (Avro when a
-- schema registry is configured).
ALTER TABLE outbox ADD COLUMN kind text NOT NULL DEFAULT 'raw' CHECK (kind IN ('raw', 'order_event'));

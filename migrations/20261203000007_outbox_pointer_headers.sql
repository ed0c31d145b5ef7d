-- An order event's outbox row (a pointer to its feed row) no longer stores
-- its headers: they are always the one `event_type` header, which the relay
-- reads from the feed row (store/outbox.rs). About 40 bytes of WAL less per order
-- event. Rows with a payload (dead letters, anything else) keep theirs.
ALTER TABLE outbox
    ALTER COLUMN headers DROP NOT NULL,
    ADD CONSTRAINT outbox_headers_or_feed CHECK (headers IS NOT NULL OR feed_seq IS NOT NULL);


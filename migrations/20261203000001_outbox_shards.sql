-- The outbox in shards, each with a publisher of its own, and rows deleted
-- as they are published (see workers/relay.rs).
--
-- A row's `slot` (0..255) is a hash of its key (the order id for order
-- events), fixed at insert by the database, so every writer agrees on it and
-- an order's rows all share one slot. With OUTBOX_SHARDS = N, lease shard k
-- covers the slots s with s % N = k: an order lives in one shard, whose one
-- publisher keeps its events in id (commit) order.
--
-- Rows used to be updated as sent and purged a day later: an update that
-- rewrote each row (payload included) and moved it between two partial
-- indexes. Published rows are now deleted in bulk, fenced by the lease, and
-- the primary key is the table's only index. `sent_at` stays so that an
-- instance of the previous version, still running during a rolling upgrade,
-- does not fail; rows it marks are purged as before.
CREATE FUNCTION outbox_slot(key bytea) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (hashtextextended(encode(coalesce(key, '\x'::bytea), 'hex'), 0) & 255)::smallint;

DELETE FROM outbox WHERE sent_at IS NOT NULL;
DROP INDEX outbox_unsent_idx;
DROP INDEX outbox_sent_at_idx;
ALTER TABLE outbox ADD COLUMN slot smallint NOT NULL GENERATED ALWAYS AS (outbox_slot(key)) STORED;

-- Who takes part in publishing: every relay heartbeats here, and each takes
-- up to its fair share of the shards (OUTBOX_SHARDS / live relays, rounded
-- up), so a relay that joins gets shards released by the others.
CREATE TABLE relay_members (
    instance_id text PRIMARY KEY,
    seen_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The shard count a lease was taken under: a relay configured with another
-- OUTBOX_SHARDS takes nothing while such a lease is live, since the same
-- shard number would name other slots.
ALTER TABLE relay_leases ADD COLUMN shards integer NOT NULL DEFAULT 1;

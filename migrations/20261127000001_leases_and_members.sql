-- Relay leadership: one lease per outbox shard (a single shard, 0, today).
-- The holder renews it well before `expires_at`; anyone may take it once it
-- has expired, and taking it raises `epoch`. Marking outbox rows sent
-- requires the current owner and epoch, so a leader that froze and lost the
-- lease can no longer mark anything (see workers/relay.rs).
CREATE TABLE relay_leases (
    shard      integer PRIMARY KEY,
    owner      text NOT NULL,
    epoch      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Consumer group members as each instance reports itself: the partitions it
-- owns, refreshed every few seconds. Partitions of a topic that no fresh row
-- names are owned by nobody (a broker that lost track, or every member gone).
CREATE TABLE consumer_members (
    group_id    text NOT NULL,
    instance_id text NOT NULL,
    topic       text NOT NULL,
    partitions  integer[] NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (group_id, instance_id)
);

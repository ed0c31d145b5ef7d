-- The order feed: every order event, in each user's commit order, kept for
-- the live streams (`GET /orders/{id}/events`, `GET /users/{id}/orders/events`)
-- to replay from a client's cursor. See docs/realtime.md.
--
-- `seq` is per user, taken from `feed_heads` by an upsert that holds the
-- user's row lock until the batch commits, so a user's seqs commit in order
-- and have no holes: a cursor (the last seq a client saw) never skips a
-- change that commits later. An order's events are a user's events, so the
-- same cursor is monotone per order too.
CREATE TABLE feed_heads (
    user_id bigint PRIMARY KEY,
    seq     bigint NOT NULL
);

CREATE TABLE order_feed (
    user_id    bigint NOT NULL,
    seq        bigint NOT NULL,
    order_id   text NOT NULL,
    event_type text NOT NULL,
    -- The event as published on order-events (JSON).
    body       json NOT NULL,
    -- The writing transaction: live tailers read what committed since their
    -- last snapshot (xid >= its xmax, or among its in-progress xids).
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX order_feed_order_idx ON order_feed (order_id, seq);
CREATE INDEX order_feed_xid_idx ON order_feed (xid);
-- Rows arrive in time order: a BRIN index finds the old ones to purge for
-- next to nothing on the write path.
CREATE INDEX order_feed_created_brin ON order_feed USING brin (created_at);


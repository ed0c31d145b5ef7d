-- An order event's body is written once, in the order feed: its outbox row
-- holds no payload but the feed row's key, and the relay reads the body
-- from there (see store/feed.rs). Dead letters keep their payload. The feed
-- purge keeps rows the outbox still points at.
ALTER TABLE outbox
    ALTER COLUMN payload DROP NOT NULL,
    ADD COLUMN feed_user_id bigint,
    ADD COLUMN feed_seq bigint,
    ADD CONSTRAINT outbox_payload_or_feed CHECK (payload IS NOT NULL OR feed_seq IS NOT NULL);

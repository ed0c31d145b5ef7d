-- An order's events are replayed through its user's feed (the primary key,
-- user_id then seq, filtered by order id): a user's feed is short, and one
-- index fewer on a table written once per order event.
DROP INDEX order_feed_order_idx;

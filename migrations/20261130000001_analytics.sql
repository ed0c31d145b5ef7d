-- Analytics: rollups of order-events, maintained by the analytics loop
-- (src/analytics) and rebuilt from the tables by `orderflow analytics rebuild`.
--
-- Every rollup row is keyed by the UTC day of the events it counts, their
-- currency, and `part`: the order-events partition whose batches wrote it
-- (-1: written by a rebuild). One partition has one batch in flight, so
-- concurrent batches never touch the same row; reads sum over `part`.

-- Ids of the order-events counted: a redelivery or a republished event
-- (order-events is at-least-once) is counted once. Order event ids are UUID
-- v7, which begin with their creation time: ids older than
-- ANALYTICS_DEDUPE_RETENTION_SECS are purged by a range of the primary key,
-- so the table needs no other column or index.
CREATE TABLE analytics_seen (
    event_id uuid PRIMARY KEY
);

CREATE TABLE analytics_daily (
    day                   date NOT NULL,
    currency              text NOT NULL,
    part                  integer NOT NULL,
    orders_created        bigint NOT NULL DEFAULT 0,
    orders_rejected       bigint NOT NULL DEFAULT 0,
    orders_paid           bigint NOT NULL DEFAULT 0,
    orders_payment_failed bigint NOT NULL DEFAULT 0,
    orders_cancelled      bigint NOT NULL DEFAULT 0,
    gross_revenue_minor   bigint NOT NULL DEFAULT 0,
    refunds_requested     bigint NOT NULL DEFAULT 0,
    refunded_minor        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, currency, part)
);

-- Time from creation to payment: orders paid per histogram bucket, the
-- bucket named by its upper bound in seconds (analytics::time_to_pay).
CREATE TABLE analytics_time_to_pay (
    day        date NOT NULL,
    currency   text NOT NULL,
    part       integer NOT NULL,
    le_seconds integer NOT NULL,
    orders     bigint NOT NULL,
    PRIMARY KEY (day, currency, part, le_seconds)
);

-- Lines of the orders created, per product.
CREATE TABLE analytics_products (
    day           date NOT NULL,
    currency      text NOT NULL,
    part          integer NOT NULL,
    sku           text NOT NULL,
    -- The greatest of the names the sku was sold under (deterministic when
    -- a product is renamed).
    name          text NOT NULL,
    units         bigint NOT NULL,
    revenue_minor bigint NOT NULL,
    PRIMARY KEY (day, currency, part, sku)
);

-- The time-to-pay bucket of an elapsed time, named by its upper bound in
-- seconds: 1 s wide under a minute, 10 s under 10 minutes, 1 min under an
-- hour, 10 min under a day, then a day. The same function as
-- analytics::rollup::le_seconds (the loop computes it in Rust; the rebuild
-- here).
CREATE FUNCTION analytics_le_seconds(elapsed_ms bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT LEAST((s / step + 1) * step, 2147483647)::integer
    FROM (SELECT GREATEST(elapsed_ms, 0) / 1000 AS s) AS t,
         LATERAL (SELECT CASE WHEN s < 60 THEN 1 WHEN s < 600 THEN 10 WHEN s < 3600 THEN 60
                              WHEN s < 86400 THEN 600 ELSE 86400 END AS step) AS u
$$;

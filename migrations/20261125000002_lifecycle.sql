-- Payments, refunds and parked events: the order lifecycle.

-- The payment that paid the order (kept after a cancellation: its refund names it).
ALTER TABLE orders
    ADD COLUMN paid_payment_id text,
    ADD COLUMN paid_amount_minor bigint CHECK (paid_amount_minor >= 0);

-- Every payment confirmation applied to an order, once per (payment_id, status):
-- a provider repeating a webhook is a duplicate.
CREATE TABLE payments (
    payment_id     text NOT NULL,
    status         text NOT NULL CHECK (status IN ('CONFIRMED', 'FAILED')),
    order_id       text NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    amount_minor   bigint NOT NULL CHECK (amount_minor >= 0),
    currency       text NOT NULL,
    provider       text NOT NULL,
    failure_reason text,
    -- What it did: PAID, FAILED, REJECTED (wrong amount/currency), REFUNDED
    -- (order not payable), IGNORED.
    disposition    text NOT NULL,
    event_id       text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (payment_id, status)
);
CREATE INDEX payments_order_idx ON payments (order_id);

-- A refund is requested at most once per payment, whatever asks for it.
CREATE TABLE refunds (
    payment_id     text PRIMARY KEY,
    order_id       text NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    amount_minor   bigint NOT NULL CHECK (amount_minor >= 0),
    currency       text NOT NULL,
    reason         text NOT NULL,
    cause_event_id text NOT NULL,
    requested_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX refunds_order_idx ON refunds (order_id);

-- Payments and cancellations for orders whose checkout has not been
-- processed yet, applied in seq (arrival) order when it is.
CREATE TABLE parked_events (
    seq         bigserial PRIMARY KEY,
    source      text NOT NULL,
    event_id    text NOT NULL,
    order_id    text NOT NULL,
    payload     jsonb NOT NULL,
    occurred_at timestamptz NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (source, event_id)
);
CREATE INDEX parked_events_order_idx ON parked_events (order_id, seq);
CREATE INDEX parked_events_parked_at_idx ON parked_events (parked_at);

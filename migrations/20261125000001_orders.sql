-- Orders, their lines and status history; dedupe (inbox) and outbox; pricing tables.

CREATE TABLE orders (
    order_id             text PRIMARY KEY,
    cart_id              bigint NOT NULL,
    user_id              bigint NOT NULL,
    status               text NOT NULL CHECK (status IN
                           ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'CANCELLED',
                            'REFUND_REQUESTED', 'REJECTED')),
    -- As received; only trusted to be ISO 4217 when the order is not REJECTED.
    currency             text NOT NULL,
    -- Amounts are integer minor units; NULL only for REJECTED orders, which
    -- could not be priced.
    subtotal_minor       bigint,
    tax_minor            bigint,
    tax_rate_ppm         integer,
    shipping_minor       bigint,
    total_minor          bigint,
    item_count           bigint NOT NULL DEFAULT 0,
    payment_method       text NOT NULL,
    shipping_address     jsonb NOT NULL,
    billing_address      jsonb NOT NULL,
    rejection_reason     text,
    checkout_event_id    text NOT NULL,
    checkout_occurred_at timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT orders_cart_id_unique UNIQUE (cart_id),
    CONSTRAINT orders_priced_unless_rejected CHECK (
        status = 'REJECTED'
        OR (subtotal_minor >= 0 AND tax_minor >= 0 AND shipping_minor >= 0
            AND total_minor = subtotal_minor + tax_minor + shipping_minor))
);

-- A user's history, newest first, keyset-paginated on (created_at, order_id).
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC, order_id DESC);

CREATE TABLE order_items (
    order_id         text NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    line_no          integer NOT NULL,
    sku              text NOT NULL,
    name             text NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price_minor bigint NOT NULL CHECK (unit_price_minor >= 0),
    line_total_minor bigint NOT NULL CHECK (line_total_minor = quantity * unit_price_minor),
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_status_history (
    id             bigserial PRIMARY KEY,
    order_id       text NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    from_status    text,
    to_status      text NOT NULL,
    cause_event_id text NOT NULL,
    reason         text,
    at             timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX order_status_history_order_idx ON order_status_history (order_id, id);

-- The inbox: one row per input event applied (or judged a duplicate of
-- something applied). Written in the same transaction as the effect.
CREATE TABLE processed_events (
    source       text NOT NULL,
    event_id     text NOT NULL,
    order_id     text,
    outcome      text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (source, event_id)
);

-- The outbox: records to publish, written in the transaction that caused them.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        bytea,
    payload    bytea NOT NULL,
    headers    jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at    timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Tax rates in parts per million of the subtotal (82500 = 8.25 %). region ''
-- is the whole country; lookup is (country, region), then (country, ''),
-- then DEFAULT_TAX_RATE_PPM.
CREATE TABLE tax_rates (
    country  text NOT NULL,
    region   text NOT NULL DEFAULT '',
    rate_ppm integer NOT NULL CHECK (rate_ppm BETWEEN 0 AND 1000000),
    PRIMARY KEY (country, region)
);

-- Flat shipping per currency, free from a subtotal threshold (NULL: never free).
-- A currency with no row uses 5 major units, free from 50 major units.
CREATE TABLE shipping_rates (
    currency        text PRIMARY KEY,
    flat_fee_minor  bigint NOT NULL CHECK (flat_fee_minor >= 0),
    free_from_minor bigint CHECK (free_from_minor >= 0)
);

INSERT INTO tax_rates (country, region, rate_ppm) VALUES
    ('US', 'CA', 72500),
    ('US', 'NY', 40000),
    ('US', 'TX', 62500),
    ('US', 'WA', 65000),
    ('US', 'OR', 0),
    ('DE', '', 190000),
    ('FR', '', 200000),
    ('GB', '', 200000),
    ('NL', '', 210000),
    ('JP', '', 100000);

INSERT INTO shipping_rates (currency, flat_fee_minor, free_from_minor) VALUES
    ('USD', 499, 5000),
    ('EUR', 490, 5000),
    ('GBP', 399, 4000),
    ('JPY', 800, 8000);

-- The columns a status change writes (status, updated_at, paid_payment_id,
-- paid_amount_minor) move to the end of `orders`. A HOT update logs the
-- new row version without the bytes it shares with the old one at its
-- start and at its end; with the mutable columns in the middle, everything
-- between them was logged again on every change (the addresses, the event
-- id, the timestamps: about 440 bytes per payment). At the end, what is
-- logged is about the changed columns alone.
--
-- Columns cannot be reordered in place: they are added anew, copied and the
-- old ones dropped (a dropped column costs new rows one bit of the null
-- bitmap). The copy rewrites every order once; on a large table run it in
-- a quiet hour (CHANGELOG).
ALTER TABLE orders
    ADD COLUMN status_ text,
    ADD COLUMN updated_at_ timestamptz,
    ADD COLUMN paid_payment_id_ text,
    ADD COLUMN paid_amount_minor_ bigint;
UPDATE orders SET status_ = status, updated_at_ = updated_at,
                  paid_payment_id_ = paid_payment_id, paid_amount_minor_ = paid_amount_minor;
-- Dropping `status` drops the two checks that name it; they are added back.
ALTER TABLE orders
    DROP COLUMN status,
    DROP COLUMN updated_at,
    DROP COLUMN paid_payment_id,
    DROP COLUMN paid_amount_minor;
ALTER TABLE orders RENAME COLUMN status_ TO status;
ALTER TABLE orders RENAME COLUMN updated_at_ TO updated_at;
ALTER TABLE orders RENAME COLUMN paid_payment_id_ TO paid_payment_id;
ALTER TABLE orders RENAME COLUMN paid_amount_minor_ TO paid_amount_minor;
ALTER TABLE orders
    ALTER COLUMN status SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL,
    ALTER COLUMN updated_at SET DEFAULT clock_timestamp(),
    ADD CONSTRAINT orders_status_check CHECK (status IN
        ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'CANCELLED', 'REFUND_REQUESTED', 'REJECTED')),
    ADD CONSTRAINT orders_paid_amount_minor_check CHECK (paid_amount_minor >= 0),
    ADD CONSTRAINT orders_priced_unless_rejected CHECK (
        status = 'REJECTED'
        OR (subtotal_minor >= 0 AND tax_minor >= 0 AND shipping_minor >= 0
            AND total_minor = subtotal_minor + tax_minor + shipping_minor));

-- The status history is read by order (order_status_history_order_idx,
-- which also orders it by id); no read looks a row up by id alone, so its
-- primary key index was one more index entry per status change for nothing.
ALTER TABLE order_status_history DROP CONSTRAINT order_status_history_pkey;

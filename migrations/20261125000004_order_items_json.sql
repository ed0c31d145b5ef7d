-- An order's lines as a JSON array, written with the order. Lines never change
-- after the checkout, so the order reads (history, detail) serve this as is
-- instead of aggregating order_items for every order they return; order_items
-- stays the relational record of the same lines.
ALTER TABLE orders ADD COLUMN items json;

UPDATE orders o SET items = COALESCE((
    SELECT json_agg(json_build_object('line_no', i.line_no, 'sku', i.sku, 'name', i.name,
        'quantity', i.quantity, 'unit_price_minor', i.unit_price_minor,
        'line_total_minor', i.line_total_minor) ORDER BY i.line_no)
    FROM order_items i WHERE i.order_id = o.order_id), '[]'::json);

ALTER TABLE orders ALTER COLUMN items SET NOT NULL;

-- An order's lines are written once: as `orders.items` (JSON), which every
-- read already served. They were also written as `order_items` rows (2.5
-- rows and index entries per checkout, for lines that never change).
-- `order_items` becomes a view over `orders.items`, so queries that read it
-- go on working. The checks its columns had (quantity > 0, line total =
-- quantity × unit price) are the pricing code's (domain/pricing.rs), which
-- refuses such a cart before anything is written.
DROP TABLE order_items;
CREATE VIEW order_items AS
SELECT o.order_id, i.line_no, i.sku, i.name, i.quantity, i.unit_price_minor, i.line_total_minor
FROM orders o,
     json_to_recordset(o.items) AS i(line_no integer, sku text, name text, quantity integer,
                                     unit_price_minor bigint, line_total_minor bigint);

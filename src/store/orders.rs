//! Writes to `orders`, `order_items` and `order_status_history`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::pricing::PricedLine;
use crate::domain::OrderStatus;

/// Amounts of a priced order, in minor units.
#[derive(Debug, Clone, Copy)]
pub struct Amounts {
    pub subtotal: i64,
    pub tax: i64,
    pub tax_rate_ppm: u32,
    pub shipping: i64,
    pub total: i64,
}

#[derive(Debug, Clone)]
pub struct NewOrder<'a> {
    pub order_id: &'a str,
    pub cart_id: i64,
    pub user_id: i64,
    pub status: OrderStatus,
    pub currency: String,
    /// `None` for a REJECTED order, which could not be priced.
    pub amounts: Option<Amounts>,
    pub item_count: i64,
    pub payment_method: String,
    pub shipping_address: serde_json::Value,
    pub billing_address: serde_json::Value,
    pub rejection_reason: Option<&'a str>,
    pub checkout_event_id: &'a str,
    pub checkout_occurred_at: DateTime<Utc>,
    pub lines: &'a [PricedLine],
}

/// The `orders.items` document: the lines as the API shows them.
fn items_json(lines: &[PricedLine]) -> String {
    #[derive(serde::Serialize)]
    struct Item<'a> {
        line_no: usize,
        sku: &'a str,
        name: &'a str,
        quantity: i32,
        unit_price_minor: i64,
        line_total_minor: i64,
    }
    let items: Vec<Item<'_>> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| Item {
            line_no: i + 1,
            sku: &l.sku,
            name: &l.name,
            quantity: l.quantity,
            unit_price_minor: l.unit_price.minor(),
            line_total_minor: l.line_total.minor(),
        })
        .collect();
    serde_json::to_string(&items).expect("plain structs serialize")
}

/// Inserts many orders with their lines and first history rows in a fixed
/// number of statements. Rows whose order id or cart id exists already (in
/// the table or earlier in `orders`) are skipped; returns the
/// `checkout_event_id`s of the orders actually created.
pub async fn insert_many(
    conn: &mut PgConnection,
    orders: &[NewOrder<'_>],
) -> sqlx::Result<std::collections::HashSet<String>> {
    if orders.is_empty() {
        return Ok(Default::default());
    }
    let col = |f: &dyn Fn(&NewOrder<'_>) -> Option<i64>| orders.iter().map(f).collect::<Vec<_>>();
    let order_ids: Vec<&str> = orders.iter().map(|o| o.order_id).collect();
    let cart_ids: Vec<i64> = orders.iter().map(|o| o.cart_id).collect();
    let user_ids: Vec<i64> = orders.iter().map(|o| o.user_id).collect();
    let statuses: Vec<&str> = orders.iter().map(|o| o.status.as_str()).collect();
    let currencies: Vec<&str> = orders.iter().map(|o| o.currency.as_str()).collect();
    let subtotals = col(&|o| o.amounts.map(|a| a.subtotal));
    let taxes = col(&|o| o.amounts.map(|a| a.tax));
    let rates = col(&|o| o.amounts.map(|a| i64::from(a.tax_rate_ppm)));
    let shippings = col(&|o| o.amounts.map(|a| a.shipping));
    let totals = col(&|o| o.amounts.map(|a| a.total));
    let item_counts: Vec<i64> = orders.iter().map(|o| o.item_count).collect();
    let methods: Vec<&str> = orders.iter().map(|o| o.payment_method.as_str()).collect();
    let ship: Vec<String> = orders
        .iter()
        .map(|o| o.shipping_address.to_string())
        .collect();
    let bill: Vec<String> = orders
        .iter()
        .map(|o| o.billing_address.to_string())
        .collect();
    let reasons: Vec<Option<&str>> = orders.iter().map(|o| o.rejection_reason).collect();
    let event_ids: Vec<&str> = orders.iter().map(|o| o.checkout_event_id).collect();
    let occurred: Vec<chrono::DateTime<chrono::Utc>> =
        orders.iter().map(|o| o.checkout_occurred_at).collect();
    let items: Vec<String> = orders.iter().map(|o| items_json(o.lines)).collect();
    let created: Vec<String> = sqlx::query_scalar(
        "INSERT INTO orders (order_id, cart_id, user_id, status, currency, subtotal_minor, tax_minor,
             tax_rate_ppm, shipping_minor, total_minor, item_count, payment_method, shipping_address,
             billing_address, rejection_reason, checkout_event_id, checkout_occurred_at, items)
         SELECT o, c, u, s, cur, sub, tax, rate::int, ship, tot, n, pm, sa::jsonb, ba::jsonb, r, e, at, it::json
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                     $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::text[],
                     $14::text[], $15::text[], $16::text[], $17::timestamptz[], $18::text[])
              AS t(o, c, u, s, cur, sub, tax, rate, ship, tot, n, pm, sa, ba, r, e, at, it)
         ON CONFLICT DO NOTHING RETURNING checkout_event_id",
    )
    .bind(&order_ids)
    .bind(&cart_ids)
    .bind(&user_ids)
    .bind(&statuses)
    .bind(&currencies)
    .bind(&subtotals)
    .bind(&taxes)
    .bind(&rates)
    .bind(&shippings)
    .bind(&totals)
    .bind(&item_counts)
    .bind(&methods)
    .bind(&ship)
    .bind(&bill)
    .bind(&reasons)
    .bind(&event_ids)
    .bind(&occurred)
    .bind(&items)
    .fetch_all(&mut *conn)
    .await?;
    let created: std::collections::HashSet<String> = created.into_iter().collect();
    let made: Vec<&NewOrder<'_>> = orders
        .iter()
        .filter(|o| created.contains(o.checkout_event_id))
        .collect();

    let (mut l_order, mut l_no, mut l_sku, mut l_name, mut l_qty, mut l_price, mut l_total) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for o in &made {
        for (i, l) in o.lines.iter().enumerate() {
            l_order.push(o.order_id);
            l_no.push(i as i32 + 1);
            l_sku.push(l.sku.as_str());
            l_name.push(l.name.as_str());
            l_qty.push(l.quantity);
            l_price.push(l.unit_price.minor());
            l_total.push(l.line_total.minor());
        }
    }
    if !l_order.is_empty() {
        sqlx::query(
            "INSERT INTO order_items (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor)
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::bigint[])",
        )
        .bind(&l_order)
        .bind(&l_no)
        .bind(&l_sku)
        .bind(&l_name)
        .bind(&l_qty)
        .bind(&l_price)
        .bind(&l_total)
        .execute(&mut *conn)
        .await?;
    }
    if !made.is_empty() {
        let ids: Vec<&str> = made.iter().map(|o| o.order_id).collect();
        let to: Vec<&str> = made.iter().map(|o| o.status.as_str()).collect();
        let causes: Vec<&str> = made.iter().map(|o| o.checkout_event_id).collect();
        let reasons: Vec<Option<&str>> = made.iter().map(|o| o.rejection_reason).collect();
        sqlx::query(
            "INSERT INTO order_status_history (order_id, to_status, cause_event_id, reason)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])",
        )
        .bind(&ids)
        .bind(&to)
        .bind(&causes)
        .bind(&reasons)
        .execute(&mut *conn)
        .await?;
    }
    Ok(created)
}

/// (order_id, cart_id) of existing orders matching any of the ids or carts.
pub async fn existing(
    conn: &mut PgConnection,
    order_ids: &[&str],
    cart_ids: &[i64],
) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT order_id, cart_id FROM orders WHERE order_id = ANY($1) OR cart_id = ANY($2)",
    )
    .bind(order_ids)
    .bind(cart_ids)
    .fetch_all(conn)
    .await
}

/// One status-history row.
pub struct Transition<'a> {
    pub order_id: &'a str,
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub cause_event_id: &'a str,
    pub reason: Option<String>,
}

/// Appends history rows in slice order.
pub async fn append_history_many(
    conn: &mut PgConnection,
    rows: &[Transition<'_>],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.order_id).collect();
    let from: Vec<&str> = rows.iter().map(|r| r.from.as_str()).collect();
    let to: Vec<&str> = rows.iter().map(|r| r.to.as_str()).collect();
    let causes: Vec<&str> = rows.iter().map(|r| r.cause_event_id).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
    sqlx::query(
        "INSERT INTO order_status_history (order_id, from_status, to_status, cause_event_id, reason)
         SELECT o, f, t, c, r FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
              WITH ORDINALITY AS u(o, f, t, c, r, n) ORDER BY n",
    )
    .bind(&ids)
    .bind(&from)
    .bind(&to)
    .bind(&causes)
    .bind(&reasons)
    .execute(conn)
    .await?;
    Ok(())
}

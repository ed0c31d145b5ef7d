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

/// What `insert` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Created,
    /// An order with this order id or cart id exists already.
    Exists {
        order_id: String,
        cart_id: i64,
    },
}

/// Inserts the order, its lines and its first status-history row, unless an
/// order with the same order id or cart id exists.
pub async fn insert(conn: &mut PgConnection, order: &NewOrder<'_>) -> sqlx::Result<Inserted> {
    let a = order.amounts;
    let created = sqlx::query(
        "INSERT INTO orders (order_id, cart_id, user_id, status, currency, subtotal_minor, tax_minor,
             tax_rate_ppm, shipping_minor, total_minor, item_count, payment_method, shipping_address,
             billing_address, rejection_reason, checkout_event_id, checkout_occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT DO NOTHING",
    )
    .bind(order.order_id)
    .bind(order.cart_id)
    .bind(order.user_id)
    .bind(order.status.as_str())
    .bind(&order.currency)
    .bind(a.map(|a| a.subtotal))
    .bind(a.map(|a| a.tax))
    .bind(a.map(|a| a.tax_rate_ppm as i32))
    .bind(a.map(|a| a.shipping))
    .bind(a.map(|a| a.total))
    .bind(order.item_count)
    .bind(&order.payment_method)
    .bind(&order.shipping_address)
    .bind(&order.billing_address)
    .bind(order.rejection_reason)
    .bind(order.checkout_event_id)
    .bind(order.checkout_occurred_at)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;

    if !created {
        let (order_id, cart_id) = sqlx::query_as::<_, (String, i64)>(
            "SELECT order_id, cart_id FROM orders WHERE order_id = $1 OR cart_id = $2 LIMIT 1",
        )
        .bind(order.order_id)
        .bind(order.cart_id)
        .fetch_one(&mut *conn)
        .await?;
        return Ok(Inserted::Exists { order_id, cart_id });
    }

    if !order.lines.is_empty() {
        let n = order.lines.len();
        let mut line_nos = Vec::with_capacity(n);
        let mut skus = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut quantities = Vec::with_capacity(n);
        let mut prices = Vec::with_capacity(n);
        let mut totals = Vec::with_capacity(n);
        for (i, l) in order.lines.iter().enumerate() {
            line_nos.push(i as i32 + 1);
            skus.push(l.sku.as_str());
            names.push(l.name.as_str());
            quantities.push(l.quantity);
            prices.push(l.unit_price.minor());
            totals.push(l.line_total.minor());
        }
        sqlx::query(
            "INSERT INTO order_items (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor)
             SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::bigint[])",
        )
        .bind(order.order_id)
        .bind(&line_nos)
        .bind(&skus)
        .bind(&names)
        .bind(&quantities)
        .bind(&prices)
        .bind(&totals)
        .execute(&mut *conn)
        .await?;
    }

    append_history(
        conn,
        order.order_id,
        None,
        order.status,
        order.checkout_event_id,
        order.rejection_reason,
    )
    .await?;
    Ok(Inserted::Created)
}

/// Appends one row to an order's status history.
pub async fn append_history(
    conn: &mut PgConnection,
    order_id: &str,
    from: Option<OrderStatus>,
    to: OrderStatus,
    cause_event_id: &str,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO order_status_history (order_id, from_status, to_status, cause_event_id, reason)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(order_id)
    .bind(from.map(OrderStatus::as_str))
    .bind(to.as_str())
    .bind(cause_event_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

//! Writes to `orders` (lines included, as `items`; its creation is its own
//! first status-history row) and `order_status_changes`, and the
//! reads the checkout decisions need. Every write is one set-based statement
//! for a whole batch; callers hold the orders' locks.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::pricing::PricedLine;
use crate::domain::{EventId, OrderId, OrderStatus};

/// Amounts of a priced order, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amounts {
    pub subtotal: i64,
    pub tax: i64,
    pub tax_rate_ppm: u32,
    pub shipping: i64,
    pub total: i64,
}

/// An order to insert, in its state at the end of the batch that creates it
/// (a payment parked before the checkout may already have paid it).
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_id: OrderId,
    pub cart_id: i64,
    pub user_id: i64,
    pub status: OrderStatus,
    pub currency: String,
    /// `None` for a REJECTED order, which could not be priced.
    pub amounts: Option<Amounts>,
    pub item_count: i64,
    pub payment_method: String,
    pub shipping_address: serde_json::Value,
    /// `None` when it is the shipping address (stored NULL, read back as
    /// the shipping address).
    pub billing_address: Option<serde_json::Value>,
    pub rejection_reason: Option<String>,
    pub checkout_event_id: EventId,
    pub checkout_occurred_at: DateTime<Utc>,
    pub lines: Vec<PricedLine>,
    /// The payment that paid it, and how much.
    pub paid_by: Option<(String, i64)>,
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

/// Inserts orders (created `at`, the batch's instant) with their lines (as
/// `items`), one statement for the whole slice. An
/// order id or cart that exists already is an error: the caller read them
/// under the order locks, so only a writer outside those locks can collide.
pub async fn insert_many(
    conn: &mut PgConnection,
    orders: &[NewOrder],
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    if orders.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&NewOrder) -> Option<i64>| orders.iter().map(f).collect::<Vec<_>>();
    let text = |f: &dyn Fn(&NewOrder) -> String| orders.iter().map(f).collect::<Vec<_>>();
    let order_ids: Vec<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    let statuses: Vec<&str> = orders.iter().map(|o| o.status.as_str()).collect();
    let occurred: Vec<DateTime<Utc>> = orders.iter().map(|o| o.checkout_occurred_at).collect();
    sqlx::query(
        "INSERT INTO orders (order_id, cart_id, user_id, status, currency, subtotal_minor, tax_minor,
             tax_rate_ppm, shipping_minor, total_minor, item_count, payment_method, shipping_address,
             billing_address, rejection_reason, checkout_event_id, checkout_occurred_at, items,
             paid_payment_id, paid_amount_minor, created_at, updated_at)
         SELECT o, c, u, s, cur, sub, tax, rate::int, ship, tot, n, pm, sa::jsonb, ba::jsonb, r, e, at,
                it::json, pp, pa, $21, $21
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                     $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::text[],
                     $14::text[], $15::text[], $16::text[], $17::timestamptz[], $18::text[], $19::text[],
                     $20::bigint[])
              AS t(o, c, u, s, cur, sub, tax, rate, ship, tot, n, pm, sa, ba, r, e, at, it, pp, pa)",
    )
    .bind(&order_ids)
    .bind(col(&|o| Some(o.cart_id)))
    .bind(col(&|o| Some(o.user_id)))
    .bind(&statuses)
    .bind(text(&|o| o.currency.clone()))
    .bind(col(&|o| o.amounts.map(|a| a.subtotal)))
    .bind(col(&|o| o.amounts.map(|a| a.tax)))
    .bind(col(&|o| o.amounts.map(|a| i64::from(a.tax_rate_ppm))))
    .bind(col(&|o| o.amounts.map(|a| a.shipping)))
    .bind(col(&|o| o.amounts.map(|a| a.total)))
    .bind(col(&|o| Some(o.item_count)))
    .bind(text(&|o| o.payment_method.clone()))
    .bind(text(&|o| o.shipping_address.to_string()))
    .bind(
        orders
            .iter()
            .map(|o| o.billing_address.as_ref().map(ToString::to_string))
            .collect::<Vec<_>>(),
    )
    .bind(
        orders
            .iter()
            .map(|o| o.rejection_reason.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(text(&|o| o.checkout_event_id.to_string()))
    .bind(&occurred)
    .bind(text(&|o| items_json(&o.lines)))
    .bind(
        orders
            .iter()
            .map(|o| o.paid_by.as_ref().map(|(p, _)| p.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(col(&|o| o.paid_by.as_ref().map(|(_, a)| *a)))
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
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

/// One status change of an existing order (`order_status_changes`; the
/// order's creation is its row in `orders`, and the `order_status_history`
/// view shows both).
#[derive(Debug, Clone)]
pub struct Transition {
    pub order_id: OrderId,
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub cause_event_id: EventId,
    pub reason: Option<String>,
}

/// Appends history rows in slice order (their ids follow it), all `at` the
/// batch's instant.
pub async fn append_history(
    conn: &mut PgConnection,
    rows: &[Transition],
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.order_id.as_str()).collect();
    let from: Vec<&str> = rows.iter().map(|r| r.from.as_str()).collect();
    let to: Vec<&str> = rows.iter().map(|r| r.to.as_str()).collect();
    let causes: Vec<&str> = rows.iter().map(|r| r.cause_event_id.as_str()).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
    sqlx::query(
        "INSERT INTO order_status_changes (order_id, from_status, to_status, cause_event_id, reason, at)
         SELECT o, f, t, c, r, $6 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
              WITH ORDINALITY AS u(o, f, t, c, r, n) ORDER BY n",
    )
    .bind(&ids)
    .bind(&from)
    .bind(&to)
    .bind(&causes)
    .bind(&reasons)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The state of an existing order at the end of a batch that changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub order_id: OrderId,
    pub status: OrderStatus,
    /// Set when the batch paid it; an earlier payer is kept otherwise.
    pub paid_by: Option<(String, i64)>,
}

/// Final status (and paying payment) of each changed order, updated `at`.
pub async fn set_statuses(
    conn: &mut PgConnection,
    updates: &[StatusUpdate],
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = updates.iter().map(|u| u.order_id.as_str()).collect();
    let statuses: Vec<&str> = updates.iter().map(|u| u.status.as_str()).collect();
    let paid_ids: Vec<Option<&str>> = updates
        .iter()
        .map(|u| u.paid_by.as_ref().map(|(p, _)| p.as_str()))
        .collect();
    let paid_amounts: Vec<Option<i64>> = updates
        .iter()
        .map(|u| u.paid_by.as_ref().map(|(_, a)| *a))
        .collect();
    sqlx::query(
        "UPDATE orders o SET status = t.s, updated_at = $5,
             paid_payment_id = COALESCE(t.p, o.paid_payment_id),
             paid_amount_minor = COALESCE(t.a, o.paid_amount_minor)
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS t(id, s, p, a)
         WHERE o.order_id = t.id",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&paid_ids)
    .bind(&paid_amounts)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

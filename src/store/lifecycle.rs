//! Reads and writes of the order lifecycle: order facts, payments, refunds,
//! status changes, parked events. Callers hold the order's lock.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::lifecycle::OrderFacts;
use crate::domain::{Money, OrderStatus};

/// The advisory-lock class of order locks (`pg_advisory_xact_lock(class, hashtext(order_id))`).
pub const ORDER_LOCK_CLASS: i32 = 0x6f72_6466;

/// Locks every order id in `order_ids` for the rest of the transaction, in
/// one canonical order so that two transactions never wait on each other in
/// a cycle. Every writer of an order takes this lock first, which also
/// closes the park-versus-checkout race (see `workers::lifecycle`).
pub async fn lock_orders(conn: &mut PgConnection, order_ids: &[&str]) -> sqlx::Result<()> {
    if order_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock($1, h)
         FROM (SELECT DISTINCT hashtext(id) AS h FROM unnest($2::text[]) AS id ORDER BY 1) AS ordered",
    )
    .bind(ORDER_LOCK_CLASS)
    .bind(order_ids)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct FactsRow {
    status: String,
    total_minor: Option<i64>,
    currency: String,
    paid_payment_id: Option<String>,
    paid_amount_minor: Option<i64>,
}

pub async fn order_facts(
    conn: &mut PgConnection,
    order_id: &str,
) -> sqlx::Result<Option<OrderFacts>> {
    let row: Option<FactsRow> = sqlx::query_as(
        "SELECT status, total_minor, currency, paid_payment_id, paid_amount_minor FROM orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        let status = r
            .status
            .parse()
            .map_err(|e: crate::domain::status::UnknownStatus| sqlx::Error::Decode(e.into()))?;
        Ok(OrderFacts {
            status,
            total: r.total_minor.map(Money::from_minor),
            currency: r.currency,
            paid_by: r
                .paid_payment_id
                .zip(r.paid_amount_minor.map(Money::from_minor)),
        })
    })
    .transpose()
}

pub struct NewPayment<'a> {
    pub payment_id: &'a str,
    pub status: &'a str,
    pub order_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub provider: &'a str,
    pub failure_reason: Option<&'a str>,
    pub disposition: &'a str,
    pub event_id: &'a str,
    pub occurred_at: DateTime<Utc>,
}

/// Records a payment; `false` when this (payment_id, status) was seen before.
pub async fn record_payment(conn: &mut PgConnection, p: &NewPayment<'_>) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO payments (payment_id, status, order_id, amount_minor, currency, provider,
             failure_reason, disposition, event_id, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(p.payment_id)
    .bind(p.status)
    .bind(p.order_id)
    .bind(p.amount_minor)
    .bind(p.currency)
    .bind(p.provider)
    .bind(p.failure_reason)
    .bind(p.disposition)
    .bind(p.event_id)
    .bind(p.occurred_at)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Whether a (payment_id, status) was recorded already.
pub async fn payment_seen(
    conn: &mut PgConnection,
    payment_id: &str,
    status: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payments WHERE payment_id = $1 AND status = $2)",
    )
    .bind(payment_id)
    .bind(status)
    .fetch_one(conn)
    .await
}

/// Records a refund request; `false` when that payment was refunded before.
pub async fn request_refund(
    conn: &mut PgConnection,
    payment_id: &str,
    order_id: &str,
    amount: Money,
    currency: &str,
    reason: &str,
    cause_event_id: &str,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO refunds (payment_id, order_id, amount_minor, currency, reason, cause_event_id)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(payment_id)
    .bind(order_id)
    .bind(amount.minor())
    .bind(currency)
    .bind(reason)
    .bind(cause_event_id)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Moves an order to `to`, remembering the paying payment when it is paid.
pub async fn set_status(
    conn: &mut PgConnection,
    order_id: &str,
    to: OrderStatus,
    paid_by: Option<(&str, Money)>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE orders SET status = $2, updated_at = clock_timestamp(),
             paid_payment_id = COALESCE($3, paid_payment_id),
             paid_amount_minor = COALESCE($4, paid_amount_minor)
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(to.as_str())
    .bind(paid_by.map(|(id, _)| id))
    .bind(paid_by.map(|(_, amount)| amount.minor()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Parks an event for an order that does not exist yet.
pub async fn park(
    conn: &mut PgConnection,
    source: &str,
    event_id: &str,
    order_id: &str,
    payload: &serde_json::Value,
    occurred_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO parked_events (source, event_id, order_id, payload, occurred_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(source)
    .bind(event_id)
    .bind(order_id)
    .bind(payload)
    .bind(occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes and returns an order's parked events, oldest first.
pub async fn take_parked(
    conn: &mut PgConnection,
    order_id: &str,
) -> sqlx::Result<Vec<(String, serde_json::Value)>> {
    sqlx::query_as(
        "WITH taken AS (DELETE FROM parked_events WHERE order_id = $1 RETURNING seq, source, payload)
         SELECT source, payload FROM taken ORDER BY seq",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}

/// Which of `order_ids` have parked events waiting.
pub async fn orders_with_parked(
    conn: &mut PgConnection,
    order_ids: &[&str],
) -> sqlx::Result<Vec<String>> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT DISTINCT order_id FROM parked_events WHERE order_id = ANY($1)")
        .bind(order_ids)
        .fetch_all(conn)
        .await
}

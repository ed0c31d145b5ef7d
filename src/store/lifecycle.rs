//! Reads and writes of the order lifecycle: order facts, payments, refunds,
//! status changes, parked events. Callers hold the order's lock.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::lifecycle::OrderFacts;
use crate::domain::Money;

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

pub struct NewPayment<'a> {
    pub payment_id: &'a str,
    pub status: &'a str,
    pub order_id: &'a str,
    pub amount_minor: i64,
    pub currency: String,
    pub provider: String,
    pub failure_reason: Option<String>,
    pub disposition: &'static str,
    pub event_id: &'a str,
    pub occurred_at: DateTime<Utc>,
}

/// Removes and returns the parked events of `order_ids`, oldest first, as
/// (source, payload).
pub async fn take_parked(
    conn: &mut PgConnection,
    order_ids: &[&str],
) -> sqlx::Result<Vec<(String, serde_json::Value)>> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "WITH taken AS (DELETE FROM parked_events WHERE order_id = ANY($1) RETURNING seq, source, payload)
         SELECT source, payload FROM taken ORDER BY seq",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await
}

/// Facts of every order in `order_ids` that exists.
pub async fn facts_many(
    conn: &mut PgConnection,
    order_ids: &[&str],
) -> sqlx::Result<std::collections::HashMap<String, OrderFacts>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        order_id: String,
        #[sqlx(flatten)]
        facts: FactsRow,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT order_id, status, total_minor, currency, paid_payment_id, paid_amount_minor
         FROM orders WHERE order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let status = r
                .facts
                .status
                .parse()
                .map_err(|e: crate::domain::status::UnknownStatus| sqlx::Error::Decode(e.into()))?;
            let f = r.facts;
            Ok((
                r.order_id,
                OrderFacts {
                    status,
                    total: f.total_minor.map(Money::from_minor),
                    currency: f.currency,
                    paid_by: f
                        .paid_payment_id
                        .zip(f.paid_amount_minor.map(Money::from_minor)),
                },
            ))
        })
        .collect()
}

/// Which of the (payment_id, status) pairs were recorded already. Probes
/// the primary key pair by pair, so the plan stays an index lookup however
/// stale the table's statistics are.
pub async fn payments_seen(
    conn: &mut PgConnection,
    payment_ids: &[&str],
    statuses: &[&str],
) -> sqlx::Result<std::collections::HashSet<(String, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.payment_id, p.status FROM UNNEST($1::text[], $2::text[]) AS t(id, st)
         JOIN payments p ON p.payment_id = t.id AND p.status = t.st",
    )
    .bind(payment_ids)
    .bind(statuses)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// A parked event to store.
pub struct Parking<'a> {
    pub source: &'a str,
    pub event_id: &'a str,
    pub order_id: &'a str,
    pub payload: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

pub async fn park_many(conn: &mut PgConnection, rows: &[Parking<'_>]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let sources: Vec<&str> = rows.iter().map(|r| r.source).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id).collect();
    let orders: Vec<&str> = rows.iter().map(|r| r.order_id).collect();
    let payloads: Vec<String> = rows.iter().map(|r| r.payload.to_string()).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.occurred_at).collect();
    sqlx::query(
        "INSERT INTO parked_events (source, event_id, order_id, payload, occurred_at)
         SELECT s, e, o, p::jsonb, a FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
              WITH ORDINALITY AS t(s, e, o, p, a, n) ORDER BY n
         ON CONFLICT DO NOTHING",
    )
    .bind(&sources)
    .bind(&ids)
    .bind(&orders)
    .bind(&payloads)
    .bind(&at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn record_payments<'a>(
    conn: &mut PgConnection,
    rows: &[NewPayment<'a>],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let v = |f: fn(&NewPayment<'a>) -> &'a str| rows.iter().map(f).collect::<Vec<&str>>();
    let amounts: Vec<i64> = rows.iter().map(|r| r.amount_minor).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.failure_reason.as_deref()).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.occurred_at).collect();
    sqlx::query(
        "INSERT INTO payments (payment_id, status, order_id, amount_minor, currency, provider,
             failure_reason, disposition, event_id, occurred_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                              $7::text[], $8::text[], $9::text[], $10::timestamptz[])
         ON CONFLICT DO NOTHING",
    )
    .bind(v(|r| r.payment_id))
    .bind(v(|r| r.status))
    .bind(v(|r| r.order_id))
    .bind(&amounts)
    .bind(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.provider.as_str()).collect::<Vec<_>>())
    .bind(&reasons)
    .bind(v(|r| r.disposition))
    .bind(v(|r| r.event_id))
    .bind(&at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Final status (and paying payment) of each changed order.
pub async fn set_statuses(
    conn: &mut PgConnection,
    order_ids: &[&str],
    statuses: &[&str],
    paid_ids: &[Option<&str>],
    paid_amounts: &[Option<i64>],
) -> sqlx::Result<()> {
    if order_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE orders o SET status = t.s, updated_at = clock_timestamp(),
             paid_payment_id = COALESCE(t.p, o.paid_payment_id),
             paid_amount_minor = COALESCE(t.a, o.paid_amount_minor)
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS t(id, s, p, a)
         WHERE o.order_id = t.id",
    )
    .bind(order_ids)
    .bind(statuses)
    .bind(paid_ids)
    .bind(paid_amounts)
    .execute(conn)
    .await?;
    Ok(())
}

/// A refund to request.
pub struct Refund<'a> {
    pub payment_id: String,
    pub order_id: &'a str,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub cause_event_id: &'a str,
}

/// Records refund requests; returns the payment ids actually recorded (a
/// payment refunded before, ever, is not refunded again).
pub async fn request_refunds(
    conn: &mut PgConnection,
    rows: &[Refund<'_>],
) -> sqlx::Result<std::collections::HashSet<String>> {
    if rows.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.payment_id.as_str()).collect();
    let orders: Vec<&str> = rows.iter().map(|r| r.order_id).collect();
    let amounts: Vec<i64> = rows.iter().map(|r| r.amount_minor).collect();
    let currencies: Vec<&str> = rows.iter().map(|r| r.currency.as_str()).collect();
    let reasons: Vec<&str> = rows.iter().map(|r| r.reason.as_str()).collect();
    let causes: Vec<&str> = rows.iter().map(|r| r.cause_event_id).collect();
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO refunds (payment_id, order_id, amount_minor, currency, reason, cause_event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])
         ON CONFLICT DO NOTHING RETURNING payment_id",
    )
    .bind(&ids)
    .bind(&orders)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&reasons)
    .bind(&causes)
    .fetch_all(conn)
    .await?;
    Ok(inserted.into_iter().collect())
}

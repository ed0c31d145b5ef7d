//! The order lock, and the payments, refunds and order facts of the
//! lifecycle: what its decisions read, and the rows they write. Callers hold
//! the orders' locks.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::lifecycle::{Disposition, OrderFacts, PaymentStatus};
use crate::domain::{EventId, Money, OrderId};

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

/// Facts of every order in `order_ids` that exists.
pub async fn facts_many(
    conn: &mut PgConnection,
    order_ids: &[&str],
) -> sqlx::Result<HashMap<OrderId, OrderFacts>> {
    if order_ids.is_empty() {
        return Ok(HashMap::new());
    }
    type Row = (
        String,
        String,
        Option<i64>,
        String,
        Option<String>,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT order_id, status, total_minor, currency, paid_payment_id, paid_amount_minor
         FROM orders WHERE order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    let decode = |e: String| sqlx::Error::Decode(e.into());
    rows.into_iter()
        .map(
            |(order_id, status, total, currency, paid_id, paid_amount)| {
                let facts = OrderFacts {
                    status: status.parse().map_err(|e| decode(format!("{e}")))?,
                    total: total.map(Money::from_minor),
                    currency,
                    paid_by: paid_id.zip(paid_amount.map(Money::from_minor)),
                };
                Ok((
                    OrderId::parse(&order_id).map_err(|e| decode(e.to_string()))?,
                    facts,
                ))
            },
        )
        .collect()
}

/// Which of the (payment_id, status) pairs were recorded already. Probes
/// the primary key pair by pair, so the plan stays an index lookup however
/// stale the table's statistics are.
pub async fn payments_seen(
    conn: &mut PgConnection,
    pairs: &[(&str, PaymentStatus)],
) -> sqlx::Result<HashSet<(String, PaymentStatus)>> {
    if pairs.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = pairs.iter().map(|(id, _)| *id).collect();
    let statuses: Vec<&str> = pairs.iter().map(|(_, s)| s.as_str()).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.payment_id, p.status FROM UNNEST($1::text[], $2::text[]) AS t(id, st)
         JOIN payments p ON p.payment_id = t.id AND p.status = t.st",
    )
    .bind(&ids)
    .bind(&statuses)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, status)| {
            Ok((
                id,
                status
                    .parse()
                    .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            ))
        })
        .collect()
}

/// Which of `payment_ids` had a refund requested already, ever.
pub async fn refunded(
    conn: &mut PgConnection,
    payment_ids: &[&str],
) -> sqlx::Result<HashSet<String>> {
    if payment_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT payment_id FROM refunds WHERE payment_id = ANY($1)")
            .bind(payment_ids)
            .fetch_all(conn)
            .await?;
    Ok(ids.into_iter().collect())
}

/// A payment confirmation as recorded, once per (payment_id, status).
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub payment_id: String,
    pub status: PaymentStatus,
    pub order_id: OrderId,
    pub amount_minor: i64,
    pub currency: String,
    pub provider: String,
    pub failure_reason: Option<String>,
    pub disposition: Disposition,
    pub event_id: EventId,
    pub occurred_at: DateTime<Utc>,
}

/// Records payments as of `at` (`recorded_at`: the batch's instant).
pub async fn record_payments(
    conn: &mut PgConnection,
    rows: &[NewPayment],
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&NewPayment) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let amounts: Vec<i64> = rows.iter().map(|r| r.amount_minor).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.failure_reason.as_deref()).collect();
    let occurred: Vec<DateTime<Utc>> = rows.iter().map(|r| r.occurred_at).collect();
    sqlx::query(
        "INSERT INTO payments (payment_id, status, order_id, amount_minor, currency, provider,
             failure_reason, disposition, event_id, occurred_at, recorded_at)
         SELECT *, $11::timestamptz FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[],
                              $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[])",
    )
    .bind(text(|r| &r.payment_id))
    .bind(text(|r| r.status.as_str()))
    .bind(text(|r| r.order_id.as_str()))
    .bind(&amounts)
    .bind(text(|r| &r.currency))
    .bind(text(|r| &r.provider))
    .bind(&reasons)
    .bind(text(|r| r.disposition.as_str()))
    .bind(text(|r| r.event_id.as_str()))
    .bind(&occurred)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A refund to request: at most one per payment, ever (primary key).
#[derive(Debug, Clone)]
pub struct Refund {
    pub payment_id: String,
    pub order_id: OrderId,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub cause_event_id: EventId,
}

/// Records refund requests as of `at` (`requested_at`: the batch's instant).
pub async fn request_refunds(
    conn: &mut PgConnection,
    rows: &[Refund],
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&Refund) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let amounts: Vec<i64> = rows.iter().map(|r| r.amount_minor).collect();
    sqlx::query(
        "INSERT INTO refunds (payment_id, order_id, amount_minor, currency, reason, cause_event_id,
             requested_at)
         SELECT *, $7::timestamptz
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])",
    )
    .bind(text(|r| &r.payment_id))
    .bind(text(|r| r.order_id.as_str()))
    .bind(&amounts)
    .bind(text(|r| &r.currency))
    .bind(text(|r| &r.reason))
    .bind(text(|r| r.cause_event_id.as_str()))
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

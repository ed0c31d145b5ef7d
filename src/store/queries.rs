//! Read queries behind the HTTP API. Each answers in one round trip and builds
//! its JSON document in PostgreSQL, so there is no N+1 and no re-shaping here.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Columns of an order as JSON, shared by the detail and history queries.
const ORDER_FIELDS: &str = "
    'order_id', o.order_id, 'user_id', o.user_id, 'cart_id', o.cart_id, 'status', o.status,
    'currency', o.currency, 'subtotal_minor', o.subtotal_minor, 'tax_minor', o.tax_minor,
    'tax_rate_ppm', o.tax_rate_ppm, 'shipping_minor', o.shipping_minor, 'total_minor', o.total_minor,
    'item_count', o.item_count, 'payment_method', o.payment_method,
    'shipping_address', o.shipping_address, 'billing_address', COALESCE(o.billing_address, o.shipping_address),
    'rejection_reason', o.rejection_reason, 'checkout_event_id', o.checkout_event_id,
    'checkout_occurred_at', o.checkout_occurred_at, 'created_at', o.created_at, 'updated_at', o.updated_at,
    'items', o.items";

/// The whole order with items and status history, as a JSON document.
pub async fn order_detail(pool: &PgPool, order_id: &str) -> sqlx::Result<Option<String>> {
    let sql = format!(
        "SELECT json_build_object({ORDER_FIELDS},
            'history', COALESCE((
                SELECT json_agg(json_build_object('from_status', h.from_status, 'to_status', h.to_status,
                    'cause_event_id', h.cause_event_id, 'reason', h.reason, 'at', h.at) ORDER BY h.id)
                FROM order_status_history h WHERE h.order_id = o.order_id), '[]'::json),
            'paid_payment_id', o.paid_payment_id, 'paid_amount_minor', o.paid_amount_minor,
            'payments', COALESCE((
                SELECT json_agg(json_build_object('payment_id', p.payment_id, 'status', p.status,
                    'amount_minor', p.amount_minor, 'currency', p.currency, 'provider', p.provider,
                    'failure_reason', p.failure_reason, 'disposition', p.disposition,
                    'event_id', p.event_id, 'occurred_at', p.occurred_at, 'recorded_at', p.recorded_at)
                    ORDER BY p.recorded_at)
                FROM payments p WHERE p.order_id = o.order_id), '[]'::json),
            'refunds', COALESCE((
                SELECT json_agg(json_build_object('payment_id', r.payment_id, 'amount_minor', r.amount_minor,
                    'currency', r.currency, 'reason', r.reason, 'cause_event_id', r.cause_event_id,
                    'requested_at', r.requested_at) ORDER BY r.requested_at)
                FROM refunds r WHERE r.order_id = o.order_id), '[]'::json)
         )::text FROM orders o WHERE o.order_id = $1"
    );
    sqlx::query_scalar(&sql)
        .bind(order_id)
        .fetch_optional(pool)
        .await
}

/// Just the status: one primary-key lookup.
pub async fn order_status(pool: &PgPool, order_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT json_build_object('order_id', order_id, 'status', status, 'updated_at', updated_at)::text
         FROM orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

/// Where a page of a user's history starts: strictly before this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    /// Breaks ties between orders created in the same microsecond; `None`
    /// when the client gave a plain timestamp.
    pub order_id: Option<String>,
}

impl Cursor {
    /// `<unix micros>_<order id>` as returned in `next_before`, or an RFC 3339
    /// timestamp.
    pub fn parse(raw: &str) -> Option<Cursor> {
        if let Some((micros, order_id)) = raw.split_once('_') {
            let micros: i64 = micros.parse().ok()?;
            let created_at = DateTime::from_timestamp_micros(micros)?;
            return Some(Cursor {
                created_at,
                order_id: Some(order_id.to_owned()),
            });
        }
        DateTime::parse_from_rfc3339(raw).ok().map(|t| Cursor {
            created_at: t.with_timezone(&Utc),
            order_id: None,
        })
    }

    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.order_id.as_deref().unwrap_or_default()
        )
    }
}

/// One page of a user's orders with their items, newest first.
pub struct HistoryPage {
    pub orders_json: Vec<String>,
    pub next: Option<Cursor>,
}

pub async fn user_orders(
    pool: &PgPool,
    user_id: i64,
    limit: i64,
    before: Option<&Cursor>,
) -> sqlx::Result<HistoryPage> {
    let filter = match before {
        None => "",
        Some(Cursor { order_id: None, .. }) => "AND o.created_at < $3",
        Some(Cursor {
            order_id: Some(_), ..
        }) => "AND (o.created_at, o.order_id) < ($3, $4)",
    };
    let sql = format!(
        "SELECT json_build_object({ORDER_FIELDS})::text, o.created_at, o.order_id
         FROM orders o WHERE o.user_id = $1 {filter}
         ORDER BY o.created_at DESC, o.order_id DESC LIMIT $2"
    );
    let mut query = sqlx::query_as::<_, (String, DateTime<Utc>, String)>(&sql)
        .bind(user_id)
        .bind(limit);
    if let Some(cursor) = before {
        query = query.bind(cursor.created_at);
        if let Some(order_id) = &cursor.order_id {
            query = query.bind(order_id);
        }
    }
    let rows = query.fetch_all(pool).await?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(|(_, at, id)| Cursor {
            created_at: *at,
            order_id: Some(id.clone()),
        })
    } else {
        None
    };
    Ok(HistoryPage {
        orders_json: rows.into_iter().map(|(json, _, _)| json).collect(),
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_accept_timestamps() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            order_id: Some("ord_with_underscores".into()),
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        let t = Cursor::parse("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(t.order_id, None);
        assert_eq!(Cursor::parse("yesterday"), None);
        assert_eq!(Cursor::parse("12x_abc"), None);
    }
}

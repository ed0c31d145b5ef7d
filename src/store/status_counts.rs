//! Orders by status as counts that each batch moves inside its own
//! transaction (`order_status_counts`), so reading them costs a few dozen
//! rows whatever the size of `orders`. A count is exact when every writer of
//! `orders` goes through [`crate::store::changes::Changes::write`], which
//! adds the batch's deltas; the fault suite's oracle compares the counts
//! with the orders table.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool};

use super::inbox::Source;
use super::orders::{NewOrder, Transition};

/// How a batch moves the counts: +1 for each new order in its final status,
/// and for an order that existed before the batch, −1 for where its first
/// change started and +1 for where its last one ended. Sorted by status (the
/// order rows are locked in, so two batches cannot deadlock), zeros left out.
pub fn deltas(orders: &[NewOrder], history: &[Transition]) -> Vec<(&'static str, i64)> {
    let mut by_status: BTreeMap<&'static str, i64> = BTreeMap::new();
    for order in orders {
        *by_status.entry(order.status.as_str()).or_default() += 1;
    }
    // A new order's changes within the batch are already in its final status.
    let new: std::collections::HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    for change in history
        .iter()
        .filter(|t| !new.contains(t.order_id.as_str()))
    {
        *by_status.entry(change.from.as_str()).or_default() -= 1;
        *by_status.entry(change.to.as_str()).or_default() += 1;
    }
    by_status.into_iter().filter(|(_, n)| *n != 0).collect()
}

/// The row a batch of `source` whose first message is from `partition` adds
/// to ("checkout/3"). A partition is in one batch in flight (but for a former
/// owner that has not noticed it lost the partition), so concurrent batches
/// add to different rows and do not wait for each other here.
pub fn slot_for(source: Source, partition: i32) -> String {
    format!("{}/{partition}", source.as_str())
}

/// Adds `deltas` to the counts of `slot`, in the caller's transaction.
pub async fn add(
    conn: &mut PgConnection,
    deltas: &[(&'static str, i64)],
    slot: &str,
) -> sqlx::Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let statuses: Vec<&str> = deltas.iter().map(|(s, _)| *s).collect();
    let ns: Vec<i64> = deltas.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        "INSERT INTO order_status_counts (status, slot, n)
         SELECT s, $3, n FROM UNNEST($1::text[], $2::bigint[]) WITH ORDINALITY AS u(s, n, i)
         ORDER BY i
         ON CONFLICT (status, slot) DO UPDATE SET n = order_status_counts.n + excluded.n",
    )
    .bind(&statuses)
    .bind(&ns)
    .bind(slot)
    .execute(conn)
    .await?;
    Ok(())
}

/// How many orders are in each stored status (statuses with none may be
/// missing or 0).
pub async fn read(pool: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT status, sum(n)::bigint FROM order_status_counts GROUP BY status ORDER BY status",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventId, OrderId, OrderStatus};

    fn transition(order: &str, from: OrderStatus, to: OrderStatus) -> Transition {
        Transition {
            order_id: OrderId::parse(order).unwrap(),
            from,
            to,
            cause_event_id: EventId::parse("e").unwrap(),
            reason: None,
        }
    }

    #[test]
    fn an_existing_order_moves_from_its_first_status_to_its_last() {
        let history = [
            transition("a", OrderStatus::PendingPayment, OrderStatus::Paid),
            transition("a", OrderStatus::Paid, OrderStatus::RefundRequested),
            transition("b", OrderStatus::PendingPayment, OrderStatus::Cancelled),
        ];
        assert_eq!(
            deltas(&[], &history),
            vec![
                ("CANCELLED", 1),
                ("PENDING_PAYMENT", -2),
                ("REFUND_REQUESTED", 1)
            ]
        );
    }
}

//! Everything one batch writes, as one value, and the one function that
//! writes it: a fixed number of set-based statements whatever the batch's
//! size, in an order that satisfies the foreign keys. The batch applier
//! (`workers::batch`) fills it and calls [`Changes::write`] inside the
//! batch's transaction. It is the only writer of `orders`, so it also moves
//! the orders-by-status counts (`status_counts`).

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::feed;
use super::inbox::{self, InboxRow};
use super::lifecycle::{self, NewPayment, Refund};
use super::orders::{self, NewOrder, StatusUpdate, Transition};
use super::outbox::{self, NewRecord};
use super::parked::{self, Parking};
use super::status_counts;

#[derive(Debug)]
pub struct Changes {
    /// The batch's instant: new orders' `created_at`, history rows' `at`,
    /// payments' `recorded_at` and refunds' `requested_at` (the
    /// `occurred_at` of the events announcing them).
    pub at: DateTime<Utc>,
    /// New orders, each in its state at the end of the batch.
    pub orders: Vec<NewOrder>,
    /// Status-history rows in the order they happened (creations included).
    pub history: Vec<Transition>,
    /// Existing orders whose status changed, each once, in its final state.
    pub statuses: Vec<StatusUpdate>,
    pub payments: Vec<NewPayment>,
    pub refunds: Vec<Refund>,
    pub parked: Vec<Parking>,
    /// `seq`s of parked events applied by this batch.
    pub unparked: Vec<i64>,
    /// Inbox rows of the batch's new events, with their outcomes.
    pub inbox: Vec<InboxRow>,
    /// Outcomes of events recorded earlier (parked ones now applied).
    pub outcomes: Vec<InboxRow>,
    /// Order events and dead letters, in publication order.
    pub outbox: Vec<NewRecord>,
    /// Where the batch adds its orders-by-status deltas
    /// ([`status_counts::slot_for`] of its first message's partition).
    pub count_slot: String,
}

impl Changes {
    /// Nothing to write yet, stamped `at`.
    pub fn at(at: DateTime<Utc>) -> Self {
        Changes {
            at,
            orders: Vec::new(),
            history: Vec::new(),
            statuses: Vec::new(),
            payments: Vec::new(),
            refunds: Vec::new(),
            parked: Vec::new(),
            unparked: Vec::new(),
            inbox: Vec::new(),
            outcomes: Vec::new(),
            outbox: Vec::new(),
            count_slot: String::new(),
        }
    }

    /// Writes everything in the caller's transaction.
    pub async fn write(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        orders::insert_many(conn, &self.orders, self.at)
            .await
            .context("failed to insert orders")?;
        orders::append_history(conn, &self.history, self.at)
            .await
            .context("failed to append status history")?;
        lifecycle::record_payments(conn, &self.payments, self.at)
            .await
            .context("failed to record payments")?;
        lifecycle::request_refunds(conn, &self.refunds, self.at)
            .await
            .context("failed to record refunds")?;
        orders::set_statuses(conn, &self.statuses, self.at)
            .await
            .context("failed to update orders")?;
        parked::park_many(conn, &self.parked)
            .await
            .context("failed to park events")?;
        parked::remove(conn, &self.unparked)
            .await
            .context("failed to remove applied parked events")?;
        inbox::record(conn, &self.inbox)
            .await
            .context("failed to record events in the inbox")?;
        inbox::update_outcomes(conn, &self.outcomes)
            .await
            .context("failed to record outcomes of parked events")?;
        // Dead letters (and anything the feed does not carry) hold their
        // payload; order events are written once, in the feed.
        outbox::enqueue_many(conn, self.outbox.iter().filter(|r| !feed::carries(r)))
            .await
            .context("failed to enqueue outbox records")?;
        // It locks the users' feed heads until the commit.
        feed::append(conn, &self.outbox)
            .await
            .context("failed to append order events to the feed and the outbox")?;
        // Last: the partition's count rows stay locked until the commit.
        let deltas = status_counts::deltas(&self.orders, &self.history);
        status_counts::add(conn, &deltas, &self.count_slot)
            .await
            .context("failed to move the orders-by-status counts")?;
        Ok(())
    }
}

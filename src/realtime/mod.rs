//! Live order changes for the streams of the HTTP API.
//!
//! The order feed in PostgreSQL (`store::feed`) is the record; this module
//! moves it to subscribers:
//!
//! - writers (the consumer loops) `NOTIFY orderflow_feed` after each commit
//!   ([`notifier`]): a wake-up only, outside the batch transaction, coalesced;
//! - every instance serving HTTP runs one [`tailer`]: it `LISTEN`s, reads
//!   what committed since its last read (also every second without a
//!   notification, so a lost one delays but never loses a change) and hands
//!   each row to the [`Hub`];
//! - the hub fans rows out to the subscribers of their order and user, each
//!   through a bounded buffer; a subscriber whose buffer is full is cut off
//!   (it resumes from its cursor and loses nothing).
//!
//! Nothing here decides what a client sees first or resumes from: the stream
//! handlers (`http::streams`) read snapshots and replays from the database
//! and drop live rows at or below their cursor. See docs/realtime.md.

mod hub;
mod tailer;

pub use hub::{Hub, Slot, Subscription};
pub use tailer::tailer;

use std::sync::Arc;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::feed;

/// Sends `NOTIFY orderflow_feed` each time `wakeup` fires (after a batch
/// commits), at most one in flight: commits during a send make one more.
/// On a connection of its own, so it never waits behind batches for the
/// pool. Failures are logged and dropped; the tailers' periodic read covers
/// them.
pub async fn notifier(
    pool: PgPool,
    wakeup: Arc<Notify>,
    instance_id: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut conn: Option<PgConnection> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = wakeup.notified() => {}
        }
        if conn.is_none() {
            conn = PgConnection::connect_with(&pool.connect_options())
                .await
                .inspect_err(
                    |e| tracing::debug!(error = %e, "order feed: cannot connect to notify"),
                )
                .ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = feed::notify(&mut *c, &instance_id).await {
            tracing::debug!(error = %e, "could not notify the order feed's listeners");
            conn = None;
        }
    }
}

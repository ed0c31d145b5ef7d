//! The one batch protocol. Every batch of every input, whichever loop or
//! test applies it, goes through [`Applier::apply`] inside one transaction:
//!
//! 1. lock the batch's orders (one canonical order, so loops never deadlock);
//! 2. claim: the inbox says which event ids are new (a repeat, in the batch
//!    or ever, is a duplicate);
//! 3. the handler loads its facts for the new events and decides each, in
//!    order, into a [`Plan`];
//! 4. events parked for the orders the batch created are applied through the
//!    same rules (`lifecycle::drain_parked`);
//! 5. one write: the plan's rows, the inbox rows with their outcomes, the
//!    outbox rows (order events, then dead letters).
//!
//! The caller commits, and only then stores the offset: a crash before the
//! commit redelivers the batch and step 2 makes the redelivery a no-op.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{lifecycle, Handler, Input, Plan, Tally, Verdict};
use crate::events::{Codec, DeadLetter, DeadLetterClass, DecodeError};
use crate::store::changes::Changes;
use crate::store::inbox::{self, InboxRow, Outcome};
use crate::store::lifecycle::lock_orders;
use crate::store::outbox::{self, NewRecord};
use crate::store::status_counts;

/// A consumed message, detached from librdkafka's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// A message as the handler sees it: its event, or why it has none.
pub type Decoded<E> = Result<E, DecodeError>;

/// What a committed batch did, for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Per message, in batch order: how it ended, and when its event
    /// happened upstream (none for an undecodable message).
    pub outcomes: Vec<(Outcome, Option<DateTime<Utc>>)>,
    pub tally: Tally,
}

/// Applies batches of one input topic with its handler.
pub struct Applier<H> {
    handler: H,
    codec: Codec,
    /// The input topic, named in dead letters.
    topic: String,
    dlq_topic: String,
    order_events_topic: String,
    /// Stamps each batch (its events' `occurred_at`, its rows' times).
    clock: crate::clock::Clock,
}

impl<H: Handler> Applier<H> {
    pub fn new(handler: H, codec: Codec, topic: &str, order_events_topic: &str) -> Self {
        Applier {
            handler,
            codec,
            topic: topic.to_owned(),
            dlq_topic: crate::config::Topics::dlq(topic),
            order_events_topic: order_events_topic.to_owned(),
            clock: crate::clock::Clock::default(),
        }
    }

    /// Stamps batches with `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The input topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Decodes a batch, outside any transaction (Avro may ask the registry).
    /// Per message, the event or a permanent error; `Err` only when the
    /// registry could not be asked (transient: retry the whole batch).
    pub async fn decode(
        &self,
        batch: &[RawMessage],
    ) -> Result<Vec<Decoded<H::Event>>, DecodeError> {
        decode_each(batch, |msg| self.decode_one(msg)).await
    }

    async fn decode_one(&self, msg: &RawMessage) -> Decoded<H::Event> {
        let normalized = self
            .codec
            .normalize(self.handler.reader_schema(), msg.payload.as_deref())
            .await?;
        let event = self.handler.decode(&self.codec, &normalized)?;
        check_key(msg, event.order_id().as_str())?;
        Ok(event)
    }

    /// Decodes and applies `batch` in the caller's transaction.
    pub async fn apply_messages(
        &self,
        conn: &mut PgConnection,
        batch: &[RawMessage],
    ) -> anyhow::Result<BatchReport> {
        let decoded = self.decode(batch).await?;
        self.apply(conn, batch, &decoded).await
    }

    /// Applies a decoded batch in the caller's transaction (steps 1 to 5 of
    /// the module documentation). `Err` aborts the whole batch.
    pub async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &[RawMessage],
        decoded: &[Decoded<H::Event>],
    ) -> anyhow::Result<BatchReport> {
        let events: Vec<(usize, &H::Event)> = decoded
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i, d.as_ref().ok()?)))
            .collect();
        let order_ids: Vec<&str> = events.iter().map(|(_, e)| e.order_id().as_str()).collect();
        lock_orders(conn, &order_ids)
            .await
            .context("failed to lock orders")?;
        let fresh = self.claim(conn, &events).await?;
        let mut plan = Plan::new(self.clock.now());
        let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.len()];
        if !fresh.is_empty() {
            let fresh_events: Vec<&H::Event> = fresh.iter().map(|&(_, e)| e).collect();
            let mut facts = self.handler.load(conn, &fresh_events).await?;
            for &(i, event) in &fresh {
                verdicts[i] = Some(self.handler.decide(&mut facts, event, &mut plan));
            }
        }
        let drained = lifecycle::drain_parked(conn, &mut plan).await?;
        let (mut changes, order_events, tally) = plan.finish();
        changes.outcomes = drained;
        if let Some(first) = batch.first() {
            changes.count_slot = status_counts::slot_for(self.handler.source(), first.partition);
        }
        self.fill_inbox_and_outbox(&mut changes, batch, decoded, &verdicts, &order_events);
        changes.write(conn).await?;
        Ok(BatchReport {
            outcomes: decoded
                .iter()
                .zip(&verdicts)
                .map(|(d, v)| match (d, v) {
                    (Err(_), _) => (Outcome::DeadLettered, None),
                    (Ok(e), v) => (
                        v.as_ref().map_or(Outcome::Duplicate, Verdict::outcome),
                        Some(e.occurred_at()),
                    ),
                })
                .collect(),
            tally,
        })
    }

    /// The events never seen before, in batch order: not in the inbox, and
    /// not earlier in the batch.
    async fn claim<'e>(
        &self,
        conn: &mut PgConnection,
        events: &[(usize, &'e H::Event)],
    ) -> anyhow::Result<Vec<(usize, &'e H::Event)>> {
        let ids: Vec<&str> = events.iter().map(|(_, e)| e.event_id().as_str()).collect();
        let seen = inbox::seen(conn, self.handler.source(), &ids)
            .await
            .context("failed to read the inbox")?;
        let mut in_batch = HashSet::new();
        Ok(events
            .iter()
            .filter(|(_, e)| {
                let id = e.event_id().as_str();
                !seen.contains(id) && in_batch.insert(id)
            })
            .copied()
            .collect())
    }

    /// The rows only the applier writes: an inbox row per new event, the
    /// order events, and a dead letter per message that cannot be used.
    fn fill_inbox_and_outbox(
        &self,
        changes: &mut Changes,
        batch: &[RawMessage],
        decoded: &[Decoded<H::Event>],
        verdicts: &[Option<Verdict>],
        order_events: &[crate::events::OrderEvent],
    ) {
        let source = self.handler.source();
        for (d, verdict) in decoded.iter().zip(verdicts) {
            if let (Ok(event), Some(verdict)) = (d, verdict) {
                changes.inbox.push(InboxRow {
                    source,
                    event_id: event.event_id().clone(),
                    order_id: event.order_id().clone(),
                    outcome: verdict.outcome(),
                });
            }
        }
        changes.outbox.extend(
            order_events
                .iter()
                .map(|e| NewRecord::order_event(&self.order_events_topic, e)),
        );
        for ((msg, d), verdict) in batch.iter().zip(decoded).zip(verdicts) {
            let letter = match (d, verdict) {
                (Err(e), _) => Some((DeadLetterClass::Decode, e.to_string())),
                (Ok(_), Some(Verdict::DeadLetter(reason))) => {
                    Some((DeadLetterClass::Invalid, reason.clone()))
                }
                _ => None,
            };
            if let Some((class, reason)) = letter {
                changes
                    .outbox
                    .push(self.dead_letter_record(msg, class, &reason));
            }
        }
    }

    fn dead_letter_record(
        &self,
        msg: &RawMessage,
        class: DeadLetterClass,
        reason: &str,
    ) -> NewRecord {
        dead_letter_of(&self.topic, &self.dlq_topic, msg, class, reason)
    }

    /// Dead-letters one message in the caller's transaction: it failed alone
    /// for a reason the database gives every time.
    pub async fn dead_letter(
        &self,
        conn: &mut PgConnection,
        msg: &RawMessage,
        reason: &str,
    ) -> anyhow::Result<()> {
        dead_letter_alone(conn, &self.topic, &self.dlq_topic, msg, reason).await
    }
}

/// Decodes each message of a batch with `decode_one`: per message its event
/// or a permanent error; `Err` at the first transient error (the whole batch
/// is retried).
pub async fn decode_each<'a, T, F, Fut>(
    batch: &'a [RawMessage],
    decode_one: F,
) -> Result<Vec<Result<T, DecodeError>>, DecodeError>
where
    F: Fn(&'a RawMessage) -> Fut,
    Fut: std::future::Future<Output = Result<T, DecodeError>>,
{
    let mut decoded = Vec::with_capacity(batch.len());
    for msg in batch {
        match decode_one(msg).await {
            Err(e) if e.is_transient() => return Err(e),
            other => decoded.push(other),
        }
    }
    Ok(decoded)
}

/// The key decides the partition and so the per-order ordering guarantee:
/// a message keyed by something other than its order id breaks it.
pub fn check_key(msg: &RawMessage, order_id: &str) -> Result<(), DecodeError> {
    match &msg.key {
        Some(key) if key.as_slice() != order_id.as_bytes() => Err(DecodeError::Invalid(format!(
            "message key {:?} does not match order_id {order_id:?}",
            String::from_utf8_lossy(&key[..key.len().min(140)])
        ))),
        _ => Ok(()),
    }
}

/// The dead letter of `msg`, read from `topic`, for `dlq_topic`; logged
/// as a warning with its reason (rate-limited: [`DeadLetterLog`]).
pub fn dead_letter_of(
    topic: &str,
    dlq_topic: &str,
    msg: &RawMessage,
    class: DeadLetterClass,
    reason: &str,
) -> NewRecord {
    if let Some(suppressed) = DEAD_LETTER_LOG.admit(Instant::now()) {
        tracing::warn!(
            topic,
            partition = msg.partition,
            offset = msg.offset,
            class = class.as_str(),
            dlq = dlq_topic,
            not_logged_before = suppressed,
            %reason,
            "dead-lettering a message"
        );
    }
    NewRecord::dead_letter(
        dlq_topic,
        &DeadLetter {
            class,
            reason,
            source_topic: topic,
            source_partition: msg.partition,
            source_offset: msg.offset,
            key: msg.key.as_deref(),
            payload: msg.payload.as_deref(),
        },
    )
}

static DEAD_LETTER_LOG: DeadLetterLog = DeadLetterLog::new();

/// At most [`DeadLetterLog::BURST`] dead-letter warnings per
/// [`DeadLetterLog::WINDOW`], so a flood of bad input cannot flood the log;
/// the first line after a quiet spell says how many were not logged
/// (`orderflow dlq list` shows them all).
pub struct DeadLetterLog(Mutex<LogWindow>);

struct LogWindow {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl DeadLetterLog {
    const BURST: u32 = 20;
    const WINDOW: Duration = Duration::from_secs(10);

    pub const fn new() -> Self {
        DeadLetterLog(Mutex::new(LogWindow {
            started: None,
            logged: 0,
            suppressed: 0,
        }))
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if w.started
            .is_none_or(|at| now.duration_since(at) >= Self::WINDOW)
        {
            w.started = Some(now);
            w.logged = 0;
        }
        if w.logged < Self::BURST {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

impl Default for DeadLetterLog {
    fn default() -> Self {
        Self::new()
    }
}

/// Dead-letters `msg`, read from `topic`, onto `dlq_topic` in the caller's
/// transaction: it failed alone for a reason the database gives every time.
pub async fn dead_letter_alone(
    conn: &mut PgConnection,
    topic: &str,
    dlq_topic: &str,
    msg: &RawMessage,
    reason: &str,
) -> anyhow::Result<()> {
    let record = dead_letter_of(topic, dlq_topic, msg, DeadLetterClass::Database, reason);
    outbox::enqueue_many(conn, &[record])
        .await
        .context("failed to enqueue dead letter")
}

/// Whether retrying the same batch can succeed: any error in the chain is a
/// transient database error or a schema registry that could not be reached.
/// Anything else fails the same way every time.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<sqlx::Error>()
            .is_some_and(crate::store::is_transient)
            || e.downcast_ref::<DecodeError>()
                .is_some_and(DecodeError::is_transient)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_warnings_are_rate_limited_and_count_what_was_not_logged() {
        let log = DeadLetterLog::new();
        let t0 = Instant::now();
        let admitted = (0..25).filter(|_| log.admit(t0).is_some()).count();
        assert_eq!(admitted, DeadLetterLog::BURST as usize);
        assert_eq!(log.admit(t0 + Duration::from_secs(1)), None);
        // A new window: the first line says six were not logged.
        assert_eq!(log.admit(t0 + DeadLetterLog::WINDOW), Some(6));
        assert_eq!(log.admit(t0 + DeadLetterLog::WINDOW), Some(0));
    }
}

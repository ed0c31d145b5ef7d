//! What a consumer loop drives ([`Apply`]): an input topic's [`Applier`],
//! or the analytics rollups. The loop (`workers::consumer`) owns Kafka, the
//! transaction and the offsets; an `Apply` decodes, applies inside the
//! transaction it is given, and dead-letters.

use std::sync::Arc;
use std::time::Duration;

use super::batch::{Applier, BatchReport, RawMessage};
use super::Handler;
use crate::config::Settings;
use crate::events::DecodeError;

/// What the loop drives: decoding a batch outside any transaction, applying
/// it inside one (the loop commits, then stores the offset), and
/// dead-lettering a message that fails alone.
pub trait Apply: Send + Sync + 'static {
    /// A decoded batch.
    type Decoded: Send + Sync;

    /// Whether its batches announce order events (and so append to the
    /// order feed, whose notifier is then woken after each commit).
    const ANNOUNCES: bool = true;

    /// Whether the topic's offsets have no gaps (written by orderflow's
    /// idempotent, non-transactional relay, never compacted): the loop then
    /// checks each message's offset and reads a gap again (`positions`).
    /// Not for input topics, where a transactional upstream producer's
    /// commit markers leave gaps legitimately.
    const GAP_FREE: bool = false;

    /// Whether one batch may hold several partitions' messages (each
    /// partition's in offset order). An applier that keeps per-partition
    /// rows (the analytics claims) says no.
    const MIXES_PARTITIONS: bool = true;

    /// The topic the loop reads.
    fn topic(&self) -> &str;

    /// The consumer group the loop joins.
    fn group(&self, settings: &Settings) -> String {
        settings.group_for(self.topic())
    }

    /// At most how many messages of a partition make a batch, and how long
    /// they linger for one.
    fn batching(&self, settings: &Settings) -> (usize, Duration) {
        (settings.batch_max_messages, settings.batch_max_wait)
    }

    /// Where the loop keeps its topic's partition count (0 until known),
    /// for an applier that needs it.
    fn partition_count(&self) -> Option<Arc<std::sync::atomic::AtomicI32>> {
        None
    }

    /// The loop's consumer (`KAFKA_CONSUMER_CONFIG` applied last).
    fn consumer_config(&self, settings: &Settings, group: &str) -> rdkafka::ClientConfig {
        crate::kafka::consumer_config(settings, group, &[])
    }

    /// Per message, its event or a permanent error; `Err` only when a
    /// transient failure (the schema registry) should retry the batch.
    fn decode<'a>(
        &'a self,
        batch: &'a [RawMessage],
    ) -> impl std::future::Future<Output = Result<Self::Decoded, DecodeError>> + Send + 'a;

    /// Applies the batch in the caller's transaction. `Err` aborts it.
    fn apply<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        batch: &'a [RawMessage],
        decoded: &'a Self::Decoded,
    ) -> impl std::future::Future<Output = anyhow::Result<BatchReport>> + Send + 'a;

    /// Dead-letters one message in the caller's transaction: it failed alone
    /// for a reason the database gives every time.
    fn dead_letter<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        msg: &'a RawMessage,
        reason: &'a str,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'a;
}

impl<H: Handler> Apply for Applier<H> {
    type Decoded = Vec<super::batch::Decoded<H::Event>>;

    fn topic(&self) -> &str {
        Applier::topic(self)
    }

    fn decode<'a>(
        &'a self,
        batch: &'a [RawMessage],
    ) -> impl std::future::Future<Output = Result<Self::Decoded, DecodeError>> + Send + 'a {
        Applier::decode(self, batch)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        batch: &'a [RawMessage],
        decoded: &'a Self::Decoded,
    ) -> impl std::future::Future<Output = anyhow::Result<BatchReport>> + Send + 'a {
        Applier::apply(self, conn, batch, decoded)
    }

    fn dead_letter<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        msg: &'a RawMessage,
        reason: &'a str,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'a {
        Applier::dead_letter(self, conn, msg, reason)
    }
}

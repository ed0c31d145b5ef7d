//! Messages waiting for their partition's next batch, and which partitions
//! have a batch in flight. Pure bookkeeping, no Kafka, no database, no clock:
//! every call that needs the time is given it, so tests choose it.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use super::RawMessage;

pub(super) struct Buffers {
    max_messages: usize,
    /// Due partitions whose messages fit together within this many share
    /// one batch (`None`: a batch holds one partition).
    pack_to: Option<usize>,
    linger: Duration,
    waiting: BTreeMap<i32, Waiting>,
    in_flight: HashSet<i32>,
    /// Partitions whose batch was abandoned at shutdown: nothing after it
    /// may be applied, or its offset would be stored past the gap.
    abandoned: HashSet<i32>,
    /// Messages in `waiting`.
    pub(super) buffered: usize,
}

struct Waiting {
    messages: Vec<RawMessage>,
    /// When the oldest waiting message arrived.
    since: Instant,
}

/// A batch taken from the buffers: one or more partitions' messages, each
/// partition's together and in offset order, and when its oldest message
/// arrived (how long it waited for its partition or a slot is a metric).
pub(super) struct Batch {
    pub(super) messages: Vec<RawMessage>,
    pub(super) since: Instant,
}

impl Batch {
    /// Each partition in the batch with its last offset, in batch order.
    pub(super) fn ends(&self) -> Vec<(i32, i64)> {
        self.messages
            .chunk_by(|a, b| a.partition == b.partition)
            .map(|run| (run[0].partition, run[run.len() - 1].offset))
            .collect()
    }
}

impl Buffers {
    /// Batches of at most `max_messages`; with `pack_to`, partitions with
    /// few messages waiting share a batch up to that many.
    pub(super) fn new(max_messages: usize, pack_to: Option<usize>, linger: Duration) -> Self {
        Buffers {
            max_messages,
            pack_to: pack_to.map(|n| n.clamp(1, max_messages)),
            linger,
            waiting: BTreeMap::new(),
            in_flight: HashSet::new(),
            abandoned: HashSet::new(),
            buffered: 0,
        }
    }

    /// Adds a message that arrived at `now`.
    pub(super) fn push(&mut self, raw: RawMessage, now: Instant) {
        if self.abandoned.contains(&raw.partition) {
            return;
        }
        self.buffered += 1;
        self.waiting
            .entry(raw.partition)
            .or_insert_with(|| Waiting {
                messages: Vec::new(),
                since: now,
            })
            .messages
            .push(raw);
    }

    /// Takes the next batch of every free partition that is due: full, or
    /// lingered long enough (or `force`, at shutdown), longest waiting
    /// first. A partition's next batch is at most `max_messages`; with
    /// `pack_to`, it joins the batch before it when both fit within that, so
    /// a trickle over many partitions makes one transaction, not one each.
    /// At most `room` batches.
    pub(super) fn take_due(&mut self, now: Instant, force: bool, room: usize) -> Vec<Batch> {
        let mut due: Vec<(Instant, i32)> = self
            .waiting
            .iter()
            .filter(|(p, w)| {
                !self.in_flight.contains(p)
                    && (force
                        || w.messages.len() >= self.max_messages
                        || w.since + self.linger <= now)
            })
            .map(|(p, w)| (w.since, *p))
            .collect();
        // Longest waiting first, so low partition numbers cannot take every
        // slot under a steady backlog.
        due.sort_unstable();
        let mut batches: Vec<Batch> = Vec::new();
        for (since, partition) in due {
            let size = self.waiting[&partition]
                .messages
                .len()
                .min(self.max_messages);
            let joins = match (batches.last(), self.pack_to) {
                (Some(last), Some(pack)) => last.messages.len() + size <= pack,
                _ => false,
            };
            if !joins && batches.len() == room {
                continue;
            }
            let messages = self.take_partition(partition, now);
            match batches.last_mut() {
                Some(last) if joins => last.messages.extend(messages),
                _ => batches.push(Batch { messages, since }),
            }
        }
        batches
    }

    /// Takes a partition's next batch (at most `max_messages`) and marks the
    /// partition in flight.
    fn take_partition(&mut self, partition: i32, now: Instant) -> Vec<RawMessage> {
        let waiting = self.waiting.get_mut(&partition).expect("a due partition");
        let messages = if waiting.messages.len() > self.max_messages {
            let rest = waiting.messages.split_off(self.max_messages);
            waiting.since = now;
            std::mem::replace(&mut waiting.messages, rest)
        } else {
            self.waiting
                .remove(&partition)
                .expect("a due partition")
                .messages
        };
        self.buffered -= messages.len();
        self.in_flight.insert(partition);
        messages
    }

    /// When the earliest lingering batch of a free partition falls due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .filter(|(p, _)| !self.in_flight.contains(p))
            .map(|(_, w)| w.since + self.linger)
            .min()
    }

    /// A partition's batch left flight, committed or abandoned.
    pub(super) fn finished(&mut self, partition: i32, committed: bool) {
        self.in_flight.remove(&partition);
        if !committed {
            self.abandoned.insert(partition);
            self.drop_partition(partition);
        }
    }

    /// Forgets a revoked partition's waiting messages; returns how many.
    pub(super) fn drop_partition(&mut self, partition: i32) -> usize {
        let dropped = self
            .waiting
            .remove(&partition)
            .map_or(0, |w| w.messages.len());
        self.buffered -= dropped;
        dropped
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: i32, offset: i64) -> RawMessage {
        RawMessage {
            partition,
            offset,
            key: None,
            payload: None,
        }
    }

    fn offsets(batch: &Batch) -> Vec<i64> {
        batch.messages.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn one_batch_per_partition_in_flight_split_at_the_maximum() {
        let now = Instant::now();
        let mut b = Buffers::new(3, None, Duration::ZERO);
        for offset in 0..5 {
            b.push(msg(0, offset), now);
        }
        b.push(msg(1, 0), now);
        let batches = b.take_due(now, false, 8);
        assert_eq!(batches.len(), 2);
        assert_eq!(offsets(&batches[0]), [0, 1, 2]);
        assert_eq!(offsets(&batches[1]), [0]);
        assert_eq!(b.buffered, 2);
        // Partition 0's rest waits for its batch in flight, whatever the room.
        assert!(b.take_due(now, true, 8).is_empty());
        b.finished(0, true);
        let next = b.take_due(now, false, 8);
        assert_eq!(next.len(), 1);
        assert_eq!(offsets(&next[0]), [3, 4]);
        assert_eq!(b.buffered, 0);
    }

    #[test]
    fn the_longest_waiting_partition_goes_first() {
        let start = Instant::now();
        let mut b = Buffers::new(10, None, Duration::ZERO);
        b.push(msg(5, 0), start);
        b.push(msg(0, 0), start + Duration::from_millis(2));
        let first = b.take_due(start + Duration::from_millis(3), false, 1);
        assert_eq!(first[0].messages[0].partition, 5);
        assert_eq!(first[0].since, start);
    }

    #[test]
    fn room_limits_the_batches_started() {
        let now = Instant::now();
        let mut b = Buffers::new(10, None, Duration::ZERO);
        for partition in 0..4 {
            b.push(msg(partition, 0), now);
        }
        assert_eq!(b.take_due(now, false, 2).len(), 2);
        assert_eq!(b.take_due(now, false, 0).len(), 0);
        assert_eq!(b.take_due(now, false, 5).len(), 2);
    }

    #[test]
    fn a_partial_batch_lingers_until_due_unless_forced() {
        let linger = Duration::from_millis(50);
        let now = Instant::now();
        let mut b = Buffers::new(10, None, linger);
        b.push(msg(0, 0), now);
        assert!(b.take_due(now, false, 4).is_empty());
        assert_eq!(b.next_due(), Some(now + linger));
        assert!(b.take_due(now + linger / 2, false, 4).is_empty());
        assert_eq!(b.take_due(now, true, 4).len(), 1, "forced at shutdown");

        b.finished(0, true);
        b.push(msg(0, 1), now + linger);
        assert_eq!(b.take_due(now + linger * 2, false, 4).len(), 1);
    }

    #[test]
    fn nothing_after_an_abandoned_batch_is_applied() {
        let now = Instant::now();
        let mut b = Buffers::new(2, None, Duration::ZERO);
        b.push(msg(0, 0), now);
        b.push(msg(0, 1), now);
        assert_eq!(b.take_due(now, false, 4).len(), 1);
        b.push(msg(0, 2), now);
        b.finished(0, false);
        b.push(msg(0, 3), now);
        assert!(b.is_empty());
        assert_eq!(b.buffered, 0);
        assert!(b.take_due(now, true, 4).is_empty());
    }

    #[test]
    fn revoked_partitions_lose_their_buffer_only() {
        let now = Instant::now();
        let mut b = Buffers::new(5, None, Duration::from_secs(1));
        b.push(msg(0, 0), now);
        b.push(msg(1, 0), now);
        b.push(msg(1, 1), now);
        assert_eq!(b.drop_partition(1), 2);
        assert_eq!(b.buffered, 1);
        assert_eq!(b.drop_partition(7), 0);
    }

    #[test]
    fn partitions_with_few_messages_share_a_batch_up_to_the_packing_size() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut b = Buffers::new(10, Some(4), Duration::ZERO);
        b.push(msg(2, 7), at(0));
        b.push(msg(2, 8), at(0));
        b.push(msg(0, 3), at(1));
        for offset in 0..3 {
            b.push(msg(1, offset), at(2));
        }
        b.push(msg(3, 5), at(3));
        let batches = b.take_due(at(4), false, 4);
        // 2 and 0 fit in four; 1 does not join them, and 3 joins 1.
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].ends(), [(2, 8), (0, 3)]);
        assert_eq!(batches[0].since, at(0));
        assert_eq!(offsets(&batches[1]), [0, 1, 2, 5]);
        assert_eq!(batches[1].ends(), [(1, 2), (3, 5)]);
        assert_eq!(batches[1].since, at(2));
        assert_eq!(b.buffered, 0);
        // Every partition of a shared batch is in flight until it finishes.
        b.push(msg(0, 4), at(5));
        assert!(b.take_due(at(5), true, 4).is_empty());
        b.finished(0, true);
        assert_eq!(b.take_due(at(6), false, 4)[0].ends(), [(0, 4)]);
    }

    #[test]
    fn without_room_a_partition_may_still_join_the_last_batch() {
        let now = Instant::now();
        let mut b = Buffers::new(10, Some(3), Duration::ZERO);
        for offset in 0..3 {
            b.push(msg(0, offset), now);
        }
        b.push(msg(1, 0), now);
        b.push(msg(1, 1), now);
        b.push(msg(2, 0), now);
        let batches = b.take_due(now, false, 2);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].ends(), [(1, 1), (2, 0)]);

        let mut one = Buffers::new(10, Some(3), Duration::ZERO);
        for offset in 0..3 {
            one.push(msg(0, offset), now);
        }
        one.push(msg(1, 0), now);
        assert_eq!(one.take_due(now, false, 1).len(), 1);
        assert_eq!(one.buffered, 1, "partition 1 waits for room");
    }
}

//! Messages waiting for their partition's next batch, and which partitions
//! have a batch in flight. Pure bookkeeping, no Kafka, no database, no clock:
//! every call that needs the time is given it, so tests choose it.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use super::RawMessage;

pub(super) struct Buffers {
    max_messages: usize,
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

impl Buffers {
    pub(super) fn new(max_messages: usize, linger: Duration) -> Self {
        Buffers {
            max_messages,
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
    /// lingered long enough (or `force`, at shutdown). At most `room` batches.
    pub(super) fn take_due(
        &mut self,
        now: Instant,
        force: bool,
        room: usize,
    ) -> Vec<Vec<RawMessage>> {
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
        let due: Vec<i32> = due.into_iter().take(room).map(|(_, p)| p).collect();
        let mut batches = Vec::with_capacity(due.len());
        for partition in due {
            let waiting = self.waiting.get_mut(&partition).expect("listed above");
            let batch: Vec<RawMessage> = if waiting.messages.len() > self.max_messages {
                let rest = waiting.messages.split_off(self.max_messages);
                waiting.since = now;
                std::mem::replace(&mut waiting.messages, rest)
            } else {
                self.waiting
                    .remove(&partition)
                    .expect("listed above")
                    .messages
            };
            self.buffered -= batch.len();
            self.in_flight.insert(partition);
            batches.push(batch);
        }
        batches
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

    fn offsets(batch: &[RawMessage]) -> Vec<i64> {
        batch.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn one_batch_per_partition_in_flight_split_at_the_maximum() {
        let now = Instant::now();
        let mut b = Buffers::new(3, Duration::ZERO);
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
        let mut b = Buffers::new(10, Duration::ZERO);
        b.push(msg(5, 0), start);
        b.push(msg(0, 0), start + Duration::from_millis(2));
        let first = b.take_due(start + Duration::from_millis(3), false, 1);
        assert_eq!(first[0][0].partition, 5);
    }

    #[test]
    fn room_limits_the_batches_started() {
        let now = Instant::now();
        let mut b = Buffers::new(10, Duration::ZERO);
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
        let mut b = Buffers::new(10, linger);
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
        let mut b = Buffers::new(2, Duration::ZERO);
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
        let mut b = Buffers::new(5, Duration::from_secs(1));
        b.push(msg(0, 0), now);
        b.push(msg(1, 0), now);
        b.push(msg(1, 1), now);
        assert_eq!(b.drop_partition(1), 2);
        assert_eq!(b.buffered, 1);
        assert_eq!(b.drop_partition(7), 0);
    }
}

//! Where each assigned partition of a gap-free topic must continue, and what
//! to do when a message does not: pure bookkeeping, no Kafka.
//!
//! orderflow's relay writes `order-events` with an idempotent,
//! non-transactional producer, so its offsets have no gaps: a consumer that
//! is handed offset 120 after 99 was not given 100–119. Tansu does exactly
//! that when a fetch starts inside a record batch (after a restart at a
//! committed offset, or a resume after a pause: `docs/tansu.md`); on Kafka it
//! happens only when retention deleted the records. So a loop of such a
//! topic checks every message against the offset it expects:
//! - the expected offset: taken, and the next one is expected;
//! - an earlier one, while a rewind of ours is under way: a re-read of what
//!   this assignment already holds, dropped. Without a rewind it is the
//!   consumer starting elsewhere than the committed offset (reset to the
//!   earliest after the topic was recreated, say): taken, and the position
//!   follows it, so the loop never waits for an offset that will not come;
//! - a later one: a gap. Read again from further back (1,024 records, then
//!   twice as far each time the gap is still there, down to offset 0), since
//!   a broker that skips answers a fetch from the start of a record batch
//!   whole. Only a gap still there after a read from offset 0 is accepted
//!   (the records no longer exist), and reported.

use std::collections::HashMap;

/// The first rewind goes this many records back; each one after, twice as far.
const FIRST_REWIND: i64 = 1024;

#[derive(Default)]
pub(super) struct Positions {
    partitions: HashMap<i32, Position>,
}

#[derive(Default)]
struct Position {
    /// The next offset this assignment must be given; unknown until the
    /// first message when the group had no committed offset.
    expected: Option<i64>,
    /// Rewinds since the last expected message arrived.
    rewinds: u32,
    /// Where the last rewind read from.
    rewound_to: Option<i64>,
}

impl Position {
    /// Expecting `offset` next, no rewind under way.
    fn at(offset: Option<i64>) -> Self {
        Position {
            expected: offset,
            ..Position::default()
        }
    }
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Take it.
    Take,
    /// Drop it: this assignment already has it.
    Drop,
    /// Drop it and read the partition again from this offset.
    Rewind(i64),
    /// Take it, though the records before it from `missing_from` were never
    /// delivered and cannot be (a read from offset 0 did not bring them).
    TakeAfterGap { missing_from: i64 },
}

impl Positions {
    /// A partition was assigned; the group's committed offset, if it had one,
    /// is where its messages must start.
    pub(super) fn assigned(&mut self, partition: i32, committed: Option<i64>) {
        self.partitions.insert(partition, Position::at(committed));
    }

    pub(super) fn revoked(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Judges the message at `offset` of `partition`.
    pub(super) fn check(&mut self, partition: i32, offset: i64) -> Verdict {
        let position = self.partitions.entry(partition).or_default();
        let Some(expected) = position.expected else {
            position.expected = Some(offset + 1);
            return Verdict::Take;
        };
        if offset < expected {
            if position.rewound_to.is_some() {
                return Verdict::Drop;
            }
            position.expected = Some(offset + 1);
            return Verdict::Take;
        }
        if offset == expected {
            *position = Position::at(Some(offset + 1));
            return Verdict::Take;
        }
        if position.rewound_to == Some(0) {
            *position = Position::at(Some(offset + 1));
            return Verdict::TakeAfterGap {
                missing_from: expected,
            };
        }
        let back = FIRST_REWIND
            .checked_shl(position.rewinds.min(40))
            .unwrap_or(i64::MAX);
        let to = expected.saturating_sub(back).max(0);
        position.rewinds += 1;
        position.rewound_to = Some(to);
        Verdict::Rewind(to)
    }

    /// A rewind could not be started: the next gap message tries the same
    /// one again rather than one further back.
    pub(super) fn rewind_failed(&mut self, partition: i32) {
        if let Some(position) = self.partitions.get_mut(&partition) {
            position.rewinds = position.rewinds.saturating_sub(1);
            position.rewound_to = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_messages_are_taken() {
        let mut p = Positions::default();
        p.assigned(0, Some(10));
        assert_eq!(p.check(0, 10), Verdict::Take);
        assert_eq!(p.check(0, 11), Verdict::Take);
        assert_eq!(p.check(0, 12), Verdict::Take);
    }

    #[test]
    fn a_start_before_the_committed_offset_is_followed_not_waited_out() {
        // The group committed 5,000, but the consumer starts at 0 (the topic
        // was recreated and the offset was out of range): nothing would ever
        // reach 5,000 in order if earlier offsets were dropped.
        let mut p = Positions::default();
        p.assigned(0, Some(5_000));
        assert_eq!(p.check(0, 0), Verdict::Take);
        assert_eq!(p.check(0, 1), Verdict::Take);
        assert_eq!(p.check(0, 3), Verdict::Rewind(0));
    }

    #[test]
    fn without_a_committed_offset_the_first_message_sets_the_position() {
        let mut p = Positions::default();
        p.assigned(3, None);
        assert_eq!(p.check(3, 700), Verdict::Take);
        assert_eq!(p.check(3, 702), Verdict::Rewind(0));
    }

    #[test]
    fn a_gap_rewinds_further_back_each_time_until_filled() {
        let mut p = Positions::default();
        p.assigned(0, Some(5_000));
        // The broker skipped to the next record batch.
        assert_eq!(p.check(0, 5_600), Verdict::Rewind(5_000 - 1024));
        // The rewind landed inside a batch reaching past 5,000 again.
        assert_eq!(p.check(0, 5_600), Verdict::Rewind(5_000 - 2048));
        // Now from a batch start at or before 5,000: re-reads dropped.
        assert_eq!(p.check(0, 3_100), Verdict::Drop);
        assert_eq!(p.check(0, 4_999), Verdict::Drop);
        assert_eq!(p.check(0, 5_000), Verdict::Take);
        // A later gap starts from the first rewind again.
        assert_eq!(p.check(0, 5_003), Verdict::Rewind(5_001 - 1024));
    }

    #[test]
    fn a_gap_still_there_after_reading_from_zero_is_accepted_once() {
        let mut p = Positions::default();
        p.assigned(1, Some(1_500));
        assert_eq!(p.check(1, 9_000), Verdict::Rewind(476));
        assert_eq!(p.check(1, 9_000), Verdict::Rewind(0));
        assert_eq!(
            p.check(1, 9_000),
            Verdict::TakeAfterGap {
                missing_from: 1_500
            }
        );
        assert_eq!(p.check(1, 9_001), Verdict::Take);
    }

    #[test]
    fn a_failed_rewind_is_tried_again_not_widened() {
        let mut p = Positions::default();
        p.assigned(0, Some(3_000));
        assert_eq!(p.check(0, 3_100), Verdict::Rewind(3_000 - 1024));
        p.rewind_failed(0);
        assert_eq!(p.check(0, 3_101), Verdict::Rewind(3_000 - 1024));
    }

    #[test]
    fn a_new_assignment_starts_over() {
        let mut p = Positions::default();
        p.assigned(0, Some(100));
        assert_eq!(p.check(0, 100), Verdict::Take);
        p.revoked(0);
        p.assigned(0, Some(40));
        assert_eq!(p.check(0, 40), Verdict::Take);
    }
}

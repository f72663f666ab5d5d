//! The per-phone order checks (§7 "Order"): [`SeqChecker`], every message must come back
//! exactly once, in the order it was sent; [`Ascending`], for `reconnect` mode, where loss in
//! flight is allowed but a duplicate or a reordering is not. Pure bookkeeping; the clients feed
//! them sequence numbers as they arrive.

use std::collections::HashMap;

/// What one arriving sequence number says about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next one expected.
    InOrder,
    /// Later than expected: this many sequence numbers were skipped (lost, or coming late).
    Skipped(u64),
    /// Earlier than expected: a reordered or duplicated message.
    Late,
}

/// Tracks the next expected sequence number and counts every deviation.
#[derive(Debug, Default, Clone)]
pub struct SeqChecker {
    next: u64,
    received: u64,
    skipped: u64,
    late: u64,
}

impl SeqChecker {
    /// Records one arriving sequence number.
    pub fn check(&mut self, seq: u64) -> Verdict {
        self.received += 1;
        if seq == self.next {
            self.next += 1;
            Verdict::InOrder
        } else if seq > self.next {
            let gap = seq - self.next;
            self.skipped += gap;
            // Resynchronise so one loss counts once, not once per later message.
            self.next = seq + 1;
            Verdict::Skipped(gap)
        } else {
            self.late += 1;
            Verdict::Late
        }
    }

    /// Messages seen, in order or not.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Sequence numbers jumped over at the moment of arrival.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Messages that arrived after a later one (reordered or duplicated).
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Of `sent` messages, how many never came back. Exact when nothing was duplicated.
    pub fn missing(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.received)
    }

    /// True when every one of `sent` messages came back once, in order.
    pub fn is_clean(&self, sent: u64) -> bool {
        self.skipped == 0 && self.late == 0 && self.received == sent
    }
}

/// The order check of one direction: per key (a phone), each sequence number must be above
/// the last one seen. Gaps are allowed (lost in flight); equal or lower is a duplicate or a
/// reordering.
#[derive(Debug, Default)]
pub struct Ascending {
    last: HashMap<u64, u64>,
}

impl Ascending {
    /// Records `seq` for `key`; `Err(previous)` if it does not come after the last one.
    pub fn see(&mut self, key: u64, seq: u64) -> Result<(), u64> {
        match self.last.insert(key, seq) {
            Some(prev) if prev >= seq => {
                // Keep the highest seen, so one late message counts once.
                self.last.insert(key, prev);
                Err(prev)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_check_allows_gaps_and_catches_duplicates_and_reordering() {
        let mut a = Ascending::default();
        assert_eq!(a.see(1, 0), Ok(()));
        assert_eq!(a.see(1, 5), Ok(()), "a gap: lost in flight");
        assert_eq!(a.see(2, 3), Ok(()), "keys are independent");
        assert_eq!(a.see(1, 5), Err(5), "delivered twice");
        assert_eq!(a.see(1, 4), Err(5), "after a later one");
        assert_eq!(a.see(1, 6), Ok(()), "the late one did not lower the mark");
    }

    #[test]
    fn in_order_stream_is_clean() {
        let mut c = SeqChecker::default();
        for s in 0..100 {
            assert_eq!(c.check(s), Verdict::InOrder);
        }
        assert!(c.is_clean(100));
        assert_eq!(c.missing(100), 0);
    }

    #[test]
    fn a_lost_message_is_one_skip_and_one_missing() {
        let mut c = SeqChecker::default();
        for s in [0, 1, 3, 4] {
            c.check(s);
        }
        assert_eq!(c.skipped(), 1);
        assert_eq!(c.late(), 0);
        assert_eq!(c.missing(5), 1);
        assert!(!c.is_clean(5));
    }

    #[test]
    fn a_swapped_pair_is_a_skip_then_a_late_arrival() {
        let mut c = SeqChecker::default();
        assert_eq!(c.check(0), Verdict::InOrder);
        assert_eq!(c.check(2), Verdict::Skipped(1));
        assert_eq!(c.check(1), Verdict::Late);
        assert_eq!(c.check(3), Verdict::InOrder);
        assert_eq!(c.missing(4), 0);
        assert!(!c.is_clean(4));
    }

    #[test]
    fn a_duplicate_is_late() {
        let mut c = SeqChecker::default();
        c.check(0);
        c.check(1);
        assert_eq!(c.check(1), Verdict::Late);
        assert!(!c.is_clean(2));
    }

    #[test]
    fn messages_still_in_flight_are_missing() {
        let mut c = SeqChecker::default();
        c.check(0);
        assert_eq!(c.missing(8), 7);
        assert!(!c.is_clean(8));
    }
}

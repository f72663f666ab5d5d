//! Rate-limited warnings: at most a few lines per second for one kind of event, and the next
//! line that gets through says how many were suppressed (protocol.md §4.2: "at most a few per
//! connection per second, with a count of those suppressed").
//!
//! [`Throttle`] is for one connection's own events (its reader task owns it: no atomics);
//! [`SharedThrottle`] is for relay-wide events such as admission refusals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Lines allowed per second.
pub const PER_SECOND: u32 = 3;

/// One connection's throttle.
#[derive(Debug)]
pub struct Throttle {
    window: Instant,
    count: u32,
    suppressed: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            window: Instant::now(),
            count: 0,
            suppressed: 0,
        }
    }
}

impl Throttle {
    /// `Some(suppressed since the last line)` if this event may be logged now.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.window).as_secs() >= 1 {
            self.window = now;
            self.count = 0;
        }
        if self.count < PER_SECOND {
            self.count += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// A relay-wide throttle.
#[derive(Debug)]
pub struct SharedThrottle {
    start: Instant,
    /// Second (since `start`) of the current window, and lines logged in it.
    window: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for SharedThrottle {
    fn default() -> Self {
        SharedThrottle {
            start: Instant::now(),
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl SharedThrottle {
    /// `Some(suppressed since the last line)` if this event may be logged now. Approximate
    /// under races (a line or two more per second), never blocking.
    pub fn allow(&self) -> Option<u64> {
        let second = self.start.elapsed().as_secs();
        let window = self.window.load(Ordering::Relaxed);
        if second != window
            && self
                .window
                .compare_exchange(window, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < u64::from(PER_SECOND) {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_few_lines_per_second_then_the_count_of_what_was_suppressed() {
        let mut t = Throttle::default();
        let t0 = t.window;
        let allowed: Vec<_> = (0..10).map(|_| t.allow_at(t0)).collect();
        assert_eq!(&allowed[..3], &[Some(0), Some(0), Some(0)]);
        assert!(allowed[3..].iter().all(Option::is_none));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(1)), Some(7));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(1)), Some(0));
    }

    #[test]
    fn the_shared_throttle_allows_a_few_per_second() {
        let t = SharedThrottle::default();
        let allowed = (0..100).filter(|_| t.allow().is_some()).count();
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}

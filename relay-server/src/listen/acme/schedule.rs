//! When to order the next certificate (protocol.md §9): at two thirds of the current one's
//! lifetime, and after a failure with jittered, capped exponential backoff.
//!
//! Owns the decision only. It never reads a clock, sleeps or talks to a CA: the manager passes
//! the wall-clock time in and does the waiting, so every case here is a deterministic test
//! (the quinn-proto shape).

use std::time::{Duration, SystemTime};

/// A certificate's validity window, as the CA wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Two thirds into the lifetime: for Let's Encrypt's 90 days that is day 60, leaving 30
    /// days to ride out a CA outage. A window the CA wrote backwards renews at once.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + lifetime * 2 / 3
    }

    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Retry delays after consecutive failures: `base`, `2·base`, `4·base`, … capped at `cap`,
/// each drawn from the upper half of its step ("equal jitter"), so relays restarted together
/// do not retry in lockstep and no retry comes sooner than half the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay after the `failures`-th consecutive failure (1 = the first), with `jitter`
    /// in `[0, 1]` (out-of-range values are clamped).
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        let step = self
            .base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.cap)
            .min(self.cap);
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        step / 2 + step.mul_f64(jitter / 2.0)
    }
}

/// The manager's state between attempts: the certificate it serves (if any) and the failures
/// since the last success.
#[derive(Debug, Clone)]
pub struct Schedule {
    backoff: Backoff,
    current: Option<Validity>,
    /// After an issuance, no renewal before this: a third of the new lifetime. Only matters
    /// when a fresh certificate is already "due" (the host's clock far ahead of the CA's),
    /// where ordering again at once would loop into the CA's rate limits.
    earliest: Option<SystemTime>,
    failures: u32,
    retry_at: Option<SystemTime>,
}

impl Schedule {
    pub fn new(backoff: Backoff, current: Option<Validity>) -> Self {
        Schedule {
            backoff,
            current,
            earliest: None,
            failures: 0,
            retry_at: None,
        }
    }

    /// When the next order should start. At or before `now` means "now". With no certificate
    /// that is at once; with one, its renewal time; after a failure, the backoff retry.
    pub fn next_attempt(&self, now: SystemTime) -> SystemTime {
        if let Some(retry) = self.retry_at {
            return retry;
        }
        match self.current {
            Some(validity) => match self.earliest {
                Some(earliest) => validity.renew_at().max(earliest),
                None => validity.renew_at(),
            },
            None => now,
        }
    }

    /// A certificate was obtained at `now`: serve it, forget past failures.
    pub fn succeeded(&mut self, validity: Validity, now: SystemTime) {
        let lifetime = validity
            .not_after
            .duration_since(validity.not_before)
            .unwrap_or(Duration::ZERO);
        self.current = Some(validity);
        self.earliest = Some(now + lifetime / 3);
        self.failures = 0;
        self.retry_at = None;
    }

    /// An attempt failed at `now`: returns when to retry (the old certificate, if any, stays).
    pub fn failed(&mut self, now: SystemTime, jitter: f64) -> SystemTime {
        self.failures = self.failures.saturating_add(1);
        let retry = now + self.backoff.delay(self.failures, jitter);
        self.retry_at = Some(retry);
        retry
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn current(&self) -> Option<Validity> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_secs(60),
            cap: Duration::from_secs(3600),
        }
    }

    #[test]
    fn renewal_starts_at_two_thirds_of_the_lifetime() {
        let lets_encrypt = Validity {
            not_before: t(0),
            not_after: t(0) + 90 * DAY,
        };
        assert_eq!(lets_encrypt.renew_at(), t(0) + 60 * DAY);
        let short = Validity {
            not_before: t(0),
            not_after: t(30),
        };
        assert_eq!(short.renew_at(), t(20));
    }

    #[test]
    fn a_backwards_validity_window_renews_at_once() {
        let backwards = Validity {
            not_before: t(100),
            not_after: t(50),
        };
        assert_eq!(backwards.renew_at(), t(100));
        assert!(!backwards.is_valid_at(t(75)));
    }

    #[test]
    fn no_certificate_means_order_now() {
        let schedule = Schedule::new(backoff(), None);
        assert_eq!(schedule.next_attempt(t(5)), t(5));
    }

    #[test]
    fn a_valid_cached_certificate_waits_for_its_renewal_time() {
        let cached = Validity {
            not_before: t(0),
            not_after: t(0) + 90 * DAY,
        };
        let schedule = Schedule::new(backoff(), Some(cached));
        // A restart on day 10 does not order: the next attempt is day 60.
        assert_eq!(schedule.next_attempt(t(0) + 10 * DAY), t(0) + 60 * DAY);
        // A restart on day 70 (past renewal, still valid) renews at once.
        assert!(schedule.next_attempt(t(0) + 70 * DAY) <= t(0) + 70 * DAY);
    }

    #[test]
    fn backoff_doubles_from_base_and_stops_at_the_cap() {
        let b = backoff();
        // With jitter 1 the delay is the full step.
        let full: Vec<u64> = (1..=9).map(|n| b.delay(n, 1.0).as_secs()).collect();
        assert_eq!(full, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        // Far past the cap, no overflow.
        assert_eq!(b.delay(u32::MAX, 1.0), Duration::from_secs(3600));
    }

    #[test]
    fn backoff_jitter_stays_in_the_upper_half_of_each_step() {
        let b = backoff();
        assert_eq!(b.delay(1, 0.0), Duration::from_secs(30));
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(45));
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(120));
        // Out-of-range and NaN jitter cannot shorten or stretch the delay.
        assert_eq!(b.delay(1, -3.0), Duration::from_secs(30));
        assert_eq!(b.delay(1, 7.0), Duration::from_secs(60));
        assert_eq!(b.delay(1, f64::NAN), Duration::from_secs(30));
        for n in 1..20 {
            for j in [0.0, 0.1, 0.9, 1.0] {
                let d = b.delay(n, j);
                assert!(d <= b.cap && d >= b.delay(n, 0.0), "n={n} j={j} d={d:?}");
            }
        }
    }

    #[test]
    fn a_failure_retries_after_backoff_and_success_resets_it() {
        let mut schedule = Schedule::new(backoff(), None);
        let retry = schedule.failed(t(0), 1.0);
        assert_eq!(retry, t(60));
        assert_eq!(schedule.next_attempt(t(10)), t(60));
        assert_eq!(schedule.failed(t(60), 1.0), t(180));
        assert_eq!(schedule.failures(), 2);

        let fresh = Validity {
            not_before: t(200),
            not_after: t(200) + 90 * DAY,
        };
        schedule.succeeded(fresh, t(200));
        assert_eq!(schedule.failures(), 0);
        assert_eq!(schedule.next_attempt(t(201)), t(200) + 60 * DAY);
        // The next failure starts from the base again.
        assert_eq!(
            schedule.failed(t(200) + 60 * DAY, 1.0),
            t(200) + 60 * DAY + Duration::from_secs(60)
        );
    }

    #[test]
    fn a_certificate_already_due_at_issuance_waits_a_third_of_its_lifetime() {
        // The host's clock is 70 days ahead of the CA's: the new certificate looks due.
        let skewed = Validity {
            not_before: t(0),
            not_after: t(0) + 90 * DAY,
        };
        let now = t(0) + 70 * DAY;
        let mut schedule = Schedule::new(backoff(), None);
        schedule.succeeded(skewed, now);
        assert_eq!(schedule.next_attempt(now), now + 30 * DAY);
    }

    #[test]
    fn a_failed_renewal_keeps_the_old_certificate() {
        let old = Validity {
            not_before: t(0),
            not_after: t(0) + 90 * DAY,
        };
        let mut schedule = Schedule::new(backoff(), Some(old));
        schedule.failed(t(0) + 60 * DAY, 0.0);
        assert_eq!(schedule.current(), Some(old));
        assert_eq!(
            schedule.next_attempt(t(0) + 60 * DAY),
            t(0) + 60 * DAY + Duration::from_secs(30)
        );
    }
}

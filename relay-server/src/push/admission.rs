//! Which push wakes may be sent (protocol.md §4.4): per server-id a token bucket (burst 6,
//! one more every 10 s) and relay-wide at most 32 sends in flight.
//!
//! Owns the buckets and the in-flight permits, nothing else: it never sends, never awaits and
//! never queues (a wake over either limit is dropped at once). Time comes in through a
//! [`Clock`] so refill and eviction are tested without waiting. Memory is bounded: a bucket
//! that has refilled to its burst says nothing a fresh bucket would not, so such buckets are
//! evicted in a sweep that runs at most once per refill-to-full period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use relay_core::{Clock, ServerId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The knobs of §4.4's two limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wakes a server-id may send at once after being quiet.
    pub burst: u32,
    /// One more wake is allowed per this interval, up to `burst`.
    pub refill: Duration,
    /// Sends in flight across the whole relay.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            burst: 6,
            refill: Duration::from_secs(10),
            max_in_flight: 32,
        }
    }
}

/// Why a wake was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The server-id's bucket is empty.
    RateLimited,
    /// The relay already has its maximum of sends in flight.
    InFlightCap,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::RateLimited => "rate_limited",
            Refused::InFlightCap => "in_flight_cap",
        }
    }
}

/// One admitted send: holds its in-flight slot until dropped.
#[derive(Debug)]
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When `tokens` was last brought up to date; the remainder of a partial interval is kept.
    at: Instant,
}

impl Bucket {
    /// Brings the bucket up to `now`.
    fn refill(&mut self, now: Instant, limits: &Limits) {
        if self.tokens >= limits.burst {
            self.at = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.at);
        let interval = limits.refill.max(Duration::from_nanos(1));
        let earned = elapsed.as_nanos() / interval.as_nanos();
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if earned == 0 {
            return;
        }
        self.tokens = self.tokens.saturating_add(earned).min(limits.burst);
        self.at = if self.tokens >= limits.burst {
            now
        } else {
            self.at + interval * earned
        };
    }
}

struct Buckets {
    map: HashMap<ServerId, Bucket>,
    last_sweep: Instant,
}

/// The two limits of §4.4. Cheap to call from a binary's reader: one short mutex for the
/// buckets, one atomic try-acquire for the in-flight slot.
pub struct Admission<K> {
    limits: Limits,
    clock: K,
    buckets: Mutex<Buckets>,
    in_flight: Arc<Semaphore>,
}

impl<K: Clock> Admission<K> {
    pub fn new(limits: Limits, clock: K) -> Self {
        let now = clock.now();
        Admission {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            limits,
            clock,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                last_sweep: now,
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits one wake of `server_id` under both limits, or says which one refused it. A wake
    /// refused for the in-flight cap does not spend the server-id's bucket.
    pub fn admit(&self, server_id: &ServerId) -> Result<Admitted, Refused> {
        let slot = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::InFlightCap)?;
        let now = self.clock.now();
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        self.sweep(&mut b, now);
        let limits = &self.limits;
        let bucket = b.map.entry(server_id.clone()).or_insert(Bucket {
            tokens: limits.burst,
            at: now,
        });
        bucket.refill(now, limits);
        if bucket.tokens == 0 {
            return Err(Refused::RateLimited);
        }
        bucket.tokens -= 1;
        Ok(Admitted { _slot: slot })
    }

    /// Drops every bucket that has refilled to its burst, at most once per the time an empty
    /// bucket takes to refill: so the map only holds server-ids that sent a wake recently.
    fn sweep(&self, b: &mut Buckets, now: Instant) {
        let full_after = self.limits.refill * self.limits.burst;
        if now.saturating_duration_since(b.last_sweep) < full_after {
            return;
        }
        b.last_sweep = now;
        let limits = self.limits;
        b.map.retain(|_, bucket| {
            bucket.refill(now, &limits);
            bucket.tokens < limits.burst
        });
    }

    /// Server-ids with a bucket (tests; bounded-memory checks).
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    /// Sends in flight now (none once closed: [`Admission::close`] holds every permit).
    pub fn in_flight(&self) -> usize {
        if self.in_flight.is_closed() {
            return 0;
        }
        self.limits.max_in_flight - self.in_flight.available_permits()
    }

    /// Waits until no send is in flight, then admits no more (shutdown).
    pub async fn close(&self) {
        let all = u32::try_from(self.limits.max_in_flight).unwrap_or(u32::MAX);
        if let Ok(permits) = self.in_flight.acquire_many(all).await {
            permits.forget();
        }
        self.in_flight.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use relay_core::ManualClock;

    fn sid(s: &str) -> ServerId {
        relay_core::headers::server_id(Some(s.as_bytes())).unwrap()
    }

    fn admission() -> (Admission<ManualClock>, ManualClock) {
        let clock = ManualClock::new();
        (Admission::new(Limits::default(), clock.clone()), clock)
    }

    #[test]
    fn a_server_id_gets_a_burst_of_6_then_one_per_10_seconds() {
        let (a, clock) = admission();
        let s = sid("s1");
        let mut held = Vec::new();
        for n in 0..6 {
            held.push(a.admit(&s).unwrap_or_else(|r| panic!("wake {n}: {r:?}")));
        }
        drop(held);
        assert_eq!(a.admit(&s).unwrap_err(), Refused::RateLimited);
        clock.advance(Duration::from_millis(9_999));
        assert_eq!(a.admit(&s).unwrap_err(), Refused::RateLimited);
        clock.advance(Duration::from_millis(1));
        assert!(a.admit(&s).is_ok(), "one more after 10 s");
        assert_eq!(a.admit(&s).unwrap_err(), Refused::RateLimited);
        clock.advance(Duration::from_secs(25));
        assert!(a.admit(&s).is_ok());
        assert!(a.admit(&s).is_ok());
        assert_eq!(
            a.admit(&s).unwrap_err(),
            Refused::RateLimited,
            "25 s earn two, the half interval is kept"
        );
        clock.advance(Duration::from_secs(5));
        assert!(a.admit(&s).is_ok(), "the kept half plus 5 s make the third");
    }

    #[test]
    fn a_quiet_server_id_refills_to_the_burst_and_no_further() {
        let (a, clock) = admission();
        let s = sid("s1");
        for _ in 0..6 {
            a.admit(&s).unwrap();
        }
        clock.advance(Duration::from_secs(3600));
        for _ in 0..6 {
            a.admit(&s).unwrap();
        }
        assert_eq!(a.admit(&s).unwrap_err(), Refused::RateLimited);
    }

    #[test]
    fn server_ids_have_their_own_buckets() {
        let (a, _) = admission();
        for _ in 0..6 {
            a.admit(&sid("noisy")).unwrap();
        }
        assert_eq!(a.admit(&sid("noisy")).unwrap_err(), Refused::RateLimited);
        assert!(a.admit(&sid("quiet")).is_ok());
    }

    #[test]
    fn at_most_32_sends_in_flight_relay_wide() {
        let (a, _) = admission();
        let held: Vec<Admitted> = (0..32)
            .map(|n| a.admit(&sid(&format!("s{}", n / 6))).unwrap())
            .collect();
        assert_eq!(a.in_flight(), 32);
        assert_eq!(a.admit(&sid("fresh")).unwrap_err(), Refused::InFlightCap);
        // Refused for the cap: the fresh server-id's bucket is untouched.
        drop(held);
        assert_eq!(a.in_flight(), 0);
        for _ in 0..6 {
            a.admit(&sid("fresh")).unwrap();
        }
    }

    #[test]
    fn idle_buckets_are_evicted() {
        let (a, clock) = admission();
        for n in 0..1000 {
            a.admit(&sid(&format!("s{n}"))).unwrap();
        }
        assert_eq!(a.tracked(), 1000);
        clock.advance(Duration::from_secs(60));
        a.admit(&sid("late")).unwrap();
        assert_eq!(a.tracked(), 1, "only the bucket that is not full is kept");
    }

    #[tokio::test]
    async fn close_waits_for_sends_in_flight_then_admits_nothing() {
        let (a, _) = admission();
        let a = Arc::new(a);
        let held = a.admit(&sid("s1")).unwrap();
        let closing = tokio::spawn({
            let a = a.clone();
            async move { a.close().await }
        });
        tokio::task::yield_now().await;
        assert!(!closing.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .expect("close returns once the send ends")
            .unwrap();
        assert_eq!(a.admit(&sid("s2")).unwrap_err(), Refused::InFlightCap);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Wake(u8),
        Finish,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4).prop_map(Op::Wake),
            2 => Just(Op::Finish),
            1 => (0u64..30_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a model that keeps every admission time: a server-id never has more than
        /// `burst + elapsed / refill` admissions in any window (a token bucket's promise),
        /// never more than `max_in_flight` sends in flight, and a wake is refused only when a
        /// limit is really reached.
        #[test]
        fn admission_matches_the_token_bucket_model(
            ops in proptest::collection::vec(op(), 1..300),
            burst in 1u32..8,
            refill_ms in 1u64..5_000,
            cap in 1usize..6,
        ) {
            let limits = Limits { burst, refill: Duration::from_millis(refill_ms), max_in_flight: cap };
            let clock = ManualClock::new();
            let a = Admission::new(limits, clock.clone());
            let mut in_flight: Vec<Admitted> = Vec::new();
            let mut admitted: Vec<Vec<u64>> = vec![Vec::new(); 4];
            // Model bucket: tokens as a fraction of one refill, GCRA-style.
            let mut model: Vec<(u32, u64)> = vec![(burst, 0); 4];
            let mut now_ms = 0u64;
            for op in ops {
                match op {
                    Op::Advance(ms) => { clock.advance(Duration::from_millis(ms)); now_ms += ms; }
                    Op::Finish => { if !in_flight.is_empty() { in_flight.remove(0); } }
                    Op::Wake(s) => {
                        let s = s as usize;
                        let got = a.admit(&sid(&format!("s{s}")));
                        let (tokens, at) = &mut model[s];
                        if *tokens < burst {
                            let earned = (now_ms - *at) / refill_ms;
                            let t = (*tokens as u64 + earned).min(burst as u64) as u32;
                            *at = if t >= burst { now_ms } else { *at + earned * refill_ms };
                            *tokens = t;
                        } else {
                            *at = now_ms;
                        }
                        let want = if in_flight.len() >= cap {
                            Err(Refused::InFlightCap)
                        } else if *tokens == 0 {
                            Err(Refused::RateLimited)
                        } else {
                            *tokens -= 1;
                            Ok(())
                        };
                        prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|r| *r), want);
                        if let Ok(p) = got {
                            in_flight.push(p);
                            admitted[s].push(now_ms);
                        }
                        prop_assert!(a.in_flight() <= cap);
                        // The bucket's promise over every window ending now.
                        for (i, t0) in admitted[s].iter().enumerate() {
                            let in_window = (admitted[s].len() - i) as u64;
                            prop_assert!(in_window <= burst as u64 + (now_ms - t0) / refill_ms);
                        }
                    }
                }
            }
        }
    }
}

//! The relay-wide memory budget (protocol.md §8 "Relay-wide memory budget").
//!
//! Every byte a reader takes off a socket is charged on arrival, to one relay-wide [`Budget`]
//! and to the [`Meter`] of the connection that sent it. The charge then travels *inside* the
//! bytes: a reader hands out its messages as slices of one [`Meter::freeze`]d chunk per socket
//! read, and the chunk's owner releases the charge when the last slice of it is dropped. So
//! whatever holds a peer's bytes (a partly read message, a binary inbox, a phone outbox, a
//! grace backlog in the registry) holds its charge, with no bookkeeping in any of them, and a
//! panic that drops them releases it too.
//!
//! At the budget, a connection is read only while it holds less than [`PAUSE_THRESHOLD`]
//! ([`Meter::admit_read`]): TCP back-pressure for the others, nothing dropped. What a phone
//! outbox holds is charged to the binary that sent it, so a hostile server-id throttles itself.
//! The shedder (`shed.rs`) closes the largest phone outboxes when the binary→phone side is
//! what fills the budget.
//!
//! Cost: two relaxed atomic adds per socket read and two subtractions per chunk dropped, plus
//! one small allocation per chunk (the owner). Never per message, never a lock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

/// At the budget, a connection holding this much or more is not read.
pub const PAUSE_THRESHOLD: usize = 64 << 10;

/// The one relay-wide account of bytes held for peers.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Woken when `used` drops below the limit: paused readers check again.
    relief: Notify,
    /// Woken when `used` reaches the limit: the shedder looks for outboxes to close.
    pressure: Notify,
    pauses: AtomicU64,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            relief: Notify::new(),
            pressure: Notify::new(),
            pauses: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held for peers right now (§10 "bytes held against the §8 budget").
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn over(&self) -> bool {
        self.used() >= self.limit
    }

    /// Times a reader waited because of the budget.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        let old = self.used.fetch_add(n, Ordering::Relaxed);
        if old < self.limit && old + n >= self.limit {
            self.pressure.notify_one();
        }
    }

    fn sub(&self, n: usize) {
        let old = self.used.fetch_sub(n, Ordering::Relaxed);
        if old >= self.limit && old - n < self.limit {
            self.relief.notify_waiters();
        }
    }

    /// Resolves once the budget has been reached (for the shedder).
    pub async fn reached(&self) {
        let n = self.pressure.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if self.over() {
            return;
        }
        n.await;
    }

    /// A new connection's meter.
    pub fn meter(self: &Arc<Self>) -> Meter {
        Meter(Arc::new(MeterInner {
            budget: self.clone(),
            held: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            wake: Notify::new(),
        }))
    }
}

/// One connection's share of the budget: what it has read and is still held somewhere.
#[derive(Clone, Debug)]
pub struct Meter(Arc<MeterInner>);

#[derive(Debug)]
struct MeterInner {
    budget: Arc<Budget>,
    held: AtomicUsize,
    /// Its reader is waiting in [`Meter::admit_read`]: releases wake it.
    paused: AtomicBool,
    wake: Notify,
}

impl MeterInner {
    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let old = self.held.fetch_sub(n, Ordering::Relaxed);
        self.budget.sub(n);
        if self.paused.load(Ordering::Relaxed) && old - n < PAUSE_THRESHOLD {
            self.wake.notify_one();
        }
    }
}

/// The owner of a frozen chunk: its bytes, and the charge it releases when dropped.
struct Charged {
    bytes: Bytes,
    meter: Arc<MeterInner>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.meter.release(self.bytes.len());
    }
}

impl Meter {
    /// Bytes this connection holds: read and not yet released.
    pub fn held(&self) -> usize {
        self.0.held.load(Ordering::Relaxed)
    }

    pub fn budget(&self) -> &Budget {
        &self.0.budget
    }

    /// Charges `n` bytes just read off the socket.
    pub fn charge(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.0.held.fetch_add(n, Ordering::Relaxed);
        self.0.budget.add(n);
    }

    /// Releases `n` charged bytes that were dropped without being frozen.
    pub fn release(&self, n: usize) {
        self.0.release(n);
    }

    /// Turns `bytes` (already charged) into a chunk that releases its charge when its last
    /// slice is dropped.
    pub fn freeze(&self, bytes: Bytes) -> Bytes {
        if bytes.is_empty() {
            return bytes;
        }
        Bytes::from_owner(Charged {
            bytes,
            meter: self.0.clone(),
        })
    }

    /// Whether a read now would break the §8 rule: at the budget, read only while holding
    /// less than [`PAUSE_THRESHOLD`].
    pub fn must_wait(&self) -> bool {
        self.0.budget.over() && self.held() >= PAUSE_THRESHOLD
    }

    /// Waits until this connection may read again (see [`Meter::must_wait`]).
    pub async fn admit_read(&self) {
        if !self.must_wait() {
            return;
        }
        self.0.budget.pauses.fetch_add(1, Ordering::Relaxed);
        self.0.paused.store(true, Ordering::Relaxed);
        loop {
            let relief = self.0.budget.relief.notified();
            let own = self.0.wake.notified();
            tokio::pin!(relief, own);
            relief.as_mut().enable();
            own.as_mut().enable();
            if !self.must_wait() {
                break;
            }
            tokio::select! {
                _ = relief => {}
                _ = own => {}
            }
        }
        self.0.paused.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_chunk_releases_its_charge_when_its_last_slice_drops() {
        let budget = Budget::new(1 << 20);
        let meter = budget.meter();
        meter.charge(100);
        assert_eq!((budget.used(), meter.held()), (100, 100));
        let chunk = meter.freeze(Bytes::from(vec![7u8; 100]));
        let a = chunk.slice(0..10);
        let b = chunk.slice(50..60);
        drop(chunk);
        drop(a);
        assert_eq!(budget.used(), 100, "one slice still holds the chunk");
        drop(b);
        assert_eq!((budget.used(), meter.held()), (0, 0));
    }

    #[test]
    fn meters_share_one_budget() {
        let budget = Budget::new(1000);
        let (m1, m2) = (budget.meter(), budget.meter());
        m1.charge(600);
        assert!(!budget.over());
        m2.charge(400);
        assert!(budget.over());
        m1.release(600);
        assert_eq!(budget.used(), 400);
        assert_eq!(m2.held(), 400);
    }

    #[tokio::test]
    async fn at_the_budget_only_connections_holding_little_are_read() {
        let budget = Budget::new(PAUSE_THRESHOLD * 2);
        let heavy = budget.meter();
        let light = budget.meter();
        heavy.charge(PAUSE_THRESHOLD * 2);
        light.charge(10);
        assert!(budget.over());
        assert!(heavy.must_wait());
        assert!(
            !light.must_wait(),
            "an honest connection holding little reads on"
        );
        light.admit_read().await;

        let waiting = tokio::spawn({
            let heavy = heavy.clone();
            async move { heavy.admit_read().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The heavy connection's bytes leave (written to their peer): it may read again.
        heavy.release(PAUSE_THRESHOLD * 2 - 100);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(budget.pauses(), 1);
    }

    #[tokio::test]
    async fn a_paused_reader_wakes_when_the_budget_has_room_again() {
        let budget = Budget::new(PAUSE_THRESHOLD * 2);
        let heavy = budget.meter();
        let other = budget.meter();
        heavy.charge(PAUSE_THRESHOLD);
        other.charge(PAUSE_THRESHOLD);
        let waiting = tokio::spawn({
            let heavy = heavy.clone();
            async move { heavy.admit_read().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        other.release(PAUSE_THRESHOLD);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test]
    async fn reaching_the_budget_wakes_the_shedder() {
        let budget = Budget::new(1000);
        let meter = budget.meter();
        let shedder = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reached().await }
        });
        tokio::task::yield_now().await;
        meter.charge(999);
        tokio::task::yield_now().await;
        assert!(!shedder.is_finished());
        meter.charge(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), shedder)
            .await
            .expect("woken")
            .unwrap();
    }
}

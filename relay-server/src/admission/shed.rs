//! Shedding at the memory budget (protocol.md §8): when the budget is reached and the
//! binary→phone side is what fills it, the phone with the largest outbox is closed 1011
//! "phone backlog full", which drops its queue and so releases the bytes it pinned.
//!
//! Owns the table of live phone outboxes it scans. The scan runs only while the budget is
//! reached, never on the per-message path; registering a phone is one insert at connect and
//! one remove when its guard drops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use relay_core::{Close, Conn, ConnId};
use tokio::sync::watch;
use tracing::warn;

use super::budget::{Budget, PAUSE_THRESHOLD};
use crate::ws::peer::Peer;

const SHARDS: usize = 16;
/// Pause between sheds, so the closed phone's writer can drop its queue before the next scan.
const SETTLE: Duration = Duration::from_millis(5);

/// Every live phone, for the shedder to find the largest outbox.
#[derive(Default)]
pub struct Outboxes {
    shards: [Mutex<HashMap<ConnId, Peer>>; SHARDS],
    sheds: AtomicU64,
}

/// Removes its phone from [`Outboxes`] when dropped, on every exit path.
pub struct Registered {
    table: Arc<Outboxes>,
    id: ConnId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.shard(&self.id).remove(&self.id);
    }
}

impl Outboxes {
    fn shard(&self, id: &ConnId) -> std::sync::MutexGuard<'_, HashMap<ConnId, Peer>> {
        let i = usize::from(id.as_str().as_bytes()[2]) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn register(self: &Arc<Self>, phone: &Peer) -> Registered {
        let id = *phone.id();
        self.shard(&id).insert(id, phone.clone());
        Registered {
            table: self.clone(),
            id,
        }
    }

    /// Phones closed by the shedder so far.
    pub fn sheds(&self) -> u64 {
        self.sheds.load(Ordering::Relaxed)
    }

    /// The phone with the largest outbox and the bytes all phone outboxes hold.
    fn largest(&self) -> (Option<(Peer, usize)>, usize) {
        let mut best: Option<(Peer, usize)> = None;
        let mut total = 0;
        for shard in &self.shards {
            let phones: Vec<Peer> = shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            for phone in phones {
                let queued = phone.queued_bytes();
                total += queued;
                if best.as_ref().is_none_or(|(_, b)| queued > *b) {
                    best = Some((phone, queued));
                }
            }
        }
        (best, total)
    }

    /// One shed decision: close the largest outbox if the budget is reached and phone
    /// outboxes hold at least half of what it holds. Returns whether a phone was closed.
    pub fn shed_once(&self, budget: &Budget) -> bool {
        if !budget.over() {
            return false;
        }
        let (largest, total) = self.largest();
        let Some((phone, queued)) = largest else {
            return false;
        };
        if total.saturating_mul(2) < budget.used() || queued < PAUSE_THRESHOLD {
            return false;
        }
        self.sheds.fetch_add(1, Ordering::Relaxed);
        warn!(
            conn_id = %phone.id(),
            queued,
            "memory budget reached: closing the phone with the largest backlog"
        );
        phone.close_now(Close::BACKLOG_FULL);
        true
    }

    /// Runs until shutdown: each time the budget is reached, sheds until it is not (or until
    /// phone outboxes are not what fills it).
    pub async fn run(self: Arc<Self>, budget: Arc<Budget>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = budget.reached() => {}
                _ = crate::shared::shutdown_signalled(&mut shutdown) => return,
            }
            while self.shed_once(&budget) {
                tokio::time::sleep(SETTLE).await;
            }
            if budget.over() {
                // Readers are paused; wait for relief before looking again.
                tokio::time::sleep(SETTLE * 4).await;
            }
        }
    }
}

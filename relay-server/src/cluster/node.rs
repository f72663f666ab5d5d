//! This node's life in the cluster directory (protocol.md §11): joining, the liveness lease,
//! fencing, and the few decisions the request path asks for.
//!
//! Owns the node's epoch, the set of server-ids it has taken, the per-server-id locks that
//! order a claim against a release on this node, the degraded flag for `/healthz`, and the
//! counters. It never touches a connection: what to close is handed to [`Slots::fence`],
//! and whether a slot is held is asked of [`Slots::holds`] (the registry, in production).
//! Every directory call it makes is bounded by [`NodeConfig::op_timeout`] (2 s), lock
//! waits included, so an unreachable directory costs an upgrade at most that long.
//!
//! # Fencing and the Redis restart
//!
//! §11 says a node that finds its own liveness entry gone closes its binaries and phones
//! with 1012 and rejoins. Taken literally, a Redis restarted without persistence (every
//! liveness entry lost at once) would close every connection of the cluster: a directory
//! blip turned into a full outage, against "Directory unreachable: live connections carry
//! on". So a node that finds its entry gone instead:
//!
//! 1. rejoins with a fresh epoch (claims in between are refused: 503);
//! 2. re-asserts each slot it still holds, by compare-and-set ([`Directory::reassert`]):
//!    an entry that is missing or names this node is rewritten to the new epoch and the
//!    slot lives on; an entry naming another node means that node took it while our lease
//!    was gone, and only that slot is closed with 1012 ([`Slots::fence`]);
//! 3. purges what its previous epoch left in the directory.
//!
//! Why this is safe: another node takes one of our entries only through a claim, and a
//! claim only happens when that server-id's binary connects there, i.e. when our copy of
//! it is stale. Every such slot is found in step 2 (the directory, not timing, says so), so
//! the literal rule's guarantee holds for every slot that was actually taken. A slot
//! nobody took has no competing holder, and keeping it is what a single node would do.
//!
//! Where this departs from the letter of §11 (for the closing note): only slots another
//! node took are closed with 1012, not all of them; and a node never fences itself on its
//! own clock while the directory is unreachable (it keeps serving, as "live connections
//! carry on" requires), so during a partition from Redis alone, a binary that reconnects
//! through a node that does reach Redis can be held twice until the partitioned node
//! reaches Redis again (then 1012) or its stale connection fails its heartbeat.
//!
//! An anti-entropy sweep re-asserts every held slot every few leases and releases the
//! entries of slots no longer held, so entries lost any other way (a failover to a replica
//! that missed writes, an operator's `DEL`) are found too, and a release that failed while
//! the directory was down is retried.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_core::ServerId;
use tokio::sync::{Notify, OwnedMutexGuard};
use tracing::{error, info, warn};

use super::directory::{
    Claim, DirError, Directory, Epoch, Holder, NodeId, Peer, Reassert, Reasserted, Refresh,
};
use super::stats::{ClusterStats, Event, Op, Outcome};

/// The request path's bound on one directory decision (§11: "waits at most 2 s").
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Server-ids per reassert script call: keeps each script short on the Redis side.
const REASSERT_BATCH: usize = 256;
/// Refreshes between two anti-entropy sweeps (every 3 leases at the lease/3 cadence).
const SWEEP_EVERY: u32 = 9;
const LOCK_SHARDS: usize = 1024;

/// What the cluster layer needs from the local registry.
pub trait Slots: Send + Sync + 'static {
    /// This node holds `sid`'s slot, live or in grace.
    fn holds(&self, sid: &ServerId) -> bool;
    /// Another node holds `sid` now: close its binary and phones with 1012 "service
    /// restart" and drop the slot without grace (a grace slot here would catch phones
    /// that belong on the new holder).
    fn fence(&self, sid: &ServerId);
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: NodeId,
    /// `HOST:PORT` peers dial (`--cluster-advertise`).
    pub advertise: String,
    /// `--cluster-lease`.
    pub lease: Duration,
    /// Bound on each directory decision; [`OP_TIMEOUT`] in production.
    pub op_timeout: Duration,
}

/// Why the request path must answer 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    #[error(transparent)]
    Directory(#[from] DirError),
    #[error("not joined to the directory yet")]
    NotJoined,
    #[error("this node's directory lease is gone; rejoining")]
    Fenced,
    #[error("another process joined under this node id")]
    Usurped,
    #[error("this node has left the directory")]
    Left,
}

/// Where a binary's upgrade goes.
pub enum BinaryRoute {
    /// Claim locally (§6 decides). Keep the guard until the registry claim is done: it
    /// keeps a concurrent [`ClusterNode::slot_freed`] of the same server-id from deleting
    /// the entry in between.
    Local(SidGuard),
    /// Forward to this live peer's cluster listener.
    Forward(Peer),
}

/// Where a phone's upgrade goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneRoute {
    /// The local registry decides (it answers 4404 if it has no slot).
    Local,
    Forward(Peer),
}

/// Holds the per-server-id lock of a local claim.
pub struct SidGuard(#[allow(dead_code)] OwnedMutexGuard<()>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    Degraded,
}

impl Health {
    /// The `/healthz` value of `"cluster"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
        }
    }
}

const RUNNING: u8 = 0;
const USURPED: u8 = 1;
const LEFT: u8 = 2;

pub struct ClusterNode<D: Directory> {
    dir: D,
    cfg: NodeConfig,
    slots: Arc<dyn Slots>,
    /// `None` until joined, and while rejoining.
    epoch: Mutex<Option<Epoch>>,
    /// The highest epoch this process ever had: the floor of its next join.
    last_epoch: AtomicU64,
    lifecycle: AtomicU8,
    degraded: AtomicBool,
    /// Server-ids this node took (claimed through the directory or re-asserted), a
    /// superset of what it still holds: the sweep releases the rest.
    owned: Mutex<HashSet<ServerId>>,
    locks: Box<[Arc<tokio::sync::Mutex<()>>]>,
    hasher: RandomState,
    /// Wakes the lease loop early (a claim found us fenced, or leave()).
    wake: Notify,
    stats: ClusterStats,
}

impl<D: Directory> ClusterNode<D> {
    /// A node that has not joined yet; [`run`](Self::run) joins and keeps the lease.
    pub fn new(dir: D, cfg: NodeConfig, slots: Arc<dyn Slots>) -> Arc<Self> {
        Arc::new(ClusterNode {
            dir,
            cfg,
            slots,
            epoch: Mutex::new(None),
            last_epoch: AtomicU64::new(0),
            lifecycle: AtomicU8::new(RUNNING),
            degraded: AtomicBool::new(true),
            owned: Mutex::new(HashSet::new()),
            locks: (0..LOCK_SHARDS)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            hasher: RandomState::new(),
            wake: Notify::new(),
            stats: ClusterStats::default(),
        })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.cfg.node
    }

    pub fn directory(&self) -> &D {
        &self.dir
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// The current epoch, if joined.
    pub fn epoch(&self) -> Option<Epoch> {
        *lock(&self.epoch)
    }

    /// `/healthz` `"cluster"`: degraded while not joined, after a failed directory call
    /// until the next successful one, and for good once usurped.
    pub fn health(&self) -> Health {
        if self.degraded.load(Ordering::Relaxed) || self.epoch().is_none() {
            Health::Degraded
        } else {
            Health::Ok
        }
    }

    /// How many server-ids this node has taken and not released (for tests and metrics).
    pub fn owned_count(&self) -> usize {
        lock(&self.owned).len()
    }

    fn check_running(&self) -> Result<(), Unavailable> {
        match self.lifecycle.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            USURPED => Err(Unavailable::Usurped),
            _ => Err(Unavailable::Left),
        }
    }

    fn sid_lock(&self, sid: &ServerId) -> Arc<tokio::sync::Mutex<()>> {
        let h = self.hasher.hash_one(sid.as_str()) as usize;
        self.locks[h % self.locks.len()].clone()
    }

    /// One directory call, bounded and counted; any answer clears the degraded flag.
    async fn call<T>(
        &self,
        op: Op,
        fut: impl std::future::Future<Output = Result<T, DirError>>,
    ) -> Result<T, DirError> {
        self.call_judged(op, fut, |_| false).await
    }

    /// [`call`](Self::call), counting an answer `refused` says is the directory turning us
    /// down (our lease is gone, or not ours) as [`Outcome::Conflict`].
    async fn call_judged<T>(
        &self,
        op: Op,
        fut: impl std::future::Future<Output = Result<T, DirError>>,
        refused: impl FnOnce(&T) -> bool,
    ) -> Result<T, DirError> {
        let result = match tokio::time::timeout(self.cfg.op_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DirError::Timeout(self.cfg.op_timeout)),
        };
        let outcome = match &result {
            Ok(answer) if refused(answer) => Outcome::Conflict,
            Ok(_) => Outcome::Ok,
            Err(DirError::Timeout(_)) => Outcome::Timeout,
            Err(_) => Outcome::Error,
        };
        self.stats.op(op, outcome);
        self.degraded.store(result.is_err(), Ordering::Relaxed);
        result
    }

    /// §11 "A binary upgrading on node A". A slot this node already holds (live or in
    /// grace) is claimed locally without asking the directory, so reclaims keep working
    /// while it is unreachable; anything else asks the directory (at most `op_timeout`,
    /// lock wait included).
    pub async fn route_binary(&self, sid: &ServerId) -> Result<BinaryRoute, Unavailable> {
        self.check_running()?;
        let deadline = tokio::time::Instant::now() + self.cfg.op_timeout;
        let guard = tokio::time::timeout_at(deadline, self.sid_lock(sid).lock_owned())
            .await
            .map_err(|_| DirError::Timeout(self.cfg.op_timeout))?;
        if self.slots.holds(sid) {
            lock(&self.owned).insert(sid.clone());
            return Ok(BinaryRoute::Local(SidGuard(guard)));
        }
        let Some(epoch) = self.epoch() else {
            return Err(Unavailable::NotJoined);
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let claim = tokio::time::timeout(
            remaining,
            self.call_judged(Op::Claim, self.dir.claim(sid, &self.cfg.node, epoch), |c| {
                matches!(c, Claim::Fenced)
            }),
        )
        .await
        .map_err(|_| DirError::Timeout(self.cfg.op_timeout))??;
        match claim {
            Claim::Ours => {
                lock(&self.owned).insert(sid.clone());
                Ok(BinaryRoute::Local(SidGuard(guard)))
            }
            Claim::Took { from } => {
                if from.is_some() {
                    self.stats.event(Event::Takeover);
                }
                lock(&self.owned).insert(sid.clone());
                Ok(BinaryRoute::Local(SidGuard(guard)))
            }
            Claim::Held(peer) => Ok(BinaryRoute::Forward(peer)),
            Claim::Fenced => {
                // Our lease is gone: have the lease loop notice now, not at its next tick.
                self.wake.notify_one();
                Err(Unavailable::Fenced)
            }
        }
    }

    /// §11 "A phone upgrading on node A". A server-id held here is served here without
    /// asking the directory; otherwise the directory says whether a live peer holds it.
    pub async fn route_phone(&self, sid: &ServerId) -> Result<PhoneRoute, Unavailable> {
        self.check_running()?;
        if self.slots.holds(sid) {
            return Ok(PhoneRoute::Local);
        }
        match self
            .call(Op::Locate, self.dir.locate(sid, &self.cfg.node))
            .await?
        {
            Holder::Peer(peer) => Ok(PhoneRoute::Forward(peer)),
            Holder::Us | Holder::Nobody => Ok(PhoneRoute::Local),
        }
    }

    /// §11 "Release": call when the local slot is freed (grace expired with no reclaim,
    /// or a claim that ended holding nothing). Deletes the entry only if this node no
    /// longer holds the slot, and only if the entry still names this node with its epoch.
    /// If the directory is unreachable the sweep retries later.
    pub async fn slot_freed(&self, sid: &ServerId) {
        let Ok(_guard) =
            tokio::time::timeout(self.cfg.op_timeout, self.sid_lock(sid).lock_owned()).await
        else {
            return;
        };
        self.release_unheld(sid).await;
    }

    /// Under the server-id's lock.
    async fn release_unheld(&self, sid: &ServerId) {
        if self.slots.holds(sid) {
            return;
        }
        let Some(epoch) = self.epoch() else { return };
        if self
            .call(Op::Release, self.dir.release(sid, &self.cfg.node, epoch))
            .await
            .is_ok()
        {
            lock(&self.owned).remove(sid);
        }
    }

    /// SIGTERM (§11): stop the lease loop and delete our liveness entry and entries, before
    /// the connections are closed with 1001. Bounded by `op_timeout`.
    pub async fn leave(&self) {
        if self
            .lifecycle
            .compare_exchange(RUNNING, LEFT, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.lifecycle.store(LEFT, Ordering::Release);
        }
        self.wake.notify_one();
        let epoch = lock(&self.epoch).take();
        if let Some(epoch) = epoch {
            match self
                .call(Op::Leave, self.dir.leave(&self.cfg.node, epoch))
                .await
            {
                Ok(()) => info!(node_id = %self.cfg.node, "left the cluster directory"),
                Err(e) => {
                    warn!(node_id = %self.cfg.node, err = %e, "could not leave the directory; entries lapse with the lease")
                }
            }
        }
    }

    /// The lease loop: joins, refreshes every lease/3 (every lease/10 while the directory
    /// fails), rejoins and re-asserts on fencing, sweeps every few leases. Returns after
    /// [`leave`](Self::leave), or once usurped.
    pub async fn run(self: Arc<Self>) {
        let healthy_every = self.cfg.lease / 3;
        let failing_every = (self.cfg.lease / 10).max(Duration::from_millis(100));
        // Our slots have not all been re-asserted under the current epoch (after a join),
        // or a sweep is due.
        let mut sweep_due = true;
        // A reassert was refused: ask the liveness entry what happened before anything else.
        let mut check_lease = false;
        let mut refreshes = 0u32;
        // Steps taken without sleeping; bounded so a flapping directory cannot spin us.
        let mut eager = 0u32;
        loop {
            if self.check_running().is_err() {
                return;
            }
            let ok = match self.epoch() {
                None => {
                    if self.join().await {
                        sweep_due = true;
                        check_lease = false;
                        eager += 1;
                        if eager < 8 {
                            continue;
                        }
                    }
                    false
                }
                Some(epoch) if sweep_due && !check_lease => match self.sweep(epoch).await {
                    Sweep::Done => {
                        sweep_due = false;
                        refreshes = 0;
                        true
                    }
                    Sweep::Fenced => {
                        check_lease = true;
                        continue;
                    }
                    Sweep::Failed => false,
                },
                Some(epoch) => match self
                    .call_judged(
                        Op::Refresh,
                        self.dir.refresh(&self.cfg.node, epoch, self.cfg.lease),
                        |r| *r != Refresh::Alive,
                    )
                    .await
                {
                    Ok(Refresh::Alive) => {
                        check_lease = false;
                        refreshes += 1;
                        if refreshes >= SWEEP_EVERY {
                            sweep_due = true;
                        }
                        true
                    }
                    Ok(Refresh::Gone) => {
                        self.stats.event(Event::Fenced);
                        warn!(node_id = %self.cfg.node, "directory lease found gone: rejoining and re-asserting slots");
                        self.forget_epoch(epoch);
                        eager += 1;
                        if eager < 8 {
                            continue;
                        }
                        false
                    }
                    Ok(Refresh::Usurped) => {
                        self.usurped();
                        return;
                    }
                    Err(_) => false,
                },
            };
            eager = 0;
            let wait = if ok && !sweep_due {
                healthy_every
            } else if ok {
                Duration::ZERO
            } else {
                failing_every
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => { check_lease = true; }
            }
        }
    }

    /// Re-asserts every slot still held under `epoch`, fences the ones another node took,
    /// releases the entries of the ones no longer held, purges what older epochs left.
    async fn sweep(&self, epoch: Epoch) -> Sweep {
        let owned: Vec<ServerId> = lock(&self.owned).iter().cloned().collect();
        let (held, unheld): (Vec<ServerId>, Vec<ServerId>) =
            owned.into_iter().partition(|sid| self.slots.holds(sid));
        for chunk in held.chunks(REASSERT_BATCH) {
            match self
                .call_judged(
                    Op::Reassert,
                    self.dir.reassert(&self.cfg.node, epoch, chunk),
                    |r| matches!(r, Reassert::Fenced),
                )
                .await
            {
                Ok(Reassert::Done(results)) => {
                    for (sid, r) in chunk.iter().zip(results) {
                        if let Reasserted::Lost { .. } = r {
                            self.stats.event(Event::SlotLost);
                            warn!(node_id = %self.cfg.node, server_id = %sid.as_str(), "another node took this server-id while our lease was gone: closing with 1012");
                            // Under the server-id's lock, so a local claim or a takeover
                            // after a probe is wholly before the fence (and closed by it) or
                            // wholly after (and routed by the directory).
                            let _guard = tokio::time::timeout(
                                self.cfg.op_timeout,
                                self.sid_lock(sid).lock_owned(),
                            )
                            .await;
                            lock(&self.owned).remove(sid);
                            self.slots.fence(sid);
                        }
                    }
                }
                Ok(Reassert::Fenced) => return Sweep::Fenced,
                Err(_) => return Sweep::Failed,
            }
        }
        for sid in &unheld {
            // A claim in progress holds the lock; its slot is the next sweep's business.
            if let Ok(_guard) = self.sid_lock(sid).try_lock_owned() {
                self.release_unheld(sid).await;
            }
        }
        match self
            .call(Op::Purge, self.dir.purge(&self.cfg.node, epoch))
            .await
        {
            Ok(_) => Sweep::Done,
            Err(_) => Sweep::Failed,
        }
    }

    fn usurped(&self) {
        self.lifecycle.store(USURPED, Ordering::Release);
        self.stats.event(Event::Usurped);
        lock(&self.epoch).take();
        error!(node_id = %self.cfg.node, "another process joined the directory under this node id: closing every slot with 1012 and claiming nothing more");
        let owned: Vec<ServerId> = lock(&self.owned).drain().collect();
        for sid in &owned {
            self.slots.fence(sid);
        }
    }

    fn forget_epoch(&self, epoch: Epoch) {
        let mut e = lock(&self.epoch);
        if *e == Some(epoch) {
            *e = None;
        }
    }

    fn set_epoch(&self, epoch: Epoch) {
        self.last_epoch.fetch_max(epoch.0, Ordering::Relaxed);
        if self.check_running().is_ok() {
            *lock(&self.epoch) = Some(epoch);
        }
    }

    /// Joins (or rejoins) under a fresh epoch above any this process had.
    async fn join(&self) -> bool {
        let floor = Epoch(self.last_epoch.load(Ordering::Relaxed));
        match self
            .call(
                Op::Join,
                self.dir
                    .join(&self.cfg.node, &self.cfg.advertise, self.cfg.lease, floor),
            )
            .await
        {
            Ok(epoch) => {
                info!(node_id = %self.cfg.node, addr = %self.cfg.advertise, "joined the cluster directory");
                self.set_epoch(epoch);
                true
            }
            Err(e) => {
                warn!(node_id = %self.cfg.node, err = %e, "cannot reach the cluster directory; retrying");
                false
            }
        }
    }
}

enum Sweep {
    Done,
    /// Our liveness entry does not have this epoch.
    Fenced,
    Failed,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a single insert/remove/read: never left half-done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

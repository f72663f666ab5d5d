//! An in-memory [`Directory`] with the same compare-and-set semantics as the Redis one.
//!
//! Owns the reference semantics of §11's directory in plain Rust: the property test drives
//! it against a model, a differential test checks the Lua scripts agree with it step for
//! step, and node-level tests run on it without a Redis. It must never diverge from
//! `scripts/*.lua`; every rule here has its line there. Time comes from an injected
//! [`Clock`], so lease expiry is driven by the test, never by waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use relay_core::{Clock, ServerId};

use super::directory::{
    Claim, DirError, Directory, Epoch, Holder, NodeId, Peer, Reassert, Reasserted, Refresh,
};

#[derive(Debug, Clone)]
struct Live {
    epoch: Epoch,
    addr: String,
    expires: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    node: NodeId,
    epoch: Epoch,
}

#[derive(Debug, Default)]
struct State {
    counter: u64,
    nodes: BTreeMap<NodeId, Live>,
    entries: BTreeMap<String, Entry>,
    /// Per node, the server-ids it took (Redis: the `owned:` set), for purge and leave.
    owned: BTreeMap<NodeId, BTreeSet<String>>,
}

impl State {
    /// Lazy expiry, like Redis's on access.
    fn expire(&mut self, now: Instant) {
        self.nodes.retain(|_, l| l.expires > now);
    }

    fn live_epoch(&self, node: &NodeId) -> Option<Epoch> {
        self.nodes.get(node).map(|l| l.epoch)
    }

    fn live_peer(&self, entry: &Entry) -> Option<Peer> {
        let l = self.nodes.get(&entry.node)?;
        (l.epoch == entry.epoch).then(|| Peer {
            node: entry.node.clone(),
            addr: l.addr.clone(),
        })
    }

    fn set(&mut self, sid: &str, node: &NodeId, epoch: Epoch) {
        self.entries.insert(
            sid.to_owned(),
            Entry {
                node: node.clone(),
                epoch,
            },
        );
        self.owned
            .entry(node.clone())
            .or_default()
            .insert(sid.to_owned());
    }

    fn unown(&mut self, node: &NodeId, sid: &str) {
        if let Some(set) = self.owned.get_mut(node) {
            set.remove(sid);
            if set.is_empty() {
                self.owned.remove(node);
            }
        }
    }
}

/// What a test can see of one slot entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    pub node: NodeId,
    pub epoch: Epoch,
}

pub struct MemoryDirectory<K: Clock> {
    state: Mutex<State>,
    clock: K,
    down: AtomicBool,
}

impl<K: Clock> MemoryDirectory<K> {
    pub fn new(clock: K) -> Self {
        MemoryDirectory {
            state: Mutex::new(State::default()),
            clock,
            down: AtomicBool::new(false),
        }
    }

    /// While down, every operation fails with [`DirError::Unavailable`] and changes nothing.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// A liveness entry vanishes now, as at lease expiry (or `DEL` in Redis).
    pub fn lapse(&self, node: &NodeId) {
        self.lock().nodes.remove(node);
    }

    /// Everything is lost, as at a Redis restart without persistence.
    pub fn wipe(&self) {
        *self.lock() = State::default();
    }

    /// The slot entry for `sid`, if any (live or not).
    pub fn entry(&self, sid: &str) -> Option<EntryView> {
        self.lock().entries.get(sid).map(|e| EntryView {
            node: e.node.clone(),
            epoch: e.epoch,
        })
    }

    /// The server-ids `node` is recorded as having taken (Redis: its `owned:` set).
    pub fn owned(&self, node: &NodeId) -> Vec<String> {
        self.lock()
            .owned
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The epoch `node`'s liveness entry has now, if it has one.
    pub fn live_epoch(&self, node: &NodeId) -> Option<Epoch> {
        let now = self.clock.now();
        let mut st = self.lock();
        st.expire(now);
        st.live_epoch(node)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent state (every step is applied
        // whole or not at all), so poisoning carries no information here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One atomic step: fails whole while down, else runs `f` on the expired-swept state.
    fn step<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, DirError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(DirError::Unavailable("memory directory is down".into()));
        }
        let now = self.clock.now();
        let mut st = self.lock();
        st.expire(now);
        Ok(f(&mut st))
    }
}

impl<K: Clock> Directory for MemoryDirectory<K> {
    async fn join(
        &self,
        node: &NodeId,
        addr: &str,
        lease: Duration,
        floor: Epoch,
    ) -> Result<Epoch, DirError> {
        let expires = self.clock.now() + lease;
        self.step(|st| {
            st.counter = st.counter.max(floor.0) + 1;
            let epoch = Epoch(st.counter);
            st.nodes.insert(
                node.clone(),
                Live {
                    epoch,
                    addr: addr.to_owned(),
                    expires,
                },
            );
            epoch
        })
    }

    async fn refresh(
        &self,
        node: &NodeId,
        epoch: Epoch,
        lease: Duration,
    ) -> Result<Refresh, DirError> {
        let expires = self.clock.now() + lease;
        self.step(|st| match st.nodes.get_mut(node) {
            None => Refresh::Gone,
            Some(l) if l.epoch != epoch => Refresh::Usurped,
            Some(l) => {
                l.expires = expires;
                Refresh::Alive
            }
        })
    }

    async fn claim(&self, sid: &ServerId, node: &NodeId, epoch: Epoch) -> Result<Claim, DirError> {
        let sid = sid.as_str();
        self.step(|st| {
            if st.live_epoch(node) != Some(epoch) {
                return Claim::Fenced;
            }
            let from = match st.entries.get(sid).cloned() {
                None => None,
                Some(e) if e.node == *node && e.epoch == epoch => return Claim::Ours,
                Some(e) => {
                    if e.node != *node {
                        if let Some(peer) = st.live_peer(&e) {
                            return Claim::Held(peer);
                        }
                    }
                    st.unown(&e.node, sid);
                    Some(e.node)
                }
            };
            st.set(sid, node, epoch);
            Claim::Took { from }
        })
    }

    async fn locate(&self, sid: &ServerId, node: &NodeId) -> Result<Holder, DirError> {
        self.step(|st| match st.entries.get(sid.as_str()) {
            None => Holder::Nobody,
            Some(e) if e.node == *node => Holder::Us,
            Some(e) => st.live_peer(e).map_or(Holder::Nobody, Holder::Peer),
        })
    }

    async fn release(&self, sid: &ServerId, node: &NodeId, epoch: Epoch) -> Result<bool, DirError> {
        let sid = sid.as_str();
        self.step(|st| {
            let ours = st
                .entries
                .get(sid)
                .is_some_and(|e| e.node == *node && e.epoch == epoch);
            if ours {
                st.entries.remove(sid);
                st.unown(node, sid);
            }
            ours
        })
    }

    async fn reassert(
        &self,
        node: &NodeId,
        epoch: Epoch,
        sids: &[ServerId],
    ) -> Result<Reassert, DirError> {
        self.step(|st| {
            if st.live_epoch(node) != Some(epoch) {
                return Reassert::Fenced;
            }
            let out = sids
                .iter()
                .map(|sid| match st.entries.get(sid.as_str()) {
                    Some(e) if e.node != *node => Reasserted::Lost { to: e.node.clone() },
                    _ => {
                        st.set(sid.as_str(), node, epoch);
                        Reasserted::Kept
                    }
                })
                .collect();
            Reassert::Done(out)
        })
    }

    async fn purge(&self, node: &NodeId, epoch: Epoch) -> Result<u64, DirError> {
        self.step(|st| {
            let mut purged = 0;
            for sid in st.owned.remove(node).unwrap_or_default() {
                match st.entries.get(&sid) {
                    Some(e) if e.node == *node && e.epoch != epoch => {
                        st.entries.remove(&sid);
                        purged += 1;
                    }
                    Some(e) if e.node == *node => {
                        st.owned.entry(node.clone()).or_default().insert(sid);
                    }
                    _ => {}
                }
            }
            purged
        })
    }

    async fn leave(&self, node: &NodeId, epoch: Epoch) -> Result<(), DirError> {
        self.step(|st| {
            if st.live_epoch(node) == Some(epoch) {
                st.nodes.remove(node);
            }
            for sid in st.owned.get(node).cloned().unwrap_or_default() {
                if st
                    .entries
                    .get(&sid)
                    .is_some_and(|e| e.node == *node && e.epoch == epoch)
                {
                    st.entries.remove(&sid);
                    st.unown(node, &sid);
                }
            }
        })
    }
}

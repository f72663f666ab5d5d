//! A reference model of the §11 directory, written from protocol.md and docs/scaling.md
//! rather than from either implementation, and the operations tests drive through both.
//!
//! Besides the directory's own state the model tracks what each node *believes*: the
//! server-ids it has been told it holds (claim `Ours`/`Took`, reassert `Kept`) and under
//! which epoch, until it releases, is told `Lost`, or leaves. The safety property of §11
//! is stated over those beliefs: [`Model::check_beliefs`].

#![allow(dead_code)]

use std::collections::BTreeMap;

use relay_core::ServerId;
use relay_server::cluster::directory::{
    Claim, Epoch, Holder, NodeId, Peer, Reassert, Reasserted, Refresh,
};

pub const NODES: usize = 3;
pub const SIDS: usize = 3;
pub const LEASE_MS: u64 = 1000;

pub fn node(i: usize) -> NodeId {
    NodeId::new(&format!("node-{i}")).unwrap()
}

pub fn addr(i: usize) -> String {
    format!("node-{i}.cluster:700{i}")
}

pub fn sid(i: usize) -> ServerId {
    ServerId::parse(format!("server-{i}").as_bytes()).unwrap()
}

#[derive(Clone, Debug)]
pub enum Op {
    Join(usize),
    Refresh(usize),
    /// Time passes (the in-memory directory's clock; not for Redis).
    Advance(u64),
    /// A liveness entry vanishes (expiry, exactly).
    Lapse(usize),
    Claim(usize, usize),
    Locate(usize, usize),
    /// `true`: with an epoch the node had before (a late teardown).
    Release(usize, usize, bool),
    Reassert(usize, Vec<usize>),
    Purge(usize),
    Leave(usize),
    /// The directory loses everything (a Redis restart without persistence).
    Wipe,
}

/// What an operation returned, in one comparable shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Epoch(Epoch),
    Refresh(Refresh),
    Claim(Claim),
    Holder(Holder),
    Released(bool),
    Reassert(Reassert),
    Purged(u64),
    Done,
    /// The operation did not apply (e.g. a stale release by a node with no older epoch).
    Skipped,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub now: u64,
    pub counter: u64,
    pub live: [Option<(Epoch, u64)>; NODES],
    pub entries: [Option<(usize, Epoch)>; SIDS],
    /// The epoch each node's process currently uses.
    pub local: [Option<Epoch>; NODES],
    pub had: [Vec<Epoch>; NODES],
    pub beliefs: [BTreeMap<usize, Epoch>; NODES],
}

impl Model {
    pub fn live_epoch(&self, n: usize) -> Option<Epoch> {
        self.live[n]
            .filter(|(_, exp)| *exp > self.now)
            .map(|(e, _)| e)
    }

    fn sweep(&mut self) {
        for n in 0..NODES {
            if self.live_epoch(n).is_none() {
                self.live[n] = None;
            }
        }
    }

    /// The epoch a node acts with: its current one, else its last, else 0 (never issued).
    pub fn acting_epoch(&self, n: usize) -> Epoch {
        self.local[n]
            .or(self.had[n].last().copied())
            .unwrap_or(Epoch(0))
    }

    pub fn stale_epoch(&self, n: usize) -> Option<Epoch> {
        let cur = self.acting_epoch(n);
        self.had[n].iter().rev().find(|e| **e != cur).copied()
    }

    fn peer(&self, m: usize) -> Peer {
        Peer {
            node: node(m),
            addr: addr(m),
        }
    }

    /// Applies `op` and returns what the directory must answer.
    pub fn apply(&mut self, op: &Op) -> Answer {
        self.sweep();
        match *op {
            Op::Join(n) => {
                let floor = self.had[n].iter().max().copied().unwrap_or(Epoch(0));
                self.counter = self.counter.max(floor.0) + 1;
                let e = Epoch(self.counter);
                self.live[n] = Some((e, self.now + LEASE_MS));
                self.local[n] = Some(e);
                self.had[n].push(e);
                Answer::Epoch(e)
            }
            Op::Refresh(n) => {
                let e = self.acting_epoch(n);
                Answer::Refresh(match self.live_epoch(n) {
                    None => Refresh::Gone,
                    Some(l) if l != e => Refresh::Usurped,
                    Some(_) => {
                        self.live[n] = Some((e, self.now + LEASE_MS));
                        Refresh::Alive
                    }
                })
            }
            Op::Advance(ms) => {
                self.now += ms;
                self.sweep();
                Answer::Done
            }
            Op::Lapse(n) => {
                self.live[n] = None;
                Answer::Done
            }
            Op::Claim(n, s) => {
                let e = self.acting_epoch(n);
                if self.live_epoch(n) != Some(e) {
                    return Answer::Claim(Claim::Fenced);
                }
                let claim = match self.entries[s] {
                    None => Claim::Took { from: None },
                    Some((h, he)) if h == n && he == e => Claim::Ours,
                    Some((h, he)) if h != n && self.live_epoch(h) == Some(he) => {
                        return Answer::Claim(Claim::Held(self.peer(h)))
                    }
                    Some((h, _)) => Claim::Took {
                        from: Some(node(h)),
                    },
                };
                self.entries[s] = Some((n, e));
                self.beliefs[n].insert(s, e);
                Answer::Claim(claim)
            }
            Op::Locate(n, s) => Answer::Holder(match self.entries[s] {
                None => Holder::Nobody,
                Some((h, _)) if h == n => Holder::Us,
                Some((h, he)) if self.live_epoch(h) == Some(he) => Holder::Peer(self.peer(h)),
                Some(_) => Holder::Nobody,
            }),
            Op::Release(n, s, stale) => {
                let e = if stale {
                    match self.stale_epoch(n) {
                        Some(e) => e,
                        None => return Answer::Skipped,
                    }
                } else {
                    self.beliefs[n].remove(&s);
                    self.acting_epoch(n)
                };
                let ours = self.entries[s] == Some((n, e));
                if ours {
                    self.entries[s] = None;
                }
                Answer::Released(ours)
            }
            Op::Reassert(n, ref sids) => {
                let e = self.acting_epoch(n);
                if self.live_epoch(n) != Some(e) {
                    return Answer::Reassert(Reassert::Fenced);
                }
                let out = sids
                    .iter()
                    .map(|&s| match self.entries[s] {
                        Some((h, _)) if h != n => {
                            self.beliefs[n].remove(&s);
                            Reasserted::Lost { to: node(h) }
                        }
                        _ => {
                            self.entries[s] = Some((n, e));
                            self.beliefs[n].insert(s, e);
                            Reasserted::Kept
                        }
                    })
                    .collect();
                Answer::Reassert(Reassert::Done(out))
            }
            Op::Purge(n) => {
                let e = self.acting_epoch(n);
                let mut purged = 0;
                for entry in &mut self.entries {
                    if matches!(*entry, Some((h, he)) if h == n && he != e) {
                        *entry = None;
                        purged += 1;
                    }
                }
                Answer::Purged(purged)
            }
            Op::Leave(n) => {
                let e = self.acting_epoch(n);
                if self.live_epoch(n) == Some(e) {
                    self.live[n] = None;
                }
                for entry in &mut self.entries {
                    if *entry == Some((n, e)) {
                        *entry = None;
                    }
                }
                self.local[n] = None;
                self.beliefs[n].clear();
                Answer::Done
            }
            Op::Wipe => {
                self.counter = 0;
                self.live = Default::default();
                self.entries = Default::default();
                Answer::Done
            }
        }
    }

    /// §11's safety property: for every server-id, at most one node believes it holds it
    /// under the epoch it is live with now, and if one does, the directory names exactly
    /// that node and epoch (so claims elsewhere are forwarded to it, never take it).
    pub fn check_beliefs(&self) -> Result<(), String> {
        for s in 0..SIDS {
            let current: Vec<(usize, Epoch)> = (0..NODES)
                .filter_map(|n| {
                    let e = *self.beliefs[n].get(&s)?;
                    (self.live_epoch(n) == Some(e)).then_some((n, e))
                })
                .collect();
            match current.as_slice() {
                [] => {}
                [(n, e)] => {
                    if self.entries[s] != Some((*n, *e)) {
                        return Err(format!(
                            "server-{s}: node-{n} holds it under live epoch {e} but the entry is {:?}",
                            self.entries[s]
                        ));
                    }
                }
                many => return Err(format!("server-{s}: held by {many:?} at once")),
            }
        }
        Ok(())
    }

    /// A `Held` answer points at a node that believes it holds the server-id.
    pub fn check_held(&self, op: &Op, answer: &Answer) -> Result<(), String> {
        if let (Op::Claim(_, s), Answer::Claim(Claim::Held(peer))) = (op, answer) {
            let h = (0..NODES)
                .find(|&m| node(m) == peer.node)
                .ok_or("unknown node")?;
            if self.beliefs[h].get(s) != self.live_epoch(h).as_ref() {
                return Err(format!(
                    "forwarded to node-{h}, which does not hold server-{s}"
                ));
            }
        }
        Ok(())
    }
}

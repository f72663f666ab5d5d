//! The cluster directory's contract (protocol.md §11): which node holds each server-id's
//! slot, which nodes are alive, and the compare-and-set operations that change either.
//!
//! Owns the [`Directory`] trait and its value types. Two implementations share these
//! semantics exactly: [`RedisDirectory`](super::redis::RedisDirectory) (Lua scripts, one
//! atomic step each) and [`MemoryDirectory`](super::memory::MemoryDirectory) (the reference
//! the property test drives). Nothing here knows about sockets, timers or the registry, and
//! no operation is ever a read followed by a write from the caller: each one is decided
//! inside the directory in one step, so the directory, not timing, decides who wins.
//!
//! # The data
//!
//! - **Liveness entry** per node: its current [`Epoch`] and advertise address, expiring
//!   `lease` after the last [`join`](Directory::join) or [`refresh`](Directory::refresh).
//! - **Slot entry** per server-id: the node holding it (live or in grace) and the epoch that
//!   node had when it took the entry.
//!
//! An entry is **live** when its node's liveness entry exists *with the same epoch*. A node
//! that restarts under the same name gets a fresh epoch, so its previous life's entries are
//! dead (claimable) at once, without waiting for a lease.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use relay_core::ServerId;

/// A node's name in the directory (`--node-id`): 1–64 of `[A-Za-z0-9._-]`, so it can go
/// into a key and a log line as it is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn new(raw: &str) -> Result<NodeId, InvalidNodeId> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(NodeId(raw.into()))
        } else {
            Err(InvalidNodeId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a node id is 1-64 of A-Z a-z 0-9 . _ -")]
pub struct InvalidNodeId;

/// One life of a node in the directory. Drawn from a directory-wide counter at every
/// [`join`](Directory::join), and always above the floor the joiner passes, so a node that
/// rejoins never gets back an epoch it had (even after the counter was lost with a Redis
/// restart). Only ever compared for equality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a liveness refresh found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// The entry was there with our epoch; its expiry is pushed back by a lease.
    Alive,
    /// The entry is gone: our lease lapsed (pause, partition) or the directory lost it
    /// (restart without persistence). Fencing starts here (§11).
    Gone,
    /// Another process joined under our node id (a newer epoch): we are not this node any more.
    Usurped,
}

/// A live peer holding a server-id, and where its cluster listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: NodeId,
    /// `HOST:PORT` (`--cluster-advertise`).
    pub addr: String,
}

/// The outcome of a binary's claim (§11 "A binary upgrading on node A").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The entry already named us with our epoch: claim locally (§6 decides).
    Ours,
    /// There was no entry, or it named a dead node (`from`: which one; our own previous
    /// epoch included): the entry now names us with our epoch. Claim locally.
    Took { from: Option<NodeId> },
    /// A live other node holds it: forward the connection there.
    Held(Peer),
    /// Our own liveness entry is gone or not ours: we may not take anything under this
    /// epoch (it would be dead on arrival). Nothing was changed.
    Fenced,
}

/// Who holds a server-id, as a phone upgrade asks it (§11 "A phone upgrading on node A").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// No entry, or its node is dead: nobody routes this server-id anywhere else.
    Nobody,
    /// The entry names this node (any epoch): the local registry decides.
    Us,
    /// A live other node holds it.
    Peer(Peer),
}

/// Per server-id outcome of [`Directory::reassert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reasserted {
    /// The entry was missing or named us (any epoch); it now names us with the new epoch.
    Kept,
    /// Another node took it while our lease was gone: close our slot with 1012 (§11).
    Lost { to: NodeId },
}

/// The outcome of a whole [`Directory::reassert`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reassert {
    /// One outcome per server-id, in the order given.
    Done(Vec<Reasserted>),
    /// Our liveness entry is not the epoch given: nothing was changed.
    Fenced,
}

/// The directory could not answer. Every variant means "unknown outcome": a caller that
/// gets one must not assume the operation did or did not happen (a timed-out claim may
/// have taken the entry), which is why every operation is safe to repeat.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirError {
    #[error("directory unreachable: {0}")]
    Unavailable(String),
    #[error("directory did not answer within {0:?}")]
    Timeout(Duration),
    #[error("directory answered something unexpected: {0}")]
    Protocol(String),
}

/// The compare-and-set operations of §11. Every method is one atomic step in the
/// directory and is idempotent for the same arguments, so a caller may retry after a
/// [`DirError`].
pub trait Directory: Send + Sync + 'static {
    /// Starts a new life for `node`: a fresh epoch above `floor`, a liveness entry with
    /// `addr` that expires after `lease`. Replaces any entry under this name (a previous
    /// life, or a process still running under the same id, which then sees
    /// [`Refresh::Usurped`]).
    fn join(
        &self,
        node: &NodeId,
        addr: &str,
        lease: Duration,
        floor: Epoch,
    ) -> impl Future<Output = Result<Epoch, DirError>> + Send;

    /// Pushes our liveness entry's expiry back by `lease`, only if it is there with `epoch`.
    fn refresh(
        &self,
        node: &NodeId,
        epoch: Epoch,
        lease: Duration,
    ) -> impl Future<Output = Result<Refresh, DirError>> + Send;

    /// A binary for `sid` upgrades on `node` (§11): take a missing or dead entry, report a
    /// live holder, or confirm ours. Refused ([`Claim::Fenced`]) unless `node` is live
    /// with `epoch`.
    fn claim(
        &self,
        sid: &ServerId,
        node: &NodeId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<Claim, DirError>> + Send;

    /// A phone for `sid` upgrades on `node`: who holds it. Changes nothing.
    fn locate(
        &self,
        sid: &ServerId,
        node: &NodeId,
    ) -> impl Future<Output = Result<Holder, DirError>> + Send;

    /// `node` freed the slot (§11 "Release"): delete the entry only if it still names
    /// `node` with `epoch`. True if it was deleted.
    fn release(
        &self,
        sid: &ServerId,
        node: &NodeId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<bool, DirError>> + Send;

    /// After a rejoin under `epoch`, the slots `node` still holds locally: every entry that
    /// is missing or names `node` is rewritten to `epoch`; one naming another node is
    /// reported lost and left alone. Refused unless `node` is live with `epoch`.
    fn reassert(
        &self,
        node: &NodeId,
        epoch: Epoch,
        sids: &[ServerId],
    ) -> impl Future<Output = Result<Reassert, DirError>> + Send;

    /// Deletes every entry naming `node` with an epoch other than `epoch` (what a previous
    /// life left). Returns how many.
    fn purge(
        &self,
        node: &NodeId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<u64, DirError>> + Send;

    /// SIGTERM (§11): deletes every entry naming `node` with `epoch`, and our liveness
    /// entry if it still has `epoch`, so reconnecting binaries claim elsewhere at once.
    fn leave(
        &self,
        node: &NodeId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<(), DirError>> + Send;
}

/// One directory shared by several users in a process (tests run two nodes on one).
impl<D: Directory> Directory for Arc<D> {
    fn join(
        &self,
        node: &NodeId,
        addr: &str,
        lease: Duration,
        floor: Epoch,
    ) -> impl Future<Output = Result<Epoch, DirError>> + Send {
        (**self).join(node, addr, lease, floor)
    }
    fn refresh(
        &self,
        node: &NodeId,
        epoch: Epoch,
        lease: Duration,
    ) -> impl Future<Output = Result<Refresh, DirError>> + Send {
        (**self).refresh(node, epoch, lease)
    }
    fn claim(
        &self,
        sid: &ServerId,
        node: &NodeId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<Claim, DirError>> + Send {
        (**self).claim(sid, node, epoch)
    }
    fn locate(
        &self,
        sid: &ServerId,
        node: &NodeId,
    ) -> impl Future<Output = Result<Holder, DirError>> + Send {
        (**self).locate(sid, node)
    }
    fn release(
        &self,
        sid: &ServerId,
        node: &NodeId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<bool, DirError>> + Send {
        (**self).release(sid, node, epoch)
    }
    fn reassert(
        &self,
        node: &NodeId,
        epoch: Epoch,
        sids: &[ServerId],
    ) -> impl Future<Output = Result<Reassert, DirError>> + Send {
        (**self).reassert(node, epoch, sids)
    }
    fn purge(
        &self,
        node: &NodeId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<u64, DirError>> + Send {
        (**self).purge(node, epoch)
    }
    fn leave(
        &self,
        node: &NodeId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<(), DirError>> + Send {
        (**self).leave(node, epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_key_safe() {
        assert!(NodeId::new("relay-a.1_b").is_ok());
        for bad in ["", "a:b", "a b", "a/b", &"x".repeat(65)] {
            assert_eq!(NodeId::new(bad), Err(InvalidNodeId), "{bad:?}");
        }
    }
}

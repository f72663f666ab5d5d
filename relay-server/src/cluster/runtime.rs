//! Cluster mode inside a running relay (protocol.md §11): what `Shared` carries when the mode
//! is on, the registry seen through [`Slots`], and the values the request path hands from
//! the routing decision to the upgrade.
//!
//! Owns the glue and nothing of the decisions: the node decides where a connection goes
//! ([`super::node`]), the registry decides §6 as on a single node, `http.rs` answers. It
//! never runs with cluster mode off: `Shared::cluster()` is `None` then, and no request
//! touches anything here.

use std::sync::Arc;

use relay_core::{Registry, ServerId, SystemClock};

use super::node::{BinaryRoute, ClusterNode, SidGuard, Slots};
use super::redis::RedisDirectory;
use super::secret::ClusterSecret;
use crate::admission::ip::{IpSlot, Refusal};
use crate::metrics::{Endpoint, UpgradeOutcome};
use crate::shared::Shared;
use crate::ws::peer::Peer;

/// The node as the relay runs it: the Redis directory.
pub type Node = ClusterNode<RedisDirectory>;

/// Cluster mode's state in `Shared`.
pub struct Cluster {
    pub node: Arc<Node>,
    /// Authenticates the link header of forwarded connections, both ways.
    pub secret: ClusterSecret,
}

/// The registry as the node sees it.
pub struct RegistrySlots(pub Arc<Registry<Peer, SystemClock>>);

impl Slots for RegistrySlots {
    fn holds(&self, sid: &ServerId) -> bool {
        self.0.holds(sid.as_str())
    }

    fn fence(&self, sid: &ServerId) {
        // Closed with 1012 after the registry's locks are gone, like every other outcome.
        if let Some(mut fenced) = self.0.fence(sid) {
            fenced.apply();
        }
    }
}

/// A binary's local claim in the making: the node's per-server-id lock, held from the
/// directory's answer until the registry claim is made (so a release of the same server-id
/// cannot delete the entry in between). If the upgrade is refused before the registry claim
/// (cap, headers), dropping it frees the entry the claim may have taken ([`Node::slot_freed`]
/// does nothing if the slot turns out to be held here).
pub struct LocalClaim {
    guard: Option<SidGuard>,
    sid: ServerId,
    node: Arc<Node>,
    claimed: bool,
}

impl LocalClaim {
    pub fn new(guard: SidGuard, sid: ServerId, node: Arc<Node>) -> Self {
        LocalClaim {
            guard: Some(guard),
            sid,
            node,
            claimed: false,
        }
    }

    /// The registry claim is made: release the lock, keep the entry.
    pub fn claimed(mut self) {
        self.claimed = true;
    }
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        // The lock goes first: slot_freed takes it.
        drop(self.guard.take());
        if !self.claimed {
            let (node, sid) = (self.node.clone(), self.sid.clone());
            tokio::spawn(async move { node.slot_freed(&sid).await });
        }
    }
}

/// Before a takeover (§6.2: the incumbent failed the probe), in cluster mode: the probe took
/// a while, and meanwhile this node may have been fenced for the server-id (another node took
/// it, §11). `Ok` with the node's lock (held through the takeover, so a fence cannot slip in
/// between) if the slot is still this node's to give; `Err` if the directory now routes the
/// server-id elsewhere or cannot say: the newcomer is closed 1012 and reconnects to be routed
/// afresh. A single node gets `Ok(None)` at once.
pub async fn before_takeover(shared: &Shared, sid: &ServerId) -> Result<Option<SidGuard>, ()> {
    let Some(cluster) = shared.cluster() else {
        return Ok(None);
    };
    match cluster.node.route_binary(sid).await {
        Ok(BinaryRoute::Local(guard)) => Ok(Some(guard)),
        Ok(BinaryRoute::Forward(_)) | Err(_) => {
            shared
                .metrics
                .upgrades
                .inc(Endpoint::Server, UpgradeOutcome::RejectUnavailable);
            Err(())
        }
    }
}

/// What the routing decision tells the upgrade (`http.rs`), for a request it has routed:
/// on the edge, after the Host check and per-IP admission it applied; on the cluster
/// listener, for a request a peer forwarded here.
pub enum Prerouted {
    /// Serve here. `ip_slot` is the per-IP share the edge took (`None` on the cluster
    /// listener: the forwarding node applied the per-IP limits, §11); `claim` is a binary's.
    Local {
        ip_slot: Option<IpSlot>,
        claim: Option<LocalClaim>,
    },
    /// Over a per-IP limit (429).
    Refused(Refusal),
    /// The directory could not answer within its bound, or the holder could not be reached,
    /// or a forwarded request would have to be forwarded again: 503 (§11).
    Unavailable,
}

//! Cluster mode (protocol.md §11): several relay nodes sharing a directory in Redis, with
//! connections for a server-id held elsewhere spliced to the node that holds it.
//!
//! - [`directory`] — the compare-and-set contract; [`redis`] and [`memory`] implement it.
//! - [`node`] — this node's lease, fencing, and the request path's three questions (where does
//!   this binary go, where does this phone go, this slot is free).
//! - [`link`] — the PROXY v2 header with its HMAC that a forwarding node sends, and its check.
//! - [`forward`] — the byte splice between a client and the holder's cluster listener.
//! - [`secret`] — `--cluster-secret-file` loading rules.
//! - [`stats`] — counters.
//! - [`runtime`] — cluster mode in a running relay: the registry as [`Slots`], what the
//!   routing decision hands the upgrade.
//! - [`head`] — the first request read before hyper, and its replay.
//! - [`edge`] — a client connection's routing: served here, or spliced to its holder.
//! - [`inbound`] — the cluster listener: connections forwarded by peers.
//!
//! With cluster mode off nothing here runs: no task, no connection, and the
//! request path asks nothing of it.

pub mod directory;
pub mod edge;
pub mod forward;
pub mod head;
pub mod inbound;
pub mod link;
pub mod memory;
pub mod node;
pub mod redis;
pub mod runtime;
pub mod secret;
pub mod stats;

pub use directory::{Directory, Epoch, NodeId, Peer};
pub use node::{BinaryRoute, ClusterNode, Health, NodeConfig, PhoneRoute, Slots, Unavailable};

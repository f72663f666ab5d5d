//! The transport-agnostic core of the pyrycode relay.
//!
//! A relay routes messages between the one binary (desktop daemon) that holds a server-id and
//! that server-id's phones. This crate decides everything that does not need a socket: who
//! holds a server-id ([`Registry`]), grace and reclaim, the routing envelope ([`envelope`]),
//! upgrade header rules ([`headers`]), close codes ([`close`]) and connection ids. It has no
//! async runtime and does no I/O; time comes in through an injected [`Clock`].
//!
//! The wire contract these modules implement is `protocol.md`; sections are cited as §N.

pub mod clock;
pub mod close;
pub mod conn;
pub mod envelope;
pub mod headers;
pub mod json;
pub mod registry;
mod sync;

pub use clock::{Clock, ManualClock, SystemClock};
pub use close::{Close, CloseCode};
pub use conn::{Conn, ConnId, SendError};
pub use headers::{HeaderError, ServerId};
pub use registry::{
    Backlog, BinaryLease, Claim, Claimed, Counts, Departure, Expiry, Fenced, GraceTicket, Held,
    HeldItem, Incumbent, Installed, Notice, PhoneLease, ReclaimPolicy, Registration, Registry,
    RegistryConfig, ToBinary,
};

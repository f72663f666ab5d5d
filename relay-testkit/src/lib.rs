//! Test kit for the pyrycode relay.
//!
//! - [`mock`]: a mock [`relay_core::Conn`] that records what it was sent and how it was closed.
//! - [`client`] (feature `net`): fake binary and fake phone over a real WebSocket client
//!   (tokio-tungstenite, a different implementation from the server's fastwebsockets).
//! - [`raw`] (feature `net`): a raw TCP client that can misbehave on purpose.
//! - [`echo`] and [`load`] (feature `net`): the direct-echo baseline server and the load generator.

pub mod mock;

#[cfg(feature = "net")]
pub mod client;
#[cfg(feature = "net")]
pub mod echo;
#[cfg(feature = "net")]
pub mod load;
#[cfg(feature = "net")]
pub mod raw;

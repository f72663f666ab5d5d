//! One WebSocket connection, either role: the reader (frames in), the peer (its queue and the
//! [`relay_core::Conn`] the registry holds), the writer task (frames out) and the session that
//! runs them together.
//!
//! The hot path reads in one sitting: `reader` → the role's routing step (`roles/`) → the
//! other connection's `peer` queue → its `writer`.

pub mod frame;
mod heartbeat;
pub mod peer;
pub mod reader;
pub mod session;
pub mod writer;

//! The pyrycode relay server: [`relay_core`] wired to sockets with hyper and fastwebsockets.
//!
//! One file per concern: `http` (routes, header rules, upgrade), `session` (one connection's
//! reader loop), `reader` (frames to messages), `deadline` (the per-message read deadline),
//! `peer` (outbox, writer, liveness), `binary` and `phone` (the two roles), `server` (accept
//! loop, shutdown), `config` and `logging` (the command line).

pub mod binary;
pub mod config;
pub mod deadline;
pub mod http;
pub mod logging;
pub mod options;
pub mod peer;
pub mod phone;
pub mod reader;
pub mod server;
pub mod session;
pub mod shared;
pub mod stats;

pub use options::RelayOptions;
pub use server::{Relay, ShutdownHandle};

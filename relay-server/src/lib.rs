//! The pyrycode relay server: [`relay_core`] wired to sockets with hyper.
//!
//! The directory listing is the architecture: `config/` (flags and boot errors, one file per
//! subsystem), `listen/` (listeners, TLS, PROXY v2, the Host check, the stream split),
//! `admission/` (limits and the memory budget), `server` (accept loops, handshake deadline,
//! shutdown), `http` (routes, header rules, upgrade,
//! `/healthz`), `ws/` (one connection: reader, peer queue, writer, session), `roles/` (what a
//! binary and a phone do with their messages), `push/` (push wake through FCM, §4.4),
//! `metrics/` (the §10 series and their listener), `logging`.

pub mod admission;
pub mod cluster;
pub mod config;
pub mod faults;
pub mod http;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod push;
pub mod roles;
pub mod server;
pub mod shared;
pub mod ws;

pub use options::RelayOptions;
pub use server::{Relay, ShutdownHandle};

//! Test kit for the pyrycode relay.
//!
//! - [`mock`]: a mock [`relay_core::Conn`] that records what it was sent and how it was closed;
//!   [`ManualClock`]: time that only moves when a test says so.
//! - [`client`] (feature `net`): fake binary and fake phone over a real WebSocket client
//!   (tokio-tungstenite, a different implementation from the server's fastwebsockets).
//! - [`raw`] (feature `net`): a raw client that can misbehave on purpose.
//! - [`tls`] (feature `net`): which addresses speak TLS, for all of the above; test certificates.
//! - [`echo`] and [`load`] (feature `net`): the direct-echo baseline server and the load generator.
//! - [`fcm`] (feature `net`): a stand-in for Google's token endpoint and FCM HTTP v1 over real
//!   HTTPS, with a test-only service-account key, for push wake (§4.4).
//! - [`services`]: finding the real programs (Pebble, Redis, HAProxy) that some tests need.
//! - [`pebble`] (feature `net`): a real Pebble ACME CA with its DNS server, for ACME tests.
//! - [`scratch`]: a temporary directory removed on drop.

pub mod mock;

/// The manual clock tests advance by hand. It lives in relay-core (so relay-core's own loom
/// and unit tests can use it without this crate's network dependencies) and is re-exported
/// here beside the mock conn.
pub use relay_core::clock::ManualClock;

#[cfg(feature = "net")]
pub mod client;
#[cfg(feature = "net")]
pub mod echo;
#[cfg(feature = "net")]
pub mod fcm;
#[cfg(feature = "net")]
pub mod load;
#[cfg(feature = "net")]
pub mod pebble;
#[cfg(feature = "net")]
pub mod raw;
pub mod scratch;
#[cfg(feature = "net")]
pub mod tls;

pub mod secrets;
pub mod services;

//! Starts a relay in-process on an ephemeral port, with short timings, for end-to-end tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relay_server::shared::Shared;
use relay_server::{Relay, RelayOptions, ShutdownHandle};
use relay_testkit::client::FakeBinary;
use tokio::task::JoinHandle;

pub struct TestRelay {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub shutdown: ShutdownHandle,
    pub join: JoinHandle<bool>,
}

impl TestRelay {
    /// Shuts down and returns whether every connection drained in time.
    pub async fn stop(self) -> bool {
        self.shutdown.shutdown();
        self.join.await.unwrap_or(false)
    }
}

/// Short timings so tests finish fast; each test overrides what it exercises.
pub fn fast_opts() -> RelayOptions {
    RelayOptions {
        grace_period: Duration::from_secs(5),
        conflict_probe_timeout: Duration::from_millis(500),
        heartbeat_interval: Duration::from_secs(5),
        heartbeat_timeout: Duration::from_secs(5),
        message_read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(3),
        ..RelayOptions::default()
    }
}

pub async fn start(opts: RelayOptions) -> TestRelay {
    let relay = Relay::bind("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .expect("bind an ephemeral port");
    let addr = relay.local_addr().unwrap();
    let shared = relay.shared();
    let shutdown = relay.shutdown_handle();
    let join = tokio::spawn(relay.run());
    TestRelay {
        addr,
        shared,
        shutdown,
        join,
    }
}

/// Polls `cond` every 10 ms for up to 5 s: for states reached through another task
/// (registry counts after a disconnect), never for timing assertions.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Connects a fake binary and checks it holds `server_id` (the claim is made before the 101
/// goes out, §6.1; the wait only guards against a conflict or a slow test machine).
pub async fn binary_for(relay: &TestRelay, server_id: &str) -> FakeBinary {
    let binary = FakeBinary::connect(relay.addr, server_id)
        .await
        .expect("binary upgrade");
    eventually("the binary holds its server-id", || {
        relay.shared.registry.binary(server_id).is_some()
    })
    .await;
    binary
}

pub mod process;

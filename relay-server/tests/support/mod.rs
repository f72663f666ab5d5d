//! Starts a relay in-process on an ephemeral port, with short timings, for end-to-end tests.
//!
//! **Both transports, one suite.** In a test binary whose name ends in `_over_tls` (each is two
//! lines: `#[path = "e2e_x.rs"] mod suite;`), or with `RELAY_E2E_TRANSPORT=tls` in the
//! environment, [`start`] serves TLS instead of plain TCP (a certificate made for 127.0.0.1 per
//! test process) and registers the address with `relay_testkit::tls`, so every client of the
//! tests (`FakeBinary`, `FakePhone`, `RawClient`, `relay_testkit::tls::connect`) speaks TLS to
//! it unchanged: `cargo test` runs every e2e test over both transports.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use relay_server::listen::tls::{self, CertResolver, TlsTransport};
use relay_server::listen::Transport;
use relay_server::shared::Shared;
use relay_server::{Relay, RelayOptions, ShutdownHandle};
use relay_testkit::client::FakeBinary;
use relay_testkit::tls::TestCertificate;
use tokio::task::JoinHandle;

/// `tls` runs any e2e binary over TLS (see the module docs).
pub const TRANSPORT_ENV: &str = "RELAY_E2E_TRANSPORT";

/// Whether this test process runs its relays over TLS.
pub fn over_tls() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_over_tls")
        || std::env::var(TRANSPORT_ENV).is_ok_and(|v| v == "tls")
}

/// The certificate every TLS relay of this process serves (names: 127.0.0.1, localhost, ::1).
pub fn test_certificate() -> &'static TestCertificate {
    static CERT: OnceLock<TestCertificate> = OnceLock::new();
    CERT.get_or_init(|| relay_testkit::tls::test_certificate(&["127.0.0.1", "localhost", "::1"]))
}

/// A TLS transport serving [`test_certificate`], as manual mode would (§9).
pub fn tls_transport(proxy_protocol: bool) -> (Transport, Arc<CertResolver>) {
    tls_transport_for(test_certificate(), proxy_protocol)
}

/// A TLS transport serving `cert` (its names are the Host check's names).
pub fn tls_transport_for(
    cert: &TestCertificate,
    proxy_protocol: bool,
) -> (Transport, Arc<CertResolver>) {
    let key = tls::certified(vec![cert.der.clone()], cert.key_der()).expect("test key");
    let resolver = Arc::new(CertResolver::fixed(key));
    let transport = Transport::Tls(TlsTransport {
        config: tls::server_config(resolver.clone(), &[tls::ALPN_HTTP1]),
        hosts: resolver.clone(),
        proxy_protocol,
    });
    (transport, resolver)
}

pub struct TestRelay {
    pub addr: SocketAddr,
    /// Whether it serves TLS ([`over_tls`]).
    pub tls: bool,
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

/// A relay on an ephemeral loopback port, over the transport this process runs ([`over_tls`]).
pub async fn start(opts: RelayOptions) -> TestRelay {
    let transport = if over_tls() {
        tls_transport(false).0
    } else {
        Transport::Plain
    };
    start_with(transport, opts).await
}

/// A relay on an ephemeral loopback port speaking `transport`; TLS addresses are registered
/// with `relay_testkit::tls` so clients speak TLS to them.
pub async fn start_with(transport: Transport, opts: RelayOptions) -> TestRelay {
    let tls = matches!(transport, Transport::Tls(_));
    let relay = Relay::bind_with("127.0.0.1:0".parse().unwrap(), transport, opts)
        .await
        .expect("bind an ephemeral port");
    let addr = relay.local_addr().unwrap();
    if tls {
        relay_testkit::tls::speak_tls(addr, &[test_certificate().der.clone()]);
    }
    let shared = relay.shared();
    let shutdown = relay.shutdown_handle();
    let join = tokio::spawn(relay.run());
    TestRelay {
        addr,
        tls,
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

/// Guards the mechanism itself, in every binary that uses this module: its relays speak the
/// transport [`over_tls`] says (a TLS handshake succeeds, or plain HTTP is answered).
#[tokio::test]
async fn relays_of_this_binary_serve_the_chosen_transport() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = start(fast_opts()).await;
    assert_eq!(relay.tls, over_tls());
    let mut stream = relay_testkit::tls::connect(relay.addr)
        .await
        .expect("connect (and a TLS handshake when over TLS)");
    assert_eq!(stream.is_tls(), over_tls());
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
}

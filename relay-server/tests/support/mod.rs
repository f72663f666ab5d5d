//! Starts a relay in-process on an ephemeral port, with short timings, for end-to-end tests.
//!
//! **Both transports, one suite.** In a test binary whose name ends in `_over_tls` (each is two
//! lines: `#[path = "e2e_x.rs"] mod suite;`), or with `RELAY_E2E_TRANSPORT=tls` in the
//! environment, [`start`] serves TLS instead of plain TCP (a certificate made for 127.0.0.1 per
//! test process) and registers the address with `relay_testkit::tls`, so every client of the
//! tests (`FakeBinary`, `FakePhone`, `RawClient`, `relay_testkit::tls::connect`) speaks TLS to
//! it unchanged: `cargo test` runs every e2e test over both transports.
#![allow(dead_code)]

pub mod hygiene;
pub mod real;

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
    /// The relay's `/metrics` listener (§10), on an ephemeral loopback port.
    pub metrics_addr: SocketAddr,
    /// Whether it serves TLS ([`over_tls`]).
    pub tls: bool,
    pub shared: Arc<Shared>,
    pub shutdown: ShutdownHandle,
    join: Option<JoinHandle<bool>>,
}

impl TestRelay {
    /// Shuts down and returns whether every connection drained in time.
    pub async fn stop(mut self) -> bool {
        self.shutdown.shutdown();
        match self.join.take() {
            Some(join) => join.await.unwrap_or(false),
            None => false,
        }
    }
}

impl Drop for TestRelay {
    /// Every test that ran a relay also checks the log lines the suite produced so far.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            hygiene::assert_clean();
        }
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
        // Every test client comes from 127.0.0.1: per-IP limits are tested on their own.
        rate_limit_per_minute: 1_000_000,
        rate_limit_burst: 1_000_000,
        max_connections_per_ip: 1_000_000,
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
    hygiene::install();
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
    let metrics =
        relay_server::metrics::serve::MetricsListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind the metrics listener");
    let metrics_addr = metrics.local_addr().unwrap();
    tokio::spawn(metrics.run(shared.clone()));
    let join = tokio::spawn(relay.run());
    TestRelay {
        addr,
        metrics_addr,
        tls,
        shared,
        shutdown,
        join: Some(join),
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

/// One scrape of `/metrics`: every sample, by its name and labels as printed.
#[derive(Clone, Debug, Default)]
pub struct Scrape(pub std::collections::BTreeMap<String, f64>);

impl Scrape {
    pub async fn of(relay: &TestRelay) -> Scrape {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(relay.metrics_addr)
            .await
            .expect("connect to /metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).expect("UTF-8 scrape");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        Scrape::parse(body)
    }

    pub fn parse(body: &str) -> Scrape {
        let mut map = std::collections::BTreeMap::new();
        for line in body.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, value) = line.rsplit_once(' ').expect("sample value");
            map.insert(name.to_owned(), value.parse().expect("numeric sample"));
        }
        Scrape(map)
    }

    pub fn get(&self, sample: &str) -> f64 {
        *self
            .0
            .get(sample)
            .unwrap_or_else(|| panic!("no sample {sample} in the scrape"))
    }

    /// Counters (`_total`) that changed since `before`, with their deltas; process CPU time
    /// is left out (it moves by itself).
    pub fn moved_since(&self, before: &Scrape) -> std::collections::BTreeMap<String, f64> {
        self.0
            .iter()
            .filter(|(k, _)| {
                let name = k.split('{').next().unwrap_or(k);
                name.ends_with("_total") && name != "process_cpu_seconds_total"
            })
            .filter_map(|(k, v)| {
                let d = v - before.0.get(k).copied().unwrap_or(0.0);
                (d != 0.0).then(|| (k.clone(), d))
            })
            .collect()
    }
}

/// Waits until every counter of `expected` has moved by its delta since `before`, then checks
/// that nothing else moved and that the listed gauges (names without `_total`) moved by theirs.
pub async fn assert_moved(relay: &TestRelay, before: &Scrape, expected: &[(&str, f64)]) -> Scrape {
    let want: std::collections::BTreeMap<String, f64> =
        expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let gauge = |k: &str| !k.split('{').next().unwrap_or(k).ends_with("_total");
    let mut last = None;
    for _ in 0..500 {
        let now = Scrape::of(relay).await;
        let counters_ok = want.iter().filter(|(k, _)| !gauge(k)).all(|(k, v)| {
            now.0.get(k).copied().unwrap_or(0.0) - before.0.get(k).copied().unwrap_or(0.0) == *v
        });
        let gauges_ok = want
            .iter()
            .filter(|(k, _)| gauge(k))
            .all(|(k, v)| now.get(k) - before.get(k) == *v);
        if counters_ok && gauges_ok {
            let moved = now.moved_since(before);
            let counters: std::collections::BTreeMap<String, f64> =
                want.into_iter().filter(|(k, _)| !gauge(k)).collect();
            assert_eq!(moved, counters, "exactly these counters moved");
            return now;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let now = last.unwrap();
    panic!(
        "metrics did not reach {expected:?}; counters moved: {:?}",
        now.moved_since(before)
    );
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

pub mod process;

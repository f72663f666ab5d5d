//! A relay must not depend on anyone reading its logs (issue 11): with stderr a pipe whose
//! reader went away (EPIPE), or one whose reader never reads (a full pipe), binaries and phones
//! still connect and route both ways, counts return to zero when they leave, dropped lines
//! are counted, and SIGTERM still exits 0 in time.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use support::real::{round_trip, RELAY};
use support::Scrape;

const SHUTDOWN: Duration = Duration::from_secs(2);

/// The child, killed when the test ends however it ends.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the relay with stderr piped and reads up to its startup line.
fn start(rust_log: &str) -> (Relay, BufReader<ChildStderr>, SocketAddr, SocketAddr) {
    let mut child = Command::new(RELAY)
        .args([
            "--insecure-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--shutdown-timeout",
            "2s",
            "--rate-limit-burst",
            "100000",
            "--rate-limit-per-minute",
            "100000",
        ])
        .env_clear()
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay-server");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "relay exited early"
        );
        if line.contains("listening addr=") {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let field = |name: &str| -> SocketAddr {
        let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (addr, metrics) = (field("addr"), field("metrics_addr"));
    (Relay(child), stderr, addr, metrics)
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// Pairs connect, route both ways and leave, several times; then the counts are back at 0.
async fn still_serves(addr: SocketAddr) {
    for _ in 0..5 {
        let (binary, phone) = round_trip(addr).await;
        let health = http_get(addr, "/healthz").await;
        assert!(
            health.contains("\"connected_binaries\":1")
                && health.contains("\"connected_phones\":1"),
            "{health}"
        );
        drop(phone);
        drop(binary);
        counts_back_to_zero(addr).await;
    }
}

async fn counts_back_to_zero(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = http_get(addr, "/healthz").await;
        if health.contains("\"connected_binaries\":0") && health.contains("\"connected_phones\":0")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counts did not return to 0: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sigterm_exits_0_in_time(relay: &mut Relay) {
    let child = &mut relay.0;
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            assert!(
                t0.elapsed() <= SHUTDOWN + Duration::from_secs(1),
                "{:?}",
                t0.elapsed()
            );
            return;
        }
        assert!(
            t0.elapsed() < SHUTDOWN + Duration::from_secs(3),
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_goes_away_costs_nothing_but_the_lines() {
    let (mut child, stderr, addr, metrics) = start("debug");
    // The log collector goes away: every later write to stderr is EPIPE.
    drop(stderr);
    still_serves(addr).await;
    let body = http_get(metrics, "/metrics").await;
    let dropped = Scrape::parse(&body).get("pyrycode_relay_log_lines_dropped_total");
    assert!(dropped > 0.0, "lost lines are counted");
    // A live connection at shutdown still gets its 1001 and the process exits 0.
    let (mut binary, _phone) = round_trip(addr).await;
    let closer = tokio::spawn(async move { binary.expect_close().await });
    sigterm_exits_0_in_time(&mut child).await;
    assert_eq!(
        closer.await.unwrap().unwrap(),
        (1001, "shutting down".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_stops_reading_never_blocks_the_relay() {
    // The pipe fills (64 KiB) and stays full: writes would block forever.
    let (mut child, stderr, addr, metrics) = start("trace");
    // A binary whose every envelope names an unknown conn_id: one debug line each, far more
    // than the pipe and the queue in front of it hold.
    let (mut binary, phone) = round_trip(addr).await;
    for _ in 0..20_000 {
        binary
            .send_to("c-00000000000000000000000000000000", "1")
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = http_get(metrics, "/metrics").await;
        if Scrape::parse(&body).get("pyrycode_relay_log_lines_dropped_total") > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the log queue never filled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((binary, phone));
    counts_back_to_zero(addr).await;
    // The relay serves on regardless.
    still_serves(addr).await;
    sigterm_exits_0_in_time(&mut child).await;
    drop(stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_in_time_whatever_is_stuck() {
    // Issue 11: a dead log sink, writers blocked on full sockets, peers that never answer the
    // close: SIGTERM still exits 0 within --shutdown-timeout plus a second.
    use relay_testkit::client::{fresh_server_id, FakeBinary};
    use relay_testkit::raw::{RawClient, RawOptions};
    let (mut child, stderr, addr, _metrics) = start("debug");
    drop(stderr);
    let sid = fresh_server_id();
    let mut binary = FakeBinary::connect(addr, &sid).await.unwrap();
    // Phones that never read, with tiny receive buffers; their binary fills their outboxes
    // so their writers sit blocked in a write.
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let mut p = RawClient::connect_with(
            addr,
            "/v1/client",
            &[
                ("X-Pyrycode-Server", sid.as_bytes()),
                ("User-Agent", b"stuck/1"),
            ],
            RawOptions {
                recv_buffer_size: Some(4096),
                ..RawOptions::default()
            },
        )
        .await
        .unwrap();
        p.send_text("\"hi\"").await.unwrap();
        let id = binary.recv_envelope().await.unwrap().conn_id;
        stuck.push((p, id));
    }
    let block = format!("\"{}\"", "z".repeat(60 << 10));
    for _ in 0..40 {
        for (_, id) in &stuck {
            binary.send_to(id, &block).await.unwrap();
        }
    }
    // A raw binary that will never answer the relay's close frame.
    let _silent = RawClient::connect(
        addr,
        "/v1/server",
        &[
            ("X-Pyrycode-Server", fresh_server_id().as_str()),
            ("X-Pyrycode-Version", "1"),
            ("User-Agent", "silent/1"),
        ],
    )
    .await
    .unwrap();
    sigterm_exits_0_in_time(&mut child).await;
    drop((stuck, binary));
}

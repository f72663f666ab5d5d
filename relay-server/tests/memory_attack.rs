//! The memory attack of issue 8, against the real binary (protocol.md §8): binaries that
//! never read while their phones flood them with 250 KiB messages, and binaries flooding
//! phones that never read. The relay's RSS stays under `--max-buffered-bytes` plus a fixed
//! allowance per connection, and honest server-ids keep routing with bounded latency.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use relay_testkit::raw::{RawClient, RawOptions};
use support::real::Running;

const BUDGET_MIB: u64 = 32;
const NON_READING_BINARIES: usize = 20;
const PHONES_EACH: usize = 8;
const STALLED_PHONES: usize = 10;
const HONEST: usize = 4;
/// What each connection may hold beyond the budget: the 64 KiB a connection is always read
/// up to (§8), one message being read, and its fixed structures.
const ALLOWANCE_PER_CONNECTION: u64 = (64 << 10) + (256 << 10) + (16 << 10);

fn big(n: usize) -> String {
    let head = format!("{{\"n\":{n},\"x\":\"");
    format!("{head}{}\"}}", "x".repeat((250 << 10) - head.len() - 2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_cannot_take_more_than_the_budget_and_honest_ones_keep_routing() {
    let mut relay = Running::spawn(
        &[
            "--insecure-listen",
            "127.0.0.1:0",
            "--max-buffered-bytes",
            &format!("{BUDGET_MIB}MiB"),
            "--max-connections-per-ip",
            "100000",
            "--rate-limit-burst",
            "100000",
            "--rate-limit-per-minute",
            "100000",
            "--heartbeat-interval",
            "60s",
            "--heartbeat-timeout",
            "60s",
            "--write-timeout",
            "60s",
        ],
        &[],
    );
    let (addr, _) = relay.listening();
    let baseline = relay.rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    // Binaries that never read; their phones flood them.
    let mut silent_binaries = Vec::new();
    for _ in 0..NON_READING_BINARIES {
        let sid = fresh_server_id();
        silent_binaries.push(
            FakeBinary::builder(addr, &sid)
                .recv_buffer_size(4096)
                .connect()
                .await
                .unwrap(),
        );
        for _ in 0..PHONES_EACH {
            let mut phone = FakePhone::builder(addr, &sid)
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .unwrap();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    if phone.send_text(&big(n)).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    n += 1;
                }
            }));
        }
    }
    // Binaries flooding phones that never read.
    let mut stalled = Vec::new();
    for _ in 0..STALLED_PHONES {
        let sid = fresh_server_id();
        let mut binary = FakeBinary::builder(addr, &sid)
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        let mut phone = RawClient::connect_with(
            addr,
            "/v1/client",
            &[
                ("X-Pyrycode-Server", sid.as_bytes()),
                ("User-Agent", b"stalled/1"),
            ],
            RawOptions {
                recv_buffer_size: Some(4096),
                ..RawOptions::default()
            },
        )
        .await
        .unwrap();
        phone.send_text("\"hello\"").await.unwrap();
        let conn_id = binary.recv_envelope().await.unwrap().conn_id;
        stalled.push(phone);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let block = format!("\"{}\"", "y".repeat((250 << 10) - 2));
            while !stop.load(Ordering::Relaxed) {
                if binary.send_to(&conn_id, &block).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            drop(binary);
        }));
    }

    // Honest pairs measure round trips while the attack runs.
    let mut pairs = Vec::new();
    for _ in 0..HONEST {
        let sid = fresh_server_id();
        let b = FakeBinary::connect(addr, &sid).await.unwrap();
        let p = FakePhone::connect(addr, &sid).await.unwrap();
        pairs.push((b, p));
    }
    let connections =
        (NON_READING_BINARIES * (1 + PHONES_EACH) + STALLED_PHONES * 2 + HONEST * 2) as u64;
    let ceiling = baseline + (BUDGET_MIB << 20) + connections * ALLOWANCE_PER_CONNECTION;
    let mut samples = Vec::new();
    let mut peak = 0;
    let attack = Instant::now();
    let mut i = 0u64;
    while attack.elapsed() < Duration::from_secs(8) {
        for (binary, phone) in &mut pairs {
            let t0 = Instant::now();
            phone.send_text(&format!("{{\"i\":{i}}}")).await.unwrap();
            let env = binary.recv_envelope().await.unwrap();
            assert_eq!(env.frame(), Some(format!("{{\"i\":{i}}}").as_str()));
            binary
                .send_to(&env.conn_id, &format!("{{\"r\":{i}}}"))
                .await
                .unwrap();
            assert_eq!(phone.recv_text().await.unwrap(), format!("{{\"r\":{i}}}"));
            samples.push(t0.elapsed());
        }
        peak = peak.max(relay.rss_bytes());
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    samples.sort();
    let p95 = samples[samples.len() * 95 / 100];
    let p50 = samples[samples.len() / 2];
    println!(
        "memory attack: {connections} connections; relay RSS peak {} MiB (idle {} MiB, ceiling \
         {} MiB = budget {BUDGET_MIB} MiB + {} KiB per connection); honest round trips \
         p50 {p50:?} p95 {p95:?} max {:?} over {} samples",
        peak >> 20,
        baseline >> 20,
        ceiling >> 20,
        ALLOWANCE_PER_CONNECTION >> 10,
        samples.last().unwrap(),
        samples.len(),
    );
    assert!(peak <= ceiling, "RSS peaked at {peak}, over {ceiling}");
    assert!(p95 < Duration::from_millis(500), "honest p95 {p95:?}");
    for t in tasks {
        t.abort();
    }
    drop((silent_binaries, stalled, pairs));
}

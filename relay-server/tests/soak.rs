//! A churn soak against the real binary (issue 11): binaries and phones connecting, routing,
//! closing cleanly, vanishing without a close, reclaiming during grace and breaking limits, at
//! random, concurrently. At the end `/healthz` counts what is connected (nothing), the
//! process's open files and RSS are back near their baseline, and every well-behaved pair lost
//! and reordered nothing.
//!
//! About 45 s by default (CI); longer on demand: `SOAK_SECS=600 cargo test -p relay-server
//! --release --test soak -- --nocapture`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use relay_testkit::raw::{OpCode, RawClient};
use support::real::Running;

const WORKERS: usize = 24;
const GRACE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    messages: AtomicU64,
    episodes: [AtomicU64; 6],
}

/// A small deterministic generator (xorshift64*): the soak is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn connect_pair(addr: SocketAddr, t: &Tally) -> (FakeBinary, FakePhone, String, String) {
    let sid = fresh_server_id();
    let binary = FakeBinary::connect(addr, &sid).await.expect("binary");
    let mut phone = FakePhone::connect(addr, &sid).await.expect("phone");
    phone.send_text("\"hello\"").await.unwrap();
    let mut binary = binary;
    let env = binary.recv_envelope().await.unwrap();
    t.connections.fetch_add(2, Ordering::Relaxed);
    (binary, phone, sid, env.conn_id)
}

/// `n` messages each way, every one checked for order and completeness.
async fn route(binary: &mut FakeBinary, phone: &mut FakePhone, conn_id: &str, n: u64, t: &Tally) {
    for i in 0..n {
        phone.send_text(&format!("{{\"up\":{i}}}")).await.unwrap();
    }
    for i in 0..n {
        let env = binary.recv_envelope().await.unwrap();
        assert_eq!(
            env.frame(),
            Some(format!("{{\"up\":{i}}}").as_str()),
            "phone→binary order"
        );
        binary
            .send_to(conn_id, &format!("{{\"down\":{i}}}"))
            .await
            .unwrap();
    }
    for i in 0..n {
        assert_eq!(
            phone.recv_text().await.unwrap(),
            format!("{{\"down\":{i}}}"),
            "binary→phone order"
        );
    }
    t.messages.fetch_add(2 * n, Ordering::Relaxed);
}

async fn episode(addr: SocketAddr, rng: &mut Rng, t: &Tally) {
    let kind = rng.below(6) as usize;
    t.episodes[kind].fetch_add(1, Ordering::Relaxed);
    match kind {
        // A well-behaved pair that closes cleanly.
        0 | 1 => {
            let (mut b, mut p, _, c) = connect_pair(addr, t).await;
            route(&mut b, &mut p, &c, 1 + rng.below(20), t).await;
            p.close(1000).await.unwrap();
            let notice = b.recv_envelope().await.unwrap();
            assert!(notice.is_close_notice());
            b.close(1000).await.unwrap();
        }
        // Peers that vanish without a close.
        2 => {
            let (mut b, mut p, _, c) = connect_pair(addr, t).await;
            route(&mut b, &mut p, &c, 1 + rng.below(5), t).await;
            if rng.below(2) == 0 {
                p.abort();
                b.abort();
            } else {
                b.abort();
                // The phone waits out the grace period: 1011 "binary did not reconnect".
                p.set_timeout(GRACE * 3);
                assert_eq!(p.expect_close().await.unwrap().0, 1011);
            }
        }
        // The binary drops and reclaims during grace; its phone is evicted (4404) and a new
        // phone routes with the new binary.
        3 => {
            let (b, mut p, sid, _) = connect_pair(addr, t).await;
            b.abort();
            tokio::time::sleep(Duration::from_millis(50 + rng.below(300))).await;
            let mut again = FakeBinary::connect(addr, &sid).await.expect("reclaim");
            t.connections.fetch_add(1, Ordering::Relaxed);
            assert_eq!(p.expect_close().await.unwrap().0, 4404);
            let mut fresh = FakePhone::connect(addr, &sid).await.unwrap();
            t.connections.fetch_add(1, Ordering::Relaxed);
            fresh.send_text("\"hello\"").await.unwrap();
            let c = again.recv_envelope().await.unwrap().conn_id;
            route(&mut again, &mut fresh, &c, 1 + rng.below(10), t).await;
            fresh.close(1000).await.unwrap();
            again.abort();
        }
        // Limits: a message too big, one that is not JSON, a phone over the per-server cap.
        4 => {
            let (mut b, _p, sid, _) = connect_pair(addr, t).await;
            let mut big = FakePhone::connect(addr, &sid).await.unwrap();
            t.connections.fetch_add(1, Ordering::Relaxed);
            big.send_text(&format!("\"{}\"", "x".repeat(8 << 10)))
                .await
                .unwrap();
            assert_eq!(big.expect_close().await.unwrap().0, 1009);
            let mut raw = RawClient::connect(
                addr,
                "/v1/client",
                &[
                    ("X-Pyrycode-Server", sid.as_str()),
                    ("User-Agent", "soak-raw/1"),
                ],
            )
            .await
            .unwrap();
            t.connections.fetch_add(1, Ordering::Relaxed);
            raw.send_frame(true, OpCode::Text, b"not json")
                .await
                .unwrap();
            assert_eq!(raw.read_until_close().await.unwrap().0, 1007);
            let mut extra = Vec::new();
            for _ in 0..3 {
                extra.push(FakePhone::connect(addr, &sid).await.unwrap());
                t.connections.fetch_add(1, Ordering::Relaxed);
            }
            assert_eq!(extra[2].expect_close().await.unwrap().0, 4429);
            b.close(1000).await.unwrap();
        }
        // A binary whose envelopes are malformed or for nobody: dropped, the binary stays.
        _ => {
            let (mut b, mut p, _, c) = connect_pair(addr, t).await;
            b.send_text("{\"frame\":1}").await.unwrap();
            b.send_to("c-00000000000000000000000000000000", "1")
                .await
                .unwrap();
            route(&mut b, &mut p, &c, 3, t).await;
            b.abort();
            p.abort();
        }
    }
}

async fn healthz(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_churn_leaves_nothing_behind() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let mut relay = Running::spawn(
        &[
            "--insecure-listen",
            "127.0.0.1:0",
            "--grace-period",
            "2s",
            "--max-message-size",
            "4KiB",
            "--phone-outbox-bytes",
            "64KiB",
            "--phones-per-server",
            "3",
            "--rate-limit-per-minute",
            "1000000",
            "--rate-limit-burst",
            "1000000",
            "--max-connections-per-ip",
            "1000000",
        ],
        &[],
    );
    let (addr, _) = relay.listening();
    // Baseline after one warm-up round, so first-use allocations do not count as growth.
    let t = Arc::new(Tally::default());
    episode(addr, &mut Rng(7), &t).await;
    tokio::time::sleep(GRACE * 2).await;
    let (fds0, rss0) = (relay.open_fds(), relay.rss_bytes());

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let t = t.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9 ^ ((w as u64 + 1) * 0x1234_5678));
            while Instant::now() < deadline {
                episode(addr, &mut rng, &t).await;
            }
        }));
    }
    let mut peak_rss = 0;
    let mut peak_fds = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        peak_rss = peak_rss.max(relay.rss_bytes());
        peak_fds = peak_fds.max(relay.open_fds());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in workers {
        w.await.expect("every episode held its checks");
    }

    // Everything left; grace periods run out.
    let settle = Instant::now() + GRACE * 5;
    loop {
        let h = healthz(addr).await;
        if h.contains("\"connected_binaries\":0") && h.contains("\"connected_phones\":0") {
            break;
        }
        assert!(Instant::now() < settle, "counts never returned to 0: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(GRACE).await;
    let (fds1, rss1) = (relay.open_fds(), relay.rss_bytes());
    let e: Vec<u64> = t
        .episodes
        .iter()
        .map(|e| e.load(Ordering::Relaxed))
        .collect();
    println!(
        "soak: {secs} s, {WORKERS} workers, {} connections opened, {} messages routed and \
         checked; episodes clean/vanish/reclaim/limits/malformed = {}/{}/{}/{}/{}; open fds \
         {fds0} → peak {peak_fds} → {fds1}; RSS {} KiB → peak {} KiB → {} KiB",
        t.connections.load(Ordering::Relaxed),
        t.messages.load(Ordering::Relaxed),
        e[0] + e[1],
        e[2],
        e[3],
        e[4],
        e[5],
        rss0 >> 10,
        peak_rss >> 10,
        rss1 >> 10,
    );
    assert!(fds1 <= fds0 + 2, "open files {fds0} → {fds1}");
    assert!(
        rss1 <= rss0 + rss0 / 2 + (8 << 20),
        "RSS did not come back near its baseline: {rss0} → {rss1}"
    );
}

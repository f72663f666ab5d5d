//! A connection flood against the real binary (protocol.md §8): many loopback source
//! addresses open connections as fast as they can. Per-IP caps and rate hold for each
//! address, the global cap holds, the relay's RSS stays bounded, and honest binaries and
//! phones on other addresses keep connecting and routing throughout, losing nothing.

mod support;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use support::real::Running;
use support::Scrape;

const PER_IP: usize = 20;
const BURST: usize = 30;
const PER_MINUTE: usize = 120;
const MAX_CONNECTIONS: usize = 1600;

fn from(third: u8, last: u8) -> IpAddr {
    IpAddr::from([127, 0, third, last])
}

/// Tries `attempts` binaries from `from` as fast as it can; returns the ones accepted and
/// the statuses of the refusals.
async fn flood_from(
    relay: std::net::SocketAddr,
    from: IpAddr,
    attempts: usize,
) -> (Vec<FakeBinary>, Vec<u16>) {
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..attempts {
        match FakeBinary::builder(relay, &fresh_server_id())
            .source(from)
            .timeout(Duration::from_secs(20))
            .connect()
            .await
        {
            Ok(b) => held.push(b),
            Err(e) => refused.push(e.status().unwrap_or(0)),
        }
    }
    (held, refused)
}

async fn scrape(relay: std::net::SocketAddr) -> Scrape {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(relay).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    Scrape::parse(text.split_once("\r\n\r\n").unwrap().1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_many_addresses_is_held_to_its_limits_while_honest_clients_route() {
    let mut relay = Running::spawn(
        &[
            "--insecure-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--max-connections-per-ip",
            &PER_IP.to_string(),
            "--rate-limit-burst",
            &BURST.to_string(),
            "--rate-limit-per-minute",
            &PER_MINUTE.to_string(),
            "--max-connections",
            &MAX_CONNECTIONS.to_string(),
            "--heartbeat-interval",
            "60s",
        ],
        &[],
    );
    let (addr, _) = relay.listening();
    let metrics = relay.metrics_addr().expect("metrics on");
    let baseline_rss = relay.rss_bytes();

    // An honest pair on its own address routes a message each way every 20 ms throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let routed = Arc::new(AtomicU64::new(0));
    let honest = tokio::spawn({
        let (stop, routed) = (stop.clone(), routed.clone());
        async move {
            let sid = fresh_server_id();
            let mut binary = FakeBinary::builder(addr, &sid)
                .source(addr_of(250))
                .connect()
                .await
                .unwrap();
            let mut phone = FakePhone::builder(addr, &sid)
                .source(addr_of(251))
                .connect()
                .await
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                phone.send_text(&format!("{{\"i\":{i}}}")).await.unwrap();
                let env = binary.recv_envelope().await.unwrap();
                assert_eq!(
                    env.frame(),
                    Some(format!("{{\"i\":{i}}}").as_str()),
                    "in order, nothing lost"
                );
                binary
                    .send_to(&env.conn_id, &format!("{{\"r\":{i}}}"))
                    .await
                    .unwrap();
                assert_eq!(phone.recv_text().await.unwrap(), format!("{{\"r\":{i}}}"));
                routed.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (binary, phone)
        }
    });

    // Phase 1: 60 addresses, 60 attempts each. Each keeps exactly its live cap.
    let t0 = Instant::now();
    let mut floods = Vec::new();
    for last in 1..=60u8 {
        floods.push(tokio::spawn(flood_from(addr, from(2, last), 60)));
    }
    // Meanwhile new honest pairs keep connecting, each from a fresh address.
    let mut newcomers = Vec::new();
    for n in 0..20u8 {
        let sid = fresh_server_id();
        let mut b = FakeBinary::builder(addr, &sid)
            .source(from(3, 2 * n + 1))
            .connect()
            .await
            .expect("an honest binary connects during the flood");
        let mut p = FakePhone::builder(addr, &sid)
            .source(from(3, 2 * n + 2))
            .connect()
            .await
            .expect("an honest phone connects during the flood");
        p.send_text("\"hi\"").await.unwrap();
        assert_eq!(b.recv_envelope().await.unwrap().frame(), Some("\"hi\""));
        newcomers.push((b, p));
    }
    let mut flood_held = Vec::new();
    for f in floods {
        let (held, refused) = f.await.unwrap();
        let elapsed = t0.elapsed().as_secs_f64();
        assert_eq!(
            held.len(),
            PER_IP,
            "each address keeps exactly its live cap"
        );
        assert!(refused.iter().all(|s| *s == 429), "{refused:?}");
        let allowed_by_rate = BURST as f64 + PER_MINUTE as f64 * elapsed / 60.0;
        assert!((held.len() as f64) <= allowed_by_rate);
        flood_held.extend(held);
    }

    // The rate holds on its own: an address that closes each connection at once is still
    // held to its burst plus the refill.
    let rate_from = from(4, 1);
    let t1 = Instant::now();
    let mut accepted = 0usize;
    for _ in 0..80 {
        if let Ok(b) = FakeBinary::builder(addr, &fresh_server_id())
            .source(rate_from)
            .connect()
            .await
        {
            accepted += 1;
            b.abort();
        }
    }
    let allowed = BURST as f64 + PER_MINUTE as f64 * t1.elapsed().as_secs_f64() / 60.0 + 1.0;
    assert!(
        accepted as f64 <= allowed,
        "{accepted} accepted, rate allows {allowed}"
    );
    assert!(
        accepted >= BURST,
        "the burst itself is admitted: {accepted}"
    );

    // Phase 2: 40 more addresses push past the global cap: the cap holds, refusals are 503.
    let mut floods = Vec::new();
    for last in 1..=40u8 {
        floods.push(tokio::spawn(flood_from(addr, from(5, last), PER_IP)));
    }
    let mut over_cap = 0;
    for f in floods {
        let (held, refused) = f.await.unwrap();
        over_cap += refused.iter().filter(|s| **s == 503).count();
        assert!(
            refused.iter().all(|s| *s == 503 || *s == 429),
            "{refused:?}"
        );
        flood_held.extend(held);
    }
    let s = scrape(metrics).await;
    let live = s.get("pyrycode_relay_connections");
    assert!(live <= MAX_CONNECTIONS as f64, "{live} live over the cap");
    assert!(over_cap > 0, "the flood reached the global cap");
    assert!(
        s.get(r#"pyrycode_relay_admission_refusals_total{limit="connections"}"#) >= over_cap as f64
    );

    // RSS stays bounded: at most 48 KiB per live connection over the idle relay.
    let rss = relay.rss_bytes();
    println!(
        "flood: {live} live connections, {over_cap} refused 503 at the cap; relay RSS {} KiB \
         (idle {} KiB, {:.1} KiB per connection)",
        rss >> 10,
        baseline_rss >> 10,
        (rss.saturating_sub(baseline_rss)) as f64 / live / 1024.0
    );
    let bound = baseline_rss + (live as u64) * (48 << 10);
    assert!(
        rss <= bound,
        "RSS {rss} over {bound} for {live} connections"
    );

    // The honest pair routed all along, and still does.
    let before = routed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(routed.load(Ordering::Relaxed) > before);
    stop.store(true, Ordering::Relaxed);
    let _pair = honest.await.unwrap();

    // Everything the flood held is released when it leaves.
    for b in flood_held {
        b.abort();
    }
    drop(newcomers);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(metrics).await;
        if s.get("pyrycode_relay_connections") <= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections not released: {}",
            s.get("pyrycode_relay_connections")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn addr_of(last: u8) -> IpAddr {
    from(6, last)
}

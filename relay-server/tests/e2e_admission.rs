//! §8 per-IP admission through real sockets: clients bound to 127.0.0.2, 127.0.0.3, ... so
//! each address is its own client. Rate and live caps per address, XFF only when trusted,
//! IPv6 per /64, `/healthz` never limited, and refusals that cost the registry nothing.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use relay_server::RelayOptions;
use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use support::{assert_moved, binary_for, Scrape};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn per_ip(per_minute: u32, burst: u32, max: usize) -> RelayOptions {
    RelayOptions {
        rate_limit_per_minute: per_minute,
        rate_limit_burst: burst,
        max_connections_per_ip: max,
        ..support::fast_opts()
    }
}

async fn binary_from(relay: &support::TestRelay, from: &str) -> Result<FakeBinary, u16> {
    FakeBinary::builder(relay.addr, &fresh_server_id())
        .source(ip(from))
        .connect()
        .await
        .map_err(|e| e.status().unwrap_or(0))
}

#[tokio::test]
async fn each_address_gets_its_burst_then_429_and_other_addresses_are_unaffected() {
    // §8: upgrades per client IP, --rate-limit-burst then --rate-limit-per-minute; HTTP 429
    // with an empty body.
    let relay = support::start(per_ip(1, 3, 1000)).await;
    let s0 = Scrape::of(&relay).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            binary_from(&relay, "127.0.0.2")
                .await
                .expect("within the burst"),
        );
    }
    let refused = FakeBinary::builder(relay.addr, &fresh_server_id())
        .source(ip("127.0.0.2"))
        .refused()
        .await
        .unwrap();
    assert_eq!((refused.status, refused.body_len()), (429, 0));
    // Another address has its own bucket; a phone's upgrade counts like a binary's.
    held.push(binary_from(&relay, "127.0.0.3").await.unwrap());
    assert_moved(
        &relay,
        &s0,
        &[
            (r#"pyrycode_relay_ws_upgrade_attempts_total{endpoint="server",outcome="accept"}"#, 4.0),
            (r#"pyrycode_relay_ws_upgrade_attempts_total{endpoint="server",outcome="reject_rate_limit"}"#, 1.0),
            (r#"pyrycode_relay_admission_refusals_total{limit="rate_per_ip"}"#, 1.0),
            (r#"pyrycode_relay_register_failures_total{kind="ratelimit"}"#, 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn live_connections_per_address_are_capped_and_every_exit_frees_the_slot() {
    // §8: "A connection slot is held for the whole life of the connection and freed on every
    // exit path."
    let relay = support::start(per_ip(1_000_000, 1_000_000, 2)).await;
    let sid = fresh_server_id();
    let _binary = binary_for(&relay, &sid).await;
    let a = FakePhone::builder(relay.addr, &sid)
        .source(ip("127.0.0.4"))
        .connect()
        .await
        .unwrap();
    let mut b = FakePhone::builder(relay.addr, &sid)
        .source(ip("127.0.0.4"))
        .connect()
        .await
        .unwrap();
    let refused = FakePhone::builder(relay.addr, &sid)
        .source(ip("127.0.0.4"))
        .refused()
        .await
        .unwrap();
    assert_eq!((refused.status, refused.body_len()), (429, 0));
    assert_eq!(
        relay.shared.registry.phones(&sid).len(),
        2,
        "a refusal registers nothing"
    );

    // One leaves by closing, one by vanishing: both slots come back.
    b.close(1000).await.unwrap();
    a.abort();
    support::eventually("both slots freed", || {
        relay.shared.per_ip.live(ip("127.0.0.4")) == 0
    })
    .await;
    let mut again = Vec::new();
    for _ in 0..2 {
        again.push(
            FakePhone::builder(relay.addr, &sid)
                .source(ip("127.0.0.4"))
                .connect()
                .await
                .unwrap(),
        );
    }
    // A 4404 (no server) also frees its slot at once.
    let mut lonely = FakePhone::builder(relay.addr, &fresh_server_id())
        .source(ip("127.0.0.5"))
        .connect()
        .await
        .unwrap();
    assert_eq!(lonely.expect_close().await.unwrap().0, 4404);
    support::eventually("4404 frees its slot", || {
        relay.shared.per_ip.live(ip("127.0.0.5")) == 0
    })
    .await;
}

#[tokio::test]
async fn x_forwarded_for_is_the_client_only_when_trusted() {
    // §8: "only with --trust-x-forwarded-for, the left-most X-Forwarded-For entry".
    for trusted in [false, true] {
        let relay = support::start(RelayOptions {
            trust_x_forwarded_for: trusted,
            ..per_ip(1, 1, 1000)
        })
        .await;
        let first = FakeBinary::builder(relay.addr, &fresh_server_id())
            .header("X-Forwarded-For", "203.0.113.7, 10.0.0.1")
            .connect()
            .await;
        assert!(first.is_ok());
        // Same socket address, another forwarded client.
        let second = FakeBinary::builder(relay.addr, &fresh_server_id())
            .header("X-Forwarded-For", "198.51.100.9")
            .connect()
            .await;
        assert_eq!(second.is_ok(), trusted, "trusted={trusted}");
        // The same forwarded client again: over its burst either way.
        let third = FakeBinary::builder(relay.addr, &fresh_server_id())
            .header("X-Forwarded-For", "203.0.113.7")
            .refused()
            .await
            .unwrap();
        assert_eq!(third.status, 429);
    }
}

#[tokio::test]
async fn ipv6_clients_are_limited_per_64() {
    // §8: "IPv6 clients are limited per /64 prefix". Loopback has one IPv6 address, so the
    // clients here are forwarded ones.
    let relay = support::start(RelayOptions {
        trust_x_forwarded_for: true,
        ..per_ip(1, 1, 1000)
    })
    .await;
    let from = |xff: &'static str| {
        FakeBinary::builder(relay.addr, &fresh_server_id()).header("X-Forwarded-For", xff)
    };
    let _a = from("2001:db8:1:2::1").connect().await.unwrap();
    assert_eq!(
        from("[2001:db8:1:2:ffff::42]:443")
            .refused()
            .await
            .unwrap()
            .status,
        429,
        "same /64"
    );
    let _b = from("2001:db8:1:3::1").connect().await.unwrap();
}

#[tokio::test]
async fn healthz_is_never_limited() {
    let relay = support::start(per_ip(1, 1, 1)).await;
    let _held = binary_from(&relay, "127.0.0.6").await.unwrap();
    for _ in 0..20 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.6:0".parse().unwrap()).unwrap();
        let tcp = socket.connect(relay.addr).await.unwrap();
        let mut s = relay_testkit::tls::wrap(tcp, relay.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}

#[tokio::test]
async fn the_limiter_forgets_idle_addresses() {
    // §8: "Idle per-IP state is evicted, so the limiter's memory is bounded however many
    // addresses knock." A full bucket is indistinguishable from a new key and is swept.
    let relay = support::start(per_ip(600_000, 1, 1000)).await; // refills in 100 µs
    for last in 2..=201u8 {
        let b = binary_from(&relay, &format!("127.0.1.{last}"))
            .await
            .unwrap();
        drop(b);
    }
    support::eventually("every connection gone", || {
        relay.shared.per_ip.tracked().1 == 0
    })
    .await;
    assert!(relay.shared.per_ip.tracked().0 >= 100);
    tokio::time::sleep(Duration::from_millis(5)).await;
    relay.shared.per_ip.sweep();
    assert_eq!(relay.shared.per_ip.tracked(), (0, 0));
}

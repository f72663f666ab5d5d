//! Panic safety per connection (issue 11): a panic injected at the reader, the routing step or
//! the writer of one connection closes that connection 1011 "internal error", is counted once,
//! and releases everything the connection held (registry entry, connection-cap slot, per-IP
//! slot, buffered bytes); its siblings and other server-ids carry on untouched.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use relay_server::faults::Faults;
use relay_server::metrics::PanicPoint;
use relay_server::RelayOptions;
use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use support::{binary_for, eventually, Scrape, TestRelay};

const LOCALHOST: &str = "127.0.0.1";

fn opts(faults: &Arc<Faults>) -> RelayOptions {
    RelayOptions {
        faults: Some(faults.clone()),
        max_connections: 100,
        ..support::fast_opts()
    }
}

/// A binary with two phones (the second is the victim's sibling), and an unrelated pair.
struct World {
    binary: FakeBinary,
    victim: FakePhone,
    victim_id: String,
    sibling: FakePhone,
    sibling_id: String,
    other: (FakeBinary, FakePhone),
    sid: String,
}

async fn world(relay: &TestRelay) -> World {
    let sid = fresh_server_id();
    let mut binary = binary_for(relay, &sid).await;
    let (victim, victim_id) = hello(relay, &mut binary, &sid).await;
    let (sibling, sibling_id) = hello(relay, &mut binary, &sid).await;
    let other_sid = fresh_server_id();
    let other_binary = binary_for(relay, &other_sid).await;
    let other_phone = FakePhone::connect(relay.addr, &other_sid).await.unwrap();
    World {
        binary,
        victim,
        victim_id,
        sibling,
        sibling_id,
        other: (other_binary, other_phone),
        sid,
    }
}

async fn hello(relay: &TestRelay, binary: &mut FakeBinary, sid: &str) -> (FakePhone, String) {
    let mut phone = FakePhone::connect(relay.addr, sid).await.unwrap();
    phone.send_text("\"hi\"").await.unwrap();
    (phone, binary.recv_envelope().await.unwrap().conn_id)
}

/// The live clients the relay must still be accounting for, and nothing else.
async fn accounted_for(relay: &TestRelay, live: usize) {
    let max = relay.shared.opts.max_connections;
    eventually("the connection-cap slots match the live clients", || {
        max - relay.shared.conn_slots.available_permits() == live
    })
    .await;
    let ip: IpAddr = LOCALHOST.parse().unwrap();
    eventually("the per-IP slots match the live clients", || {
        relay.shared.per_ip.live(ip) == live
    })
    .await;
    eventually("no bytes held for idle connections", || {
        relay.shared.budget.used() == 0
    })
    .await;
}

async fn round_trip(binary: &mut FakeBinary, phone: &mut FakePhone, conn_id: &str) {
    phone.send_text(r#"{"still":1}"#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some(r#"{"still":1}"#));
    assert_eq!(env.conn_id, conn_id);
    binary.send_to(conn_id, r#"{"back":1}"#).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"back":1}"#);
}

async fn other_pair_routes(w: &mut World) {
    let (b, p) = &mut w.other;
    p.send_text(r#"{"o":1}"#).await.unwrap();
    let env = b.recv_envelope().await.unwrap();
    b.send_to(&env.conn_id, r#"{"o":2}"#).await.unwrap();
    assert_eq!(p.recv_text().await.unwrap(), r#"{"o":2}"#);
}

fn frames(direction: &str) -> String {
    format!(r#"pyrycode_relay_frames_forwarded_total{{direction="{direction}"}}"#)
}

fn bytes(direction: &str) -> String {
    format!(r#"pyrycode_relay_bytes_forwarded_total{{direction="{direction}"}}"#)
}

async fn assert_moved_owned(relay: &TestRelay, before: &Scrape, moved: &[(String, f64)]) {
    let pairs: Vec<(&str, f64)> = moved.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    support::assert_moved(relay, before, &pairs).await;
}

fn panics(point: &str) -> String {
    format!(r#"pyrycode_relay_panics_total{{point="{point}"}}"#)
}

/// A phone whose task panics at `point`: closed 1011, its binary told (§4.3), all released.
async fn phone_panics_at(point: PanicPoint, label: &str) {
    let faults = Arc::new(Faults::default());
    let relay = support::start(opts(&faults)).await;
    let mut w = world(&relay).await;
    accounted_for(&relay, 5).await;
    let s0 = Scrape::of(&relay).await;

    faults.arm(point, 1);
    match point {
        // The phone's own message makes its reader (or the routing step after it) panic.
        PanicPoint::Reader | PanicPoint::Routing => {
            w.victim.send_text(r#"{"boom":1}"#).await.unwrap()
        }
        // A message for the phone makes its writer panic.
        _ => w
            .binary
            .send_to(&w.victim_id, r#"{"boom":1}"#)
            .await
            .unwrap(),
    }
    assert_eq!(
        w.victim.expect_close().await.unwrap(),
        (1011, "internal error".into())
    );
    // §4.3: the binary hears that the phone left, and why.
    let notice = w.binary.recv_envelope().await.unwrap();
    assert!(notice.is_close_notice(), "{}", notice.raw);
    assert_eq!(
        (notice.conn_id.as_str(), notice.close_code),
        (w.victim_id.as_str(), Some(1011))
    );

    let mut moved = vec![
        (panics(label), 1.0),
        (
            r#"pyrycode_relay_closes_total{role="phone",reason="internal_error"}"#.to_owned(),
            1.0,
        ),
        ("pyrycode_relay_connected_phones".to_owned(), -1.0),
    ];
    if point == PanicPoint::Writer {
        // The binary's message was forwarded (queued) before the phone's writer took it.
        moved.push((frames("binary_to_phone"), 1.0));
        moved.push((bytes("binary_to_phone"), 10.0));
    }
    assert_moved_owned(&relay, &s0, &moved).await;
    assert_eq!(relay.shared.registry.phones(&w.sid).len(), 1);
    accounted_for(&relay, 4).await;
    // Siblings and other server-ids never noticed.
    round_trip(&mut w.binary, &mut w.sibling, &w.sibling_id.clone()).await;
    other_pair_routes(&mut w).await;
    // The panic did not disarm anything else: a fresh phone works too.
    let mut fresh = FakePhone::connect(relay.addr, &w.sid).await.unwrap();
    fresh.send_text("\"new\"").await.unwrap();
    assert_eq!(
        w.binary.recv_envelope().await.unwrap().frame(),
        Some("\"new\"")
    );
}

/// A binary whose task panics at `point`: closed 1011, its slot in grace (§6.3), its phones
/// kept for the reclaim, everything it held released.
async fn binary_panics_at(point: PanicPoint, label: &str) {
    let faults = Arc::new(Faults::default());
    let relay = support::start(opts(&faults)).await;
    let mut w = world(&relay).await;
    accounted_for(&relay, 5).await;
    let s0 = Scrape::of(&relay).await;

    faults.arm(point, 1);
    match point {
        PanicPoint::Reader | PanicPoint::Routing => w
            .binary
            .send_to(&w.victim_id, r#"{"boom":1}"#)
            .await
            .unwrap(),
        // A phone's message makes the binary's writer panic.
        _ => w.victim.send_text(r#"{"boom":1}"#).await.unwrap(),
    }
    assert_eq!(
        w.binary.expect_close().await.unwrap(),
        (1011, "internal error".into())
    );
    let mut moved = vec![
        (panics(label), 1.0),
        (
            r#"pyrycode_relay_closes_total{role="binary",reason="internal_error"}"#.to_owned(),
            1.0,
        ),
        ("pyrycode_relay_grace_periods_started_total".to_owned(), 1.0),
        ("pyrycode_relay_connected_binaries".to_owned(), -1.0),
        ("pyrycode_relay_binaries_in_grace".to_owned(), 1.0),
    ];
    if point == PanicPoint::Writer {
        // The phone's message was forwarded (queued) before the binary's writer took it.
        moved.push((frames("phone_to_binary"), 1.0));
        moved.push((bytes("phone_to_binary"), 10.0));
    }
    assert_moved_owned(&relay, &s0, &moved).await;
    assert!(relay.shared.registry.in_grace(&w.sid));
    assert_eq!(
        relay.shared.registry.phones(&w.sid).len(),
        2,
        "phones wait for the reclaim"
    );
    accounted_for(&relay, 4).await;
    other_pair_routes(&mut w).await;
    // The binary comes back: §6.4 reclaim works as after any other disconnect.
    let mut again = binary_for(&relay, &w.sid).await;
    assert_eq!(
        w.victim.expect_close().await.unwrap().0,
        4404,
        "evict policy"
    );
    let mut fresh = FakePhone::connect(relay.addr, &w.sid).await.unwrap();
    fresh.send_text("\"new\"").await.unwrap();
    assert_eq!(
        again.recv_envelope().await.unwrap().frame(),
        Some("\"new\"")
    );
}

#[tokio::test]
async fn a_panic_in_a_phones_reader_costs_only_that_phone() {
    phone_panics_at(PanicPoint::Reader, "reader").await;
}

#[tokio::test]
async fn a_panic_in_a_phones_routing_step_costs_only_that_phone() {
    phone_panics_at(PanicPoint::Routing, "routing").await;
}

#[tokio::test]
async fn a_panic_in_a_phones_writer_costs_only_that_phone() {
    phone_panics_at(PanicPoint::Writer, "writer").await;
}

#[tokio::test]
async fn a_panic_in_a_binarys_reader_puts_its_slot_in_grace() {
    binary_panics_at(PanicPoint::Reader, "reader").await;
}

#[tokio::test]
async fn a_panic_in_a_binarys_routing_step_puts_its_slot_in_grace() {
    binary_panics_at(PanicPoint::Routing, "routing").await;
}

#[tokio::test]
async fn a_panic_in_a_binarys_writer_puts_its_slot_in_grace() {
    binary_panics_at(PanicPoint::Writer, "writer").await;
}

#[tokio::test]
async fn repeated_panics_leak_nothing() {
    // Fifty phones in a row panic at a rotating point; afterwards the relay accounts for
    // exactly the clients still connected, and holds no bytes.
    let faults = Arc::new(Faults::default());
    let relay = support::start(opts(&faults)).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let points = [PanicPoint::Reader, PanicPoint::Routing, PanicPoint::Writer];
    for i in 0..50 {
        let mut phone = FakePhone::connect(relay.addr, &sid).await.unwrap();
        phone.send_text("\"hi\"").await.unwrap();
        let id = binary.recv_envelope().await.unwrap().conn_id;
        let point = points[i % 3];
        faults.arm(point, 1);
        if point == PanicPoint::Writer {
            binary.send_to(&id, "1").await.unwrap();
        } else {
            phone.send_text("1").await.unwrap();
        }
        assert_eq!(phone.expect_close().await.unwrap().0, 1011, "round {i}");
        let notice = binary.recv_envelope().await.unwrap();
        assert!(notice.is_close_notice());
    }
    assert_eq!(relay.shared.metrics.panics.get(PanicPoint::Reader), 17);
    assert_eq!(relay.shared.metrics.panics.get(PanicPoint::Routing), 17);
    assert_eq!(relay.shared.metrics.panics.get(PanicPoint::Writer), 16);
    assert_eq!(relay.shared.registry.phones(&sid).len(), 0);
    accounted_for(&relay, 1).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(relay.shared.registry.counts().binaries, 1);
}

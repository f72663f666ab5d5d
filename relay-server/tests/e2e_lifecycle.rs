//! End to end, over real sockets: the server-id lifecycle (protocol.md §6), liveness (§7) and
//! graceful shutdown (§10).
//!
//! Every test starts its own relay with short timings, so counts and grace state belong to that
//! test alone. Waiting is done on observable state (`support::eventually`, a close frame, a
//! pong), never by sleeping and hoping; the only fixed waits are `expect_silence` windows that
//! assert nothing arrives.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use relay_core::ReclaimPolicy;
use relay_server::RelayOptions;
use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone, WsClient};
use relay_testkit::raw::{RawClient, RawMessage, RawOptions};
use support::{eventually, fast_opts, start, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- helpers -------------------------------------------------------------------------------

/// Connects a phone (with `token`, if any), sends `first`, and checks that `binary` receives it
/// as its next envelope, without the token (§4.1). Returns the phone and its conn_id.
async fn attach(
    addr: SocketAddr,
    server_id: &str,
    token: Option<&str>,
    binary: &mut FakeBinary,
    first: &str,
) -> (FakePhone, String) {
    let mut builder = FakePhone::builder(addr, server_id);
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let mut phone = builder.connect().await.expect("phone upgrades");
    phone.send_text(first).await.expect("phone sends");
    let env = binary
        .recv_envelope()
        .await
        .expect("the binary receives the phone's message");
    assert_eq!(
        env.frame(),
        Some(first),
        "first envelope is the new phone's: {}",
        env.raw
    );
    if let Some(token) = token {
        assert_no_token(&env, token);
    }
    (phone, env.conn_id)
}

/// §4.1: the token is never forwarded: no `token` field, and its value nowhere in the message.
fn assert_no_token(env: &relay_testkit::client::Envelope, token: &str) {
    assert_eq!(env.token, None, "{}", env.raw);
    assert!(
        !env.raw.contains(token),
        "token on the binary leg: {}",
        env.raw
    );
}

/// The relay reads one connection's frames in order and answers a ping when it reaches it, so
/// a pong proves that everything sent before the ping has been read and routed (or held,
/// during grace), and that the connection is still open.
async fn read_through(client: &mut WsClient) {
    client.ping(b"sync").await.expect("ping goes out");
    let pong = client
        .recv_pong()
        .await
        .expect("the relay answers the ping; the connection is open");
    assert_eq!(&pong[..], b"sync");
}

/// WebSocket connections the relay is still serving (each holds a connection slot, §8).
fn live_connections(relay: &TestRelay) -> usize {
    relay.shared.opts.max_connections - relay.shared.conn_slots.available_permits()
}

async fn until_live_connections(relay: &TestRelay, n: usize) {
    eventually(&format!("{n} live connections"), || {
        live_connections(relay) == n
    })
    .await;
}

async fn until_holds(relay: &TestRelay, server_id: &str) {
    eventually("a live binary holds the server-id", || {
        relay.shared.registry.binary(server_id).is_some()
    })
    .await;
}

async fn until_grace(relay: &TestRelay, server_id: &str) {
    eventually("the server-id is in grace", || {
        relay.shared.registry.in_grace(server_id)
    })
    .await;
}

/// A binary on a hand-framed socket: it answers no ping, ever, and reads only when told to.
async fn raw_binary(addr: SocketAddr, server_id: &str) -> RawClient {
    RawClient::connect(
        addr,
        "/v1/server",
        &[
            ("X-Pyrycode-Server", server_id),
            ("X-Pyrycode-Version", "0.0.1-test"),
            ("User-Agent", "raw-binary"),
        ],
    )
    .await
    .expect("raw binary upgrades")
}

#[derive(Clone, Copy, Debug)]
enum Leaves {
    /// A close handshake, like a daemon that exits cleanly.
    WithClose,
    /// The socket just goes away, like a crashed daemon or a dead network.
    WithoutClose,
}

async fn leave(mut binary: FakeBinary, how: Leaves) {
    match how {
        Leaves::WithClose => {
            binary.close(1000).await.expect("close handshake");
        }
        Leaves::WithoutClose => binary.abort(),
    }
}

fn reason(s: &str) -> String {
    s.to_owned()
}

// ---- §6.1 claim ----------------------------------------------------------------------------

// Two worker threads, so the relay's tasks and the clients race as they do in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_holds_its_server_id_as_soon_as_it_has_its_101() {
    // §6.1: a binary that upgrades claims its server-id. A phone it tells to connect right
    // after its upgrade must find the server-id held, never 4404 "no server with that id".
    let relay = start(fast_opts()).await;
    for _ in 0..50 {
        let id = fresh_server_id();
        let mut binary = FakeBinary::connect(relay.addr, &id).await.unwrap();
        assert!(
            relay.shared.registry.binary(&id).is_some(),
            "claimed before the 101"
        );
        let (mut phone, conn_id) = attach(relay.addr, &id, None, &mut binary, "{}").await;
        binary.send_to(&conn_id, "[]").await.unwrap();
        assert_eq!(phone.recv_text().await.unwrap(), "[]");
    }
}

// ---- §6.2 conflict and the liveness probe --------------------------------------------------

#[tokio::test]
async fn second_binary_is_closed_4409_while_the_live_incumbent_answers_the_probe() {
    // §6.2: a live incumbent that answers the probe keeps the slot; the newcomer gets 4409.
    let relay = start(RelayOptions {
        conflict_probe_timeout: Duration::from_secs(3),
        ..fast_opts()
    })
    .await;
    let id = fresh_server_id();
    let mut incumbent = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let (mut phone, conn_id) = attach(relay.addr, &id, None, &mut incumbent, r#"{"n":1}"#).await;

    // §2: the registry's decision is a close code after the upgrade, never an HTTP status.
    let mut newcomer = FakeBinary::connect(relay.addr, &id)
        .await
        .expect("the newcomer's upgrade succeeds");
    // Nobody reads the incumbent yet, so its answer to the probe cannot have arrived: what the
    // newcomer sends now is read while the probe runs, and must be discarded.
    newcomer
        .send_to(&conn_id, r#""from the newcomer""#)
        .await
        .unwrap();
    read_through(&mut newcomer).await;

    // Reading the incumbent answers the probe's ping.
    let (incumbent_quiet, newcomer_closed) = tokio::join!(
        incumbent.expect_silence(Duration::from_millis(300)),
        newcomer.expect_close()
    );
    incumbent_quiet.expect("the incumbent hears nothing of the newcomer");
    assert_eq!(
        newcomer_closed.unwrap(),
        (4409, reason("server-id already claimed"))
    );
    drop(newcomer);

    // §6.5: the loser's teardown releases nothing; the incumbent still holds the slot.
    until_live_connections(&relay, 2).await;
    assert!(!relay.shared.registry.in_grace(&id));
    assert_eq!(relay.shared.registry.counts().binaries, 1);

    // The incumbent and its phone keep working, and the newcomer's envelope never reached the
    // phone (it would be queued ahead of this one).
    incumbent
        .send_to(&conn_id, r#"{"from":"incumbent"}"#)
        .await
        .unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"from":"incumbent"}"#);
    phone.send_text(r#"{"n":2}"#).await.unwrap();
    let env = incumbent.recv_envelope().await.unwrap();
    assert_eq!(
        (env.conn_id.as_str(), env.frame()),
        (conn_id.as_str(), Some(r#"{"n":2}"#))
    );
    assert_eq!(env.token, None);
}

#[tokio::test]
async fn dead_incumbent_loses_the_probe_and_its_phones_get_4404_under_evict() {
    // §6.2: no pong within --conflict-probe-timeout → incumbent closed 1011 "heartbeat
    // timeout", its phones handled as at a reclaim (§6.4, evict by default), newcomer holds.
    let relay = start(fast_opts()).await;
    let id = fresh_server_id();
    let mut incumbent = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let (mut phone, _) = attach(relay.addr, &id, None, &mut incumbent, r#"{"n":1}"#).await;
    incumbent.set_muted(true);

    let mut newcomer = FakeBinary::connect(relay.addr, &id).await.unwrap();
    assert_eq!(
        phone.expect_close().await.unwrap(),
        (4404, reason("binary reclaimed server-id"))
    );
    assert_eq!(
        incumbent.expect_close().await.unwrap(),
        (1011, reason("heartbeat timeout"))
    );
    drop(incumbent);
    drop(phone);
    until_live_connections(&relay, 1).await;
    assert!(!relay.shared.registry.in_grace(&id));
    assert_eq!(relay.shared.registry.counts().binaries, 1);

    // The newcomer holds the slot, and hears nothing about the evicted phone (§4.3: no notice
    // when the slot changed hands): its first envelope is a new phone's.
    let (mut phone2, conn_id2) =
        attach(relay.addr, &id, None, &mut newcomer, r#"{"n":"p2"}"#).await;
    newcomer.send_to(&conn_id2, r#""hi p2""#).await.unwrap();
    assert_eq!(phone2.recv_text().await.unwrap(), r#""hi p2""#);
}

#[tokio::test]
async fn dead_incumbent_loses_the_probe_and_its_phones_stay_under_inherit() {
    // §6.2 + §6.4 inherit: the phones continue with the newcomer; neither binary ever gets
    // the phone's token (§4.1).
    let relay = start(RelayOptions {
        reclaim_policy: ReclaimPolicy::Inherit,
        ..fast_opts()
    })
    .await;
    let id = fresh_server_id();
    let mut incumbent = raw_binary(relay.addr, &id).await;
    let mut phone = FakePhone::builder(relay.addr, &id)
        .token("tok-takeover")
        .connect()
        .await
        .unwrap();
    phone.send_text(r#"{"n":1}"#).await.unwrap();
    let first = relay_testkit::client::Envelope::parse(incumbent.read_text().await.unwrap())
        .expect("an envelope");
    assert_eq!(first.frame(), Some(r#"{"n":1}"#));
    assert_no_token(&first, "tok-takeover");
    let conn_id = first.conn_id;

    // The raw incumbent never answers a ping: it loses the probe.
    let mut newcomer = FakeBinary::connect(relay.addr, &id).await.unwrap();
    assert_eq!(
        incumbent.read_until_close().await.unwrap(),
        (1011, reason("heartbeat timeout"))
    );

    // The phone was kept and now talks to the newcomer, never with its token (§4.1).
    phone.send_text(r#"{"n":2}"#).await.unwrap();
    let env = newcomer.recv_envelope().await.unwrap();
    assert_eq!(
        (env.conn_id.as_str(), env.frame()),
        (conn_id.as_str(), Some(r#"{"n":2}"#))
    );
    assert_no_token(&env, "tok-takeover");
    phone.send_text(r#"{"n":3}"#).await.unwrap();
    let env = newcomer.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some(r#"{"n":3}"#));
    assert_no_token(&env, "tok-takeover");
    newcomer
        .send_to(&conn_id, r#""from the newcomer""#)
        .await
        .unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#""from the newcomer""#);
}

// ---- §6.5 release --------------------------------------------------------------------------

#[tokio::test]
async fn displaced_binarys_late_disconnect_does_not_touch_its_successor() {
    // §6.5: only the holder's own disconnect releases the slot.
    let relay = start(fast_opts()).await;
    let id = fresh_server_id();
    let mut displaced = raw_binary(relay.addr, &id).await;
    until_holds(&relay, &id).await;

    let mut successor = FakeBinary::connect(relay.addr, &id).await.unwrap();
    assert_eq!(
        displaced.read_until_close().await.unwrap(),
        (1011, reason("heartbeat timeout"))
    );
    let (mut phone, conn_id) = attach(relay.addr, &id, None, &mut successor, r#"{"n":1}"#).await;

    // Only now does the displaced binary's connection end.
    drop(displaced);
    until_live_connections(&relay, 2).await;

    assert!(!relay.shared.registry.in_grace(&id), "no grace started");
    assert_eq!(relay.shared.registry.counts().binaries, 1);
    successor
        .send_to(&conn_id, r#""still here""#)
        .await
        .unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#""still here""#);
    phone.send_text(r#"{"n":2}"#).await.unwrap();
    assert_eq!(
        successor.recv_envelope().await.unwrap().frame(),
        Some(r#"{"n":2}"#)
    );
}

// ---- §6.3/§6.4 grace and reclaim -----------------------------------------------------------

async fn reclaim_during_grace_evicts_attached_phones(how: Leaves) {
    let relay = start(fast_opts()).await;
    let id = fresh_server_id();
    let mut old = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let (mut phone, _) = attach(relay.addr, &id, Some("tok-e"), &mut old, r#"{"n":1}"#).await;
    leave(old, how).await;
    until_grace(&relay, &id).await;

    // §6.3: the attached phone stays connected; what it sends now is dropped under evict.
    phone.send_text(r#""sent during grace""#).await.unwrap();
    read_through(&mut phone).await;

    let mut new = FakeBinary::connect(relay.addr, &id).await.unwrap();
    assert_eq!(
        phone.expect_close().await.unwrap(),
        (4404, reason("binary reclaimed server-id"))
    );
    drop(phone);
    until_live_connections(&relay, 1).await;

    // The new binary gets neither the grace-time message nor a close notice for the evicted
    // phone (§4.3): its first envelope is a new phone's.
    attach(relay.addr, &id, None, &mut new, r#"{"n":"after"}"#).await;
}

#[tokio::test]
async fn reclaim_after_binary_closes_evicts_attached_phones_with_4404() {
    reclaim_during_grace_evicts_attached_phones(Leaves::WithClose).await;
}

#[tokio::test]
async fn reclaim_after_binary_vanishes_evicts_attached_phones_with_4404() {
    reclaim_during_grace_evicts_attached_phones(Leaves::WithoutClose).await;
}

async fn reclaim_during_grace_under_inherit_keeps_phones(how: Leaves) {
    let relay = start(RelayOptions {
        reclaim_policy: ReclaimPolicy::Inherit,
        ..fast_opts()
    })
    .await;
    let id = fresh_server_id();
    let mut old = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let (mut p, p_id) = attach(relay.addr, &id, Some("tok-p"), &mut old, r#"{"p":0}"#).await;
    let (mut q, q_id) = attach(relay.addr, &id, None, &mut old, r#"{"q":0}"#).await;
    leave(old, how).await;
    until_grace(&relay, &id).await;

    // §6.3 inherit: what attached phones send during grace is held, in order.
    for i in 1..=3 {
        p.send_text(&format!(r#"{{"p":{i}}}"#)).await.unwrap();
    }
    read_through(&mut p).await;
    // §4.3: a phone leaving during grace has its notice held after its held messages.
    q.send_text(r#"{"q":1}"#).await.unwrap();
    read_through(&mut q).await;
    q.close(4000).await.unwrap();
    drop(q);
    until_live_connections(&relay, 1).await;

    let mut new = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(new.recv_envelope().await.expect("a held envelope"));
    }
    let of = |conn_id: &str| -> Vec<(Option<String>, Option<String>, Option<u16>)> {
        held.iter()
            .filter(|e| e.conn_id == conn_id)
            .map(|e| (e.frame.clone(), e.token.clone(), e.close_code))
            .collect()
    };
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        of(&p_id),
        vec![
            (s(r#"{"p":1}"#), None, None),
            (s(r#"{"p":2}"#), None, None),
            (s(r#"{"p":3}"#), None, None),
        ],
        "held in order, never with the token (§4.1)"
    );
    for e in &held {
        assert_no_token(e, "tok-p");
    }
    assert_eq!(
        of(&q_id),
        vec![(s(r#"{"q":1}"#), None, None), (None, None, Some(4000))]
    );

    // The kept phone continues with the new binary, both ways.
    p.send_text(r#"{"p":4}"#).await.unwrap();
    let env = new.recv_envelope().await.unwrap();
    assert_eq!(
        (env.conn_id.as_str(), env.frame()),
        (p_id.as_str(), Some(r#"{"p":4}"#))
    );
    assert_no_token(&env, "tok-p");
    new.send_to(&p_id, r#""welcome back""#).await.unwrap();
    assert_eq!(p.recv_text().await.unwrap(), r#""welcome back""#);
}

#[tokio::test]
async fn reclaim_after_binary_closes_under_inherit_hands_phones_and_held_messages_over() {
    reclaim_during_grace_under_inherit_keeps_phones(Leaves::WithClose).await;
}

#[tokio::test]
async fn reclaim_after_binary_vanishes_under_inherit_hands_phones_and_held_messages_over() {
    reclaim_during_grace_under_inherit_keeps_phones(Leaves::WithoutClose).await;
}

#[tokio::test]
async fn phone_connecting_during_grace_is_pending_and_its_messages_go_to_the_reclaiming_binary() {
    // §6.3: registered normally (no 4404); held in order; delivered to the next binary first,
    // never with the phone's token (§4.1). Default policy (evict) does not matter for pending
    // phones.
    let relay = start(fast_opts()).await;
    let id = fresh_server_id();
    let old = FakeBinary::connect(relay.addr, &id).await.unwrap();
    until_holds(&relay, &id).await;
    leave(old, Leaves::WithClose).await;
    until_grace(&relay, &id).await;

    let mut p = FakePhone::builder(relay.addr, &id)
        .token("tok-pending")
        .connect()
        .await
        .unwrap();
    for i in 1..=3 {
        p.send_text(&format!(r#"{{"seq":{i}}}"#)).await.unwrap();
    }
    read_through(&mut p).await;
    assert_eq!(relay.shared.registry.counts().phones, 1, "registered");

    // §4.3: a pending phone that leaves before any binary got its messages: dropped, no notice.
    let mut gone = FakePhone::connect(relay.addr, &id).await.unwrap();
    gone.send_text(r#""never delivered""#).await.unwrap();
    read_through(&mut gone).await;
    gone.close(1000).await.unwrap();
    drop(gone);
    until_live_connections(&relay, 1).await;

    let mut new = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let first = new.recv_envelope().await.unwrap();
    assert_eq!(first.frame(), Some(r#"{"seq":1}"#));
    assert_no_token(&first, "tok-pending");
    let p_id = first.conn_id;
    for i in 2..=3 {
        let env = new.recv_envelope().await.unwrap();
        let want = format!(r#"{{"seq":{i}}}"#);
        assert_eq!(
            (env.conn_id.as_str(), env.frame()),
            (p_id.as_str(), Some(want.as_str()))
        );
        assert_no_token(&env, "tok-pending");
    }
    // Next comes the phone's live message: nothing of the departed pending phone came first.
    p.send_text(r#"{"seq":4}"#).await.unwrap();
    let env = new.recv_envelope().await.unwrap();
    assert_eq!(
        (env.conn_id.as_str(), env.frame()),
        (p_id.as_str(), Some(r#"{"seq":4}"#))
    );
    assert_no_token(&env, "tok-pending");
    new.send_to(&p_id, r#""hello pending""#).await.unwrap();
    assert_eq!(p.recv_text().await.unwrap(), r#""hello pending""#);
}

#[tokio::test]
async fn pending_phone_holding_more_than_phone_outbox_bytes_is_closed_1011_backlog_full() {
    // §6.3: held messages are budgeted by --phone-outbox-bytes; over it → 1011.
    let relay = start(RelayOptions {
        phone_outbox_bytes: 1024,
        ..fast_opts()
    })
    .await;
    let id = fresh_server_id();
    let old = FakeBinary::connect(relay.addr, &id).await.unwrap();
    until_holds(&relay, &id).await;
    leave(old, Leaves::WithoutClose).await;
    until_grace(&relay, &id).await;

    let mut p = FakePhone::connect(relay.addr, &id).await.unwrap();
    let msg = format!("\"{}\"", "x".repeat(298)); // 300 bytes
    for _ in 0..3 {
        p.send_text(&msg).await.unwrap();
    }
    read_through(&mut p).await; // 900 bytes held: within budget, still open
    p.send_text(&msg).await.unwrap(); // 1200 bytes
    assert_eq!(
        p.expect_close().await.unwrap(),
        (1011, reason("phone backlog full"))
    );
    drop(p);
    until_live_connections(&relay, 0).await;

    // It left before any binary got its messages: nothing of it reaches the next binary.
    let mut new = FakeBinary::connect(relay.addr, &id).await.unwrap();
    attach(relay.addr, &id, None, &mut new, r#"{"n":"fresh"}"#).await;
}

#[tokio::test]
async fn grace_expiry_closes_every_phone_1011_and_later_phones_get_4404() {
    // §6.3: no claim within --grace-period → phones closed 1011 "binary did not reconnect",
    // the slot is freed, later phones get 4404 until a binary claims again.
    let grace = Duration::from_millis(300);
    let relay = start(RelayOptions {
        grace_period: grace,
        ..fast_opts()
    })
    .await;
    let id = fresh_server_id();
    let mut old = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let (mut p1, _) = attach(relay.addr, &id, None, &mut old, r#"{"n":1}"#).await;
    let (mut p2, _) = attach(relay.addr, &id, None, &mut old, r#"{"n":2}"#).await;
    let left = tokio::time::Instant::now();
    leave(old, Leaves::WithClose).await;

    for phone in [&mut p1, &mut p2] {
        assert_eq!(
            phone.expect_close().await.unwrap(),
            (1011, reason("binary did not reconnect"))
        );
    }
    assert!(
        left.elapsed() >= grace,
        "phones were kept for the grace period"
    );
    drop((p1, p2));
    eventually("the slot is freed", || {
        let c = relay.shared.registry.counts();
        !relay.shared.registry.in_grace(&id) && c.phones == 0 && c.server_ids == 0
    })
    .await;

    let mut late = FakePhone::connect(relay.addr, &id).await.unwrap();
    assert_eq!(
        late.expect_close().await.unwrap(),
        (4404, reason("no server with that id"))
    );

    // A binary may claim the freed server-id afresh.
    let mut again = FakeBinary::connect(relay.addr, &id).await.unwrap();
    attach(relay.addr, &id, None, &mut again, r#"{"n":"again"}"#).await;
}

/// GET /healthz over a plain socket; returns the parsed JSON body.
async fn healthz(addr: SocketAddr) -> serde_json::Value {
    let mut s = relay_testkit::tls::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).expect("JSON body")
}

#[tokio::test]
async fn healthz_counts_phones_but_not_a_binary_in_grace() {
    // §6.3: /healthz counts a binary in grace as not connected; its phones still count.
    let relay = start(fast_opts()).await;
    let id = fresh_server_id();
    let mut binary = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let (_p1, _) = attach(relay.addr, &id, None, &mut binary, "1").await;
    let (_p2, _) = attach(relay.addr, &id, None, &mut binary, "2").await;
    let h = healthz(relay.addr).await;
    assert_eq!(
        (&h["connected_binaries"], &h["connected_phones"]),
        (&1.into(), &2.into()),
        "{h}"
    );

    binary.abort();
    until_grace(&relay, &id).await;
    let h = healthz(relay.addr).await;
    assert_eq!(
        (&h["connected_binaries"], &h["connected_phones"]),
        (&0.into(), &2.into()),
        "{h}"
    );
}

// ---- §7 liveness ---------------------------------------------------------------------------

fn heartbeat_opts() -> RelayOptions {
    RelayOptions {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(200),
        ..fast_opts()
    }
}

#[tokio::test]
async fn client_that_never_answers_pings_is_closed_1011_heartbeat_timeout() {
    // §7: no pong within --heartbeat-timeout → 1011 "heartbeat timeout"; for a binary, the
    // slot then goes into grace (§6.3).
    let relay = start(heartbeat_opts()).await;
    let id = fresh_server_id();
    let mut binary = raw_binary(relay.addr, &id).await;
    let mut pings = 0;
    let close = loop {
        match binary.read_message().await.expect("a frame") {
            RawMessage::Ping(_) => pings += 1,
            RawMessage::Close(code, reason) => break (code, reason),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close, (1011, reason("heartbeat timeout")));
    assert!(pings >= 1, "the relay pinged first");
    drop(binary);
    until_grace(&relay, &id).await;

    // A phone that stops answering is closed the same way, and its binary is told (§4.3).
    let mut binary = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let (mut phone, conn_id) = attach(relay.addr, &id, None, &mut binary, "{}").await;
    phone.set_muted(true);
    let (closed, notice) = tokio::join!(
        async move {
            let closed = phone.expect_close().await;
            drop(phone);
            closed
        },
        binary.recv_envelope()
    );
    assert_eq!(closed.unwrap(), (1011, reason("heartbeat timeout")));
    let notice = notice.unwrap();
    assert!(notice.is_close_notice(), "{}", notice.raw);
    assert_eq!(
        (notice.conn_id.as_str(), notice.close_code),
        (conn_id.as_str(), Some(1011))
    );
}

#[tokio::test]
async fn clients_that_answer_pings_stay_connected_well_past_the_heartbeat_timeout() {
    let relay = start(heartbeat_opts()).await;
    let id = fresh_server_id();
    let mut binary = FakeBinary::connect(relay.addr, &id).await.unwrap();
    let (mut phone, conn_id) = attach(relay.addr, &id, None, &mut binary, "{}").await;

    // Three heartbeat periods (interval + timeout), answering every ping.
    let quiet = Duration::from_millis(1200);
    let (b, p) = tokio::join!(binary.expect_silence(quiet), phone.expect_silence(quiet));
    b.expect("binary stays connected");
    p.expect("phone stays connected");
    assert!(binary.pings_received() >= 3, "{}", binary.pings_received());
    assert!(phone.pings_received() >= 3, "{}", phone.pings_received());

    binary.send_to(&conn_id, r#""still there?""#).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#""still there?""#);
    phone.send_text(r#""yes""#).await.unwrap();
    assert_eq!(
        binary.recv_envelope().await.unwrap().frame(),
        Some(r#""yes""#)
    );
}

#[tokio::test]
async fn relay_answers_a_ping_ahead_of_a_long_queue_for_that_client() {
    // §7: "The relay answers pings from peers promptly whatever else is queued."
    let relay = start(RelayOptions {
        write_timeout: Duration::from_secs(10),
        phone_outbox_bytes: 16 << 20,
        ..fast_opts()
    })
    .await;
    let id = fresh_server_id();
    let mut binary = FakeBinary::connect(relay.addr, &id).await.unwrap();
    // A small receive buffer keeps the phone's side of the socket small; the relay's send
    // buffer can still take up to 4 MiB (tcp_wmem), so the queue below is twice that.
    let mut phone = RawClient::connect_with(
        relay.addr,
        "/v1/client",
        &[
            ("X-Pyrycode-Server", id.as_bytes()),
            ("User-Agent", b"raw-phone"),
        ],
        RawOptions {
            recv_buffer_size: Some(4096),
            ..RawOptions::default()
        },
    )
    .await
    .unwrap();
    phone.send_text("{}").await.unwrap();
    let conn_id = binary.recv_envelope().await.unwrap().conn_id;

    const N: usize = 2048; // 8 MiB
    let pad = "x".repeat(4096);
    let frame = |i: usize| format!("\"{i:06}{pad}\"");
    for i in 0..N {
        binary.send_to(&conn_id, &frame(i)).await.unwrap();
    }
    // The relay has read (and queued for the phone) every envelope sent before this ping.
    binary.ping(b"queued").await.unwrap();
    binary.recv_pong().await.unwrap();

    phone.send_ping(b"are you there").await.unwrap();
    let mut before = 0;
    let pong = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match phone.read_message().await.expect("a frame") {
                RawMessage::Text(t) => {
                    assert_eq!(t, frame(before), "in order");
                    before += 1;
                }
                RawMessage::Pong(payload) => break payload,
                RawMessage::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the pong arrives promptly");
    assert_eq!(pong, b"are you there");
    assert!(
        before < N,
        "the pong came only after all {N} queued messages"
    );

    // Nothing was lost or reordered behind the pong.
    for i in before..N {
        assert_eq!(phone.read_text().await.unwrap(), frame(i));
    }
}

// ---- §10 shutdown --------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_every_websocket_1001_without_close_notices() {
    // §10: every WebSocket gets 1001 "shutting down"; §4.3: no notices during shutdown.
    let relay = start(fast_opts()).await;
    let addr = relay.addr;
    let id = fresh_server_id();
    let mut binary = FakeBinary::connect(addr, &id).await.unwrap();
    let (mut p1, _) = attach(addr, &id, None, &mut binary, "1").await;
    let (mut p2, _) = attach(addr, &id, None, &mut binary, "2").await;

    let stopping = tokio::spawn(relay.stop());
    // expect_close fails on any data message first, such as a close notice to the binary.
    let (b, c1, c2) = tokio::join!(binary.expect_close(), p1.expect_close(), p2.expect_close());
    let shutting_down = (1001, reason("shutting down"));
    assert_eq!(b.unwrap(), shutting_down);
    assert_eq!(c1.unwrap(), shutting_down);
    assert_eq!(c2.unwrap(), shutting_down);
    assert!(
        stopping.await.unwrap(),
        "every connection drained within the shutdown timeout"
    );
    assert!(
        FakePhone::connect(addr, &id).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn shutdown_reaches_a_binary_whose_writer_is_busy_and_sends_it_no_close_notice() {
    // §10 + §4.3: a binary that is slow to read still gets 1001 "shutting down" once what
    // was queued for it is out, and hears nothing of its phones leaving during shutdown.
    let relay = start(RelayOptions {
        write_timeout: Duration::from_secs(10),
        ..fast_opts()
    })
    .await;
    let id = fresh_server_id();
    let mut binary = FakeBinary::builder(relay.addr, &id)
        .recv_buffer_size(4096)
        .connect()
        .await
        .unwrap();
    let (mut phone, conn_id) = attach(relay.addr, &id, None, &mut binary, "{}").await;

    // ~4.8 MB for a binary that is not reading: more than the kernel buffers take, less than
    // its inbox plus those buffers, so the relay's writer for it is blocked mid-write.
    let pad = "x".repeat(4096);
    for i in 0..1200 {
        phone.send_text(&format!("\"{i:06}{pad}\"")).await.unwrap();
    }
    read_through(&mut phone).await;

    let stopping = tokio::spawn(relay.stop());
    assert_eq!(
        phone.expect_close().await.unwrap(),
        (1001, reason("shutting down"))
    );
    drop(phone); // its departure happens while the binary's queue is still draining

    let (messages, code, why) = binary.recv_until_close().await.expect("a close frame");
    for m in &messages {
        let env = relay_testkit::client::Envelope::parse(m.to_text().unwrap().to_owned())
            .expect("an envelope");
        assert!(!env.is_close_notice(), "no notice at shutdown: {}", env.raw);
        assert_eq!(env.conn_id, conn_id);
    }
    assert_eq!((code, why), (1001, reason("shutting down")));
    assert!(
        stopping.await.unwrap(),
        "drained within the shutdown timeout"
    );
}

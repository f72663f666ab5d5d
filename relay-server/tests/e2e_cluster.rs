//! Cluster mode end to end (protocol.md §11): three real `relay-server` processes on loopback
//! sharing a real `redis-server`, behind a real HAProxy configured like
//! `deploy/haproxy.cfg`, driven by fake binaries and phones over real WebSockets.
//!
//! - routing from every node and through HAProxy, both ways, in order; 4409 from the holder's
//!   probe to a second binary arriving elsewhere; reclaim through another node in grace;
//! - node death (`kill -9`): binaries claim elsewhere once the lease lapses, phones follow;
//! - Redis killed and restarted: live traffic carries on, new upgrades 503, then recover;
//! - a rolling restart of all three under the reconnecting load, nothing delivered twice or
//!   out of order;
//! - the cluster listener closes unauthenticated connections without a byte; boot errors.
//!
//! Every wait has a deadline; other processes' state is polled because it sends no event.

#[path = "cluster/haproxy.rs"]
mod haproxy;
#[path = "cluster/nodes.rs"]
mod nodes;
#[path = "cluster/redis_server.rs"]
mod redis_server;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use haproxy::HaProxy;
use nodes::{healthz, metric, wait_until, Cluster};
use relay_testkit::client::{fresh_server_id, ClientError, FakeBinary, FakePhone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Short enough that a dead node's entries lapse quickly, long enough for a loaded CI box to
/// refresh it (every lease/3).
const LEASE: Duration = Duration::from_secs(2);

const FORWARDED_OUT: &str = r#"pyrycode_relay_cluster_forwarded_connections_total{outcome="out"}"#;
const FORWARDED_IN: &str = r#"pyrycode_relay_cluster_forwarded_connections_total{outcome="in"}"#;
const REFUSED_IN: &str = r#"pyrycode_relay_cluster_forwarded_connections_total{outcome="refused"}"#;

/// Every phone sends `n` numbered frames, interleaved; the binary must get each phone's in
/// order, then answers each phone `n` numbered frames, which must arrive in order. Returns
/// nothing: any loss, reordering or misrouting fails the test.
async fn route_both_ways(binary: &mut FakeBinary, phones: &mut [FakePhone], n: usize) {
    for k in 0..n {
        for (i, p) in phones.iter_mut().enumerate() {
            p.send_text(&format!(r#"{{"p":{i},"k":{k}}}"#))
                .await
                .unwrap();
        }
    }
    let mut next = vec![0usize; phones.len()];
    let mut conn_of = vec![String::new(); phones.len()];
    for _ in 0..n * phones.len() {
        let env = binary.recv_envelope().await.unwrap();
        let frame: serde_json::Value = serde_json::from_str(env.frame().unwrap()).unwrap();
        let i = frame["p"].as_u64().unwrap() as usize;
        assert_eq!(
            frame["k"], next[i],
            "phone {i}'s frames in order, none lost"
        );
        if next[i] == 0 {
            conn_of[i] = env.conn_id.clone();
        }
        assert_eq!(env.conn_id, conn_of[i], "one conn_id per phone");
        next[i] += 1;
    }
    for k in 0..n {
        for (i, conn) in conn_of.iter().enumerate() {
            binary
                .send_to(conn, &format!(r#"{{"to":{i},"k":{k}}}"#))
                .await
                .unwrap();
        }
    }
    for (i, p) in phones.iter_mut().enumerate() {
        for k in 0..n {
            assert_eq!(
                p.recv_text().await.unwrap(),
                format!(r#"{{"to":{i},"k":{k}}}"#),
                "phone {i} gets its own frames in order"
            );
        }
    }
}

/// One frame each way between `binary` and a fresh phone at `addr`.
async fn round_trip(binary: &mut FakeBinary, phone: &mut FakePhone) {
    phone.send_text(r#"{"ping":1}"#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some(r#"{"ping":1}"#));
    binary.send_to(&env.conn_id, r#"{"pong":1}"#).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"pong":1}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_id_held_on_node_1_is_served_from_every_node_and_through_haproxy() {
    let Some(c) = Cluster::start(3, LEASE, &[]) else {
        return;
    };
    let Some(lb) = HaProxy::start(c.secret.dir(), &c.addrs()).await else {
        return;
    };
    c.wait_healthy().await;
    let [n1, n2, n3] = [c.nodes[0].addr, c.nodes[1].addr, c.nodes[2].addr];
    let sid = fresh_server_id();
    let mut binary = FakeBinary::connect(n1, &sid).await.unwrap();

    // §11: phones on nodes 2 and 3 are spliced to node 1; through HAProxy they land wherever
    // the hash says and end up on node 1 too.
    let mut phones = Vec::new();
    for addr in [n1, n2, n3, lb.addr, lb.addr] {
        phones.push(FakePhone::connect(addr, &sid).await.unwrap());
    }
    route_both_ways(&mut binary, &mut phones, 20).await;
    let h1 = healthz(n1).await.unwrap();
    assert_eq!(h1["cluster"], "ok");
    assert_eq!(
        (
            h1["connected_binaries"].as_u64(),
            h1["connected_phones"].as_u64()
        ),
        (Some(1), Some(5)),
        "the holder registers every phone: {h1}"
    );
    for n in [n2, n3] {
        let h = healthz(n).await.unwrap();
        assert_eq!(h["connected_phones"], 0, "{h}");
    }
    assert!(metric(c.nodes[1].metrics_addr, FORWARDED_OUT).await >= 1.0);
    assert!(metric(c.nodes[2].metrics_addr, FORWARDED_OUT).await >= 1.0);
    assert!(metric(c.nodes[0].metrics_addr, FORWARDED_IN).await >= 2.0);
    // Node 2 forwarded its direct phone, and any of HAProxy's the hash sent there.
    assert!(
        metric(
            c.nodes[1].metrics_addr,
            r#"pyrycode_relay_ws_upgrade_attempts_total{endpoint="client",outcome="forwarded"}"#
        )
        .await
            >= 1.0
    );

    // §6.2 through the directory: a second binary on node 2 is spliced to node 1, whose probe
    // finds the incumbent alive: 4409 for the newcomer, the incumbent keeps routing.
    let mut second = FakeBinary::connect(n2, &sid).await.unwrap();
    // Reading the incumbent is what answers the probe's ping.
    let (quiet, closed) = tokio::join!(
        binary.expect_silence(Duration::from_millis(1500)),
        second.expect_close()
    );
    quiet.expect("the incumbent hears nothing of the newcomer");
    let (code, reason) = closed.unwrap();
    assert_eq!((code, reason.as_str()), (4409, "server-id already claimed"));
    round_trip(&mut binary, &mut phones[1]).await;

    // A phone for a server-id nobody holds: 4404 on whichever node it asks.
    let mut stray = FakePhone::connect(n3, &fresh_server_id()).await.unwrap();
    assert_eq!(stray.expect_close().await.unwrap().0, 4404);

    // §6.4 through another node: the binary leaves, node 1 keeps the slot in grace, and a
    // binary arriving on node 3 is spliced to node 1 and reclaims it (evict: the old
    // binary's phones get 4404 "binary reclaimed server-id").
    binary.close(1000).await.unwrap();
    wait_until("grace on node 1", Duration::from_secs(5), || async {
        healthz(n1)
            .await
            .is_some_and(|h| h["connected_binaries"] == 0)
    })
    .await;
    let mut reclaimer = FakeBinary::connect(n3, &sid).await.unwrap();
    for p in &mut phones {
        let (code, reason) = p.expect_close().await.unwrap();
        assert_eq!(
            (code, reason.as_str()),
            (4404, "binary reclaimed server-id")
        );
    }
    let mut late = FakePhone::connect(n2, &sid).await.unwrap();
    round_trip(&mut reclaimer, &mut late).await;
    assert_eq!(
        metric(
            c.nodes[0].metrics_addr,
            r#"pyrycode_relay_reclaims_total{policy="evict"}"#
        )
        .await,
        1.0,
        "the reclaim happened on the holder"
    );
    drop(lb);
}

/// §11: "A connection on the cluster listener without a valid TLV is closed with no bytes."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_listener_closes_unauthenticated_connections_without_a_byte() {
    let Some(c) = Cluster::start(1, LEASE, &[]) else {
        return;
    };
    c.wait_healthy().await;
    let node = &c.nodes[0];
    let request = format!(
        "GET /v1/client HTTP/1.1\r\nHost: x\r\nX-Pyrycode-Server: {}\r\nUser-Agent: t\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        fresh_server_id()
    );
    let wrong = relay_server::cluster::secret::ClusterSecret::from_bytes(&[7u8; 32]).unwrap();
    let forged = relay_server::cluster::link::encode(
        &wrong,
        "203.0.113.1:4000".parse().unwrap(),
        node.addr,
        relay_server::cluster::link::unix_ms_now(),
    );
    for prefix in [
        Vec::new(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        forged,
    ] {
        let mut s = tokio::net::TcpStream::connect(node.cluster_addr)
            .await
            .unwrap();
        let mut bytes = prefix.clone();
        bytes.extend_from_slice(request.as_bytes());
        // The node may close before taking it all: a failed write is an answer too.
        let _ = s.write_all(&bytes).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "closed within the header deadline");
        assert!(got.is_empty(), "no byte written: {got:?}");
    }
    wait_until("refusals counted", Duration::from_secs(5), || async {
        metric(node.metrics_addr, REFUSED_IN).await == 3.0
    })
    .await;
    assert_eq!(metric(node.metrics_addr, FORWARDED_IN).await, 0.0);
}

/// §10/§11 boot: a readable secret file is a boot error (exit 2, one line, before binding);
/// a cluster listener that cannot bind is exit 1.
#[test]
fn cluster_boot_errors_exit_2_for_the_secret_and_1_for_the_listener() {
    use std::os::unix::fs::PermissionsExt;
    let secret = nodes::Secret::new();
    let (_held, held) = support::real::hold_a_port();
    let base = |secret: &str, cluster_listen: &str| -> Vec<String> {
        [
            "--insecure-listen",
            "127.0.0.1:0",
            "--cluster-redis",
            "redis://127.0.0.1:1/",
            "--cluster-listen",
            cluster_listen,
            "--cluster-secret-file",
            secret,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let path = secret.path.to_string_lossy().into_owned();
    std::fs::set_permissions(&secret.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = base(&path, "127.0.0.1:0");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = support::real::run_to_exit(support::real::relay(&args, &[]));
    assert_eq!(out.code, Some(2), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("relay-server: --cluster-secret-file"));
    assert!(lines[0].contains("chmod 600"), "{}", lines[0]);

    std::fs::set_permissions(&secret.path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = base(&path, &held);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = support::real::run_to_exit(support::real::relay(&args, &[]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("cannot listen on") && out.stderr.contains("for the cluster"),
        "{}",
        out.stderr
    );
}

/// A binary that reconnects until its upgrade succeeds (backoff 100 ms), as a daemon does
/// after HTTP errors; returns it and how many attempts were refused.
async fn reconnect_binary(addr: SocketAddr, sid: &str, within: Duration) -> (FakeBinary, u32) {
    let deadline = Instant::now() + within;
    let mut refused = 0;
    loop {
        // 3 s: an edge waits at most 2 s on the directory; a holder frozen with its
        // listener's backlog open answers nothing until this client gives up.
        match FakeBinary::builder(addr, sid)
            .timeout(Duration::from_secs(3))
            .connect()
            .await
        {
            Ok(b) => return (b, refused),
            Err(e) => {
                assert!(Instant::now() < deadline, "binary never got back: {e}");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A phone that reconnects until it completes a round trip with `binary` (4404 and 503 are
/// retried, as phones do).
async fn reconnect_phone(
    addr: SocketAddr,
    sid: &str,
    binary: &mut FakeBinary,
    within: Duration,
) -> FakePhone {
    let deadline = Instant::now() + within;
    loop {
        assert!(Instant::now() < deadline, "phone never got back");
        let Ok(mut phone) = FakePhone::connect(addr, sid).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if phone.send_text(r#"{"back":1}"#).await.is_err() {
            continue;
        }
        match binary.recv_envelope().await {
            Ok(env) if env.frame() == Some(r#"{"back":1}"#) => {
                binary.send_to(&env.conn_id, r#"{"ok":1}"#).await.unwrap();
                assert_eq!(phone.recv_text().await.unwrap(), r#"{"ok":1}"#);
                return phone;
            }
            Ok(env) => panic!("unexpected envelope {env:?}"),
            // §11: the binary must never lose its own id to a conflict.
            Err(ClientError::Closed { code, .. }) => panic!("binary closed {code}"),
            Err(_) => {
                // The phone was refused after its upgrade (4404 before the claim was seen).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// §11 node death: `kill -9` of the node holding four server-ids. Their binaries reconnect
/// through HAProxy and are refused (503: the dead node's lease still names it) until the
/// lease lapses, then claim on a surviving node, never seeing 4409; their phones reconnect
/// through HAProxy and route again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_death_its_binaries_claim_elsewhere_once_the_lease_lapses_and_phones_follow() {
    let Some(mut c) = Cluster::start(3, LEASE, &[]) else {
        return;
    };
    let Some(lb) = HaProxy::start(c.secret.dir(), &c.addrs()).await else {
        return;
    };
    c.wait_healthy().await;
    let n1 = c.nodes[0].addr;
    let ids: Vec<String> = (0..4).map(|_| fresh_server_id()).collect();
    let mut held = Vec::new();
    for id in &ids {
        let mut binary = FakeBinary::connect(n1, id).await.unwrap();
        let mut phones = Vec::new();
        for _ in 0..2 {
            let mut phone = FakePhone::connect(lb.addr, id).await.unwrap();
            round_trip(&mut binary, &mut phone).await;
            phones.push(phone);
        }
        held.push((binary, phones));
    }

    let killed = Instant::now();
    c.kill(0);
    let lb_addr = lb.addr;
    let tasks: Vec<_> = held
        .into_iter()
        .zip(ids.clone())
        .map(|((mut old, mut phones), id)| {
            tokio::spawn(async move {
                old.expect_disconnect().await.unwrap();
                for p in &mut phones {
                    p.expect_disconnect().await.unwrap();
                }
                let (mut binary, refused) =
                    reconnect_binary(lb_addr, &id, Duration::from_secs(20)).await;
                let claimed = killed.elapsed();
                let mut back = Vec::new();
                for _ in 0..2 {
                    back.push(
                        reconnect_phone(lb_addr, &id, &mut binary, Duration::from_secs(20)).await,
                    );
                }
                let routed = killed.elapsed();
                // A last check both ways on every phone: nothing is left half-routed.
                for p in &mut back {
                    round_trip(&mut binary, p).await;
                }
                (claimed, routed, refused, binary, back)
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut claims = Vec::new();
    let mut clients = Vec::new();
    for t in tasks {
        let (claimed, routed, refused, binary, phones) = t.await.unwrap();
        claims.push((claimed, refused));
        worst = worst.max(routed);
        clients.push((binary, phones));
    }
    println!(
        "node death: binaries claimed at {:?} after the kill (refusals before), every phone \
         routing {worst:?} after it (lease {LEASE:?})",
        claims
    );
    assert!(
        worst < LEASE + Duration::from_secs(8),
        "recovery took {worst:?}"
    );
    let mut holders = 0;
    for n in &c.nodes[1..] {
        holders += healthz(n.addr).await.unwrap()["connected_binaries"]
            .as_u64()
            .unwrap();
    }
    assert_eq!(holders, 4, "the survivors hold every server-id");
    let mut takeovers = 0.0;
    for n in &c.nodes[1..] {
        takeovers += metric(
            n.metrics_addr,
            r#"pyrycode_relay_cluster_events_total{event="takeover"}"#,
        )
        .await;
    }
    assert_eq!(
        takeovers, 4.0,
        "each entry was taken over from the dead node"
    );
}

/// §11 fencing, on the real registry: node 1 is frozen (SIGSTOP) past its lease while its
/// binary comes back through node 2, which takes the entry over. When node 1 runs again it
/// finds its lease gone, rejoins, and the directory says another node holds that server-id
/// now: node 1 closes the stale binary and its phone with 1012 "service restart" and drops
/// the slot without grace, so a phone arriving at node 1 afterwards is spliced to node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_lease_closes_the_slot_another_node_took_with_1012() {
    let Some(c) = Cluster::start(2, LEASE, &[]) else {
        return;
    };
    c.wait_healthy().await;
    let [n1, n2] = [c.nodes[0].addr, c.nodes[1].addr];
    let sid = fresh_server_id();
    let mut stale = FakeBinary::connect(n1, &sid).await.unwrap();
    let mut phone = FakePhone::connect(n1, &sid).await.unwrap();
    round_trip(&mut stale, &mut phone).await;

    c.nodes[0].proc.as_ref().unwrap().signal("STOP");
    // Until the frozen node's lease lapses, node 2 would forward the daemon to it (and the
    // frozen node's kernel would queue that connection for when it runs again): wait it out.
    wait_until("node 1's lease lapsed", Duration::from_secs(10), || async {
        c.redis
            .command("EXISTS pyrycode-relay:node:node-1")
            .as_deref()
            == Some(":0\r\n")
    })
    .await;
    // The daemon, after a network change, dials node 2, which takes the entry over.
    let (mut binary, refused) = reconnect_binary(n2, &sid, Duration::from_secs(15)).await;
    assert_eq!(refused, 0, "a dead holder's entry is taken at once");
    c.nodes[0].proc.as_ref().unwrap().signal("CONT");

    let (code, reason) = phone.expect_close().await.unwrap();
    assert_eq!((code, reason.as_str()), (1012, "service restart"));
    // The stale binary's heartbeat may have lapsed during the freeze, and be noticed first.
    let (code, reason) = stale.expect_close().await.unwrap();
    assert!(
        (code, reason.as_str()) == (1012, "service restart")
            || (code, reason.as_str()) == (1011, "heartbeat timeout"),
        "{code} {reason}"
    );
    let mut phone = reconnect_phone(n1, &sid, &mut binary, Duration::from_secs(10)).await;
    round_trip(&mut binary, &mut phone).await;
    assert_eq!(
        metric(
            c.nodes[0].metrics_addr,
            r#"pyrycode_relay_cluster_events_total{event="slot_lost"}"#
        )
        .await,
        1.0
    );
    let h1 = healthz(n1).await.unwrap();
    assert_eq!(
        (
            h1["connected_binaries"].as_u64(),
            h1["connected_phones"].as_u64()
        ),
        (Some(0), Some(0)),
        "no grace left behind: {h1}"
    );
}

/// §11 "Directory unreachable": Redis killed under live traffic, then restarted empty. Live
/// connections keep routing (spliced ones too), an upgrade the holder can serve alone still
/// works, upgrades that need the directory get 503 within about 2 s, `/healthz` says
/// degraded; after the restart the nodes re-assert their slots by themselves and new
/// upgrades work again. Nothing is closed 1012: nobody took anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_loss_leaves_live_traffic_alone_new_upgrades_get_503_then_recover() {
    let Some(mut c) = Cluster::start(3, LEASE, &[]) else {
        return;
    };
    c.wait_healthy().await;
    let [n1, n2, n3] = [c.nodes[0].addr, c.nodes[1].addr, c.nodes[2].addr];
    let sid = fresh_server_id();
    let mut binary = FakeBinary::connect(n1, &sid).await.unwrap();
    let mut local = FakePhone::connect(n1, &sid).await.unwrap();
    let mut spliced = FakePhone::connect(n2, &sid).await.unwrap();
    round_trip(&mut binary, &mut local).await;
    round_trip(&mut binary, &mut spliced).await;

    c.redis.kill();
    for _ in 0..5 {
        round_trip(&mut binary, &mut local).await;
        round_trip(&mut binary, &mut spliced).await;
    }
    // The holder serves its own server-id without the directory.
    let mut third = FakePhone::connect(n1, &sid).await.unwrap();
    round_trip(&mut binary, &mut third).await;
    // Upgrades that need the directory: 503 after at most its 2 s bound.
    let t = Instant::now();
    let r = FakePhone::builder(n2, &sid).refused().await.unwrap();
    assert_eq!((r.status, r.body_len()), (503, 0));
    let t_phone = t.elapsed();
    let t = Instant::now();
    let r = FakeBinary::builder(n3, &fresh_server_id())
        .refused()
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    let t_binary = t.elapsed();
    assert!(
        t_phone < Duration::from_millis(2600) && t_binary < Duration::from_millis(2600),
        "phone {t_phone:?}, binary {t_binary:?}"
    );
    for n in [n1, n2, n3] {
        wait_until("degraded", Duration::from_secs(5), || async {
            healthz(n).await.is_some_and(|h| h["cluster"] == "degraded")
        })
        .await;
    }
    round_trip(&mut binary, &mut spliced).await;

    let restarted = Instant::now();
    c.redis.restart();
    c.wait_healthy().await;
    // Node 1 re-asserts its slot under a fresh epoch: node 2 forwards to it again.
    let mut phone = FakePhone::connect(n2, &sid).await.unwrap();
    let recovered = restarted.elapsed();
    let mut fresh = FakeBinary::connect(n3, &fresh_server_id()).await.unwrap();
    round_trip(&mut binary, &mut phone).await;
    for p in [&mut local, &mut spliced, &mut third] {
        round_trip(&mut binary, p).await;
    }
    fresh
        .expect_silence(Duration::from_millis(100))
        .await
        .unwrap();
    println!(
        "redis loss: 503 after {t_phone:?} (phone) / {t_binary:?} (binary); new upgrades \
         served {recovered:?} after redis came back"
    );
    let fenced = metric(
        c.nodes[0].metrics_addr,
        r#"pyrycode_relay_closes_total{role="phone",reason="service_restart"}"#,
    )
    .await;
    assert_eq!(fenced, 0.0, "a Redis restart fences nobody");
    assert!(
        metric(
            c.nodes[0].metrics_addr,
            r#"pyrycode_relay_cluster_events_total{event="fenced"}"#
        )
        .await
            >= 1.0,
        "node 1 noticed its lease gone and rejoined"
    );
}

/// §11 rolling deploy: all three nodes restarted one after another (SIGTERM, which leaves the
/// directory before closing with 1001; then the same ports again) under the reconnecting load
/// through HAProxy. After each step every phone routes to its binary again, and over the
/// whole run nothing the relay accepted arrived twice or out of order, and no binary saw
/// 4409 for its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_every_binary_and_phone_comes_back_in_order() {
    let Some(mut c) = Cluster::start(3, LEASE, &[]) else {
        return;
    };
    let Some(lb) = HaProxy::start(c.secret.dir(), &c.addrs()).await else {
        return;
    };
    c.wait_healthy().await;
    let cfg = relay_testkit::load::ReconnectConfig {
        binaries: 6,
        phones: 24,
        interval: Duration::from_millis(40),
        echo_wait: Duration::from_millis(800),
        ..Default::default()
    };
    let load = relay_testkit::load::Reconnecting::start(lb.addr, cfg).unwrap();
    load.wait_all_routing_since(Instant::now(), Duration::from_secs(15))
        .await
        .unwrap();
    let mut steps = Vec::new();
    for i in 0..3 {
        let down = Instant::now();
        c.terminate(i).await;
        let back_down = load
            .wait_all_routing_since(Instant::now(), Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("node {} down: {e}", i + 1));
        c.restart(i);
        c.wait_healthy().await;
        let up = Instant::now();
        let back_up = load
            .wait_all_routing_since(up, Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("node {} back: {e}", i + 1));
        // Steady traffic on the new layout before the next step.
        load.wait_all_routing_since(up + Duration::from_millis(500), Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("node {} back, later: {e}", i + 1));
        steps.push((down.elapsed(), back_down, back_up));
    }
    let report = load.finish().await;
    println!("rolling restart: steps (total, routing after stop, routing after start) {steps:?}");
    println!("{}", report.table());
    assert!(report.ok, "{}", report.table());
    assert_eq!(report.conflicts_4409, 0);
    assert!(
        report.binary_connects > 6,
        "binaries did move: {}",
        report.table()
    );
}

/// `deploy/compose.yml` stays true to the flags: a node started with exactly the relay
/// environment it gives (addresses, Redis and secret path swapped for this test's) boots,
/// joins the directory and routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_example_environment_boots_a_cluster_node() {
    let Some(c) = Cluster::start(1, LEASE, &[]) else {
        return;
    };
    let compose = include_str!("../../deploy/compose.yml");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut block = "";
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            block = line
                .trim_end_matches(':')
                .split_whitespace()
                .next()
                .unwrap_or("");
        }
        let t = line.trim();
        let in_relay = block == "x-relay-env:" || block == "x-relay-env" || block == "services";
        if !in_relay || !t.starts_with("PYRYCODE_RELAY_") {
            continue;
        }
        // services: only relay-1's own lines (the first service that sets them).
        let (k, v) = t.split_once(':').unwrap();
        let v = v.trim().trim_matches('"').to_owned();
        if env.iter().any(|(key, _)| key == k) {
            continue;
        }
        env.push((k.to_owned(), v));
    }
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for want in [
        "PYRYCODE_RELAY_CLUSTER_REDIS",
        "PYRYCODE_RELAY_CLUSTER_LISTEN",
        "PYRYCODE_RELAY_CLUSTER_ADVERTISE",
        "PYRYCODE_RELAY_CLUSTER_SECRET_FILE",
        "PYRYCODE_RELAY_NODE_ID",
    ] {
        assert!(
            names.contains(&want),
            "{want} missing from compose.yml: {names:?}"
        );
    }
    let redis = c.redis.url();
    let secret = c.secret.path.to_string_lossy().into_owned();
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k != "PYRYCODE_RELAY_CLUSTER_ADVERTISE")
        .map(|(k, v)| {
            let v = match k.as_str() {
                "PYRYCODE_RELAY_INSECURE_LISTEN" | "PYRYCODE_RELAY_CLUSTER_LISTEN" => {
                    "127.0.0.1:0".to_owned()
                }
                "PYRYCODE_RELAY_CLUSTER_REDIS" => redis.clone(),
                "PYRYCODE_RELAY_CLUSTER_SECRET_FILE" => secret.clone(),
                "PYRYCODE_RELAY_METRICS_LISTEN" => String::new(),
                _ => v,
            };
            (k, v)
        })
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut node = support::real::Running::spawn(&[], &env);
    let line = node.line_with("listening addr=").expect("the node boots");
    assert!(line.contains("node_id=relay-1"), "{line}");
    let addr: SocketAddr = line
        .split(" addr=")
        .nth(1)
        .and_then(|r| r.split([',', ' ']).next())
        .and_then(|a| a.parse().ok())
        .expect("addr=");
    wait_until(
        "the compose node joined",
        Duration::from_secs(10),
        || async { healthz(addr).await.is_some_and(|h| h["cluster"] == "ok") },
    )
    .await;
    let sid = fresh_server_id();
    let mut binary = FakeBinary::connect(addr, &sid).await.unwrap();
    let mut phone = FakePhone::connect(c.nodes[0].addr, &sid).await.unwrap();
    round_trip(&mut binary, &mut phone).await;
}

/// §11 "Release": the directory entry goes when the slot is freed here: at grace expiry with
/// no reclaim, and when a binary's upgrade is refused after its claim took the entry (a bad
/// header, 400). A phone arriving elsewhere afterwards finds nobody (4404), not a forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_released_at_grace_expiry_and_after_a_refused_claim() {
    let Some(c) = Cluster::start(2, LEASE, &["--grace-period", "1s"]) else {
        return;
    };
    c.wait_healthy().await;
    let [n1, n2] = [c.nodes[0].addr, c.nodes[1].addr];
    let entry = |sid: &str| format!("EXISTS pyrycode-relay:sid:{sid}");

    let refused = fresh_server_id();
    let r = FakeBinary::builder(n1, &refused)
        .header("X-Pyrycode-Version", "bad version")
        .refused()
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    wait_until(
        "the refused claim's entry released",
        Duration::from_secs(5),
        || async { c.redis.command(&entry(&refused)).as_deref() == Some(":0\r\n") },
    )
    .await;

    let sid = fresh_server_id();
    let mut binary = FakeBinary::connect(n1, &sid).await.unwrap();
    let mut phone = FakePhone::connect(n2, &sid).await.unwrap();
    round_trip(&mut binary, &mut phone).await;
    assert_eq!(c.redis.command(&entry(&sid)).as_deref(), Some(":1\r\n"));
    binary.close(1000).await.unwrap();
    let (code, reason) = phone.expect_close().await.unwrap();
    assert_eq!((code, reason.as_str()), (1011, "binary did not reconnect"));
    wait_until(
        "the expired slot's entry released",
        Duration::from_secs(5),
        || async { c.redis.command(&entry(&sid)).as_deref() == Some(":0\r\n") },
    )
    .await;
    let mut late = FakePhone::connect(n2, &sid).await.unwrap();
    assert_eq!(late.expect_close().await.unwrap().0, 4404);
}

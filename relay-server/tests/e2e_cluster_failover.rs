//! Cluster mode end to end (protocol.md §11), under failure: real `relay-server` processes,
//! a real `redis-server` and a real HAProxy running `deploy/haproxy.cfg`.
//!
//! - node death (`kill -9`): binaries claim elsewhere once the lease lapses, phones follow;
//! - a node frozen past its lease: fenced on the real registry (1012);
//! - Redis killed and restarted: live traffic carries on, new upgrades 503, then recover;
//! - a rolling restart of all three under `relay-load`'s reconnecting mode, nothing
//!   delivered twice or out of order.
//!
//! Recovery times are printed (run with `--nocapture`) and bounded by the assertions.

#[path = "cluster/clients.rs"]
mod clients;
#[path = "cluster/haproxy.rs"]
mod haproxy;
#[path = "cluster/nodes.rs"]
mod nodes;
#[path = "cluster/redis_server.rs"]
mod redis_server;
mod support;

use std::time::{Duration, Instant};

use clients::{reconnect_binary, reconnect_phone, round_trip, LEASE};
use haproxy::HaProxy;
use nodes::{healthz, metric, wait_until, Cluster};
use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};

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

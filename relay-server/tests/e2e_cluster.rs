//! Cluster mode end to end (protocol.md §11), the steady state: three real `relay-server`
//! processes on loopback sharing a real `redis-server`, behind a real HAProxy running
//! `deploy/haproxy.cfg`, driven by fake binaries and phones over real WebSockets.
//!
//! - routing from every node and through HAProxy, both ways, in order; 4409 from the holder's
//!   probe to a second binary arriving elsewhere; reclaim through another node in grace;
//! - directory entries released at grace expiry and after a refused claim;
//! - the cluster listener closes unauthenticated connections without a byte; boot errors;
//!   `deploy/compose.yml`'s environment boots a node.
//!
//! Failures (node death, a frozen node, Redis loss, a rolling restart) are in
//! `e2e_cluster_failover.rs`. Every wait has a deadline; other processes' state is polled
//! because it sends no event.

#[path = "cluster/clients.rs"]
mod clients;
#[path = "cluster/haproxy.rs"]
mod haproxy;
#[path = "cluster/nodes.rs"]
mod nodes;
#[path = "cluster/redis_server.rs"]
mod redis_server;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use clients::{round_trip, route_both_ways, LEASE};
use haproxy::HaProxy;
use nodes::{healthz, metric, wait_until, Cluster};
use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FORWARDED_OUT: &str = r#"pyrycode_relay_cluster_forwarded_connections_total{outcome="out"}"#;
const FORWARDED_IN: &str = r#"pyrycode_relay_cluster_forwarded_connections_total{outcome="in"}"#;
const REFUSED_IN: &str = r#"pyrycode_relay_cluster_forwarded_connections_total{outcome="refused"}"#;

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

/// Every directory lookup a node has made, whatever its outcome (§11).
async fn directory_lookups(metrics: SocketAddr) -> f64 {
    let mut sum = 0.0;
    for outcome in ["ok", "conflict", "error", "timeout"] {
        sum += metric(
            metrics,
            &format!(
                r#"pyrycode_relay_cluster_directory_operations_total{{op="locate",outcome="{outcome}"}}"#
            ),
        )
        .await;
    }
    sum
}

/// §8 before §11: the edge refuses a flooding address (429) before it asks the directory, so
/// a refusal costs no Redis call; `/healthz` and requests that are not upgrades never reach
/// the directory either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_the_edge_cost_no_directory_call() {
    let Some(c) = Cluster::start(
        1,
        LEASE,
        &["--rate-limit-burst", "3", "--rate-limit-per-minute", "1"],
    ) else {
        return;
    };
    c.wait_healthy().await;
    let node = &c.nodes[0];
    let before = directory_lookups(node.metrics_addr).await;
    // The burst: each phone (for a server-id nobody holds) is looked up, then served here: 4404.
    for _ in 0..3 {
        let mut p = FakePhone::connect(node.addr, &fresh_server_id())
            .await
            .expect("within the burst");
        assert_eq!(p.expect_close().await.unwrap().0, 4404);
    }
    let after_burst = directory_lookups(node.metrics_addr).await;
    assert_eq!(after_burst, before + 3.0, "one lookup per admitted upgrade");
    // Past it: 429 with an empty body, and no lookup.
    for _ in 0..20 {
        let refused = FakePhone::builder(node.addr, &fresh_server_id())
            .refused()
            .await
            .unwrap();
        assert_eq!((refused.status, refused.body_len()), (429, 0));
    }
    for path in ["/healthz", "/", "/v1/client", "/v1/server"] {
        let (status, _) = nodes::http_get(node.addr, path)
            .await
            .unwrap_or_else(|| panic!("no answer to GET {path}"));
        assert_ne!(status, 101, "{path}");
    }
    assert!(
        metric(
            node.metrics_addr,
            r#"pyrycode_relay_admission_refusals_total{limit="rate_per_ip"}"#
        )
        .await
            >= 20.0
    );
    assert_eq!(
        directory_lookups(node.metrics_addr).await,
        after_burst,
        "refusals and plain requests asked the directory nothing"
    );
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

//! The Redis directory against a real `redis-server` on an ephemeral loopback port (§11):
//! the Lua scripts agree with the in-memory directory step for step over random histories;
//! two nodes racing for one server-id; a lease expiring in Redis; a stale-epoch release;
//! and Redis killed and restarted under a running node (calls in between fail within their
//! bound, live slots survive, the client recovers by itself).

#[path = "cluster/model.rs"]
mod model;
#[path = "cluster/ops.rs"]
mod ops;
#[path = "cluster/redis_server.rs"]
mod redis_server;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::{node, sid, Model, Op, NODES, SIDS};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use redis::AsyncCommands;
use redis_server::RedisServer;
use relay_core::{ManualClock, ServerId};
use relay_server::cluster::directory::{Claim, Directory, Epoch, Holder, NodeId, Peer};
use relay_server::cluster::memory::MemoryDirectory;
use relay_server::cluster::redis::{RedisDirectory, DEFAULT_PREFIX};
use relay_server::cluster::stats::{Event, Op as StatOp, Outcome};
use relay_server::cluster::{BinaryRoute, ClusterNode, Health, NodeConfig, PhoneRoute, Slots};

const P: &str = DEFAULT_PREFIX;

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[test]
fn lua_scripts_agree_with_the_memory_directory_step_for_step() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The connection manager belongs to the runtime it was made in.
    let (redis_dir, conn) = rt.block_on(async {
        (
            RedisDirectory::new(&server.url(), P).unwrap(),
            raw(&server).await,
        )
    });
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(ops::op(false), 1..60);
    let result = runner.run(&strategy, |ops| {
        let mut conn = conn.clone();
        rt.block_on(async {
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
            let mem = MemoryDirectory::new(ManualClock::new());
            let mut model = Model::default();
            for op in &ops {
                match op {
                    Op::Lapse(n) => {
                        mem.lapse(&node(*n));
                        let _: () = conn.del(format!("{P}node:{}", node(*n))).await.unwrap();
                    }
                    Op::Wipe => {
                        mem.wipe();
                        // Scripts are lost with a restart too: the client must reload them.
                        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
                        let _: () = redis::cmd("SCRIPT")
                            .arg("FLUSH")
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                    }
                    _ => {
                        let want = ops::drive(&mem, &model, op).await;
                        let got = ops::drive(&redis_dir, &model, op).await;
                        if got != want {
                            return Err(TestCaseError::fail(format!(
                                "{op:?}: redis {got:?}, memory {want:?}"
                            )));
                        }
                    }
                }
                model.apply(op);
                for s in 0..SIDS {
                    let (n, e): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                        .arg(format!("{P}sid:{}", sid(s).as_str()))
                        .arg("node")
                        .arg("epoch")
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    let got = n.map(|n| (NodeId::new(&n).unwrap(), Epoch(e.unwrap())));
                    let want = mem.entry(sid(s).as_str()).map(|v| (v.node, v.epoch));
                    if got != want {
                        return Err(TestCaseError::fail(format!(
                            "after {op:?}: server-{s} entry redis {got:?}, memory {want:?}"
                        )));
                    }
                }
                for n in 0..NODES {
                    let e: Option<u64> = conn
                        .hget(format!("{P}node:{}", node(n)), "epoch")
                        .await
                        .unwrap();
                    let want = mem.live_epoch(&node(n));
                    let mut owned: Vec<String> =
                        conn.smembers(format!("{P}owned:{}", node(n))).await.unwrap();
                    owned.sort();
                    let mem_owned = mem.owned(&node(n));
                    if e.map(Epoch) != want || owned != mem_owned {
                        return Err(TestCaseError::fail(format!(
                            "after {op:?}: node-{n} redis {e:?} {owned:?}, memory {want:?} {mem_owned:?}"
                        )));
                    }
                }
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn lease() -> Duration {
    Duration::from_secs(10)
}

#[tokio::test]
async fn two_nodes_racing_for_one_server_id_end_with_one_holder_and_one_forward() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = Arc::new(RedisDirectory::new(&server.url(), P).unwrap());
    let b = Arc::new(RedisDirectory::new(&server.url(), P).unwrap());
    let (na, nb) = (node(0), node(1));
    let ea = a.join(&na, "a:7000", lease(), Epoch(0)).await.unwrap();
    let eb = b.join(&nb, "b:7000", lease(), Epoch(0)).await.unwrap();
    assert_ne!(ea, eb);
    for round in 0..100 {
        let s = ServerId::parse(format!("race-{round}").as_bytes()).unwrap();
        let (ca, cb) = tokio::join!(
            {
                let (a, s, na) = (a.clone(), s.clone(), na.clone());
                async move { a.claim(&s, &na, ea).await.unwrap() }
            },
            {
                let (b, s, nb) = (b.clone(), s.clone(), nb.clone());
                async move { b.claim(&s, &nb, eb).await.unwrap() }
            }
        );
        let peer_a = Peer {
            node: na.clone(),
            addr: "a:7000".into(),
        };
        let peer_b = Peer {
            node: nb.clone(),
            addr: "b:7000".into(),
        };
        match (ca, cb) {
            (Claim::Took { from: None }, Claim::Held(p)) => assert_eq!(p, peer_a),
            (Claim::Held(p), Claim::Took { from: None }) => assert_eq!(p, peer_b),
            other => panic!("round {round}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_expired_lease_makes_the_nodes_entries_claimable_by_another() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = RedisDirectory::new(&server.url(), P).unwrap();
    let (na, nb) = (node(0), node(1));
    let s = sid(0);
    let short = Duration::from_millis(1000);
    let ea = dir.join(&na, "a:7000", short, Epoch(0)).await.unwrap();
    let eb = dir.join(&nb, "b:7000", lease(), Epoch(0)).await.unwrap();
    assert_eq!(
        dir.claim(&s, &na, ea).await.unwrap(),
        Claim::Took { from: None }
    );
    assert!(matches!(
        dir.claim(&s, &nb, eb).await.unwrap(),
        Claim::Held(_)
    ));
    // Redis expires the key by its own clock: wait for that event, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.locate(&s, &nb).await.unwrap() != Holder::Nobody {
        assert!(Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        dir.refresh(&na, ea, short).await.unwrap(),
        relay_server::cluster::directory::Refresh::Gone
    );
    assert_eq!(
        dir.claim(&s, &nb, eb).await.unwrap(),
        Claim::Took {
            from: Some(na.clone())
        }
    );
    // A's claim under its lapsed epoch is refused, not a second takeover.
    assert_eq!(dir.claim(&s, &na, ea).await.unwrap(), Claim::Fenced);
}

#[tokio::test]
async fn a_release_with_a_stale_epoch_never_deletes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = RedisDirectory::new(&server.url(), P).unwrap();
    let mut conn = raw(&server).await;
    let (na, nb) = (node(0), node(1));
    let s = sid(0);
    let e1 = dir.join(&na, "a:7000", lease(), Epoch(0)).await.unwrap();
    assert_eq!(
        dir.claim(&s, &na, e1).await.unwrap(),
        Claim::Took { from: None }
    );
    // A restarts under the same name: its previous life's entry is dead at once...
    let e2 = dir.join(&na, "a:7000", lease(), e1).await.unwrap();
    assert!(e2 > e1);
    assert_eq!(
        dir.claim(&s, &na, e2).await.unwrap(),
        Claim::Took {
            from: Some(na.clone())
        }
    );
    // ...and a late release from that life does not touch the new one's entry.
    assert!(!dir.release(&s, &na, e1).await.unwrap());
    assert_eq!(
        dir.locate(&s, &nb).await.unwrap(),
        Holder::Peer(Peer {
            node: na.clone(),
            addr: "a:7000".into()
        })
    );
    // Another node's takeover is not touched by A's release either.
    let _: () = conn.del(format!("{P}node:{na}")).await.unwrap();
    let eb = dir.join(&nb, "b:7000", lease(), Epoch(0)).await.unwrap();
    assert!(matches!(
        dir.claim(&s, &nb, eb).await.unwrap(),
        Claim::Took { .. }
    ));
    assert!(!dir.release(&s, &na, e2).await.unwrap());
    assert_eq!(
        dir.locate(&s, &na).await.unwrap(),
        Holder::Peer(Peer {
            node: nb.clone(),
            addr: "b:7000".into()
        })
    );
    // The holder's own release deletes.
    assert!(dir.release(&s, &nb, eb).await.unwrap());
    assert_eq!(dir.locate(&s, &na).await.unwrap(), Holder::Nobody);
}

/// The registry stand-in: which slots this node holds, and which it was told to fence.
#[derive(Default)]
struct FakeSlots {
    held: Mutex<HashSet<String>>,
    fenced: Mutex<Vec<String>>,
}

impl Slots for FakeSlots {
    fn holds(&self, sid: &ServerId) -> bool {
        self.held.lock().unwrap().contains(sid.as_str())
    }
    fn fence(&self, sid: &ServerId) {
        self.held.lock().unwrap().remove(sid.as_str());
        self.fenced.lock().unwrap().push(sid.as_str().to_owned());
    }
}

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_leaves_live_slots_alone_and_the_node_recovers() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let slots = Arc::new(FakeSlots::default());
    let cfg = NodeConfig {
        node: node(0),
        advertise: "127.0.0.1:7000".into(),
        lease: Duration::from_secs(3),
        op_timeout: Duration::from_secs(2),
    };
    let n = ClusterNode::new(
        RedisDirectory::new(&server.url(), P).unwrap(),
        cfg,
        slots.clone(),
    );
    let run = tokio::spawn(n.clone().run());
    wait_for("join", Duration::from_secs(5), || n.health() == Health::Ok).await;
    for s in ["live-1", "live-2"] {
        let sid = ServerId::parse(s.as_bytes()).unwrap();
        match n.route_binary(&sid).await.unwrap() {
            BinaryRoute::Local(_guard) => {
                slots.held.lock().unwrap().insert(s.to_owned());
            }
            BinaryRoute::Forward(p) => panic!("{p:?}"),
        }
    }

    server.kill();
    let fresh = ServerId::parse(b"fresh").unwrap();
    let t = Instant::now();
    let r = n.route_binary(&fresh).await;
    assert!(
        r.is_err(),
        "a claim needing the directory fails while it is down"
    );
    assert!(
        t.elapsed() <= Duration::from_millis(2300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(n.health(), Health::Degraded);
    let t = Instant::now();
    assert!(n.route_phone(&fresh).await.is_err());
    assert!(
        t.elapsed() <= Duration::from_millis(2300),
        "{:?}",
        t.elapsed()
    );
    // A server-id held here needs no directory: its phones and reclaims carry on.
    let live = ServerId::parse(b"live-1").unwrap();
    assert_eq!(n.route_phone(&live).await.unwrap(), PhoneRoute::Local);
    assert!(matches!(
        n.route_binary(&live).await.unwrap(),
        BinaryRoute::Local(_)
    ));

    server.restart();
    // Empty Redis: the node finds its lease gone, rejoins, re-asserts both slots.
    let mut conn = raw(&server).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a: Option<String> = conn.hget(format!("{P}sid:live-1"), "node").await.unwrap();
        let b: Option<String> = conn.hget(format!("{P}sid:live-2"), "node").await.unwrap();
        if a.as_deref() == Some("node-0")
            && b.as_deref() == Some("node-0")
            && n.health() == Health::Ok
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots not re-asserted: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slots.fenced.lock().unwrap().is_empty(),
        "no live slot was closed"
    );
    assert_eq!(n.stats().events(Event::Fenced), 1);
    assert!(
        n.stats().ops(StatOp::Claim, Outcome::Error)
            + n.stats().ops(StatOp::Claim, Outcome::Timeout)
            >= 1
    );
    assert!(matches!(
        n.route_binary(&fresh).await.unwrap(),
        BinaryRoute::Local(_)
    ));
    // The re-asserted entries carry the new epoch: other nodes are forwarded here.
    let other = RedisDirectory::new(&server.url(), P).unwrap();
    let e = other
        .join(&node(1), "b:7000", lease(), Epoch(0))
        .await
        .unwrap();
    assert_eq!(
        other.claim(&live, &node(1), e).await.unwrap(),
        Claim::Held(Peer {
            node: node(0),
            addr: "127.0.0.1:7000".into()
        })
    );

    n.leave().await;
    run.await.unwrap();
    assert_eq!(other.locate(&live, &node(1)).await.unwrap(), Holder::Nobody);
    let left: Option<String> = conn.hget(format!("{P}node:node-0"), "epoch").await.unwrap();
    assert_eq!(left, None, "SIGTERM deletes the liveness entry");
}

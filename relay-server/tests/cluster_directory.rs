//! The §11 directory state machine against a reference model, over random sequences of
//! operations on the in-memory directory: several nodes and server-ids, claims (taking a
//! missing entry, taking over a dead node's, being forwarded to a live one), locates,
//! releases with the current and with stale epochs, lease refreshes and expiry by the
//! clock, lapses, fencing and rejoin with reassert, purge, leave, and the directory losing
//! everything (a Redis restart).
//!
//! After every step: the answer is the model's; every entry and liveness epoch is the
//! model's; and §11's safety property holds (at most one node holds a server-id under its
//! live epoch, and then the directory names it; a claim is forwarded only to a node that
//! holds it). The Lua scripts are held to the same directory step for step in
//! `cluster_redis.rs`.

#[path = "cluster/model.rs"]
mod model;
#[path = "cluster/ops.rs"]
mod ops;

use std::time::Duration;

use futures_util::FutureExt;
use model::{node, sid, Model, Op, NODES, SIDS};
use proptest::prelude::*;
use relay_core::ManualClock;
use relay_server::cluster::memory::MemoryDirectory;

fn check(dir: &MemoryDirectory<ManualClock>, model: &Model) -> Result<(), TestCaseError> {
    for s in 0..SIDS {
        let got = dir.entry(sid(s).as_str()).map(|e| (e.node, e.epoch));
        let want = model.entries[s].map(|(n, e)| (node(n), e));
        prop_assert_eq!(got, want, "entry of server-{}", s);
    }
    for n in 0..NODES {
        prop_assert_eq!(
            dir.live_epoch(&node(n)),
            model.live_epoch(n),
            "liveness of node-{}",
            n
        );
    }
    model.check_beliefs().map_err(TestCaseError::fail)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn directory_matches_the_model_and_never_has_two_current_holders(
        ops in prop::collection::vec(ops::op(true), 1..80)
    ) {
        let clock = ManualClock::new();
        let dir = MemoryDirectory::new(clock.clone());
        let mut model = Model::default();
        for op in &ops {
            let got = match op {
                Op::Advance(ms) => { clock.advance(Duration::from_millis(*ms)); model::Answer::Done }
                Op::Lapse(n) => { dir.lapse(&node(*n)); model::Answer::Done }
                Op::Wipe => { dir.wipe(); model::Answer::Done }
                _ => ops::drive(&dir, &model, op).now_or_never().expect("the memory directory never waits"),
            };
            let want = model.apply(op);
            prop_assert_eq!(&got, &want, "{:?}", op);
            model.check_held(op, &got).map_err(TestCaseError::fail)?;
            check(&dir, &model)?;
        }
    }
}

// ---- The node's lease loop, fencing and bounds, on the in-memory directory ----------------

mod node_life {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use relay_core::{Clock, ServerId};
    use relay_server::cluster::directory::{
        Claim, DirError, Directory, Epoch, Holder, NodeId, Reassert, Refresh,
    };
    use relay_server::cluster::memory::MemoryDirectory;
    use relay_server::cluster::stats::{Event, Op as StatOp, Outcome};
    use relay_server::cluster::{
        BinaryRoute, ClusterNode, Health, NodeConfig, PhoneRoute, Slots, Unavailable,
    };

    use super::model::node;

    /// The memory directory's clock, following tokio's (paused) time.
    #[derive(Clone, Copy)]
    struct TokioClock;
    impl Clock for TokioClock {
        fn now(&self) -> Instant {
            tokio::time::Instant::now().into_std()
        }
    }

    #[derive(Default)]
    struct FakeSlots {
        held: Mutex<HashSet<String>>,
        fenced: Mutex<Vec<String>>,
    }
    impl FakeSlots {
        fn hold(&self, s: &str) {
            self.held.lock().unwrap().insert(s.to_owned());
        }
        fn drop_slot(&self, s: &str) {
            self.held.lock().unwrap().remove(s);
        }
        fn fenced(&self) -> Vec<String> {
            self.fenced.lock().unwrap().clone()
        }
    }
    impl Slots for FakeSlots {
        fn holds(&self, sid: &ServerId) -> bool {
            self.held.lock().unwrap().contains(sid.as_str())
        }
        fn fence(&self, sid: &ServerId) {
            self.drop_slot(sid.as_str());
            self.fenced.lock().unwrap().push(sid.as_str().to_owned());
        }
    }

    const LEASE: Duration = Duration::from_secs(3);

    fn sid(s: &str) -> ServerId {
        ServerId::parse(s.as_bytes()).unwrap()
    }

    type Mem = Arc<MemoryDirectory<TokioClock>>;

    fn start<D: Directory>(dir: D, slots: &Arc<FakeSlots>) -> Arc<ClusterNode<D>> {
        let n = ClusterNode::new(
            dir,
            NodeConfig {
                node: node(0),
                advertise: "a:7000".into(),
                lease: LEASE,
                op_timeout: Duration::from_secs(2),
            },
            slots.clone(),
        );
        tokio::spawn(n.clone().run());
        n
    }

    async fn joined<D: Directory>(n: &ClusterNode<D>) {
        for _ in 0..100 {
            if n.health() == Health::Ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("node never joined");
    }

    async fn claim_local<D: Directory>(n: &ClusterNode<D>, slots: &FakeSlots, s: &str) {
        match n.route_binary(&sid(s)).await.unwrap() {
            BinaryRoute::Local(_guard) => slots.hold(s),
            BinaryRoute::Forward(p) => panic!("{s} forwarded to {p:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_whose_lease_lapsed_closes_with_1012_only_the_slots_another_node_took() {
        let dir: Mem = Arc::new(MemoryDirectory::new(TokioClock));
        let slots = Arc::new(FakeSlots::default());
        let a = start(dir.clone(), &slots);
        joined(&a).await;
        claim_local(&a, &slots, "taken").await;
        claim_local(&a, &slots, "kept").await;
        let e1 = a.epoch().unwrap();

        // A pauses past its lease; B's binary for "taken" connects to B meanwhile.
        dir.lapse(&node(0));
        let eb = dir.join(&node(1), "b:7000", LEASE, Epoch(0)).await.unwrap();
        assert_eq!(
            dir.claim(&sid("taken"), &node(1), eb).await.unwrap(),
            Claim::Took {
                from: Some(node(0))
            }
        );

        tokio::time::sleep(LEASE / 3 + Duration::from_millis(10)).await;
        joined(&a).await;
        assert_eq!(slots.fenced(), vec!["taken".to_owned()]);
        let e2 = a.epoch().unwrap();
        assert!(e2 > e1, "rejoined with a fresh epoch");
        assert_eq!(
            dir.entry("kept").map(|e| (e.node, e.epoch)),
            Some((node(0), e2))
        );
        assert_eq!(dir.entry("taken").map(|e| e.node), Some(node(1)));
        assert_eq!(a.stats().events(Event::Fenced), 1);
        assert_eq!(a.stats().events(Event::SlotLost), 1);
        // The new holder's phones and binaries are sent there from A now.
        assert!(
            matches!(a.route_phone(&sid("taken")).await.unwrap(), PhoneRoute::Forward(p) if p.node == node(1))
        );
        assert!(matches!(
            a.route_binary(&sid("taken")).await.unwrap(),
            BinaryRoute::Forward(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_directory_that_lost_everything_costs_no_live_slot() {
        let dir: Mem = Arc::new(MemoryDirectory::new(TokioClock));
        let slots = Arc::new(FakeSlots::default());
        let a = start(dir.clone(), &slots);
        joined(&a).await;
        for s in ["s1", "s2", "s3"] {
            claim_local(&a, &slots, s).await;
        }
        dir.wipe();
        tokio::time::sleep(LEASE / 3 + Duration::from_millis(10)).await;
        joined(&a).await;
        assert!(slots.fenced().is_empty());
        let e = a.epoch().unwrap();
        for s in ["s1", "s2", "s3"] {
            assert_eq!(
                dir.entry(s).map(|v| (v.node, v.epoch)),
                Some((node(0), e)),
                "{s}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_usurped_node_fences_everything_and_claims_nothing_more() {
        let dir: Mem = Arc::new(MemoryDirectory::new(TokioClock));
        let slots = Arc::new(FakeSlots::default());
        let a = start(dir.clone(), &slots);
        joined(&a).await;
        claim_local(&a, &slots, "x").await;
        // Another process joins under the same node id.
        dir.join(&node(0), "imposter:7000", LEASE, Epoch(0))
            .await
            .unwrap();
        tokio::time::sleep(LEASE / 3 + Duration::from_millis(10)).await;
        assert_eq!(slots.fenced(), vec!["x".to_owned()]);
        assert!(matches!(
            a.route_binary(&sid("y")).await,
            Err(Unavailable::Usurped)
        ));
        assert_eq!(a.health(), Health::Degraded);
        assert_eq!(a.stats().events(Event::Usurped), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn slot_freed_releases_only_a_slot_no_longer_held_and_the_sweep_retries_a_failed_release()
    {
        let dir: Mem = Arc::new(MemoryDirectory::new(TokioClock));
        let slots = Arc::new(FakeSlots::default());
        let a = start(dir.clone(), &slots);
        joined(&a).await;
        claim_local(&a, &slots, "x").await;
        claim_local(&a, &slots, "y").await;
        // A reclaim raced the expiry: the slot is held again, the entry stays.
        a.slot_freed(&sid("x")).await;
        assert!(dir.entry("x").is_some());
        slots.drop_slot("x");
        a.slot_freed(&sid("x")).await;
        assert!(dir.entry("x").is_none());
        assert_eq!(a.owned_count(), 1);

        // A release while the directory is down is retried by the sweep.
        slots.drop_slot("y");
        dir.set_down(true);
        a.slot_freed(&sid("y")).await;
        assert_eq!(a.health(), Health::Degraded);
        dir.set_down(false);
        assert!(dir.entry("y").is_some());
        tokio::time::sleep(LEASE * 4).await;
        assert!(dir.entry("y").is_none(), "the sweep released it");
        assert_eq!(a.owned_count(), 0);
        assert_eq!(a.health(), Health::Ok);
    }

    /// A directory that never answers (a Redis that accepts and hangs).
    struct Hanging;
    impl Directory for Hanging {
        async fn join(
            &self,
            _: &NodeId,
            _: &str,
            _: Duration,
            _: Epoch,
        ) -> Result<Epoch, DirError> {
            std::future::pending().await
        }
        async fn refresh(&self, _: &NodeId, _: Epoch, _: Duration) -> Result<Refresh, DirError> {
            std::future::pending().await
        }
        async fn claim(&self, _: &ServerId, _: &NodeId, _: Epoch) -> Result<Claim, DirError> {
            std::future::pending().await
        }
        async fn locate(&self, _: &ServerId, _: &NodeId) -> Result<Holder, DirError> {
            std::future::pending().await
        }
        async fn release(&self, _: &ServerId, _: &NodeId, _: Epoch) -> Result<bool, DirError> {
            std::future::pending().await
        }
        async fn reassert(
            &self,
            _: &NodeId,
            _: Epoch,
            _: &[ServerId],
        ) -> Result<Reassert, DirError> {
            std::future::pending().await
        }
        async fn purge(&self, _: &NodeId, _: Epoch) -> Result<u64, DirError> {
            std::future::pending().await
        }
        async fn leave(&self, _: &NodeId, _: Epoch) -> Result<(), DirError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_decision_is_bounded_by_two_seconds_when_the_directory_hangs() {
        let slots = Arc::new(FakeSlots::default());
        let a = start(Hanging, &slots);
        let t = tokio::time::Instant::now();
        assert!(matches!(
            a.route_phone(&sid("p")).await,
            Err(Unavailable::Directory(DirError::Timeout(_)))
        ));
        assert_eq!(t.elapsed(), Duration::from_secs(2));
        assert_eq!(a.health(), Health::Degraded);
        // Never joined: a binary is refused without waiting on the directory.
        assert!(matches!(
            a.route_binary(&sid("b")).await,
            Err(Unavailable::NotJoined)
        ));
        // The lease loop's join started at boot and timed out with the locate.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(a.stats().ops(StatOp::Locate, Outcome::Timeout) >= 1);
        assert!(a.stats().ops(StatOp::Join, Outcome::Timeout) >= 1);
        let t = tokio::time::Instant::now();
        a.leave().await;
        assert!(t.elapsed() <= Duration::from_secs(2));
    }
}

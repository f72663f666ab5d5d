//! The registry's races, explored by loom (protocol.md §6.3–§6.5).
//!
//! Run with:
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p relay-core --release --test loom
//! ```
//!
//! (`CARGO_TARGET_DIR` keeps the loom build from invalidating the normal one.) On 2 cores the
//! models run in under a second after a ~2 minute first build (92 to 1 427 interleavings per
//! model at bound 3). The models are small enough that dropping the bound, which makes the
//! search exhaustive, still takes only about 3 s (up to 5 618 interleavings).
//!
//! Under `--cfg loom` the registry's mutexes, atomics and `Arc` are loom's (`src/sync.rs`), so
//! every interleaving of their operations is tried, up to the preemption bound. Each model
//! sets the race up single-threaded, runs the contenders on loom threads while the main thread
//! reads the live counts, then checks that exactly one of the allowed outcomes happened.
//! One shard keeps the state space small; the races are per slot anyway.
#![cfg(loom)]

use std::time::Duration;

use bytes::Bytes;
use loom::sync::Arc;
use loom::thread;
use relay_core::{
    Backlog, BinaryLease, Claim, Claimed, Close, Conn, Counts, Expiry, GraceTicket, Held,
    Installed, ManualClock, PhoneLease, ReclaimPolicy, Registration, Registry, RegistryConfig,
    ServerId, ToBinary,
};
use relay_testkit::mock::MockConn;

type Reg = Registry<MockConn, ManualClock>;

const GRACE: Duration = Duration::from_secs(30);

fn registry(policy: ReclaimPolicy) -> (Arc<Reg>, ManualClock) {
    let clock = ManualClock::new();
    let config = RegistryConfig {
        grace_period: GRACE,
        phones_per_server: 4,
        held_bytes_per_phone: 1024,
        reclaim_policy: policy,
        shards: 1,
    };
    (Arc::new(Registry::new(config, clock.clone())), clock)
}

fn sid() -> ServerId {
    ServerId::parse(b"s1").unwrap()
}

fn claimed(claim: Claim<MockConn>) -> Claimed<MockConn> {
    match claim {
        Claim::Claimed(c) => c,
        Claim::Conflict(_) => panic!("expected the claim to succeed"),
    }
}

fn live(reg: &Reg) -> (MockConn, BinaryLease<MockConn>) {
    let b = MockConn::new();
    let c = claimed(reg.claim(&sid(), b.clone()));
    (b, c.lease)
}

fn attached(reg: &Reg) -> (MockConn, PhoneLease<MockConn>) {
    let p = MockConn::new();
    match reg.register_phone(&sid(), p.clone()) {
        Registration::Attached(l) => (p, l),
        _ => panic!("expected Attached"),
    }
}

/// A slot whose binary left with `phones` attached phones and whose grace deadline has
/// passed: the expiry timer has fired and is about to call `expire`.
fn expired_grace(policy: ReclaimPolicy, phones: usize) -> (Arc<Reg>, GraceTicket, Vec<MockConn>) {
    let (reg, clock) = registry(policy);
    let (_a, lease) = live(&reg);
    let phones = (0..phones).map(|_| attached(&reg).0).collect();
    let ticket = reg
        .release(&lease)
        .expect("the holder's release starts grace");
    clock.advance(GRACE);
    (reg, ticket, phones)
}

/// The counts never describe a state that never existed: with one server-id there is never
/// more than one binary or server-id, and never more phones than were registered. (A
/// decrement that overtakes its increment would wrap the phone count to `usize::MAX`.)
fn assert_plausible(c: Counts, max_phones: usize) {
    assert!(c.binaries <= 1, "{c:?}");
    assert!(c.server_ids <= 1, "{c:?}");
    assert!(c.phones <= max_phones, "{c:?}");
}

/// §6.3/§6.4: a reclaim racing the expiry timer. Exactly one wins: either the phones are
/// closed 1011 and the slot freed (the claim then finds it free), or the new binary holds the
/// slot with the phones intact (the expiry is stale). Never both.
#[test]
fn reclaim_racing_grace_expiry_has_exactly_one_winner() {
    loom::model(|| {
        let (reg, ticket, phones) = expired_grace(ReclaimPolicy::Inherit, 1);
        let b = MockConn::new();

        let claimer = {
            let (reg, b) = (reg.clone(), b.clone());
            thread::spawn(move || {
                let mut c = claimed(reg.claim(&sid(), b));
                c.apply();
                c
            })
        };
        let expirer = {
            let reg = reg.clone();
            thread::spawn(move || {
                let mut e = reg.expire(&ticket);
                let expired = match &e {
                    Expiry::Expired(phones) => Some(phones.len()),
                    Expiry::Stale => None,
                    Expiry::NotYet => panic!("the deadline has passed"),
                };
                e.apply();
                expired
            })
        };
        assert_plausible(reg.counts(), 1);
        let c = claimer.join().unwrap();
        let expired = expirer.join().unwrap();

        assert!(c.lease.is_current());
        assert_eq!(reg.binary("s1").map(|x| *x.id()), Some(*b.id()));
        assert!(!reg.in_grace("s1"));
        match expired {
            Some(n) => {
                assert_eq!(n, 1);
                assert_eq!(c.how, Installed::Fresh, "a freed slot is claimed fresh");
                assert_eq!(phones[0].closed(), Some(Close::GRACE_EXPIRED));
                assert!(reg.phones("s1").is_empty());
                assert_eq!(
                    reg.counts(),
                    Counts {
                        binaries: 1,
                        phones: 0,
                        server_ids: 1
                    }
                );
            }
            None => {
                assert_eq!(c.how, Installed::Reclaimed);
                assert_eq!(phones[0].closed(), None, "a stale expiry closes nobody");
                assert_eq!(reg.phones("s1").len(), 1);
                assert_eq!(
                    reg.counts(),
                    Counts {
                        binaries: 1,
                        phones: 1,
                        server_ids: 1
                    }
                );
            }
        }
    });
}

/// §6.3/§6.4 under evict: the reclaim closes the attached phone 4404 or the expiry closes it
/// 1011 — exactly one of them, never a phone left open, never closed twice.
#[test]
fn evicting_reclaim_racing_grace_expiry_closes_the_phone_exactly_once() {
    loom::model(|| {
        let (reg, ticket, phones) = expired_grace(ReclaimPolicy::Evict, 1);

        let claimer = {
            let reg = reg.clone();
            thread::spawn(move || {
                let mut c = claimed(reg.claim(&sid(), MockConn::new()));
                let how = c.how;
                c.apply();
                how
            })
        };
        let expirer = {
            let reg = reg.clone();
            thread::spawn(move || reg.expire(&ticket).apply())
        };
        assert_plausible(reg.counts(), 1);
        let how = claimer.join().unwrap();
        expirer.join().unwrap();

        let want = match how {
            Installed::Fresh => Close::GRACE_EXPIRED,
            Installed::Reclaimed => Close::RECLAIMED,
            Installed::TookOver => panic!("there was no live incumbent"),
        };
        assert_eq!(phones[0].closed(), Some(want));
        assert_eq!(phones[0].close_calls(), 1);
        assert_eq!(
            reg.counts(),
            Counts {
                binaries: 1,
                phones: 0,
                server_ids: 1
            }
        );
    });
}

/// §6.2/§6.5: the incumbent's late teardown racing the takeover that displaces it. Either
/// the release comes first (grace, then the takeover reclaims) or the takeover does (the
/// incumbent is closed 1011 and its release does nothing). The newcomer holds the slot either
/// way, and the grace ticket of a release that came first can never free it.
#[test]
fn displaced_binarys_release_racing_the_takeover_never_touches_the_new_holder() {
    loom::model(|| {
        let (reg, clock) = registry(ReclaimPolicy::Inherit);
        let (a, a_lease) = live(&reg);
        let (phone, _pl) = attached(&reg);
        let incumbent = match reg.claim(&sid(), MockConn::new()) {
            Claim::Conflict(inc) => inc,
            Claim::Claimed(_) => panic!("expected a conflict"),
        };
        let b = MockConn::new();

        let releaser = {
            let reg = reg.clone();
            thread::spawn(move || reg.release(&a_lease))
        };
        let taker = {
            let (reg, b) = (reg.clone(), b.clone());
            thread::spawn(move || {
                let mut c = claimed(reg.takeover(&sid(), &incumbent, b));
                c.apply();
                c
            })
        };
        assert_plausible(reg.counts(), 1);
        let ticket = releaser.join().unwrap();
        let c = taker.join().unwrap();

        assert!(c.lease.is_current());
        assert_eq!(reg.binary("s1").map(|x| *x.id()), Some(*b.id()));
        assert!(!reg.in_grace("s1"));
        match &ticket {
            Some(_) => {
                assert_eq!(c.how, Installed::Reclaimed);
                assert_eq!(a.closed(), None, "it had already left");
            }
            None => {
                assert_eq!(c.how, Installed::TookOver);
                assert_eq!(a.closed(), Some(Close::HEARTBEAT_TIMEOUT));
            }
        }
        if let Some(t) = ticket {
            clock.advance(GRACE);
            assert!(matches!(reg.expire(&t), Expiry::Stale));
        }
        assert_eq!(phone.closed(), None);
        assert_eq!(
            reg.counts(),
            Counts {
                binaries: 1,
                phones: 1,
                server_ids: 1
            }
        );
    });
}

/// §6.4/§6.5: a binary's release racing a newcomer's claim. The claim either meets the live
/// binary (a conflict, and the slot then goes into grace) or finds the slot in grace and
/// reclaims it (and no later release by the old binary can undo that).
#[test]
fn release_racing_a_claim_is_a_conflict_or_a_reclaim() {
    loom::model(|| {
        let (reg, _clock) = registry(ReclaimPolicy::Evict);
        let (_a, a_lease) = live(&reg);
        let b = MockConn::new();

        let releaser = {
            let reg = reg.clone();
            thread::spawn(move || {
                let ticket = reg.release(&a_lease);
                (ticket, a_lease)
            })
        };
        let claimer = {
            let (reg, b) = (reg.clone(), b.clone());
            thread::spawn(move || match reg.claim(&sid(), b) {
                Claim::Claimed(c) => Some(c),
                Claim::Conflict(_) => None,
            })
        };
        assert_plausible(reg.counts(), 0);
        let (ticket, a_lease) = releaser.join().unwrap();
        let c = claimer.join().unwrap();

        assert!(ticket.is_some(), "the holder's release always starts grace");
        assert!(reg.release(&a_lease).is_none());
        match c {
            Some(c) => {
                assert_eq!(c.how, Installed::Reclaimed);
                assert!(c.lease.is_current());
                assert_eq!(reg.binary("s1").map(|x| *x.id()), Some(*b.id()));
                assert_eq!(
                    reg.counts(),
                    Counts {
                        binaries: 1,
                        phones: 0,
                        server_ids: 1
                    }
                );
            }
            None => {
                assert!(reg.in_grace("s1"));
                assert_eq!(
                    reg.counts(),
                    Counts {
                        binaries: 0,
                        phones: 0,
                        server_ids: 1
                    }
                );
            }
        }
    });
}

/// §6.3: a phone registering while the expiry timer fires. The phone is either registered in
/// the slot in grace (and then closed 1011 by the expiry) or refused NoServer; it is never
/// registered in a freed slot and left open.
#[test]
fn phone_registration_racing_expiry_is_closed_or_refused() {
    loom::model(|| {
        let (reg, ticket, _) = expired_grace(ReclaimPolicy::Evict, 0);
        let phone = MockConn::new();

        let registrar = {
            let (reg, phone) = (reg.clone(), phone.clone());
            thread::spawn(move || match reg.register_phone(&sid(), phone) {
                Registration::Pending(l) => Some(l),
                Registration::NoServer => None,
                Registration::Attached(_) => panic!("no binary is live"),
                Registration::TooManyPhones => panic!("the slot has room"),
            })
        };
        let expirer = {
            let reg = reg.clone();
            thread::spawn(move || {
                let mut e = reg.expire(&ticket);
                assert!(
                    matches!(e, Expiry::Expired(_)),
                    "nothing else can end this grace"
                );
                e.apply();
            })
        };
        assert_plausible(reg.counts(), 1);
        let lease = registrar.join().unwrap();
        expirer.join().unwrap();

        match lease {
            Some(l) => {
                assert_eq!(phone.closed(), Some(Close::GRACE_EXPIRED));
                assert!(matches!(l.route(Bytes::from_static(b"1")), ToBinary::Gone));
            }
            None => assert_eq!(phone.closed(), None),
        }
        assert!(reg.phones("s1").is_empty());
        assert_eq!(reg.counts(), Counts::default());
    });
}

/// §6.4/§7: a pending phone keeps sending while a binary reclaims and takes the backlog. What
/// the binary receives is the phone's messages in the order sent: held ones are handed over
/// before anything sent later goes straight to the binary.
#[test]
fn held_messages_reach_the_reclaiming_binary_before_later_ones() {
    loom::model(|| {
        let (reg, _clock) = registry(ReclaimPolicy::Evict);
        let (_a, a_lease) = live(&reg);
        reg.release(&a_lease).expect("grace");
        let phone = MockConn::new();
        let lease = match reg.register_phone(&sid(), phone.clone()) {
            Registration::Pending(l) => l,
            _ => panic!("expected Pending"),
        };
        assert!(matches!(
            lease.route(Bytes::from_static(b"1")),
            ToBinary::Held
        ));
        let b = MockConn::new();

        let sender = thread::spawn(move || {
            for m in [&b"2"[..], b"3"] {
                match lease.route(Bytes::from_static(m)) {
                    // What the phone's task does: send outside the registry's lock.
                    ToBinary::Forward { binary, frame, .. } => binary.send(frame).unwrap(),
                    ToBinary::Held => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let reclaimer = {
            let (reg, b) = (reg.clone(), b.clone());
            thread::spawn(move || {
                let c = claimed(reg.claim(&sid(), b.clone()));
                // What the binary's task does: deliver each batch before asking for more.
                loop {
                    match reg.take_backlog(&c.lease) {
                        Backlog::Items(items) => {
                            for item in items {
                                if let Held::Frame(frame) = item.kind {
                                    b.send(frame).unwrap();
                                }
                            }
                        }
                        Backlog::Done => break,
                        Backlog::Lost => panic!("nobody else claims"),
                    }
                }
            })
        };
        sender.join().unwrap();
        reclaimer.join().unwrap();

        // Once the backlog is Done nothing is held: every message reached the binary, in order.
        assert_eq!(reg.binary("s1").map(|x| *x.id()), Some(*b.id()));
        assert_eq!(b.sent_text(), ["1", "2", "3"]);
    });
}

/// §11 fencing racing the binary's own teardown: whichever comes first, the slot ends gone
/// (no grace survives the fence), the binary and its phone are closed 1012 exactly once, and
/// a grace ticket from a release that came first is stale.
#[test]
fn fence_racing_the_binarys_release_frees_the_slot_without_grace() {
    loom::model(|| {
        let (reg, clock) = registry(ReclaimPolicy::Inherit);
        let (b, lease) = live(&reg);
        let (p, _) = attached(&reg);

        let releaser = {
            let reg = reg.clone();
            thread::spawn(move || reg.release(&lease))
        };
        let fencer = {
            let reg = reg.clone();
            thread::spawn(move || {
                let mut f = reg.fence(&sid()).expect("the slot is held until the fence");
                let live = f.binary.is_some();
                f.apply();
                live
            })
        };
        assert_plausible(reg.counts(), 1);
        let ticket = releaser.join().unwrap();
        let fenced_live = fencer.join().unwrap();

        // The fence saw the binary live exactly when the release had not run yet.
        assert_eq!(fenced_live, ticket.is_none());
        assert_eq!(p.closed(), Some(Close::SERVICE_RESTART));
        assert_eq!(p.close_calls(), 1);
        match &ticket {
            None => assert_eq!(b.closed(), Some(Close::SERVICE_RESTART)),
            Some(_) => assert_eq!(b.closed(), None, "it had left already"),
        }
        assert!(!reg.holds("s1"));
        assert!(!reg.in_grace("s1"));
        assert_eq!(reg.counts(), Counts::default());
        if let Some(ticket) = ticket {
            clock.advance(GRACE);
            assert!(matches!(reg.expire(&ticket), Expiry::Stale));
        }
    });
}

/// §11 fencing racing a grace expiry that is due: exactly one of them acts, so the phone is
/// closed once, 1011 "binary did not reconnect" or 1012 "service restart", and the slot is gone.
#[test]
fn fence_racing_grace_expiry_closes_each_phone_exactly_once() {
    loom::model(|| {
        let (reg, ticket, phones) = expired_grace(ReclaimPolicy::Evict, 1);

        let expirer = {
            let reg = reg.clone();
            thread::spawn(move || {
                let mut e = reg.expire(&ticket);
                let expired = matches!(e, Expiry::Expired(_));
                e.apply();
                expired
            })
        };
        let fencer = {
            let reg = reg.clone();
            thread::spawn(move || match reg.fence(&sid()) {
                Some(mut f) => {
                    f.apply();
                    true
                }
                None => false,
            })
        };
        assert_plausible(reg.counts(), 1);
        let expired = expirer.join().unwrap();
        let fenced = fencer.join().unwrap();

        assert!(expired != fenced, "exactly one acts");
        let want = if expired {
            Close::GRACE_EXPIRED
        } else {
            Close::SERVICE_RESTART
        };
        assert_eq!(phones[0].closed(), Some(want));
        assert_eq!(phones[0].close_calls(), 1);
        assert!(!reg.holds("s1"));
        assert_eq!(reg.counts(), Counts::default());
    });
}

/// A phone registering while its slot is fenced is either closed 1012 with the rest, or
/// finds no server (4404): never left registered in a slot nobody holds.
#[test]
fn phone_registration_racing_a_fence_is_closed_or_refused() {
    loom::model(|| {
        let (reg, _clock) = registry(ReclaimPolicy::Evict);
        let (_b, _lease) = live(&reg);
        let phone = MockConn::new();

        let registrar = {
            let (reg, phone) = (reg.clone(), phone.clone());
            thread::spawn(move || match reg.register_phone(&sid(), phone) {
                Registration::Attached(l) => Some(l),
                Registration::NoServer => None,
                Registration::Pending(_) => panic!("the binary is live"),
                Registration::TooManyPhones => panic!("the slot has room"),
            })
        };
        let fencer = {
            let reg = reg.clone();
            thread::spawn(move || reg.fence(&sid()).expect("held").apply())
        };
        assert_plausible(reg.counts(), 1);
        let lease = registrar.join().unwrap();
        fencer.join().unwrap();

        match lease {
            Some(l) => {
                assert_eq!(phone.closed(), Some(Close::SERVICE_RESTART));
                assert!(matches!(l.route(Bytes::from_static(b"1")), ToBinary::Gone));
            }
            None => assert_eq!(phone.closed(), None),
        }
        assert_eq!(reg.counts(), Counts::default());
    });
}

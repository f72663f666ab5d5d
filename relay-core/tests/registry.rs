//! The registry against protocol.md §4 and §6, one behaviour per test.
//!
//! Every test drives a `Registry<MockConn, ManualClock>` by hand: time moves only when a test
//! advances the clock, and the mock conns record every close, so each rule is checked as a
//! deterministic sequence of calls and outcomes. Envelope bytes are tested in `envelope.rs`;
//! here only the registry's decisions are.

use std::time::Duration;

use bytes::Bytes;
use relay_core::{
    Backlog, BinaryLease, Claim, Claimed, Close, CloseCode, Conn, ConnId, Counts, Departure,
    Expiry, GraceTicket, Held, Installed, ManualClock, PhoneLease, ReclaimPolicy, Registration,
    Registry, RegistryConfig, ServerId, ToBinary,
};
use relay_testkit::mock::MockConn;

type Reg = Registry<MockConn, ManualClock>;

const GRACE: Duration = Duration::from_secs(30);
const CAP: usize = 3;
const HELD_BUDGET: usize = 10;

fn registry(policy: ReclaimPolicy) -> (Reg, ManualClock) {
    let clock = ManualClock::new();
    let config = RegistryConfig {
        grace_period: GRACE,
        phones_per_server: CAP,
        held_bytes_per_phone: HELD_BUDGET,
        reclaim_policy: policy,
        shards: 4,
    };
    (Registry::new(config, clock.clone()), clock)
}

fn sid(s: &str) -> ServerId {
    ServerId::parse(s.as_bytes()).unwrap()
}

fn msg(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn claimed(claim: Claim<MockConn>) -> Claimed<MockConn> {
    match claim {
        Claim::Claimed(c) => c,
        Claim::Conflict(inc) => panic!(
            "expected the claim to succeed, got a conflict with {:?}",
            inc.binary.id()
        ),
    }
}

/// A new binary claims `id`; the claim must succeed. Closes whatever the claim says to close.
fn claim(reg: &Reg, id: &ServerId) -> (MockConn, Claimed<MockConn>) {
    let binary = MockConn::new();
    let mut c = claimed(reg.claim(id, binary.clone()));
    c.apply();
    (binary, c)
}

fn live(reg: &Reg, id: &ServerId) -> (MockConn, BinaryLease<MockConn>) {
    let (binary, c) = claim(reg, id);
    assert_eq!(c.how, Installed::Fresh);
    (binary, c.lease)
}

fn attached(reg: &Reg, id: &ServerId) -> (MockConn, PhoneLease<MockConn>) {
    let phone = MockConn::new();
    match reg.register_phone(id, phone.clone()) {
        Registration::Attached(lease) => (phone, lease),
        other => panic!("expected Attached, got {}", registration_name(&other)),
    }
}

fn pending(reg: &Reg, id: &ServerId) -> (MockConn, PhoneLease<MockConn>) {
    let phone = MockConn::new();
    match reg.register_phone(id, phone.clone()) {
        Registration::Pending(lease) => (phone, lease),
        other => panic!("expected Pending, got {}", registration_name(&other)),
    }
}

fn registration_name(r: &Registration<MockConn>) -> &'static str {
    match r {
        Registration::Attached(_) => "Attached",
        Registration::Pending(_) => "Pending",
        Registration::NoServer => "NoServer",
        Registration::TooManyPhones => "TooManyPhones",
    }
}

fn release(reg: &Reg, lease: &BinaryLease<MockConn>) -> GraceTicket {
    reg.release(lease)
        .expect("the holder's release must start grace")
}

/// A forwarded message: (binary it goes to, frame).
fn forwarded(t: ToBinary<MockConn>) -> (ConnId, Bytes) {
    match t {
        ToBinary::Forward { binary, frame } => (*binary.id(), frame),
        other => panic!("expected Forward, got {other:?}"),
    }
}

/// What a held item says, with the phone named by id so it compares.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Frame(ConnId, Bytes),
    Notice(ConnId, u16),
}

fn frame_item(phone: &MockConn, s: &'static str) -> Item {
    Item::Frame(*phone.id(), msg(s))
}

fn notice_item(phone: &MockConn, code: u16) -> Item {
    Item::Notice(*phone.id(), code)
}

/// Takes one batch of the backlog (`None` for `Done`).
fn take_batch(reg: &Reg, lease: &BinaryLease<MockConn>) -> Option<Vec<Item>> {
    match reg.take_backlog(lease) {
        Backlog::Items(items) => Some(
            items
                .into_iter()
                .map(|item| match item.kind {
                    Held::Frame(frame) => Item::Frame(*item.phone.id(), frame),
                    Held::Notice(code) => Item::Notice(*item.phone.id(), code.as_u16()),
                })
                .collect(),
        ),
        Backlog::Done => None,
        Backlog::Lost => panic!("the holder's backlog must not be Lost"),
    }
}

/// Takes the whole backlog, batch after batch, until `Done`.
fn drain(reg: &Reg, lease: &BinaryLease<MockConn>) -> Vec<Item> {
    let mut all = Vec::new();
    while let Some(batch) = take_batch(reg, lease) {
        assert!(!batch.is_empty(), "a batch of Items is never empty");
        all.extend(batch);
    }
    all
}

fn counts(binaries: usize, phones: usize, server_ids: usize) -> Counts {
    Counts {
        binaries,
        phones,
        server_ids,
    }
}

// §6.1 Claim

#[test]
fn claim_of_a_free_server_id_holds_it_at_once() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (binary, c) = claim(&reg, &id);
    assert_eq!(c.how, Installed::Fresh);
    assert!(c.evicted.is_empty() && c.displaced.is_none() && !c.has_backlog);
    assert!(c.lease.is_current());
    assert_eq!(c.lease.server_id(), &id);
    assert_eq!(reg.binary("s1").map(|b| *b.id()), Some(*binary.id()));
    assert!(!reg.in_grace("s1"));
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

// §6.2 Conflict and the liveness probe

#[test]
fn claim_while_a_live_binary_holds_the_slot_is_a_conflict_and_changes_nothing() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (incumbent, lease) = live(&reg, &id);
    let (phone, phone_lease) = attached(&reg, &id);
    let before = reg.counts();

    let newcomer = MockConn::new();
    match reg.claim(&id, newcomer.clone()) {
        Claim::Conflict(inc) => assert_eq!(inc.binary.id(), incumbent.id()),
        Claim::Claimed(_) => panic!("a live incumbent must make the claim a conflict"),
    }

    assert!(lease.is_current());
    assert_eq!(reg.binary("s1").map(|b| *b.id()), Some(*incumbent.id()));
    assert_eq!(reg.counts(), before);
    assert_eq!(incumbent.closed(), None);
    assert_eq!(newcomer.closed(), None);
    assert_eq!(phone.closed(), None);
    // The phone still talks to the incumbent.
    assert_eq!(forwarded(phone_lease.route(msg("1"))).0, *incumbent.id());
}

fn conflict(reg: &Reg, id: &ServerId) -> relay_core::Incumbent<MockConn> {
    match reg.claim(id, MockConn::new()) {
        Claim::Conflict(inc) => inc,
        Claim::Claimed(_) => panic!("expected a conflict"),
    }
}

#[test]
fn takeover_after_a_failed_probe_closes_the_incumbent_with_1011_heartbeat_timeout() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (incumbent, old_lease) = live(&reg, &id);
    let inc = conflict(&reg, &id);

    let newcomer = MockConn::new();
    let mut c = claimed(reg.takeover(&id, &inc, newcomer.clone()));
    assert_eq!(c.how, Installed::TookOver);
    assert_eq!(c.displaced.as_ref().map(|b| *b.id()), Some(*incumbent.id()));
    // Nothing is closed until the caller applies the outcome, outside any lock.
    assert_eq!(incumbent.closed(), None);
    c.apply();
    assert_eq!(incumbent.closed(), Some(Close::HEARTBEAT_TIMEOUT));

    assert!(!old_lease.is_current());
    assert!(c.lease.is_current());
    assert_eq!(reg.binary("s1").map(|b| *b.id()), Some(*newcomer.id()));
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

#[test]
fn takeover_under_evict_closes_the_incumbents_phones_with_4404() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (incumbent, _old) = live(&reg, &id);
    let (p1, l1) = attached(&reg, &id);
    let (p2, _l2) = attached(&reg, &id);
    let inc = conflict(&reg, &id);

    let mut c = claimed(reg.takeover(&id, &inc, MockConn::new()));
    let mut evicted: Vec<ConnId> = c.evicted.iter().map(|p| *p.id()).collect();
    evicted.sort();
    let mut want = vec![*p1.id(), *p2.id()];
    want.sort();
    assert_eq!(evicted, want);
    c.apply();

    assert_eq!(p1.closed(), Some(Close::RECLAIMED));
    assert_eq!(p2.closed(), Some(Close::RECLAIMED));
    assert!(reg.phones("s1").is_empty());
    assert_eq!(reg.counts(), counts(1, 0, 1));
    // The slot changed hands: the evicted phone is gone and no binary hears of it.
    assert!(matches!(l1.route(msg("1")), ToBinary::Gone));
    assert!(reg
        .unregister_phone(&l1, Departure::Closed(CloseCode::NOT_FOUND))
        .is_none());
    assert!(incumbent.sent().is_empty());
}

#[test]
fn takeover_under_inherit_keeps_the_incumbents_phones_for_the_newcomer() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (incumbent, _old) = live(&reg, &id);
    let (phone, lease) = attached(&reg, &id);
    assert_eq!(
        forwarded(lease.route(msg("1"))),
        (*incumbent.id(), msg("1")),
        "first envelope to the incumbent"
    );
    let inc = conflict(&reg, &id);

    let newcomer = MockConn::new();
    let mut c = claimed(reg.takeover(&id, &inc, newcomer.clone()));
    assert!(c.evicted.is_empty());
    c.apply();

    assert_eq!(phone.closed(), None);
    assert_eq!(
        c.lease.route(phone.id().as_str()).map(|p| *p.id()),
        Some(*phone.id())
    );
    // The phone's next message goes to the newcomer.
    assert_eq!(forwarded(lease.route(msg("2"))), (*newcomer.id(), msg("2")));
    assert_eq!(reg.counts(), counts(1, 1, 1));
}

#[test]
fn takeover_with_a_stale_incumbent_after_the_slot_went_into_grace_is_a_reclaim() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (incumbent, old_lease) = live(&reg, &id);
    let inc = conflict(&reg, &id);
    release(&reg, &old_lease);

    let mut c = claimed(reg.takeover(&id, &inc, MockConn::new()));
    assert_eq!(c.how, Installed::Reclaimed);
    assert!(c.displaced.is_none());
    c.apply();
    assert_eq!(
        incumbent.closed(),
        None,
        "the incumbent already left; nothing to close"
    );
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

#[test]
fn takeover_with_a_stale_incumbent_after_another_takeover_is_a_new_conflict() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_first, _) = live(&reg, &id);
    let inc = conflict(&reg, &id);
    let second = MockConn::new();
    claimed(reg.takeover(&id, &inc, second.clone())).apply();

    // A second prober still holding the first incumbent must not displace the second one.
    match reg.takeover(&id, &inc, MockConn::new()) {
        Claim::Conflict(newer) => assert_eq!(newer.binary.id(), second.id()),
        Claim::Claimed(_) => {
            panic!("a stale incumbent must not let the newcomer displace the new holder")
        }
    }
    assert_eq!(second.closed(), None);
    assert_eq!(reg.binary("s1").map(|b| *b.id()), Some(*second.id()));
}

#[test]
fn takeover_with_a_stale_incumbent_after_expiry_is_a_fresh_claim() {
    let (reg, clock) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_first, lease) = live(&reg, &id);
    let inc = conflict(&reg, &id);
    let ticket = release(&reg, &lease);
    clock.advance(GRACE);
    reg.expire(&ticket).apply();

    let c = claimed(reg.takeover(&id, &inc, MockConn::new()));
    assert_eq!(c.how, Installed::Fresh);
    assert!(c.displaced.is_none());
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

// §6.5 Release

#[test]
fn release_by_the_holder_puts_the_slot_in_grace_until_the_deadline() {
    let (reg, clock) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_binary, lease) = live(&reg, &id);
    let start = relay_core::Clock::now(&clock);

    let ticket = release(&reg, &lease);
    assert_eq!(ticket.server_id, id);
    assert_eq!(ticket.deadline, start + GRACE);
    assert!(reg.in_grace("s1"));
    assert!(reg.binary("s1").is_none());
    assert!(!lease.is_current());
}

#[test]
fn release_twice_by_the_same_binary_starts_grace_once() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_binary, lease) = live(&reg, &id);
    release(&reg, &lease);
    assert!(reg.release(&lease).is_none());
    assert!(reg.in_grace("s1"));
    assert_eq!(reg.counts(), counts(0, 0, 1));
}

#[test]
fn late_release_by_a_displaced_binary_does_not_touch_its_successor() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_old, old_lease) = live(&reg, &id);
    let (phone, _pl) = attached(&reg, &id);
    let inc = conflict(&reg, &id);
    let successor = MockConn::new();
    let mut c = claimed(reg.takeover(&id, &inc, successor.clone()));
    c.apply();
    let (phone2, _pl2) = attached(&reg, &id);
    let before = reg.counts();

    // The displaced binary's connection task ends after its successor is installed.
    assert!(reg.release(&old_lease).is_none());

    assert!(c.lease.is_current());
    assert!(!reg.in_grace("s1"));
    assert_eq!(reg.binary("s1").map(|b| *b.id()), Some(*successor.id()));
    assert_eq!(reg.counts(), before);
    assert_eq!(phone.closed(), Some(Close::RECLAIMED));
    assert_eq!(phone2.closed(), None);
}

#[test]
fn late_release_by_a_binary_whose_slot_was_reclaimed_does_not_touch_the_reclaimer() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_old, old_lease) = live(&reg, &id);
    release(&reg, &old_lease);
    let (_new, c) = claim(&reg, &id);
    assert_eq!(c.how, Installed::Reclaimed);

    assert!(reg.release(&old_lease).is_none());
    assert!(c.lease.is_current());
    assert!(!reg.in_grace("s1"));
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

// §6.3 Grace expiry

#[test]
fn grace_expiry_closes_every_phone_with_1011_binary_did_not_reconnect_and_frees_the_slot() {
    let (reg, clock) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_binary, lease) = live(&reg, &id);
    let (was_attached, al) = attached(&reg, &id);
    let ticket = release(&reg, &lease);
    let (was_pending, pl) = pending(&reg, &id);
    assert!(matches!(pl.route(msg("1")), ToBinary::Held));

    clock.advance(GRACE);
    let mut expiry = reg.expire(&ticket);
    match &expiry {
        Expiry::Expired(phones) => assert_eq!(phones.len(), 2),
        other => panic!("expected Expired, got {other:?}"),
    }
    assert_eq!(
        was_attached.closed(),
        None,
        "closing is the caller's job, outside the lock"
    );
    expiry.apply();

    assert_eq!(was_attached.closed(), Some(Close::GRACE_EXPIRED));
    assert_eq!(was_pending.closed(), Some(Close::GRACE_EXPIRED));
    assert_eq!(reg.counts(), counts(0, 0, 0));
    assert!(!reg.in_grace("s1"));
    assert!(reg.phones("s1").is_empty());
    // The slot changed hands: leases of the expired phones route nowhere and notify nobody.
    assert!(matches!(al.route(msg("2")), ToBinary::Gone));
    assert!(reg
        .unregister_phone(&pl, Departure::Closed(CloseCode::INTERNAL))
        .is_none());
}

#[test]
fn after_grace_expiry_phones_get_no_server_until_a_binary_claims_again() {
    let (reg, clock) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_binary, lease) = live(&reg, &id);
    let ticket = release(&reg, &lease);
    clock.advance(GRACE);
    reg.expire(&ticket).apply();

    assert!(matches!(
        reg.register_phone(&id, MockConn::new()),
        Registration::NoServer
    ));
    let (_b2, c) = claim(&reg, &id);
    assert_eq!(c.how, Installed::Fresh);
    attached(&reg, &id);
}

#[test]
fn grace_expiry_before_the_deadline_is_not_yet_and_changes_nothing() {
    let (reg, clock) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_binary, lease) = live(&reg, &id);
    let (phone, _pl) = attached(&reg, &id);
    let ticket = release(&reg, &lease);

    clock.advance(GRACE - Duration::from_nanos(1));
    assert!(matches!(reg.expire(&ticket), Expiry::NotYet));
    assert!(reg.in_grace("s1"));
    assert_eq!(phone.closed(), None);
    assert_eq!(reg.counts(), counts(0, 1, 1));

    // The deadline itself is expiry time.
    clock.advance(Duration::from_nanos(1));
    assert!(matches!(reg.expire(&ticket), Expiry::Expired(_)));
}

#[test]
fn stale_expiry_after_a_reclaim_does_nothing() {
    let (reg, clock) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_old, lease) = live(&reg, &id);
    let (phone, _pl) = attached(&reg, &id);
    let ticket = release(&reg, &lease);
    let (new, c) = claim(&reg, &id);
    let before = reg.counts();

    // The timer fired late: its deadline has passed, but the slot was reclaimed first.
    clock.advance(GRACE * 2);
    assert!(matches!(reg.expire(&ticket), Expiry::Stale));

    assert!(c.lease.is_current());
    assert_eq!(reg.binary("s1").map(|b| *b.id()), Some(*new.id()));
    assert_eq!(reg.counts(), before);
    assert_eq!(phone.closed(), None);
    assert_eq!(reg.phones("s1").len(), 1);
}

#[test]
fn expiry_ticket_from_an_earlier_grace_period_of_the_same_server_id_does_nothing() {
    let (reg, clock) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_a, lease_a) = live(&reg, &id);
    let (phone, _pl) = attached(&reg, &id);
    let first = release(&reg, &lease_a);
    let (_b, c) = claim(&reg, &id);
    clock.advance(GRACE / 2);
    let second = release(&reg, &c.lease);

    // The first ticket's deadline has passed; the second grace period's has not.
    clock.advance(GRACE / 2 + Duration::from_secs(1));
    assert!(matches!(reg.expire(&first), Expiry::Stale));
    assert!(reg.in_grace("s1"));
    assert_eq!(phone.closed(), None);
    assert_eq!(reg.counts(), counts(0, 1, 1));

    assert!(matches!(reg.expire(&second), Expiry::NotYet));
    clock.advance(GRACE);
    let mut e = reg.expire(&second);
    assert!(matches!(e, Expiry::Expired(_)));
    e.apply();
    assert_eq!(phone.closed(), Some(Close::GRACE_EXPIRED));
}

#[test]
fn expiry_of_an_already_expired_ticket_is_stale_even_after_a_new_claim() {
    let (reg, clock) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let ticket = release(&reg, &lease);
    clock.advance(GRACE);
    reg.expire(&ticket).apply();
    assert!(matches!(reg.expire(&ticket), Expiry::Stale));

    let (_b, _c) = claim(&reg, &id);
    let (phone, _pl) = attached(&reg, &id);
    assert!(matches!(reg.expire(&ticket), Expiry::Stale));
    assert_eq!(phone.closed(), None);
    assert_eq!(reg.counts(), counts(1, 1, 1));
}

// §6.3, §8 Registering phones

#[test]
fn phone_for_a_server_id_nobody_holds_gets_no_server() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    live(&reg, &sid("other"));
    assert!(matches!(
        reg.register_phone(&sid("s1"), MockConn::new()),
        Registration::NoServer
    ));
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

#[test]
fn phone_while_a_binary_is_live_is_attached() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    live(&reg, &id);
    let (phone, lease) = attached(&reg, &id);
    assert_eq!(lease.conn_id(), phone.id());
    assert_eq!(lease.server_id(), &id);
    assert_eq!(reg.counts(), counts(1, 1, 1));
}

#[test]
fn phone_during_grace_registers_pending_instead_of_no_server() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_b, lease) = live(&reg, &id);
    release(&reg, &lease);
    pending(&reg, &id);
    assert_eq!(reg.counts(), counts(0, 1, 1));
}

#[test]
fn phone_over_the_per_server_cap_gets_too_many_phones() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    live(&reg, &id);
    let leases: Vec<_> = (0..CAP).map(|_| attached(&reg, &id).1).collect();
    assert!(matches!(
        reg.register_phone(&id, MockConn::new()),
        Registration::TooManyPhones
    ));
    // The cap is per server-id.
    live(&reg, &sid("s2"));
    attached(&reg, &sid("s2"));
    // A phone leaving makes room.
    reg.unregister_phone(&leases[0], Departure::Closed(CloseCode::GOING_AWAY));
    attached(&reg, &id);
}

#[test]
fn phone_cap_counts_pending_phones_too() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_b, lease) = live(&reg, &id);
    attached(&reg, &id);
    release(&reg, &lease);
    for _ in 1..CAP {
        pending(&reg, &id);
    }
    assert!(matches!(
        reg.register_phone(&id, MockConn::new()),
        Registration::TooManyPhones
    ));
    assert_eq!(reg.counts(), counts(0, CAP, 1));
}

// §6.3, §6.4 Messages held during grace

#[test]
fn pending_phones_messages_are_held_in_order_and_handed_to_the_reclaiming_binary_first() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    release(&reg, &lease);
    let (p1, l1) = pending(&reg, &id);
    let (p2, l2) = pending(&reg, &id);
    for (l, m) in [
        (&l1, "1a"),
        (&l2, "2a"),
        (&l1, "1b"),
        (&l2, "2b"),
        (&l1, "1c"),
    ] {
        assert!(matches!(l.route(msg(m)), ToBinary::Held));
    }

    let (b, c) = claim(&reg, &id);
    assert_eq!(c.how, Installed::Reclaimed);
    assert!(c.has_backlog);
    // Until the backlog is handed over, new messages queue behind it rather than overtake it.
    assert!(matches!(l2.route(msg("2c")), ToBinary::Held));
    assert_eq!(
        take_batch(&reg, &c.lease),
        Some(vec![
            frame_item(&p1, "1a"),
            frame_item(&p2, "2a"),
            frame_item(&p1, "1b"),
            frame_item(&p2, "2b"),
            frame_item(&p1, "1c"),
            frame_item(&p2, "2c"),
        ])
    );
    // Sent between two batches: still behind what the binary is delivering.
    assert!(matches!(l1.route(msg("1d")), ToBinary::Held));
    assert_eq!(drain(&reg, &c.lease), vec![frame_item(&p1, "1d")]);
    // Handover done: straight to the binary.
    assert_eq!(forwarded(l1.route(msg("1e"))), (*b.id(), msg("1e")));
}

#[test]
fn held_messages_past_the_phones_byte_budget_overflow() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    release(&reg, &lease);
    let (_p1, l1) = pending(&reg, &id);
    let (p2, l2) = pending(&reg, &id);

    assert!(matches!(l1.route(msg("123456")), ToBinary::Held));
    assert!(
        matches!(l1.route(msg("7890")), ToBinary::Held),
        "exactly the budget fits"
    );
    assert!(matches!(l1.route(msg("x")), ToBinary::Overflow));
    // The budget is per phone.
    assert!(matches!(l2.route(msg("0123456789")), ToBinary::Held));

    // The overflowing message was not held.
    let (_b, c) = claim(&reg, &id);
    let items = drain(&reg, &c.lease);
    assert_eq!(items.len(), 3);
    assert_eq!(items[2], frame_item(&p2, "0123456789"));
}

#[test]
fn handing_the_backlog_over_gives_the_phone_its_budget_back() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    release(&reg, &lease);
    let (_p, l) = pending(&reg, &id);
    assert!(matches!(l.route(msg("0123456789")), ToBinary::Held));
    let (_b, c) = claim(&reg, &id);
    assert!(matches!(l.route(msg("x")), ToBinary::Overflow));

    assert_eq!(take_batch(&reg, &c.lease).map(|b| b.len()), Some(1));
    // Still handing over, so held again, but against an emptied budget.
    assert!(matches!(l.route(msg("0123456789")), ToBinary::Held));
}

#[test]
fn under_evict_what_attached_phones_send_during_grace_is_dropped() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let (_p, l) = attached(&reg, &id);
    release(&reg, &lease);
    assert!(matches!(l.route(msg("1")), ToBinary::Dropped));

    let c = claim(&reg, &id).1;
    assert!(!c.has_backlog);
}

#[test]
fn under_inherit_what_attached_phones_send_during_grace_is_held_for_the_reclaiming_binary() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let (p, l) = attached(&reg, &id);
    release(&reg, &lease);
    assert!(matches!(l.route(msg("1")), ToBinary::Held));
    assert!(matches!(l.route(msg("2")), ToBinary::Held));

    let (_b, c) = claim(&reg, &id);
    assert!(c.has_backlog);
    assert_eq!(
        drain(&reg, &c.lease),
        vec![frame_item(&p, "1"), frame_item(&p, "2")]
    );
}

#[test]
fn under_evict_reclaim_during_grace_evicts_attached_phones_with_4404_and_keeps_pending_ones() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let (old, old_lease) = attached(&reg, &id);
    release(&reg, &lease);
    let (new, new_lease) = pending(&reg, &id);

    let b = MockConn::new();
    let mut c = claimed(reg.claim(&id, b.clone()));
    assert_eq!(c.how, Installed::Reclaimed);
    let evicted: Vec<ConnId> = c.evicted.iter().map(|p| *p.id()).collect();
    assert_eq!(evicted, vec![*old.id()]);
    c.apply();
    assert_eq!(old.closed(), Some(Close::RECLAIMED));
    assert_eq!(new.closed(), None);
    assert_eq!(reg.counts(), counts(1, 1, 1));
    assert!(matches!(old_lease.route(msg("1")), ToBinary::Gone));
    assert_eq!(forwarded(new_lease.route(msg("2"))).0, *b.id());
}

#[test]
fn under_inherit_reclaim_during_grace_keeps_attached_phones() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let (old, old_lease) = attached(&reg, &id);
    release(&reg, &lease);

    let (b, c) = claim(&reg, &id);
    assert!(c.evicted.is_empty());
    assert_eq!(old.closed(), None);
    assert_eq!(reg.counts(), counts(1, 1, 1));
    assert_eq!(forwarded(old_lease.route(msg("1"))).0, *b.id());
}

#[test]
fn messages_still_held_when_the_binary_leaves_mid_handover_go_to_the_next_binary() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    release(&reg, &lease);
    let (p, l) = pending(&reg, &id);
    assert!(matches!(l.route(msg("1")), ToBinary::Held));
    let (_b, cb) = claim(&reg, &id);
    assert!(cb.has_backlog);
    // B leaves before taking anything.
    release(&reg, &cb.lease);
    assert!(matches!(reg.take_backlog(&cb.lease), Backlog::Lost));
    assert!(matches!(l.route(msg("2")), ToBinary::Held));

    let (_c, cc) = claim(&reg, &id);
    assert_eq!(
        drain(&reg, &cc.lease),
        vec![frame_item(&p, "1"), frame_item(&p, "2")]
    );
}

#[test]
fn take_backlog_by_a_displaced_binary_is_lost_and_leaves_the_messages_held() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    release(&reg, &lease);
    let (p, l) = pending(&reg, &id);
    assert!(matches!(l.route(msg("1")), ToBinary::Held));
    let (_b, cb) = claim(&reg, &id);
    let inc = conflict(&reg, &id);
    let mut cc = claimed(reg.takeover(&id, &inc, MockConn::new()));
    cc.apply();
    assert!(cc.has_backlog);

    assert!(matches!(reg.take_backlog(&cb.lease), Backlog::Lost));
    assert_eq!(drain(&reg, &cc.lease), vec![frame_item(&p, "1")]);
}

// §4.1, §6.3, §6.4: which binary gets a phone's messages, and in which order. (The token is
// never forwarded, §4.1: the registry never sees it.)

#[test]
fn attached_phone_messages_go_straight_to_the_binary_in_order() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (b, _lease) = live(&reg, &id);
    let (_p, l) = attached(&reg, &id);
    assert_eq!(forwarded(l.route(msg("1"))), (*b.id(), msg("1")));
    assert_eq!(forwarded(l.route(msg("2"))), (*b.id(), msg("2")));
    assert_eq!(forwarded(l.route(msg("3"))), (*b.id(), msg("3")));
}

#[test]
fn pending_phone_messages_are_held_then_delivered_before_its_direct_ones() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    release(&reg, &lease);
    let (p, l) = pending(&reg, &id);
    l.route(msg("1"));
    l.route(msg("2"));
    let (b, c) = claim(&reg, &id);
    assert_eq!(
        drain(&reg, &c.lease),
        vec![frame_item(&p, "1"), frame_item(&p, "2")]
    );
    assert_eq!(forwarded(l.route(msg("3"))), (*b.id(), msg("3")));
}

#[test]
fn pending_phone_that_held_nothing_goes_direct_once_a_binary_claims() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    release(&reg, &lease);
    let (_p, l) = pending(&reg, &id);
    let (b, c) = claim(&reg, &id);
    assert!(!c.has_backlog);
    assert_eq!(forwarded(l.route(msg("1"))), (*b.id(), msg("1")));
    assert_eq!(forwarded(l.route(msg("2"))), (*b.id(), msg("2")));
}

#[test]
fn under_inherit_the_reclaiming_binary_gets_the_kept_phones_next_messages() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let (_p, l) = attached(&reg, &id);
    let (a, _) = forwarded(l.route(msg("1")));
    assert_eq!(a, *_a.id());
    release(&reg, &lease);

    let (b, _c) = claim(&reg, &id);
    assert_eq!(forwarded(l.route(msg("3"))), (*b.id(), msg("3")));
    assert_eq!(forwarded(l.route(msg("4"))), (*b.id(), msg("4")));
}

#[test]
fn under_inherit_messages_held_during_grace_go_to_the_reclaiming_binary() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let (p, l) = attached(&reg, &id);
    assert_eq!(forwarded(l.route(msg("1"))), (*_a.id(), msg("1")));
    release(&reg, &lease);
    l.route(msg("2"));
    l.route(msg("3"));

    let (_b, c) = claim(&reg, &id);
    assert_eq!(
        drain(&reg, &c.lease),
        vec![frame_item(&p, "2"), frame_item(&p, "3")]
    );
}

#[test]
fn under_inherit_each_reclaiming_binary_gets_what_was_held_across_several_grace_periods() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let (p, l) = attached(&reg, &id);
    let mut lease = lease;
    for round in 0..3 {
        release(&reg, &lease);
        l.route(msg("held"));
        let (b, c) = claim(&reg, &id);
        assert_eq!(
            drain(&reg, &c.lease),
            vec![frame_item(&p, "held")],
            "round {round}"
        );
        assert_eq!(
            forwarded(l.route(msg("direct"))),
            (*b.id(), msg("direct")),
            "round {round}"
        );
        lease = c.lease;
    }
}

// §4.3 Close notices

#[test]
fn phone_leaving_sends_the_live_binary_a_notice_with_its_code() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (b, _lease) = live(&reg, &id);
    let (_p, l) = attached(&reg, &id);
    let notice = reg
        .unregister_phone(&l, Departure::Closed(CloseCode::INVALID_PAYLOAD))
        .expect("a notice for the live binary");
    assert_eq!(notice.binary.id(), b.id());
    assert_eq!(notice.code, CloseCode::INVALID_PAYLOAD);
    assert_eq!(reg.counts(), counts(1, 0, 1));
    assert!(matches!(l.route(msg("1")), ToBinary::Gone));
}

#[test]
fn phone_leaving_twice_sends_one_notice() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    live(&reg, &id);
    let (_p, l) = attached(&reg, &id);
    assert!(reg
        .unregister_phone(&l, Departure::Closed(CloseCode::GOING_AWAY))
        .is_some());
    assert!(reg
        .unregister_phone(&l, Departure::Closed(CloseCode::GOING_AWAY))
        .is_none());
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

#[test]
fn phone_closed_at_the_binarys_request_sends_no_notice() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    live(&reg, &id);
    let (_p, l) = attached(&reg, &id);
    assert!(reg.unregister_phone(&l, Departure::Silent).is_none());
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

#[test]
fn pending_phone_leaving_during_grace_takes_its_held_messages_with_it_and_sends_no_notice() {
    for policy in [ReclaimPolicy::Evict, ReclaimPolicy::Inherit] {
        let (reg, _) = registry(policy);
        let id = sid("s1");
        let (_a, lease) = live(&reg, &id);
        release(&reg, &lease);
        let (gone, gl) = pending(&reg, &id);
        let (stays, sl) = pending(&reg, &id);
        gl.route(msg("g1"));
        sl.route(msg("s1"));
        gl.route(msg("g2"));

        assert!(reg
            .unregister_phone(&gl, Departure::Closed(CloseCode::GOING_AWAY))
            .is_none());
        let (_b, c) = claim(&reg, &id);
        assert_eq!(
            drain(&reg, &c.lease),
            vec![frame_item(&stays, "s1")],
            "{policy:?}"
        );
        assert_eq!(gone.closed(), None, "{policy:?}");
        assert_eq!(reg.counts(), counts(1, 1, 1), "{policy:?}");
    }
}

#[test]
fn under_inherit_attached_phone_leaving_during_grace_has_its_notice_held_after_its_frames() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (a, lease) = live(&reg, &id);
    let (p, l) = attached(&reg, &id);
    release(&reg, &lease);
    l.route(msg("1"));
    l.route(msg("2"));

    assert!(reg
        .unregister_phone(&l, Departure::Closed(CloseCode::GOING_AWAY))
        .is_none());
    assert_eq!(reg.counts(), counts(0, 0, 1));
    let (_b, c) = claim(&reg, &id);
    assert!(c.has_backlog);
    assert_eq!(
        drain(&reg, &c.lease),
        vec![
            frame_item(&p, "1"),
            frame_item(&p, "2"),
            notice_item(&p, 1001),
        ]
    );
    assert!(a.sent().is_empty());
}

#[test]
fn under_inherit_attached_phone_leaving_silently_during_grace_leaves_no_notice() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let (_p, l) = attached(&reg, &id);
    release(&reg, &lease);
    assert!(reg.unregister_phone(&l, Departure::Silent).is_none());
    assert!(!claim(&reg, &id).1.has_backlog);
}

#[test]
fn under_evict_attached_phone_leaving_during_grace_leaves_no_notice() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    let (_p, l) = attached(&reg, &id);
    release(&reg, &lease);
    assert!(reg
        .unregister_phone(&l, Departure::Closed(CloseCode::GOING_AWAY))
        .is_none());
    let c = claim(&reg, &id).1;
    assert!(!c.has_backlog);
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

#[test]
fn under_evict_phone_leaving_during_grace_takes_messages_no_binary_received_with_it() {
    // The phone was pending, became attached at a reclaim, and that binary left before taking
    // its messages. Leaving in the next grace period under evict, nobody will get a notice for
    // it, so no binary may get its frames either (they would name a conn_id never closed).
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    release(&reg, &lease);
    let (_p, l) = pending(&reg, &id);
    l.route(msg("1"));
    let (_b, cb) = claim(&reg, &id);
    assert!(cb.has_backlog);
    release(&reg, &cb.lease);

    assert!(reg
        .unregister_phone(&l, Departure::Closed(CloseCode::GOING_AWAY))
        .is_none());
    let c = claim(&reg, &id).1;
    assert!(!c.has_backlog);
    assert!(drain(&reg, &c.lease).is_empty());
}

#[test]
fn phone_leaving_while_its_messages_are_being_handed_over_has_its_notice_queued_behind_them() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_a, lease) = live(&reg, &id);
    release(&reg, &lease);
    let (p, l) = pending(&reg, &id);
    l.route(msg("1"));
    let (b, c) = claim(&reg, &id);

    // The binary has not had "1" yet: a notice now would overtake it.
    assert!(reg
        .unregister_phone(&l, Departure::Closed(CloseCode::GOING_AWAY))
        .is_none());
    assert_eq!(
        drain(&reg, &c.lease),
        vec![frame_item(&p, "1"), notice_item(&p, 1001)]
    );
    assert!(b.sent().is_empty());
}

// §4.2 Binary → phone routing

#[test]
fn binary_routes_to_its_own_phones() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_b, lease) = live(&reg, &id);
    let (p1, _l1) = attached(&reg, &id);
    let (p2, _l2) = attached(&reg, &id);
    assert_eq!(
        lease.route(p1.id().as_str()).map(|c| *c.id()),
        Some(*p1.id())
    );
    assert_eq!(
        lease.route(p2.id().as_str()).map(|c| *c.id()),
        Some(*p2.id())
    );
    assert!(lease.route("c-00000000000000000000000000000000").is_none());
    assert!(lease.route("").is_none());
}

#[test]
fn binary_cannot_route_to_another_server_ids_phone() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let (_b1, l1) = live(&reg, &sid("s1"));
    let (_b2, _l2) = live(&reg, &sid("s2"));
    let (other, _) = attached(&reg, &sid("s2"));
    assert!(l1.route(other.id().as_str()).is_none());
}

#[test]
fn binary_cannot_route_to_a_phone_that_left() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_b, lease) = live(&reg, &id);
    let (p, l) = attached(&reg, &id);
    reg.unregister_phone(&l, Departure::Closed(CloseCode::GOING_AWAY));
    assert!(lease.route(p.id().as_str()).is_none());
}

#[test]
fn displaced_binary_cannot_route_after_a_takeover() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_old, old_lease) = live(&reg, &id);
    let (p, _l) = attached(&reg, &id);
    let inc = conflict(&reg, &id);
    let c = claimed(reg.takeover(&id, &inc, MockConn::new()));
    assert!(old_lease.route(p.id().as_str()).is_none());
    assert!(!old_lease.is_current());
    assert!(c.lease.route(p.id().as_str()).is_some());
}

#[test]
fn departed_binary_cannot_route_during_grace_or_after_a_reclaim() {
    let (reg, _) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (_old, old_lease) = live(&reg, &id);
    let (p, _l) = attached(&reg, &id);
    release(&reg, &old_lease);
    assert!(old_lease.route(p.id().as_str()).is_none());
    let (_b, c) = claim(&reg, &id);
    assert!(old_lease.route(p.id().as_str()).is_none());
    assert!(c.lease.route(p.id().as_str()).is_some());
}

// §6.3, §10 Counts

#[test]
fn counts_do_not_count_a_binary_in_grace_but_count_its_phones() {
    let (reg, clock) = registry(ReclaimPolicy::Evict);
    let (_b1, l1) = live(&reg, &sid("s1"));
    let (_b2, _l2) = live(&reg, &sid("s2"));
    attached(&reg, &sid("s1"));
    attached(&reg, &sid("s1"));
    attached(&reg, &sid("s2"));
    assert_eq!(reg.counts(), counts(2, 3, 2));

    let ticket = release(&reg, &l1);
    assert_eq!(reg.counts(), counts(1, 3, 2));
    pending(&reg, &sid("s1"));
    assert_eq!(reg.counts(), counts(1, 4, 2));

    clock.advance(GRACE);
    reg.expire(&ticket).apply();
    assert_eq!(reg.counts(), counts(1, 1, 1));
}

#[test]
fn counts_follow_reclaim_and_takeover() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (_b1, l1) = live(&reg, &id);
    attached(&reg, &id);
    release(&reg, &l1);
    pending(&reg, &id);
    // Reclaim under evict: the binary is back, the attached phone is evicted.
    claim(&reg, &id);
    assert_eq!(reg.counts(), counts(1, 1, 1));
    // Takeover under evict: one binary replaces another, the (now attached) phone is evicted.
    let inc = conflict(&reg, &id);
    claimed(reg.takeover(&id, &inc, MockConn::new())).apply();
    assert_eq!(reg.counts(), counts(1, 0, 1));
}

// §11 fencing: another node holds the server-id now; the slot goes at once, without grace.

fn fence(reg: &Reg, id: &ServerId) -> relay_core::Fenced<MockConn> {
    let mut f = reg.fence(id).expect("a held slot is fenced");
    let out = relay_core::Fenced {
        binary: f.binary.clone(),
        phones: f.phones.clone(),
    };
    f.apply();
    out
}

#[test]
fn fencing_a_live_slot_closes_its_binary_and_phones_with_1012_and_frees_it_without_grace() {
    let (reg, _) = registry(ReclaimPolicy::Evict);
    let id = sid("s1");
    let (b, lease) = live(&reg, &id);
    let (p1, l1) = attached(&reg, &id);
    let (p2, _) = attached(&reg, &id);
    let (_other, _) = live(&reg, &sid("s2"));
    assert!(reg.holds("s1"));

    let f = fence(&reg, &id);
    assert_eq!(f.binary.as_ref().map(|b| *b.id()), Some(*b.id()));
    assert_eq!(f.phones.len(), 2);
    for c in [&b, &p1, &p2] {
        assert_eq!(c.closed(), Some(Close::SERVICE_RESTART));
    }
    assert!(!reg.holds("s1"), "no grace: the slot is gone");
    assert!(!reg.in_grace("s1"));
    assert!(reg.holds("s2"), "other server-ids are untouched");
    assert_eq!(reg.counts(), counts(1, 0, 1));

    // Everything the old holder does afterwards is stale.
    assert!(!lease.is_current());
    assert!(
        reg.release(&lease).is_none(),
        "no grace starts later either"
    );
    assert!(matches!(reg.take_backlog(&lease), Backlog::Lost));
    assert!(matches!(l1.route(msg("{}")), ToBinary::Gone));
    assert!(reg
        .unregister_phone(&l1, Departure::Closed(CloseCode::GOING_AWAY))
        .is_none());
    assert_eq!(reg.counts(), counts(1, 0, 1));
    // A phone now finds nobody; a binary claims fresh.
    let phone = MockConn::new();
    assert!(matches!(
        reg.register_phone(&id, phone),
        Registration::NoServer
    ));
    let (_, c) = claim(&reg, &id);
    assert_eq!(c.how, Installed::Fresh);
}

#[test]
fn fencing_a_slot_in_grace_closes_its_phones_with_1012_and_makes_the_ticket_stale() {
    let (reg, clock) = registry(ReclaimPolicy::Inherit);
    let id = sid("s1");
    let (b, lease) = live(&reg, &id);
    let (p1, _) = attached(&reg, &id);
    let ticket = release(&reg, &lease);
    let (p2, _) = pending(&reg, &id);
    assert_eq!(reg.counts(), counts(0, 2, 1));

    let f = fence(&reg, &id);
    assert!(f.binary.is_none(), "the binary had already left");
    assert_eq!(p1.closed(), Some(Close::SERVICE_RESTART));
    assert_eq!(p2.closed(), Some(Close::SERVICE_RESTART));
    assert_eq!(b.closed(), None);
    assert_eq!(reg.counts(), counts(0, 0, 0));

    clock.advance(GRACE);
    assert!(matches!(reg.expire(&ticket), Expiry::Stale));
    assert_eq!(
        p1.closed(),
        Some(Close::SERVICE_RESTART),
        "closed once, by the fence"
    );
}

#[test]
fn fencing_a_server_id_not_held_here_does_nothing() {
    let (reg, clock) = registry(ReclaimPolicy::Evict);
    assert!(reg.fence(&sid("s1")).is_none());
    let id = sid("s1");
    let (_b, lease) = live(&reg, &id);
    let (p, _) = attached(&reg, &id);
    let ticket = release(&reg, &lease);
    clock.advance(GRACE);
    reg.expire(&ticket).apply();
    assert!(!reg.holds("s1"));
    assert!(
        reg.fence(&id).is_none(),
        "an expired slot is not fenced again"
    );
    assert_eq!(p.closed(), Some(Close::GRACE_EXPIRED));
    assert_eq!(reg.counts(), counts(0, 0, 0));
}

//! Who holds each server-id, which phones belong to it, and what happens when its binary
//! leaves and comes back (protocol.md §6).
//!
//! The registry decides; it never does I/O. Every operation takes the lock(s) it needs, changes
//! state, and returns values that say what the caller must do (close these phones with 4404,
//! forward this frame to that binary, ...). It never calls [`Conn::send`] or [`Conn::close`]
//! under a lock; the `apply` helpers on outcomes do that after the guard is gone.
//!
//! Locks:
//! - A sharded map from server-id to its [`Slot`], locked only when a connection arrives or a
//!   grace period ends.
//! - One mutex per slot, holding the binary state, the phones and the held backlog. Per-message
//!   routing goes through a lease ([`BinaryLease`], [`PhoneLease`]) that points straight at the
//!   slot, so messages of different server-ids never touch a shared lock.
//! - Order when both are taken: shard, then slot.
//! - The live counts change inside the critical section that makes the change (server-ids
//!   under the shard lock, binaries and phones under the slot lock), so a decrement can never
//!   overtake the increment it undoes.
//!
//! Identity instead of cancellation: every installed binary gets a fresh generation and every
//! grace period a fresh epoch. A release, an expiry or a route that names a generation or epoch
//! that is no longer current does nothing, so a late timer or a displaced binary's teardown can
//! never touch its successor.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::mem;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::clock::Clock;
use crate::close::{Close, CloseCode};
use crate::conn::{Conn, ConnId};
use crate::headers::ServerId;
use crate::sync::{lock, Arc, AtomicU64, AtomicUsize, Mutex, Ordering};

/// What happens to the phones of the previous binary when a new binary reclaims (§6.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReclaimPolicy {
    /// Close them 4404 "binary reclaimed server-id" (the default).
    #[default]
    Evict,
    /// Keep them; their messages sent during grace are held for the new binary.
    Inherit,
}

/// The registry's knobs (protocol.md §6–§8).
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub grace_period: Duration,
    pub phones_per_server: usize,
    /// Byte budget of the messages held for one phone while no binary can take them.
    pub held_bytes_per_phone: usize,
    pub reclaim_policy: ReclaimPolicy,
    /// Number of independently locked shards of the server-id map.
    pub shards: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            grace_period: Duration::from_secs(30),
            phones_per_server: 16,
            held_bytes_per_phone: 4 << 20,
            reclaim_policy: ReclaimPolicy::Evict,
            shards: 64,
        }
    }
}

struct Slot<C> {
    server_id: ServerId,
    state: Mutex<SlotState<C>>,
}

struct SlotState<C> {
    binary: BinaryState<C>,
    phones: HashMap<ConnId, PhoneEntry<C>>,
}

enum BinaryState<C> {
    /// A binary holds the slot. `backlog` is `Some` while messages held during grace are
    /// still being handed to it; phone messages keep queueing behind them until it is empty.
    Live {
        binary: C,
        generation: u64,
        backlog: Option<VecDeque<HeldItem<C>>>,
    },
    /// The binary left; the slot waits for a reclaim until `deadline`.
    Grace {
        epoch: u64,
        deadline: Instant,
        backlog: VecDeque<HeldItem<C>>,
    },
    /// Removed from the map by expiry. Only stale leases can still see this.
    Freed,
}

struct PhoneEntry<C> {
    conn: C,
    /// Attached to a binary (the live one, or the one that left, during grace). `false` for a
    /// phone that registered during grace and has never had a binary.
    attached: bool,
    held_bytes: usize,
}

/// A message held for whichever binary claims the slot next.
#[derive(Debug)]
pub struct HeldItem<C> {
    pub phone: C,
    pub kind: Held,
}

/// What a [`HeldItem`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A phone's message, to be wrapped in an envelope (§4.1).
    Frame(Bytes),
    /// The phone left during grace (policy `inherit`): its close notice, after its messages.
    Notice(CloseCode),
}

/// Proof of holding a slot, given to the binary that claimed it. Cheap to clone; all of its
/// operations are refused once the slot has moved on to another binary.
pub struct BinaryLease<C> {
    slot: Arc<Slot<C>>,
    generation: u64,
}

impl<C> Clone for BinaryLease<C> {
    fn clone(&self) -> Self {
        BinaryLease {
            slot: self.slot.clone(),
            generation: self.generation,
        }
    }
}

impl<C: Conn> BinaryLease<C> {
    pub fn server_id(&self) -> &ServerId {
        &self.slot.server_id
    }

    /// The phone `conn_id` of this binary's server-id, if this binary still holds the slot
    /// and the phone is registered (§4.2). Takes only this slot's lock; allocates nothing.
    pub fn route(&self, conn_id: &str) -> Option<C> {
        let st = lock(&self.slot.state);
        match &st.binary {
            BinaryState::Live { generation, .. } if *generation == self.generation => {
                st.phones.get(conn_id).map(|p| p.conn.clone())
            }
            _ => None,
        }
    }

    /// Whether this binary still holds the slot.
    pub fn is_current(&self) -> bool {
        matches!(&lock(&self.slot.state).binary,
            BinaryState::Live { generation, .. } if *generation == self.generation)
    }
}

/// Proof of a phone's registration. Routes its messages to the current binary.
pub struct PhoneLease<C> {
    slot: Arc<Slot<C>>,
    conn_id: ConnId,
    policy: ReclaimPolicy,
    held_budget: usize,
}

/// Where a phone's message goes (§4.1, §6.3).
#[derive(Debug)]
pub enum ToBinary<C> {
    /// Send it to `binary` now, in an envelope (§4.1).
    Forward { binary: C, frame: Bytes },
    /// Held for the next binary (grace, or a backlog still being handed over).
    Held,
    /// Dropped: the phone's binary left and policy `evict` will close the phone at reclaim.
    Dropped,
    /// Holding it would pass the phone's budget: close the phone 1011 "phone backlog full".
    Overflow,
    /// The phone is no longer registered (evicted, expired, or already unregistered).
    Gone,
}

impl<C: Conn> PhoneLease<C> {
    pub fn conn_id(&self) -> &ConnId {
        &self.conn_id
    }

    pub fn server_id(&self) -> &ServerId {
        &self.slot.server_id
    }

    /// Decides where one message of this phone goes. Takes only this slot's lock.
    pub fn route(&self, frame: Bytes) -> ToBinary<C> {
        let mut st = lock(&self.slot.state);
        let SlotState { binary, phones } = &mut *st;
        let Some(entry) = phones.get_mut(&self.conn_id) else {
            return ToBinary::Gone;
        };
        match binary {
            BinaryState::Live {
                binary,
                backlog: None,
                ..
            } => ToBinary::Forward {
                binary: binary.clone(),
                frame,
            },
            BinaryState::Live {
                backlog: Some(backlog),
                ..
            } => hold(backlog, entry, frame, self.held_budget),
            BinaryState::Grace { backlog, .. } => {
                if entry.attached && self.policy == ReclaimPolicy::Evict {
                    ToBinary::Dropped
                } else {
                    hold(backlog, entry, frame, self.held_budget)
                }
            }
            BinaryState::Freed => ToBinary::Gone,
        }
    }
}

fn hold<C: Conn>(
    backlog: &mut VecDeque<HeldItem<C>>,
    entry: &mut PhoneEntry<C>,
    frame: Bytes,
    budget: usize,
) -> ToBinary<C> {
    let held = entry.held_bytes.saturating_add(frame.len());
    if held > budget {
        return ToBinary::Overflow;
    }
    entry.held_bytes = held;
    backlog.push_back(HeldItem {
        phone: entry.conn.clone(),
        kind: Held::Frame(frame),
    });
    ToBinary::Held
}

/// A live incumbent found by [`Registry::claim`]: the caller probes it (§6.2) and, if it does
/// not answer, calls [`Registry::takeover`] with this value.
#[derive(Debug)]
pub struct Incumbent<C> {
    pub binary: C,
    generation: u64,
}

/// How the slot came to the new binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The slot was free.
    Fresh,
    /// The slot was in grace (§6.4).
    Reclaimed,
    /// The incumbent failed the liveness probe (§6.2).
    TookOver,
}

/// The binary now holds the slot. The caller must close `evicted` with 4404 "binary reclaimed
/// server-id" and `displaced` with 1011 "heartbeat timeout" ([`Claimed::apply`] does both),
/// then, if `has_backlog`, hand the held messages over with [`Registry::take_backlog`] before
/// anything else reaches the binary from its phones.
pub struct Claimed<C> {
    pub lease: BinaryLease<C>,
    pub how: Installed,
    pub evicted: Vec<C>,
    pub displaced: Option<C>,
    pub has_backlog: bool,
}

impl<C: Conn> Claimed<C> {
    /// Closes the evicted phones and the displaced binary. Call with no lock held.
    pub fn apply(&mut self) {
        for phone in self.evicted.drain(..) {
            phone.close(Close::RECLAIMED);
        }
        if let Some(old) = self.displaced.take() {
            old.close(Close::HEARTBEAT_TIMEOUT);
        }
    }
}

/// The outcome of a claim (§6.1, §6.2, §6.4).
pub enum Claim<C> {
    Claimed(Claimed<C>),
    /// A live binary holds the slot; the newcomer holds nothing while the caller probes.
    Conflict(Incumbent<C>),
}

/// The outcome of registering a phone (§6.3, §8).
pub enum Registration<C> {
    /// A live binary holds the slot; messages flow at once.
    Attached(PhoneLease<C>),
    /// The slot is in grace: messages are held for the next binary.
    Pending(PhoneLease<C>),
    /// No binary holds or is in grace for the server-id: close 4404.
    NoServer,
    /// The server-id has its full share of phones: close 4429.
    TooManyPhones,
}

/// Returned by [`Registry::release`]: when to come back and call [`Registry::expire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraceTicket {
    pub server_id: ServerId,
    pub deadline: Instant,
    epoch: u64,
}

/// The outcome of [`Registry::expire`].
#[derive(Debug)]
pub enum Expiry<C> {
    /// The grace period ended unclaimed: the slot is free; close these phones 1011 "binary
    /// did not reconnect" ([`Expiry::apply`]).
    Expired(Vec<C>),
    /// The ticket's deadline has not passed on the registry's clock; come back later.
    NotYet,
    /// The slot was reclaimed (or already expired) since the ticket was issued: nothing done.
    Stale,
}

impl<C: Conn> Expiry<C> {
    /// Closes the phones of an expired slot. Call with no lock held.
    pub fn apply(&mut self) {
        if let Expiry::Expired(phones) = self {
            for phone in phones.drain(..) {
                phone.close(Close::GRACE_EXPIRED);
            }
        }
    }
}

/// What [`Registry::fence`] took off this node: close them all with 1012 "service restart"
/// ([`Fenced::apply`]).
#[derive(Debug)]
pub struct Fenced<C> {
    /// The live binary, if the slot was not in grace.
    pub binary: Option<C>,
    pub phones: Vec<C>,
}

impl<C: Conn> Fenced<C> {
    /// Closes the binary and the phones with 1012. Call with no lock held.
    pub fn apply(&mut self) {
        if let Some(binary) = self.binary.take() {
            binary.close(Close::SERVICE_RESTART);
        }
        for phone in self.phones.drain(..) {
            phone.close(Close::SERVICE_RESTART);
        }
    }
}

/// The outcome of [`Registry::take_backlog`].
pub enum Backlog<C> {
    /// Deliver these to the binary, in order, then ask again.
    Items(VecDeque<HeldItem<C>>),
    /// Nothing more is held: phones' messages now go straight to the binary.
    Done,
    /// This binary no longer holds the slot; what is still held stays for the next one.
    Lost,
}

/// How a phone's connection ended, for [`Registry::unregister_phone`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// Closed with this code (the phone's, 1001 if it vanished, or the relay's): the binary
    /// gets a close notice (§4.3).
    Closed(CloseCode),
    /// Closed because the binary asked (§4.2), or at shutdown: no notice.
    Silent,
}

/// A close notice the caller must send to `binary` (§4.3).
#[derive(Debug)]
pub struct Notice<C> {
    pub binary: C,
    pub code: CloseCode,
}

/// Live counts (§6.3, §10): binaries in grace are not connected; their phones are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub binaries: usize,
    pub phones: usize,
    /// Server-ids held by a live binary or in grace.
    pub server_ids: usize,
}

/// One lock's share of the server-id map.
type Shard<C> = Mutex<HashMap<ServerId, Arc<Slot<C>>>>;

/// The registry. See the module docs.
pub struct Registry<C, K> {
    shards: Box<[Shard<C>]>,
    config: RegistryConfig,
    clock: K,
    next_identity: AtomicU64,
    binaries: AtomicUsize,
    phones: AtomicUsize,
    server_ids: AtomicUsize,
}

impl<C: Conn, K: Clock> Registry<C, K> {
    pub fn new(config: RegistryConfig, clock: K) -> Self {
        let shards = (0..config.shards.max(1))
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        Registry {
            shards,
            config,
            clock,
            next_identity: AtomicU64::new(1),
            binaries: AtomicUsize::new(0),
            phones: AtomicUsize::new(0),
            server_ids: AtomicUsize::new(0),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    pub fn clock(&self) -> &K {
        &self.clock
    }

    fn shard(&self, server_id: &str) -> &Shard<C> {
        let mut h = DefaultHasher::new();
        server_id.hash(&mut h);
        // The modulo keeps the index in range; truncation of the hash is intended.
        &self.shards[(h.finish() as usize) % self.shards.len()]
    }

    fn identity(&self) -> u64 {
        self.next_identity.fetch_add(1, Ordering::Relaxed)
    }

    /// A binary claims `server_id` (§6.1): a free slot is held at once, a slot in grace is
    /// reclaimed (§6.4), a live incumbent is a conflict for the caller to probe (§6.2).
    pub fn claim(&self, server_id: &ServerId, binary: C) -> Claim<C> {
        self.install(server_id, binary, None)
    }

    /// The incumbent did not answer the probe: install `binary` in its place (§6.2). If the
    /// slot has changed since ([`Registry::claim`] found the incumbent), this behaves like a
    /// fresh claim, which may be a new conflict with a newer incumbent.
    pub fn takeover(&self, server_id: &ServerId, incumbent: &Incumbent<C>, binary: C) -> Claim<C> {
        self.install(server_id, binary, Some(incumbent.generation))
    }

    fn install(&self, server_id: &ServerId, binary: C, dead: Option<u64>) -> Claim<C> {
        let mut shard = lock(self.shard(server_id.as_str()));
        let slot = match shard.entry(server_id.clone()) {
            Entry::Vacant(v) => {
                let generation = self.identity();
                let slot = Arc::new(Slot {
                    server_id: server_id.clone(),
                    state: Mutex::new(SlotState {
                        binary: BinaryState::Live {
                            binary,
                            generation,
                            backlog: None,
                        },
                        phones: HashMap::new(),
                    }),
                });
                v.insert(slot.clone());
                // Counted before the lock is dropped, like every count change: an expiry's
                // decrement must never overtake the increment it undoes.
                self.binaries.fetch_add(1, Ordering::Relaxed);
                self.server_ids.fetch_add(1, Ordering::Relaxed);
                drop(shard);
                return Claim::Claimed(Claimed {
                    lease: BinaryLease { slot, generation },
                    how: Installed::Fresh,
                    evicted: Vec::new(),
                    displaced: None,
                    has_backlog: false,
                });
            }
            Entry::Occupied(o) => o.get().clone(),
        };
        let mut st = lock(&slot.state);
        // Expiry removes a slot from the map under the shard lock before freeing it, and we
        // hold the shard lock, so a slot found in the map is never `Freed`.
        drop(shard);
        let generation = self.identity();
        let (how, displaced, backlog) = match mem::replace(&mut st.binary, BinaryState::Freed) {
            BinaryState::Live {
                binary: incumbent,
                generation: g,
                backlog,
            } => {
                if dead != Some(g) {
                    st.binary = BinaryState::Live {
                        binary: incumbent.clone(),
                        generation: g,
                        backlog,
                    };
                    return Claim::Conflict(Incumbent {
                        binary: incumbent,
                        generation: g,
                    });
                }
                (
                    Installed::TookOver,
                    Some(incumbent),
                    backlog.unwrap_or_default(),
                )
            }
            BinaryState::Grace { backlog, .. } => {
                self.binaries.fetch_add(1, Ordering::Relaxed);
                (Installed::Reclaimed, None, backlog)
            }
            BinaryState::Freed => unreachable!("a slot in the map is never freed"),
        };
        let mut backlog = backlog;
        let mut evicted = Vec::new();
        if self.config.reclaim_policy == ReclaimPolicy::Evict {
            st.phones.retain(|_, p| {
                if p.attached {
                    evicted.push(p.conn.clone());
                }
                !p.attached
            });
            if !evicted.is_empty() {
                let gone: Vec<ConnId> = evicted.iter().map(|c| *c.id()).collect();
                backlog.retain(|item| !gone.contains(item.phone.id()));
                self.phones.fetch_sub(evicted.len(), Ordering::Relaxed);
            }
        }
        for p in st.phones.values_mut() {
            p.attached = true;
        }
        let has_backlog = !backlog.is_empty();
        st.binary = BinaryState::Live {
            binary,
            generation,
            backlog: has_backlog.then_some(backlog),
        };
        drop(st);
        Claim::Claimed(Claimed {
            lease: BinaryLease { slot, generation },
            how,
            evicted,
            displaced,
            has_backlog,
        })
    }

    /// The binary behind `lease` disconnected: put the slot in grace (§6.3), if this binary
    /// still holds it (§6.5). Returns when to call [`Registry::expire`].
    pub fn release(&self, lease: &BinaryLease<C>) -> Option<GraceTicket> {
        let mut st = lock(&lease.slot.state);
        let backlog = match &mut st.binary {
            BinaryState::Live {
                generation,
                backlog,
                ..
            } if *generation == lease.generation => backlog.take().unwrap_or_default(),
            _ => return None,
        };
        let epoch = self.identity();
        let deadline = self.clock.now() + self.config.grace_period;
        st.binary = BinaryState::Grace {
            epoch,
            deadline,
            backlog,
        };
        self.binaries.fetch_sub(1, Ordering::Relaxed);
        drop(st);
        Some(GraceTicket {
            server_id: lease.slot.server_id.clone(),
            deadline,
            epoch,
        })
    }

    /// Ends the grace period of `ticket` if it is still the current one and its deadline has
    /// passed on the registry's clock (§6.3). A stale ticket does nothing.
    pub fn expire(&self, ticket: &GraceTicket) -> Expiry<C> {
        let mut shard = lock(self.shard(ticket.server_id.as_str()));
        let Some(slot) = shard.get(ticket.server_id.as_str()).cloned() else {
            return Expiry::Stale;
        };
        let mut st = lock(&slot.state);
        match &st.binary {
            BinaryState::Grace {
                epoch, deadline, ..
            } if *epoch == ticket.epoch => {
                if self.clock.now() < *deadline {
                    return Expiry::NotYet;
                }
            }
            _ => return Expiry::Stale,
        }
        shard.remove(ticket.server_id.as_str());
        self.server_ids.fetch_sub(1, Ordering::Relaxed);
        drop(shard);
        st.binary = BinaryState::Freed;
        let phones: Vec<C> = st.phones.drain().map(|(_, p)| p.conn).collect();
        self.phones.fetch_sub(phones.len(), Ordering::Relaxed);
        drop(st);
        Expiry::Expired(phones)
    }

    /// Takes the messages held for the binary behind `lease`, oldest first (§6.4). Call in a
    /// loop until [`Backlog::Done`], delivering each batch before asking for the next.
    pub fn take_backlog(&self, lease: &BinaryLease<C>) -> Backlog<C> {
        let mut st = lock(&lease.slot.state);
        let SlotState { binary, phones } = &mut *st;
        let backlog = match binary {
            BinaryState::Live {
                generation,
                backlog,
                ..
            } if *generation == lease.generation => backlog,
            _ => return Backlog::Lost,
        };
        match backlog {
            Some(items) if !items.is_empty() => {
                let items = mem::take(items);
                for item in &items {
                    if let Held::Frame(frame) = &item.kind {
                        if let Some(p) = phones.get_mut(item.phone.id()) {
                            p.held_bytes = p.held_bytes.saturating_sub(frame.len());
                        }
                    }
                }
                Backlog::Items(items)
            }
            _ => {
                *backlog = None;
                Backlog::Done
            }
        }
    }

    /// Registers a phone for `server_id` (§6.3, §8).
    pub fn register_phone(&self, server_id: &ServerId, phone: C) -> Registration<C> {
        let shard = lock(self.shard(server_id.as_str()));
        let Some(slot) = shard.get(server_id.as_str()).cloned() else {
            return Registration::NoServer;
        };
        let mut st = lock(&slot.state);
        drop(shard);
        if st.phones.len() >= self.config.phones_per_server {
            return Registration::TooManyPhones;
        }
        let attached = match st.binary {
            BinaryState::Live { .. } => true,
            BinaryState::Grace { .. } => false,
            BinaryState::Freed => unreachable!("a slot in the map is never freed"),
        };
        let conn_id = *phone.id();
        st.phones.insert(
            conn_id,
            PhoneEntry {
                conn: phone,
                attached,
                held_bytes: 0,
            },
        );
        self.phones.fetch_add(1, Ordering::Relaxed);
        drop(st);
        let lease = PhoneLease {
            slot,
            conn_id,
            policy: self.config.reclaim_policy,
            held_budget: self.config.held_bytes_per_phone,
        };
        if attached {
            Registration::Attached(lease)
        } else {
            Registration::Pending(lease)
        }
    }

    /// The phone behind `lease` is gone. Returns the close notice to send now, if any (§4.3);
    /// notices that must wait behind held messages are queued with them instead.
    pub fn unregister_phone(&self, lease: &PhoneLease<C>, how: Departure) -> Option<Notice<C>> {
        let mut st = lock(&lease.slot.state);
        let SlotState { binary, phones } = &mut *st;
        let entry = phones.remove(&lease.conn_id)?;
        self.phones.fetch_sub(1, Ordering::Relaxed);
        let code = match how {
            Departure::Closed(code) => Some(code),
            Departure::Silent => None,
        };
        match binary {
            BinaryState::Live {
                binary,
                backlog: None,
                ..
            } => code.map(|code| Notice {
                binary: binary.clone(),
                code,
            }),
            BinaryState::Live {
                backlog: Some(backlog),
                ..
            } => {
                if let Some(code) = code {
                    backlog.push_back(HeldItem {
                        phone: entry.conn,
                        kind: Held::Notice(code),
                    });
                }
                None
            }
            BinaryState::Grace { backlog, .. } => {
                if !entry.attached || lease.policy == ReclaimPolicy::Evict {
                    // No binary will get a notice for this phone: a pending one was never
                    // seen, and under evict the slot changes hands (§4.3). So no binary may
                    // get its held frames either (held since a handover that never finished):
                    // they would name a conn_id that is never closed.
                    backlog.retain(|item| item.phone.id() != &lease.conn_id);
                } else if let (Some(code), ReclaimPolicy::Inherit) = (code, lease.policy) {
                    backlog.push_back(HeldItem {
                        phone: entry.conn,
                        kind: Held::Notice(code),
                    });
                }
                None
            }
            BinaryState::Freed => None,
        }
    }

    /// Another node of the cluster holds `server_id` now (§11 fencing): drop the slot here at
    /// once, live or in grace, **without** a grace period (a slot in grace here would catch
    /// phones that belong on the new holder). Returns the binary (if live) and every phone,
    /// to close with 1012 "service restart" ([`Fenced::apply`]); `None` if nothing was held.
    ///
    /// Like an expiry it takes the slot out of the map under the shard lock, so it races
    /// release, expiry, claims and registrations the same way: afterwards the old binary's
    /// lease is stale (its release does nothing), every grace ticket is stale, a phone's
    /// unregistration finds nothing, and the next claim or registration meets a free slot.
    pub fn fence(&self, server_id: &ServerId) -> Option<Fenced<C>> {
        let mut shard = lock(self.shard(server_id.as_str()));
        let slot = shard.remove(server_id.as_str())?;
        self.server_ids.fetch_sub(1, Ordering::Relaxed);
        let mut st = lock(&slot.state);
        drop(shard);
        let binary = match mem::replace(&mut st.binary, BinaryState::Freed) {
            BinaryState::Live { binary, .. } => {
                self.binaries.fetch_sub(1, Ordering::Relaxed);
                Some(binary)
            }
            BinaryState::Grace { .. } => None,
            BinaryState::Freed => unreachable!("a slot in the map is never freed"),
        };
        let phones: Vec<C> = st.phones.drain().map(|(_, p)| p.conn).collect();
        self.phones.fetch_sub(phones.len(), Ordering::Relaxed);
        drop(st);
        Some(Fenced { binary, phones })
    }

    /// Whether this registry holds `server_id`'s slot, live or in grace (§11: the cluster
    /// node serves such a server-id here without asking the directory).
    pub fn holds(&self, server_id: &str) -> bool {
        lock(self.shard(server_id)).contains_key(server_id)
    }

    /// A snapshot of the phones registered for `server_id`.
    pub fn phones(&self, server_id: &str) -> Vec<C> {
        let shard = lock(self.shard(server_id));
        let Some(slot) = shard.get(server_id).cloned() else {
            return Vec::new();
        };
        let st = lock(&slot.state);
        drop(shard);
        st.phones.values().map(|p| p.conn.clone()).collect()
    }

    /// The binary holding `server_id`, if one is live.
    pub fn binary(&self, server_id: &str) -> Option<C> {
        let shard = lock(self.shard(server_id));
        let slot = shard.get(server_id)?.clone();
        let st = lock(&slot.state);
        drop(shard);
        match &st.binary {
            BinaryState::Live { binary, .. } => Some(binary.clone()),
            _ => None,
        }
    }

    /// Whether `server_id` is in grace.
    pub fn in_grace(&self, server_id: &str) -> bool {
        let shard = lock(self.shard(server_id));
        let Some(slot) = shard.get(server_id).cloned() else {
            return false;
        };
        let st = lock(&slot.state);
        matches!(st.binary, BinaryState::Grace { .. })
    }

    /// Live counts, each exact at some instant (they are read one after another).
    pub fn counts(&self) -> Counts {
        Counts {
            binaries: self.binaries.load(Ordering::Relaxed),
            phones: self.phones.load(Ordering::Relaxed),
            server_ids: self.server_ids.load(Ordering::Relaxed),
        }
    }
}

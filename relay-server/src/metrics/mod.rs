//! The relay's counters (protocol.md §10), and the only code that knows about Prometheus.
//!
//! Every subsystem counts into [`Metrics`] with one relaxed atomic add; label values come from
//! fixed enums ([`labels`]), never from a server-id, conn_id, IP or token, so every series
//! exists (at zero) from boot. The per-message counters (frames and bytes forwarded) are
//! sharded across cache lines by connection, so two readers on two cores never share one.
//! Gauges (connected counts, bytes held) are read from their owners at scrape time.
//! `export.rs` encodes a scrape with prometheus-client; `process.rs` reads the `process_*`
//! series from /proc; `serve.rs` is the `--metrics-listen` HTTP listener.

pub mod export;
pub mod labels;
pub mod process;
pub mod serve;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use relay_core::envelope::EnvelopeError;
use relay_core::Close;

use crate::listen::acme::{AcmeStats, OrderOutcome};
use crate::listen::tls::CertResolver;

pub use labels::{
    AcmeOutcome, AdmissionLimit, CloseReason, ClusterEvent, ClusterOp, ClusterOutcome, Direction,
    DropReason, Endpoint, ForwardOutcome, Label, PanicPoint, PushOutcome, ReclaimPolicyLabel,
    RegisterFailure, Role, UpgradeOutcome,
};

/// Shards of the per-message counters.
const SHARDS: usize = 16;

/// One counter per label value of `L`.
#[derive(Debug)]
pub struct ByLabel<L: Label> {
    counts: Box<[AtomicU64]>,
    _label: std::marker::PhantomData<L>,
}

impl<L: Label> Default for ByLabel<L> {
    fn default() -> Self {
        ByLabel {
            counts: L::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            _label: std::marker::PhantomData,
        }
    }
}

impl<L: Label> ByLabel<L> {
    pub fn inc(&self, label: L) {
        self.add(label, 1);
    }

    pub fn add(&self, label: L, n: u64) {
        self.counts[label.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, label: L) -> u64 {
        self.counts[label.index()].load(Ordering::Relaxed)
    }
}

/// One counter per pair of label values.
#[derive(Debug)]
pub struct ByTwo<A: Label, B: Label> {
    counts: Box<[AtomicU64]>,
    _labels: std::marker::PhantomData<(A, B)>,
}

impl<A: Label, B: Label> Default for ByTwo<A, B> {
    fn default() -> Self {
        ByTwo {
            counts: (0..A::ALL.len() * B::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            _labels: std::marker::PhantomData,
        }
    }
}

impl<A: Label, B: Label> ByTwo<A, B> {
    pub fn inc(&self, a: A, b: B) {
        self.counts[a.index() * B::ALL.len() + b.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, a: A, b: B) -> u64 {
        self.counts[a.index() * B::ALL.len() + b.index()].load(Ordering::Relaxed)
    }
}

#[repr(align(128))]
#[derive(Debug, Default)]
struct Padded(AtomicU64);

/// A counter written on the per-message path: one cache line per shard, summed at scrape.
#[derive(Debug, Default)]
pub struct Sharded {
    shards: [Padded; SHARDS],
}

impl Sharded {
    pub fn add(&self, shard: usize, n: u64) {
        self.shards[shard % SHARDS]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Every counter the relay keeps. One per [`crate::shared::Shared`].
#[derive(Default)]
pub struct Metrics {
    frames: [Sharded; 2],
    bytes: [Sharded; 2],
    pub upgrades: ByTwo<Endpoint, UpgradeOutcome>,
    pub register_failures: ByLabel<RegisterFailure>,
    pub closes: ByTwo<Role, CloseReason>,
    pub drops: ByLabel<DropReason>,
    malformed: [AtomicU64; MALFORMED_KINDS.len()],
    pub grace_started: AtomicU64,
    pub reclaims: ByLabel<ReclaimPolicyLabel>,
    pub takeovers: AtomicU64,
    pub grace_expiries: AtomicU64,
    pub admission_refusals: ByLabel<AdmissionLimit>,
    /// ACME mode's own counters (orders, the served certificate's expiry), once attached.
    acme: OnceLock<Arc<AcmeStats>>,
    /// Manual and development TLS: the resolver whose certificate (expiry, reloads) is served.
    certificates: OnceLock<Arc<CertResolver>>,
    /// Forwarded connections (§11); the directory's own counters are the node's
    /// (`cluster::stats`), read by the exporter.
    pub cluster_forwarded: ByLabel<ForwardOutcome>,
    pub panics: ByLabel<PanicPoint>,
}

/// Every [`EnvelopeError`] (malformed routing envelopes §4.2 and malformed push wakes §4.4),
/// in a fixed order, for iteration and indexing.
pub const MALFORMED_KINDS: [EnvelopeError; 13] = EnvelopeError::ALL;

impl Metrics {
    /// ACME mode: export its orders and its certificate's expiry (§9, §10).
    pub fn attach_acme(&self, stats: Arc<AcmeStats>) {
        let _ = self.acme.set(stats);
    }

    /// Manual and development TLS: export the served certificate's expiry and its reloads.
    pub fn attach_certificates(&self, resolver: Arc<CertResolver>) {
        let _ = self.certificates.set(resolver);
    }

    /// SIGHUP reloads of manual certificates: (worked, failed and the old pair kept).
    pub fn certificate_reloads(&self) -> (u64, u64) {
        self.certificates.get().map_or((0, 0), |r| r.reloads())
    }

    pub fn acme_orders(&self, outcome: AcmeOutcome) -> u64 {
        let Some(acme) = self.acme.get() else {
            return 0;
        };
        acme.orders(match outcome {
            AcmeOutcome::Issued => OrderOutcome::Issued,
            AcmeOutcome::Renewed => OrderOutcome::Renewed,
            AcmeOutcome::Failed => OrderOutcome::Failed,
        })
    }

    /// The served certificate's notAfter in Unix seconds; 0 without one.
    pub fn certificate_expiry(&self) -> u64 {
        if let Some(acme) = self.acme.get() {
            return acme.expiry_unix_seconds();
        }
        self.certificates
            .get()
            .map_or(0, |r| r.expiry_unix_seconds())
    }

    /// One message forwarded (§10 `frames_forwarded_total{direction}` and its bytes), counted
    /// on the shard of the connection that read it.
    pub fn forwarded(&self, direction: Direction, shard: usize, bytes: usize) {
        self.frames[direction.index()].add(shard, 1);
        self.bytes[direction.index()].add(shard, bytes as u64);
    }

    pub fn frames_forwarded(&self, direction: Direction) -> u64 {
        self.frames[direction.index()].get()
    }

    pub fn bytes_forwarded(&self, direction: Direction) -> u64 {
        self.bytes[direction.index()].get()
    }

    /// A binary's envelope dropped as malformed (§4.2), or a malformed push wake (§4.4), by
    /// kind.
    pub fn malformed_envelope(&self, kind: EnvelopeError) {
        self.drops.inc(DropReason::MalformedEnvelope);
        if let Some(i) = MALFORMED_KINDS.iter().position(|k| *k == kind) {
            self.malformed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Malformed envelopes dropped so far, of one kind.
    pub fn malformed(&self, kind: EnvelopeError) -> u64 {
        MALFORMED_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.malformed[i].load(Ordering::Relaxed))
    }

    pub fn unknown_conn_ids(&self) -> u64 {
        self.drops.get(DropReason::UnknownConnId)
    }

    pub fn oversize_binary_messages(&self) -> u64 {
        self.drops.get(DropReason::OversizeMessage)
    }

    /// A connection ended: by whom and why (§5 rows).
    pub fn closed(&self, role: Role, reason: CloseReason) {
        self.closes.inc(role, reason);
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl CloseReason {
    /// The reason of a close the relay sent (or a violation it closed for).
    pub fn of(close: Close) -> CloseReason {
        const TABLE: [(Close, CloseReason); 17] = [
            (Close::NORMAL, CloseReason::Normal),
            (Close::SHUTTING_DOWN, CloseReason::ShuttingDown),
            (Close::PROTOCOL_ERROR, CloseReason::ProtocolError),
            (Close::NOT_JSON, CloseReason::NotJson),
            (Close::INVALID_UTF8, CloseReason::InvalidUtf8),
            (Close::TOO_SLOW, CloseReason::TooSlow),
            (Close::TOO_BIG, CloseReason::TooBig),
            (Close::HEARTBEAT_TIMEOUT, CloseReason::HeartbeatTimeout),
            (Close::BACKLOG_FULL, CloseReason::BacklogFull),
            (Close::WRITE_TIMEOUT, CloseReason::WriteTimeout),
            (Close::GRACE_EXPIRED, CloseReason::GraceExpired),
            (Close::INTERNAL_ERROR, CloseReason::InternalError),
            (Close::SERVICE_RESTART, CloseReason::ServiceRestart),
            (Close::NO_SERVER, CloseReason::NoServer),
            (Close::RECLAIMED, CloseReason::Reclaimed),
            (Close::ALREADY_CLAIMED, CloseReason::AlreadyClaimed),
            (Close::TOO_MANY_PHONES, CloseReason::TooManyPhones),
        ];
        TABLE
            .iter()
            .find(|(c, _)| *c == close)
            .map_or(CloseReason::Other, |(_, r)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relay_close_of_section_5_has_its_own_reason() {
        for close in [
            Close::SHUTTING_DOWN,
            Close::NOT_JSON,
            Close::INVALID_UTF8,
            Close::TOO_SLOW,
            Close::TOO_BIG,
            Close::HEARTBEAT_TIMEOUT,
            Close::BACKLOG_FULL,
            Close::WRITE_TIMEOUT,
            Close::GRACE_EXPIRED,
            Close::SERVICE_RESTART,
            Close::NO_SERVER,
            Close::RECLAIMED,
            Close::ALREADY_CLAIMED,
            Close::TOO_MANY_PHONES,
        ] {
            assert_ne!(CloseReason::of(close), CloseReason::Other, "{close:?}");
        }
        assert_eq!(
            CloseReason::of(Close::requested(relay_core::CloseCode::from_wire(4401))),
            CloseReason::Other
        );
    }

    #[test]
    fn sharded_counters_sum_their_shards() {
        let m = Metrics::default();
        for shard in 0..100 {
            m.forwarded(Direction::PhoneToBinary, shard, 10);
        }
        assert_eq!(m.frames_forwarded(Direction::PhoneToBinary), 100);
        assert_eq!(m.bytes_forwarded(Direction::PhoneToBinary), 1000);
        assert_eq!(m.frames_forwarded(Direction::BinaryToPhone), 0);
    }
}

//! Counters of the relay's rare events: dropped envelopes, by kind (§4.2, and malformed push
//! wakes, §4.4).
//!
//! Only drop paths count here, never per-message work, so no shared cache line is touched on
//! the hot path. The metrics listener (a later issue) exposes these.

use std::sync::atomic::{AtomicU64, Ordering};

use relay_core::envelope::EnvelopeError;

/// Every [`EnvelopeError`], in a fixed order, for iteration and indexing.
pub const MALFORMED_KINDS: [EnvelopeError; 13] = EnvelopeError::ALL;

#[derive(Debug, Default)]
pub struct Stats {
    malformed: [AtomicU64; 13],
    unknown_conn_id: AtomicU64,
    oversize_binary: AtomicU64,
}

impl Stats {
    pub fn malformed_envelope(&self, kind: EnvelopeError) {
        if let Some(i) = MALFORMED_KINDS.iter().position(|k| *k == kind) {
            self.malformed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A binary-leg message over the limit was discarded (§7).
    pub fn oversize_binary_message(&self) {
        self.oversize_binary.fetch_add(1, Ordering::Relaxed);
    }

    /// Binary-leg messages discarded for their size so far.
    pub fn oversize_binary_messages(&self) -> u64 {
        self.oversize_binary.load(Ordering::Relaxed)
    }

    pub fn unknown_conn_id(&self) {
        self.unknown_conn_id.fetch_add(1, Ordering::Relaxed);
    }

    /// Malformed envelopes dropped so far, of one kind.
    pub fn malformed(&self, kind: EnvelopeError) -> u64 {
        MALFORMED_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.malformed[i].load(Ordering::Relaxed))
    }

    /// Envelopes for a conn_id the binary cannot reach, dropped so far.
    pub fn unknown_conn_ids(&self) -> u64 {
        self.unknown_conn_id.load(Ordering::Relaxed)
    }
}

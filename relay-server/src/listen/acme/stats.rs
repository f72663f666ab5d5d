//! ACME counters (protocol.md §10): orders by outcome and the served certificate's expiry.
//!
//! Plain atomics written by the manager only (a few times per certificate lifetime) and read by
//! the metrics exporter. They map to:
//! - `pyrycode_relay_acme_orders_total{outcome="issued"|"renewed"|"failed"}` ←
//!   [`AcmeStats::orders`] for each [`OrderOutcome::ALL`] (`label()` is the label value; the
//!   same three as `metrics::AcmeOutcome`). Why an order failed is in its log line (the CA's
//!   problem type), not in a label;
//! - `pyrycode_relay_certificate_expiry_timestamp_seconds` (gauge, Unix seconds, 0 = no
//!   certificate yet) ← [`AcmeStats::expiry_unix_seconds`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How one ACME order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderOutcome {
    /// A certificate was issued while none was served (boot, or after expiry).
    Issued,
    /// A certificate was issued to replace one being served.
    Renewed,
    /// No certificate: the CA could not validate the challenge, refused a request, could not
    /// be reached, timed out, or returned something unusable.
    Failed,
}

impl OrderOutcome {
    pub const ALL: [OrderOutcome; 3] = [
        OrderOutcome::Issued,
        OrderOutcome::Renewed,
        OrderOutcome::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            OrderOutcome::Issued => "issued",
            OrderOutcome::Renewed => "renewed",
            OrderOutcome::Failed => "failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
pub struct AcmeStats {
    orders: [AtomicU64; 3],
    expiry: AtomicU64,
}

impl AcmeStats {
    pub fn order(&self, outcome: OrderOutcome) {
        self.orders[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Orders that ended with `outcome` since boot.
    pub fn orders(&self, outcome: OrderOutcome) -> u64 {
        self.orders[outcome.index()].load(Ordering::Relaxed)
    }

    pub fn set_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.expiry.store(secs, Ordering::Relaxed);
    }

    /// The served certificate's notAfter in Unix seconds; 0 until one exists.
    pub fn expiry_unix_seconds(&self) -> u64 {
        self.expiry.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_counter_and_label() {
        let stats = AcmeStats::default();
        for (n, outcome) in OrderOutcome::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                stats.order(outcome);
            }
        }
        let counts: Vec<u64> = OrderOutcome::ALL.iter().map(|o| stats.orders(*o)).collect();
        assert_eq!(counts, [1, 2, 3]);
        let labels: Vec<&str> = OrderOutcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels, ["issued", "renewed", "failed"]);
        assert_eq!(stats.expiry_unix_seconds(), 0);
        stats.set_expiry(UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000));
        assert_eq!(stats.expiry_unix_seconds(), 1_800_000_000);
    }
}

//! Counters of what the listeners refuse before an upgrade (protocol.md §8, §9, §10).
//!
//! Only refusal paths count, never per-message work. The metrics listener exports them:
//! - [`PreUpgrade::HostRefused`] → `pyrycode_relay_ws_upgrade_attempts_total{outcome="reject_421"}`
//!   (a new label value of the Go relay's series, §10 allows adding values);
//! - [`PreUpgrade::HandshakeTimeout`] → `pyrycode_relay_admission_refusals_total{limit="handshake_timeout"}`;
//! - [`PreUpgrade::TlsHandshakeFailed`] → `pyrycode_relay_tls_handshake_failures_total`;
//! - [`PreUpgrade::ProxyRefused`] → `pyrycode_relay_proxy_header_refusals_total`.
//!
//! Certificate reloads are counted by [`super::tls::CertResolver::reloads`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a connection ended before its upgrade, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreUpgrade {
    /// The TLS handshake failed (old version, no shared ALPN, unknown SNI, garbage, reset).
    TlsHandshakeFailed,
    /// `--https-proxy-protocol`: no valid PROXY v2 header in time.
    ProxyRefused,
    /// Not upgraded within `--handshake-timeout`.
    HandshakeTimeout,
    /// 421: the Host is not a name the listener serves.
    HostRefused,
}

impl PreUpgrade {
    pub const ALL: [PreUpgrade; 4] = [
        PreUpgrade::TlsHandshakeFailed,
        PreUpgrade::ProxyRefused,
        PreUpgrade::HandshakeTimeout,
        PreUpgrade::HostRefused,
    ];

    /// A fixed label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PreUpgrade::TlsHandshakeFailed => "tls_handshake_failed",
            PreUpgrade::ProxyRefused => "proxy_refused",
            PreUpgrade::HandshakeTimeout => "handshake_timeout",
            PreUpgrade::HostRefused => "host_refused",
        }
    }
}

#[derive(Debug, Default)]
pub struct ListenStats {
    pre_upgrade: [AtomicU64; 4],
}

impl ListenStats {
    pub fn record(&self, what: PreUpgrade) {
        self.pre_upgrade[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections ended this way so far.
    pub fn count(&self, what: PreUpgrade) -> u64 {
        self.pre_upgrade[what as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_counter() {
        let stats = ListenStats::default();
        for (i, what) in PreUpgrade::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                stats.record(what);
            }
        }
        for (i, what) in PreUpgrade::ALL.into_iter().enumerate() {
            assert_eq!(stats.count(what), i as u64 + 1, "{}", what.as_str());
        }
    }
}

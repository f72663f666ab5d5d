//! The relay's runtime knobs, as the running server uses them (protocol.md §6–§8, §10).
//!
//! `config.rs` turns flags and environment variables into these; tests build them directly
//! with short timings.

use std::time::Duration;

use relay_core::ReclaimPolicy;

use crate::listen::stream::TlsSplit;
use crate::push::PushSettings;

#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub grace_period: Duration,
    pub conflict_probe_timeout: Duration,
    pub reclaim_policy: ReclaimPolicy,
    pub max_message_size: usize,
    pub message_read_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub phone_outbox_bytes: usize,
    /// Byte budget of each binary's inbox (phones wait when it is full, §7). Not a flag: it
    /// is sized from the other limits so that a full-size message always fits.
    pub binary_inbox_bytes: usize,
    pub write_timeout: Duration,
    pub max_connections: usize,
    pub phones_per_server: usize,
    pub header_read_timeout: Duration,
    /// From accept to a finished upgrade, PROXY header and TLS handshake included (§8).
    pub handshake_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Bytes held for peers relay-wide (§8 memory budget).
    pub max_buffered_bytes: usize,
    /// §8 per-IP limits.
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    pub max_connections_per_ip: usize,
    pub ipv6_prefix_len: u8,
    /// Take the client IP from the left-most `X-Forwarded-For` entry (§8).
    pub trust_x_forwarded_for: bool,
    /// Test-only fault injection (never set by a flag): see [`crate::faults`].
    pub faults: Option<std::sync::Arc<crate::faults::Faults>>,
    /// How upgraded TLS connections split (benchmarks compare; always `Own` in the binary).
    pub tls_split: TlsSplit,
    /// Push wake (§4.4): `None` is off. Loaded at boot by [`PushSettings::load`] (it reads
    /// the key), so `From<&Config>` leaves it `None` and `main` fills it in.
    pub push: Option<PushSettings>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            grace_period: Duration::from_secs(30),
            conflict_probe_timeout: Duration::from_secs(10),
            reclaim_policy: ReclaimPolicy::Evict,
            max_message_size: 256 << 10,
            message_read_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(30),
            phone_outbox_bytes: 4 << 20,
            binary_inbox_bytes: 4 << 20,
            write_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            phones_per_server: 16,
            header_read_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            max_buffered_bytes: 1 << 30,
            rate_limit_per_minute: 10,
            rate_limit_burst: 20,
            max_connections_per_ip: 64,
            ipv6_prefix_len: 64,
            trust_x_forwarded_for: false,
            tls_split: TlsSplit::Own,
            push: None,
            faults: None,
        }
    }
}

impl RelayOptions {
    /// Largest message accepted on the binary leg: room for the envelope around a full-size
    /// frame (§7).
    pub fn max_binary_message(&self) -> usize {
        self.max_message_size.saturating_add(1024)
    }

    /// The binary inbox budget actually used: never smaller than two full-size envelopes.
    pub fn effective_binary_inbox(&self) -> usize {
        self.binary_inbox_bytes
            .max(2 * (self.max_binary_message() + 1024))
    }
}

impl From<&crate::config::Config> for RelayOptions {
    fn from(c: &crate::config::Config) -> Self {
        RelayOptions {
            grace_period: c.lifecycle.grace_period,
            conflict_probe_timeout: c.lifecycle.conflict_probe_timeout,
            reclaim_policy: match c.lifecycle.reclaim_policy {
                crate::config::ReclaimPolicyArg::Evict => ReclaimPolicy::Evict,
                crate::config::ReclaimPolicyArg::Inherit => ReclaimPolicy::Inherit,
            },
            max_message_size: c.flow.max_message_size,
            message_read_timeout: c.flow.message_read_timeout,
            heartbeat_interval: c.flow.heartbeat_interval,
            heartbeat_timeout: c.flow.heartbeat_timeout,
            phone_outbox_bytes: c.flow.phone_outbox_bytes,
            binary_inbox_bytes: RelayOptions::default().binary_inbox_bytes,
            write_timeout: c.flow.write_timeout,
            max_connections: c.admission.max_connections,
            phones_per_server: c.admission.phones_per_server,
            header_read_timeout: c.admission.header_read_timeout,
            handshake_timeout: c.admission.handshake_timeout,
            shutdown_timeout: c.ops.shutdown_timeout,
            max_buffered_bytes: c.admission.max_buffered_bytes,
            rate_limit_per_minute: c.admission.rate_limit_per_minute,
            rate_limit_burst: c.admission.rate_limit_burst,
            max_connections_per_ip: c.admission.max_connections_per_ip,
            ipv6_prefix_len: c.admission.ipv6_prefix_len,
            trust_x_forwarded_for: c.admission.trust_x_forwarded_for,
            tls_split: TlsSplit::Own,
            push: None,
            faults: None,
        }
    }
}

//! Per-client-IP admission (protocol.md §8): an upgrade rate per IP (token bucket,
//! `--rate-limit-per-minute` refill, `--rate-limit-burst`) and a cap on live connections per
//! IP (`--max-connections-per-ip`). IPv6 clients are one key per `--ipv6-prefix-len` prefix
//! (one host owns a whole /64); IPv4-mapped IPv6 addresses count as their IPv4 address.
//!
//! Owns the two tables and keeps both bounded: a live-count entry exists only while that key
//! has live connections (its [`IpSlot`] guards remove it, on every exit path), and [`PerIp::sweep`]
//! drops rate entries that have refilled (indistinguishable from a new key), so the limiter
//! holds at most the keys that upgraded within one refill window. A check allocates nothing
//! beyond the table entry of a new key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

const SHARDS: usize = 16;

/// A client as the limits see it: an IPv4 address or an IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    /// The address with every bit past the prefix cleared.
    V6(u128),
}

impl IpKey {
    pub fn new(ip: IpAddr, v6_prefix: u8) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let keep = u32::from(v6_prefix.min(128));
                let mask = if keep == 0 {
                    0
                } else {
                    u128::MAX << (128 - keep)
                };
                IpKey::V6(bits & mask)
            }
        }
    }

    fn shard(self) -> usize {
        let h = match self {
            IpKey::V4(v) => u64::from(v),
            IpKey::V6(v) => (v >> 64) as u64 ^ v as u64,
        };
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
    }
}

/// Why an upgrade was refused (each is HTTP 429 with an empty body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over `--rate-limit-per-minute` / `--rate-limit-burst`.
    Rate,
    /// Over `--max-connections-per-ip`.
    Connections,
}

#[derive(Clone, Copy, Debug)]
pub struct IpLimits {
    pub per_minute: u32,
    pub burst: u32,
    pub max_connections: usize,
    pub v6_prefix: u8,
}

type Limiter<C> =
    RateLimiter<IpKey, DefaultKeyedStateStore<IpKey>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct PerIp<C: Clock = DefaultClock> {
    rate: Limiter<C>,
    live: [Mutex<HashMap<IpKey, usize>>; SHARDS],
    limits: IpLimits,
}

/// One live connection's share of its IP's cap; dropping it gives the share back.
pub struct IpSlot<C: Clock = DefaultClock> {
    table: Arc<PerIp<C>>,
    key: IpKey,
}

impl<C: Clock> Drop for IpSlot<C> {
    fn drop(&mut self) {
        let mut live = self.table.shard(self.key);
        if let Some(n) = live.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.key);
            }
        }
    }
}

impl PerIp<DefaultClock> {
    pub fn new(limits: IpLimits) -> Arc<Self> {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock> PerIp<C> {
    pub fn with_clock(limits: IpLimits, clock: C) -> Arc<Self> {
        let per_minute = NonZeroU32::new(limits.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Arc::new(PerIp {
            rate: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock),
            live: Default::default(),
            limits,
        })
    }

    fn shard(&self, key: IpKey) -> std::sync::MutexGuard<'_, HashMap<IpKey, usize>> {
        self.live[key.shard()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn key(&self, ip: IpAddr) -> IpKey {
        IpKey::new(ip, self.limits.v6_prefix)
    }

    /// One upgrade from `ip`: takes a token of its rate, then a share of its live cap, which
    /// the returned slot holds for the connection's life.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot<C>, Refusal> {
        let key = self.key(ip);
        if self.rate.check_key(&key).is_err() {
            return Err(Refusal::Rate);
        }
        let mut live = self.shard(key);
        let n = live.entry(key).or_insert(0);
        if *n >= self.limits.max_connections {
            return Err(Refusal::Connections);
        }
        *n += 1;
        drop(live);
        Ok(IpSlot {
            table: self.clone(),
            key,
        })
    }

    /// Forgets keys whose bucket has refilled. Run periodically.
    pub fn sweep(&self) {
        self.rate.retain_recent();
        self.rate.shrink_to_fit();
        for shard in &self.live {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .shrink_to_fit();
        }
    }

    /// Keys held by the rate table and by the live table (for bounds tests and debugging).
    pub fn tracked(&self) -> (usize, usize) {
        let live = self
            .live
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum();
        (self.rate.len(), live)
    }

    /// Live connections of `ip`'s key.
    pub fn live(&self, ip: IpAddr) -> usize {
        let key = self.key(ip);
        self.shard(key).get(&key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn table(
        per_minute: u32,
        burst: u32,
        max: usize,
    ) -> (Arc<PerIp<FakeRelativeClock>>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let t = PerIp::with_clock(
            IpLimits {
                per_minute,
                burst,
                max_connections: max,
                v6_prefix: 64,
            },
            clock.clone(),
        );
        (t, clock)
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn burst_then_one_per_refill_interval() {
        let (t, clock) = table(10, 3, 100);
        let slots: Vec<_> = (0..3).map(|_| t.admit(v4(2)).expect("burst")).collect();
        assert_eq!(t.admit(v4(2)).err(), Some(Refusal::Rate));
        // Another address is not affected.
        assert!(t.admit(v4(3)).is_ok());
        // 10 per minute: one token every 6 s.
        clock.advance(Duration::from_secs(5));
        assert_eq!(t.admit(v4(2)).err(), Some(Refusal::Rate));
        clock.advance(Duration::from_secs(1));
        assert!(t.admit(v4(2)).is_ok());
        assert_eq!(t.admit(v4(2)).err(), Some(Refusal::Rate));
        drop(slots);
    }

    #[test]
    fn live_connections_are_capped_per_ip_and_released_by_their_slots() {
        let (t, _) = table(1000, 1000, 2);
        let a = t.admit(v4(2)).unwrap();
        let b = t.admit(v4(2)).unwrap();
        assert_eq!(t.admit(v4(2)).err(), Some(Refusal::Connections));
        assert_eq!(t.live(v4(2)), 2);
        drop(a);
        let c = t.admit(v4(2)).expect("a slot came back");
        drop((b, c));
        assert_eq!(t.live(v4(2)), 0);
        assert_eq!(t.tracked().1, 0, "no live entry outlives its connections");
    }

    #[test]
    fn ipv6_is_limited_per_prefix_and_mapped_ipv4_as_ipv4() {
        let (t, _) = table(1000, 1000, 1);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _s = t.admit(a).unwrap();
        assert_eq!(t.admit(b).err(), Some(Refusal::Connections), "same /64");
        assert!(t.admit(other).is_ok(), "another /64");
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 9).to_ipv6_mapped());
        let _m = t.admit(mapped).unwrap();
        assert_eq!(t.admit(v4(9)).err(), Some(Refusal::Connections));
        assert_eq!(
            IpKey::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            IpKey::V6(1)
        );
        assert_eq!(
            IpKey::new("2001:db8:abcd:1234::1".parse().unwrap(), 48),
            IpKey::new("2001:db8:abcd:ffff::1".parse().unwrap(), 48)
        );
    }

    #[test]
    fn idle_keys_are_forgotten_so_memory_stays_bounded() {
        let (t, clock) = table(60, 2, 10);
        for i in 0..5000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            drop(t.admit(ip).unwrap());
        }
        assert_eq!(t.tracked(), (5000, 0));
        // A full refill later, every one of them is indistinguishable from a new key.
        clock.advance(Duration::from_secs(3));
        t.sweep();
        assert_eq!(t.tracked(), (0, 0));
    }
}

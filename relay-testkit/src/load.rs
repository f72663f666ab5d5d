//! The load generator behind `relay-load`: real WebSocket clients that drive a running relay (or,
//! with `direct`, the [`crate::echo`] baseline) and report what they measured.
//!
//! - [`run_echo`]: fake binaries echo every phone frame back; phones measure round trips per second
//!   and latency, and check that every message comes back once and in order.
//! - [`run_idle`]: opens and holds connections and reports the server's memory per connection.
//! - [`Reconnecting`]: clients that reconnect on every close or refusal, with per (phone,
//!   direction) order checks across reconnects, for failover drills (cluster mode, §11).
//!
//! This module owns the configuration, the connection fan-out and the errors; the submodules own
//! one piece each. It never prints, except the optional progress line on stderr.

mod binary;
mod conn;
mod echo_mode;
mod idle_mode;
pub mod message;
mod phone;
mod progress;
pub mod reconnect;
pub mod report;
pub mod seq;
mod stats;
pub mod sys;

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use conn::{close_code_hint, ConnectError, CONNECT_TIMEOUT};
pub use echo_mode::run_echo;
pub use idle_mode::run_idle;
pub use reconnect::{ReconnectConfig, Reconnecting};
pub use report::{EchoReport, IdleReport, LatencySummary, ReconnectReport};

/// `User-Agent` of every load connection.
pub const USER_AGENT: &str = "relay-load/0.1";
/// `X-Pyrycode-Version` of every fake binary.
pub const BINARY_VERSION: &str = "relay-load";

/// What the load is pointed at.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub addr: SocketAddr,
    /// The echo server instead of the relay: phones only, each echoed on its own connection.
    pub direct: bool,
}

impl Target {
    fn name(&self) -> &'static str {
        if self.direct {
            "direct"
        } else {
            "relay"
        }
    }
}

/// How phones pace their messages in `echo` mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Each phone keeps `window` messages in flight; measures capacity.
    Closed { window: usize },
    /// All phones together send `rate` messages per second on a fixed schedule; measures latency
    /// at a given load.
    Open { rate: f64 },
}

/// `echo` mode.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Server-ids, one fake binary each (none connect in direct mode).
    pub binaries: usize,
    /// Phones in total, spread round-robin over the server-ids.
    pub phones: usize,
    /// Exact size of every phone message in bytes.
    pub size: usize,
    pub pacing: Pacing,
    /// Excluded from the statistics.
    pub warmup: Duration,
    pub duration: Duration,
    /// How long to wait after the window for messages still in flight.
    pub drain_timeout: Duration,
    /// Connection attempts in progress at once.
    pub connect_concurrency: usize,
    /// Print a progress line to stderr once a second.
    pub progress: bool,
    /// Phones connect here instead of the binaries' address: on a relay cluster, a node
    /// that does not hold their server-ids, so every phone is forwarded (§11).
    pub phone_addr: Option<SocketAddr>,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            binaries: 1,
            phones: 1,
            size: 64,
            pacing: Pacing::Closed { window: 1 },
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            connect_concurrency: 128,
            progress: false,
            phone_addr: None,
        }
    }
}

impl EchoConfig {
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |msg: String| Err(LoadError::Config(msg));
        if self.binaries == 0 || self.phones == 0 {
            return bad("--binaries and --phones must be at least 1".into());
        }
        if self.size < message::MIN_SIZE {
            return bad(format!(
                "--size must be at least {} bytes",
                message::MIN_SIZE
            ));
        }
        if self.duration.is_zero() {
            return bad("--duration must be more than 0".into());
        }
        if self.connect_concurrency == 0 {
            return bad("--connect-concurrency must be at least 1".into());
        }
        match self.pacing {
            Pacing::Closed { window: 0 } => bad("--window must be at least 1".into()),
            Pacing::Open { rate } if !(rate.is_finite() && rate > 0.0) => {
                bad("--rate must be a positive number of messages per second".into())
            }
            // Each phone sends every phones/rate seconds; keep that a period a timer can keep.
            Pacing::Open { rate } if !(1e-6..=3600.0).contains(&(self.phones as f64 / rate)) => {
                bad(format!(
                    "--rate {rate} over {} phones gives each phone one message every {} s; \
                     keep it between 1 µs and 1 hour",
                    self.phones,
                    self.phones as f64 / rate
                ))
            }
            _ => Ok(()),
        }
    }
}

/// `idle` mode.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// Server-ids, one fake binary each (none connect in direct mode).
    pub binaries: usize,
    /// Phones in total, spread round-robin over the server-ids.
    pub phones: usize,
    /// How long to hold every connection once all are open, before measuring again.
    pub hold: Duration,
    /// The server process whose RSS to report.
    pub server_pid: Option<u32>,
    pub connect_concurrency: usize,
    pub progress: bool,
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            binaries: 1,
            phones: 1,
            hold: Duration::from_secs(5),
            server_pid: None,
            connect_concurrency: 128,
            progress: false,
        }
    }
}

impl IdleConfig {
    pub fn validate(&self) -> Result<(), LoadError> {
        if self.binaries == 0 || self.phones == 0 {
            return Err(LoadError::Config(
                "--binaries and --phones must be at least 1".into(),
            ));
        }
        if self.connect_concurrency == 0 {
            return Err(LoadError::Config(
                "--connect-concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why a run could not produce a report at all. Loss and errors *during* a run are not this: they
/// are in the report, which says whether the run was clean.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Config(String),
    #[error("{who} could not connect: {source}")]
    Connect {
        who: String,
        #[source]
        source: ConnectError,
    },
    #[error(
        "only {seen} of {expected} fake binaries are registered at the relay after {waited:?} \
         (is another binary holding these server-ids, or is the relay refusing them?)"
    )]
    NotRegistered {
        seen: u64,
        expected: u64,
        waited: Duration,
    },
    #[error("cannot read the server's memory: {0}")]
    Rss(std::io::Error),
}

/// Which kind of client a connection is (§1, §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Binary,
    Phone,
}

/// Connects one `role` client for `server_id`.
async fn connect_as(
    addr: SocketAddr,
    role: Role,
    server_id: &str,
) -> Result<conn::Upgraded, ConnectError> {
    match role {
        Role::Binary => {
            let headers = [
                ("X-Pyrycode-Server", server_id),
                ("X-Pyrycode-Version", BINARY_VERSION),
                ("User-Agent", USER_AGENT),
            ];
            conn::connect(addr, "/v1/server", &headers).await
        }
        Role::Phone => {
            let headers = [("X-Pyrycode-Server", server_id), ("User-Agent", USER_AGENT)];
            conn::connect(addr, "/v1/client", &headers).await
        }
    }
}

/// Connects one client per server-id in `ids`, at most `concurrency` handshakes at a time (more
/// would overflow the server's accept backlog and turn into SYN retries), in order.
async fn connect_many(
    addr: SocketAddr,
    role: Role,
    ids: Vec<String>,
    concurrency: usize,
    connected: Arc<AtomicU64>,
) -> Vec<Result<conn::Upgraded, ConnectError>> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let gate = Arc::clone(&gate);
            let connected = Arc::clone(&connected);
            tokio::spawn(async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = gate.acquire_owned().await;
                let result = connect_as(addr, role, &id).await;
                if result.is_ok() {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                result
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(match task.await {
            Ok(result) => result,
            Err(e) => Err(ConnectError::Io {
                addr,
                source: std::io::Error::other(format!("connect task failed: {e}")),
            }),
        });
    }
    out
}

/// Connects one fake binary per server-id and waits until the relay counts them all, so no
/// phone that follows races its binary and gets 4404 (§5). Any failed connect fails the run.
async fn connect_binaries(
    addr: SocketAddr,
    ids: &[String],
    concurrency: usize,
    connected: Arc<AtomicU64>,
) -> Result<Vec<conn::Upgraded>, LoadError> {
    let conns = connect_many(addr, Role::Binary, ids.to_vec(), concurrency, connected).await;
    let mut out = Vec::with_capacity(conns.len());
    for (i, conn) in conns.into_iter().enumerate() {
        out.push(conn.map_err(|source| LoadError::Connect {
            who: format!("fake binary {i}"),
            source,
        })?);
    }
    wait_registered(addr, ids.len()).await?;
    Ok(out)
}

/// Waits until the relay's `/healthz` counts at least `expected` binaries, so no phone races its
/// binary's registration and gets 4404. A server without `/healthz` gets a short pause instead.
async fn wait_registered(addr: SocketAddr, expected: usize) -> Result<(), LoadError> {
    let waited = Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + waited;
    loop {
        match conn::healthz_binaries(addr).await {
            Some(seen) if seen >= expected as u64 => return Ok(()),
            Some(seen) if tokio::time::Instant::now() >= deadline => {
                return Err(LoadError::NotRegistered {
                    seen,
                    expected: expected as u64,
                    waited,
                })
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
        }
    }
}

/// `n` fresh lowercase UUIDv4-shaped server-ids, distinct from any earlier run's so a previous
/// run's binary still in grace never conflicts with this one's.
fn server_ids(n: usize) -> Vec<String> {
    let seed = {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    (0..n as u64).map(|i| uuid_v4_like(seed, i)).collect()
}

fn uuid_v4_like(seed: u64, i: u64) -> String {
    let hi = crate::client::splitmix(seed ^ crate::client::splitmix(i));
    let lo = crate::client::splitmix(hi ^ i);
    let hi = (hi & !0xf000) | 0x4000; // version 4
    let lo = (lo & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
    crate::client::uuid_text(hi, lo)
}

/// Phone `i`'s server-id: round-robin over the binaries' ids.
fn phone_ids(server_ids: &[String], phones: usize) -> Vec<String> {
    (0..phones)
        .map(|i| server_ids[i % server_ids.len()].clone())
        .collect()
}

/// Keeps the first few distinct error messages of a run for the report.
#[derive(Debug, Default)]
struct ErrorSample {
    kept: Vec<String>,
    total: u64,
}

impl ErrorSample {
    const KEEP: usize = 8;

    fn add(&mut self, error: String) {
        self.total += 1;
        if self.kept.len() < Self::KEEP && !self.kept.contains(&error) {
            self.kept.push(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids_are_distinct_valid_uuid_shaped_ids() {
        let ids = server_ids(100);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 100);
        for id in &ids {
            // §2: 1–64 bytes of [A-Za-z0-9._-]; lowercase like real ids.
            assert_eq!(id.len(), 36, "{id}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'));
            assert_eq!(&id[14..15], "4");
        }
    }

    #[test]
    fn phones_spread_round_robin_over_server_ids() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(phone_ids(&ids, 5), ["a", "b", "c", "a", "b"]);
    }

    #[test]
    fn config_validation_rejects_what_cannot_run() {
        let ok = EchoConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            EchoConfig {
                size: 10,
                ..ok.clone()
            },
            EchoConfig {
                phones: 0,
                ..ok.clone()
            },
            EchoConfig {
                duration: Duration::ZERO,
                ..ok.clone()
            },
            EchoConfig {
                pacing: Pacing::Closed { window: 0 },
                ..ok.clone()
            },
            EchoConfig {
                pacing: Pacing::Open { rate: 0.0 },
                ..ok.clone()
            },
            EchoConfig {
                pacing: Pacing::Open { rate: f64::NAN },
                ..ok.clone()
            },
            EchoConfig {
                pacing: Pacing::Open { rate: 1e-9 },
                ..ok.clone()
            },
            EchoConfig {
                pacing: Pacing::Open { rate: 1e12 },
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(LoadError::Config(_))),
                "{bad:?}"
            );
        }
    }
}

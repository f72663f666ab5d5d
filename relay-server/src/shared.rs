//! State shared by every connection of one running relay.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use relay_core::{Registry, RegistryConfig, SystemClock};
use tokio::sync::{watch, Semaphore};

use crate::admission::budget::Budget;
use crate::admission::ip::{IpLimits, PerIp};
use crate::admission::shed::Outboxes;
use crate::cluster::runtime::Cluster;
use crate::listen::stats::ListenStats;
use crate::metrics::Metrics;
use crate::options::RelayOptions;
use crate::push::PushService;
use crate::ws::peer::{Peer, PeerLimits, Role};

pub struct Shared {
    pub registry: Arc<Registry<Peer, SystemClock>>,
    pub opts: RelayOptions,
    /// Flips to true once at shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// One permit per live WebSocket connection (`--max-connections`, §8).
    pub conn_slots: Arc<Semaphore>,
    pub started: Instant,
    pub metrics: Metrics,
    /// Every byte held for peers, relay-wide (§8).
    pub budget: Arc<Budget>,
    /// Live phone outboxes, for the budget's shedder.
    pub outboxes: Arc<Outboxes>,
    /// Per-client-IP rate and live caps (§8).
    pub per_ip: Arc<PerIp>,
    /// Refusals log at most a few lines a second.
    pub refusal_log: crate::logging::throttle::SharedThrottle,
    /// Refusals before the upgrade: handshakes, PROXY headers, the deadline, 421 (§8, §9).
    pub listen_stats: ListenStats,
    /// Push wake (§4.4): off unless `opts.push` carries settings.
    pub push: PushService,
    /// Cluster mode (§11), set once before serving; `None` on a single node.
    cluster: OnceLock<Arc<Cluster>>,
}

impl Shared {
    pub fn new(opts: RelayOptions, shutdown: watch::Receiver<bool>) -> Self {
        let registry = Arc::new(Registry::new(
            RegistryConfig {
                grace_period: opts.grace_period,
                phones_per_server: opts.phones_per_server,
                held_bytes_per_phone: opts.phone_outbox_bytes,
                reclaim_policy: opts.reclaim_policy,
                shards: 64,
            },
            SystemClock,
        ));
        let push = PushService::new(opts.push.clone(), shutdown.clone());
        Shared {
            registry,
            conn_slots: Arc::new(Semaphore::new(opts.max_connections)),
            budget: Budget::new(opts.max_buffered_bytes),
            outboxes: Arc::default(),
            per_ip: PerIp::new(IpLimits {
                per_minute: opts.rate_limit_per_minute,
                burst: opts.rate_limit_burst,
                max_connections: opts.max_connections_per_ip,
                v6_prefix: opts.ipv6_prefix_len,
            }),
            refusal_log: Default::default(),
            opts,
            shutdown,
            started: Instant::now(),
            metrics: Metrics::default(),
            listen_stats: ListenStats::default(),
            push,
            cluster: OnceLock::new(),
        }
    }

    /// Cluster mode's state, if this relay is a node of a cluster (§11).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Turns cluster mode on; only before serving (a second call changes nothing).
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn new_peer(&self, role: Role) -> Peer {
        let queue_bytes = match role {
            Role::Binary => self.opts.effective_binary_inbox(),
            Role::Phone => self.opts.phone_outbox_bytes,
        };
        Peer::new(
            role,
            PeerLimits {
                heartbeat_interval: self.opts.heartbeat_interval,
                heartbeat_timeout: self.opts.heartbeat_timeout,
                write_timeout: self.opts.write_timeout,
                queue_bytes,
            },
        )
    }
}

/// Resolves once `rx` reads true (or its sender is gone). Unlike `watch::Receiver::wait_for`,
/// holds no borrow across the await, so the future stays `Send`.
pub async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

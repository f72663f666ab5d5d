//! The accept loops, the handshake deadline, and graceful shutdown (protocol.md §8, §10).
//!
//! [`Relay::bind`] binds and returns at once, so callers (the binary, tests, benches) can read
//! the bound address before serving. [`Relay::run`] serves until its [`ShutdownHandle`] fires,
//! then closes every WebSocket with 1001 "shutting down" (each writer does it on its own, all
//! at once) and waits at most `--shutdown-timeout` for them to finish.
//!
//! In cluster mode (§11, [`Relay::enable_cluster`]) it also runs the node's lease loop and
//! the cluster listener, routes each client connection's first request through
//! `cluster::edge` before hyper, and on shutdown leaves the directory *before* the 1001
//! closes go out, so reconnecting binaries claim on another node at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info, warn};

use crate::cluster::edge::{self, Edge};
use crate::cluster::runtime::{Cluster, RegistrySlots};
use crate::cluster::{ClusterNode, NodeConfig};
use crate::http::{ClusterConn, ConnInfo};
use crate::listen::stats::PreUpgrade;
use crate::listen::{self, Listener, Transport};
use crate::options::RelayOptions;
use crate::shared::Shared;

pub struct Relay {
    listeners: Vec<Listener>,
    shared: Arc<Shared>,
    /// What connections watch: flips once the relay may close them (after leaving the
    /// cluster directory, in cluster mode).
    shutdown_tx: watch::Sender<bool>,
    /// What the [`ShutdownHandle`] flips.
    requested_tx: watch::Sender<bool>,
    /// Cluster mode: the cluster listener.
    cluster_listener: Option<TcpListener>,
}

/// Starts the shutdown of a running relay.
#[derive(Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

impl Relay {
    /// A plain HTTP/WS relay on `addr`.
    pub async fn bind(addr: SocketAddr, opts: RelayOptions) -> io::Result<Relay> {
        Relay::bind_with(addr, Transport::Plain, opts).await
    }

    /// A relay on `addr` speaking `transport` (plain or TLS).
    pub async fn bind_with(
        addr: SocketAddr,
        transport: Transport,
        opts: RelayOptions,
    ) -> io::Result<Relay> {
        Ok(Relay::from_listeners(
            vec![Listener::bind(addr, transport).await?],
            opts,
        ))
    }

    /// A plain relay on a listener the caller bound.
    pub fn from_listener(listener: TcpListener, opts: RelayOptions) -> Relay {
        Relay::from_listeners(
            vec![Listener {
                tcp: listener,
                transport: Transport::Plain,
            }],
            opts,
        )
    }

    /// A relay serving every listener in `listeners` (the first is the main one).
    pub fn from_listeners(listeners: Vec<Listener>, opts: RelayOptions) -> Relay {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        Relay {
            listeners,
            shared: Arc::new(Shared::new(opts, shutdown_rx)),
            shutdown_tx,
            requested_tx: watch::channel(false).0,
            cluster_listener: None,
        }
    }

    /// Makes this relay a node of a cluster (§11): `directory` is shared with its peers,
    /// `listener` (already bound: a bind failure is the caller's exit 1) accepts the
    /// connections they forward. Call before [`run`](Self::run), which starts the lease loop.
    pub fn enable_cluster(
        &mut self,
        directory: crate::cluster::redis::RedisDirectory,
        node: NodeConfig,
        secret: crate::cluster::secret::ClusterSecret,
        listener: TcpListener,
    ) {
        let slots = Arc::new(RegistrySlots(self.shared.registry.clone()));
        let node = ClusterNode::new(directory, node, slots);
        self.shared.set_cluster(Arc::new(Cluster { node, secret }));
        self.cluster_listener = Some(listener);
    }

    /// The cluster listener's bound address, in cluster mode.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster_listener.as_ref()?.local_addr().ok()
    }

    /// The main listener's bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.listeners.first() {
            Some(l) => l.tcp.local_addr(),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no listener")),
        }
    }

    /// Every bound address, the main listener first (the startup line lists them all, §10).
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(|l| l.tcp.local_addr()).collect()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.requested_tx.clone())
    }

    /// Live counts, as `/healthz` reports them.
    pub fn counts(&self) -> relay_core::Counts {
        self.shared.registry.counts()
    }

    /// The state shared by the relay's connections: registry, counters, options.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until shutdown, then drains. Returns whether every connection finished in time.
    pub async fn run(self) -> bool {
        let Relay {
            listeners,
            shared,
            shutdown_tx,
            requested_tx,
            cluster_listener,
        } = self;
        // §11: the directory forgets this node before the 1001 closes go out.
        let mut requested = requested_tx.subscribe();
        let cluster = shared.cluster().cloned();
        let closer = shutdown_tx.clone();
        tokio::spawn(async move {
            crate::shared::shutdown_signalled(&mut requested).await;
            if let Some(cluster) = &cluster {
                cluster.node.leave().await;
            }
            closer.send_replace(true);
        });
        if let Some(cluster) = shared.cluster() {
            tokio::spawn(cluster.node.clone().run());
        }
        let mut loops = Vec::new();
        if let Some(listener) = cluster_listener {
            loops.push(tokio::spawn(crate::cluster::inbound::accept_loop(
                listener,
                shared.clone(),
                shutdown_tx.subscribe(),
            )));
        }
        tokio::spawn(
            shared
                .outboxes
                .clone()
                .run(shared.budget.clone(), shutdown_tx.subscribe()),
        );
        tokio::spawn(sweep_idle_ips(shared.clone()));
        loops.extend(
            listeners
                .into_iter()
                .map(|l| tokio::spawn(accept_loop(l, shared.clone(), shutdown_tx.subscribe()))),
        );
        for accept in loops {
            // Each loop ends (dropping its listener) once shutdown is signalled.
            let _ = accept.await;
        }
        info!("shutting down: closing every connection with 1001");
        let max = u32::try_from(shared.opts.max_connections).unwrap_or(u32::MAX);
        // Push sends in flight are cancelled by the same signal (§4.4) and drain alongside.
        let drained = tokio::time::timeout(shared.opts.shutdown_timeout, async {
            let (conns, _) = tokio::join!(
                shared.conn_slots.acquire_many(max),
                shared.push.drain(shared.opts.shutdown_timeout)
            );
            conns
        })
        .await;
        match drained {
            Ok(_) => {
                info!("all connections closed");
                true
            }
            Err(_) => {
                warn!(
                    remaining = shared.opts.max_connections - shared.conn_slots.available_permits(),
                    "shutdown timeout passed with connections still open"
                );
                false
            }
        }
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Listener { tcp, transport } = listener;
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = crate::shared::shutdown_signalled(&mut shutdown) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(
                    shared.clone(),
                    transport.clone(),
                    stream,
                    peer,
                ));
            }
            Err(e) => {
                // Usually EMFILE/ENFILE: back off briefly instead of spinning.
                warn!(err = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted connection up to its upgrade: PROXY header and TLS handshake (here, in the
/// connection's task, so a slow client never holds up the accept loop), then HTTP. All of it
/// must finish within `--handshake-timeout` of the accept (§8), or the connection is dropped;
/// once upgraded the WebSocket session runs in its own task, outside this deadline.
async fn serve_connection(
    shared: Arc<Shared>,
    transport: Transport,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let deadline = Instant::now() + shared.opts.handshake_timeout;
    let hosts = transport.hosts();
    let until_upgraded = async {
        let (stream, remote) =
            listen::handshake(&transport, tcp, peer, &shared.listen_stats).await?;
        let Some(cluster) = shared.cluster() else {
            let conn = ConnInfo {
                remote,
                hosts,
                cluster: ClusterConn::Off,
            };
            serve_http(shared.clone(), stream, conn).await;
            return None;
        };
        // §11: the first request decides where the connection goes.
        match edge::route(&shared, cluster, stream, remote, hosts.as_ref()).await {
            Edge::Serve(stream, pre) => {
                let conn = ConnInfo {
                    remote,
                    hosts,
                    cluster: ClusterConn::Edge(Arc::new(std::sync::Mutex::new(pre))),
                };
                serve_http(shared.clone(), stream, conn).await;
                None
            }
            Edge::Forward(forwarding) => Some(forwarding),
            Edge::Dropped => None,
        }
    };
    match timeout_at(deadline, until_upgraded).await {
        // The splice lives as long as the client and its holder: outside the deadline.
        Ok(Some(forwarding)) => forwarding.run(shared).await,
        Ok(None) => {}
        Err(_) => handshake_timed_out(&shared, peer),
    }
}

fn handshake_timed_out(shared: &Shared, peer: SocketAddr) {
    shared.listen_stats.record(PreUpgrade::HandshakeTimeout);
    shared
        .metrics
        .admission_refusals
        .inc(crate::metrics::AdmissionLimit::HandshakeTimeout);
    debug!(remote = %peer, "handshake timeout: connection dropped before its upgrade");
}

/// hyper on one connection, up to the upgrade (or its end). In cluster mode every connection
/// carries exactly one request, the one the edge routed: keep-alive is off, and hyper's
/// buffer limit is the edge's, so a head too long to route is hyper's 431.
pub(crate) async fn serve_http<S>(shared: Arc<Shared>, stream: S, conn: ConnInfo)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown.clone();
    let svc_shared = shared.clone();
    let remote = conn.remote;
    let cluster = !matches!(conn.cluster, ClusterConn::Off);
    let service = service_fn(move |req| crate::http::handle(req, svc_shared.clone(), conn.clone()));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.opts.header_read_timeout);
    if cluster {
        builder
            .keep_alive(false)
            .max_buf_size(crate::cluster::head::MAX_HEAD);
    }
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = crate::shared::shutdown_signalled(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            // §8: the request headers did not arrive within --header-read-timeout.
            shared
                .metrics
                .admission_refusals
                .inc(crate::metrics::AdmissionLimit::HeaderTimeout);
        }
        debug!(remote = %remote, err = %e, "http connection ended with an error");
    }
}

/// Forgets per-IP rate state that has refilled, so the limiter's memory stays bounded however
/// many addresses knock (§8).
async fn sweep_idle_ips(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut every = tokio::time::interval(Duration::from_secs(10));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => shared.per_ip.sweep(),
            _ = crate::shared::shutdown_signalled(&mut shutdown) => return,
        }
    }
}

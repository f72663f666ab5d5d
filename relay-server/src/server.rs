//! The accept loop and graceful shutdown (protocol.md §10).
//!
//! [`Relay::bind`] binds and returns at once, so callers (the binary, tests, benches) can read
//! the bound address before serving. [`Relay::run`] serves until its [`ShutdownHandle`] fires,
//! then closes every WebSocket with 1001 "shutting down" (each writer does it on its own, all
//! at once) and waits at most `--shutdown-timeout` for them to finish.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::options::RelayOptions;
use crate::shared::Shared;

pub struct Relay {
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
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
    pub async fn bind(addr: SocketAddr, opts: RelayOptions) -> io::Result<Relay> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Relay::from_listener(listener, opts))
    }

    pub fn from_listener(listener: TcpListener, opts: RelayOptions) -> Relay {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        Relay {
            listener,
            shared: Arc::new(Shared::new(opts, shutdown_rx)),
            shutdown_tx,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown_tx.clone())
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
            listener,
            shared,
            shutdown_tx,
        } = self;
        let mut shutdown = shutdown_tx.subscribe();
        tokio::spawn(
            shared
                .outboxes
                .clone()
                .run(shared.budget.clone(), shutdown_tx.subscribe()),
        );
        tokio::spawn(sweep_idle_ips(shared.clone()));
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = crate::shared::shutdown_signalled(&mut shutdown) => break,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_http(shared.clone(), stream, remote));
                }
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off briefly instead of spinning.
                    warn!(err = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
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

async fn serve_http(shared: Arc<Shared>, stream: tokio::net::TcpStream, remote: SocketAddr) {
    let mut shutdown = shared.shutdown.clone();
    let svc_shared = shared.clone();
    let service = service_fn(move |req| crate::http::handle(req, svc_shared.clone(), remote));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.opts.header_read_timeout)
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

//! `relay-server`: parse the command line, load certificates and (cluster mode) the cluster
//! secret (exit 2 on a boot error, before binding anything), bind (exit 1 on failure), print
//! the startup line, serve until SIGTERM or SIGINT (SIGHUP reloads manual certificates),
//! leave the cluster directory, drain, exit 0.
//!
//! Exit always happens: the drain is bounded by `--shutdown-timeout`, whatever is still
//! running after it (writers stuck on full sockets, peers that never answer the close) is
//! dropped within half a second, and the log sink gets at most `logging::FLUSH_WAIT`.

use std::process::ExitCode;
use std::time::Duration;

use relay_server::cluster::redis::{RedisDirectory, DEFAULT_PREFIX};
use relay_server::cluster::{secret, NodeConfig, NodeId};
use relay_server::config::{self, ListenMode};
use relay_server::listen;
use relay_server::logging::stderr_line;
use relay_server::metrics::serve::MetricsListener;
use relay_server::push::PushSettings;
use relay_server::{Relay, RelayOptions};
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let config = config::load();
    let logs = relay_server::logging::init(config.ops.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            stderr_line(&format!(
                "relay-server: cannot start the async runtime: {e}"
            ));
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(serve(config));
    runtime.shutdown_timeout(Duration::from_millis(500));
    logs.flush();
    code
}

/// Cluster mode's boot-time pieces (§11), all checked before anything binds.
struct ClusterBoot {
    listen: std::net::SocketAddr,
    directory: RedisDirectory,
    node: NodeConfig,
    secret: secret::ClusterSecret,
}

fn cluster_boot(c: &config::Cluster) -> Result<ClusterBoot, String> {
    let secret = secret::load(&c.secret_file).map_err(|e| e.to_string())?;
    let directory = RedisDirectory::new(&c.redis_url, DEFAULT_PREFIX).map_err(|e| e.to_string())?;
    let node = NodeId::new(&c.node_id).map_err(|e| format!("--node-id: {e}"))?;
    Ok(ClusterBoot {
        listen: c.listen,
        directory,
        node: NodeConfig {
            node,
            advertise: c.advertise.clone(),
            lease: c.lease,
            op_timeout: relay_server::cluster::node::OP_TIMEOUT,
        },
        secret,
    })
}

async fn serve(config: config::Config) -> ExitCode {
    // The secret is read (and refused) before anything binds: a boot error, exit 2.
    let cluster = match config.cluster.as_ref().map(cluster_boot).transpose() {
        Ok(c) => c,
        Err(e) => {
            stderr_line(&format!("relay-server: {e}"));
            return ExitCode::from(2);
        }
    };
    // Certificates are loaded (or made) before anything binds: a bad pair is a boot error.
    let mut prepared = match listen::prepare(&config.listen) {
        Ok(p) => p,
        Err(e) => {
            stderr_line(&format!("relay-server: {e}"));
            return ExitCode::from(2);
        }
    };
    let mut opts = RelayOptions::from(&config);
    // §4.4: the key is read and checked before anything binds; an unusable one is exit 2.
    if let Some(push) = &config.push {
        match PushSettings::load(push) {
            Ok(settings) => opts.push = Some(settings),
            Err(e) => {
                stderr_line(&format!("relay-server: {e}"));
                return ExitCode::from(2);
            }
        }
    }
    let addr = prepared.addr;
    let mut relay = match Relay::bind_with(addr, prepared.transport.clone(), opts).await {
        Ok(relay) => relay,
        Err(e) => {
            error!(addr = %addr, err = %e, "cannot bind listener");
            stderr_line(&format!("relay-server: cannot listen on {addr}: {e}"));
            return ExitCode::from(1);
        }
    };
    let mut bound = match relay.local_addrs() {
        Ok(a) => a,
        Err(e) => {
            stderr_line(&format!("relay-server: cannot read the bound address: {e}"));
            return ExitCode::from(1);
        }
    };
    // §11: the cluster listener binds like the main one (failure is exit 1).
    let node_id = cluster.as_ref().map(|c| c.node.node.clone());
    if let Some(c) = cluster {
        let listener = match tokio::net::TcpListener::bind(c.listen).await {
            Ok(l) => l,
            Err(e) => {
                error!(addr = %c.listen, err = %e, "cannot bind the cluster listener");
                stderr_line(&format!(
                    "relay-server: cannot listen on {} for the cluster: {e}",
                    c.listen
                ));
                return ExitCode::from(1);
            }
        };
        let mut node = c.node;
        // `--cluster-listen HOST:0` without `--cluster-advertise`: peers dial the port bound.
        if c.listen.port() == 0 && node.advertise == c.listen.to_string() {
            if let Ok(bound) = listener.local_addr() {
                node.advertise = bound.to_string();
            }
        }
        relay.enable_cluster(c.directory, node, c.secret, listener);
    }
    // ACME mode: the HTTP-01 listener (bound like the main one: failure is exit 1) and the
    // manager, which orders at once unless a valid certificate was cached.
    let (acme_stop, acme_stop_rx) = tokio::sync::watch::channel(false);
    let mut acme_manager = None;
    if let Some(acme) = prepared.acme.take() {
        relay.shared().metrics.attach_acme(acme.stats.clone());
        if let Some((http_addr, responder)) = acme.http01 {
            let listener = match tokio::net::TcpListener::bind(http_addr).await {
                Ok(l) => l,
                Err(e) => {
                    error!(addr = %http_addr, err = %e, "cannot bind listener");
                    stderr_line(&format!("relay-server: cannot listen on {http_addr}: {e}"));
                    return ExitCode::from(1);
                }
            };
            match listener.local_addr() {
                Ok(a) => bound.push(a),
                Err(e) => {
                    stderr_line(&format!("relay-server: cannot read the bound address: {e}"));
                    return ExitCode::from(1);
                }
            }
            tokio::spawn(responder.serve(listener, acme_stop_rx));
        }
        acme_manager = Some(tokio::spawn(acme.manager.run()));
    }
    let metrics_addr = match config.ops.metrics_listen {
        None => None,
        Some(addr) => match MetricsListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().ok();
                tokio::spawn(listener.run(relay.shared()));
                bound
            }
            Err(e) => {
                error!(addr = %addr, err = %e, "cannot bind the metrics listener");
                stderr_line(&format!(
                    "relay-server: cannot listen on {addr} for metrics: {e}"
                ));
                return ExitCode::from(1);
            }
        },
    };
    match config.listen {
        ListenMode::Development(_) => warn!(
            mode = "development",
            "development mode: plain HTTP on loopback only, not for production"
        ),
        ListenMode::DevTls { .. } => warn!(
            mode = "dev-tls",
            "development mode over TLS: self-signed certificate, loopback only, not for production"
        ),
        _ => {}
    }
    if let Some(resolver) = &prepared.reloadable {
        relay.shared().metrics.attach_certificates(resolver.clone());
    }
    if let Some(push) = &relay.shared().opts.push {
        info!(addr = %push.endpoint, "push wake on (FCM)");
    }
    listen::start_reload(&prepared);
    // In cluster mode the cluster listener is the last address.
    bound.extend(relay.cluster_addr());
    // §10: every bound address, comma-separated, the main (WebSocket) listener first.
    let addrs = bound
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mode = config.listen.name();
    match (metrics_addr, node_id) {
        (Some(metrics), Some(node)) => {
            info!(addr = %addrs, mode = %mode, metrics_addr = %metrics, node_id = %node, "listening")
        }
        (Some(metrics), None) => {
            info!(addr = %addrs, mode = %mode, metrics_addr = %metrics, "listening")
        }
        (None, Some(node)) => info!(addr = %addrs, mode = %mode, node_id = %node, "listening"),
        (None, None) => info!(addr = %addrs, mode = %mode, "listening"),
    }
    let handle = relay.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received, shutting down");
        handle.shutdown();
    });
    relay.run().await;
    acme_stop.send_replace(true);
    if let Some(manager) = acme_manager {
        manager.abort();
    }
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the relay runs until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

//! The cluster listener (protocol.md §11, node B): connections forwarded by peers.
//!
//! Owns the accept loop of `--cluster-listen` and the first step of every connection on it:
//! the link header ([`super::link::read_header`]). Without a valid one the connection is
//! closed with no byte written (an unauthenticated peer learns nothing, not even that this is
//! a relay). With one, the connection is served by hyper exactly as a client's would be,
//! with the link's source as the client's address: the global cap and the memory budget are
//! charged here as usual, per-IP limits are not (the forwarding node applied them), and the
//! request is never forwarded again (`http.rs` answers 503 where it would have to be).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, warn};

use super::link;
use crate::http::{ClusterConn, ConnInfo};
use crate::listen::stream::ServerStream;
use crate::metrics::{AdmissionLimit, ForwardOutcome};
use crate::shared::Shared;

pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = crate::shared::shutdown_signalled(&mut shutdown) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(shared.clone(), stream, peer));
            }
            Err(e) => {
                warn!(err = %e, "cluster listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One forwarded connection up to its upgrade, within `--handshake-timeout` of the accept.
async fn serve_connection(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr) {
    let Some(cluster) = shared.cluster().cloned() else {
        return;
    };
    let deadline = Instant::now() + shared.opts.handshake_timeout;
    let until_upgraded = async {
        let addrs = match link::read_header(&mut tcp, &cluster.secret, link::HEADER_DEADLINE).await
        {
            Ok(addrs) => addrs,
            Err(e) => {
                shared
                    .metrics
                    .cluster_forwarded
                    .inc(ForwardOutcome::Refused);
                // Probes and misconfigured peers: debug, the counter shows the rate.
                debug!(remote = %peer, err = %e, "cluster link header refused: connection closed");
                return;
            }
        };
        shared.metrics.cluster_forwarded.inc(ForwardOutcome::In);
        // A mixed-family pair travels as IPv6 with the IPv4 side mapped.
        let source = SocketAddr::new(addrs.source.ip().to_canonical(), addrs.source.port());
        let conn = ConnInfo {
            remote: source,
            hosts: None,
            cluster: ClusterConn::Inbound,
        };
        crate::server::serve_http(shared.clone(), ServerStream::Plain(tcp), conn).await;
    };
    if timeout_at(deadline, until_upgraded).await.is_err() {
        shared
            .metrics
            .admission_refusals
            .inc(AdmissionLimit::HandshakeTimeout);
        debug!(remote = %peer, "forwarded connection did not finish its upgrade in time: dropped");
    }
}

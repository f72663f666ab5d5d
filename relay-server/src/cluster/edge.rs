//! The edge of a forwarded connection (protocol.md §11, node A): the first request of every
//! client connection in cluster mode is read here, routed by the directory, and either
//! handed to hyper on this node or spliced to the node that holds its server-id.
//!
//! Owns the order of what the edge applies before the directory is asked: the Host check of
//! the TLS modes, then the per-IP limits (§8: "per-IP limits were applied by A"), so neither a
//! wrong name nor a flood costs a directory call. Every HTTP answer (421, 429, 503, and
//! whatever the request itself earns) is hyper's, on this node, given the decision as a
//! [`Prerouted`]; the edge itself writes nothing to the client. A forwarded connection is
//! charged to the holder's global cap and budget, never to this node's (§11); its per-IP
//! share is held here for its whole life.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::forward;
use super::head::{self, Endpoint, Read, Rewind};
use super::link;
use super::node::{BinaryRoute, PhoneRoute};
use super::runtime::{Cluster, LocalClaim, Prerouted};
use super::Peer;
use crate::admission::ip::IpSlot;
use crate::listen::host::{host_allowed, AllowedHosts};
use crate::listen::stream::ServerStream;
use crate::metrics::{AdmissionLimit, Endpoint as EndpointLabel, ForwardOutcome, UpgradeOutcome};
use crate::shared::Shared;

/// Where the edge sends a connection.
pub enum Edge {
    /// Serve it here: the bytes read are replayed in front of the stream, and `hyper` gets
    /// the decision (`None`: not a routable upgrade; hyper applies everything itself).
    Serve(Rewind<ServerStream>, Option<Prerouted>),
    /// Splice it to its holder ([`Forwarding::run`], outside the handshake deadline).
    Forward(Forwarding),
    /// The head did not arrive in time: dropped, like hyper's header timeout drops it.
    Dropped,
}

/// A connection on its way to the holder: the link header and the request are ready.
pub struct Forwarding {
    client: ServerStream,
    peer: TcpStream,
    initial: Vec<u8>,
    _ip_slot: IpSlot,
}

/// Reads the first request and decides (at most `--header-read-timeout` for the head and the
/// directory's 2 s bound after it; the caller's handshake deadline bounds all of it).
pub async fn route(
    shared: &Arc<Shared>,
    cluster: &Arc<Cluster>,
    mut stream: ServerStream,
    remote: SocketAddr,
    hosts: Option<&Arc<dyn AllowedHosts>>,
) -> Edge {
    let buf = match head::read(&mut stream, shared.opts.header_read_timeout).await {
        Read::Head(buf) => buf,
        Read::Other(buf) => return serve(buf, stream, None),
        Read::TimedOut => {
            shared
                .metrics
                .admission_refusals
                .inc(AdmissionLimit::HeaderTimeout);
            debug!(remote = %remote, "request headers did not arrive in time: connection dropped");
            return Edge::Dropped;
        }
    };
    let Some(req) = head::routable(&buf) else {
        return serve(buf, stream, None);
    };
    // Hyper answers these as on a single node: 421, and 503 during shutdown.
    if let Some(hosts) = hosts {
        if !host_allowed(hosts.as_ref(), req.hosts.iter().map(|h| &h[..])) {
            return serve(buf, stream, None);
        }
    }
    if shared.is_shutting_down() {
        return serve(buf, stream, None);
    }
    let client = crate::http::client_addr_from(shared, remote, req.forwarded_for.as_deref());
    let ip_slot = match shared.per_ip.admit(client.ip()) {
        Ok(slot) => slot,
        Err(refusal) => return serve(buf, stream, Some(Prerouted::Refused(refusal))),
    };
    let node = &cluster.node;
    let sid = req.server_id;
    let (label, peer) = match req.endpoint {
        Endpoint::Server => match node.route_binary(&sid).await {
            Ok(BinaryRoute::Local(guard)) => {
                let claim = LocalClaim::new(guard, sid, node.clone());
                let pre = Prerouted::Local {
                    ip_slot: Some(ip_slot),
                    claim: Some(claim),
                };
                return serve(buf, stream, Some(pre));
            }
            Ok(BinaryRoute::Forward(peer)) => (EndpointLabel::Server, peer),
            Err(e) => {
                unavailable(shared, remote, &e);
                return serve(buf, stream, Some(Prerouted::Unavailable));
            }
        },
        Endpoint::Client => match node.route_phone(&sid).await {
            Ok(PhoneRoute::Local) => {
                let pre = Prerouted::Local {
                    ip_slot: Some(ip_slot),
                    claim: None,
                };
                return serve(buf, stream, Some(pre));
            }
            Ok(PhoneRoute::Forward(peer)) => (EndpointLabel::Client, peer),
            Err(e) => {
                unavailable(shared, remote, &e);
                return serve(buf, stream, Some(Prerouted::Unavailable));
            }
        },
    };
    let peer_stream = match forward::connect(&peer.addr, super::node::OP_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            // The holder's lease is still live but its listener is not: it died moments ago,
            // or it is partitioned from us. The client retries; once the lease lapses the
            // directory routes elsewhere.
            shared.metrics.cluster_forwarded.inc(ForwardOutcome::Failed);
            if let Some(suppressed) = shared.refusal_log.allow() {
                warn!(remote = %remote, server_id = %sid, node_id = %peer.node, err = %e, suppressed, "cannot reach the holder's cluster listener: 503");
            }
            return serve(buf, stream, Some(Prerouted::Unavailable));
        }
    };
    let destination = local_addr(&stream).unwrap_or(client);
    let mut initial = link::encode(&cluster.secret, client, destination, link::unix_ms_now());
    initial.extend_from_slice(&buf);
    shared
        .metrics
        .upgrades
        .inc(label, UpgradeOutcome::Forwarded);
    shared.metrics.cluster_forwarded.inc(ForwardOutcome::Out);
    log_forward(&peer, remote, &sid);
    Edge::Forward(Forwarding {
        client: stream,
        peer: peer_stream,
        initial,
        _ip_slot: ip_slot,
    })
}

fn serve(buf: BytesMut, stream: ServerStream, pre: Option<Prerouted>) -> Edge {
    Edge::Serve(Rewind::new(buf.freeze(), stream), pre)
}

fn unavailable(shared: &Shared, remote: SocketAddr, e: &super::Unavailable) {
    if let Some(suppressed) = shared.refusal_log.allow() {
        warn!(remote = %remote, err = %e, suppressed, "cluster directory unavailable: upgrade refused with 503");
    }
}

fn log_forward(peer: &Peer, remote: SocketAddr, sid: &relay_core::ServerId) {
    debug!(remote = %remote, server_id = %sid, node_id = %peer.node, "upgrade forwarded to the holder");
}

/// The address the client reached on this node (the link header's destination).
fn local_addr(stream: &ServerStream) -> Option<SocketAddr> {
    match stream {
        ServerStream::Plain(tcp) => tcp.local_addr().ok(),
        ServerStream::Tls(tls) => tls.get_ref().0.local_addr().ok(),
    }
}

impl Forwarding {
    /// Splices until both directions end, or until this node shuts down (then both sockets
    /// are closed: the client reconnects, its holder sees it leave).
    pub async fn run(self, shared: Arc<Shared>) {
        let Forwarding {
            client,
            peer,
            initial,
            _ip_slot,
        } = self;
        let mut shutdown = shared.shutdown.clone();
        let splice = async {
            match client {
                ServerStream::Plain(tcp) => forward::splice_tcp(tcp, peer, &initial).await,
                ServerStream::Tls(tls) => forward::splice_io(tls, peer, &initial).await,
            }
        };
        tokio::select! {
            r = splice => if let Err(e) = r {
                debug!(err = %e, "forwarded connection ended with an error");
            },
            _ = crate::shared::shutdown_signalled(&mut shutdown) => {}
        }
    }
}

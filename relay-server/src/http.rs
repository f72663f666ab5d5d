//! HTTP before the upgrade (protocol.md §2, §8, §9, §10): routes, the Host check of the TLS
//! modes, the global connection cap, header rules, the WebSocket upgrade, and `/healthz`.
//!
//! Every refusal here is an HTTP status with an empty body. Once upgraded, every registry
//! decision is a WebSocket close code instead (the binary retries HTTP errors but treats 4409
//! as final).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use relay_core::headers::{self, HeaderError};
use tracing::{debug, info, warn};

use crate::admission::ip::Refusal;
use crate::cluster::head::Rewind;
use crate::cluster::runtime::{LocalClaim, Prerouted};
use crate::cluster::{BinaryRoute, PhoneRoute};
use crate::listen::host::{host_allowed, AllowedHosts};
use crate::listen::stats::PreUpgrade;
use crate::listen::stream::ServerStream;
use crate::logging::panics::Guarded;
use crate::metrics::{AdmissionLimit, Endpoint as EndpointLabel, RegisterFailure, UpgradeOutcome};
use crate::roles::binary::{self, BinaryHello};
use crate::roles::phone::{self, PhoneHello};
use crate::shared::Shared;

pub type Body = Full<Bytes>;

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// What the HTTP layer knows about the connection a request came on.
#[derive(Clone)]
pub struct ConnInfo {
    /// The client's address: the PROXY v2 source when the listener requires one (§9), else
    /// the socket peer. Logs (`remote=`) and §8 admission use this, never the socket peer.
    pub remote: SocketAddr,
    /// The names a TLS listener serves (the Host check, §9); `None` on plain listeners.
    pub hosts: Option<Arc<dyn AllowedHosts>>,
    /// Cluster mode (§11): how this connection was routed. [`ClusterConn::Off`] on a single
    /// node.
    pub cluster: ClusterConn,
}

/// What cluster mode decided about a connection before hyper read its request.
#[derive(Clone, Default)]
pub enum ClusterConn {
    #[default]
    Off,
    /// A client connection whose first (and only: keep-alive is off in cluster mode)
    /// request the edge routed; `None` inside if it was not a routable upgrade.
    Edge(Arc<Mutex<Option<Prerouted>>>),
    /// Forwarded by a peer to our cluster listener: route here or answer 503, never forward
    /// again; per-IP limits were applied by the forwarding node.
    Inbound,
}

#[derive(Clone, Copy)]
enum Endpoint {
    Server,
    Client,
}

impl Endpoint {
    fn label(self) -> EndpointLabel {
        match self {
            Endpoint::Server => EndpointLabel::Server,
            Endpoint::Client => EndpointLabel::Client,
        }
    }
}

pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: ConnInfo,
) -> Result<Response<Body>, Infallible> {
    let remote = conn.remote;
    if req.uri().path() == "/healthz" {
        // Not Host-checked: health checkers (Fly, load balancers) dial the address, not the
        // name, and the counts it shows are no secret (docs/operations.md, "Host check").
        return Ok(healthz(&req, &shared));
    }
    let endpoint = match req.uri().path() {
        "/v1/server" | "/v2/server" => Some(Endpoint::Server),
        "/v1/client" | "/v2/client" => Some(Endpoint::Client),
        _ => None,
    };
    // §2: first of all checks in TLS modes, before routing, so a wrong name learns nothing.
    if let Some(hosts) = &conn.hosts {
        let values = req.headers().get_all(hyper::header::HOST).iter();
        if !host_allowed(hosts.as_ref(), values.map(HeaderValue::as_bytes)) {
            shared.listen_stats.record(PreUpgrade::HostRefused);
            if let Some(endpoint) = endpoint {
                let m = &shared.metrics;
                m.upgrades.inc(endpoint.label(), UpgradeOutcome::RejectHost);
            }
            // Debug, not info: scanners send wrong Hosts all day; the counter shows the rate.
            debug!(remote = %remote, "request refused: Host is not a name of this relay (421)");
            return Ok(empty(StatusCode::MISDIRECTED_REQUEST));
        }
    }
    let Some(endpoint) = endpoint else {
        return Ok(empty(StatusCode::NOT_FOUND));
    };
    let (pre, inbound) = match &conn.cluster {
        ClusterConn::Off => (None, false),
        ClusterConn::Edge(pre) => (pre.lock().unwrap_or_else(|p| p.into_inner()).take(), false),
        ClusterConn::Inbound => (inbound_route(&req, &shared, endpoint).await, true),
    };
    Ok(upgrade(req, shared, remote, endpoint, pre, inbound))
}

/// §11 on the holder: a request a peer forwarded is served here (the node's short cut for
/// slots it holds, or the directory's word) or refused 503, never forwarded again. `None`
/// when the request would be refused anyway (method, headers): the upgrade says why.
async fn inbound_route(
    req: &Request<Incoming>,
    shared: &Shared,
    endpoint: Endpoint,
) -> Option<Prerouted> {
    if req.method() != Method::GET || shared.is_shutting_down() {
        return None;
    }
    let cluster = shared.cluster()?;
    let sid = headers::server_id(single(req, headers::SERVER_ID).ok()?).ok()?;
    let node = &cluster.node;
    let (forwarded_to, err) = match endpoint {
        Endpoint::Server => match node.route_binary(&sid).await {
            Ok(BinaryRoute::Local(guard)) => {
                return Some(Prerouted::Local {
                    ip_slot: None,
                    claim: Some(LocalClaim::new(guard, sid, node.clone())),
                })
            }
            Ok(BinaryRoute::Forward(peer)) => (Some(peer), None),
            Err(e) => (None, Some(e)),
        },
        Endpoint::Client => match node.route_phone(&sid).await {
            Ok(PhoneRoute::Local) => {
                return Some(Prerouted::Local {
                    ip_slot: None,
                    claim: None,
                })
            }
            Ok(PhoneRoute::Forward(peer)) => (Some(peer), None),
            Err(e) => (None, Some(e)),
        },
    };
    if let Some(suppressed) = shared.refusal_log.allow() {
        match (forwarded_to, err) {
            (Some(peer), _) => warn!(server_id = %sid, node_id = %peer.node, suppressed,
                "forwarded upgrade names a server-id another node holds now: 503, not forwarded twice"),
            (None, Some(e)) => warn!(server_id = %sid, err = %e, suppressed,
                "cluster directory unavailable: forwarded upgrade refused with 503"),
            (None, None) => {}
        }
    }
    Some(Prerouted::Unavailable)
}

fn healthz(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return empty(StatusCode::METHOD_NOT_ALLOWED);
    }
    let counts = shared.registry.counts();
    // §11: only in cluster mode, and 200 either way (load balancers must not drop a node
    // that still serves every slot it holds because Redis is away).
    let cluster = shared.cluster().map_or(String::new(), |c| {
        format!(",\"cluster\":\"{}\"", c.node.health().as_str())
    });
    let body = format!(
        "{{\"status\":\"ok\",\"version\":\"{}\",\"connected_binaries\":{},\"connected_phones\":{},\"uptime_seconds\":{}{cluster}}}",
        env!("CARGO_PKG_VERSION"),
        counts.binaries,
        counts.phones,
        shared.started.elapsed().as_secs()
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The client's address for §8 and the logs: the socket peer (or the PROXY v2 source the
/// listener put there), or, with `--trust-x-forwarded-for`, the left-most `X-Forwarded-For`
/// entry (port 0). A missing or unparsable entry falls back to the socket peer.
fn client_addr<B>(req: &Request<B>, shared: &Shared, peer: SocketAddr) -> SocketAddr {
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .map(HeaderValue::as_bytes);
    client_addr_from(shared, peer, xff)
}

/// [`client_addr`] from the first `X-Forwarded-For` value (the cluster edge reads the head
/// itself, before hyper).
pub(crate) fn client_addr_from(
    shared: &Shared,
    peer: SocketAddr,
    forwarded_for: Option<&[u8]>,
) -> SocketAddr {
    if !shared.opts.trust_x_forwarded_for {
        return peer;
    }
    forwarded_for
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| parse_forwarded_ip(first.trim()))
        .map_or(peer, |ip| SocketAddr::new(ip, 0))
}

/// `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, or either with a port.
fn parse_forwarded_ip(raw: &str) -> Option<std::net::IpAddr> {
    raw.parse()
        .ok()
        .or_else(|| raw.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            raw.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
}

/// The one value of a header; a repeated header is refused as ambiguous.
fn single<'a>(
    req: &'a Request<Incoming>,
    name: &'static str,
) -> Result<Option<&'a [u8]>, HeaderError> {
    let mut values = req.headers().get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(HeaderError::Repeated(name));
    }
    Ok(first.map(HeaderValue::as_bytes))
}

enum Hello {
    Binary(BinaryHello),
    Phone(PhoneHello),
}

/// A connection about to get its 101.
enum Upgrading {
    Binary(binary::Claiming),
    Phone(PhoneHello),
}

fn check_headers(
    req: &Request<Incoming>,
    endpoint: Endpoint,
    remote: SocketAddr,
) -> Result<Hello, HeaderError> {
    let server_id = headers::server_id(single(req, headers::SERVER_ID)?)?;
    headers::user_agent(single(req, headers::USER_AGENT)?)?;
    Ok(match endpoint {
        Endpoint::Server => Hello::Binary(BinaryHello {
            server_id,
            version: headers::version(single(req, headers::VERSION)?)?.to_owned(),
            remote,
        }),
        Endpoint::Client => {
            // Checked (§2), then dropped: the token is never forwarded (§4.1).
            headers::token(single(req, headers::TOKEN)?)?;
            Hello::Phone(PhoneHello {
                server_id,
                device_name: headers::device_name(single(req, headers::DEVICE_NAME)?)?
                    .map(str::to_owned),
                remote,
            })
        }
    })
}

/// §8 over a per-IP limit: 429, counted and (throttled) logged.
fn refuse_per_ip(
    shared: &Shared,
    endpoint: Endpoint,
    path: &str,
    remote: SocketAddr,
    refusal: Refusal,
) -> Response<Body> {
    let (limit, outcome, what) = match refusal {
        Refusal::Rate => (
            AdmissionLimit::RatePerIp,
            UpgradeOutcome::RejectRateLimit,
            "per-IP upgrade rate",
        ),
        Refusal::Connections => (
            AdmissionLimit::ConnectionsPerIp,
            UpgradeOutcome::RejectIpConnections,
            "per-IP connection cap",
        ),
    };
    shared.metrics.admission_refusals.inc(limit);
    shared
        .metrics
        .register_failures
        .inc(RegisterFailure::RateLimit);
    if let Some(suppressed) = shared.refusal_log.allow() {
        warn!(path = %path, remote = %remote, reason = what, suppressed, "upgrade refused: 429");
    }
    shared.metrics.upgrades.inc(endpoint.label(), outcome);
    empty(StatusCode::TOO_MANY_REQUESTS)
}

#[allow(clippy::too_many_lines)]
fn upgrade(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    remote: SocketAddr,
    endpoint: Endpoint,
    pre: Option<Prerouted>,
    inbound: bool,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let refuse = |outcome: UpgradeOutcome, status: StatusCode| {
        shared.metrics.upgrades.inc(endpoint.label(), outcome);
        empty(status)
    };
    if req.method() != Method::GET {
        return refuse(UpgradeOutcome::RejectMethod, StatusCode::METHOD_NOT_ALLOWED);
    }
    if shared.is_shutting_down() {
        return refuse(
            UpgradeOutcome::RejectUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
        );
    }
    // §2 order: host check (above) → per-IP limits → global cap → headers → upgrade. In
    // cluster mode the edge applied the first two before asking the directory (§11), and a
    // forwarded connection's client address is the link's source.
    let remote = if inbound {
        remote
    } else {
        client_addr(&req, &shared, remote)
    };
    let mut claim = None;
    let ip_slot = match pre {
        Some(Prerouted::Refused(refusal)) => {
            return refuse_per_ip(&shared, endpoint, &path, remote, refusal)
        }
        Some(Prerouted::Unavailable) => {
            return refuse(
                UpgradeOutcome::RejectUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
        Some(Prerouted::Local {
            ip_slot,
            claim: local,
        }) => {
            claim = local;
            ip_slot
        }
        None if inbound => None,
        None => match shared.per_ip.admit(remote.ip()) {
            Ok(slot) => Some(slot),
            Err(refusal) => return refuse_per_ip(&shared, endpoint, &path, remote, refusal),
        },
    };
    let Ok(slot) = shared.conn_slots.clone().try_acquire_owned() else {
        if let Some(suppressed) = shared.refusal_log.allow() {
            warn!(path = %path, remote = %remote, suppressed, "connection cap reached, upgrade refused: 503");
        }
        shared
            .metrics
            .admission_refusals
            .inc(AdmissionLimit::Connections);
        return refuse(
            UpgradeOutcome::RejectCapacity,
            StatusCode::SERVICE_UNAVAILABLE,
        );
    };
    let hello = match check_headers(&req, endpoint, remote) {
        Ok(hello) => hello,
        Err(e) => {
            info!(path = %path, remote = %remote, err = %e, "upgrade refused: bad header");
            return refuse(UpgradeOutcome::RejectHeaders, StatusCode::BAD_REQUEST);
        }
    };
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        info!(path = %path, remote = %remote, "upgrade refused: not a WebSocket upgrade");
        return refuse(UpgradeOutcome::RejectHeaders, StatusCode::BAD_REQUEST);
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            info!(path = %path, remote = %remote, err = %e, "upgrade refused");
            return refuse(UpgradeOutcome::RejectHeaders, StatusCode::BAD_REQUEST);
        }
    };
    // §6.1: a binary claims before its 101 goes out, so the server-id is held by the time it
    // can tell a phone to connect.
    let upgrading = match hello {
        Hello::Binary(h) => {
            let claiming = binary::claim_before_upgrade(&shared, h);
            // §11: the registry holds it now; a release may take the node's lock again.
            if let Some(claim) = claim.take() {
                claim.claimed();
            }
            Upgrading::Binary(claiming)
        }
        Hello::Phone(h) => Upgrading::Phone(h),
    };
    // Guarded: a panic in this connection is logged once, by its own guard (issue 11).
    tokio::spawn(Guarded(Box::pin(async move {
        let _slot = slot;
        let _ip_slot = ip_slot;
        let ws = match fut.await {
            Ok(ws) => ws,
            Err(e) => {
                debug!(remote = %remote, err = %e, "upgrade did not complete");
                if let Upgrading::Binary(claiming) = upgrading {
                    claiming.abandon(&shared);
                }
                return;
            }
        };
        let upgraded = ws.into_inner().into_inner();
        match upgraded.downcast::<TokioIo<ServerStream>>() {
            Ok(parts) => {
                // Plain TCP: owned halves; TLS: a lock only around rustls' in-memory work.
                let (r, w) = parts.io.into_inner().into_split(shared.opts.tls_split);
                // The leftover bytes are a view into hyper's whole read buffer: copy the few
                // bytes out so that buffer is freed now, not kept for the connection's life.
                let prefix = Bytes::copy_from_slice(&parts.read_buf);
                drop(parts.read_buf);
                run(shared, upgrading, r, w, prefix).await;
            }
            Err(upgraded) => match upgraded.downcast::<TokioIo<Rewind<ServerStream>>>() {
                // Cluster mode: the edge read the request first and replayed it (§11).
                Ok(parts) => {
                    let (rest, stream) = parts.io.into_inner().into_parts();
                    let (r, w) = stream.into_split(shared.opts.tls_split);
                    let mut prefix = Vec::with_capacity(parts.read_buf.len() + rest.len());
                    prefix.extend_from_slice(&parts.read_buf);
                    prefix.extend_from_slice(&rest);
                    drop(parts.read_buf);
                    run(shared, upgrading, r, w, Bytes::from(prefix)).await;
                }
                Err(upgraded) => {
                    let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                    run(shared, upgrading, r, w, Bytes::new()).await;
                }
            },
        }
    })));
    response.map(|_| Full::new(Bytes::new()))
}

async fn run<R, W>(shared: Arc<Shared>, upgrading: Upgrading, r: R, w: W, prefix: Bytes)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match upgrading {
        Upgrading::Binary(c) => binary::serve(shared, c, r, w, prefix).await,
        Upgrading::Phone(h) => phone::serve(shared, h, r, w, prefix).await,
    }
}

//! The listeners of each mode (protocol.md §9) and everything a connection goes through
//! before hyper reads its request: the PROXY v2 header, the TLS handshake.
//!
//! - [`prepare`] turns a [`ListenMode`] into what to bind, loading or making certificates
//!   first (a bad pair is a boot error, exit 2, before anything is bound).
//! - [`Listener`]: one bound TCP listener and its [`Transport`] (plain or TLS).
//! - [`handshake`]: per connection, in the connection's own task (never in the accept loop):
//!   PROXY header, then TLS, giving the [`stream::ServerStream`] hyper serves and the client's
//!   address. `server.rs` bounds it, with the upgrade, by `--handshake-timeout`.
//!
//! Files: `tls` (rustls config, manual certificates + SIGHUP, the seam for other resolvers),
//! `dev` (`--dev-tls`), `proxy` (PROXY v2), `host` (Host check), `stream` and `split` (the
//! stream type and its reader/writer split). Nothing here knows about WebSockets or roles.

pub mod acme;
pub mod dev;
pub mod host;
pub mod proxy;
pub mod split;
pub mod stats;
pub mod stream;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::ListenMode;
use stream::ServerStream;
use tls::{CertResolver, TlsTransport};

/// What a listener speaks.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Plain HTTP/WS (development, `--insecure-listen`).
    Plain,
    /// TLS (`--dev-tls`, `--tls-cert/--tls-key`, ACME).
    Tls(TlsTransport),
}

impl Transport {
    /// The Host policy of this listener (TLS modes only, §9).
    pub fn hosts(&self) -> Option<Arc<dyn host::AllowedHosts>> {
        match self {
            Transport::Plain => None,
            Transport::Tls(t) => Some(t.hosts.clone()),
        }
    }
}

/// One bound listener.
#[derive(Debug)]
pub struct Listener {
    pub tcp: TcpListener,
    pub transport: Transport,
}

impl Listener {
    pub async fn bind(addr: SocketAddr, transport: Transport) -> io::Result<Listener> {
        Ok(Listener {
            tcp: TcpListener::bind(addr).await?,
            transport,
        })
    }
}

/// A mode ready to bind: certificates loaded or made, nothing bound yet.
#[derive(Debug)]
pub struct Prepared {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// Manual certificates, to reload on SIGHUP once serving.
    pub reloadable: Option<Arc<CertResolver>>,
    /// ACME mode: the HTTP-01 responder (with `--http-listen`'s address) and the manager
    /// task, for `main` to bind and spawn.
    pub acme: Option<AcmeRun>,
}

/// What ACME mode runs beside the TLS listener.
#[derive(Debug)]
pub struct AcmeRun {
    pub http01: Option<(SocketAddr, acme::Http01Responder)>,
    pub manager: acme::Manager,
    pub stats: Arc<acme::AcmeStats>,
}

/// Why a mode cannot be prepared: a boot error (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Cert(#[from] tls::CertError),
    #[error(transparent)]
    Dev(#[from] dev::DevTlsError),
    #[error(transparent)]
    Acme(#[from] acme::AcmeBootError),
}

/// Loads or makes what `mode` needs and says where to bind. Logs the development
/// certificate's fingerprint and where its PEM went.
pub fn prepare(mode: &ListenMode) -> Result<Prepared, PrepareError> {
    let http1: &[&[u8]] = &[tls::ALPN_HTTP1];
    match mode {
        ListenMode::Development(addr) | ListenMode::Insecure(addr) => Ok(Prepared {
            addr: *addr,
            transport: Transport::Plain,
            reloadable: None,
            acme: None,
        }),
        ListenMode::DevTls {
            https_listen,
            cert_out,
        } => {
            let cert = dev::generate()?;
            dev::write_pem(&cert, cert_out)?;
            info!(
                mode = "dev-tls",
                "development certificate for localhost, 127.0.0.1 and ::1 written to {} \
                 (SHA-256 fingerprint {})",
                cert_out.display(),
                cert.fingerprint
            );
            let resolver = Arc::new(CertResolver::fixed(cert.key));
            Ok(Prepared {
                addr: *https_listen,
                transport: Transport::Tls(TlsTransport {
                    config: tls::server_config(resolver.clone(), http1),
                    hosts: resolver,
                    proxy_protocol: false,
                }),
                reloadable: None,
                acme: None,
            })
        }
        ListenMode::Tls {
            cert,
            key,
            https_listen,
            proxy_protocol,
        } => {
            let resolver = Arc::new(CertResolver::from_files(cert, key)?);
            Ok(Prepared {
                addr: *https_listen,
                transport: Transport::Tls(TlsTransport {
                    config: tls::server_config(resolver.clone(), http1),
                    hosts: resolver.clone(),
                    proxy_protocol: *proxy_protocol,
                }),
                reloadable: Some(resolver),
                acme: None,
            })
        }
        ListenMode::Acme(mode) => {
            let acme = acme::prepare(mode)?;
            Ok(Prepared {
                addr: mode.https_listen,
                transport: Transport::Tls(TlsTransport {
                    config: tls::server_config(
                        acme.resolver.clone(),
                        &[tls::ALPN_HTTP1, tls::ALPN_ACME_TLS],
                    ),
                    hosts: Arc::new(host::DomainHost(mode.domain.clone())),
                    proxy_protocol: mode.proxy_protocol,
                }),
                reloadable: None,
                acme: Some(AcmeRun {
                    http01: mode.http_listen.zip(acme.http01),
                    manager: acme.manager,
                    stats: acme.stats,
                }),
            })
        }
    }
}

/// Everything before hyper: the PROXY v2 header (if required), then the TLS handshake (if
/// TLS). Returns the stream and the client's address (the PROXY source, or the socket peer),
/// or `None` after logging why the connection was dropped without a byte written.
pub async fn handshake(
    transport: &Transport,
    mut tcp: TcpStream,
    peer: SocketAddr,
    stats: &stats::ListenStats,
) -> Option<(ServerStream, SocketAddr)> {
    let tls = match transport {
        Transport::Plain => return Some((ServerStream::Plain(tcp), peer)),
        Transport::Tls(tls) => tls,
    };
    let remote = if tls.proxy_protocol {
        match proxy::read_source(&mut tcp).await {
            Ok(source) => source,
            Err(e) => {
                // Scanners hit this all day: debug, not info.
                debug!(remote = %peer, err = %e, "PROXY header refused, connection closed");
                stats.record(stats::PreUpgrade::ProxyRefused);
                return None;
            }
        }
    } else {
        peer
    };
    match TlsAcceptor::from(tls.config.clone()).accept(tcp).await {
        // A CA validating TLS-ALPN-01 (RFC 8737 §3): the handshake was the whole answer.
        Ok(stream) if stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_ACME_TLS) => {
            debug!(remote = %remote, "acme-tls/1 handshake done, connection closed");
            None
        }
        Ok(stream) => Some((ServerStream::Tls(Box::new(stream)), remote)),
        Err(e) => {
            debug!(remote = %remote, err = %e, "TLS handshake failed");
            stats.record(stats::PreUpgrade::TlsHandshakeFailed);
            None
        }
    }
}

/// Starts the SIGHUP reload of manual certificates, if this mode has them.
pub fn start_reload(prepared: &Prepared) {
    if let Some(resolver) = &prepared.reloadable {
        if let Err(e) = tls::reload_on_sighup(resolver.clone()) {
            warn!(err = %e, "cannot watch SIGHUP: certificates reload only on restart");
        }
    }
}

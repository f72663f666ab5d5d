//! TLS for every test client, chosen per address, so a test written against a plain relay runs
//! unchanged against a TLS one.
//!
//! A process-wide registry says "this address speaks TLS, trusting these roots" ([`speak_tls`]).
//! [`crate::client`] (`FakeBinary`, `FakePhone`, `ClientBuilder`), [`crate::raw::RawClient`]
//! and [`connect`] open TCP as before and then, if the address is registered, do a TLS
//! handshake before the HTTP upgrade; [`ClientStream`] is whichever of the two they got.
//!
//! Owns the client side only: rustls with `ring`, TLS 1.2 and 1.3, ALPN `http/1.1`, SNI the
//! registered server name (none for an IP address, as real clients dialling an IP do). It never
//! decides whether a relay *should* speak TLS; the test (or `tests/support`) registers it.
//! [`test_certificate`] makes certificates for relays under test.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// How to speak TLS to one address.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    /// The client configuration (roots, ALPN).
    pub config: Arc<ClientConfig>,
    /// The name the certificate is checked against, and the SNI (an IP address sends none).
    pub server_name: ServerName<'static>,
}

type Registry = RwLock<HashMap<SocketAddr, TlsTarget>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// From now on every client of this process connecting to `addr` speaks TLS, trusting only
/// `roots`, and checks the certificate against `addr`'s IP address.
pub fn speak_tls(addr: SocketAddr, roots: &[CertificateDer<'static>]) {
    register(
        addr,
        TlsTarget {
            config: client_config(roots),
            server_name: ServerName::IpAddress(addr.ip().into()),
        },
    );
}

/// [`speak_tls`] with a configuration and server name of the test's choosing.
pub fn register(addr: SocketAddr, target: TlsTarget) {
    registry()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(addr, target);
}

/// Clients connect to `addr` in plain TCP again.
pub fn forget(addr: SocketAddr) {
    registry()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&addr);
}

/// How clients reach `addr`: `Some` if it speaks TLS.
pub fn target_of(addr: SocketAddr) -> Option<TlsTarget> {
    registry()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&addr)
        .cloned()
}

/// A client configuration trusting exactly `roots`, offering ALPN `http/1.1` like a browser's
/// WebSocket would.
pub fn client_config(roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        // A root that does not parse is the test's bug; the handshake then fails loudly.
        let _ = store.add(root.clone());
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("ring supports the default versions"))
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The PEM certificates in `pem` (e.g. the file `--dev-tls-cert-out` wrote).
pub fn roots_from_pem(pem: &[u8]) -> io::Result<Vec<CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// A connected stream: plain TCP, or TLS over TCP. Reading it, a TCP close without a TLS
/// close_notify is an ordinary end of stream (zero bytes), as over plain TCP.
#[derive(Debug)]
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: the rustls state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The TCP socket underneath, e.g. for `set_zero_linger` or `local_addr`.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }

    /// The TCP socket, dropping any TLS state (to vanish without a close_notify).
    pub fn into_tcp(self) -> TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.into_inner().0,
        }
    }

    /// Whether this stream speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

/// Wraps a freshly connected socket to `addr`: a TLS handshake if `addr` is registered.
pub async fn wrap(tcp: TcpStream, addr: SocketAddr) -> io::Result<ClientStream> {
    match target_of(addr) {
        None => Ok(ClientStream::Plain(tcp)),
        Some(target) => handshake(tcp, &target).await,
    }
}

/// A TLS handshake over `tcp` as `target` says.
pub async fn handshake(tcp: TcpStream, target: &TlsTarget) -> io::Result<ClientStream> {
    let tls = TlsConnector::from(target.config.clone())
        .connect(target.server_name.clone(), tcp)
        .await?;
    Ok(ClientStream::Tls(Box::new(tls)))
}

/// Connects to `addr` (TCP_NODELAY on), speaking TLS if it is registered.
pub async fn connect(addr: SocketAddr) -> io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    wrap(tcp, addr).await
}

/// A self-signed certificate and its key, for a relay under test.
#[derive(Clone, Debug)]
pub struct TestCertificate {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM of its PKCS#8 key.
    pub key_pem: String,
    /// The certificate, to trust as a root.
    pub der: CertificateDer<'static>,
}

impl TestCertificate {
    /// The key as rustls takes it.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        use rustls_pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .unwrap_or_else(|e| panic!("rcgen wrote a key PEM rustls cannot read: {e}"))
    }
}

/// A fresh ECDSA P-256 certificate for `names` (DNS names or IP addresses), self-signed.
pub fn test_certificate(names: &[&str]) -> TestCertificate {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names)
        .unwrap_or_else(|e| panic!("rcgen cannot make a test certificate: {e}"));
    TestCertificate {
        cert_pem: made.cert.pem(),
        key_pem: made.key_pair.serialize_pem(),
        der: made.cert.der().clone(),
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            // A TCP close without close_notify reads as the end of the stream, as it does over
            // plain TCP: tests assert "the relay dropped the connection" the same way on both.
            ClientStream::Tls(s) => match Pin::new(&mut **s).poll_read(cx, buf) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

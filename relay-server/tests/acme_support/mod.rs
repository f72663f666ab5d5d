//! Helpers of `e2e_acme.rs`: ACME modes for Pebble, the small HTTPS server built the way
//! `listen::acme`'s docs tell the TLS listener to build itself, TLS clients, cache-directory
//! fixtures and a log capture. Owns no test; asserts only what every test wants asserted
//! (no key material in the logs).

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use relay_server::config::{AcmeMode, LETS_ENCRYPT_DIRECTORY};
use relay_server::listen::acme::{self, Acme, AcmeBootError, CertInfo, Tuning};
use relay_testkit::pebble::Pebble;
use relay_testkit::scratch::Scratch;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified};
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

/// A first certificate, with real validation, takes a few seconds on Pebble; generous for a
/// loaded CI machine.
pub const ISSUE_DEADLINE: Duration = Duration::from_secs(90);

pub fn fast_tuning() -> Tuning {
    Tuning {
        order_timeout: Duration::from_secs(60),
        ..Tuning::default()
    }
}

pub fn acme_mode(
    domain: &str,
    pebble: &Pebble,
    cache: &Path,
    https_listen: SocketAddr,
    http_listen: Option<SocketAddr>,
) -> AcmeMode {
    AcmeMode {
        domain: domain.to_owned(),
        https_listen,
        http_listen,
        cert_cache: cache.to_path_buf(),
        acme_directory: pebble.directory_url.clone(),
        acme_ca_root: Some(pebble.api_root.clone()),
        acme_email: Some("ops@example.com".into()),
        proxy_protocol: false,
    }
}

/// A mode whose CA is never contacted: `prepare` touches no network.
pub fn offline_mode(cache: &Path) -> AcmeMode {
    AcmeMode {
        domain: "relay.example.com".into(),
        https_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        cert_cache: cache.to_path_buf(),
        acme_directory: LETS_ENCRYPT_DIRECTORY.into(),
        acme_ca_root: None,
        acme_email: None,
        proxy_protocol: false,
    }
}

pub fn prepare_offline(dir: &Path) -> Result<Acme, AcmeBootError> {
    // A CA root file of our own, so the test does not depend on the system store.
    let root_dir = Scratch::new("offline-root").unwrap();
    let root = root_dir.path().join("root.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ca.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(&root, cert.pem()).unwrap();
    let mut mode = offline_mode(dir);
    mode.acme_ca_root = Some(root);
    acme::prepare(&mode)
}

/// Creates `dir` 0755 owned by uid 65534 ("nobody"). False (with a note) when this process
/// may not chown, i.e. is not root.
pub fn make_foreign(dir: &Path) -> bool {
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    match std::os::unix::fs::chown(dir, Some(65534), Some(65534)) {
        Ok(()) => true,
        Err(e) => {
            assert!(
                !relay_testkit::services::in_ci(),
                "CI runs as root and must exercise this: chown failed: {e}"
            );
            println!("note: cannot chown as this user ({e}); foreign-owner test skipped");
            false
        }
    }
}

pub fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

pub fn cache_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// New orders Pebble accepted, from its log. (Not the `POST /order-plz` lines: Pebble refuses
/// 5% of nonces on purpose, and the client's badNonce retry makes a second such line.)
pub fn new_orders(pebble: &Pebble) -> usize {
    pebble.count_log("Added order")
}

pub async fn first_certificate(updates: &mut watch::Receiver<Option<CertInfo>>) -> CertInfo {
    tokio::time::timeout(ISSUE_DEADLINE, updates.wait_for(|c| c.is_some()))
        .await
        .expect("a certificate within the deadline")
        .expect("resolver alive")
        .clone()
        .expect("some")
}

/// The HTTPS listener, built the way `listen::acme`'s module docs describe.
pub struct TlsServer {
    task: JoinHandle<TcpListener>,
    stop: watch::Sender<bool>,
    challenges: Arc<AtomicUsize>,
}

impl TlsServer {
    pub fn start(listener: TcpListener, acme: &Acme) -> TlsServer {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(acme.resolver.clone());
        config.alpn_protocols = acme::ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (stop, mut stop_rx) = watch::channel(false);
        let challenges = Arc::new(AtomicUsize::new(0));
        let counted = challenges.clone();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = stop_rx.wait_for(|s| *s) => return listener,
                };
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(acme::ACME_TLS_ALPN) {
                        // A CA validating TLS-ALPN-01: the handshake was the answer.
                        counted.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let service =
                        hyper::service::service_fn(|_req: hyper::Request<Incoming>| async {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"hello over TLS"),
                            )))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsServer {
            task,
            stop,
            challenges,
        }
    }

    /// Completed handshakes that negotiated `acme-tls/1`.
    pub fn challenge_handshakes(&self) -> usize {
        self.challenges.load(Ordering::Relaxed)
    }

    pub fn stop(self) {
        self.task.abort();
    }

    pub async fn stop_and_take_listener(self) -> TcpListener {
        self.stop.send_replace(true);
        self.task.await.expect("server task")
    }
}

pub fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> ClientConfig {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = client_config(roots, &[b"http/1.1"]);
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
}

/// A handshake that accepts any certificate (what a CA's validator would do), offering only
/// `alpn`: succeeds only if the server presents some certificate.
pub async fn tls_connect_alpn(addr: SocketAddr, sni: &str, alpn: &[&[u8]]) -> std::io::Result<()> {
    let mut config = client_config(&[], alpn);
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AcceptAnything));
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .map(drop)
}

#[derive(Debug)]
pub struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One keep-alive HTTPS connection, and the serial of the certificate it was made with.
pub struct Http {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    pub serial: String,
    domain: String,
}

impl Http {
    pub async fn connect(
        addr: SocketAddr,
        domain: &str,
        roots: &[CertificateDer<'static>],
    ) -> Http {
        let tls = tls_connect(addr, domain, roots)
            .await
            .expect("TLS handshake");
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .expect("peer certificate")[0]
            .clone();
        let serial = serial_of(&leaf);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        Http {
            sender,
            serial,
            domain: domain.to_owned(),
        }
    }

    pub async fn get(&mut self, path: &str) -> (u16, String) {
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.domain)
            .body(Empty::new())
            .unwrap();
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

pub async fn get(
    addr: SocketAddr,
    domain: &str,
    roots: &[CertificateDer<'static>],
    path: &str,
) -> (u16, String, String) {
    let mut http = Http::connect(addr, domain, roots).await;
    let (status, body) = http.get(path).await;
    (status, body, http.serial)
}

pub fn serial_of(leaf: &CertificateDer<'_>) -> String {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf.as_ref()).unwrap();
    cert.raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn plain_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: relay.example.com\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Everything the relay logs in this test binary (tests share it; filter by domain).
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn lines_about(&self, domain: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(domain))
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Clone)]
pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() -> Logs {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buf = BUF
        .get_or_init(|| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let writer = LogWriter(buf.clone());
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .init();
            buf
        })
        .clone();
    Logs(buf)
}

/// §10: no key material at any level.
pub fn assert_no_key_in_logs(logs: &Logs) {
    let text = logs.text();
    for needle in ["PRIVATE KEY", "key_pkcs8", "BEGIN CERTIFICATE"] {
        assert!(!text.contains(needle), "the log contains {needle:?}");
    }
}

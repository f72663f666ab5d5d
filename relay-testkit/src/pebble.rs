//! A real ACME CA for tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS server
//! answering every name with 127.0.0.1, so Pebble validates challenges against the ports the
//! test's listeners hold. Validation is real (`PEBBLE_VA_ALWAYS_VALID` is never set; only the
//! validation sleeps are turned off with `PEBBLE_VA_NOSLEEP=1`).
//!
//! Owns both processes (killed on drop), their config (a fresh rcgen certificate for Pebble's
//! own HTTPS API, ephemeral ports) and their logs. It never reaches beyond loopback.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::scratch::Scratch;
use crate::services;

/// How Pebble is set up for one test.
#[derive(Debug, Clone)]
pub struct PebbleOptions {
    /// Where Pebble's VA dials HTTP-01 on 127.0.0.1 (the relay's `--http-listen` port).
    pub http_port: u16,
    /// Where it dials TLS-ALPN-01 (the relay's `--https-listen` port).
    pub tls_port: u16,
    /// `certificateValidityPeriod`; `None` keeps Pebble's default (years).
    pub validity: Option<Duration>,
    /// `PEBBLE_AUTHZREUSE`: the percentage of orders that reuse a valid authorization. 0 makes
    /// every order validate a challenge.
    pub authz_reuse: u8,
}

impl PebbleOptions {
    pub fn new(http_port: u16, tls_port: u16) -> Self {
        PebbleOptions {
            http_port,
            tls_port,
            validity: None,
            authz_reuse: 0,
        }
    }
}

/// A running Pebble and its DNS server.
pub struct Pebble {
    /// The ACME directory, for `--acme-directory`.
    pub directory_url: String,
    /// PEM of the CA that signed Pebble's own HTTPS certificate, for `--acme-ca-root`. (Not the
    /// root of the certificates Pebble issues: that one is [`Pebble::issuer_roots`].)
    pub api_root: PathBuf,
    management: SocketAddr,
    api_root_der: CertificateDer<'static>,
    pebble: Proc,
    _dns: Proc,
    _dir: Scratch,
}

impl Pebble {
    /// Starts both programs and waits until Pebble serves its directory. `None` when they are
    /// not installed outside CI ([`services::require`]); panics on any other failure.
    pub async fn start(opts: PebbleOptions) -> Option<Pebble> {
        let pebble = services::require("pebble")?;
        let challtestsrv = services::require("pebble-challtestsrv")?;
        // Ports are picked free then released, so another process can take one in between:
        // a failed start is retried with new ports.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&pebble, &challtestsrv, &opts).await {
                Ok(p) => return Some(p),
                Err(e) => last = e,
            }
        }
        panic!("pebble did not start: {last}");
    }

    async fn try_start(
        pebble: &std::path::Path,
        challtestsrv: &std::path::Path,
        opts: &PebbleOptions,
    ) -> Result<Pebble, String> {
        let dir = Scratch::new("pebble").map_err(|e| e.to_string())?;
        let (api_root_pem, api_root_der, cert_pem, key_pem) = api_certificate();
        let api_root = dir.path().join("api-root.pem");
        let cert = dir.path().join("pebble-cert.pem");
        let key = dir.path().join("pebble-key.pem");
        for (path, text) in [
            (&api_root, &api_root_pem),
            (&cert, &cert_pem),
            (&key, &key_pem),
        ] {
            std::fs::write(path, text).map_err(|e| e.to_string())?;
        }
        let listen = free_tcp_port()?;
        let management = free_tcp_port()?;
        let dns = free_dns_port()?;
        let dns_management = free_tcp_port()?;
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": opts.http_port,
                "tlsPort": opts.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(validity) = opts.validity {
            config["pebble"]["certificateValidityPeriod"] = validity.as_secs().max(1).into();
        }
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).map_err(|e| e.to_string())?;

        // DNS first: A → 127.0.0.1, no AAAA (the test listeners are IPv4), no challenge
        // servers of its own (the relay answers the challenges).
        let dns_proc = Proc::spawn(
            "pebble-challtestsrv",
            Command::new(challtestsrv)
                .arg("-dns01")
                .arg(format!("127.0.0.1:{dns}"))
                .arg("-management")
                .arg(format!("127.0.0.1:{dns_management}"))
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""]),
        )?;
        dns_proc
            .wait_for_log("Starting management server", Duration::from_secs(10))
            .await?;
        let pebble_proc = Proc::spawn(
            "pebble",
            Command::new(pebble)
                .arg("-config")
                .arg(&config_path)
                .arg("-dnsserver")
                .arg(format!("127.0.0.1:{dns}"))
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_AUTHZREUSE", opts.authz_reuse.to_string())
                .env_remove("PEBBLE_VA_ALWAYS_VALID"),
        )?;
        pebble_proc
            .wait_for_log("ACME directory available at", Duration::from_secs(10))
            .await?;
        // Pebble logs its addresses just before binding them: connect to be sure.
        for port in [listen, management] {
            accepting(port, &pebble_proc).await?;
        }
        Ok(Pebble {
            directory_url: format!("https://127.0.0.1:{listen}/dir"),
            api_root,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            api_root_der,
            pebble: pebble_proc,
            _dns: dns_proc,
            _dir: dir,
        })
    }

    /// The roots of the certificates Pebble issues (regenerated at every start), from its
    /// management interface: what a TLS client of the relay must trust.
    pub async fn issuer_roots(&self) -> Vec<CertificateDer<'static>> {
        let pem = self.management_get("/roots/0").await;
        CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("Pebble's /roots/0 is PEM")
    }

    /// Everything Pebble has logged so far.
    pub fn log(&self) -> String {
        self.pebble.log.text()
    }

    /// Lines of Pebble's log containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until Pebble logs `needle`.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> Result<(), String> {
        self.pebble.wait_for_log(needle, within).await
    }

    async fn management_get(&self, path: &str) -> Vec<u8> {
        let mut roots = RootCertStore::empty();
        roots.add(self.api_root_der.clone()).expect("api root");
        let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.management)
            .await
            .expect("connect to Pebble's management interface");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").expect("ip"), tcp)
            .await
            .expect("TLS to Pebble's management interface");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, self.management.to_string())
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec()
    }
}

/// A CA (rcgen) and a certificate for 127.0.0.1/localhost signed by it, for Pebble's API.
fn api_certificate() -> (String, CertificateDer<'static>, String, String) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "relay-testkit Pebble API CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("API certificate");
    (
        ca_cert.pem(),
        ca_cert.der().clone(),
        cert.pem(),
        key.serialize_pem(),
    )
}

/// Waits until 127.0.0.1:`port` accepts. There is no event to await (Pebble says nothing
/// once bound), so this retries every 20 ms, for at most 10 s, while the process lives.
async fn accepting(port: u16, proc: &Proc) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            return Err(format!(
                "{} exited ({status}):\n{}",
                proc.name,
                proc.log.text()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("{} is not accepting on port {port}", proc.name));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_tcp_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A port free for both TCP and UDP (DNS uses both).
fn free_dns_port() -> Result<u16, String> {
    for _ in 0..20 {
        let port = free_tcp_port()?;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no port free for both TCP and UDP".into())
}

/// A child process whose stdout and stderr are collected; killed on drop.
struct Proc {
    name: &'static str,
    child: Mutex<Child>,
    log: Arc<Log>,
}

#[derive(Default)]
struct Log {
    text: Mutex<String>,
    changed: Notify,
}

impl Log {
    fn text(&self) -> String {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn push(&self, line: &str) {
        let mut text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        text.push_str(line);
        text.push('\n');
        drop(text);
        self.changed.notify_waiters();
    }
}

impl Proc {
    fn spawn(name: &'static str, command: &mut Command) -> Result<Proc, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let log = Arc::new(Log::default());
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.push(&line);
                }
                // EOF: the process is gone; wake waiters so they notice.
                log.changed.notify_waiters();
            });
        }
        Ok(Proc {
            name,
            child: Mutex::new(child),
            log,
        })
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_wait()
            .ok()
            .flatten()
    }

    /// Waits (an event, with a deadline) until the log contains `needle`.
    async fn wait_for_log(&self, needle: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.log.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.log.text().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log.text()
                ));
            }
            // A short tick as well, in case the process died between the check and the wait.
            let tick = Instant::now() + Duration::from_millis(200);
            if tokio::time::timeout_at(deadline.min(tick), notified)
                .await
                .is_err()
                && Instant::now() >= deadline
            {
                return Err(format!(
                    "{} did not log {needle:?} within {within:?}:\n{}",
                    self.name,
                    self.log.text()
                ));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

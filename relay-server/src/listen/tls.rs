//! The TLS listener's configuration (protocol.md §9) and the certificates of manual mode.
//!
//! Owns the rustls `ServerConfig` every TLS mode shares (the `ring` provider, TLS 1.2 minimum,
//! ALPN `http/1.1`, no session resumption state) and [`CertResolver`]: the certificate of
//! `--tls-cert/--tls-key` (reloaded on SIGHUP) or of `--dev-tls` (fixed), which also answers
//! the Host check with the certificate's own names. It never accepts connections and never
//! touches a live one: a reload only changes what the next handshake gets.
//!
//! # Plugging in another certificate source (ACME)
//!
//! Everything a TLS listener needs is a [`TlsTransport`]:
//!
//! ```ignore
//! let transport = TlsTransport {
//!     config: tls::server_config(resolver.clone(), &[tls::ALPN_HTTP1, tls::ALPN_ACME_TLS]),
//!     hosts: Arc::new(host::DomainHost(domain.clone())),
//!     proxy_protocol: acme.proxy_protocol,
//! };
//! ```
//!
//! `resolver` is any `Arc<dyn ResolvesServerCert>`: it sees every ClientHello (SNI, ALPN), so
//! an ACME resolver answers `acme-tls/1` handshakes with its challenge certificate and the
//! rest with the issued one, or with `None` (handshake refused) while there is none. Only the
//! ALPN list and the Host policy differ between modes; handshake timeout, PROXY v2, the split
//! and the Host check (`http.rs`) are the listener's and come for free.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tracing::{info, warn};

use super::host::AllowedHosts;

/// The one application protocol WebSocket upgrades use (§9).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// TLS-ALPN-01 challenges (RFC 8737); only an ACME resolver offers it.
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// What a TLS listener runs with: the rustls configuration, whose Host names requests may
/// carry (421 otherwise), and whether every connection opens with a PROXY v2 header.
#[derive(Clone)]
pub struct TlsTransport {
    pub config: Arc<ServerConfig>,
    pub hosts: Arc<dyn AllowedHosts>,
    pub proxy_protocol: bool,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport")
            .field("alpn", &self.config.alpn_protocols.len())
            .field("hosts", &self.hosts)
            .field("proxy_protocol", &self.proxy_protocol)
            .finish()
    }
}

/// rustls with `ring` (never aws-lc-rs: build time and a C toolchain).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The `ServerConfig` of every TLS mode: certificates from `resolver`, TLS 1.3 and 1.2 only
/// (1.1 and older are refused with a protocol_version alert), ALPN `alpn` in preference order.
///
/// No session tickets and no session cache: each resumable session would cost a ticket
/// encryption and two extra messages per handshake (or a cache entry), and a restarted relay
/// could not resume any of them anyway; phones reconnecting to a running relay do a full
/// handshake (see docs/performance.md for the handshake rate).
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // The ring provider supports both versions; this cannot fail.
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"));
    let mut config = builder.with_no_client_auth().with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Arc::new(config)
}

/// Why a certificate pair cannot be used. One line, naming the flag (§10 boot errors; on
/// SIGHUP the same text is logged and the old pair kept).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{flag} {}: cannot read: {err}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("--tls-cert {}: no PEM certificate in the file ({err})", path.display())]
    NoCertificate { path: PathBuf, err: String },
    #[error("--tls-cert {}: the first certificate is not a usable X.509 certificate: {err}", path.display())]
    BadCertificate { path: PathBuf, err: String },
    #[error("--tls-key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file ({err})", path.display())]
    NoKey { path: PathBuf, err: String },
    #[error("--tls-key {}: {err}", path.display())]
    BadKey { path: PathBuf, err: String },
}

/// Reads a PEM chain (end-entity first) and its key, and checks they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    use rustls_pki_types::pem::PemObject;
    let read = |flag, path: &Path| {
        std::fs::read(path).map_err(|err| CertError::Read {
            flag,
            path: path.to_owned(),
            err,
        })
    };
    let cert_pem = read("--tls-cert", cert)?;
    let key_pem = read("--tls-key", key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::NoCertificate {
            path: cert.to_owned(),
            err: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: cert.to_owned(),
            err: "the file has no CERTIFICATE section".into(),
        });
    }
    webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| CertError::BadCertificate {
        path: cert.to_owned(),
        err: e.to_string(),
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::NoKey {
        path: key.to_owned(),
        err: e.to_string(),
    })?;
    certified(chain, private).map_err(|err| CertError::BadKey {
        path: key.to_owned(),
        err,
    })
}

/// A chain and key as rustls serves them; the key must be the certificate's.
pub fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    match CertifiedKey::from_der(chain, key, &provider()) {
        Ok(ck) => Ok(Arc::new(ck)),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err("the key does not belong to the certificate of --tls-cert".into())
        }
        Err(e) => Err(format!("unsupported private key: {e}")),
    }
}

/// Whether `name` is one of the certificate's names (DNS or IP subject alternative names,
/// wildcards as a TLS client would match them).
pub fn certificate_names(ck: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(ee) = ck.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(ee)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(name))
        .is_ok()
}

/// Where a [`CertResolver`] reloads from.
#[derive(Debug, Clone)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// The certificate of manual and development TLS: serves it to every ClientHello whose SNI is
/// one of its names (or that has no SNI: clients dialling an IP address send none), refuses
/// the handshake for any other SNI, and answers the Host check with the same names.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<CertFiles>,
    /// SIGHUP reloads that worked, and that failed (the old pair kept): exported as
    /// `pyrycode_relay_certificate_reloads_total{outcome="ok"|"failed"}`.
    reloads: [AtomicU64; 2],
}

impl CertResolver {
    /// A certificate that never changes (`--dev-tls`, tests).
    pub fn fixed(ck: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: RwLock::new(ck),
            files: None,
            reloads: Default::default(),
        }
    }

    /// `--tls-cert/--tls-key`: loads now (a bad pair is a boot error) and on [`Self::reload`].
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let ck = load_pair(cert, key)?;
        Ok(CertResolver {
            current: RwLock::new(ck),
            files: Some(CertFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
            }),
            reloads: Default::default(),
        })
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads both files; on success new handshakes get the new pair, on failure the old
    /// one stays. Live connections are untouched either way (they hold their own keys).
    pub fn reload(&self) -> Result<(), CertError> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        let ck = load_pair(&files.cert, &files.key)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = ck;
        Ok(())
    }

    /// Reloads so far: `(ok, failed)`.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads[0].load(Ordering::Relaxed),
            self.reloads[1].load(Ordering::Relaxed),
        )
    }

    /// [`Self::reload`] with its one log line (§9: a broken pair is logged, the old one kept).
    pub fn reload_and_log(&self) {
        let result = self.reload();
        self.reloads[usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => info!(
                mode = "tls",
                "SIGHUP: certificate reloaded for new connections"
            ),
            Err(e) => warn!(
                mode = "tls",
                err = %e,
                "SIGHUP: certificate reload failed, keeping the previous certificate"
            ),
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let ck = self.current();
        match hello.server_name() {
            None => Some(ck),
            Some(sni) => {
                let name = ServerName::try_from(sni).ok()?;
                certificate_names(&ck, &name).then_some(ck)
            }
        }
    }
}

impl AllowedHosts for CertResolver {
    fn allows(&self, name: &ServerName<'_>) -> bool {
        certificate_names(&self.current(), name)
    }
}

/// Reloads `resolver` on every SIGHUP for as long as the process runs (manual mode only:
/// elsewhere SIGHUP keeps its default meaning).
pub fn reload_on_sighup(resolver: Arc<CertResolver>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // File reads are blocking; keep them off the async workers.
            let r = resolver.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload_and_log()).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "relay-tls-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn openssl(args: &[&str]) {
        let ok = Command::new("openssl").args(args).output().unwrap();
        assert!(ok.status.success(), "openssl {args:?}: {ok:?}");
    }

    /// A certificate for `localhost` signed by a key in each PEM flavour §9 names.
    #[test]
    fn keys_in_pkcs8_pkcs1_and_sec1_pem_all_load() {
        if relay_testkit::services::require("openssl").is_none() {
            return;
        }
        let d = dir();
        let p = |n: &str| d.join(n).display().to_string();
        // RSA, written as PKCS#1 ("BEGIN RSA PRIVATE KEY").
        openssl(&["genrsa", "-traditional", "-out", &p("rsa1.pem"), "2048"]);
        // EC P-256, written as SEC1 ("BEGIN EC PRIVATE KEY").
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &p("ec.pem"),
        ]);
        // The EC key again as PKCS#8 ("BEGIN PRIVATE KEY").
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &p("ec.pem"),
            "-out",
            &p("ec8.pem"),
        ]);
        for (key, label) in [
            ("rsa1.pem", "BEGIN RSA PRIVATE KEY"),
            ("ec.pem", "BEGIN EC PRIVATE KEY"),
            ("ec8.pem", "BEGIN PRIVATE KEY"),
        ] {
            let pem = std::fs::read_to_string(p(key)).unwrap();
            assert!(pem.contains(label), "{key} is {label}");
            let cert = format!("{key}.crt");
            openssl(&[
                "req",
                "-x509",
                "-key",
                &p(key),
                "-out",
                &p(&cert),
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ]);
            let ck = load_pair(Path::new(&p(&cert)), Path::new(&p(key)))
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let name = ServerName::try_from("localhost").unwrap();
            assert!(certificate_names(&ck, &name), "{label}");
        }
        // An RSA key with the EC certificate: refused as not belonging together.
        let err = load_pair(Path::new(&p("ec.pem.crt")), Path::new(&p("rsa1.pem"))).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn a_wildcard_certificate_names_one_label_and_no_suffix_tricks() {
        let made = rcgen::generate_simple_self_signed(vec!["*.example.com".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
        let ck = certified(vec![made.cert.der().clone()], key).unwrap();
        let names = |n: &str| certificate_names(&ck, &ServerName::try_from(n).unwrap());
        assert!(names("relay.example.com"));
        assert!(!names("example.com"));
        assert!(!names("a.relay.example.com"));
        assert!(!names("relay.example.com.evil.net"));
        assert!(!names("evil-example.com"));
    }
}

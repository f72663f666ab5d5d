//! Which certificate a TLS handshake gets in ACME mode (protocol.md §9, RFC 8737).
//!
//! Owns the certificate currently served for the domain and the swap to a new one: a swap
//! replaces one `Arc` under a lock held for nanoseconds, so handshakes already done keep their
//! session and live connections are never touched. It never blocks on I/O or the CA, never
//! serves the challenge certificate to a normal handshake, and never serves any other name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tracing::{debug, warn};

use super::material::{CertInfo, Served};
use super::pending::Pending;
use super::ACME_TLS_ALPN;

/// How often, at most, a handshake refused for want of a certificate is logged.
const REFUSAL_LOG_EVERY_SECS: u64 = 10;

/// The relay's `ResolvesServerCert` in ACME mode. Build the TLS listener's `ServerConfig`
/// with `with_cert_resolver(resolver)` and ALPN [`super::ALPN_PROTOCOLS`].
pub struct AcmeResolver {
    domain: String,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    pending: Arc<Pending>,
    updates: watch::Sender<Option<CertInfo>>,
    last_refusal_log: AtomicU64,
}

impl std::fmt::Debug for AcmeResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeResolver")
            .field("domain", &self.domain)
            .field(
                "serving",
                &self.updates.borrow().as_ref().map(|i| &i.serial),
            )
            .finish()
    }
}

impl AcmeResolver {
    pub(crate) fn new(domain: String, pending: Arc<Pending>, initial: Option<Served>) -> Self {
        let (info, key) = match initial {
            Some(served) => (Some(served.info), Some(served.key)),
            None => (None, None),
        };
        AcmeResolver {
            domain,
            current: RwLock::new(key),
            pending,
            updates: watch::channel(info).0,
            last_refusal_log: AtomicU64::new(0),
        }
    }

    /// The one name this resolver serves (lowercase).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// What is served now, if anything.
    pub fn current(&self) -> Option<CertInfo> {
        self.updates.borrow().clone()
    }

    /// Every swap, for tests and the metrics exporter: the receiver sees the latest
    /// [`CertInfo`] (`None` until the first certificate exists).
    pub fn subscribe(&self) -> watch::Receiver<Option<CertInfo>> {
        self.updates.subscribe()
    }

    /// Serves `served` to every handshake from now on.
    pub(crate) fn install(&self, served: Served) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(served.key);
        self.updates.send_replace(Some(served.info));
    }

    fn name_matches(&self, hello: &ClientHello<'_>) -> bool {
        hello
            .server_name()
            .is_some_and(|sni| sni.trim_end_matches('.').eq_ignore_ascii_case(&self.domain))
    }

    fn log_refusal(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_refusal_log.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= REFUSAL_LOG_EVERY_SECS
            && self
                .last_refusal_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                "TLS handshake refused: no certificate for {} yet (the ACME order is still running or failing; see the ACME log lines)",
                self.domain
            );
        }
    }
}

/// True when the client offered exactly ALPN `acme-tls/1`: a CA validating TLS-ALPN-01
/// (RFC 8737 §3 requires it to offer that protocol alone).
pub fn is_challenge_hello(hello: &ClientHello<'_>) -> bool {
    let Some(mut protocols) = hello.alpn() else {
        return false;
    };
    protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if !self.name_matches(&hello) {
            debug!("TLS handshake refused: SNI absent or not the ACME domain");
            return None;
        }
        if is_challenge_hello(&hello) {
            let cert = self.pending.tls_alpn01();
            if cert.is_none() {
                debug!("acme-tls/1 handshake with no TLS-ALPN-01 challenge pending");
            }
            return cert;
        }
        let current = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if current.is_none() {
            self.log_refusal();
        }
        current
    }
}

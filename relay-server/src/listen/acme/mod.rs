//! ACME mode, `--domain` (protocol.md §9): certificates from an ACME CA (Let's Encrypt by
//! default), answered by TLS-ALPN-01 on the HTTPS listener and HTTP-01 on `--http-listen`,
//! cached in `--cert-cache`, renewed at two thirds of their lifetime.
//!
//! Owns everything about certificates in that mode and nothing about connections: it hands
//! the TLS listener a certificate resolver, the `--http-listen` listener a responder, and the
//! runtime a manager task. It never reads or writes a relay connection, never logs a key, and
//! never orders a certificate while a valid one is cached (CA rate limits).
//!
//! Layout: [`cache`] (the directory rules and files), [`material`] (PEM, validity, the
//! challenge certificate), [`pending`] (challenge responses in flight), [`resolver`] (what a
//! handshake gets), [`http01`] (the plain-HTTP responder), [`client`] (HTTPS to the CA),
//! [`order`] (one order), [`schedule`] (when), [`manager`] (the loop), [`stats`] (counters).
//!
//! # Plugging it into the relay
//!
//! ```text
//! let acme = acme::prepare(&mode)?;        // before binding: Err is a boot error, exit 2
//! // TLS listener on mode.https_listen:
//! let mut tls = ServerConfig::builder_with_provider(ring)   // TLS 1.2+ as in TLS mode
//!     .with_safe_default_protocol_versions()?
//!     .with_no_client_auth()
//!     .with_cert_resolver(acme.resolver.clone());
//! tls.alpn_protocols = acme::ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
//! //   after each handshake: if conn.alpn_protocol() == Some(acme::ACME_TLS_ALPN), close it
//! //   (it was a CA validating TLS-ALPN-01, not a client; RFC 8737 §3);
//! //   the Host check (421) allows exactly acme.resolver.domain().
//! // --http-listen, when on (mode.http_listen is Some, so acme.http01 is Some):
//! tokio::spawn(acme.http01.unwrap().serve(TcpListener::bind(addr).await?, shutdown_rx));
//! // the manager (loads nothing more, orders at once if no valid cached certificate):
//! let manager = tokio::spawn(acme.manager.run());   // abort it at shutdown
//! // metrics: acme.stats (see stats.rs for the §10 series).
//! ```

pub mod cache;
pub mod client;
pub mod http01;
pub mod manager;
pub mod material;
pub mod order;
pub mod pending;
pub mod resolver;
pub mod schedule;
pub mod stats;

use std::sync::Arc;
use std::time::SystemTime;

use instant_acme::RetryPolicy;
use tracing::{info, warn};

use crate::config::AcmeMode;

pub use cache::{CacheError, CertCache, Opened};
pub use client::RootsError;
pub use http01::Http01Responder;
pub use manager::{Manager, Tuning};
pub use material::CertInfo;
pub use order::Challenge;
pub use resolver::AcmeResolver;
pub use stats::{AcmeStats, OrderOutcome};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What the TLS listener offers in ACME mode, in preference order (§9).
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"http/1.1", ACME_TLS_ALPN];

/// Why ACME mode cannot start. One line naming the flag; `main` prints it and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum AcmeBootError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Roots(#[from] RootsError),
}

/// ACME mode, ready to wire: see the module docs for where each part goes.
pub struct Acme {
    /// For the TLS listener's `ServerConfig::with_cert_resolver`. Serves the cached
    /// certificate from the first handshake when one is valid; refuses handshakes (and logs
    /// why, at most every 10 s) until the first certificate exists.
    pub resolver: Arc<AcmeResolver>,
    /// For `--http-listen`; `None` when it is off (`--http-listen ""`).
    pub http01: Option<Http01Responder>,
    /// The task that orders and renews.
    pub manager: Manager,
    /// Orders by outcome and the certificate's expiry (§10).
    pub stats: Arc<AcmeStats>,
}

/// [`prepare_with`] the relay's own timings.
pub fn prepare(mode: &AcmeMode) -> Result<Acme, AcmeBootError> {
    prepare_with(mode, Tuning::default())
}

/// Checks the cache directory (§9 rules) and the CA roots, loads a cached certificate if one
/// is valid for the domain, and builds the parts. Touches no network: safe to call before
/// binding, which is where its errors must surface (exit 2).
pub fn prepare_with(mode: &AcmeMode, tuning: Tuning) -> Result<Acme, AcmeBootError> {
    let (cache, opened) = CertCache::open(&mode.cert_cache)?;
    let path = cache.dir().display().to_string();
    match opened {
        Opened::Created => info!(path = %path, "created the certificate cache (mode 0700)"),
        Opened::Tightened { from } => warn!(
            path = %path,
            "the certificate cache was open to group or others (mode {from:04o}); tightened to 0700"
        ),
        Opened::Unchanged => {}
    }
    let client = client::ca_client(mode.acme_ca_root.as_deref())?;
    let cached = load_cached(&cache, mode);
    let stats = Arc::new(AcmeStats::default());
    if let Some(served) = &cached {
        stats.set_expiry(served.info.validity.not_after);
    }
    let pending = Arc::new(pending::Pending::default());
    let current = cached.as_ref().map(|s| s.info.validity);
    let resolver = Arc::new(AcmeResolver::new(
        mode.domain.clone(),
        pending.clone(),
        cached,
    ));
    let http01 = mode
        .http_listen
        .map(|_| Http01Responder::new(pending.clone()));
    let mut challenges = vec![Challenge::TlsAlpn01];
    if mode.http_listen.is_some() {
        challenges.push(Challenge::Http01);
    }
    let poll = RetryPolicy::new()
        .initial_delay(std::time::Duration::from_millis(250))
        .backoff(1.5)
        .timeout(tuning.order_timeout);
    let manager = Manager {
        domain: mode.domain.clone(),
        directory_url: mode.acme_directory.clone(),
        orderer: order::Orderer {
            client,
            directory_url: mode.acme_directory.clone(),
            contact: mode.acme_email.as_ref().map(|e| format!("mailto:{e}")),
            domain: mode.domain.clone(),
            cache: cache.clone(),
            pending,
            poll,
            account: None,
        },
        resolver: resolver.clone(),
        stats: stats.clone(),
        cache,
        schedule: schedule::Schedule::new(tuning.backoff, current),
        challenges,
        tuning,
    };
    Ok(Acme {
        resolver,
        http01,
        manager,
        stats,
    })
}

/// The cached certificate, if it parses, names the domain, matches its key and is valid now.
/// Anything else is logged and ignored: the manager orders a new one.
fn load_cached(cache: &CertCache, mode: &AcmeMode) -> Option<material::Served> {
    let path = cache.certificate_path(&mode.acme_directory, &mode.domain);
    let shown = path.display().to_string();
    let pem = match cache.read(&path) {
        Ok(pem) => pem?,
        Err(e) => {
            warn!(path = %shown, err = %e, "cannot read the cached certificate; ordering a new one");
            return None;
        }
    };
    match material::parse_bundle(&pem, &mode.domain) {
        Ok(served) if served.info.validity.is_valid_at(SystemTime::now()) => Some(served),
        Ok(_) => {
            info!(path = %shown, "the cached certificate is outside its validity window; ordering a new one");
            None
        }
        Err(e) => {
            warn!(path = %shown, err = %e, "the cached certificate is unusable; ordering a new one");
            None
        }
    }
}

//! The ACME manager task: obtains the first certificate, renews it at two thirds of its
//! lifetime, backs off after failures, and swaps what the resolver serves (protocol.md §9).
//!
//! Owns the loop and its log lines: one per issuance, renewal and failure (with the CA's
//! problem type), never a key. It decides nothing about timing itself ([`Schedule`] does) and
//! never touches a live connection: a swap only changes what the next handshake gets.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{error, info, warn};

use super::cache::CertCache;
use super::order::{Challenge, OrderError, Orderer};
use super::resolver::AcmeResolver;
use super::schedule::{Backoff, Schedule};
use super::stats::{AcmeStats, OrderOutcome};

/// Timings of the manager. [`Default`] is what the relay runs with; tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Retry delays after failed attempts (§9 "backoff on failure").
    pub backoff: Backoff,
    /// One order, from the first request to the downloaded chain.
    pub order_timeout: Duration,
    /// The longest single sleep: the wall clock is re-read at least this often, so a suspended
    /// host or a clock step cannot make the relay miss its renewal by much.
    pub max_sleep: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            backoff: Backoff {
                base: Duration::from_secs(60),
                cap: Duration::from_secs(3600),
            },
            order_timeout: Duration::from_secs(300),
            max_sleep: Duration::from_secs(3600),
        }
    }
}

/// The manager future's owner. Spawn [`Manager::run`] once; it never returns, so abort it (or
/// let the runtime drop it) at shutdown. Dropping it mid-order withdraws the challenge
/// responses; the CA just sees an abandoned order.
pub struct Manager {
    pub(crate) domain: String,
    pub(crate) directory_url: String,
    pub(crate) orderer: Orderer,
    pub(crate) resolver: Arc<AcmeResolver>,
    pub(crate) stats: Arc<AcmeStats>,
    pub(crate) cache: CertCache,
    pub(crate) schedule: Schedule,
    /// In the order tried; the next is tried at once only when the CA could not validate the
    /// previous one, as Go's autocert does.
    pub(crate) challenges: Vec<Challenge>,
    pub(crate) tuning: Tuning,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("domain", &self.domain)
            .field("challenges", &self.challenges)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// When the manager will next order, were it running at `now`: at once with no usable
    /// certificate, else at the served certificate's renewal time (or a pending retry).
    pub fn next_attempt(&self, now: SystemTime) -> SystemTime {
        self.schedule.next_attempt(now)
    }

    pub async fn run(mut self) {
        self.log_start();
        loop {
            let now = SystemTime::now();
            let at = self.schedule.next_attempt(now);
            match at.duration_since(now) {
                Ok(wait) if !wait.is_zero() => {
                    tokio::time::sleep(wait.min(self.tuning.max_sleep)).await;
                }
                _ => self.attempt().await,
            }
        }
    }

    fn log_start(&self) {
        match self.resolver.current() {
            Some(info) => info!(
                path = %self.cache.dir().display(),
                "ACME: serving the cached certificate for {}: serial {}, valid until {}, renewal from {}",
                self.domain,
                info.serial,
                rfc3339(info.validity.not_after),
                rfc3339(info.validity.renew_at()),
            ),
            None => warn!(
                path = %self.cache.dir().display(),
                "ACME: no usable cached certificate for {}; ordering one from {} by {} (TLS handshakes fail until it is issued, usually tens of seconds)",
                self.domain,
                self.directory_url,
                self.challenges.iter().map(|c| c.name()).collect::<Vec<_>>().join(", then "),
            ),
        }
    }

    /// One attempt: each challenge type in turn while the CA reports `invalid`.
    async fn attempt(&mut self) {
        let replacing = self.resolver.current().is_some();
        let started = Instant::now();
        let mut failure = None;
        for (i, &challenge) in self.challenges.iter().enumerate() {
            let result =
                tokio::time::timeout(self.tuning.order_timeout, self.orderer.order(challenge))
                    .await
                    .unwrap_or(Err(OrderError::Timeout(self.tuning.order_timeout)));
            match result {
                Ok(obtained) => {
                    let outcome = if replacing {
                        OrderOutcome::Renewed
                    } else {
                        OrderOutcome::Issued
                    };
                    self.stats.order(outcome);
                    let path = self
                        .cache
                        .certificate_path(&self.directory_url, &self.domain);
                    if let Err(e) = self
                        .cache
                        .write_private(&path, obtained.bundle_pem.as_bytes())
                    {
                        error!(path = %path.display(), err = %e,
                            "cannot write the certificate to the cache: a restart will order a new one");
                    }
                    let info = obtained.served.info.clone();
                    self.resolver.install(obtained.served);
                    self.stats.set_expiry(info.validity.not_after);
                    self.schedule.succeeded(info.validity, SystemTime::now());
                    info!(
                        duration = ?started.elapsed(),
                        "ACME certificate {} for {} by {}: serial {}, valid until {}, renewal from {}",
                        if replacing { "renewed" } else { "issued" },
                        self.domain,
                        challenge,
                        info.serial,
                        rfc3339(info.validity.not_after),
                        rfc3339(info.validity.renew_at()),
                    );
                    return;
                }
                Err(e) => {
                    self.stats.order(OrderOutcome::Failed);
                    match self.challenges.get(i + 1) {
                        Some(next) if e.is_validation_failure() => {
                            warn!(err = %e, "ACME order for {} failed by {}; trying {} now", self.domain, challenge, next);
                        }
                        _ => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
            }
        }
        let Some(e) = failure else { return };
        let now = SystemTime::now();
        let retry = self.schedule.failed(now, jitter());
        let retry_in = humantime::format_duration(Duration::from_secs(
            retry.duration_since(now).map_or(0, |d| d.as_secs()),
        ));
        let attempt = self.schedule.failures();
        match self.schedule.current() {
            Some(v) if v.is_valid_at(now) => warn!(
                err = %e, attempt,
                "ACME renewal for {} failed; still serving the current certificate (valid until {}); retrying in {}",
                self.domain, rfc3339(v.not_after), retry_in,
            ),
            Some(v) => error!(
                err = %e, attempt,
                "ACME renewal for {} failed and the served certificate expired at {}: clients refuse it; retrying in {}",
                self.domain, rfc3339(v.not_after), retry_in,
            ),
            None => error!(
                err = %e, attempt,
                "ACME order for {} failed; no certificate yet, so TLS handshakes fail; retrying in {}",
                self.domain, retry_in,
            ),
        }
    }
}

/// Uniform in [0, 1]; a failing RNG only costs the jitter.
fn jitter() -> f64 {
    getrandom::u64().map_or(0.5, |r| (r >> 11) as f64 / (1u64 << 53) as f64)
}

fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

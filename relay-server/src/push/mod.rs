//! Push wake (protocol.md §4.4): a binary asks the relay to wake one of its phones through
//! FCM, and the relay does it off the binary's reader.
//!
//! Owns the one call the binary's reader makes ([`PushService::wake`]: count, admit, spawn,
//! return), the outcome counters, and ending the sends at shutdown. Files: `admission`
//! (bucket + in-flight cap), `oauth` (key, JWT grant, token cache), `fcm` (HTTP v1 send and
//! its replies), `client` (the HTTPS client), `settings` (boot-time loading).
//!
//! Never awaits on the caller's task, never queues a wake (one over a limit is dropped), never
//! retries, and never logs a push token, an access token, the key, a JWT or a reply body:
//! log lines carry `token_fp`, the first 8 hex digits of the token's SHA-256.

pub mod admission;
pub mod client;
pub mod fcm;
pub mod oauth;
pub mod settings;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::envelope::Wake;
use relay_core::{ServerId, SystemClock};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use admission::{Admission, Limits, Refused};
pub use settings::{PushBootError, PushSettings};

use self::client::HttpsClient;
use self::fcm::Fcm;

/// What became of one well-formed wake (§4.4). Malformed wakes are malformed envelopes
/// (`Stats::malformed`), not outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// FCM accepted it (2xx).
    Sent,
    /// FCM says the token is no longer valid (404 `UNREGISTERED`, 400 `INVALID_ARGUMENT`
    /// naming the token).
    Unregistered,
    /// Any other reply, a redirect, a timeout, a transport error, or cancelled at shutdown.
    SendFailed,
    /// No access token could be had from the key's token endpoint.
    TokenFetchFailed,
    /// Never sent: push is off, the server-id's bucket is empty, or 32 sends are in flight.
    Dropped,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Sent,
        Outcome::Unregistered,
        Outcome::SendFailed,
        Outcome::TokenFetchFailed,
        Outcome::Dropped,
    ];

    /// The `outcome` label value of `pyrycode_relay_push_wakes_total` (§10).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Unregistered => "unregistered",
            Outcome::SendFailed => "send_failed",
            Outcome::TokenFetchFailed => "token_fetch_failed",
            Outcome::Dropped => "dropped",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Wakes by outcome since boot: `pyrycode_relay_push_wakes_total{outcome=…}` (§10), one
/// series per [`Outcome::ALL`], label [`Outcome::as_str`].
#[derive(Debug, Default)]
pub struct PushCounters {
    by_outcome: [AtomicU64; 5],
}

impl PushCounters {
    pub fn record(&self, outcome: Outcome) {
        self.by_outcome[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, outcome: Outcome) -> u64 {
        self.by_outcome[outcome.index()].load(Ordering::Relaxed)
    }

    /// Every outcome with its count, in [`Outcome::ALL`] order.
    pub fn snapshot(&self) -> [(Outcome, u64); 5] {
        Outcome::ALL.map(|o| (o, self.get(o)))
    }
}

/// The first 8 hex digits of SHA-256 of a push token: enough to follow one phone's wakes
/// through the logs, useless to send one.
pub fn token_fp(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The push service of one relay. Off (no key) it only counts wakes as `dropped`.
pub struct PushService {
    sender: Option<Arc<Sender>>,
    counters: Arc<PushCounters>,
}

struct Sender {
    admission: Admission<SystemClock>,
    fcm: Fcm,
    shutdown: watch::Receiver<bool>,
}

impl PushService {
    /// Push off: every wake is dropped and counted.
    pub fn off() -> Self {
        PushService {
            sender: None,
            counters: Arc::default(),
        }
    }

    /// Push on with `settings`; in-flight sends end when `shutdown` flips to true. Needs no
    /// runtime to build.
    pub fn new(settings: Option<PushSettings>, shutdown: watch::Receiver<bool>) -> Self {
        let Some(s) = settings else {
            return PushService::off();
        };
        let client = HttpsClient::new((*s.tls).clone(), s.call_timeout);
        let send_url = fcm::send_url(&s.endpoint, &s.project_id)
            .expect("PushSettings::load checked the send URL");
        PushService {
            sender: Some(Arc::new(Sender {
                admission: Admission::new(s.limits, SystemClock),
                fcm: Fcm::new(client, send_url, s.account.clone()),
                shutdown,
            })),
            counters: Arc::default(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.sender.is_some()
    }

    pub fn counters(&self) -> &PushCounters {
        &self.counters
    }

    /// Sends in flight now (0 with push off).
    pub fn in_flight(&self) -> usize {
        self.sender.as_ref().map_or(0, |s| s.admission.in_flight())
    }

    /// Server-ids with a rate bucket now (0 with push off): bounded, idle ones are evicted.
    pub fn tracked_server_ids(&self) -> usize {
        self.sender.as_ref().map_or(0, |s| s.admission.tracked())
    }

    /// §4.4: one wake from `server_id`'s binary. Returns at once: counts it dropped, or
    /// admits it and spawns its send. Call from within the tokio runtime.
    pub fn wake(&self, server_id: &ServerId, wake: &Wake<'_>) {
        let fp = token_fp(wake.token());
        let Some(sender) = &self.sender else {
            self.counters.record(Outcome::Dropped);
            debug!(server_id = %server_id, token_fp = %fp, reason = "push_off", "push wake dropped");
            return;
        };
        if *sender.shutdown.borrow() {
            self.counters.record(Outcome::Dropped);
            return;
        }
        let admitted = match sender.admission.admit(server_id) {
            Ok(admitted) => admitted,
            Err(refused) => {
                self.counters.record(Outcome::Dropped);
                debug!(server_id = %server_id, token_fp = %fp, reason = refused.as_str(), "push wake dropped");
                return;
            }
        };
        let body = fcm::message_body(wake.token());
        let sender = sender.clone();
        let counters = self.counters.clone();
        let server_id = server_id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut shutdown = sender.shutdown.clone();
            let result = tokio::select! {
                r = sender.fcm.send(body) => Some(r),
                _ = crate::shared::shutdown_signalled(&mut shutdown) => None,
            };
            drop(admitted);
            let duration = started.elapsed();
            let outcome = match result {
                Some(Ok(outcome)) => outcome,
                Some(Err(fcm::SendError::Token(_))) => Outcome::TokenFetchFailed,
                Some(Err(_)) | None => Outcome::SendFailed,
            };
            counters.record(outcome);
            match (&result, outcome) {
                (_, Outcome::Sent) => {
                    debug!(server_id = %server_id, token_fp = %fp, ?duration, "push wake sent")
                }
                (_, Outcome::Unregistered) => info!(
                    server_id = %server_id, token_fp = %fp, ?duration,
                    "push wake not delivered: FCM says the token is unregistered"
                ),
                (None, _) => {
                    info!(server_id = %server_id, token_fp = %fp, "push wake cancelled at shutdown")
                }
                (Some(Err(e)), _) => warn!(
                    server_id = %server_id, token_fp = %fp, reason = outcome.as_str(), err = %e, ?duration,
                    "push wake failed"
                ),
                (Some(Ok(_)), _) => {}
            }
        });
    }

    /// Shutdown: waits until every send in flight has ended (they are cancelled when the
    /// shutdown signal flips) and admits no more. Returns false if `within` passed first.
    pub async fn drain(&self, within: Duration) -> bool {
        match &self.sender {
            None => true,
            Some(s) => tokio::time::timeout(within, s.admission.close())
                .await
                .is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_fp_is_8_hex_digits_of_sha256() {
        // SHA-256("abc") = ba7816bf...
        assert_eq!(token_fp("abc"), "ba7816bf");
        assert_eq!(token_fp("abc").len(), 8);
    }

    #[test]
    fn outcome_labels_are_the_series_of_section_10() {
        let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            labels,
            [
                "sent",
                "unregistered",
                "send_failed",
                "token_fetch_failed",
                "dropped"
            ]
        );
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }

    #[test]
    fn push_off_counts_every_wake_dropped() {
        let svc = PushService::off();
        let msg = br#"{"push_wake":{"platform":"fcm","token":"t"}}"#;
        let Ok(relay_core::envelope::FromBinary::Wake(w)) =
            relay_core::envelope::parse_from_binary(msg)
        else {
            panic!("a wake")
        };
        let sid = relay_core::headers::server_id(Some(b"s1")).unwrap();
        svc.wake(&sid, &w);
        svc.wake(&sid, &w);
        assert_eq!(svc.counters().get(Outcome::Dropped), 2);
        assert_eq!(svc.counters().get(Outcome::Sent), 0);
    }
}

//! Push wake (protocol.md §4.4) through the library's public API: a relay in-process with
//! push settings loaded as `main` loads them, against the stand-in FCM over real HTTPS.
//! Here the outcome counters (`PushCounters`, exported as `pyrycode_relay_push_wakes_total`,
//! §10) are read directly, and the limits a library user may shorten (refill interval, call
//! timeout) are shortened so refill and timeouts are seen without waiting seconds.

mod support;

use std::time::{Duration, Instant};

use relay_server::config::{FcmCredentials, Push};
use relay_server::push::{Outcome, PushCounters, PushSettings};
use relay_server::RelayOptions;
use relay_testkit::client::{fresh_server_id, FakeBinary};
use relay_testkit::fcm::{Endpoint, FakeFcm, Reply};
use support::{binary_for, eventually, TestRelay};

const PATIENCE: Duration = Duration::from_secs(10);

fn settings(fcm: &FakeFcm) -> PushSettings {
    PushSettings::load(&Push {
        credentials: FcmCredentials::File(fcm.key_path()),
        project_id: None,
        endpoint: fcm.endpoint(),
        ca_root: Some(fcm.ca_path()),
    })
    .expect("the stand-in's key and CA load")
}

async fn start(push: Option<PushSettings>) -> TestRelay {
    support::start(RelayOptions {
        push,
        ..support::fast_opts()
    })
    .await
}

fn counts(c: &PushCounters) -> [u64; 5] {
    c.snapshot().map(|(_, n)| n)
}

/// Waits until `outcome` has been counted `n` times.
async fn until_counted(relay: &TestRelay, outcome: Outcome, n: u64) {
    let c = &relay.shared.push;
    eventually(&format!("{n} wakes {}", outcome.as_str()), || {
        c.counters().get(outcome) >= n
    })
    .await;
}

#[tokio::test]
async fn every_outcome_moves_its_counter_and_only_its_own() {
    // §4.4 outcomes → §10 pyrycode_relay_push_wakes_total{outcome}.
    let fcm = FakeFcm::start().await.unwrap();
    let relay = start(Some(settings(&fcm))).await;
    let c = relay.shared.push.counters();
    assert_eq!(counts(c), [0; 5], "every series exists at zero");
    let mut binary = binary_for(&relay, &fresh_server_id()).await;

    let steps: [(&str, Option<Reply>, Option<Reply>, Outcome); 6] = [
        // First, while no access token is cached yet.
        (
            "token endpoint 503",
            Some(Reply::Status(503)),
            None,
            Outcome::TokenFetchFailed,
        ),
        ("200", None, Some(Reply::Ok), Outcome::Sent),
        (
            "404 UNREGISTERED",
            None,
            Some(Reply::Unregistered),
            Outcome::Unregistered,
        ),
        (
            "400 INVALID_ARGUMENT",
            None,
            Some(Reply::InvalidToken),
            Outcome::Unregistered,
        ),
        ("500", None, Some(Reply::Status(500)), Outcome::SendFailed),
        ("redirect", None, Some(Reply::Redirect), Outcome::SendFailed),
    ];
    let mut want = [0u64; 5];
    for (what, token, send, outcome) in steps {
        if let Some(r) = token {
            fcm.script_tokens([r]);
        }
        if let Some(r) = send {
            fcm.script_sends([r]);
        }
        binary.push_wake(&format!("token-{what}")).await.unwrap();
        want[Outcome::ALL.iter().position(|o| *o == outcome).unwrap()] += 1;
        eventually(what, || counts(c) == want).await;
    }
    // The bucket (burst 6) is spent: the 7th is dropped without reaching FCM.
    let before = fcm.requests().len();
    binary.push_wake("token-over-the-burst").await.unwrap();
    want[4] += 1;
    eventually("dropped", || counts(c) == want).await;
    assert_eq!(fcm.requests().len(), before);
    assert!(relay.stop().await);
}

#[tokio::test]
async fn push_off_and_malformed_wakes_are_counted_where_they_belong() {
    // §4.4: push off → `dropped`; a malformed wake is a malformed envelope of its own kind,
    // not an outcome.
    let relay = start(None).await;
    assert!(!relay.shared.push.is_on());
    let mut binary = binary_for(&relay, &fresh_server_id()).await;
    binary.push_wake("push-off").await.unwrap();
    until_counted(&relay, Outcome::Dropped, 1).await;
    binary
        .send_text(r#"{"push_wake":{"platform":"fcm","token":""}}"#)
        .await
        .unwrap();
    eventually("counted malformed", || {
        relay
            .shared
            .metrics
            .malformed(relay_core::envelope::EnvelopeError::WakeTokenEmpty)
            == 1
    })
    .await;
    assert_eq!(relay.shared.push.counters().get(Outcome::Dropped), 1);
    assert!(relay.stop().await);
}

#[tokio::test]
async fn the_bucket_refills_one_wake_per_interval() {
    // §4.4: burst then one per interval (here shortened from 10 s to 300 ms through the
    // library's PushSettings::limits; the binary always uses 6 / 10 s).
    let fcm = FakeFcm::start().await.unwrap();
    let mut s = settings(&fcm);
    s.limits.refill = Duration::from_millis(300);
    let relay = start(Some(s)).await;
    let mut binary = binary_for(&relay, &fresh_server_id()).await;
    let started = Instant::now();
    for n in 0..7 {
        binary.push_wake(&format!("t{n}")).await.unwrap();
    }
    until_counted(&relay, Outcome::Sent, 6).await;
    until_counted(&relay, Outcome::Dropped, 1).await;
    // Wait out one interval on the relay's clock (real time: its admission uses SystemClock).
    tokio::time::sleep_until((started + Duration::from_millis(320)).into()).await;
    binary.push_wake("refilled").await.unwrap();
    binary.push_wake("not-yet").await.unwrap();
    until_counted(&relay, Outcome::Sent, 7).await;
    until_counted(&relay, Outcome::Dropped, 2).await;
    let sends = fcm.requests_to(Endpoint::Send);
    assert!(sends
        .last()
        .is_some_and(|r| String::from_utf8_lossy(&r.body).contains("refilled")));
    assert!(relay.stop().await);
}

#[tokio::test]
async fn each_call_is_bounded_by_the_call_timeout() {
    // §4.4: "Each HTTP call is bounded by 10 s" (shortened to 400 ms here).
    let fcm = FakeFcm::start().await.unwrap();
    let mut s = settings(&fcm);
    s.call_timeout = Duration::from_millis(400);
    let relay = start(Some(s)).await;
    let mut binary = binary_for(&relay, &fresh_server_id()).await;
    fcm.script_tokens([Reply::Hang]);
    let started = Instant::now();
    binary.push_wake("token-hangs").await.unwrap();
    until_counted(&relay, Outcome::TokenFetchFailed, 1).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );

    fcm.script_sends([Reply::Hang]);
    let started = Instant::now();
    binary.push_wake("send-hangs").await.unwrap();
    until_counted(&relay, Outcome::SendFailed, 1).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    fcm.release();
    assert!(relay.stop().await);
}

#[tokio::test]
async fn the_access_token_is_renewed_when_due_or_refused() {
    // §4.4: cached "until shortly before expiry"; a token FCM refuses (401) is not reused.
    let fcm = FakeFcm::start().await.unwrap();
    fcm.set_token_lifetime(1);
    let relay = start(Some(settings(&fcm))).await;
    let mut binary = binary_for(&relay, &fresh_server_id()).await;
    binary.push_wake("a").await.unwrap();
    until_counted(&relay, Outcome::Sent, 1).await;
    // A 1 s token is used for half its life; wait that out.
    tokio::time::sleep(Duration::from_millis(600)).await;
    fcm.set_token_lifetime(3599);
    binary.push_wake("b").await.unwrap();
    until_counted(&relay, Outcome::Sent, 2).await;
    assert_eq!(
        fcm.requests_to(Endpoint::Token).len(),
        2,
        "renewed before expiry"
    );

    // FCM refusing the bearer token (a scripted 401): send_failed, and the next wake fetches
    // a new token rather than reusing the refused one.
    fcm.script_sends([Reply::Status(401)]);
    binary.push_wake("c").await.unwrap();
    until_counted(&relay, Outcome::SendFailed, 1).await;
    binary.push_wake("d").await.unwrap();
    until_counted(&relay, Outcome::Sent, 3).await;
    assert_eq!(
        fcm.requests_to(Endpoint::Token).len(),
        3,
        "a refused token is dropped"
    );
    let sends = fcm.requests_to(Endpoint::Send);
    let bearer = |i: usize| sends[i].header("authorization").unwrap().to_owned();
    assert_eq!(bearer(1), bearer(2));
    assert_ne!(bearer(2), bearer(3));
    assert!(relay.stop().await);
}

#[tokio::test]
async fn shutdown_cancels_sends_in_flight_and_counts_them_failed() {
    // §4.4: "shutdown cancels in-flight sends within the shutdown timeout".
    let fcm = FakeFcm::start().await.unwrap();
    let relay = start(Some(settings(&fcm))).await;
    fcm.script_sends(std::iter::repeat_n(Reply::Hang, 3));
    let mut binary = FakeBinary::connect(relay.addr, &fresh_server_id())
        .await
        .unwrap();
    for n in 0..3 {
        binary.push_wake(&format!("h{n}")).await.unwrap();
    }
    fcm.wait_for(Endpoint::Send, 3, PATIENCE).await;
    assert_eq!(relay.shared.push.in_flight(), 3);
    let shared = relay.shared.clone();
    let started = Instant::now();
    assert!(relay.stop().await, "drained within --shutdown-timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(shared.push.in_flight(), 0);
    assert_eq!(shared.push.counters().get(Outcome::SendFailed), 3);
    fcm.wait_idle(PATIENCE).await;
}

//! Push wake (protocol.md §4.4) through the real `relay-server` binary, against relay-testkit's
//! stand-in FCM over real HTTPS (its own CA passed with `--fcm-ca-root`, the key's `token_uri`
//! and `--fcm-endpoint` pointing at it). Outcomes are read from the relay's log lines here;
//! the counters behind `pyrycode_relay_push_wakes_total` are checked in `e2e_push_api.rs`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use relay_testkit::fcm::{Endpoint, FakeFcm, Reply, PROJECT_ID};
use support::process::{relay, run_to_exit, scrape, Running, PATIENCE};

/// Starts the binary with push on through `--fcm-credentials FILE`, plus `extra` flags.
async fn start(fcm: &FakeFcm, extra: &[&str], env: &[(&str, &str)]) -> (Running, SocketAddr) {
    let key = fcm.key_path();
    let ca = fcm.ca_path();
    let endpoint = fcm.endpoint();
    let mut args = vec![
        "--insecure-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "3s",
        "--fcm-credentials",
        key.to_str().unwrap(),
        "--fcm-endpoint",
        &endpoint,
        "--fcm-ca-root",
        ca.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
        env.push(("RUST_LOG", "relay_server=debug"));
    }
    let mut relay = Running::spawn(&args, &env);
    let addr = relay.listening().await;
    (relay, addr)
}

/// A binary and a phone of a fresh server-id, one message each way.
async fn pair(addr: SocketAddr) -> (FakeBinary, FakePhone, String) {
    let sid = fresh_server_id();
    let mut binary = FakeBinary::connect(addr, &sid).await.unwrap();
    let mut phone = FakePhone::connect(addr, &sid).await.unwrap();
    phone.send_text("0").await.unwrap();
    let conn_id = binary.recv_envelope().await.unwrap().conn_id;
    binary.send_to(&conn_id, "0").await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), "0");
    (binary, phone, conn_id)
}

/// One phone → binary → phone round trip, timed.
async fn round_trip(
    binary: &mut FakeBinary,
    phone: &mut FakePhone,
    conn_id: &str,
    n: usize,
) -> Duration {
    let started = Instant::now();
    phone.send_text(&n.to_string()).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some(n.to_string().as_str()));
    binary.send_to(conn_id, &n.to_string()).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), n.to_string());
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn a_wake_is_one_fcm_v1_request_with_the_bearer_token_and_exactly_the_documented_body() {
    // §4.4: POST {endpoint}/v1/projects/{project_id}/messages:send, Authorization: Bearer,
    // body exactly {"message":{"token":…,"android":{"priority":"HIGH"}}}; the access token
    // comes from an RS256 JWT grant and is reused.
    let fcm = FakeFcm::start().await.unwrap();
    let (mut relay, addr) = start(&fcm, &[], &[]).await;
    let mut binary = FakeBinary::connect(addr, &fresh_server_id()).await.unwrap();

    binary.push_wake("fcm-token:APA91b-one").await.unwrap();
    relay.wait_lines(&["push wake sent"], 1).await;
    let grants = fcm.requests_to(Endpoint::Token);
    assert_eq!(grants.len(), 1);
    assert_eq!(
        grants[0].verdict,
        Ok(()),
        "JWT signature and claims check out"
    );
    assert_eq!(
        grants[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let sends = fcm.requests_to(Endpoint::Send);
    assert_eq!(sends.len(), 1, "exactly one request per wake");
    let send = &sends[0];
    assert_eq!(send.method, "POST");
    assert_eq!(
        send.path,
        format!("/v1/projects/{PROJECT_ID}/messages:send")
    );
    let token = fcm.issued_tokens().remove(0);
    assert_eq!(
        send.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(
        send.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        std::str::from_utf8(&send.body).unwrap(),
        r#"{"message":{"token":"fcm-token:APA91b-one","android":{"priority":"HIGH"}}}"#
    );
    assert_eq!(send.verdict, Ok(()));

    binary.push_wake("fcm-token:APA91b-two").await.unwrap();
    relay.wait_lines(&["push wake sent"], 2).await;
    let sends = fcm.requests_to(Endpoint::Send);
    assert_eq!(sends.len(), 2);
    assert_eq!(
        sends[1].header("authorization"),
        send.header("authorization")
    );
    assert_eq!(
        fcm.requests_to(Endpoint::Token).len(),
        1,
        "the access token is reused"
    );
    assert!(fcm.requests_to(Endpoint::Other).is_empty());
}

#[tokio::test]
async fn the_key_can_come_from_the_environment_and_project_id_defaults_to_the_keys() {
    // §4.4: PYRYCODE_RELAY_FCM_CREDENTIALS holds the JSON itself; --fcm-project-id defaults to
    // the key's project_id and, when given, wins.
    let fcm = FakeFcm::start().await.unwrap();
    let json = fcm.service_account_json();
    let endpoint = fcm.endpoint();
    let ca = fcm.ca_path();
    let flags = [
        "--insecure-listen",
        "127.0.0.1:0",
        "--fcm-endpoint",
        &endpoint,
        "--fcm-ca-root",
        ca.to_str().unwrap(),
    ];
    let env = [
        ("PYRYCODE_RELAY_FCM_CREDENTIALS", json.as_str()),
        ("RUST_LOG", "relay_server=debug"),
    ];
    let mut relay = Running::spawn(&flags, &env);
    let addr = relay.listening().await;
    let mut binary = FakeBinary::connect(addr, &fresh_server_id()).await.unwrap();
    binary.push_wake("from-env").await.unwrap();
    relay.wait_lines(&["push wake sent"], 1).await;
    assert_eq!(
        fcm.requests_to(Endpoint::Send)[0].path,
        format!("/v1/projects/{PROJECT_ID}/messages:send")
    );
    drop(relay);

    let mut flags = flags.to_vec();
    flags.extend(["--fcm-project-id", "other-project-7"]);
    let mut relay = Running::spawn(&flags, &env);
    let addr = relay.listening().await;
    let mut binary = FakeBinary::connect(addr, &fresh_server_id()).await.unwrap();
    binary.push_wake("to-other").await.unwrap();
    relay.wait_lines(&["push wake failed"], 1).await;
    let sends = fcm.requests_to(Endpoint::Send);
    assert_eq!(sends[1].path, "/v1/projects/other-project-7/messages:send");
}

#[tokio::test]
async fn a_server_id_gets_a_burst_of_6_wakes_and_the_rest_are_dropped_not_queued() {
    // §4.4: per server-id a token bucket of burst 6 (refill one per 10 s: the refill itself
    // is tested with a shortened interval in e2e_push_api.rs and with a manual clock in
    // push/admission.rs); over it a wake is dropped, never queued.
    let fcm = FakeFcm::start().await.unwrap();
    let (mut relay, addr) = start(&fcm, &[], &[]).await;
    let (mut binary, mut phone, conn_id) = pair(addr).await;
    for n in 0..8 {
        binary.push_wake(&format!("burst-{n}")).await.unwrap();
    }
    relay.wait_lines(&["push wake sent"], 6).await;
    relay
        .wait_lines(&["push wake dropped", "reason=\"rate_limited\""], 2)
        .await;
    // The binary still routes; another server-id has its own bucket.
    round_trip(&mut binary, &mut phone, &conn_id, 1).await;
    let mut other = FakeBinary::connect(addr, &fresh_server_id()).await.unwrap();
    other.push_wake("other-server-id").await.unwrap();
    relay.wait_lines(&["push wake sent"], 7).await;
    let bodies: Vec<String> = fcm
        .requests_to(Endpoint::Send)
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies.len(), 7, "{bodies:#?}");
    for n in 0..6 {
        assert!(
            bodies.iter().any(|b| b.contains(&format!("burst-{n}\""))),
            "{bodies:#?}"
        );
    }
    assert!(!bodies
        .iter()
        .any(|b| b.contains("burst-6") || b.contains("burst-7")));
}

#[tokio::test]
async fn at_most_32_sends_in_flight_and_a_hanging_fcm_never_delays_routing() {
    // §4.4: relay-wide at most 32 sends in flight; "the send happens off the binary's
    // reader: a slow FCM never delays routing".
    let fcm = FakeFcm::start().await.unwrap();
    let (mut relay, addr) = start(&fcm, &[], &[]).await;
    let (mut binary, mut phone, conn_id) = pair(addr).await;
    let mut baseline = Vec::new();
    for n in 0..50 {
        baseline.push(round_trip(&mut binary, &mut phone, &conn_id, n).await);
    }

    fcm.script_sends(std::iter::repeat_n(Reply::Hang, 40));
    let mut wakers = Vec::new();
    for s in 0..6 {
        let mut b = FakeBinary::connect(addr, &fresh_server_id()).await.unwrap();
        for n in 0..6 {
            b.push_wake(&format!("hang-{s}-{n}")).await.unwrap();
        }
        wakers.push(b);
    }
    fcm.wait_for(Endpoint::Send, 32, PATIENCE).await;
    relay
        .wait_lines(&["push wake dropped", "reason=\"in_flight_cap\""], 4)
        .await;
    assert_eq!(fcm.open_requests(), 32, "32 sends hang in FCM");

    // While FCM hangs, the binary that woke (and keeps waking) routes as fast as before.
    let mut during = Vec::new();
    for n in 0..50 {
        binary.push_wake("while-hanging").await.unwrap();
        during.push(round_trip(&mut binary, &mut phone, &conn_id, n).await);
    }
    let (b, d) = (median(baseline.clone()), median(during.clone()));
    let worst = *during.iter().max().unwrap();
    println!("round trip median: baseline {b:?}, while FCM hangs {d:?} (worst {worst:?})");
    assert!(
        d <= b * 3 + Duration::from_millis(5),
        "baseline {b:?}, during {d:?}"
    );
    assert!(worst < Duration::from_millis(500), "worst {worst:?}");
    assert_eq!(
        fcm.requests_to(Endpoint::Send).len(),
        32,
        "nothing queued behind the cap"
    );

    fcm.release();
    relay.wait_lines(&["push wake sent"], 32).await;
    assert_eq!(fcm.requests_to(Endpoint::Send).len(), 32);
}

/// `pyrycode_relay_push_wakes_total{outcome=…}` for every outcome, in §4.4's order.
async fn push_wakes(metrics: SocketAddr) -> [f64; 5] {
    let s = scrape(metrics).await;
    [
        "sent",
        "unregistered",
        "send_failed",
        "token_fetch_failed",
        "dropped",
    ]
    .map(|o| {
        let name = format!(r#"pyrycode_relay_push_wakes_total{{outcome="{o}"}}"#);
        *s.get(&name)
            .unwrap_or_else(|| panic!("no {name} in the scrape"))
    })
}

#[tokio::test]
async fn failing_fcm_replies_are_logged_by_outcome_and_never_retried_or_followed() {
    // §4.4 outcomes: token_fetch_failed, unregistered (404 UNREGISTERED, 400 INVALID_ARGUMENT
    // naming the token), send_failed (500, a redirect: not followed, an endless reply: at most
    // 4 KiB read); a failed send is not retried. Each moves its §10 series on /metrics.
    let fcm = FakeFcm::start().await.unwrap();
    let (mut relay, addr) = start(&fcm, &[], &[]).await;
    let metrics = relay.metrics_addr().await;
    assert_eq!(
        push_wakes(metrics).await,
        [0.0; 5],
        "every series from boot, at zero"
    );
    let mut binary = FakeBinary::connect(addr, &fresh_server_id()).await.unwrap();
    fcm.script_tokens([Reply::Status(500)]);
    binary.push_wake("first").await.unwrap();
    relay
        .wait_lines(&["push wake failed", "reason=\"token_fetch_failed\""], 1)
        .await;
    assert!(fcm.requests_to(Endpoint::Send).is_empty());

    fcm.script_sends([
        Reply::Unregistered,
        Reply::InvalidToken,
        Reply::Status(500),
        Reply::Redirect,
        Reply::Endless(404),
    ]);
    let started = Instant::now();
    for n in 0..5 {
        binary.push_wake(&format!("t{n}")).await.unwrap();
    }
    relay.wait_lines(&["token is unregistered"], 2).await;
    relay
        .wait_lines(&["push wake failed", "reason=\"send_failed\""], 3)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the endless reply is cut at 4 KiB, not waited out: {:?}",
        started.elapsed()
    );
    assert_eq!(fcm.requests_to(Endpoint::Send).len(), 5, "no retry");
    assert_eq!(push_wakes(metrics).await, [0.0, 2.0, 3.0, 1.0, 0.0]);
    // The bucket (6) is spent: a 7th wake is dropped.
    binary.push_wake("over-the-burst").await.unwrap();
    relay
        .wait_lines(&["push wake dropped", "reason=\"rate_limited\""], 1)
        .await;
    assert_eq!(push_wakes(metrics).await, [0.0, 2.0, 3.0, 1.0, 1.0]);
    // A sent one, from another server-id.
    let mut other = FakeBinary::connect(addr, &fresh_server_id()).await.unwrap();
    other.push_wake("sent").await.unwrap();
    relay.wait_lines(&["push wake sent"], 1).await;
    assert_eq!(push_wakes(metrics).await, [1.0, 2.0, 3.0, 1.0, 1.0]);
    assert!(
        fcm.requests_to(Endpoint::Other).is_empty(),
        "the redirect was not followed"
    );
    assert_eq!(fcm.requests_to(Endpoint::Token).len(), 2);
}

#[tokio::test]
async fn malformed_and_push_off_wakes_are_dropped_and_the_binary_keeps_routing() {
    // §4.4: a malformed wake is dropped, counted, warned, never answered; with push off a wake
    // is dropped as `dropped`. Either way the binary stays connected and routing goes on.
    let fcm = FakeFcm::start().await.unwrap();
    let (mut relay, addr) = start(&fcm, &[], &[]).await;
    let (mut binary, mut phone, conn_id) = pair(addr).await;
    let long = "t".repeat(4097);
    let malformed = [
        r#"{"push_wake":{"platform":"apns","token":"t"}}"#.to_owned(),
        r#"{"push_wake":{"platform":"fcm","token":""}}"#.to_owned(),
        r#"{"push_wake":{"platform":"fcm"}}"#.to_owned(),
        r#"{"push_wake":7}"#.to_owned(),
        format!(r#"{{"push_wake":{{"platform":"fcm","token":"{long}"}}}}"#),
    ];
    for (n, msg) in malformed.iter().enumerate() {
        binary.send_text(msg).await.unwrap();
        // The binary reads in order: a round trip after the wake means it was handled.
        round_trip(&mut binary, &mut phone, &conn_id, n).await;
    }
    // Warned (the first one at least: warnings are throttled per connection, §4.2).
    relay
        .wait_lines(
            &["malformed push wake dropped", "reason=\"wake_platform\""],
            1,
        )
        .await;
    binary
        .expect_silence(Duration::from_millis(100))
        .await
        .unwrap();
    assert!(fcm.requests().is_empty(), "nothing reached FCM");
    let s = scrape(relay.metrics_addr().await).await;
    for kind in [
        "wake_platform",
        "wake_token_empty",
        "wake_token_missing",
        "wake_not_object",
        "wake_token_too_long",
    ] {
        let name = format!(r#"pyrycode_relay_malformed_envelopes_total{{kind="{kind}"}}"#);
        assert_eq!(s.get(&name), Some(&1.0), "{name}");
    }
    assert_eq!(
        s.get(r#"pyrycode_relay_push_wakes_total{outcome="dropped"}"#),
        Some(&0.0),
        "a malformed wake is not an outcome"
    );
    drop(relay);

    let mut off = Running::spawn(
        &["--insecure-listen", "127.0.0.1:0"],
        &[("RUST_LOG", "relay_server=debug")],
    );
    let addr = off.listening().await;
    let (mut binary, mut phone, conn_id) = pair(addr).await;
    binary.push_wake("push-is-off").await.unwrap();
    off.wait_lines(&["push wake dropped", "reason=\"push_off\""], 1)
        .await;
    round_trip(&mut binary, &mut phone, &conn_id, 2).await;
}

#[tokio::test]
async fn no_secret_appears_in_any_log_line_at_trace() {
    // §4.4/§10: logs carry token_fp, never the push token, the access token, the key, a JWT
    // or a reply body; §2: never the phone's X-Pyrycode-Token either.
    let fcm = FakeFcm::start().await.unwrap();
    let json = fcm.service_account_json();
    let (mut relay, addr) = start(&fcm, &[], &[("RUST_LOG", "trace")]).await;
    let sid = fresh_server_id();
    let mut binary = FakeBinary::connect(addr, &sid).await.unwrap();
    let mut phone = FakePhone::builder(addr, &sid)
        .token("phone-token-s3cret")
        .connect()
        .await
        .unwrap();
    phone
        .send_text(r#"{"payload":"s3cret-payload"}"#)
        .await
        .unwrap();
    binary.recv_envelope().await.unwrap();
    let push_tokens = [
        "push-token-sent-s3cret",
        "push-token-unreg-s3cret",
        "push-token-fail-s3cret",
    ];
    fcm.script_sends([Reply::Ok, Reply::Unregistered, Reply::Status(500)]);
    for t in push_tokens {
        binary.push_wake(t).await.unwrap();
    }
    binary
        .send_text(r#"{"push_wake":{"platform":"apns","token":"push-token-bad-s3cret"}}"#)
        .await
        .unwrap();
    relay.wait_lines(&["push wake sent"], 1).await;
    relay.wait_lines(&["token is unregistered"], 1).await;
    relay.wait_lines(&["push wake failed"], 1).await;
    relay.wait_lines(&["malformed push wake dropped"], 1).await;
    let metrics = relay.metrics_addr().await;
    let scraped: Vec<String> = scrape(metrics).await.into_keys().collect();
    relay.signal("TERM");
    assert_eq!(relay.exit_code(PATIENCE).await, Some(0));

    let jwt = fcm.requests_to(Endpoint::Token)[0].body.clone();
    let jwt = String::from_utf8_lossy(&jwt);
    let jwt = jwt
        .split("assertion=")
        .nth(1)
        .expect("an assertion")
        .to_owned();
    let key_lines: Vec<String> = serde_json::from_str::<serde_json::Value>(&json).unwrap()
        ["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    let mut secrets: Vec<String> = push_tokens.iter().map(|s| s.to_string()).collect();
    secrets.extend([
        "push-token-bad-s3cret".into(),
        "phone-token-s3cret".into(),
        "s3cret-payload".into(),
    ]);
    secrets.extend(fcm.issued_tokens());
    secrets.extend(jwt.split('.').map(str::to_owned));
    secrets.extend(key_lines);
    secrets.push("BEGIN PRIVATE KEY".into());
    assert!(
        relay.seen.len() > 20,
        "trace logging ran: {:#?}",
        relay.seen
    );
    for line in relay.seen.iter().chain(&scraped) {
        for s in &secrets {
            assert!(
                !line.contains(s.as_str()),
                "secret {s:?} in log line: {line}"
            );
        }
        assert!(!line.contains("Bearer"), "{line}");
    }
    // The fingerprints are there instead.
    let fp = relay_server::push::token_fp(push_tokens[0]);
    assert!(
        relay.seen.iter().any(|l| l.contains(&fp)),
        "token_fp {fp} logged"
    );
}

#[tokio::test]
async fn unusable_keys_are_boot_errors_that_quote_none_of_the_key() {
    // §4.4: "An unusable key is a boot error (exit 2) whose message quotes no part of it";
    // §10: before binding anything.
    let fcm = FakeFcm::start().await.unwrap();
    let good: serde_json::Value = serde_json::from_str(&fcm.service_account_json()).unwrap();
    let with = |field: &str, v: &str| {
        let mut k = good.clone();
        k[field] = v.into();
        k.to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("not json", "{ s3cret".to_owned()),
        ("wrong type", with("type", "s3cret-authorized_user")),
        (
            "bad private key",
            with("private_key", "-----BEGIN PRIVATE KEY-----\ns3cret\n"),
        ),
        (
            "http token_uri",
            with("token_uri", "http://s3cret.example/token"),
        ),
    ];
    for (what, json) in &cases {
        for via_env in [false, true] {
            let path = dir.path().join("key.json");
            std::fs::write(&path, json).unwrap();
            let mut args = vec!["--insecure-listen", "127.0.0.1:0"];
            let mut env = vec![];
            if via_env {
                env.push(("PYRYCODE_RELAY_FCM_CREDENTIALS", json.as_str()));
            } else {
                args.extend(["--fcm-credentials", path.to_str().unwrap()]);
            }
            let out = run_to_exit(relay(&args, &env));
            assert_eq!(out.code, Some(2), "{what} (env {via_env}): {out:?}");
            let lines: Vec<&str> = out.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{what}: one line: {out:?}");
            assert!(lines[0].starts_with("relay-server: "), "{out:?}");
            assert!(
                !out.stderr.contains("s3cret"),
                "{what} quotes the key: {out:?}"
            );
            assert!(!out.stderr.contains("listening"), "{out:?}");
        }
    }
    let out = run_to_exit(relay(
        &[
            "--insecure-listen",
            "127.0.0.1:0",
            "--fcm-credentials",
            "/nonexistent/key.json",
        ],
        &[],
    ));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("/nonexistent/key.json"), "{out:?}");
}

#[tokio::test]
async fn shutdown_cancels_sends_in_flight_within_the_shutdown_timeout() {
    // §4.4 + §10: sends hanging in FCM do not hold the relay past --shutdown-timeout.
    let fcm = FakeFcm::start().await.unwrap();
    let (mut relay, addr) = start(&fcm, &[], &[]).await;
    fcm.script_sends(std::iter::repeat_n(Reply::Hang, 6));
    let mut binary = FakeBinary::connect(addr, &fresh_server_id()).await.unwrap();
    for n in 0..6 {
        binary.push_wake(&format!("hang-{n}")).await.unwrap();
    }
    fcm.wait_for(Endpoint::Send, 6, PATIENCE).await;
    let signalled = Instant::now();
    relay.signal("TERM");
    assert_eq!(relay.exit_code(PATIENCE).await, Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(
        relay.count(&["push wake cancelled at shutdown"]),
        6,
        "{:#?}",
        relay.seen
    );
    fcm.wait_idle(PATIENCE).await;
}

//! ACME mode against a real CA (protocol.md §9): Debian's Pebble with real challenge
//! validation, certificates obtained by TLS-ALPN-01 and by HTTP-01, served to a TLS client
//! that trusts only Pebble's root; the cache reused across a restart with no new order; a
//! renewal of short-lived certificates under a live connection; the cache directory rules.
//!
//! Until the TLS listener is merged, the HTTPS side is a small tokio-rustls + hyper server
//! built exactly as the module docs of `listen::acme` tell the listener to build itself
//! (`acme_support`, with the clients and fixtures).

mod acme_support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use acme_support::*;
use relay_server::listen::acme::{self, AcmeBootError, CacheError, OrderOutcome, Tuning};
use relay_testkit::pebble::{Pebble, PebbleOptions};
use relay_testkit::scratch::Scratch;
use tokio::net::TcpListener;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// TLS-ALPN-01 and HTTP-01 against Pebble
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificate_from_pebble_serves_a_tls_client_trusting_pebbles_root() {
    let logs = capture_logs();
    let domain = "alpn.relay.example.com";
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_addr = https.local_addr().unwrap();
    // httpPort points nowhere: only TLS-ALPN-01 can succeed.
    let Some(pebble) = Pebble::start(PebbleOptions::new(closed_port(), https_addr.port())).await
    else {
        return;
    };
    let cache = Scratch::new("acme-alpn").unwrap();
    let mode = acme_mode(
        domain,
        &pebble,
        &cache.path().join("cache"),
        https_addr,
        None,
    );
    let acme = acme::prepare_with(&mode, fast_tuning()).expect("prepare");
    assert!(
        acme.http01.is_none(),
        "--http-listen \"\" means no responder"
    );
    assert_eq!(acme.resolver.current(), None);
    let mut updates = acme.resolver.subscribe();
    let server = TlsServer::start(https, &acme);
    let roots = pebble.issuer_roots().await;

    // §9: until the first certificate exists, TLS handshakes fail.
    assert!(
        tls_connect(https_addr, domain, &roots).await.is_err(),
        "no certificate yet, yet the handshake succeeded"
    );

    let manager = tokio::spawn(acme.manager.run());
    let info = first_certificate(&mut updates).await;

    let (status, body, serial) = get(https_addr, domain, &roots, "/hello").await;
    assert_eq!((status, body.as_str()), (200, "hello over TLS"));
    assert_eq!(
        serial, info.serial,
        "the client saw the certificate the resolver serves"
    );
    assert_eq!(acme.stats.orders(OrderOutcome::Issued), 1);
    assert_eq!(acme.stats.orders(OrderOutcome::Failed), 0);
    assert_eq!(
        acme.stats.expiry_unix_seconds(),
        unix(info.validity.not_after)
    );
    // Pebble validated by dialling our listener with ALPN acme-tls/1 (its HTTP-01 port is
    // closed), and issued the serial we serve.
    assert!(server.challenge_handshakes() >= 1);
    assert_eq!(
        pebble.count_log("set VALID by completed challenge"),
        1,
        "{}",
        pebble.log()
    );
    assert_eq!(
        pebble.count_log(&format!("Issued certificate serial {}", info.serial)),
        1,
        "{}",
        pebble.log()
    );

    // Another name, or no usable SNI, gets no certificate.
    assert!(tls_connect(https_addr, "other.example.com", &roots)
        .await
        .is_err());
    // ALPN acme-tls/1 alone with no challenge pending gets nothing either.
    assert!(tls_connect_alpn(https_addr, domain, &[b"acme-tls/1"])
        .await
        .is_err());

    // §9: key files and account credentials cached, 0600, in a 0700 directory.
    assert_eq!(mode_of(&mode.cert_cache), 0o700);
    let files = cache_files(&mode.cert_cache);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".json")), "{files:?}");
    assert!(files.iter().any(|f| f.starts_with(domain)), "{files:?}");
    for file in &files {
        assert_eq!(mode_of(&mode.cert_cache.join(file)), 0o600, "{file}");
    }

    let lines = logs.lines_about(domain);
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "ACME certificate issued for {domain} by tls-alpn-01: serial {}",
            info.serial
        ))),
        "{lines:#?}"
    );
    assert_no_key_in_logs(&logs);
    manager.abort();
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificate_from_pebble_when_tls_alpn01_cannot_be_validated() {
    let logs = capture_logs();
    let domain = "http.relay.example.com";
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_addr = https.local_addr().unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    // Pebble dials TLS-ALPN-01 on a closed port (as a firewall in front of :443 would make it)
    // and HTTP-01 on our --http-listen: the relay falls back to HTTP-01 at once.
    let Some(pebble) = Pebble::start(PebbleOptions::new(http_addr.port(), closed_port())).await
    else {
        return;
    };
    let cache = Scratch::new("acme-http").unwrap();
    let mode = acme_mode(
        domain,
        &pebble,
        &cache.path().join("cache"),
        https_addr,
        Some(http_addr),
    );
    let acme = acme::prepare_with(&mode, fast_tuning()).expect("prepare");
    let mut updates = acme.resolver.subscribe();
    let server = TlsServer::start(https, &acme);
    let (stop_http, stop_http_rx) = watch::channel(false);
    let http_task = tokio::spawn(
        acme.http01
            .clone()
            .expect("--http-listen on means a responder")
            .serve(http, stop_http_rx),
    );
    let roots = pebble.issuer_roots().await;

    let manager = tokio::spawn(acme.manager.run());
    let info = first_certificate(&mut updates).await;
    let (status, body, serial) = get(https_addr, domain, &roots, "/hello").await;
    assert_eq!((status, body.as_str()), (200, "hello over TLS"));
    assert_eq!(serial, info.serial);
    assert_eq!(acme.stats.orders(OrderOutcome::Failed), 1);
    assert_eq!(acme.stats.orders(OrderOutcome::Issued), 1);
    assert_eq!(
        server.challenge_handshakes(),
        0,
        "TLS-ALPN-01 went to the closed port"
    );
    assert_eq!(
        new_orders(&pebble),
        2,
        "one tls-alpn-01 order, one http-01 order"
    );

    // The failure was logged with the CA's error type, then the HTTP-01 issuance.
    let lines = logs.lines_about(domain);
    assert!(
        lines.iter().any(|l| l.contains(
            "tls-alpn-01 validation failed: the CA answered urn:ietf:params:acme:error:"
        )),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("ACME certificate issued for {domain} by http-01"))),
        "{lines:#?}"
    );

    // The HTTP listener answers nothing but challenges: no healthz, no redirect.
    for path in ["/healthz", "/", "/.well-known/acme-challenge/gone"] {
        let response = plain_get(http_addr, path).await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{path}: {response}"
        );
        assert!(
            !response.to_ascii_lowercase().contains("location:"),
            "{response}"
        );
    }
    assert_no_key_in_logs(&logs);
    stop_http.send_replace(true);
    let _ = http_task.await;
    manager.abort();
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_logs_the_cas_error_type_and_retries_after_backoff() {
    let logs = capture_logs();
    let domain = "fail.relay.example.com";
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_addr = https.local_addr().unwrap();
    // Both challenge ports closed: every validation fails.
    let Some(pebble) = Pebble::start(PebbleOptions::new(closed_port(), closed_port())).await else {
        return;
    };
    let cache = Scratch::new("acme-fail").unwrap();
    let mode = acme_mode(
        domain,
        &pebble,
        &cache.path().join("cache"),
        https_addr,
        None,
    );
    let base = Duration::from_secs(2);
    let tuning = Tuning {
        backoff: acme::schedule::Backoff {
            base,
            cap: Duration::from_secs(4),
        },
        ..fast_tuning()
    };
    let acme = acme::prepare_with(&mode, tuning).expect("prepare");
    let stats = acme.stats.clone();
    let server = TlsServer::start(https, &acme);
    let roots = pebble.issuer_roots().await;
    let manager = tokio::spawn(acme.manager.run());

    let first = failed_orders_reach(&stats, 1).await;
    let second = failed_orders_reach(&stats, 2).await;
    // Equal jitter: never sooner than half the first step.
    assert!(
        second - first >= base / 2 - Duration::from_millis(50),
        "{:?}",
        second - first
    );
    assert_eq!(stats.orders(OrderOutcome::Issued), 0);
    assert_eq!(stats.expiry_unix_seconds(), 0);
    // Still no certificate: handshakes fail, and the log says why.
    assert!(tls_connect(https_addr, domain, &roots).await.is_err());
    let lines = logs.lines_about(domain);
    let failures: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&format!("ACME order for {domain} failed; no certificate yet, so TLS handshakes fail; retrying in")))
        .collect();
    assert!(failures.len() >= 2, "{lines:#?}");
    assert!(
        failures.iter().all(|l| l.contains(
            "tls-alpn-01 validation failed: the CA answered urn:ietf:params:acme:error:"
        )),
        "{failures:#?}"
    );
    assert!(logs
        .text()
        .contains("TLS handshake refused: no certificate for fail.relay.example.com yet"));
    manager.abort();
    server.stop();
}

async fn failed_orders_reach(stats: &acme::AcmeStats, n: u64) -> std::time::Instant {
    // The counter moves in the manager task; poll it (10 ms) with a deadline.
    let deadline = std::time::Instant::now() + ISSUE_DEADLINE;
    while stats.orders(OrderOutcome::Failed) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} failed orders"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::time::Instant::now()
}

// ---------------------------------------------------------------------------------------
// Restart and renewal
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_cached_certificate_and_pebble_sees_no_new_order() {
    let logs = capture_logs();
    let domain = "restart.relay.example.com";
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_addr = https.local_addr().unwrap();
    let Some(pebble) = Pebble::start(PebbleOptions::new(closed_port(), https_addr.port())).await
    else {
        return;
    };
    let cache = Scratch::new("acme-restart").unwrap();
    let mode = acme_mode(
        domain,
        &pebble,
        &cache.path().join("cache"),
        https_addr,
        None,
    );
    let roots = pebble.issuer_roots().await;

    // First run: order, serve.
    let first = acme::prepare_with(&mode, fast_tuning()).expect("prepare");
    let mut updates = first.resolver.subscribe();
    let server = TlsServer::start(https, &first);
    let manager = tokio::spawn(first.manager.run());
    let issued = first_certificate(&mut updates).await;
    let (_, _, served) = get(https_addr, domain, &roots, "/hello").await;
    assert_eq!(served, issued.serial);
    manager.abort();
    let _ = manager.await;
    let https = server.stop_and_take_listener().await;
    let orders_before = new_orders(&pebble);
    let accounts_before = pebble.count_log("accounts in memory");
    assert!(orders_before >= 1, "{}", pebble.log());

    // Restart: the cached certificate is served from the first handshake, and the manager's
    // next attempt is its renewal time (years away with Pebble's default validity), not now.
    let second = acme::prepare_with(&mode, fast_tuning()).expect("prepare again");
    assert_eq!(second.resolver.current(), Some(issued.clone()));
    assert_eq!(
        second.stats.expiry_unix_seconds(),
        unix(issued.validity.not_after)
    );
    let next = second.manager.next_attempt(SystemTime::now());
    assert_eq!(next, issued.validity.renew_at());
    assert!(
        next > SystemTime::now() + Duration::from_secs(86_400),
        "{next:?}"
    );
    let stats = second.stats.clone();
    let server = TlsServer::start(https, &second);
    let manager = tokio::spawn(second.manager.run());
    let (status, body, served) = get(https_addr, domain, &roots, "/hello").await;
    assert_eq!((status, body.as_str()), (200, "hello over TLS"));
    assert_eq!(served, issued.serial, "same certificate after the restart");
    for outcome in OrderOutcome::ALL {
        assert_eq!(stats.orders(outcome), 0, "{outcome:?}");
    }
    assert!(
        logs.lines_about(domain).iter().any(|l| l.contains(&format!(
            "ACME: serving the cached certificate for {domain}: serial {}",
            issued.serial
        ))),
        "{:#?}",
        logs.lines_about(domain)
    );
    // Pebble saw no new order and no new account.
    assert_eq!(new_orders(&pebble), orders_before, "{}", pebble.log());
    assert_eq!(pebble.count_log("accounts in memory"), accounts_before);
    manager.abort();
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_of_a_short_lived_certificate_keeps_a_live_connection() {
    let logs = capture_logs();
    let domain = "renew.relay.example.com";
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_addr = https.local_addr().unwrap();
    let mut opts = PebbleOptions::new(closed_port(), https_addr.port());
    // Renewal at two thirds: 16 s after issuance.
    opts.validity = Some(Duration::from_secs(24));
    let Some(pebble) = Pebble::start(opts).await else {
        return;
    };
    let cache = Scratch::new("acme-renew").unwrap();
    let mode = acme_mode(
        domain,
        &pebble,
        &cache.path().join("cache"),
        https_addr,
        None,
    );
    let roots = pebble.issuer_roots().await;
    let acme = acme::prepare_with(&mode, fast_tuning()).expect("prepare");
    let mut updates = acme.resolver.subscribe();
    let server = TlsServer::start(https, &acme);
    let manager = tokio::spawn(acme.manager.run());
    let first = first_certificate(&mut updates).await;
    let lifetime = first
        .validity
        .not_after
        .duration_since(first.validity.not_before)
        .unwrap();
    assert!(lifetime <= Duration::from_secs(25), "{lifetime:?}");

    // A connection made on the first certificate, kept open across the renewal.
    let mut live = Http::connect(https_addr, domain, &roots).await;
    assert_eq!(live.serial, first.serial);
    assert_eq!(live.get("/hello").await, (200, "hello over TLS".into()));

    let renewed = tokio::time::timeout(lifetime + ISSUE_DEADLINE, async {
        loop {
            updates.changed().await.expect("resolver alive");
            let current = updates.borrow_and_update().clone();
            if let Some(info) = current.filter(|i| i.serial != first.serial) {
                return info;
            }
        }
    })
    .await
    .expect("renewed before the deadline");
    // Renewal started no earlier than two thirds into the lifetime.
    assert!(SystemTime::now() >= first.validity.renew_at());
    assert!(renewed.validity.not_after > first.validity.not_after);
    assert_eq!(acme.stats.orders(OrderOutcome::Renewed), 1);

    // The live connection still works, on the certificate it was made with.
    assert_eq!(live.get("/hello").await, (200, "hello over TLS".into()));
    assert_eq!(live.serial, first.serial);
    // A new connection gets the renewed certificate.
    let (_, _, serial) = get(https_addr, domain, &roots, "/hello").await;
    assert_eq!(serial, renewed.serial);
    assert!(
        logs.lines_about(domain).iter().any(|l| l.contains(&format!(
            "ACME certificate renewed for {domain} by tls-alpn-01: serial {}",
            renewed.serial
        ))),
        "{:#?}",
        logs.lines_about(domain)
    );
    manager.abort();
    server.stop();
}

// ---------------------------------------------------------------------------------------
// The cache directory rules (§9)
// ---------------------------------------------------------------------------------------

#[test]
fn the_cert_cache_is_created_0700() {
    let scratch = Scratch::new("cache-create").unwrap();
    let dir = scratch.path().join("a").join("cache");
    let acme = prepare_offline(&dir).expect("prepare");
    assert_eq!(mode_of(&dir), 0o700);
    assert_eq!(acme.resolver.current(), None);
}

#[test]
fn a_cert_cache_open_to_group_or_world_is_tightened_to_0700() {
    for loose in [0o755, 0o770, 0o707, 0o711] {
        let scratch = Scratch::new("cache-tighten").unwrap();
        let dir = scratch.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(loose)).unwrap();
        prepare_offline(&dir).expect("prepare");
        assert_eq!(mode_of(&dir), 0o700, "from {loose:o}");
    }
}

#[test]
fn a_cert_cache_owned_by_another_user_is_refused() {
    let scratch = Scratch::new("cache-foreign").unwrap();
    let dir = scratch.path().join("cache");
    if !make_foreign(&dir) {
        return;
    }
    let Err(err) = prepare_offline(&dir) else {
        panic!("accepted")
    };
    assert!(
        matches!(
            err,
            AcmeBootError::Cache(CacheError::ForeignOwner { owner: 65534, .. })
        ),
        "{err}"
    );
    let line = err.to_string();
    assert!(line.starts_with("--cert-cache "), "{line}");
    assert!(line.contains("owned by uid 65534"), "{line}");
    assert!(!line.contains('\n'));
    // Refused means untouched: the mode is not "fixed" either.
    assert_eq!(mode_of(&dir), 0o755);
}

/// Through the real binary: a boot error, exit 2, one line naming the cache, nothing bound.
#[test]
fn the_binary_refuses_a_foreign_cert_cache_with_exit_2() {
    let scratch = Scratch::new("cache-foreign-bin").unwrap();
    let dir = scratch.path().join("cache");
    if !make_foreign(&dir) {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"))
        .args(["--domain", "relay.example.com", "--http-listen", ""])
        .args(["--https-listen", "127.0.0.1:0", "--cert-cache"])
        .arg(&dir)
        .env_remove("PYRYCODE_RELAY_PRODUCTION")
        .output()
        .expect("run relay-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("relay-server: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("--cert-cache") && lines[0].contains("owned by uid 65534"),
        "{stderr}"
    );
}

#[test]
fn a_bad_acme_ca_root_is_a_boot_error() {
    let scratch = Scratch::new("bad-root").unwrap();
    let root = scratch.path().join("root.pem");
    std::fs::write(
        &root,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let mut mode = offline_mode(&scratch.path().join("cache"));
    mode.acme_ca_root = Some(root);
    let Err(err) = acme::prepare(&mode) else {
        panic!("accepted")
    };
    assert!(matches!(err, AcmeBootError::Roots(_)), "{err}");
    assert!(err.to_string().starts_with("--acme-ca-root "), "{err}");
}

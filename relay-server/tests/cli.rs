//! The real `relay-server` binary as an operator runs it (protocol.md §9, §10): boot errors,
//! `--version`/`--help`, environment variables, the startup line, signals, exit codes.
//!
//! Every child is killed when its handle drops, so a failing test leaves no relay behind.
//! Children run with an empty environment, so a `PYRYCODE_RELAY_*` variable of the calling
//! shell cannot change what a test sees.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use relay_testkit::tls::{self as ttls, test_certificate, TestCertificate};
use support::real::{hold_a_port, relay, round_trip, run_to_exit, Running, PATIENCE};

/// Every flag protocol.md names (§2–§10), in case the file is not beside the repository.
const CONTRACT_FLAGS: &[&str] = &[
    "--acme-ca-root",
    "--acme-directory",
    "--acme-email",
    "--cert-cache",
    "--cluster-advertise",
    "--cluster-lease",
    "--cluster-listen",
    "--cluster-redis",
    "--cluster-secret-file",
    "--conflict-probe-timeout",
    "--dev-tls",
    "--dev-tls-cert-out",
    "--domain",
    "--fcm-ca-root",
    "--fcm-credentials",
    "--fcm-endpoint",
    "--fcm-project-id",
    "--grace-period",
    "--handshake-timeout",
    "--header-read-timeout",
    "--heartbeat-interval",
    "--heartbeat-timeout",
    "--http-listen",
    "--https-listen",
    "--https-proxy-protocol",
    "--insecure-listen",
    "--ipv6-prefix-len",
    "--log-format",
    "--max-buffered-bytes",
    "--max-connections",
    "--max-connections-per-ip",
    "--max-message-size",
    "--message-read-timeout",
    "--metrics-listen",
    "--node-id",
    "--phone-outbox-bytes",
    "--phones-per-server",
    "--rate-limit-burst",
    "--rate-limit-per-minute",
    "--reclaim-policy",
    "--shutdown-timeout",
    "--tls-cert",
    "--tls-key",
    "--trust-x-forwarded-for",
    "--write-timeout",
];

/// §10: a boot error prints one clear line to stderr and exits 2 before binding anything.
/// `{held}` in `args` becomes the address of a port this test holds: a relay that bound
/// before validating would fail with exit 1 there instead.
fn assert_boot_error(args: &[&str], env: &[(&str, &str)], mentions: &[&str]) {
    let (_held, held_addr) = hold_a_port();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{held}", &held_addr))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_to_exit(relay(&args, env));
    assert_eq!(out.code, Some(2), "exit code for {args:?}: {out:?}");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr for {args:?}: {out:?}");
    assert!(
        lines[0].starts_with("relay-server: "),
        "the line says who is talking: {:?}",
        lines[0]
    );
    for m in mentions {
        assert!(lines[0].contains(m), "{:?} names {m:?}", lines[0]);
    }
    assert!(!out.stderr.contains("listening"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn unparsable_duration_is_a_boot_error_naming_the_flag() {
    assert_boot_error(
        &["--insecure-listen", "{held}", "--grace-period", "nope"],
        &[],
        &["--grace-period", "nope"],
    );
}

#[test]
fn unknown_reclaim_policy_is_a_boot_error_naming_the_flag() {
    assert_boot_error(
        &["--insecure-listen", "{held}", "--reclaim-policy", "bogus"],
        &[],
        &["--reclaim-policy", "bogus"],
    );
}

#[test]
fn bad_value_in_an_environment_variable_is_a_boot_error_naming_the_flag() {
    assert_boot_error(
        &["--insecure-listen", "{held}"],
        &[("PYRYCODE_RELAY_GRACE_PERIOD", "soon")],
        &["--grace-period"],
    );
}

#[test]
fn unknown_flag_is_a_boot_error() {
    assert_boot_error(
        &["--insecure-listen", "{held}", "--no-such-flag"],
        &[],
        &["--no-such-flag"],
    );
}

#[test]
fn insecure_listen_with_tls_cert_is_a_boot_error() {
    // §9: mixing modes.
    assert_boot_error(
        &["--insecure-listen", "{held}", "--tls-cert", "x"],
        &[],
        &["--insecure-listen", "--tls-cert"],
    );
}

/// A fresh directory for one test's files (left behind on failure, to look at).
fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-cli-{}", fresh_server_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `cert`'s PEM files into `dir`; returns (cert path, key path) as strings.
fn write_pair(dir: &std::path::Path, cert: &TestCertificate) -> (String, String) {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, &cert.cert_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[test]
fn tls_cert_file_that_cannot_be_read_is_a_boot_error() {
    // §10: exit 2, one line, before binding anything.
    let dir = scratch_dir();
    let (_, key) = write_pair(&dir, &test_certificate(&["localhost"]));
    let missing = dir.join("missing.pem").display().to_string();
    assert_boot_error(
        &[
            "--tls-cert",
            &missing,
            "--tls-key",
            &key,
            "--https-listen",
            "{held}",
        ],
        &[],
        &["--tls-cert", &missing, "cannot read"],
    );
    // Not PEM at all.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.display().to_string();
    assert_boot_error(
        &[
            "--tls-cert",
            &junk,
            "--tls-key",
            &key,
            "--https-listen",
            "{held}",
        ],
        &[],
        &["--tls-cert", "no PEM certificate"],
    );
    // A key file without a key.
    let (cert, _) = write_pair(&dir, &test_certificate(&["localhost"]));
    assert_boot_error(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &cert,
            "--https-listen",
            "{held}",
        ],
        &[],
        &["--tls-key", "no PEM private key"],
    );
}

#[test]
fn tls_key_of_another_certificate_is_a_boot_error() {
    let dir = scratch_dir();
    let (cert, _) = write_pair(&dir, &test_certificate(&["localhost"]));
    let other = dir.join("other-key.pem");
    std::fs::write(&other, test_certificate(&["localhost"]).key_pem).unwrap();
    let other = other.display().to_string();
    assert_boot_error(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &other,
            "--https-listen",
            "{held}",
        ],
        &[],
        &["--tls-key", "does not belong to the certificate"],
    );
}

#[test]
fn production_refuses_dev_tls() {
    // §9: --dev-tls is a development mode.
    assert_boot_error(
        &["--dev-tls", "--https-listen", "{held}"],
        &[("PYRYCODE_RELAY_PRODUCTION", "1")],
        &["PYRYCODE_RELAY_PRODUCTION", "development"],
    );
}

#[test]
fn production_refuses_development_mode() {
    // §9: PYRYCODE_RELAY_PRODUCTION=1 with no mode flag.
    assert_boot_error(
        &[],
        &[("PYRYCODE_RELAY_PRODUCTION", "1")],
        &["PYRYCODE_RELAY_PRODUCTION", "development"],
    );
}

#[test]
fn production_refuses_insecure_listen() {
    assert_boot_error(
        &["--insecure-listen", "{held}"],
        &[("PYRYCODE_RELAY_PRODUCTION", "1")],
        &["PYRYCODE_RELAY_PRODUCTION", "--insecure-listen"],
    );
}

#[test]
fn metrics_listen_on_a_non_loopback_address_is_a_boot_error() {
    // §10: the metrics address must be a loopback address.
    assert_boot_error(
        &[
            "--insecure-listen",
            "{held}",
            "--metrics-listen",
            "0.0.0.0:9090",
        ],
        &[],
        &["--metrics-listen", "loopback"],
    );
}

#[test]
fn version_prints_the_version_and_exits_0() {
    let out = run_to_exit(relay(&["--version"], &[]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("relay-server {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Every `--flag` protocol.md names, read from the contract when it is beside the repository.
fn contract_flags() -> Vec<String> {
    let mut flags: Vec<String> = CONTRACT_FLAGS.iter().map(|f| f.to_string()).collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/protocol.md");
    match std::fs::read_to_string(path) {
        Ok(text) => {
            for (i, _) in text.match_indices("--") {
                let name: String = text[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                    .collect();
                let flag = format!("--{name}");
                if name.starts_with(|c: char| c.is_ascii_lowercase())
                    && !["--help", "--version"].contains(&flag.as_str())
                    && !flags.contains(&flag)
                {
                    flags.push(flag);
                }
            }
        }
        Err(_) => println!("note: {path} not found; checking the built-in flag list only"),
    }
    flags
}

/// The help entry of `flag`: its line and the indented lines under it.
fn help_entry<'a>(help: &'a str, flag: &str) -> Option<Vec<&'a str>> {
    let mut lines = help.lines();
    lines.find(|l| {
        let t = l.trim_start();
        t == flag || t.starts_with(&format!("{flag} ")) || t.contains(&format!(", {flag}"))
    })?;
    // It ends at the next option line ("  -h, --help", "      --flag") or heading; the
    // deeper-indented "- value: ..." lines of possible values belong to it.
    let entry = lines
        .take_while(|l| {
            let t = l.trim_start();
            let indent = l.len() - t.len();
            t.is_empty() || (indent > 0 && !(indent <= 6 && t.starts_with('-')))
        })
        .collect();
    Some(entry)
}

#[test]
fn help_documents_every_contract_flag_with_its_default_and_env_var() {
    // §10: "--help documents every flag with its default"; every flag reads
    // PYRYCODE_RELAY_<FLAG_IN_UPPER_SNAKE>.
    let out = run_to_exit(relay(&["--help"], &[]));
    assert_eq!(out.code, Some(0), "{out:?}");
    for flag in contract_flags() {
        let entry = help_entry(&out.stdout, &flag)
            .unwrap_or_else(|| panic!("{flag} is missing from --help"))
            .join("\n");
        assert!(
            entry.contains("[default: "),
            "{flag} shows its default:\n{entry}"
        );
        let var = format!(
            "PYRYCODE_RELAY_{}",
            flag.trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase()
        );
        assert!(entry.contains(&var), "{flag} names {var}:\n{entry}");
    }
}

#[tokio::test]
async fn startup_line_names_the_bound_address_and_mode() {
    // §10: "listening addr=127.0.0.1:40123 mode=insecure", so :0 ports can be discovered.
    let mut relay = Running::spawn(&["--insecure-listen", "127.0.0.1:0"], &[]);
    let (addr, mode) = relay.listening();
    assert_eq!(mode, "insecure");
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the real port, not the requested :0");
    round_trip(addr).await;
}

#[tokio::test]
async fn flags_are_read_from_environment_variables() {
    // §10: every flag also reads PYRYCODE_RELAY_<FLAG_IN_UPPER_SNAKE>.
    let mut relay = Running::spawn(&[], &[("PYRYCODE_RELAY_INSECURE_LISTEN", "127.0.0.1:0")]);
    let (addr, mode) = relay.listening();
    assert_eq!(mode, "insecure");
    assert_ne!(addr.port(), 0);
    round_trip(addr).await;
}

async fn signal_drains_connections_and_exits_0(sig: &str) {
    // §10: on SIGTERM or SIGINT stop accepting, close every WebSocket with 1001 "shutting
    // down", wait at most --shutdown-timeout, exit 0.
    let shutdown_timeout = Duration::from_secs(3);
    let mut relay = Running::spawn(
        &[
            "--insecure-listen",
            "127.0.0.1:0",
            "--shutdown-timeout",
            "3s",
        ],
        &[],
    );
    let (addr, _) = relay.listening();
    let (mut binary, mut phone) = round_trip(addr).await;

    relay.signal(sig);
    let signalled = Instant::now();
    let (b, p) = tokio::join!(binary.expect_close(), phone.expect_close());
    let shutting_down = (1001, "shutting down".to_owned());
    assert_eq!(b.unwrap(), shutting_down, "binary");
    assert_eq!(p.unwrap(), shutting_down, "phone");
    assert_eq!(relay.exit_code(PATIENCE).await, Some(0));
    assert!(
        signalled.elapsed() <= shutdown_timeout,
        "exited {:?} after the signal",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn sigterm_closes_every_websocket_1001_and_exits_0() {
    signal_drains_connections_and_exits_0("TERM").await;
}

#[tokio::test]
async fn sigint_closes_every_websocket_1001_and_exits_0() {
    signal_drains_connections_and_exits_0("INT").await;
}

#[test]
fn address_in_use_exits_1() {
    // §10: failing to bind a listener exits 1 (not 2: the configuration was fine).
    let (_held, held_addr) = hold_a_port();
    let out = run_to_exit(relay(&["--insecure-listen", &held_addr], &[]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&held_addr),
        "names the address: {out:?}"
    );
}

#[tokio::test]
async fn no_flags_runs_development_mode_on_loopback_8080_and_says_so() {
    // §9: development mode is plain HTTP/WS on 127.0.0.1:8080, loopback only, says so at start.
    match TcpListener::bind("127.0.0.1:8080") {
        Ok(probe) => drop(probe),
        Err(e) => {
            println!("note: 127.0.0.1:8080 is busy ({e}); development-mode check skipped");
            return;
        }
    }
    let mut relay = Running::spawn(&[], &[]);
    let Some(line) = relay.line_with("listening addr=") else {
        println!(
            "note: relay-server could not take 127.0.0.1:8080 ({:?}); check skipped",
            relay.seen
        );
        return;
    };
    assert!(
        line.contains("listening addr=127.0.0.1:8080 mode=development"),
        "{line}"
    );
    assert!(
        relay.seen.iter().any(|l| l.contains("development mode")),
        "says so at start: {:?}",
        relay.seen
    );
    round_trip("127.0.0.1:8080".parse().unwrap()).await;
}

// ---- §9 TLS modes through the real binary ------------------------------------------------------

#[tokio::test]
async fn tls_mode_serves_wss_and_sighup_reloads_the_certificate_keeping_live_connections() {
    // §9: "On SIGHUP both files are re-read; new handshakes use the new pair, live connections
    // are untouched; a pair that fails to load is logged and the old one kept (no exit)."
    let dir = scratch_dir();
    let old = test_certificate(&["localhost", "127.0.0.1"]);
    let (cert, key) = write_pair(&dir, &old);
    let mut relay = Running::spawn(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--https-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let (addr, mode) = relay.listening();
    assert_eq!(mode, "tls");
    ttls::speak_tls(addr, std::slice::from_ref(&old.der));
    let (mut binary, mut phone) = round_trip(addr).await;

    let new = test_certificate(&["localhost", "127.0.0.1"]);
    write_pair(&dir, &new);
    relay.signal("HUP");
    relay
        .line_with("certificate reloaded")
        .expect("the reload is logged");
    // A new connection trusting only the new certificate is served; only the old one fails.
    ttls::speak_tls(addr, std::slice::from_ref(&new.der));
    round_trip(addr).await;
    ttls::speak_tls(addr, std::slice::from_ref(&old.der));
    assert!(FakeBinary::connect(addr, &fresh_server_id()).await.is_err());
    // The connection from before the reload still routes both ways.
    phone.send_text(r#"{"after":"sighup"}"#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    binary
        .send_to(&env.conn_id, r#""still here""#)
        .await
        .unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#""still here""#);

    // A broken pair: logged, the process keeps running with the current certificate.
    std::fs::write(
        dir.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    relay.signal("HUP");
    let line = relay
        .line_with("certificate reload failed")
        .expect("the failure is logged");
    assert!(line.contains("--tls-key"), "{line}");
    ttls::speak_tls(addr, std::slice::from_ref(&new.der));
    round_trip(addr).await;
    assert_eq!(relay.child.try_wait().unwrap(), None, "still running");
}

#[tokio::test]
async fn dev_tls_writes_its_certificate_logs_its_fingerprint_and_serves_wss() {
    // §9: rcgen certificate for localhost/127.0.0.1/::1, PEM at --dev-tls-cert-out,
    // fingerprint logged, loopback only.
    let dir = scratch_dir();
    let pem_path = dir.join("dev.pem");
    let mut relay = Running::spawn(
        &[
            "--dev-tls",
            "--https-listen",
            "127.0.0.1:0",
            "--dev-tls-cert-out",
            pem_path.to_str().unwrap(),
        ],
        &[],
    );
    let (addr, mode) = relay.listening();
    assert_eq!(mode, "dev-tls");
    let pem = std::fs::read(&pem_path).expect("the certificate was written");
    assert!(
        !String::from_utf8_lossy(&pem).contains("PRIVATE KEY"),
        "never the key"
    );
    let roots = ttls::roots_from_pem(&pem).unwrap();
    assert_eq!(roots.len(), 1);
    let fingerprint = relay_server::listen::dev::sha256_fingerprint(&roots[0]);
    let line = relay.line_with("SHA-256 fingerprint").expect("logged");
    assert!(line.contains(&fingerprint), "{line} names {fingerprint}");
    assert!(relay.seen.iter().any(|l| l.contains("not for production")));
    ttls::speak_tls(addr, &roots);
    round_trip(addr).await;
}

#[tokio::test]
async fn proxy_v2_source_address_is_the_remote_in_the_log() {
    // §9: "The PROXY source address is the client IP"; §10: logs carry it as remote=.
    let dir = scratch_dir();
    let cert = test_certificate(&["localhost", "127.0.0.1"]);
    let (c, k) = write_pair(&dir, &cert);
    let mut relay = Running::spawn(
        &[
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
            "--https-listen",
            "127.0.0.1:0",
            "--https-proxy-protocol",
        ],
        &[],
    );
    let (addr, _) = relay.listening();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let source: SocketAddr = "203.0.113.7:4242".parse().unwrap();
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&relay_testkit::raw::proxy_v2_header(source, addr))
        .await
        .unwrap();
    let target = ttls::TlsTarget {
        config: ttls::client_config(std::slice::from_ref(&cert.der)),
        server_name: rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    let stream = ttls::handshake(tcp, &target).await.unwrap();
    let sid = fresh_server_id();
    let _binary = FakeBinary::builder(addr, &sid)
        .connect_over(stream)
        .await
        .expect("upgrade through the PROXY header");
    let line = relay.line_with("binary connected").expect("logged");
    assert!(line.contains("remote=203.0.113.7:4242"), "{line}");
    // Without the header, nothing: the connection is closed with zero bytes.
    ttls::speak_tls(addr, std::slice::from_ref(&cert.der));
    assert!(FakeBinary::connect(addr, &fresh_server_id()).await.is_err());
}

/// HAProxy in front, killed on drop.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn behind_real_haproxy_send_proxy_v2_the_client_address_is_the_remote() {
    // §9 with the real component: HAProxy `mode tcp` + `send-proxy-v2` in front of the TLS
    // listener, as on a self-hosted box (Fly's proxy speaks the same header).
    let Some(haproxy) = relay_testkit::services::require("haproxy") else {
        return;
    };
    let dir = scratch_dir();
    let cert = test_certificate(&["localhost", "127.0.0.1"]);
    let (c, k) = write_pair(&dir, &cert);
    let mut relay = Running::spawn(
        &[
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
            "--https-listen",
            "127.0.0.1:0",
            "--https-proxy-protocol",
        ],
        &[],
    );
    let (relay_addr, _) = relay.listening();
    let front = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend wss\n  bind {front}\n  default_backend relay\n\
             backend relay\n  server relay {relay_addr} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let _haproxy = Haproxy(
        Command::new(haproxy)
            .args(["-db", "-f", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    let deadline = Instant::now() + PATIENCE;
    let tcp = loop {
        match tokio::net::TcpStream::connect(front).await {
            Ok(tcp) => break tcp,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("haproxy did not listen on {front}: {e}"),
        }
    };
    let client_addr = tcp.local_addr().unwrap();
    let target = ttls::TlsTarget {
        config: ttls::client_config(std::slice::from_ref(&cert.der)),
        server_name: rustls_pki_types::ServerName::IpAddress(front.ip().into()),
    };
    let stream = ttls::handshake(tcp, &target)
        .await
        .expect("TLS through haproxy");
    let _binary = FakeBinary::builder(front, &fresh_server_id())
        .connect_over(stream)
        .await
        .expect("upgrade through haproxy");
    let line = relay.line_with("binary connected").expect("logged");
    assert!(
        line.contains(&format!("remote={client_addr}")),
        "the client's own address {client_addr}, not haproxy's: {line}"
    );
}

/// §9 ACME mode through the real binary: a certificate from a real Pebble (TLS-ALPN-01 on the
/// HTTPS listener), a fake binary and phone over wss trusting only Pebble's root with the
/// domain as SNI and Host, then a restart that serves the cached certificate with no new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_mode_gets_a_certificate_from_pebble_and_serves_wss_across_a_restart() {
    use relay_testkit::pebble::{Pebble, PebbleOptions};
    let domain = "relay.example.com";
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (https_port, http_port) = (free(), free());
    let Some(pebble) = Pebble::start(PebbleOptions::new(http_port, https_port)).await else {
        return;
    };
    let cache = relay_testkit::scratch::Scratch::new("cli-acme").unwrap();
    let cache_dir = cache.path().join("cache");
    let https = format!("127.0.0.1:{https_port}");
    let http = format!("127.0.0.1:{http_port}");
    let args = [
        "--domain",
        domain,
        "--https-listen",
        &https,
        "--http-listen",
        &http,
        "--cert-cache",
        cache_dir.to_str().unwrap(),
        "--acme-directory",
        &pebble.directory_url,
        "--acme-ca-root",
        pebble.api_root.to_str().unwrap(),
    ];
    let mut relay = Running::spawn(&args, &[]);
    let line = relay.line_with("listening addr=").expect("listening");
    assert!(
        line.contains(&format!("addr={https},{http} mode=acme")),
        "{line}"
    );
    relay
        .line_with(&format!(
            "ACME certificate issued for {domain} by tls-alpn-01"
        ))
        .expect("issued");
    let roots = pebble.issuer_roots().await;
    let addr: SocketAddr = https.parse().unwrap();
    ttls::register(
        addr,
        ttls::TlsTarget {
            config: ttls::client_config(&roots),
            server_name: rustls_pki_types::ServerName::try_from(domain.to_owned()).unwrap(),
        },
    );
    let round_trip_as_domain = || async {
        let id = fresh_server_id();
        let mut binary = FakeBinary::builder(addr, &id)
            .host(domain)
            .connect()
            .await
            .expect("binary");
        let mut phone = FakePhone::builder(addr, &id)
            .host(domain)
            .connect()
            .await
            .expect("phone");
        phone.send_text(r#"{"hello": "binary"}"#).await.unwrap();
        let env = binary.recv_envelope().await.unwrap();
        assert_eq!(env.frame(), Some(r#"{"hello": "binary"}"#));
        binary
            .send_to(&env.conn_id, r#"{"hello":"phone"}"#)
            .await
            .unwrap();
        assert_eq!(phone.recv_text().await.unwrap(), r#"{"hello":"phone"}"#);
    };
    round_trip_as_domain().await;
    let orders = pebble.count_log("Added order");
    drop(relay);

    let mut relay = Running::spawn(&args, &[]);
    relay.line_with("listening addr=").expect("listening again");
    relay
        .line_with(&format!(
            "ACME: serving the cached certificate for {domain}"
        ))
        .expect("cached");
    round_trip_as_domain().await;
    assert_eq!(pebble.count_log("Added order"), orders, "{}", pebble.log());
    drop(relay);
}

//! The real `relay-server` binary as an operator runs it (protocol.md §9, §10): boot errors,
//! `--version`/`--help`, environment variables, the startup line, signals, exit codes.
//!
//! Every child is killed when its handle drops, so a failing test leaves no relay behind.
//! Children run with an empty environment, so a `PYRYCODE_RELAY_*` variable of the calling
//! shell cannot change what a test sees.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

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

#[test]
fn tls_mode_is_refused_while_not_implemented() {
    // Asking for TLS must never silently give plain HTTP.
    assert_boot_error(
        &[
            "--tls-cert",
            "x",
            "--tls-key",
            "y",
            "--https-listen",
            "{held}",
        ],
        &[],
        &["--tls-cert", "not implemented"],
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

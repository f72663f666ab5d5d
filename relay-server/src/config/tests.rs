//! Tests of the whole command line: the clap surface, defaults, the environment, production
//! refusals, and every subsystem's flags accepted. Each subsystem's own rules are tested in its file.

use std::time::Duration;

use clap::CommandFactory;

use super::testing::{err, help_entry, ok, parse_env, production, usage_err, v4};
use super::*;

// ---- the clap surface ----------------------------------------------------------------

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_flag_reads_pyrycode_relay_env_named_after_it() {
    let cmd = Cli::command();
    let mut seen = 0;
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let expected = format!("PYRYCODE_RELAY_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(
            arg.get_env().and_then(|env| env.to_str()),
            Some(expected.as_str()),
            "--{long}"
        );
        seen += 1;
    }
    assert_eq!(seen, 45, "protocol.md names 45 flags");
}

#[test]
fn help_documents_every_flag_with_its_default() {
    for (flag, default) in [
        ("--insecure-listen", "development mode on 127.0.0.1:8080"),
        ("--dev-tls", "[default: off]"),
        ("--dev-tls-cert-out", "[default: relay-dev-cert.pem]"),
        ("--https-listen", "[default: :443"),
        ("--http-listen", "[default: :80]"),
        ("--https-proxy-protocol", "[default: off]"),
        ("--acme-email", "[default: unset"),
        ("--trust-x-forwarded-for", "[default: off]"),
        ("--ipv6-prefix-len", "[default: 64]"),
        ("--handshake-timeout", "[default: 10s]"),
        ("--max-buffered-bytes", "[default: 1GiB]"),
        ("--metrics-listen", "[default: 127.0.0.1:9090]"),
        ("--log-format", "[default: text]"),
        ("--grace-period", "[default: 30s]"),
        ("--conflict-probe-timeout", "[default: 10s]"),
        ("--reclaim-policy", "[default: evict]"),
        ("--max-message-size", "[default: 256KiB]"),
        ("--message-read-timeout", "[default: 30s]"),
        ("--heartbeat-interval", "[default: 30s]"),
        ("--heartbeat-timeout", "[default: 30s]"),
        ("--phone-outbox-bytes", "[default: 4MiB]"),
        ("--write-timeout", "[default: 10s]"),
        ("--rate-limit-per-minute", "[default: 10]"),
        ("--rate-limit-burst", "[default: 20]"),
        ("--max-connections-per-ip", "[default: 64]"),
        ("--max-connections", "[default: 10000]"),
        ("--phones-per-server", "[default: 16]"),
        ("--header-read-timeout", "[default: 5s]"),
        ("--shutdown-timeout", "[default: 10s]"),
        ("--fcm-credentials", "[default: unset]"),
        ("--fcm-project-id", "[default: the key's project_id]"),
        ("--fcm-endpoint", "[default: https://fcm.googleapis.com]"),
        ("--cluster-redis", "[default: unset]"),
        ("--node-id", "[default: the hostname plus a random suffix]"),
        ("--cluster-advertise", "[default: the listen address]"),
        ("--cluster-lease", "[default: 10s]"),
    ] {
        let entry = help_entry(flag);
        assert!(
            entry.contains(default),
            "{flag} help lacks {default:?}:\n{entry}"
        );
        assert!(entry.contains("[env: PYRYCODE_RELAY_"), "{flag}:\n{entry}");
    }
}

#[test]
fn help_never_shows_the_value_of_a_secret_variable() {
    let shown = super::testing::with_env(
        &[
            (
                "PYRYCODE_RELAY_FCM_CREDENTIALS",
                "{\"private_key\":\"s3cret\"}",
            ),
            ("PYRYCODE_RELAY_CLUSTER_REDIS", "redis://:hunter2@r:6379"),
        ],
        || Cli::command().render_long_help().to_string(),
    );
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn help_and_version_exit_0_and_usage_errors_exit_2() {
    let help = usage_err(&["--help"]);
    assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    assert_eq!(help.exit_code(), 0);

    let version = usage_err(&["--version"]);
    assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
    assert_eq!(version.exit_code(), 0);
    assert!(version.to_string().contains(env!("CARGO_PKG_VERSION")));

    assert_eq!(usage_err(&["--no-such-flag"]).exit_code(), 2);
    assert_eq!(usage_err(&["--grace-period", "soon"]).exit_code(), 2);
}

// ---- defaults and the environment ----------------------------------------------------

#[test]
fn no_flags_gives_development_mode_and_documented_defaults() {
    let config = ok(&[]);
    assert_eq!(
        config.listen,
        ListenMode::Development(v4([127, 0, 0, 1], 8080))
    );
    assert_eq!(config.listen.name(), "development");
    assert_eq!(config.ops.metrics_listen, Some(v4([127, 0, 0, 1], 9090)));
    assert_eq!(config.ops.log_format, LogFormat::Text);
    assert_eq!(config.ops.shutdown_timeout, Duration::from_secs(10));
    let l = &config.lifecycle;
    assert_eq!(l.grace_period, Duration::from_secs(30));
    assert_eq!(l.conflict_probe_timeout, Duration::from_secs(10));
    assert_eq!(l.reclaim_policy, ReclaimPolicyArg::Evict);
    let f = &config.flow;
    assert_eq!(f.max_message_size, 256 * 1024);
    assert_eq!(f.message_read_timeout, Duration::from_secs(30));
    assert_eq!(f.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(f.heartbeat_timeout, Duration::from_secs(30));
    assert_eq!(f.phone_outbox_bytes, 4 * 1024 * 1024);
    assert_eq!(f.write_timeout, Duration::from_secs(10));
    let a = &config.admission;
    assert_eq!(a.rate_limit_per_minute, 10);
    assert_eq!(a.rate_limit_burst, 20);
    assert_eq!(a.max_connections_per_ip, 64);
    assert_eq!(a.ipv6_prefix_len, 64);
    assert!(!a.trust_x_forwarded_for);
    assert_eq!(a.max_connections, 10_000);
    assert_eq!(a.phones_per_server, 16);
    assert_eq!(a.header_read_timeout, Duration::from_secs(5));
    assert_eq!(a.handshake_timeout, Duration::from_secs(10));
    assert_eq!(a.max_buffered_bytes, 1 << 30);
    assert_eq!(config.push, None);
    assert_eq!(config.cluster, None);
}

#[test]
fn config_default_is_what_no_flags_gives() {
    assert_eq!(Config::default(), ok(&[]));
}

#[test]
fn env_vars_are_read_when_the_flag_is_absent() {
    let config = parse_env(
        &[],
        &[
            ("PYRYCODE_RELAY_INSECURE_LISTEN", ":9000"),
            ("PYRYCODE_RELAY_GRACE_PERIOD", "2m"),
            ("PYRYCODE_RELAY_RECLAIM_POLICY", "inherit"),
            ("PYRYCODE_RELAY_MAX_MESSAGE_SIZE", "1MiB"),
            ("PYRYCODE_RELAY_LOG_FORMAT", "json"),
            ("PYRYCODE_RELAY_PHONES_PER_SERVER", "3"),
            ("PYRYCODE_RELAY_MAX_CONNECTIONS", "500"),
            ("PYRYCODE_RELAY_HEADER_READ_TIMEOUT", "750ms"),
            ("PYRYCODE_RELAY_METRICS_LISTEN", ""),
            ("PYRYCODE_RELAY_TRUST_X_FORWARDED_FOR", "false"),
            ("PYRYCODE_RELAY_FCM_CREDENTIALS", ""),
            ("PYRYCODE_RELAY_CLUSTER_REDIS", ""),
        ],
        BootContext::default(),
    )
    .expect("valid environment");
    assert_eq!(config.listen, ListenMode::Insecure(v4([0, 0, 0, 0], 9000)));
    assert_eq!(config.lifecycle.grace_period, Duration::from_secs(120));
    assert_eq!(config.lifecycle.reclaim_policy, ReclaimPolicyArg::Inherit);
    assert_eq!(config.flow.max_message_size, 1 << 20);
    assert_eq!(config.ops.log_format, LogFormat::Json);
    assert_eq!(config.admission.phones_per_server, 3);
    assert_eq!(config.admission.max_connections, 500);
    assert_eq!(
        config.admission.header_read_timeout,
        Duration::from_millis(750)
    );
    assert_eq!(config.ops.metrics_listen, None);
    assert!(!config.admission.trust_x_forwarded_for);
    assert_eq!(config.push, None, "an empty key variable is no key");
    assert_eq!(config.cluster, None, "an empty Redis URL is no cluster");
}

#[test]
fn command_line_wins_over_env() {
    let config = parse_env(
        &["--grace-period", "5s", "--phones-per-server", "2"],
        &[
            ("PYRYCODE_RELAY_GRACE_PERIOD", "2m"),
            ("PYRYCODE_RELAY_PHONES_PER_SERVER", "3"),
        ],
        BootContext::default(),
    )
    .expect("valid");
    assert_eq!(config.lifecycle.grace_period, Duration::from_secs(5));
    assert_eq!(config.admission.phones_per_server, 2);
}

#[test]
fn bad_env_value_is_a_usage_error_naming_the_flag() {
    let result = parse_env(
        &[],
        &[("PYRYCODE_RELAY_WRITE_TIMEOUT", "10")],
        BootContext::default(),
    );
    let Err(BootError::Usage(err)) = result else {
        panic!("expected a clap error, got {result:?}");
    };
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("--write-timeout"), "{err}");
}

// ---- boot errors: values -------------------------------------------------------------

#[test]
fn zero_durations_are_refused() {
    for flag in [
        "--grace-period",
        "--conflict-probe-timeout",
        "--message-read-timeout",
        "--heartbeat-interval",
        "--heartbeat-timeout",
        "--write-timeout",
        "--header-read-timeout",
        "--handshake-timeout",
        "--shutdown-timeout",
        "--cluster-lease",
    ] {
        let err = err(&[flag, "0s"]);
        assert!(
            matches!(err, BootError::InvalidValue { flag: f, .. } if f == flag),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("{flag}: must be greater than zero")
        );
    }
}

#[test]
fn zero_sizes_and_caps_are_refused() {
    for flag in [
        "--max-message-size",
        "--phone-outbox-bytes",
        "--rate-limit-per-minute",
        "--rate-limit-burst",
        "--max-connections-per-ip",
        "--max-connections",
        "--phones-per-server",
        "--max-buffered-bytes",
    ] {
        let err = err(&[flag, "0"]);
        assert!(
            matches!(err, BootError::InvalidValue { flag: f, .. } if f == flag),
            "{flag}: {err}"
        );
    }
}

// ---- boot errors: production (§9) ----------------------------------------------------

#[test]
fn production_refuses_root() {
    let args = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
    let err = parse_env(&args, &[], production(true)).expect_err("refused");
    assert!(matches!(err, BootError::ProductionRoot), "{err}");
}

#[test]
fn root_without_production_is_allowed() {
    let ctx = BootContext {
        is_root: true,
        ..BootContext::default()
    };
    assert!(parse_env(&["--insecure-listen", ":8080"], &[], ctx).is_ok());
}

#[test]
fn production_variable_fails_closed() {
    let ctx = |value: Option<&str>| {
        BootContext::from_lookup(
            |name| {
                assert_eq!(name, PRODUCTION_ENV);
                value.map(str::to_owned)
            },
            false,
        )
        .production
    };
    for off in [
        None,
        Some(""),
        Some("0"),
        Some("false"),
        Some("No"),
        Some(" off "),
    ] {
        assert!(!ctx(off), "{off:?}");
    }
    for on in [Some("1"), Some("true"), Some("yes"), Some("flase")] {
        assert!(ctx(on), "{on:?}");
    }
}

#[test]
fn effective_uid_comes_from_the_second_uid_column() {
    let status = "Name:\trelay\nUid:\t1000\t0\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n";
    assert_eq!(effective_uid(status), Some(0));
    assert_eq!(effective_uid("Name:\trelay\n"), None);
}

// ---- every subsystem's flags are built ---------------------------------------------

/// Asserts `args` (and `env`) make a valid config.
fn accepted(args: &[&str], env: &[(&str, &str)]) -> Config {
    parse_env(args, env, BootContext::default())
        .unwrap_or_else(|e| panic!("{args:?} {env:?}: refused: {e}"))
}

#[test]
fn tls_modes_are_accepted_and_pass_the_production_refusals() {
    // §9: TLS with given files is a production mode; --dev-tls is a development mode.
    let args = [
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
        "--https-listen",
        ":8443",
    ];
    let config = parse_env(&args, &[], production(false)).expect("a production mode");
    assert!(matches!(
        config.listen,
        ListenMode::Tls {
            proxy_protocol: false,
            ..
        }
    ));
    let mut with_proxy = args.to_vec();
    with_proxy.push("--https-proxy-protocol");
    let config = parse_env(&with_proxy, &[], production(false)).expect("with PROXY v2");
    assert!(matches!(
        config.listen,
        ListenMode::Tls {
            proxy_protocol: true,
            ..
        }
    ));
    assert!(matches!(
        parse_env(&["--dev-tls"], &[], production(false)),
        Err(BootError::ProductionDevelopmentMode)
    ));
    assert!(matches!(
        parse_env(&args, &[], production(true)),
        Err(BootError::ProductionRoot)
    ));
}

#[test]
fn handshake_timeout_flows_into_the_config() {
    let config = ok(&["--handshake-timeout", "3s"]);
    assert_eq!(config.admission.handshake_timeout, Duration::from_secs(3));
    let opts = crate::RelayOptions::from(&config);
    assert_eq!(opts.handshake_timeout, Duration::from_secs(3));
    assert!(matches!(
        err(&["--handshake-timeout", "0s"]),
        BootError::InvalidValue {
            flag: "--handshake-timeout",
            ..
        }
    ));
}

#[test]
fn acme_mode_is_accepted() {
    let config = accepted(
        &["--domain", "relay.example.com", "--https-proxy-protocol"],
        &[],
    );
    assert!(matches!(config.listen, ListenMode::Acme(_)));
}

#[test]
fn explicit_metrics_listen_is_honoured() {
    assert_eq!(
        ok(&["--metrics-listen", "127.0.0.1:9091"])
            .ops
            .metrics_listen,
        Some(v4([127, 0, 0, 1], 9091))
    );
    // Also through the environment.
    assert_eq!(
        accepted(&[], &[("PYRYCODE_RELAY_METRICS_LISTEN", "127.0.0.1:9092")])
            .ops
            .metrics_listen,
        Some(v4([127, 0, 0, 1], 9092))
    );
}

#[test]
fn admission_flags_are_accepted_from_flags_and_the_environment() {
    for args in [
        &["--rate-limit-per-minute", "10"][..],
        &["--rate-limit-burst", "5"][..],
        &["--max-connections-per-ip", "8"][..],
        &["--ipv6-prefix-len", "56"][..],
        &["--trust-x-forwarded-for"][..],
        &["--max-buffered-bytes", "64MiB"][..],
    ] {
        accepted(args, &[]);
    }
    assert_eq!(
        accepted(&[], &[("PYRYCODE_RELAY_RATE_LIMIT_BURST", "5")])
            .admission
            .rate_limit_burst,
        5
    );
    assert!(
        accepted(&[], &[("PYRYCODE_RELAY_TRUST_X_FORWARDED_FOR", "1")])
            .admission
            .trust_x_forwarded_for
    );
}

#[test]
fn push_flags_are_accepted() {
    // §4.4: push wake is built; the key itself is read and checked by push::PushSettings at
    // boot (main), not here.
    let config = ok(&["--fcm-credentials", "key.json"]);
    assert_eq!(
        config.push,
        Some(Push {
            credentials: FcmCredentials::File("key.json".into()),
            project_id: None,
            endpoint: FCM_ENDPOINT.to_owned(),
            ca_root: None,
        })
    );
    let config = parse_env(
        &[
            "--fcm-project-id",
            "my-project-1",
            "--fcm-endpoint",
            "https://127.0.0.1:4443",
            "--fcm-ca-root",
            "ca.pem",
        ],
        &[("PYRYCODE_RELAY_FCM_CREDENTIALS", "{}")],
        BootContext::default(),
    )
    .expect("push flags with a key");
    assert_eq!(
        config.push,
        Some(Push {
            credentials: FcmCredentials::Inline("{}".into()),
            project_id: Some("my-project-1".into()),
            endpoint: "https://127.0.0.1:4443".into(),
            ca_root: Some("ca.pem".into()),
        })
    );
}

#[test]
fn implemented_admission_flags_are_accepted() {
    let config = ok(&[
        "--max-connections",
        "3",
        "--header-read-timeout",
        "250ms",
        "--phones-per-server",
        "1",
    ]);
    assert_eq!(config.admission.max_connections, 3);
    assert_eq!(
        config.admission.header_read_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(config.admission.phones_per_server, 1);
}

#[test]
fn cluster_flags_are_accepted_and_reach_the_config() {
    let config = ok(&[
        "--cluster-redis",
        "redis://127.0.0.1:6379",
        "--cluster-listen",
        "127.0.0.1:7000",
        "--cluster-secret-file",
        "/run/secret",
        "--node-id",
        "relay-a",
        "--cluster-lease",
        "3s",
    ]);
    let cluster = config.cluster.expect("cluster mode on");
    assert_eq!(cluster.node_id, "relay-a");
    assert_eq!(cluster.listen, v4([127, 0, 0, 1], 7000));
    assert_eq!(cluster.advertise, "127.0.0.1:7000");
    assert_eq!(cluster.lease, Duration::from_secs(3));
}

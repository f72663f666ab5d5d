//! Listener flags and the one listener mode they select (protocol.md §9).
//!
//! Owns refusing mixes of modes and flags a mode would silently ignore. Reads no files: the
//! certificate files and the cache directory are checked when the listener is built.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

use super::parse::{all_interfaces, parse_listen_addr, parse_optional_listen_addr, OptionalAddr};
use super::{invalid, BootError};

/// Where development mode listens: loopback only, so a forgotten dev relay is not reachable.
pub const DEVELOPMENT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// Where `--dev-tls` listens unless `--https-listen` moves it (loopback only).
pub const DEV_TLS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);

/// Where `--dev-tls` writes its certificate unless `--dev-tls-cert-out` says otherwise.
pub const DEV_TLS_CERT_OUT: &str = "relay-dev-cert.pem";

/// Let's Encrypt production, the documented ACME default (§9).
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listeners")]
pub struct ListenArgs {
    /// Plain HTTP/WS on ADDR, for use behind a TLS-terminating proxy (`:PORT` = all IPv4
    /// interfaces). [default: unset; no listener flag = development mode on 127.0.0.1:8080]
    #[arg(long, env = "PYRYCODE_RELAY_INSECURE_LISTEN", value_name = "ADDR",
          value_parser = parse_listen_addr)]
    pub insecure_listen: Option<SocketAddr>,

    /// Development over TLS: wss on 127.0.0.1:8443 with a certificate made at boot for
    /// localhost, 127.0.0.1 and ::1. [default: off]
    #[arg(long, env = "PYRYCODE_RELAY_DEV_TLS",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub dev_tls: bool,

    /// --dev-tls: where to write the generated certificate (PEM) for clients to trust.
    /// [default: relay-dev-cert.pem]
    #[arg(long, env = "PYRYCODE_RELAY_DEV_TLS_CERT_OUT", value_name = "FILE")]
    pub dev_tls_cert_out: Option<PathBuf>,

    /// PEM certificate chain for TLS mode; requires --tls-key. [default: unset]
    #[arg(long, env = "PYRYCODE_RELAY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for TLS mode; requires --tls-cert.
    /// [default: unset]
    #[arg(long, env = "PYRYCODE_RELAY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// TLS listener address in TLS and ACME modes (loopback only with --dev-tls).
    /// [default: :443; 127.0.0.1:8443 with --dev-tls]
    #[arg(long, env = "PYRYCODE_RELAY_HTTPS_LISTEN", value_name = "ADDR",
          value_parser = parse_listen_addr)]
    pub https_listen: Option<SocketAddr>,

    /// Get certificates for NAME from ACME (ACME mode). [default: unset]
    #[arg(long, env = "PYRYCODE_RELAY_DOMAIN", value_name = "NAME")]
    pub domain: Option<String>,

    /// ACME mode: plain HTTP listener that answers only HTTP-01 challenges; empty turns it
    /// off. [default: :80]
    #[arg(long, env = "PYRYCODE_RELAY_HTTP_LISTEN", value_name = "ADDR",
          value_parser = parse_optional_listen_addr)]
    pub http_listen: Option<OptionalAddr>,

    /// ACME mode: directory for account keys and certificates, kept at 0700.
    /// [default: acme-cache]
    #[arg(long, env = "PYRYCODE_RELAY_CERT_CACHE", value_name = "DIR")]
    pub cert_cache: Option<PathBuf>,

    /// ACME mode: directory URL of the CA (e.g. Pebble).
    /// [default: https://acme-v02.api.letsencrypt.org/directory]
    #[arg(long, env = "PYRYCODE_RELAY_ACME_DIRECTORY", value_name = "URL")]
    pub acme_directory: Option<String>,

    /// ACME mode: PEM root certificate to trust for the ACME directory. [default: system roots]
    #[arg(long, env = "PYRYCODE_RELAY_ACME_CA_ROOT", value_name = "FILE")]
    pub acme_ca_root: Option<PathBuf>,

    /// ACME mode: contact address for the ACME account. [default: unset (no contact)]
    #[arg(long, env = "PYRYCODE_RELAY_ACME_EMAIL", value_name = "EMAIL")]
    pub acme_email: Option<String>,

    /// Require a PROXY v2 header on every TLS connection. [default: off]
    #[arg(long, env = "PYRYCODE_RELAY_HTTPS_PROXY_PROTOCOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub https_proxy_protocol: bool,
}

/// Which listener(s) to run (§9). Exactly one mode; illegal mixes never get this far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenMode {
    /// No listener flag: plain HTTP/WS on [`DEVELOPMENT_ADDR`].
    Development(SocketAddr),
    /// `--dev-tls`: wss on loopback with a certificate generated at boot.
    DevTls {
        https_listen: SocketAddr,
        cert_out: PathBuf,
    },
    /// `--insecure-listen`: plain HTTP/WS behind a TLS-terminating proxy.
    Insecure(SocketAddr),
    /// `--tls-cert` + `--tls-key`.
    Tls {
        cert: PathBuf,
        key: PathBuf,
        https_listen: SocketAddr,
        /// `--https-proxy-protocol`.
        proxy_protocol: bool,
    },
    /// `--domain`: certificates from ACME.
    Acme(AcmeMode),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeMode {
    /// Lowercase, without a trailing dot; compared case-insensitively with Host (421).
    pub domain: String,
    pub https_listen: SocketAddr,
    /// `None` = `--http-listen ""`: TLS-ALPN-01 only.
    pub http_listen: Option<SocketAddr>,
    pub cert_cache: PathBuf,
    pub acme_directory: String,
    pub acme_ca_root: Option<PathBuf>,
    pub acme_email: Option<String>,
    /// `--https-proxy-protocol`.
    pub proxy_protocol: bool,
}

impl ListenMode {
    /// The `mode=` value of the startup line (§10).
    pub fn name(&self) -> &'static str {
        match self {
            ListenMode::Development(_) => "development",
            ListenMode::DevTls { .. } => "dev-tls",
            ListenMode::Insecure(_) => "insecure",
            ListenMode::Tls { .. } => "tls",
            ListenMode::Acme(_) => "acme",
        }
    }

    /// The development modes, which `PYRYCODE_RELAY_PRODUCTION` refuses (§9).
    pub fn is_development(&self) -> bool {
        matches!(self, ListenMode::Development(_) | ListenMode::DevTls { .. })
    }
}

/// Resolves the one listener mode (§9), refusing mixes and flags the mode would ignore.
pub fn listen_mode(cli: &ListenArgs) -> Result<ListenMode, BootError> {
    let tls_flag = match (&cli.tls_cert, &cli.tls_key) {
        (Some(_), _) => Some("--tls-cert"),
        (None, Some(_)) => Some("--tls-key"),
        (None, None) => None,
    };
    // Mode flags in a fixed order: the first two given name the conflict.
    let modes = [
        ("--insecure-listen", cli.insecure_listen.is_some()),
        ("--dev-tls", cli.dev_tls),
        (tls_flag.unwrap_or("--tls-cert"), tls_flag.is_some()),
        ("--domain", cli.domain.is_some()),
    ];
    let mut given = modes.iter().filter(|(_, set)| *set).map(|(flag, _)| *flag);
    if let (Some(first), Some(second)) = (given.next(), given.next()) {
        return Err(BootError::ConflictingModes { first, second });
    }

    const TLS_MODES: &str = "with --tls-cert/--tls-key or --domain";
    const HTTPS_MODES: &str = "with --tls-cert/--tls-key, --domain or --dev-tls";
    const ACME_MODE: &str = "with --domain";
    let not_applicable = |flag, applies| Err(BootError::NotApplicable { flag, applies });
    if cli.dev_tls_cert_out.is_some() && !cli.dev_tls {
        return not_applicable("--dev-tls-cert-out", "with --dev-tls");
    }

    if let Some(addr) = cli.insecure_listen {
        // Extra listeners or PROXY parsing would be silently ignored in plain mode.
        if cli.https_listen.is_some() {
            return not_applicable("--https-listen", HTTPS_MODES);
        }
        if cli.https_proxy_protocol {
            return not_applicable("--https-proxy-protocol", TLS_MODES);
        }
        reject_acme_only_flags(cli, ACME_MODE)?;
        return Ok(ListenMode::Insecure(addr));
    }

    if cli.dev_tls {
        if cli.https_proxy_protocol {
            return not_applicable("--https-proxy-protocol", TLS_MODES);
        }
        reject_acme_only_flags(cli, ACME_MODE)?;
        let https_listen = cli.https_listen.unwrap_or(DEV_TLS_ADDR);
        if !https_listen.ip().to_canonical().is_loopback() {
            return Err(invalid(
                "--https-listen",
                "--dev-tls listens on loopback only (use 127.0.0.1 or [::1])",
            ));
        }
        return Ok(ListenMode::DevTls {
            https_listen,
            cert_out: cli
                .dev_tls_cert_out
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEV_TLS_CERT_OUT)),
        });
    }

    if let Some(domain) = &cli.domain {
        let acme_email = match &cli.acme_email {
            Some(email) => Some(validate_email(email)?),
            None => None,
        };
        return Ok(ListenMode::Acme(AcmeMode {
            domain: validate_domain(domain)?,
            https_listen: cli.https_listen.unwrap_or(all_interfaces(443)),
            http_listen: match cli.http_listen {
                Some(OptionalAddr(addr)) => addr,
                None => Some(all_interfaces(80)),
            },
            cert_cache: cli
                .cert_cache
                .clone()
                .unwrap_or_else(|| PathBuf::from("acme-cache")),
            acme_directory: validate_acme_directory(cli.acme_directory.as_deref())?,
            acme_ca_root: cli.acme_ca_root.clone(),
            acme_email,
            proxy_protocol: cli.https_proxy_protocol,
        }));
    }

    match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            reject_acme_only_flags(cli, ACME_MODE)?;
            Ok(ListenMode::Tls {
                cert: cert.clone(),
                key: key.clone(),
                https_listen: cli.https_listen.unwrap_or(all_interfaces(443)),
                proxy_protocol: cli.https_proxy_protocol,
            })
        }
        (Some(_), None) => Err(BootError::MissingCompanion {
            flag: "--tls-cert",
            needs: "--tls-key",
        }),
        (None, Some(_)) => Err(BootError::MissingCompanion {
            flag: "--tls-key",
            needs: "--tls-cert",
        }),
        (None, None) => {
            if cli.https_listen.is_some() {
                return not_applicable("--https-listen", HTTPS_MODES);
            }
            if cli.https_proxy_protocol {
                return not_applicable("--https-proxy-protocol", TLS_MODES);
            }
            reject_acme_only_flags(cli, ACME_MODE)?;
            Ok(ListenMode::Development(DEVELOPMENT_ADDR))
        }
    }
}

fn reject_acme_only_flags(cli: &ListenArgs, applies: &'static str) -> Result<(), BootError> {
    let given = [
        ("--http-listen", cli.http_listen.is_some()),
        ("--cert-cache", cli.cert_cache.is_some()),
        ("--acme-directory", cli.acme_directory.is_some()),
        ("--acme-ca-root", cli.acme_ca_root.is_some()),
        ("--acme-email", cli.acme_email.is_some()),
    ];
    match given.into_iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(BootError::NotApplicable { flag, applies }),
        None => Ok(()),
    }
}

/// A DNS name as ACME and the Host check (§9) will see it: lowercase, no trailing dot.
pub fn validate_domain(raw: &str) -> Result<String, BootError> {
    let domain = raw.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(invalid(
            "--domain",
            "expected a DNS name such as relay.example.com (no scheme, port or path)",
        ));
    }
    Ok(domain)
}

fn validate_acme_directory(raw: Option<&str>) -> Result<String, BootError> {
    let Some(url) = raw else {
        return Ok(LETS_ENCRYPT_DIRECTORY.to_owned());
    };
    // RFC 8555 requires HTTPS; an http:// URL is almost certainly a typo.
    if url.len() <= "https://".len() || !url.starts_with("https://") {
        return Err(invalid("--acme-directory", "expected an https:// URL"));
    }
    Ok(url.to_owned())
}

/// An ACME contact goes into a `mailto:` URI: one `@`, no spaces, no URI delimiters.
fn validate_email(raw: &str) -> Result<String, BootError> {
    let raw = raw.trim();
    let ok = raw.split('@').count() == 2
        && !raw.starts_with('@')
        && !raw.ends_with('@')
        && raw
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'?' | b'&' | b'<' | b'>'));
    if !ok {
        return Err(invalid(
            "--acme-email",
            "expected an address such as ops@example.com",
        ));
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{err, ok, parse_env, production, usage_err, v4};
    use crate::config::BootContext;
    use std::net::Ipv6Addr;

    #[test]
    fn port_only_addresses_mean_all_ipv4_interfaces() {
        let config = ok(&["--insecure-listen", ":443"]);
        assert_eq!(config.listen, ListenMode::Insecure(v4([0, 0, 0, 0], 443)));
        assert_eq!(config.listen.name(), "insecure");
    }

    #[test]
    fn full_addresses_and_ipv6_are_accepted() {
        assert_eq!(
            ok(&["--insecure-listen", "127.0.0.1:0"]).listen,
            ListenMode::Insecure(v4([127, 0, 0, 1], 0))
        );
        assert_eq!(
            ok(&["--insecure-listen", "[::1]:0"]).listen,
            ListenMode::Insecure(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0))
        );
    }

    #[test]
    fn insecure_listen_cannot_be_mixed_with_tls_dev_tls_or_acme() {
        for (extra, second) in [
            (
                &["--tls-cert", "c.pem", "--tls-key", "k.pem"][..],
                "--tls-cert",
            ),
            (&["--tls-key", "k.pem"][..], "--tls-key"),
            (&["--domain", "relay.example.com"][..], "--domain"),
            (&["--dev-tls"][..], "--dev-tls"),
        ] {
            let mut args = vec!["--insecure-listen", ":8080"];
            args.extend_from_slice(extra);
            let err = err(&args);
            assert!(
                matches!(err, BootError::ConflictingModes { first: "--insecure-listen", second: s } if s == second),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn tls_files_cannot_be_mixed_with_acme_or_dev_tls() {
        let err1 = err(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--domain",
            "relay.example.com",
        ]);
        assert!(matches!(
            err1,
            BootError::ConflictingModes {
                first: "--tls-cert",
                second: "--domain"
            }
        ));
        assert_eq!(
            err1.to_string(),
            "--tls-cert cannot be combined with --domain: choose one listener mode"
        );
        let err2 = err(&["--dev-tls", "--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        assert!(
            matches!(
                err2,
                BootError::ConflictingModes {
                    first: "--dev-tls",
                    second: "--tls-cert"
                }
            ),
            "{err2}"
        );
        let err3 = err(&["--dev-tls", "--domain", "relay.example.com"]);
        assert!(matches!(err3, BootError::ConflictingModes { .. }), "{err3}");
    }

    #[test]
    fn tls_cert_and_key_come_in_pairs() {
        let err_cert = err(&["--tls-cert", "c.pem"]);
        assert!(matches!(
            err_cert,
            BootError::MissingCompanion {
                flag: "--tls-cert",
                needs: "--tls-key"
            }
        ));
        assert_eq!(err_cert.to_string(), "--tls-cert requires --tls-key");
        let err_key = err(&["--tls-key", "k.pem"]);
        assert!(matches!(
            err_key,
            BootError::MissingCompanion {
                flag: "--tls-key",
                needs: "--tls-cert"
            }
        ));
    }

    #[test]
    fn tls_listener_flags_are_refused_with_insecure_listen_or_in_development() {
        for base in [&["--insecure-listen", ":8080"][..], &[][..]] {
            for (extra, flag) in [
                (&["--https-listen", ":443"][..], "--https-listen"),
                (&["--https-proxy-protocol"][..], "--https-proxy-protocol"),
                (&["--http-listen", ":80"][..], "--http-listen"),
                (&["--http-listen", ""][..], "--http-listen"),
                (&["--cert-cache", "/var/lib/relay"][..], "--cert-cache"),
                (
                    &["--acme-directory", "https://localhost:14000/dir"][..],
                    "--acme-directory",
                ),
                (&["--acme-ca-root", "pebble.pem"][..], "--acme-ca-root"),
                (&["--acme-email", "ops@example.com"][..], "--acme-email"),
                (&["--dev-tls-cert-out", "c.pem"][..], "--dev-tls-cert-out"),
            ] {
                let args: Vec<&str> = base.iter().chain(extra).copied().collect();
                let err = err(&args);
                assert!(
                    matches!(err, BootError::NotApplicable { flag: f, .. } if f == flag),
                    "{args:?}: {err}"
                );
                assert!(err.to_string().starts_with(flag), "{err}");
            }
        }
    }

    #[test]
    fn acme_only_flags_are_refused_in_tls_file_and_dev_tls_modes() {
        let err1 = err(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--http-listen",
            ":80",
        ]);
        assert_eq!(err1.to_string(), "--http-listen only applies with --domain");
        let err2 = err(&["--dev-tls", "--cert-cache", "/tmp/x"]);
        assert_eq!(err2.to_string(), "--cert-cache only applies with --domain");
        let err3 = err(&["--dev-tls", "--https-proxy-protocol"]);
        assert!(
            matches!(
                err3,
                BootError::NotApplicable {
                    flag: "--https-proxy-protocol",
                    ..
                }
            ),
            "{err3}"
        );
    }

    #[test]
    fn dev_tls_listens_on_loopback_8443_and_writes_its_certificate() {
        let parsed = crate::config::listen::listen_mode(&cli(&["--dev-tls"])).unwrap();
        assert_eq!(
            parsed,
            ListenMode::DevTls {
                https_listen: v4([127, 0, 0, 1], 8443),
                cert_out: PathBuf::from("relay-dev-cert.pem"),
            }
        );
        assert_eq!(parsed.name(), "dev-tls");
        let moved = listen_mode(&cli(&[
            "--dev-tls",
            "--https-listen",
            "[::1]:9443",
            "--dev-tls-cert-out",
            "/tmp/dev.pem",
        ]))
        .unwrap();
        assert!(
            matches!(moved, ListenMode::DevTls { https_listen, .. } if https_listen.port() == 9443)
        );
        let err = listen_mode(&cli(&["--dev-tls", "--https-listen", ":8443"])).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::InvalidValue {
                    flag: "--https-listen",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn acme_defaults_and_http_listen_off() {
        let mode = listen_mode(&cli(&["--domain", "Relay.Example.com"])).unwrap();
        let ListenMode::Acme(acme) = mode else {
            panic!("{mode:?}")
        };
        assert_eq!(acme.domain, "relay.example.com");
        assert_eq!(acme.https_listen, v4([0, 0, 0, 0], 443));
        assert_eq!(acme.http_listen, Some(v4([0, 0, 0, 0], 80)));
        assert_eq!(acme.cert_cache, PathBuf::from("acme-cache"));
        assert_eq!(acme.acme_directory, LETS_ENCRYPT_DIRECTORY);
        assert_eq!(acme.acme_email, None);
        let off = listen_mode(&cli(&[
            "--domain",
            "relay.example.com",
            "--http-listen",
            "",
            "--acme-email",
            "ops@example.com",
        ]))
        .unwrap();
        let ListenMode::Acme(off) = off else {
            panic!("{off:?}")
        };
        assert_eq!(off.http_listen, None);
        assert_eq!(off.acme_email.as_deref(), Some("ops@example.com"));
    }

    #[test]
    fn proxy_protocol_env_false_is_not_a_request() {
        let config = parse_env(
            &[],
            &[("PYRYCODE_RELAY_HTTPS_PROXY_PROTOCOL", "0")],
            BootContext::default(),
        )
        .expect("false is no request");
        assert_eq!(config.listen, ListenMode::Development(DEVELOPMENT_ADDR));
    }

    #[test]
    fn bad_domain_acme_directory_and_email_are_refused() {
        assert!(validate_domain("relay.example.com").is_ok());
        assert_eq!(
            validate_domain("Relay.Example.COM.").ok().as_deref(),
            Some("relay.example.com")
        );
        for bad in [
            "",
            "https://relay.example.com",
            "relay.example.com:443",
            "-a.com",
            "a..com",
            "a b",
        ] {
            assert!(validate_domain(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            err(&["--domain", "relay.example.com/path"]),
            BootError::InvalidValue {
                flag: "--domain",
                ..
            }
        ));
        assert!(matches!(
            err(&[
                "--domain",
                "relay.example.com",
                "--acme-directory",
                "http://ca.example/dir"
            ]),
            BootError::InvalidValue {
                flag: "--acme-directory",
                ..
            }
        ));
        for bad in [
            "ops",
            "@example.com",
            "a@b@c",
            "ops@",
            "o ps@example.com",
            "a@b,c@d",
        ] {
            assert!(validate_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn production_refuses_both_development_modes() {
        for args in [&[][..], &["--dev-tls"][..]] {
            let err = parse_env(args, &[], production(false)).expect_err("refused");
            assert!(
                matches!(err, BootError::ProductionDevelopmentMode),
                "{args:?}: {err}"
            );
            assert!(err
                .to_string()
                .starts_with("PYRYCODE_RELAY_PRODUCTION refuses development mode"));
        }
    }

    #[test]
    fn production_refuses_insecure_listen() {
        let err = parse_env(&["--insecure-listen", ":8080"], &[], production(false))
            .expect_err("refused");
        assert!(matches!(err, BootError::ProductionInsecureListen));
        assert!(err.to_string().contains("--insecure-listen"));
    }

    #[test]
    fn bad_listen_address_is_a_usage_error() {
        assert_eq!(usage_err(&["--https-listen", "nope"]).exit_code(), 2);
    }

    fn cli(args: &[&str]) -> ListenArgs {
        crate::config::testing::cli(args).listen
    }
}

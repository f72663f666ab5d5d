//! Command line, environment and boot-time validation (protocol.md §9, §10).
//!
//! Owns turning `argv` + `PYRYCODE_RELAY_*` into one validated [`Config`] of plain typed values,
//! or into one [`BootError`] line that names the offending flag. It never binds, opens or reads
//! anything besides the environment: every refusal happens before a socket exists, which is
//! what lets `main` exit 2 "before binding anything".
//!
//! Flags for subsystems this build does not have yet (TLS, ACME, metrics, rate limits) are
//! parsed and validated like the rest, then refused by [`Feature::built`]: an operator who asks
//! for TLS must not silently get plain HTTP.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

/// The environment variable that turns on the production refusals of §9.
pub const PRODUCTION_ENV: &str = "PYRYCODE_RELAY_PRODUCTION";

/// Where development mode listens: loopback only, so a forgotten dev relay is not reachable.
pub const DEVELOPMENT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// Let's Encrypt production, the documented ACME default (§9).
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Largest accepted `--max-message-size`: whole messages are buffered in memory, and the
/// binary-leg limit adds 1024 bytes to it.
const MAX_MESSAGE_SIZE_CAP: usize = 1 << 30;

/// Longest accepted duration. Nothing in the relay needs more than a day, and a cap keeps
/// `Instant + duration` far from overflowing (which panics).
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// `relay-server`: the pyrycode WebSocket relay between desktop binaries and phones.
///
/// Every flag also reads `PYRYCODE_RELAY_<FLAG_IN_UPPER_SNAKE>`; the command line wins.
/// With no listener flag the relay runs in development mode on 127.0.0.1:8080.
#[derive(Debug, Clone, Parser)]
#[command(name = "relay-server", version)]
pub struct Cli {
    /// Plain HTTP/WS on ADDR, for use behind a TLS-terminating proxy (`:PORT` = all IPv4
    /// interfaces). [default: unset; no listener flag = development mode on 127.0.0.1:8080]
    #[arg(long, env = "PYRYCODE_RELAY_INSECURE_LISTEN", value_name = "ADDR",
          value_parser = parse_listen_addr, help_heading = "Listeners")]
    pub insecure_listen: Option<SocketAddr>,

    /// PEM certificate chain for TLS mode; requires --tls-key. [default: unset]
    #[arg(
        long,
        env = "PYRYCODE_RELAY_TLS_CERT",
        value_name = "FILE",
        help_heading = "Listeners"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS mode; requires --tls-cert. [default: unset]
    #[arg(
        long,
        env = "PYRYCODE_RELAY_TLS_KEY",
        value_name = "FILE",
        help_heading = "Listeners"
    )]
    pub tls_key: Option<PathBuf>,

    /// TLS listener address in TLS and ACME modes. [default: :443]
    #[arg(long, env = "PYRYCODE_RELAY_HTTPS_LISTEN", value_name = "ADDR",
          value_parser = parse_listen_addr, help_heading = "Listeners")]
    pub https_listen: Option<SocketAddr>,

    /// Get certificates for NAME from ACME (ACME mode). [default: unset]
    #[arg(
        long,
        env = "PYRYCODE_RELAY_DOMAIN",
        value_name = "NAME",
        help_heading = "Listeners"
    )]
    pub domain: Option<String>,

    /// ACME mode: plain HTTP listener that answers only HTTP-01 challenges. [default: :80]
    #[arg(long, env = "PYRYCODE_RELAY_HTTP_LISTEN", value_name = "ADDR",
          value_parser = parse_listen_addr, help_heading = "Listeners")]
    pub http_listen: Option<SocketAddr>,

    /// ACME mode: directory for account keys and certificates, kept at 0700.
    /// [default: acme-cache]
    #[arg(
        long,
        env = "PYRYCODE_RELAY_CERT_CACHE",
        value_name = "DIR",
        help_heading = "Listeners"
    )]
    pub cert_cache: Option<PathBuf>,

    /// ACME mode: directory URL of the CA (e.g. Pebble).
    /// [default: https://acme-v02.api.letsencrypt.org/directory]
    #[arg(
        long,
        env = "PYRYCODE_RELAY_ACME_DIRECTORY",
        value_name = "URL",
        help_heading = "Listeners"
    )]
    pub acme_directory: Option<String>,

    /// ACME mode: PEM root certificate to trust for the ACME directory. [default: system roots]
    #[arg(
        long,
        env = "PYRYCODE_RELAY_ACME_CA_ROOT",
        value_name = "FILE",
        help_heading = "Listeners"
    )]
    pub acme_ca_root: Option<PathBuf>,

    /// Require a PROXY v2 header on every TLS connection. [default: off]
    #[arg(long, env = "PYRYCODE_RELAY_HTTPS_PROXY_PROTOCOL",
          value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Listeners")]
    pub https_proxy_protocol: bool,

    /// How long a departed binary's server-id stays reclaimable.
    #[arg(long, env = "PYRYCODE_RELAY_GRACE_PERIOD", value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration, help_heading = "Server-id lifecycle")]
    pub grace_period: Duration,

    /// How long a claimed server-id's incumbent has to answer the liveness ping of a newcomer.
    #[arg(long, env = "PYRYCODE_RELAY_CONFLICT_PROBE_TIMEOUT", value_name = "DURATION",
          default_value = "10s", value_parser = parse_duration, help_heading = "Server-id lifecycle")]
    pub conflict_probe_timeout: Duration,

    /// What happens at reclaim to phones attached to the previous binary.
    #[arg(long, env = "PYRYCODE_RELAY_RECLAIM_POLICY", value_enum,
          default_value_t = ReclaimPolicyArg::Evict, help_heading = "Server-id lifecycle")]
    pub reclaim_policy: ReclaimPolicyArg,

    /// Largest WebSocket message (bytes, or with a unit: 256KiB, 1MiB); the binary leg gets
    /// 1024 bytes more for the envelope.
    #[arg(long, env = "PYRYCODE_RELAY_MAX_MESSAGE_SIZE", value_name = "SIZE", default_value = "256KiB",
          value_parser = parse_size, help_heading = "Flow control and liveness")]
    pub max_message_size: usize,

    /// Once a message starts arriving, all of it must arrive within this time.
    #[arg(long, env = "PYRYCODE_RELAY_MESSAGE_READ_TIMEOUT", value_name = "DURATION",
          default_value = "30s", value_parser = parse_duration, help_heading = "Flow control and liveness")]
    pub message_read_timeout: Duration,

    /// How often every connection is pinged.
    #[arg(long, env = "PYRYCODE_RELAY_HEARTBEAT_INTERVAL", value_name = "DURATION",
          default_value = "30s", value_parser = parse_duration, help_heading = "Flow control and liveness")]
    pub heartbeat_interval: Duration,

    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, env = "PYRYCODE_RELAY_HEARTBEAT_TIMEOUT", value_name = "DURATION",
          default_value = "30s", value_parser = parse_duration, help_heading = "Flow control and liveness")]
    pub heartbeat_timeout: Duration,

    /// Byte budget of each phone's outbox; must be at least --max-message-size.
    #[arg(long, env = "PYRYCODE_RELAY_PHONE_OUTBOX_BYTES", value_name = "SIZE", default_value = "4MiB",
          value_parser = parse_size, help_heading = "Flow control and liveness")]
    pub phone_outbox_bytes: usize,

    /// Longest a single write may block before the connection is closed.
    #[arg(long, env = "PYRYCODE_RELAY_WRITE_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_duration, help_heading = "Flow control and liveness")]
    pub write_timeout: Duration,

    /// Upgrades allowed per client IP per minute.
    #[arg(
        long,
        env = "PYRYCODE_RELAY_RATE_LIMIT_PER_MINUTE",
        value_name = "N",
        default_value_t = 10,
        help_heading = "Admission"
    )]
    pub rate_limit_per_minute: u32,

    /// Upgrades a client IP may make in a burst.
    #[arg(
        long,
        env = "PYRYCODE_RELAY_RATE_LIMIT_BURST",
        value_name = "N",
        default_value_t = 20,
        help_heading = "Admission"
    )]
    pub rate_limit_burst: u32,

    /// Live connections allowed per client IP.
    #[arg(
        long,
        env = "PYRYCODE_RELAY_MAX_CONNECTIONS_PER_IP",
        value_name = "N",
        default_value_t = 64,
        help_heading = "Admission"
    )]
    pub max_connections_per_ip: usize,

    /// Use the left-most X-Forwarded-For entry as the client IP for admission limits.
    /// [default: off]
    #[arg(long, env = "PYRYCODE_RELAY_TRUST_X_FORWARDED_FOR",
          value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Admission")]
    pub trust_x_forwarded_for: bool,

    /// Live connections allowed in total (503 over it).
    #[arg(
        long,
        env = "PYRYCODE_RELAY_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 10000,
        help_heading = "Admission"
    )]
    pub max_connections: usize,

    /// Phones allowed per server-id (close 4429 over it).
    #[arg(
        long,
        env = "PYRYCODE_RELAY_PHONES_PER_SERVER",
        value_name = "N",
        default_value_t = 16,
        help_heading = "Admission"
    )]
    pub phones_per_server: usize,

    /// Time a client has to send its request headers.
    #[arg(long, env = "PYRYCODE_RELAY_HEADER_READ_TIMEOUT", value_name = "DURATION",
          default_value = "5s", value_parser = parse_duration, help_heading = "Admission")]
    pub header_read_timeout: Duration,

    /// Prometheus /metrics listener; must be a loopback address, empty disables.
    #[arg(
        long,
        env = "PYRYCODE_RELAY_METRICS_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9090",
        help_heading = "Operations"
    )]
    pub metrics_listen: String,

    /// Log line format on stderr.
    #[arg(long, env = "PYRYCODE_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text,
          help_heading = "Operations")]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, how long to wait for connections to close before exiting.
    #[arg(long, env = "PYRYCODE_RELAY_SHUTDOWN_TIMEOUT", value_name = "DURATION",
          default_value = "10s", value_parser = parse_duration, help_heading = "Operations")]
    pub shutdown_timeout: Duration,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--reclaim-policy` (§6.4). Named `*Arg` so it does not clash with the registry's own type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReclaimPolicyArg {
    /// Close phones of the previous binary with 4404 "binary reclaimed server-id".
    Evict,
    /// Hand phones of the previous binary to the reclaiming one.
    Inherit,
}

/// Which listener(s) to run (§9). Exactly one mode; illegal mixes never get this far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenMode {
    /// No listener flag: plain HTTP/WS on [`DEVELOPMENT_ADDR`].
    Development(SocketAddr),
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
    Acme {
        /// Lowercase, without a trailing dot; compared case-insensitively with Host (421).
        domain: String,
        https_listen: SocketAddr,
        http_listen: SocketAddr,
        cert_cache: PathBuf,
        acme_directory: String,
        acme_ca_root: Option<PathBuf>,
        /// `--https-proxy-protocol`.
        proxy_protocol: bool,
    },
}

impl ListenMode {
    /// The `mode=` value of the startup line (§10).
    pub fn name(&self) -> &'static str {
        match self {
            ListenMode::Development(_) => "development",
            ListenMode::Insecure(_) => "insecure",
            ListenMode::Tls { .. } => "tls",
            ListenMode::Acme { .. } => "acme",
        }
    }
}

/// The validated configuration. Durations, sizes and caps are never zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: ListenMode,
    /// `None` = no metrics listener. Always `None` until [`Feature::Metrics`] is built: the
    /// default address is validated but nothing may be bound on it yet.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub grace_period: Duration,
    pub conflict_probe_timeout: Duration,
    pub reclaim_policy: ReclaimPolicyArg,
    /// Phone leg limit; the binary leg allows 1024 bytes more (§7).
    pub max_message_size: usize,
    pub message_read_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// At least `max_message_size`, so one full-size message always fits.
    pub phone_outbox_bytes: usize,
    pub write_timeout: Duration,
    /// Not enforced until [`Feature::RateLimits`] is built (setting it is a boot error).
    pub rate_limit_per_minute: u32,
    /// Not enforced until [`Feature::RateLimits`] is built (setting it is a boot error).
    pub rate_limit_burst: u32,
    /// Not enforced until [`Feature::RateLimits`] is built (setting it is a boot error).
    pub max_connections_per_ip: usize,
    /// Always `false` until [`Feature::RateLimits`] is built (setting it is a boot error).
    pub trust_x_forwarded_for: bool,
    pub max_connections: usize,
    pub phones_per_server: usize,
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
}

impl Default for Config {
    /// What `relay-server` with no flags and no environment runs with (checked by a test).
    fn default() -> Self {
        Config {
            listen: ListenMode::Development(DEVELOPMENT_ADDR),
            metrics_listen: None,
            log_format: LogFormat::Text,
            grace_period: Duration::from_secs(30),
            conflict_probe_timeout: Duration::from_secs(10),
            reclaim_policy: ReclaimPolicyArg::Evict,
            max_message_size: 256 * 1024,
            message_read_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(30),
            phone_outbox_bytes: 4 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            rate_limit_per_minute: 10,
            rate_limit_burst: 20,
            max_connections_per_ip: 64,
            trust_x_forwarded_for: false,
            max_connections: 10_000,
            phones_per_server: 16,
            header_read_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Facts about the process that §9's production refusals depend on, injected so tests do not
/// need to be root or touch the environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootContext {
    /// `PYRYCODE_RELAY_PRODUCTION` is set to a true-ish value.
    pub production: bool,
    /// The effective user is root.
    pub is_root: bool,
}

impl BootContext {
    /// Reads [`PRODUCTION_ENV`] from the process environment and the effective uid.
    pub fn detect() -> Self {
        let lookup =
            |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
        Self::from_lookup(lookup, effective_uid_is_root())
    }

    /// Production is on unless the variable is unset or an explicit "off" (`""`, `0`, `false`,
    /// `no`, `off`). Anything else, typos included, turns it on: failing closed is safer.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>, is_root: bool) -> Self {
        let production = env(PRODUCTION_ENV).is_some_and(|value| {
            let value = value.trim().to_ascii_lowercase();
            !matches!(value.as_str(), "" | "0" | "false" | "no" | "off")
        });
        BootContext {
            production,
            is_root,
        }
    }
}

/// Subsystems whose flags exist before their code does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    Tls,
    Acme,
    Metrics,
    RateLimits,
}

impl Feature {
    /// Whether this build implements the feature. Turning one on is flipping its arm here:
    /// its flags then stop being boot errors and their values flow into [`Config`].
    pub const fn built(self) -> bool {
        match self {
            Feature::Tls => false,
            Feature::Acme => false,
            Feature::Metrics => false,
            Feature::RateLimits => false,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Feature::Tls => "TLS",
            Feature::Acme => "ACME (automatic certificates)",
            Feature::Metrics => "the metrics listener",
            Feature::RateLimits => "per-IP admission limiting",
        }
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why the relay refuses to start. Every message is one line naming the flag involved;
/// `main` prints it as `relay-server: <message>` and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// clap's own outcome: `--help`, `--version` (exit 0), unknown flag or unparsable value
    /// (exit 2). Print and exit with [`clap::Error::exit`], which picks stream and code.
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// Two listener modes at once (§9).
    #[error("{first} cannot be combined with {second}: choose one listener mode")]
    ConflictingModes {
        first: &'static str,
        second: &'static str,
    },
    /// Half of a flag pair.
    #[error("{flag} requires {needs}")]
    MissingCompanion {
        flag: &'static str,
        needs: &'static str,
    },
    /// A flag that would be silently ignored in the selected mode.
    #[error("{flag} only applies {applies}")]
    NotApplicable {
        flag: &'static str,
        applies: &'static str,
    },
    /// A value that parses but makes no sense (zero, too large, inconsistent).
    #[error("{flag}: {reason}")]
    InvalidValue { flag: &'static str, reason: String },
    /// Metrics must never be exposed beyond the host.
    #[error("--metrics-listen: {addr} is not a loopback address (use 127.0.0.1 or [::1], or an empty value to disable)")]
    MetricsNotLoopback { addr: SocketAddr },
    #[error("{PRODUCTION_ENV} refuses development mode: choose --tls-cert/--tls-key or --domain")]
    ProductionDevelopmentMode,
    #[error("{PRODUCTION_ENV} refuses --insecure-listen: choose --tls-cert/--tls-key or --domain")]
    ProductionInsecureListen,
    #[error("{PRODUCTION_ENV} refuses to run as root: start the relay as an unprivileged user")]
    ProductionRoot,
    /// A flag of a subsystem this build does not have; refused rather than ignored.
    #[error("{flag}: {feature} is not implemented yet in this build (see docs/operations.md)")]
    NotImplemented {
        flag: &'static str,
        feature: Feature,
    },
}

impl Config {
    /// Parses `args` (with `argv[0]`) and the `PYRYCODE_RELAY_*` variables clap reads from the
    /// process environment, then validates everything against `ctx`.
    pub fn from_args<I, T>(args: I, ctx: &BootContext) -> Result<Config, BootError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        Config::validate(&cli, &matches, ctx)
    }

    /// Order: listener mode, then values, then production refusals, then missing features, so
    /// that each error is reachable (and tested) on its own.
    fn validate(cli: &Cli, matches: &ArgMatches, ctx: &BootContext) -> Result<Config, BootError> {
        let listen = listen_mode(cli)?;
        let metrics_listen = parse_metrics_listen(&cli.metrics_listen)?;

        let grace_period = duration("--grace-period", cli.grace_period)?;
        let conflict_probe_timeout =
            duration("--conflict-probe-timeout", cli.conflict_probe_timeout)?;
        let message_read_timeout = duration("--message-read-timeout", cli.message_read_timeout)?;
        let heartbeat_interval = duration("--heartbeat-interval", cli.heartbeat_interval)?;
        let heartbeat_timeout = duration("--heartbeat-timeout", cli.heartbeat_timeout)?;
        let write_timeout = duration("--write-timeout", cli.write_timeout)?;
        let header_read_timeout = duration("--header-read-timeout", cli.header_read_timeout)?;
        let shutdown_timeout = duration("--shutdown-timeout", cli.shutdown_timeout)?;

        let max_message_size = nonzero("--max-message-size", cli.max_message_size)?;
        if max_message_size > MAX_MESSAGE_SIZE_CAP {
            return Err(invalid("--max-message-size", "must be at most 1GiB"));
        }
        let phone_outbox_bytes = nonzero("--phone-outbox-bytes", cli.phone_outbox_bytes)?;
        // A smaller budget would close every phone that receives one full-size message.
        if phone_outbox_bytes < max_message_size {
            return Err(BootError::InvalidValue {
                flag: "--phone-outbox-bytes",
                reason: format!(
                    "{phone_outbox_bytes} bytes is less than --max-message-size ({max_message_size} bytes)"
                ),
            });
        }
        let rate_limit_per_minute = nonzero("--rate-limit-per-minute", cli.rate_limit_per_minute)?;
        let rate_limit_burst = nonzero("--rate-limit-burst", cli.rate_limit_burst)?;
        let max_connections_per_ip =
            nonzero("--max-connections-per-ip", cli.max_connections_per_ip)?;
        let max_connections = nonzero("--max-connections", cli.max_connections)?;
        let phones_per_server = nonzero("--phones-per-server", cli.phones_per_server)?;

        if ctx.production {
            match listen {
                ListenMode::Development(_) => return Err(BootError::ProductionDevelopmentMode),
                ListenMode::Insecure(_) => return Err(BootError::ProductionInsecureListen),
                ListenMode::Tls { .. } | ListenMode::Acme { .. } => {}
            }
            if ctx.is_root {
                return Err(BootError::ProductionRoot);
            }
        }

        // Mode validation guarantees every TLS/ACME flag given comes with its mode's main
        // flag, so naming that one covers them all.
        match listen {
            ListenMode::Tls { .. } => require(Feature::Tls, "--tls-cert")?,
            ListenMode::Acme { .. } => require(Feature::Acme, "--domain")?,
            ListenMode::Development(_) | ListenMode::Insecure(_) => {}
        }
        // Only an explicit address is a request for metrics; the default must not block boot.
        if metrics_listen.is_some() && explicit(matches, "metrics_listen") {
            require(Feature::Metrics, "--metrics-listen")?;
        }
        for (id, flag) in [
            ("rate_limit_per_minute", "--rate-limit-per-minute"),
            ("rate_limit_burst", "--rate-limit-burst"),
            ("max_connections_per_ip", "--max-connections-per-ip"),
        ] {
            if explicit(matches, id) {
                require(Feature::RateLimits, flag)?;
            }
        }
        // A boolean "set" to false (e.g. `PYRYCODE_RELAY_TRUST_X_FORWARDED_FOR=0`) asks for nothing.
        if cli.trust_x_forwarded_for {
            require(Feature::RateLimits, "--trust-x-forwarded-for")?;
        }

        Ok(Config {
            listen,
            metrics_listen: metrics_listen.filter(|_| Feature::Metrics.built()),
            log_format: cli.log_format,
            grace_period,
            conflict_probe_timeout,
            reclaim_policy: cli.reclaim_policy,
            max_message_size,
            message_read_timeout,
            heartbeat_interval,
            heartbeat_timeout,
            phone_outbox_bytes,
            write_timeout,
            rate_limit_per_minute,
            rate_limit_burst,
            max_connections_per_ip,
            trust_x_forwarded_for: cli.trust_x_forwarded_for,
            max_connections,
            phones_per_server,
            header_read_timeout,
            shutdown_timeout,
        })
    }
}

/// For `main`: the validated config, or the process ends here. `--help`/`--version` print to
/// stdout and exit 0; clap usage errors and every [`BootError`] print one line
/// `relay-server: …` to stderr and exit 2, before anything binds.
pub fn load() -> Config {
    match Config::from_args(std::env::args_os(), &BootContext::detect()) {
        Ok(config) => config,
        Err(BootError::Usage(err)) if !err.use_stderr() => err.exit(),
        Err(BootError::Usage(err)) => {
            eprintln!("relay-server: {}", usage_line(&err));
            std::process::exit(2)
        }
        Err(err) => {
            eprintln!("relay-server: {err}");
            std::process::exit(2)
        }
    }
}

/// clap's multi-line usage error as one line: the error and its hints, without the usage
/// synopsis and the "try --help" footer.
fn usage_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    let line = parts.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

/// Resolves the one listener mode (§9), refusing mixes and flags the mode would ignore.
fn listen_mode(cli: &Cli) -> Result<ListenMode, BootError> {
    let tls_flag = match (&cli.tls_cert, &cli.tls_key) {
        (Some(_), _) => Some("--tls-cert"),
        (None, Some(_)) => Some("--tls-key"),
        (None, None) => None,
    };
    if cli.insecure_listen.is_some() {
        if let Some(second) = tls_flag.or(cli.domain.as_ref().map(|_| "--domain")) {
            return Err(BootError::ConflictingModes {
                first: "--insecure-listen",
                second,
            });
        }
    }
    if let (Some(first), Some(_)) = (tls_flag, &cli.domain) {
        return Err(BootError::ConflictingModes {
            first,
            second: "--domain",
        });
    }

    const TLS_MODES: &str = "with --tls-cert/--tls-key or --domain";
    const ACME_MODE: &str = "with --domain";
    let not_applicable = |flag, applies| Err(BootError::NotApplicable { flag, applies });

    if let Some(addr) = cli.insecure_listen {
        // Extra listeners or PROXY parsing would be silently ignored in plain mode.
        if cli.https_listen.is_some() {
            return not_applicable("--https-listen", TLS_MODES);
        }
        if cli.https_proxy_protocol {
            return not_applicable("--https-proxy-protocol", TLS_MODES);
        }
        reject_acme_only_flags(cli, ACME_MODE)?;
        return Ok(ListenMode::Insecure(addr));
    }

    if let Some(domain) = &cli.domain {
        return Ok(ListenMode::Acme {
            domain: validate_domain(domain)?,
            https_listen: cli.https_listen.unwrap_or(all_interfaces(443)),
            http_listen: cli.http_listen.unwrap_or(all_interfaces(80)),
            cert_cache: cli
                .cert_cache
                .clone()
                .unwrap_or_else(|| PathBuf::from("acme-cache")),
            acme_directory: validate_acme_directory(cli.acme_directory.as_deref())?,
            acme_ca_root: cli.acme_ca_root.clone(),
            proxy_protocol: cli.https_proxy_protocol,
        });
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
                return not_applicable("--https-listen", TLS_MODES);
            }
            if cli.https_proxy_protocol {
                return not_applicable("--https-proxy-protocol", TLS_MODES);
            }
            reject_acme_only_flags(cli, ACME_MODE)?;
            Ok(ListenMode::Development(DEVELOPMENT_ADDR))
        }
    }
}

fn reject_acme_only_flags(cli: &Cli, applies: &'static str) -> Result<(), BootError> {
    let given = [
        ("--http-listen", cli.http_listen.is_some()),
        ("--cert-cache", cli.cert_cache.is_some()),
        ("--acme-directory", cli.acme_directory.is_some()),
        ("--acme-ca-root", cli.acme_ca_root.is_some()),
    ];
    match given.into_iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(BootError::NotApplicable { flag, applies }),
        None => Ok(()),
    }
}

fn all_interfaces(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// A DNS name as ACME and the Host check (§9) will see it: lowercase, no trailing dot.
fn validate_domain(raw: &str) -> Result<String, BootError> {
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

/// Empty disables metrics; anything else must be a loopback `IP:PORT` (§10).
fn parse_metrics_listen(raw: &str) -> Result<Option<SocketAddr>, BootError> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    let addr = parse_listen_addr(raw).map_err(|reason| BootError::InvalidValue {
        flag: "--metrics-listen",
        reason,
    })?;
    // to_canonical: an IPv4-mapped ::ffff:127.0.0.1 is loopback too.
    if !addr.ip().to_canonical().is_loopback() {
        return Err(BootError::MetricsNotLoopback { addr });
    }
    Ok(Some(addr))
}

/// `IP:PORT`, `[IPv6]:PORT`, or `:PORT` meaning every IPv4 interface (the documented `:443`).
fn parse_listen_addr(raw: &str) -> Result<SocketAddr, String> {
    const EXPECTED: &str = "expected IP:PORT, [IPv6]:PORT or :PORT";
    if let Some(port) = raw.strip_prefix(':') {
        // u16::from_str accepts a leading '+', which is not a port.
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EXPECTED.to_owned());
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| "port must be 0-65535".to_owned())?;
        return Ok(all_interfaces(port));
    }
    raw.parse::<SocketAddr>()
        .map_err(|_| format!("{EXPECTED} (host names are not resolved)"))
}

/// humantime: `500ms`, `30s`, `2m`, `1h 30m`. A bare number is refused (unit required).
fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim()).map_err(|err| format!("{err} (examples: 500ms, 30s, 2m)"))
}

/// Byte counts: `262144`, `262144B`, `256KiB`, `1MiB`, `1GiB` (binary units, any case).
fn parse_size(raw: &str) -> Result<usize, String> {
    const EXPECTED: &str = "expected bytes or a binary unit such as 256KiB, 1MiB or 4MiB";
    let raw = raw.trim();
    let digits_end = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(digits_end);
    if digits.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        // Refused rather than guessed: KB is 1000 to some people and 1024 to others.
        _ => return Err(EXPECTED.to_owned()),
    };
    let too_large = || "size is too large".to_owned();
    let count: u64 = digits.parse().map_err(|_| too_large())?;
    let bytes = count.checked_mul(multiplier).ok_or_else(too_large)?;
    usize::try_from(bytes).map_err(|_| too_large())
}

fn duration(flag: &'static str, value: Duration) -> Result<Duration, BootError> {
    if value.is_zero() {
        return Err(invalid(flag, "must be greater than zero"));
    }
    if value > MAX_DURATION {
        return Err(invalid(flag, "must be at most 24h"));
    }
    Ok(value)
}

fn nonzero<N: Default + PartialEq>(flag: &'static str, value: N) -> Result<N, BootError> {
    if value == N::default() {
        return Err(invalid(flag, "must be greater than zero"));
    }
    Ok(value)
}

fn invalid(flag: &'static str, reason: &str) -> BootError {
    BootError::InvalidValue {
        flag,
        reason: reason.to_owned(),
    }
}

/// The one place a flag is turned away for want of its subsystem.
fn require(feature: Feature, flag: &'static str) -> Result<(), BootError> {
    if feature.built() {
        Ok(())
    } else {
        Err(BootError::NotImplemented { flag, feature })
    }
}

/// Given on the command line or through its environment variable, as opposed to defaulted.
fn explicit(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// std has no `geteuid`; Linux publishes it in /proc (`Uid: real effective saved fs`).
/// Elsewhere this reports "not root", so the production root refusal is Linux-only.
fn effective_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_uid(&status))
        .is_some_and(|uid| uid == 0)
}

fn effective_uid(proc_status: &str) -> Option<u32> {
    proc_status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr};
    use std::sync::{Mutex, PoisonError};

    /// clap reads `PYRYCODE_RELAY_*` from the process environment, which tests share; every
    /// parse goes through [`parse_env`] and holds this lock while the environment is staged.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    fn parse_env(
        args: &[&str],
        env: &[(&str, &str)],
        ctx: BootContext,
    ) -> Result<Config, BootError> {
        let _guard = ENV_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        // The developer's shell may export some of these; tests start from nothing.
        let inherited: Vec<OsString> = std::env::vars_os()
            .map(|(name, _)| name)
            .filter(|name| name.to_string_lossy().starts_with("PYRYCODE_RELAY_"))
            .collect();
        for name in inherited {
            std::env::remove_var(name);
        }
        for (name, value) in env {
            std::env::set_var(name, value);
        }
        let result = Config::from_args(
            std::iter::once("relay-server").chain(args.iter().copied()),
            &ctx,
        );
        for (name, _) in env {
            std::env::remove_var(name);
        }
        result
    }

    fn parse(args: &[&str]) -> Result<Config, BootError> {
        parse_env(args, &[], BootContext::default())
    }

    fn ok(args: &[&str]) -> Config {
        match parse(args) {
            Ok(config) => config,
            Err(err) => panic!("{args:?} refused: {err}"),
        }
    }

    fn err(args: &[&str]) -> BootError {
        match parse(args) {
            Ok(config) => panic!("{args:?} accepted: {config:?}"),
            Err(err) => err,
        }
    }

    fn usage_err(args: &[&str]) -> clap::Error {
        match err(args) {
            BootError::Usage(err) => err,
            other => panic!("{args:?}: expected a clap error, got {other}"),
        }
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

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
        assert_eq!(seen, 29, "protocol.md names 29 flags");
    }

    #[test]
    fn help_documents_every_flag_with_its_default() {
        let help = Cli::command().render_long_help().to_string();
        for (flag, default) in [
            ("--insecure-listen", "development mode on 127.0.0.1:8080"),
            ("--https-listen", "[default: :443]"),
            ("--http-listen", "[default: :80]"),
            ("--https-proxy-protocol", "[default: off]"),
            ("--trust-x-forwarded-for", "[default: off]"),
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
        ] {
            let entry = help_entry(&help, flag);
            assert!(
                entry.contains(default),
                "{flag} help lacks {default:?}:\n{entry}"
            );
            assert!(entry.contains("[env: PYRYCODE_RELAY_"), "{flag}:\n{entry}");
        }
    }

    /// The lines `--help` prints for one flag: its header line and the indented text below.
    fn help_entry(help: &str, flag: &str) -> String {
        let mut entry: Option<String> = None;
        for line in help.lines() {
            let trimmed = line.trim_start();
            // Flag headers are indented at most 6 columns; "Possible values" items deeper.
            if trimmed.starts_with('-') && line.len() - trimmed.len() <= 6 {
                if entry.is_some() {
                    break;
                }
                if trimmed.split([' ', ',', '=']).any(|token| token == flag) {
                    entry = Some(String::new());
                }
            }
            if let Some(entry) = entry.as_mut() {
                entry.push_str(line);
                entry.push('\n');
            }
        }
        entry.unwrap_or_else(|| panic!("{flag} missing from --help"))
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
        // The default metrics address is not an error, but nothing serves metrics yet.
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.grace_period, Duration::from_secs(30));
        assert_eq!(config.conflict_probe_timeout, Duration::from_secs(10));
        assert_eq!(config.reclaim_policy, ReclaimPolicyArg::Evict);
        assert_eq!(config.max_message_size, 256 * 1024);
        assert_eq!(config.message_read_timeout, Duration::from_secs(30));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(config.heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(config.phone_outbox_bytes, 4 * 1024 * 1024);
        assert_eq!(config.write_timeout, Duration::from_secs(10));
        assert_eq!(config.rate_limit_per_minute, 10);
        assert_eq!(config.rate_limit_burst, 20);
        assert_eq!(config.max_connections_per_ip, 64);
        assert!(!config.trust_x_forwarded_for);
        assert_eq!(config.max_connections, 10_000);
        assert_eq!(config.phones_per_server, 16);
        assert_eq!(config.header_read_timeout, Duration::from_secs(5));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
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
            ],
            BootContext::default(),
        )
        .expect("valid environment");
        assert_eq!(config.listen, ListenMode::Insecure(v4([0, 0, 0, 0], 9000)));
        assert_eq!(config.grace_period, Duration::from_secs(120));
        assert_eq!(config.reclaim_policy, ReclaimPolicyArg::Inherit);
        assert_eq!(config.max_message_size, 1 << 20);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.phones_per_server, 3);
        assert_eq!(config.max_connections, 500);
        assert_eq!(config.header_read_timeout, Duration::from_millis(750));
        assert_eq!(config.metrics_listen, None);
        assert!(!config.trust_x_forwarded_for);
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
        assert_eq!(config.grace_period, Duration::from_secs(5));
        assert_eq!(config.phones_per_server, 2);
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

    // ---- value syntax --------------------------------------------------------------------

    #[test]
    fn durations_accept_humantime_forms() {
        let config = ok(&[
            "--grace-period",
            "500ms",
            "--write-timeout",
            "2m",
            "--shutdown-timeout",
            "1m 30s",
            "--heartbeat-interval",
            "45s",
        ]);
        assert_eq!(config.grace_period, Duration::from_millis(500));
        assert_eq!(config.write_timeout, Duration::from_secs(120));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(90));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(45));
    }

    #[test]
    fn durations_need_a_unit() {
        for bad in ["30", "", "soon", "-1s"] {
            assert_eq!(
                usage_err(&["--grace-period", bad]).exit_code(),
                2,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sizes_accept_plain_bytes_and_binary_units() {
        for (raw, bytes) in [
            ("262144", 262_144),
            ("1000B", 1000),
            ("256KiB", 256 * 1024),
            ("1MiB", 1 << 20),
            ("4MiB", 4 << 20),
            ("2 mib", 2 << 20),
            ("1GiB", 1 << 30),
        ] {
            assert_eq!(parse_size(raw), Ok(bytes), "{raw}");
        }
        let config = ok(&["--max-message-size", "1MiB", "--phone-outbox-bytes", "8MiB"]);
        assert_eq!(config.max_message_size, 1 << 20);
        assert_eq!(config.phone_outbox_bytes, 8 << 20);
    }

    #[test]
    fn sizes_refuse_ambiguous_units_and_overflow() {
        for bad in [
            "",
            "KiB",
            "256KB",
            "1MB",
            "1.5MiB",
            "-1",
            "99999999999999999999",
            "17179869184GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(usage_err(&["--max-message-size", "256KB"]).exit_code(), 2);
    }

    #[test]
    fn port_only_addresses_mean_all_ipv4_interfaces() {
        let config = ok(&["--insecure-listen", ":443"]);
        assert_eq!(config.listen, ListenMode::Insecure(v4([0, 0, 0, 0], 443)));
        assert_eq!(config.listen.name(), "insecure");
        assert_eq!(parse_listen_addr(":80"), Ok(v4([0, 0, 0, 0], 80)));
        assert_eq!(parse_listen_addr(":0"), Ok(v4([0, 0, 0, 0], 0)));
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
        assert!(parse_listen_addr("[::]:443").is_ok());
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            ":",
            ":+443",
            ":65536",
            "443",
            "localhost:80",
            "1.2.3.4",
            "::1:80",
        ] {
            assert!(parse_listen_addr(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(usage_err(&["--insecure-listen", ":99999"]).exit_code(), 2);
    }

    // ---- boot errors: listener modes -----------------------------------------------------

    #[test]
    fn insecure_listen_cannot_be_mixed_with_tls_or_acme() {
        for (extra, second) in [
            (
                &["--tls-cert", "c.pem", "--tls-key", "k.pem"][..],
                "--tls-cert",
            ),
            (&["--tls-key", "k.pem"][..], "--tls-key"),
            (&["--domain", "relay.example.com"][..], "--domain"),
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
    fn tls_files_cannot_be_mixed_with_acme() {
        let err = err(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--domain",
            "relay.example.com",
        ]);
        assert!(matches!(
            err,
            BootError::ConflictingModes {
                first: "--tls-cert",
                second: "--domain"
            }
        ));
        assert_eq!(
            err.to_string(),
            "--tls-cert cannot be combined with --domain: choose one listener mode"
        );
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
                (&["--cert-cache", "/var/lib/relay"][..], "--cert-cache"),
                (
                    &["--acme-directory", "https://localhost:14000/dir"][..],
                    "--acme-directory",
                ),
                (&["--acme-ca-root", "pebble.pem"][..], "--acme-ca-root"),
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
    fn acme_only_flags_are_refused_in_tls_file_mode() {
        let err = err(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--http-listen",
            ":80",
        ]);
        assert_eq!(err.to_string(), "--http-listen only applies with --domain");
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
    fn bad_domain_and_acme_directory_are_refused() {
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
            "--shutdown-timeout",
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
    fn durations_over_a_day_are_refused() {
        assert!(matches!(
            err(&["--grace-period", "25h"]),
            BootError::InvalidValue {
                flag: "--grace-period",
                ..
            }
        ));
        assert_eq!(ok(&["--grace-period", "24h"]).grace_period, MAX_DURATION);
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
        ] {
            let err = err(&[flag, "0"]);
            assert!(
                matches!(err, BootError::InvalidValue { flag: f, .. } if f == flag),
                "{flag}: {err}"
            );
        }
    }

    #[test]
    fn negative_counts_are_usage_errors() {
        assert_eq!(usage_err(&["--max-connections", "-1"]).exit_code(), 2);
    }

    #[test]
    fn outbox_must_hold_one_full_size_message() {
        let err = err(&[
            "--max-message-size",
            "1MiB",
            "--phone-outbox-bytes",
            "512KiB",
        ]);
        assert!(
            matches!(
                err,
                BootError::InvalidValue {
                    flag: "--phone-outbox-bytes",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            ok(&["--max-message-size", "1MiB", "--phone-outbox-bytes", "1MiB"]).phone_outbox_bytes
                == 1 << 20
        );
    }

    #[test]
    fn max_message_size_is_capped() {
        assert!(matches!(
            err(&["--max-message-size", "2GiB", "--phone-outbox-bytes", "4GiB"]),
            BootError::InvalidValue {
                flag: "--max-message-size",
                ..
            }
        ));
    }

    #[test]
    fn metrics_listen_must_be_loopback() {
        for bad in ["0.0.0.0:9090", ":9090", "[::]:9090", "10.1.2.3:9090"] {
            let err = err(&["--metrics-listen", bad]);
            assert!(
                matches!(err, BootError::MetricsNotLoopback { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().starts_with("--metrics-listen: "), "{err}");
        }
        assert!(matches!(
            err(&["--metrics-listen", "localhost:9090"]),
            BootError::InvalidValue {
                flag: "--metrics-listen",
                ..
            }
        ));
        assert_eq!(
            parse_metrics_listen("[::ffff:127.0.0.1]:9090")
                .map(|a| a.is_some())
                .ok(),
            Some(true)
        );
    }

    #[test]
    fn empty_metrics_listen_disables_metrics() {
        assert_eq!(ok(&["--metrics-listen", ""]).metrics_listen, None);
    }

    // ---- boot errors: production (§9) ----------------------------------------------------

    fn production(is_root: bool) -> BootContext {
        BootContext {
            production: true,
            is_root,
        }
    }

    #[test]
    fn production_refuses_development_mode() {
        let err = parse_env(&[], &[], production(false)).expect_err("refused");
        assert!(matches!(err, BootError::ProductionDevelopmentMode));
        assert!(err
            .to_string()
            .starts_with("PYRYCODE_RELAY_PRODUCTION refuses development mode"));
    }

    #[test]
    fn production_refuses_insecure_listen() {
        let err = parse_env(&["--insecure-listen", ":8080"], &[], production(false))
            .expect_err("refused");
        assert!(matches!(err, BootError::ProductionInsecureListen));
        assert!(err.to_string().contains("--insecure-listen"));
    }

    #[test]
    fn production_refuses_root() {
        let args = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let err = parse_env(&args, &[], production(true)).expect_err("refused");
        assert!(matches!(err, BootError::ProductionRoot), "{err}");
    }

    #[test]
    fn root_without_production_is_allowed() {
        let ctx = BootContext {
            production: false,
            is_root: true,
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

    // ---- boot errors: features not built yet ---------------------------------------------

    #[test]
    fn tls_mode_is_refused_until_tls_exists() {
        let err = err(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--https-listen",
            ":8443",
        ]);
        assert!(matches!(
            err,
            BootError::NotImplemented {
                flag: "--tls-cert",
                feature: Feature::Tls
            }
        ));
        assert_eq!(
            err.to_string(),
            "--tls-cert: TLS is not implemented yet in this build (see docs/operations.md)"
        );
        // Production refusals do not mask it: a TLS mode passes them.
        let err = parse_env(
            &["--tls-cert", "c.pem", "--tls-key", "k.pem"],
            &[],
            production(false),
        )
        .expect_err("refused");
        assert!(matches!(
            err,
            BootError::NotImplemented {
                feature: Feature::Tls,
                ..
            }
        ));
    }

    #[test]
    fn acme_mode_is_refused_until_acme_exists() {
        let err = err(&["--domain", "relay.example.com", "--https-proxy-protocol"]);
        assert!(matches!(
            err,
            BootError::NotImplemented {
                flag: "--domain",
                feature: Feature::Acme
            }
        ));
    }

    #[test]
    fn explicit_metrics_listen_is_refused_until_metrics_exist() {
        let err = err(&["--metrics-listen", "127.0.0.1:9091"]);
        assert!(matches!(
            err,
            BootError::NotImplemented {
                flag: "--metrics-listen",
                feature: Feature::Metrics
            }
        ));
        // Also through the environment, even when equal to the default.
        let err = parse_env(
            &[],
            &[("PYRYCODE_RELAY_METRICS_LISTEN", "127.0.0.1:9090")],
            BootContext::default(),
        )
        .expect_err("refused");
        assert!(matches!(
            err,
            BootError::NotImplemented {
                feature: Feature::Metrics,
                ..
            }
        ));
    }

    #[test]
    fn rate_limit_flags_are_refused_until_rate_limits_exist() {
        for args in [
            &["--rate-limit-per-minute", "10"][..],
            &["--rate-limit-burst", "5"][..],
            &["--max-connections-per-ip", "8"][..],
            &["--trust-x-forwarded-for"][..],
        ] {
            let err = err(args);
            assert!(
                matches!(err, BootError::NotImplemented { flag, feature: Feature::RateLimits } if flag == args[0]),
                "{args:?}: {err}"
            );
        }
        let err = parse_env(
            &[],
            &[("PYRYCODE_RELAY_RATE_LIMIT_BURST", "5")],
            BootContext::default(),
        )
        .expect_err("refused");
        assert!(matches!(
            err,
            BootError::NotImplemented {
                flag: "--rate-limit-burst",
                ..
            }
        ));
        let err = parse_env(
            &[],
            &[("PYRYCODE_RELAY_TRUST_X_FORWARDED_FOR", "1")],
            BootContext::default(),
        )
        .expect_err("refused");
        assert!(matches!(
            err,
            BootError::NotImplemented {
                flag: "--trust-x-forwarded-for",
                ..
            }
        ));
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
        assert_eq!(config.max_connections, 3);
        assert_eq!(config.header_read_timeout, Duration::from_millis(250));
        assert_eq!(config.phones_per_server, 1);
    }
}

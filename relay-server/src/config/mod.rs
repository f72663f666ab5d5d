//! Command line, environment and boot-time validation (protocol.md §9, §10).
//!
//! Owns turning `argv` + `PYRYCODE_RELAY_*` into one validated [`Config`] of plain typed values,
//! or into one [`BootError`] line that names the offending flag. It never binds or connects,
//! and reads nothing besides the environment and the process's own uid and hostname: every
//! refusal happens before a socket exists, which is what lets `main` exit 2 "before binding
//! anything".
//!
//! One file per subsystem's flags: `listen` (§9 modes), `lifecycle` (§6), `flow` (§7),
//! `admission` (§8), `ops` (§10), `push` (§4.4), `cluster` (§11); `parse` holds the value
//! syntax they share. Every flag protocol.md names is built: none is accepted and ignored.

mod admission;
mod cluster;
mod flow;
mod lifecycle;
mod listen;
mod ops;
mod parse;
mod push;
#[cfg(test)]
mod testing;

use std::ffi::OsString;
use std::net::SocketAddr;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

pub use admission::Admission;
pub use cluster::Cluster;
pub use flow::Flow;
pub use lifecycle::{Lifecycle, ReclaimPolicyArg};
pub use listen::{
    AcmeMode, ListenMode, DEVELOPMENT_ADDR, DEV_TLS_ADDR, DEV_TLS_CERT_OUT, LETS_ENCRYPT_DIRECTORY,
};
pub use ops::{LogFormat, Ops};
pub use push::{validate_project_id, FcmCredentials, Push, FCM_ENDPOINT};

use parse::invalid;

/// The environment variable that turns on the production refusals of §9.
pub const PRODUCTION_ENV: &str = "PYRYCODE_RELAY_PRODUCTION";

/// `relay-server`: the pyrycode WebSocket relay between desktop binaries and phones.
///
/// Every flag also reads `PYRYCODE_RELAY_<FLAG_IN_UPPER_SNAKE>`; the command line wins.
/// With no listener flag the relay runs in development mode on 127.0.0.1:8080.
#[derive(Debug, Clone, Parser)]
#[command(name = "relay-server", version)]
pub struct Cli {
    #[command(flatten)]
    pub listen: listen::ListenArgs,
    #[command(flatten)]
    pub lifecycle: lifecycle::LifecycleArgs,
    #[command(flatten)]
    pub flow: flow::FlowArgs,
    #[command(flatten)]
    pub admission: admission::AdmissionArgs,
    #[command(flatten)]
    pub ops: ops::OpsArgs,
    #[command(flatten)]
    pub push: push::PushArgs,
    #[command(flatten)]
    pub cluster: cluster::ClusterArgs,
}

/// The validated configuration. Durations, sizes and caps are never zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: ListenMode,
    pub lifecycle: Lifecycle,
    pub flow: Flow,
    pub admission: Admission,
    pub ops: Ops,
    /// `None`: push wake off (§4.4).
    pub push: Option<Push>,
    /// `None`: a single node (§11).
    pub cluster: Option<Cluster>,
}

impl Default for Config {
    /// What `relay-server` with no flags and no environment runs with (checked by a test).
    fn default() -> Self {
        Config {
            listen: ListenMode::Development(DEVELOPMENT_ADDR),
            lifecycle: Lifecycle::default(),
            flow: Flow::default(),
            admission: Admission::default(),
            ops: Ops {
                metrics_listen: Some(ops::DEFAULT_METRICS_ADDR),
                log_format: LogFormat::Text,
                shutdown_timeout: std::time::Duration::from_secs(10),
            },
            push: None,
            cluster: None,
        }
    }
}

/// Facts about the process that §9's production refusals and §11's default node id depend on,
/// injected so tests do not need to be root or touch the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootContext {
    /// `PYRYCODE_RELAY_PRODUCTION` is set to a true-ish value.
    pub production: bool,
    /// The effective user is root.
    pub is_root: bool,
    /// This machine's hostname (empty if unknown).
    pub hostname: String,
}

impl BootContext {
    /// Reads [`PRODUCTION_ENV`] from the process environment, the effective uid and the
    /// hostname.
    pub fn detect() -> Self {
        let lookup =
            |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
        let mut ctx = Self::from_lookup(lookup, effective_uid_is_root());
        ctx.hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        ctx
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
            hostname: String::new(),
        }
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
        let listen = listen::listen_mode(&cli.listen)?;
        let ops = ops::validate(&cli.ops)?;
        let lifecycle = lifecycle::validate(&cli.lifecycle)?;
        let flow = flow::validate(&cli.flow)?;
        let admission = admission::validate(&cli.admission)?;
        let push = push::validate(&cli.push, matches)?;
        let cluster = cluster::validate(&cli.cluster, ctx)?;

        if ctx.production {
            match listen {
                ListenMode::Development(_) | ListenMode::DevTls { .. } => {
                    return Err(BootError::ProductionDevelopmentMode)
                }
                ListenMode::Insecure(_) => return Err(BootError::ProductionInsecureListen),
                ListenMode::Tls { .. } | ListenMode::Acme(_) => {}
            }
            if ctx.is_root {
                return Err(BootError::ProductionRoot);
            }
        }

        Ok(Config {
            listen,
            lifecycle,
            flow,
            admission,
            ops,
            push,
            cluster,
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
            crate::logging::stderr_line(&format!("relay-server: {}", usage_line(&err)));
            std::process::exit(2)
        }
        Err(err) => {
            crate::logging::stderr_line(&format!("relay-server: {err}"));
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
mod tests;

//! Operations flags (protocol.md §10): the metrics listener, log format, shutdown timeout.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse::{duration, parse_duration, parse_listen_addr};
use super::BootError;

/// Where metrics are served unless `--metrics-listen` says otherwise (loopback only).
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Operations")]
pub struct OpsArgs {
    /// Prometheus /metrics listener; must be a loopback address, empty disables.
    #[arg(
        long,
        env = "PYRYCODE_RELAY_METRICS_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_listen: String,

    /// Log line format on stderr.
    #[arg(long, env = "PYRYCODE_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, how long to wait for connections to close before exiting.
    #[arg(long, env = "PYRYCODE_RELAY_SHUTDOWN_TIMEOUT", value_name = "DURATION",
          default_value = "10s", value_parser = parse_duration)]
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ops {
    /// `None` = no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub shutdown_timeout: Duration,
}

pub fn validate(args: &OpsArgs) -> Result<Ops, BootError> {
    Ok(Ops {
        metrics_listen: parse_metrics_listen(&args.metrics_listen)?,
        log_format: args.log_format,
        shutdown_timeout: duration("--shutdown-timeout", args.shutdown_timeout)?,
    })
}

/// Empty disables metrics; anything else must be a loopback `IP:PORT` (§10).
pub fn parse_metrics_listen(raw: &str) -> Result<Option<SocketAddr>, BootError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{err, ok};

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
        assert_eq!(ok(&["--metrics-listen", ""]).ops.metrics_listen, None);
    }
}

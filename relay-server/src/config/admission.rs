//! Admission flags (protocol.md §8): per-IP rate and connection limits, the global cap, the
//! per-server-id phone cap, pre-upgrade deadlines, and the relay-wide memory budget.

use std::time::Duration;

use clap::Args;

use super::parse::{duration, nonzero, parse_duration, parse_size};
use super::BootError;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Admission")]
pub struct AdmissionArgs {
    /// Upgrades allowed per client IP per minute.
    #[arg(
        long,
        env = "PYRYCODE_RELAY_RATE_LIMIT_PER_MINUTE",
        value_name = "N",
        default_value_t = 10
    )]
    pub rate_limit_per_minute: u32,

    /// Upgrades a client IP may make in a burst.
    #[arg(
        long,
        env = "PYRYCODE_RELAY_RATE_LIMIT_BURST",
        value_name = "N",
        default_value_t = 20
    )]
    pub rate_limit_burst: u32,

    /// Live connections allowed per client IP.
    #[arg(
        long,
        env = "PYRYCODE_RELAY_MAX_CONNECTIONS_PER_IP",
        value_name = "N",
        default_value_t = 64
    )]
    pub max_connections_per_ip: usize,

    /// IPv6 clients are limited per prefix of this length (one host owns a whole /64).
    #[arg(long, env = "PYRYCODE_RELAY_IPV6_PREFIX_LEN", value_name = "BITS", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(1..=128))]
    pub ipv6_prefix_len: u8,

    /// Use the left-most X-Forwarded-For entry as the client IP for admission limits.
    /// [default: off]
    #[arg(long, env = "PYRYCODE_RELAY_TRUST_X_FORWARDED_FOR",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub trust_x_forwarded_for: bool,

    /// Live connections allowed in total (503 over it).
    #[arg(
        long,
        env = "PYRYCODE_RELAY_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 10000
    )]
    pub max_connections: usize,

    /// Phones allowed per server-id (close 4429 over it).
    #[arg(
        long,
        env = "PYRYCODE_RELAY_PHONES_PER_SERVER",
        value_name = "N",
        default_value_t = 16
    )]
    pub phones_per_server: usize,

    /// Time a client has to send its request headers.
    #[arg(long, env = "PYRYCODE_RELAY_HEADER_READ_TIMEOUT", value_name = "DURATION",
          default_value = "5s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time from accept to a finished upgrade, TLS handshake included.
    #[arg(long, env = "PYRYCODE_RELAY_HANDSHAKE_TIMEOUT", value_name = "DURATION",
          default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Bytes held for peers relay-wide (partial messages, inboxes, outboxes, grace backlogs).
    #[arg(long, env = "PYRYCODE_RELAY_MAX_BUFFERED_BYTES", value_name = "SIZE",
          default_value = "1GiB", value_parser = parse_size)]
    pub max_buffered_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    pub max_connections_per_ip: usize,
    pub ipv6_prefix_len: u8,
    pub trust_x_forwarded_for: bool,
    pub max_connections: usize,
    pub phones_per_server: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_buffered_bytes: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            rate_limit_per_minute: 10,
            rate_limit_burst: 20,
            max_connections_per_ip: 64,
            ipv6_prefix_len: 64,
            trust_x_forwarded_for: false,
            max_connections: 10_000,
            phones_per_server: 16,
            header_read_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_buffered_bytes: 1 << 30,
        }
    }
}

pub fn validate(args: &AdmissionArgs) -> Result<Admission, BootError> {
    Ok(Admission {
        rate_limit_per_minute: nonzero("--rate-limit-per-minute", args.rate_limit_per_minute)?,
        rate_limit_burst: nonzero("--rate-limit-burst", args.rate_limit_burst)?,
        max_connections_per_ip: nonzero("--max-connections-per-ip", args.max_connections_per_ip)?,
        ipv6_prefix_len: args.ipv6_prefix_len,
        trust_x_forwarded_for: args.trust_x_forwarded_for,
        max_connections: nonzero("--max-connections", args.max_connections)?,
        phones_per_server: nonzero("--phones-per-server", args.phones_per_server)?,
        header_read_timeout: duration("--header-read-timeout", args.header_read_timeout)?,
        handshake_timeout: duration("--handshake-timeout", args.handshake_timeout)?,
        max_buffered_bytes: nonzero("--max-buffered-bytes", args.max_buffered_bytes)?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::usage_err;

    #[test]
    fn ipv6_prefix_len_is_1_to_128() {
        assert_eq!(usage_err(&["--ipv6-prefix-len", "0"]).exit_code(), 2);
        assert_eq!(usage_err(&["--ipv6-prefix-len", "129"]).exit_code(), 2);
    }

    #[test]
    fn negative_counts_are_usage_errors() {
        assert_eq!(usage_err(&["--max-connections", "-1"]).exit_code(), 2);
    }
}

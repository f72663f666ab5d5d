//! Flow control and liveness flags (protocol.md §7): message size, read deadline, heartbeat,
//! the phone outbox, the write timeout.

use std::time::Duration;

use clap::Args;

use super::parse::{duration, invalid, nonzero, parse_duration, parse_size};
use super::BootError;

/// Largest accepted `--max-message-size`: whole messages are buffered in memory, and the
/// binary-leg limit adds 1024 bytes to it.
const MAX_MESSAGE_SIZE_CAP: usize = 1 << 30;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Flow control and liveness")]
pub struct FlowArgs {
    /// Largest WebSocket message (bytes, or with a unit: 256KiB, 1MiB); the binary leg gets
    /// 1024 bytes more for the envelope.
    #[arg(long, env = "PYRYCODE_RELAY_MAX_MESSAGE_SIZE", value_name = "SIZE", default_value = "256KiB",
          value_parser = parse_size)]
    pub max_message_size: usize,

    /// Once a message starts arriving, all of it must arrive within this time.
    #[arg(long, env = "PYRYCODE_RELAY_MESSAGE_READ_TIMEOUT", value_name = "DURATION",
          default_value = "30s", value_parser = parse_duration)]
    pub message_read_timeout: Duration,

    /// How often every connection is pinged.
    #[arg(long, env = "PYRYCODE_RELAY_HEARTBEAT_INTERVAL", value_name = "DURATION",
          default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, env = "PYRYCODE_RELAY_HEARTBEAT_TIMEOUT", value_name = "DURATION",
          default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Byte budget of each phone's outbox; must be at least --max-message-size.
    #[arg(long, env = "PYRYCODE_RELAY_PHONE_OUTBOX_BYTES", value_name = "SIZE", default_value = "4MiB",
          value_parser = parse_size)]
    pub phone_outbox_bytes: usize,

    /// Longest a single write may block before the connection is closed.
    #[arg(long, env = "PYRYCODE_RELAY_WRITE_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_duration)]
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Phone leg limit; the binary leg allows 1024 bytes more (§7).
    pub max_message_size: usize,
    pub message_read_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// At least `max_message_size`, so one full-size message always fits.
    pub phone_outbox_bytes: usize,
    pub write_timeout: Duration,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            max_message_size: 256 * 1024,
            message_read_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(30),
            phone_outbox_bytes: 4 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
        }
    }
}

pub fn validate(args: &FlowArgs) -> Result<Flow, BootError> {
    let max_message_size = nonzero("--max-message-size", args.max_message_size)?;
    if max_message_size > MAX_MESSAGE_SIZE_CAP {
        return Err(invalid("--max-message-size", "must be at most 1GiB"));
    }
    let phone_outbox_bytes = nonzero("--phone-outbox-bytes", args.phone_outbox_bytes)?;
    // A smaller budget would close every phone that receives one full-size message.
    if phone_outbox_bytes < max_message_size {
        return Err(BootError::InvalidValue {
            flag: "--phone-outbox-bytes",
            reason: format!(
                "{phone_outbox_bytes} bytes is less than --max-message-size ({max_message_size} bytes)"
            ),
        });
    }
    Ok(Flow {
        max_message_size,
        message_read_timeout: duration("--message-read-timeout", args.message_read_timeout)?,
        heartbeat_interval: duration("--heartbeat-interval", args.heartbeat_interval)?,
        heartbeat_timeout: duration("--heartbeat-timeout", args.heartbeat_timeout)?,
        phone_outbox_bytes,
        write_timeout: duration("--write-timeout", args.write_timeout)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{err, ok};

    #[test]
    fn sizes_flow_into_the_config() {
        let config = ok(&["--max-message-size", "1MiB", "--phone-outbox-bytes", "8MiB"]);
        assert_eq!(config.flow.max_message_size, 1 << 20);
        assert_eq!(config.flow.phone_outbox_bytes, 8 << 20);
    }

    #[test]
    fn durations_accept_humantime_forms() {
        let config = ok(&[
            "--write-timeout",
            "2m",
            "--heartbeat-interval",
            "45s",
            "--message-read-timeout",
            "1m 30s",
        ]);
        assert_eq!(config.flow.write_timeout, Duration::from_secs(120));
        assert_eq!(config.flow.heartbeat_interval, Duration::from_secs(45));
        assert_eq!(config.flow.message_read_timeout, Duration::from_secs(90));
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
        assert_eq!(
            ok(&["--max-message-size", "1MiB", "--phone-outbox-bytes", "1MiB"])
                .flow
                .phone_outbox_bytes,
            1 << 20
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
}

//! Value syntax shared by every subsystem's flags: durations, byte sizes, listen addresses, and
//! the checks every number gets (not zero, not absurd).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::BootError;

/// Longest accepted duration. Nothing in the relay needs more than a day, and a cap keeps
/// `Instant + duration` far from overflowing (which panics).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

pub fn all_interfaces(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// `IP:PORT`, `[IPv6]:PORT`, or `:PORT` meaning every IPv4 interface (the documented `:443`).
pub fn parse_listen_addr(raw: &str) -> Result<SocketAddr, String> {
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

/// A listen address that an empty value turns off (`--http-listen ""`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

pub fn parse_optional_listen_addr(raw: &str) -> Result<OptionalAddr, String> {
    if raw.trim().is_empty() {
        return Ok(OptionalAddr(None));
    }
    parse_listen_addr(raw).map(|a| OptionalAddr(Some(a)))
}

/// humantime: `500ms`, `30s`, `2m`, `1h 30m`. A bare number is refused (unit required).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim()).map_err(|err| format!("{err} (examples: 500ms, 30s, 2m)"))
}

/// Byte counts: `262144`, `262144B`, `256KiB`, `1MiB`, `1GiB` (binary units, any case).
pub fn parse_size(raw: &str) -> Result<usize, String> {
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

pub fn duration(flag: &'static str, value: Duration) -> Result<Duration, BootError> {
    if value.is_zero() {
        return Err(invalid(flag, "must be greater than zero"));
    }
    if value > MAX_DURATION {
        return Err(invalid(flag, "must be at most 24h"));
    }
    Ok(value)
}

pub fn nonzero<N: Default + PartialEq>(flag: &'static str, value: N) -> Result<N, BootError> {
    if value == N::default() {
        return Err(invalid(flag, "must be greater than zero"));
    }
    Ok(value)
}

pub fn invalid(flag: &'static str, reason: &str) -> BootError {
    BootError::InvalidValue {
        flag,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{usage_err, v4};

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
    fn port_only_addresses_mean_all_ipv4_interfaces() {
        assert_eq!(parse_listen_addr(":80"), Ok(v4([0, 0, 0, 0], 80)));
        assert_eq!(parse_listen_addr(":0"), Ok(v4([0, 0, 0, 0], 0)));
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
        assert!(parse_listen_addr("[::]:443").is_ok());
        assert_eq!(usage_err(&["--insecure-listen", ":99999"]).exit_code(), 2);
    }

    #[test]
    fn an_empty_optional_address_is_off() {
        assert_eq!(parse_optional_listen_addr(""), Ok(OptionalAddr(None)));
        assert_eq!(
            parse_optional_listen_addr(":80"),
            Ok(OptionalAddr(Some(v4([0, 0, 0, 0], 80))))
        );
        assert!(parse_optional_listen_addr("nope").is_err());
    }
}

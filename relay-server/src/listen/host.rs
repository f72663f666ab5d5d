//! The Host check of the TLS modes (protocol.md §9): a request whose `Host`, port stripped and
//! compared case-insensitively, is not a name the relay serves gets 421 with an empty body.
//!
//! Owns parsing a `Host` header value into a name and the [`AllowedHosts`] seam: manual and
//! development certificates answer with their certificate's names ([`super::tls`]), ACME with
//! its one domain ([`DomainHost`]). It never looks at SNI (the resolver does) and never
//! decides anything about plain-HTTP modes, which have no Host check.

use std::fmt::Debug;
use std::net::IpAddr;

use rustls_pki_types::ServerName;

/// Which Host names one TLS listener serves. Implemented by the certificate resolvers.
pub trait AllowedHosts: Debug + Send + Sync {
    /// Whether `name` (lowercase, no port, no trailing dot) is served.
    fn allows(&self, name: &ServerName<'_>) -> bool;
}

/// ACME mode: exactly one domain (already lowercase, from `config::listen::validate_domain`).
#[derive(Debug, Clone)]
pub struct DomainHost(pub String);

impl AllowedHosts for DomainHost {
    fn allows(&self, name: &ServerName<'_>) -> bool {
        matches!(name, ServerName::DnsName(dns) if dns.as_ref() == self.0)
    }
}

/// Whether a request with these `Host` header values may go on. Exactly one value is
/// required: no Host, two Hosts, or one that does not parse are all "not a name we serve".
pub fn host_allowed<'a>(
    allowed: &dyn AllowedHosts,
    mut values: impl Iterator<Item = &'a [u8]>,
) -> bool {
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    match parse_host(value) {
        Some(name) => allowed.allows(&name),
        None => false,
    }
}

/// `Host` (RFC 9110 §7.2: `uri-host [ ":" port ]`) as a name: a DNS name lowercased without
/// a trailing dot, or an IP address (IPv6 only in brackets). `None` for anything else.
pub fn parse_host(value: &[u8]) -> Option<ServerName<'static>> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || is_port(after.strip_prefix(':')?)) {
            return None;
        }
        return inside
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| ServerName::IpAddress(IpAddr::V6(ip).into()));
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return None,
            None => value,
        }
    };
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return Some(ServerName::IpAddress(IpAddr::V4(ip).into()));
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    match ServerName::try_from(host).ok()? {
        // `ServerName::try_from` also accepts IP literals; those were handled above, and an
        // unbracketed IPv6 address has a colon and never gets here.
        name @ ServerName::DnsName(_) => Some(name),
        _ => None,
    }
}

fn is_port(s: &str) -> bool {
    // An empty port is allowed by RFC 3986 (`host:`) and means the default port.
    s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(s: &str) -> Option<ServerName<'static>> {
        Some(ServerName::try_from(s.to_owned()).unwrap())
    }

    #[test]
    fn port_and_case_and_trailing_dot_are_ignored() {
        for v in [
            "relay.example.com",
            "relay.example.com:443",
            "Relay.Example.COM",
            "RELAY.example.com.:8443",
            "relay.example.com:",
        ] {
            assert_eq!(parse_host(v.as_bytes()), dns("relay.example.com"), "{v}");
        }
    }

    #[test]
    fn ip_literals_are_addresses_and_ipv6_needs_brackets() {
        assert_eq!(
            parse_host(b"127.0.0.1:8443"),
            Some(ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into()))
        );
        let v6 = Some(ServerName::IpAddress(
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST).into(),
        ));
        assert_eq!(parse_host(b"[::1]:8443"), v6);
        assert_eq!(parse_host(b"[::1]"), v6);
        assert_eq!(parse_host(b"::1"), None);
        assert_eq!(parse_host(b"[::1]x"), None);
        assert_eq!(parse_host(b"[relay.example.com]"), None);
    }

    #[test]
    fn junk_is_no_name() {
        for v in [
            &b""[..],
            b":443",
            b"relay.example.com:https",
            b"relay.example.com:99999999",
            b"user@relay.example.com",
            b"relay.example.com/path",
            b"relay example.com",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_host(v), None, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn domain_host_refuses_suffix_attacks() {
        let allowed = DomainHost("relay.example.com".into());
        let check = |v: &str| host_allowed(&allowed, std::iter::once(v.as_bytes()));
        assert!(check("relay.example.com"));
        assert!(check("Relay.Example.Com:443"));
        assert!(!check("evil-relay.example.com"));
        assert!(!check("relay.example.com.evil.net"));
        assert!(!check("example.com"));
        assert!(!check("x.relay.example.com"));
        assert!(!check("127.0.0.1"));
    }

    #[test]
    fn missing_or_repeated_host_is_refused() {
        let allowed = DomainHost("relay.example.com".into());
        assert!(!host_allowed(&allowed, std::iter::empty()));
        let two = [&b"relay.example.com"[..], b"relay.example.com"];
        assert!(!host_allowed(&allowed, two.into_iter()));
    }
}

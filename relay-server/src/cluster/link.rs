//! The forwarding link's header (protocol.md §11): the PROXY v2 header a node puts before a
//! client's upgrade request when it forwards it to the holder, and the holder's check of it.
//!
//! Owns the header's layout, its HMAC and the reader the cluster listener runs first on every
//! connection. The header is a standard PROXY v2 `PROXY`/`STREAM` header (TCP over IPv4 or
//! IPv6; source = the client's address, destination = the address the client reached on the
//! forwarding node) with one custom TLV ([`AUTH_TLV`]) carrying a version byte, a timestamp
//! (Unix milliseconds, big-endian u64) and an HMAC-SHA256, keyed by the cluster secret, over
//! the header's command, family, addresses and that timestamp. The holder accepts it only if
//! the MAC verifies (constant time) and the timestamp is within [`MAX_SKEW`] of its clock.
//!
//! The reader takes exactly the header's bytes off the socket and nothing more, so what
//! follows (the upgrade request) is left for the HTTP server. On any failure it returns an
//! error and the caller closes the connection without writing a byte: an unauthenticated
//! peer learns nothing, not even that this is a relay. This file never logs what it
//! reads and never looks past the header.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ppp::v2::{Addresses, Builder, Command, Header, Protocol, Version};
use ring::hmac;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::secret::ClusterSecret;

/// The TLV type of the authenticator: in the range PROXY v2 reserves for applications
/// (`PP2_TYPE_MIN_CUSTOM`..`PP2_TYPE_MAX_CUSTOM`).
pub const AUTH_TLV: u8 = 0xE1;
/// Layout version of the TLV's value.
pub const AUTH_VERSION: u8 = 1;
/// How far the header's timestamp may be from the holder's clock, either way (§11: 30 s).
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// How long the cluster listener waits for the whole header.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const FIXED: usize = 16;
const MAC_LEN: usize = 32;
/// version + timestamp + MAC.
const AUTH_VALUE_LEN: usize = 1 + 8 + MAC_LEN;
/// IPv6 addresses (36) + our TLV (3 + 41) + room for a few no-op TLVs; anything longer is
/// not from a peer of ours, and is refused before it is read.
const MAX_PAYLOAD: usize = 256;
/// Binds the MAC to this use of the key.
const MAC_CONTEXT: &[u8] = b"pyrycode-relay cluster link v1\0";

/// What the holder learns from a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddrs {
    /// The client's address: its IP is the client IP for logs; per-IP limits were applied
    /// by the forwarding node (§11).
    pub source: SocketAddr,
    /// The address the client connected to on the forwarding node.
    pub destination: SocketAddr,
}

/// Why a connection on the cluster listener was refused. Whatever the reason, the caller
/// closes it with no bytes written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("no PROXY v2 signature")]
    NotProxyV2,
    #[error("PROXY v1 header")]
    V1,
    #[error("PROXY v2 LOCAL command")]
    Local,
    #[error("unsupported PROXY version or command")]
    BadCommand,
    #[error("unsupported address family or protocol (TCP over IPv4 or IPv6 only)")]
    BadFamily,
    #[error("header longer than a cluster link header can be")]
    TooLong,
    #[error("header ended early")]
    Truncated,
    #[error("malformed PROXY v2 header")]
    Malformed,
    #[error("no authenticator TLV")]
    MissingAuth,
    #[error("authenticator TLV malformed")]
    BadAuth,
    #[error("authenticator does not verify")]
    BadMac,
    #[error("timestamp outside the accepted window")]
    Stale,
    #[error("header did not arrive in time")]
    Deadline,
    #[error("connection error: {0:?}")]
    Io(std::io::ErrorKind),
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// PROXY v2 carries one family for both addresses: a mixed pair goes as IPv6, the IPv4
/// side mapped (`::ffff:a.b.c.d`).
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (v6(source), v6(destination))
    }
}

fn mac_input(command_family: [u8; 2], addresses: &[u8], timestamp_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(MAC_CONTEXT.len() + 2 + addresses.len() + 9);
    m.extend_from_slice(MAC_CONTEXT);
    m.extend_from_slice(&command_family);
    m.extend_from_slice(addresses);
    m.push(AUTH_VERSION);
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m
}

/// The header node A sends before the client's bytes.
pub fn encode(
    secret: &ClusterSecret,
    source: SocketAddr,
    destination: SocketAddr,
    timestamp_ms: u64,
) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let addresses: Addresses = (source, destination).into();
    // The header without the TLV, to take the MAC over exactly the bytes that go out.
    let bare = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
        .build()
        .unwrap_or_default();
    let addr_bytes = bare.get(FIXED..).unwrap_or_default();
    let input = mac_input([bare[12], bare[13]], addr_bytes, timestamp_ms);
    let tag = hmac::sign(secret.key(), &input);
    let mut value = Vec::with_capacity(AUTH_VALUE_LEN);
    value.push(AUTH_VERSION);
    value.extend_from_slice(&timestamp_ms.to_be_bytes());
    value.extend_from_slice(tag.as_ref());
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
        .write_tlv(AUTH_TLV, &value)
        .and_then(Builder::build)
        // Addresses and one 41-byte TLV always fit the u16 length.
        .unwrap_or_default()
}

/// Checks the 16 fixed bytes; returns the length of the rest of the header.
fn check_fixed(fixed: &[u8]) -> Result<usize, LinkError> {
    if fixed.starts_with(b"PROXY ") {
        return Err(LinkError::V1);
    }
    let n = fixed.len().min(SIGNATURE.len());
    if fixed[..n] != SIGNATURE[..n] {
        return Err(LinkError::NotProxyV2);
    }
    if fixed.len() < FIXED {
        return Err(LinkError::Truncated);
    }
    match fixed[12] {
        0x21 => {}
        0x20 => return Err(LinkError::Local),
        _ => return Err(LinkError::BadCommand),
    }
    // TCP over IPv4 (0x11) or IPv6 (0x21); UNSPEC, UNIX and UDP are not links.
    let addr_len = match fixed[13] {
        0x11 => 12,
        0x21 => 36,
        _ => return Err(LinkError::BadFamily),
    };
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_PAYLOAD {
        return Err(LinkError::TooLong);
    }
    if len < addr_len {
        return Err(LinkError::Malformed);
    }
    Ok(len)
}

/// Parses and verifies one header at the start of `input`, against `now_ms` (Unix ms).
/// Returns what it carries and how many bytes it took. Pure: the fuzz target drives it.
pub fn parse(
    secret: &ClusterSecret,
    input: &[u8],
    now_ms: u64,
) -> Result<(LinkAddrs, usize), LinkError> {
    let len = check_fixed(&input[..input.len().min(FIXED)])?;
    let total = FIXED + len;
    if input.len() < total {
        return Err(LinkError::Truncated);
    }
    let header = Header::try_from(&input[..total]).map_err(|_| LinkError::Malformed)?;
    let (source, destination) = match header.addresses {
        Addresses::IPv4(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        Addresses::IPv6(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        _ => return Err(LinkError::BadFamily),
    };
    let mut auth = None;
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|_| LinkError::Malformed)?;
        if tlv.kind == AUTH_TLV {
            if auth.is_some() {
                return Err(LinkError::BadAuth);
            }
            auth = Some(tlv.value);
        }
    }
    let auth = auth.ok_or(LinkError::MissingAuth)?;
    if auth.len() != AUTH_VALUE_LEN || auth[0] != AUTH_VERSION {
        return Err(LinkError::BadAuth);
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&auth[1..9]);
    let timestamp_ms = u64::from_be_bytes(ts);
    let input_mac = mac_input([input[12], input[13]], header.address_bytes(), timestamp_ms);
    hmac::verify(secret.key(), &input_mac, &auth[9..]).map_err(|_| LinkError::BadMac)?;
    let skew = MAX_SKEW.as_millis() as u64;
    if now_ms.abs_diff(timestamp_ms) > skew {
        return Err(LinkError::Stale);
    }
    Ok((
        LinkAddrs {
            source,
            destination,
        },
        total,
    ))
}

/// The cluster listener's first step on every connection: reads exactly one header
/// (within `deadline`) and verifies it. The bytes after it stay unread in `io`.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
    secret: &ClusterSecret,
    deadline: Duration,
) -> Result<LinkAddrs, LinkError> {
    let read = async {
        let mut buf = [0u8; FIXED + MAX_PAYLOAD];
        read_exactly(io, &mut buf[..FIXED]).await?;
        let len = check_fixed(&buf[..FIXED])?;
        read_exactly(io, &mut buf[FIXED..FIXED + len]).await?;
        parse(secret, &buf[..FIXED + len], unix_ms_now()).map(|(addrs, _)| addrs)
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| LinkError::Deadline)?
}

async fn read_exactly<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) -> Result<(), LinkError> {
    match io.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(LinkError::Truncated),
        Err(e) => Err(LinkError::Io(e.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_750_000_000_000;

    fn key(b: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[b; 32]).unwrap()
    }

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "203.0.113.7:51234".parse().unwrap(),
            "198.51.100.2:443".parse().unwrap(),
        )
    }

    #[test]
    fn a_valid_header_round_trips_its_addresses_and_length() {
        let (s, d) = addrs();
        let mut h = encode(&key(1), s, d, NOW);
        let len = h.len();
        h.extend_from_slice(b"GET /v1/server HTTP/1.1\r\n");
        let (got, used) = parse(&key(1), &h, NOW).unwrap();
        assert_eq!(
            got,
            LinkAddrs {
                source: s,
                destination: d
            }
        );
        assert_eq!(used, len);
        let v6s: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let v6d: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        let h = encode(&key(1), v6s, v6d, NOW);
        assert_eq!(parse(&key(1), &h, NOW).unwrap().0.source, v6s);
        // Mixed families travel as IPv6, the IPv4 side mapped.
        let h = encode(&key(1), s, v6d, NOW);
        let got = parse(&key(1), &h, NOW).unwrap().0;
        assert_eq!(got.source.port(), s.port());
        assert_eq!(
            got.source.ip(),
            IpAddr::V6("::ffff:203.0.113.7".parse().unwrap())
        );
    }

    #[test]
    fn a_header_made_with_another_key_is_refused() {
        let (s, d) = addrs();
        let h = encode(&key(2), s, d, NOW);
        assert_eq!(parse(&key(1), &h, NOW), Err(LinkError::BadMac));
    }

    #[test]
    fn timestamps_more_than_30_s_off_either_way_are_refused() {
        let (s, d) = addrs();
        let k = key(1);
        let skew = MAX_SKEW.as_millis() as u64;
        assert!(parse(&k, &encode(&k, s, d, NOW - skew), NOW).is_ok());
        assert!(parse(&k, &encode(&k, s, d, NOW + skew), NOW).is_ok());
        assert_eq!(
            parse(&k, &encode(&k, s, d, NOW - skew - 1), NOW),
            Err(LinkError::Stale)
        );
        assert_eq!(
            parse(&k, &encode(&k, s, d, NOW + skew + 1), NOW),
            Err(LinkError::Stale)
        );
    }

    #[test]
    fn any_tampered_byte_of_addresses_or_timestamp_is_refused() {
        let (s, d) = addrs();
        let k = key(1);
        let h = encode(&k, s, d, NOW);
        // Addresses are bytes 16..28; the TLV value's timestamp follows the TLV head.
        let ts_at = h.len() - AUTH_VALUE_LEN + 1;
        for i in (16..28).chain(ts_at..ts_at + 8).chain(h.len() - 1..h.len()) {
            let mut t = h.clone();
            t[i] ^= 0x01;
            assert_eq!(parse(&k, &t, NOW), Err(LinkError::BadMac), "byte {i}");
        }
        // The command/family bytes are covered too: switching to another valid family fails
        // on structure; the MAC covers them anyway.
        let mut t = h.clone();
        t[13] = 0x12; // UDP
        assert_eq!(parse(&k, &t, NOW), Err(LinkError::BadFamily));
    }

    #[test]
    fn a_header_without_the_authenticator_is_refused() {
        let (s, d) = addrs();
        let bare = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (s, d))
            .build()
            .unwrap();
        assert_eq!(parse(&key(1), &bare, NOW), Err(LinkError::MissingAuth));
        let other =
            Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (s, d))
                .write_tlv(0x04u8, &[0; 4])
                .unwrap()
                .build()
                .unwrap();
        assert_eq!(parse(&key(1), &other, NOW), Err(LinkError::MissingAuth));
        let short =
            Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (s, d))
                .write_tlv(AUTH_TLV, &[AUTH_VERSION; 9])
                .unwrap()
                .build()
                .unwrap();
        assert_eq!(parse(&key(1), &short, NOW), Err(LinkError::BadAuth));
    }

    #[test]
    fn v1_local_unspec_and_garbage_are_refused() {
        let k = key(1);
        assert_eq!(
            parse(&k, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", NOW),
            Err(LinkError::V1)
        );
        assert_eq!(
            parse(&k, b"GET /v1/server HTTP/1.1\r\n\r\n", NOW),
            Err(LinkError::NotProxyV2)
        );
        let (s, d) = addrs();
        let mut local = encode(&k, s, d, NOW);
        local[12] = 0x20;
        assert_eq!(parse(&k, &local, NOW), Err(LinkError::Local));
        let mut unspec = encode(&k, s, d, NOW);
        unspec[13] = 0x00;
        assert_eq!(parse(&k, &unspec, NOW), Err(LinkError::BadFamily));
        let mut long = encode(&k, s, d, NOW);
        long[14..16].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(parse(&k, &long, NOW), Err(LinkError::TooLong));
    }

    #[test]
    fn every_truncation_is_refused() {
        let (s, d) = addrs();
        let k = key(1);
        let h = encode(&k, s, d, NOW);
        for cut in 0..h.len() {
            assert_eq!(
                parse(&k, &h[..cut], NOW),
                Err(LinkError::Truncated),
                "{cut}"
            );
        }
    }

    #[tokio::test]
    async fn the_reader_takes_exactly_the_header_and_leaves_the_request() {
        let (s, d) = addrs();
        let k = key(1);
        let mut bytes = encode(&k, s, d, unix_ms_now());
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let mut io = &bytes[..];
        let got = read_header(&mut io, &k, HEADER_DEADLINE).await.unwrap();
        assert_eq!(got.source, s);
        assert_eq!(io, b"GET / HTTP/1.1\r\n\r\n");
        let mut short = &bytes[..20];
        assert_eq!(
            read_header(&mut short, &k, HEADER_DEADLINE).await,
            Err(LinkError::Truncated)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_hits_the_header_deadline() {
        let (mut a, _b) = tokio::io::duplex(64);
        let r = read_header(&mut a, &key(1), HEADER_DEADLINE).await;
        assert_eq!(r, Err(LinkError::Deadline));
    }
}

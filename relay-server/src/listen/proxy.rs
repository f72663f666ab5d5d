//! PROXY protocol v2 on the TLS listener (`--https-proxy-protocol`, protocol.md §9).
//!
//! Owns reading the header a TCP proxy (Fly, HAProxy, an AWS NLB) puts before the TLS
//! ClientHello and turning it into the client's address, which from then on is the
//! connection's `remote` everywhere (logs, §8 admission). Framing is done here (16 fixed bytes,
//! then exactly the announced length, so not one byte of the ClientHello is consumed); the
//! parsing and validation are the `ppp` crate's. It never writes: a connection whose header is
//! missing, late, v1, LOCAL, not TCP over IPv4/IPv6, or garbage is closed with zero bytes
//! written, so a scanner learns nothing.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{Addresses, Command, Header, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a connection may take to send its whole PROXY header (§9).
pub const PROXY_HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// The v2 signature, the first 12 bytes of every v2 header.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Largest address + TLV block accepted. IPv6 addresses take 36 bytes; the rest is TLVs
/// (AWS and GCP add a few dozen bytes); 4 KiB leaves room without letting a client make us
/// buffer 64 KiB per connection.
const MAX_PAYLOAD: usize = 4096;

/// Why a connection was refused before its TLS handshake.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY v2 header within {0:?}")]
    Timeout(Duration),
    #[error("connection ended inside the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PROXY v2 header (v1, or not PROXY protocol at all)")]
    NotV2,
    #[error("PROXY v2 address block of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLong(usize),
    #[error("malformed PROXY v2 header: {0}")]
    Malformed(String),
    #[error("PROXY v2 LOCAL command: no client address (health checks go to /healthz directly)")]
    Local,
    #[error("PROXY v2 header without a TCP client address (UNSPEC, UNIX or UDP)")]
    NoTcpSource,
}

/// Reads the header within [`PROXY_HEADER_DEADLINE`] and returns the client's address.
pub async fn read_source<S: AsyncRead + Unpin>(stream: &mut S) -> Result<SocketAddr, ProxyError> {
    tokio::time::timeout(PROXY_HEADER_DEADLINE, read_header(stream))
        .await
        .map_err(|_| ProxyError::Timeout(PROXY_HEADER_DEADLINE))?
}

async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<SocketAddr, ProxyError> {
    let mut fixed = [0u8; 16];
    // The signature first: a v1 header ("PROXY TCP4 ...") or a bare ClientHello differs
    // within its first bytes, and is refused without waiting for 16 of them.
    stream.read_exact(&mut fixed[..SIGNATURE.len()]).await?;
    if &fixed[..SIGNATURE.len()] != SIGNATURE {
        return Err(ProxyError::NotV2);
    }
    stream.read_exact(&mut fixed[SIGNATURE.len()..]).await?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_PAYLOAD {
        return Err(ProxyError::TooLong(len));
    }
    let mut header = Vec::with_capacity(16 + len);
    header.extend_from_slice(&fixed);
    header.resize(16 + len, 0);
    stream.read_exact(&mut header[16..]).await?;
    source_of(&header)
}

/// The client address of one complete v2 header.
pub fn source_of(bytes: &[u8]) -> Result<SocketAddr, ProxyError> {
    let header = Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.command == Command::Local {
        return Err(ProxyError::Local);
    }
    if header.protocol != Protocol::Stream {
        return Err(ProxyError::NoTcpSource);
    }
    match header.addresses {
        Addresses::IPv4(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => Err(ProxyError::NoTcpSource),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::Builder;

    fn v2(command: Command, protocol: Protocol, addrs: impl Into<Addresses>) -> Vec<u8> {
        let cmd = match command {
            Command::Local => 0x20,
            Command::Proxy => 0x21,
        };
        Builder::with_addresses(cmd, protocol, addrs)
            .build()
            .unwrap()
    }

    fn pair(src: &str, dst: &str) -> (SocketAddr, SocketAddr) {
        (src.parse().unwrap(), dst.parse().unwrap())
    }

    async fn read(bytes: &[u8]) -> Result<SocketAddr, ProxyError> {
        let mut r = bytes;
        read_source(&mut r).await
    }

    #[tokio::test]
    async fn v2_proxy_over_tcp4_and_tcp6_gives_the_source_address() {
        let h = v2(
            Command::Proxy,
            Protocol::Stream,
            pair("203.0.113.7:4242", "10.0.0.1:443"),
        );
        assert_eq!(read(&h).await.unwrap(), "203.0.113.7:4242".parse().unwrap());
        let h = v2(
            Command::Proxy,
            Protocol::Stream,
            pair("[2001:db8::7]:4242", "[2001:db8::1]:443"),
        );
        assert_eq!(
            read(&h).await.unwrap(),
            "[2001:db8::7]:4242".parse().unwrap()
        );
    }

    #[tokio::test]
    async fn exactly_the_header_is_consumed() {
        let mut bytes = v2(
            Command::Proxy,
            Protocol::Stream,
            pair("203.0.113.7:1", "10.0.0.1:443"),
        );
        bytes.extend_from_slice(b"\x16\x03\x01 client hello");
        let mut r = &bytes[..];
        read_source(&mut r).await.unwrap();
        assert_eq!(r, b"\x16\x03\x01 client hello");
    }

    #[tokio::test]
    async fn v1_local_unspec_udp_and_garbage_are_refused() {
        assert!(matches!(
            read(b"PROXY TCP4 203.0.113.7 10.0.0.1 4242 443\r\n").await,
            Err(ProxyError::NotV2)
        ));
        assert!(matches!(
            read(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03xxxxxxxx").await,
            Err(ProxyError::NotV2)
        ));
        let local = v2(
            Command::Local,
            Protocol::Stream,
            pair("203.0.113.7:1", "10.0.0.1:443"),
        );
        assert!(matches!(read(&local).await, Err(ProxyError::Local)));
        let udp = v2(
            Command::Proxy,
            Protocol::Datagram,
            pair("203.0.113.7:1", "10.0.0.1:443"),
        );
        assert!(matches!(read(&udp).await, Err(ProxyError::NoTcpSource)));
        let unspec = v2(
            Command::Proxy,
            Protocol::Unspecified,
            Addresses::Unspecified,
        );
        assert!(matches!(read(&unspec).await, Err(ProxyError::NoTcpSource)));
        let mut bad_version = v2(
            Command::Proxy,
            Protocol::Stream,
            pair("203.0.113.7:1", "10.0.0.1:443"),
        );
        bad_version[12] = 0x11;
        assert!(matches!(
            read(&bad_version).await,
            Err(ProxyError::Malformed(_))
        ));
        let mut huge = SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(read(&huge).await, Err(ProxyError::TooLong(65535))));
        let mut short = v2(
            Command::Proxy,
            Protocol::Stream,
            pair("203.0.113.7:1", "10.0.0.1:443"),
        );
        short.truncate(20);
        assert!(matches!(read(&short).await, Err(ProxyError::Io(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_header_is_cut_at_five_seconds() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, &SIGNATURE[..6])
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let r = read_source(&mut server).await;
        assert!(matches!(r, Err(ProxyError::Timeout(_))), "{r:?}");
        assert_eq!(started.elapsed(), PROXY_HEADER_DEADLINE);
        drop(client);
    }
}

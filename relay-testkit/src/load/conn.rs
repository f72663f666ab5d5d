//! One client WebSocket connection of the load generator: the HTTP/1.1 upgrade, written by hand
//! over TCP (or TLS, for an address registered with `crate::tls`, as `relay-load --tls-ca`
//! does), and the errors a connection attempt can end in, each phrased so the person running
//! the load knows what to change.
//!
//! Why by hand: it keeps a plain socket a `TcpStream` that splits into owned halves (no lock
//! between the reader and writer tasks of an open-loop phone) and costs one write and one read
//! per connection. Over TLS the client halves share `tokio::io::split`'s lock: the same cost for
//! the relay and for the echo baseline it is compared with. Strict handshake checking is
//! `crate::client`'s job, not this one's.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use fastwebsockets::{FragmentCollector, FragmentCollectorRead, Role, WebSocket, WebSocketWrite};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Join};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::tls::ClientStream;

/// The reading half of a load connection: a plain socket's own half, or a TLS stream's.
pub type ReadHalf = Either<OwnedReadHalf, tokio::io::ReadHalf<TlsStream<TcpStream>>>;

/// The writing half of a load connection.
pub type WriteHalf = Either<OwnedWriteHalf, tokio::io::WriteHalf<TlsStream<TcpStream>>>;

fn split(stream: ClientStream) -> (ReadHalf, WriteHalf) {
    match stream {
        ClientStream::Plain(s) => {
            let (r, w) = s.into_split();
            (Either::Left(r), Either::Left(w))
        }
        ClientStream::Tls(s) => {
            let (r, w) = tokio::io::split(*s);
            (Either::Right(r), Either::Right(w))
        }
    }
}

/// How long one connect + upgrade may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a polite close waits for the server's close reply.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The response head is tiny (a 101 with three headers); anything bigger is not a WebSocket server.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Small on purpose: it only holds the response head. Afterwards fastwebsockets reads with
/// buffers at least this big, which `BufReader` passes straight through to the socket.
const HEAD_BUFFER: usize = 512;

/// The read side after the upgrade. The `BufReader` keeps any frame bytes that arrived together
/// with the response head (a relay that closes a phone 4404 at once sends both in one segment).
pub type ReadStream = BufReader<ReadHalf>;

/// A whole connection, for tasks that read and write from one place.
pub type Ws = FragmentCollector<Join<ReadStream, WriteHalf>>;

/// An upgraded connection not yet committed to one task or two.
pub struct Upgraded {
    read: ReadStream,
    write: WriteHalf,
}

impl Upgraded {
    /// One task reads and writes (closed-loop phones, fake binaries, idle connections).
    pub fn into_ws(self) -> Ws {
        let joined = tokio::io::join(self.read, self.write);
        FragmentCollector::new(WebSocket::after_handshake(joined, Role::Client))
    }

    /// A reader task and a writer task (open-loop phones, which send on a clock, not on replies).
    pub fn into_split(self) -> (FragmentCollectorRead<ReadStream>, WebSocketWrite<WriteHalf>) {
        let (read, write) =
            fastwebsockets::after_handshake_split(self.read, self.write, Role::Client);
        (FragmentCollectorRead::new(read), write)
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused by {addr}: is the server running and listening there?")]
    Refused { addr: SocketAddr },
    #[error(
        "out of file descriptors in relay-load ({source}; soft limit {soft}, hard limit {hard}): \
         raise the limit, e.g. `ulimit -n {suggest}` (as root, or after raising the hard limit), \
         then run again"
    )]
    FdLimit {
        source: io::Error,
        soft: u64,
        hard: u64,
        suggest: u64,
    },
    #[error(
        "out of local TCP ports ({source}): use fewer connections or widen \
         net.ipv4.ip_local_port_range"
    )]
    PortsExhausted { source: io::Error },
    #[error(
        "connect or upgrade to {addr} took longer than {:?}: server overloaded or its accept \
         backlog full",
        CONNECT_TIMEOUT
    )]
    Timeout { addr: SocketAddr },
    #[error("server answered the upgrade with HTTP {status}: {}", http_status_hint(*.status))]
    Status { status: u16 },
    #[error(
        "server closed the connection during the upgrade: it may be out of file descriptors \
         (check its `ulimit -n`) or not be a WebSocket server"
    )]
    ClosedDuringUpgrade,
    #[error("server sent a malformed HTTP response to the upgrade")]
    BadResponse,
    #[error("I/O error talking to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

/// What an HTTP refusal of the upgrade means at the relay (§2, §8).
fn http_status_hint(status: u16) -> &'static str {
    match status {
        400 => "a header was rejected (§2 header rules)",
        404 => "wrong path: is this the relay? (use --direct for the echo server)",
        421 => "Host not accepted: the relay is in --domain mode",
        429 => "per-IP limit; start the relay with higher --rate-limit-per-minute/--rate-limit-burst and --max-connections-per-ip",
        503 => "the relay's global --max-connections cap is reached",
        _ => "unexpected status",
    }
}

/// What a close code received from the relay means, for error messages (§5).
pub fn close_code_hint(code: u16) -> &'static str {
    match code {
        1000 => "normal close",
        1001 => "relay shutting down",
        1007 => "relay says the frame is not JSON",
        1008 => "message too slow",
        1009 => "message too big: lower --size or raise the relay's --max-message-size",
        1011 => "relay-side failure (heartbeat timeout, phone backlog full, write timeout, or grace expired)",
        4404 => "no binary holds this server-id",
        4409 => "server-id already claimed by another binary",
        4429 => "too many phones for one server-id: raise the relay's --phones-per-server or use more --binaries",
        _ => "unexpected close code",
    }
}

/// The status code of a received close frame, if it carries one.
pub fn close_code_of(payload: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]))
}

/// Describes a close the load generator did not ask for.
pub fn unexpected_close(payload: &[u8]) -> String {
    match close_code_of(payload) {
        Some(code) => format!(
            "closed by the server with {code} ({})",
            close_code_hint(code)
        ),
        None => "closed by the server without a status code".to_owned(),
    }
}

/// Ends a connection politely: close 1000, then wait (briefly) for the server's close reply so
/// neither side logs a reset.
pub async fn close(ws: &mut Ws) {
    let handshake = async {
        ws.write_frame(fastwebsockets::Frame::close(1000, b""))
            .await?;
        loop {
            if ws.read_frame().await?.opcode == fastwebsockets::OpCode::Close {
                return Ok::<(), fastwebsockets::WebSocketError>(());
            }
        }
    };
    // Whatever goes wrong here happens after the measurement: nothing to report.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
}

/// Classifies an I/O error from connecting or upgrading.
fn io_error(addr: SocketAddr, source: io::Error) -> ConnectError {
    match source.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            let (soft, hard) = super::sys::nofile_limit().unwrap_or((0, 0));
            ConnectError::FdLimit {
                source,
                soft,
                hard,
                suggest: (soft.max(1024) * 4).max(30_000),
            }
        }
        Some(libc::EADDRNOTAVAIL) => ConnectError::PortsExhausted { source },
        _ => match source.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused { addr },
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => ConnectError::ClosedDuringUpgrade,
            _ => ConnectError::Io { addr, source },
        },
    }
}

/// Connects to `addr` and upgrades `path` with the extra request `headers`.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Upgraded, ConnectError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(addr, path, headers)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { addr }),
    }
}

async fn connect_inner(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Upgraded, ConnectError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| io_error(addr, e))?;
    // Load messages are small and latency is the measurement: never let Nagle hold one back.
    stream.set_nodelay(true).map_err(|e| io_error(addr, e))?;
    let stream = crate::tls::wrap(stream, addr)
        .await
        .map_err(|e| io_error(addr, e))?;
    let (read, mut write) = split(stream);

    let request = upgrade_request(addr, path, headers);
    write
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_error(addr, e))?;

    let mut read = BufReader::with_capacity(HEAD_BUFFER, read);
    let mut line = Vec::with_capacity(128);
    let mut head_len = 0;
    let mut status = None;
    loop {
        line.clear();
        let n = read
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| io_error(addr, e))?;
        if n == 0 {
            return Err(ConnectError::ClosedDuringUpgrade);
        }
        head_len += n;
        if head_len > MAX_RESPONSE_HEAD {
            return Err(ConnectError::BadResponse);
        }
        match status {
            None => status = Some(parse_status_line(&line).ok_or(ConnectError::BadResponse)?),
            Some(_) if line == b"\r\n" || line == b"\n" => break,
            Some(_) => {}
        }
    }
    match status {
        Some(101) => Ok(Upgraded { read, write }),
        Some(status) => Err(ConnectError::Status { status }),
        None => Err(ConnectError::BadResponse),
    }
}

fn upgrade_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
        fastwebsockets::handshake::generate_key()
    );
    for (name, value) in headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// `HTTP/1.1 101 Switching Protocols` → 101.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Plain `GET /healthz` and the `connected_binaries` it reports, or `None` if the server has no
/// such endpoint (the echo server, an older relay) or answers something else.
pub async fn healthz_binaries(addr: SocketAddr) -> Option<u64> {
    use tokio::io::AsyncReadExt;
    let fetch = async {
        let mut stream = crate::tls::connect(addr).await.ok()?;
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut body = Vec::with_capacity(512);
        stream.read_to_end(&mut body).await.ok()?;
        Some(body)
    };
    let resp = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()??;
    if parse_status_line(&resp)? != 200 {
        return None;
    }
    let start = resp.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let body: serde_json::Value = serde_json::from_slice(&resp[start..]).ok()?;
    body.get("connected_binaries")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 101 Switching Protocols\r\n"),
            Some(101)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 429 Too Many Requests\r\n"),
            Some(429)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 200\r\n"), Some(200));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 1x1 Nope\r\n"), None);
    }

    #[test]
    fn upgrade_request_carries_the_given_headers() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let req = upgrade_request(addr, "/v1/client", &[("X-Pyrycode-Server", "load-1")]);
        assert!(req.starts_with("GET /v1/client HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(req.contains("\r\nX-Pyrycode-Server: load-1\r\n"));
        assert!(req.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn fd_exhaustion_says_how_to_raise_the_limit() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let err = io_error(addr, io::Error::from_raw_os_error(libc::EMFILE));
        let text = err.to_string();
        assert!(text.contains("ulimit -n"), "{text}");
    }

    #[tokio::test]
    async fn unreachable_server_is_refused_clearly() {
        // Bind then drop to get a port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = connect(addr, "/v1/client", &[])
            .await
            .err()
            .expect("must fail");
        assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
    }
}

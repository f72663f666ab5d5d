//! A raw TCP WebSocket client that can misbehave on purpose.
//!
//! [`RawClient`] writes the HTTP upgrade by hand and frames RFC 6455 client messages itself
//! (masked, as a client must), so a test controls every byte: half a frame and then a stall
//! (read deadline, 1008), continuation frames (reassembly and the size limit, 1009), pings that
//! are never answered (heartbeat, 1011), a socket that is never read (phone backlog, 1011).
//!
//! It owns the bytes on the wire and nothing else: it never writes unless a method is called
//! (so it never answers pings on its own) and never reads unless a method is called (so the
//! peer's writes back up in the kernel buffers). Every method that waits has a timeout.
//!
//! The HTTP upgrade helpers here ([`upgrade_request`], [`HttpResponse`]) are also used by
//! [`crate::client`], which hands the upgraded stream to tokio-tungstenite.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::tls::ClientStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// How long a [`RawClient`] call waits before it fails with [`RawError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response head we accept; a relay never sends more than a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;

/// Largest frame payload we buffer; far above the relay's limits, low enough to fail loudly.
const MAX_PAYLOAD: u64 = 256 * 1024 * 1024;

/// What went wrong in a [`RawClient`] call or a hand-written upgrade.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The socket failed (connect refused, reset by peer, broken pipe...).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// Nothing (or not enough) arrived, or a write stayed blocked, for `after`.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What the call was waiting for.
        what: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// The server answered the upgrade with something other than 101 (400, 404, 429, 503...).
    #[error("upgrade refused: {}", .0.status_line)]
    Refused(HttpResponse),
    /// The server answered 101 but the response is not a valid WebSocket upgrade, or the
    /// response is not parseable HTTP.
    #[error("bad handshake: {0}")]
    Handshake(String),
    /// The peer closed the TCP stream (no more bytes will come).
    #[error("peer closed the TCP stream")]
    Eof,
    /// The peer sent bytes that are not valid RFC 6455 server framing.
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
    /// A data message was expected but the peer sent a close frame.
    #[error("peer closed the WebSocket with {code} {reason:?}")]
    Closed {
        /// The close code (1005 when the close frame had no status code).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Something arrived that the call did not expect (described).
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl RawError {
    /// The HTTP status of a refused upgrade, so a test can `assert_eq!(err.status(), Some(429))`.
    pub fn status(&self) -> Option<u16> {
        match self {
            RawError::Refused(response) => Some(response.status),
            _ => None,
        }
    }
}

/// An HTTP response head (and, for a refused upgrade, its body) as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The numeric status, e.g. 101 or 400.
    pub status: u16,
    /// The whole status line without CRLF, e.g. `HTTP/1.1 400 Bad Request`.
    pub status_line: String,
    /// Header fields in the order received; values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body of a refused upgrade (per Content-Length, chunked, or up to EOF). Always empty
    /// for a 101. Tests assert the contract's "empty body" with `body.is_empty()`.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive), e.g. to check that a 101 carries no
    /// `Sec-WebSocket-Extensions` (the relay offers no permessage-deflate).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body length, the number tests compare with 0 for 400/429/503 refusals.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

/// Builds a WebSocket upgrade request: `GET {path}`, `Host`, `Upgrade`, `Connection`,
/// `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`, then `headers` in order, verbatim.
///
/// A default header whose name also appears in `headers` is left out, so a test can replace
/// `Host` (421 tests) or send a wrong `Sec-WebSocket-Version`. Values are raw bytes so a test can
/// send non-UTF-8 (an invalid `X-Pyrycode-Device-Name` must get 400). Returns the request bytes
/// and the key, which [`RawClient`] checks against `Sec-WebSocket-Accept`. Tests that want to
/// send only part of a request (header read timeout) write a prefix of these bytes themselves.
pub fn upgrade_request(host: &str, path: &str, headers: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("x-pyrycode-token") || name.eq_ignore_ascii_case("user-agent")
        {
            crate::secrets::header(value);
        }
    }
    let key = generate_key();
    let defaults: [(&str, &[u8]); 5] = [
        ("Host", host.as_bytes()),
        ("Upgrade", b"websocket"),
        ("Connection", b"Upgrade"),
        ("Sec-WebSocket-Key", key.as_bytes()),
        ("Sec-WebSocket-Version", b"13"),
    ];
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let overridden = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    for (name, value) in defaults
        .iter()
        .filter(|(n, _)| !overridden(n))
        .chain(headers)
    {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, key)
}

/// Writes `request` and reads the response. On 101 (with a correct `Sec-WebSocket-Accept` for
/// `key`) returns the response head and the bytes that arrived after it (the start of the
/// frame stream: the relay may close right after the upgrade). Anything else is
/// [`RawError::Refused`] with the body read. No timeout of its own: callers wrap it.
pub(crate) async fn handshake<S>(
    stream: &mut S,
    request: &[u8],
    key: &str,
) -> Result<(HttpResponse, Vec<u8>), RawError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(request).await?;
    stream.flush().await?;

    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(RawError::Handshake("response head too large".into()));
        }
        if read_some(stream, &mut buf).await? == 0 {
            return Err(RawError::Eof);
        }
    };
    let rest = buf.split_off(head_end);
    let mut response = parse_head(&buf)?;

    if response.status != 101 {
        response.body = read_body(stream, &response, rest).await?;
        return Err(RawError::Refused(response));
    }

    let header_is = |name: &str, want: &str| {
        response
            .header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
    };
    if !header_is("Upgrade", "websocket") || !header_is("Connection", "upgrade") {
        return Err(RawError::Handshake(
            "101 without Upgrade/Connection headers".into(),
        ));
    }
    let expected = derive_accept_key(key.as_bytes());
    if response.header("Sec-WebSocket-Accept") != Some(expected.as_str()) {
        return Err(RawError::Handshake("wrong Sec-WebSocket-Accept".into()));
    }
    Ok((response, rest))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    // A stack chunk and then extend, so a read cancelled by a timeout loses nothing.
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn parse_head(head: &[u8]) -> Result<HttpResponse, RawError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(RawError::Handshake(format!(
            "not an HTTP/1.x response: {status_line:?}"
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| RawError::Handshake(format!("bad status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| RawError::Handshake(format!("bad header line: {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(HttpResponse {
        status,
        status_line,
        headers,
        body: Vec::new(),
    })
}

/// Reads the body of a non-101 response, starting with the bytes already read past the head.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    response: &HttpResponse,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, RawError> {
    if let Some(len) = response.header("Content-Length") {
        let len: usize = len
            .parse()
            .map_err(|_| RawError::Handshake(format!("bad Content-Length {len:?}")))?;
        while buf.len() < len {
            if read_some(stream, &mut buf).await? == 0 {
                return Err(RawError::Eof);
            }
        }
        buf.truncate(len);
        return Ok(buf);
    }
    let chunked = response
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return read_chunked(stream, buf).await;
    }
    // No length: for a response that means "until the server closes".
    loop {
        match read_some(stream, &mut buf).await {
            Ok(0) => return Ok(buf),
            Ok(_) => {}
            // A server that refuses and drops the socket may reset it; the body is what we have.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(buf),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, RawError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf[pos..], b"\r\n") {
                break pos + i;
            }
            if read_some(stream, &mut buf).await? == 0 {
                return Err(RawError::Eof);
            }
        };
        let size_text = String::from_utf8_lossy(&buf[pos..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| RawError::Handshake(format!("bad chunk size {size_hex:?}")))?;
        let data_start = line_end + 2;
        while buf.len() < data_start + size + 2 {
            if read_some(stream, &mut buf).await? == 0 {
                return Err(RawError::Eof);
            }
        }
        if size == 0 {
            // Trailers are not used by anyone we talk to; stop at the terminating chunk.
            return Ok(body);
        }
        body.extend_from_slice(&buf[data_start..data_start + size]);
        pos = data_start + size + 2;
    }
}

/// A WebSocket frame opcode (RFC 6455 §5.2), including the reserved ones a test may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: text (UTF-8) data.
    Text,
    /// 0x2: binary data.
    Binary,
    /// 0x8: close, payload = 2-byte code + UTF-8 reason.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
    /// Any reserved opcode (0x3–0x7, 0xB–0xF), for protocol-violation tests.
    Reserved(u8),
}

impl OpCode {
    /// Decodes the low 4 bits of the first frame byte.
    pub fn from_u8(value: u8) -> OpCode {
        match value & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            other => OpCode::Reserved(other),
        }
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xa,
            OpCode::Reserved(v) => v & 0x0f,
        }
    }

    /// Close, ping and pong (and reserved 0xB–0xF): frames that may interleave with fragments.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x08 != 0
    }
}

/// One WebSocket frame as it came off the wire (payload already unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit: last frame of a message.
    pub fin: bool,
    /// RSV1..3 as the low 3 bits; non-zero from the relay would be a bug (no extensions).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key if the frame was masked; a server must never mask, tests assert `None`.
    pub mask: Option<[u8; 4]>,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a close frame: its code and reason. An empty close payload reads as 1005 ("no status
    /// received", RFC 6455 §7.1.5). `None` for other opcodes.
    pub fn close(&self) -> Option<(u16, String)> {
        if self.opcode != OpCode::Close {
            return None;
        }
        match self.payload.as_slice() {
            [hi, lo, reason @ ..] => Some((
                u16::from_be_bytes([*hi, *lo]),
                String::from_utf8_lossy(reason).into_owned(),
            )),
            _ => Some((1005, String::new())),
        }
    }

    /// The payload as text if it is valid UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// Encodes one frame. `mask: Some(key)` produces a client frame (what a server must receive);
/// `None` produces an unmasked frame, which a server must reject from a client (protocol tests).
/// Lengths use the shortest encoding (7-bit, 16-bit or 64-bit) as RFC 6455 requires.
pub fn encode_frame(fin: bool, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode.as_u8());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Parses one frame from the start of `buf`: `Ok(None)` if it is not complete yet, else the
/// frame and how many bytes it used.
fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, RawError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let masked = b1 & 0x80 != 0;
    let (len, mut pos) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(b);
                (u64::from_be_bytes(eight), 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if len > MAX_PAYLOAD {
        return Err(RawError::Protocol(format!("frame payload of {len} bytes")));
    }
    let mask = if masked {
        let Some(key) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        pos += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    // Bounded by MAX_PAYLOAD above, so this fits usize on every target we run on.
    let len = len as usize;
    let Some(data) = buf.get(pos..pos + len) else {
        return Ok(None);
    };
    let payload = match mask {
        Some(key) => data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect(),
        None => data.to_vec(),
    };
    let frame = Frame {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x07,
        opcode: OpCode::from_u8(b0),
        mask,
        payload,
    };
    Ok(Some((frame, pos + len)))
}

/// A whole message as [`RawClient::read_message`] returns it: data reassembled from fragments,
/// control frames as they come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawMessage {
    /// A text message, reassembled.
    Text(String),
    /// A binary message, reassembled.
    Binary(Vec<u8>),
    /// A ping and its payload. The raw client never answers it.
    Ping(Vec<u8>),
    /// A pong and its payload (the answer to [`RawClient::send_ping`]).
    Pong(Vec<u8>),
    /// A close frame: code (1005 if none) and reason.
    Close(u16, String),
}

/// A PROXY protocol v2 header (PROXY command, TCP) saying the connection comes from `source`
/// to `destination`, both IPv4 or both IPv6, as HAProxy's `send-proxy-v2` writes it. Written
/// by hand here, not with the relay's parser crate, so a bug in one cannot hide in the other.
pub fn proxy_v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21); // version 2, PROXY
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                SocketAddr::V6(v6) => *v6.ip(),
            };
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

/// Knobs for [`RawClient::connect_with`].
#[derive(Debug, Clone)]
pub struct RawOptions {
    /// Timeout for every call, the connect and upgrade included.
    pub timeout: Duration,
    /// `SO_RCVBUF` to set before connecting. A small value (e.g. 4096) makes a client that
    /// stops reading fill up quickly, so the relay's phone outbox overflows with little data.
    pub recv_buffer_size: Option<u32>,
    /// Replaces the `Host` header (default: the socket address), for 421 tests.
    pub host: Option<String>,
    /// Local address to connect from (e.g. 127.0.0.2), for per-IP limit tests.
    pub source: Option<std::net::IpAddr>,
}

impl Default for RawOptions {
    fn default() -> Self {
        RawOptions {
            timeout: DEFAULT_TIMEOUT,
            recv_buffer_size: None,
            host: None,
            source: None,
        }
    }
}

/// A hand-framed WebSocket client for misbehaviour tests, over TCP or (for an address
/// registered with [`crate::tls::speak_tls`]) TLS.
///
/// It writes only when told to and reads only when told to. So "never answer pings" and "stop
/// reading" need no configuration: just do not call anything. See the module docs.
#[derive(Debug)]
pub struct RawClient {
    stream: ClientStream,
    /// Bytes read but not yet parsed into frames.
    buf: Vec<u8>,
    /// A fragmented data message in progress: its opcode and the payload so far.
    partial: Option<(OpCode, Vec<u8>)>,
    timeout: Duration,
    response: HttpResponse,
    mask_state: u64,
}

impl RawClient {
    /// Opens a TCP connection to `addr`, sends the upgrade for `path` with `headers` (see
    /// [`upgrade_request`]) and requires 101. A refusal is [`RawError::Refused`] carrying the
    /// status line, headers and body, e.g. `err.status() == Some(404)`.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawClient, RawError> {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        RawClient::connect_with(addr, path, &headers, RawOptions::default()).await
    }

    /// [`RawClient::connect`] with raw-byte header values (non-UTF-8 device names) and options
    /// (timeout, receive buffer size, `Host`).
    pub async fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &[u8])],
        options: RawOptions,
    ) -> Result<RawClient, RawError> {
        let after = options.timeout;
        let connect = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(size) = options.recv_buffer_size {
                socket.set_recv_buffer_size(size)?;
            }
            if let Some(ip) = options.source {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut stream = crate::tls::wrap(stream, addr).await?;
            let host = options.host.clone().unwrap_or_else(|| addr.to_string());
            let (request, key) = upgrade_request(&host, path, headers);
            let (response, rest) = handshake(&mut stream, &request, &key).await?;
            Ok::<_, RawError>(RawClient {
                stream,
                buf: rest,
                partial: None,
                timeout: after,
                response,
                mask_state: seed(),
            })
        };
        timeout(after, connect)
            .await
            .map_err(|_| RawError::Timeout {
                what: "the upgrade",
                after,
            })?
    }

    /// The server's 101 response, to assert on its headers.
    pub fn response(&self) -> &HttpResponse {
        &self.response
    }

    /// Changes the timeout used by every later call.
    pub fn set_timeout(&mut self, after: Duration) {
        self.timeout = after;
    }

    /// The underlying socket, e.g. for `peer_addr` or socket options.
    pub fn tcp(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// Encodes a masked client frame with a fresh mask, to send later in pieces with
    /// [`RawClient::send_bytes`].
    pub fn encode(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        if !opcode.is_control() {
            crate::secrets::payload(payload);
        }
        let mask = self.next_mask();
        encode_frame(fin, opcode, payload, Some(mask))
    }

    /// Writes `bytes` as they are (a frame prefix, a frame without masking, garbage).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), RawError> {
        let after = self.timeout;
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match timeout(after, write).await {
            Ok(result) => Ok(result?),
            // A peer that stopped reading (binary back-pressure) blocks writes.
            Err(_) => Err(RawError::Timeout {
                what: "a write to complete",
                after,
            }),
        }
    }

    /// Sends one complete masked frame.
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<(), RawError> {
        let frame = self.encode(fin, opcode, payload);
        self.send_bytes(&frame).await
    }

    /// Sends a complete text message in one frame (any bytes: invalid UTF-8 for 1007 tests).
    pub async fn send_text(&mut self, text: impl AsRef<[u8]>) -> Result<(), RawError> {
        self.send_frame(true, OpCode::Text, text.as_ref()).await
    }

    /// Sends a complete binary message in one frame.
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<(), RawError> {
        self.send_frame(true, OpCode::Binary, data).await
    }

    /// Sends a ping; the relay must answer with a pong carrying `payload` (read it with
    /// [`RawClient::read_message`]).
    pub async fn send_ping(&mut self, payload: &[u8]) -> Result<(), RawError> {
        self.send_frame(true, OpCode::Ping, payload).await
    }

    /// Sends a pong, e.g. to answer a relay ping by hand.
    pub async fn send_pong(&mut self, payload: &[u8]) -> Result<(), RawError> {
        self.send_frame(true, OpCode::Pong, payload).await
    }

    /// Sends a close frame: `Some((code, reason))`, or `None` for an empty close payload (which
    /// the relay must treat as 1001 in its close notice, §4.3).
    pub async fn send_close(&mut self, status: Option<(u16, &str)>) -> Result<(), RawError> {
        let payload = match status {
            Some((code, reason)) => {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason.as_bytes());
                p
            }
            None => Vec::new(),
        };
        self.send_frame(true, OpCode::Close, &payload).await
    }

    /// Sends only the first `n` bytes of an encoded frame and returns the rest, which the test
    /// may send later with [`RawClient::send_bytes`] (or never: the read-deadline 1008 test).
    /// `n` past the frame's end sends the whole frame and returns an empty rest.
    pub async fn send_partial_frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
        n: usize,
    ) -> Result<Vec<u8>, RawError> {
        let mut frame = self.encode(fin, opcode, payload);
        let rest = frame.split_off(n.min(frame.len()));
        self.send_bytes(&frame).await?;
        Ok(rest)
    }

    /// Sends one message as fragments: the first frame with `opcode` and FIN clear, the middle
    /// ones as continuations, the last continuation with FIN set. One part is a single final
    /// frame. For reassembly tests and for 1009, which counts the whole message.
    pub async fn send_fragments(
        &mut self,
        opcode: OpCode,
        parts: &[&[u8]],
    ) -> Result<(), RawError> {
        let last = parts.len().saturating_sub(1);
        for (i, part) in parts.iter().enumerate() {
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            self.send_frame(i == last, op, part).await?;
        }
        Ok(())
    }

    /// Reads the next frame exactly as sent (fragments and control frames not merged).
    pub async fn read_frame(&mut self) -> Result<Frame, RawError> {
        let deadline = Instant::now() + self.timeout;
        self.read_frame_until(deadline, "a frame").await
    }

    async fn read_frame_until(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Frame, RawError> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            match timeout_at(deadline, read_some(&mut self.stream, &mut self.buf)).await {
                Err(_) => {
                    return Err(RawError::Timeout {
                        what,
                        after: self.timeout,
                    })
                }
                Ok(Ok(0)) => return Err(RawError::Eof),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Reads the next message: data frames are reassembled (across interleaved control frames),
    /// control frames are returned as they arrive.
    pub async fn read_message(&mut self) -> Result<RawMessage, RawError> {
        let deadline = Instant::now() + self.timeout;
        self.read_message_until(deadline, "a message").await
    }

    async fn read_message_until(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<RawMessage, RawError> {
        loop {
            let frame = self.read_frame_until(deadline, what).await?;
            match frame.opcode {
                OpCode::Ping => return Ok(RawMessage::Ping(frame.payload)),
                OpCode::Pong => return Ok(RawMessage::Pong(frame.payload)),
                OpCode::Close => {
                    let (code, reason) = frame.close().unwrap_or((1005, String::new()));
                    return Ok(RawMessage::Close(code, reason));
                }
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        return Err(RawError::Protocol(
                            "new data frame inside a fragmented message".into(),
                        ));
                    }
                    if !frame.fin {
                        self.partial = Some((frame.opcode, frame.payload));
                        continue;
                    }
                    return data_message(frame.opcode, frame.payload);
                }
                OpCode::Continuation => {
                    let Some((opcode, mut data)) = self.partial.take() else {
                        return Err(RawError::Protocol(
                            "continuation without a first frame".into(),
                        ));
                    };
                    data.extend_from_slice(&frame.payload);
                    if frame.fin {
                        return data_message(opcode, data);
                    }
                    self.partial = Some((opcode, data));
                }
                OpCode::Reserved(op) => {
                    return Err(RawError::Protocol(format!("reserved opcode {op:#x}")));
                }
            }
        }
    }

    /// Reads the next text message, skipping pings and pongs (unanswered). A close is
    /// [`RawError::Closed`]; binary is [`RawError::Unexpected`].
    pub async fn read_text(&mut self) -> Result<String, RawError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.read_message_until(deadline, "a text message").await? {
                RawMessage::Text(text) => return Ok(text),
                RawMessage::Ping(_) | RawMessage::Pong(_) => {}
                RawMessage::Close(code, reason) => return Err(RawError::Closed { code, reason }),
                RawMessage::Binary(data) => {
                    return Err(RawError::Unexpected(format!(
                        "binary message of {} bytes",
                        data.len()
                    )))
                }
            }
        }
    }

    /// Reads until a close frame and returns its code and reason, discarding whatever came
    /// before it (a backlog, pings). E.g. `(1008, "message too slow")`. One timeout for the lot.
    pub async fn read_until_close(&mut self) -> Result<(u16, String), RawError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let RawMessage::Close(code, reason) =
                self.read_message_until(deadline, "a close frame").await?
            {
                return Ok((code, reason));
            }
        }
    }

    /// Reads and discards until the peer closes the TCP stream (e.g. after its close frame, or
    /// a pre-upgrade drop). A reset counts as closed.
    pub async fn expect_eof(&mut self) -> Result<(), RawError> {
        let after = self.timeout;
        let drain = async {
            loop {
                self.buf.clear();
                match read_some(&mut self.stream, &mut self.buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                    Err(e) => return Err(RawError::Io(e)),
                }
            }
        };
        timeout(after, drain).await.map_err(|_| RawError::Timeout {
            what: "the peer to close the TCP stream",
            after,
        })?
    }

    /// Waits `quiet` and fails if a data message or close arrives (pings and pongs are
    /// ignored and left unanswered). A partial frame in flight does not count.
    pub async fn expect_silence(&mut self, quiet: Duration) -> Result<(), RawError> {
        let deadline = Instant::now() + quiet;
        loop {
            match self.read_frame_until(deadline, "silence").await {
                Err(RawError::Timeout { .. }) => return Ok(()),
                Err(e) => return Err(e),
                Ok(frame) if matches!(frame.opcode, OpCode::Ping | OpCode::Pong) => {}
                Ok(frame) => {
                    return Err(RawError::Unexpected(format!(
                        "{:?} frame of {} bytes during expected silence",
                        frame.opcode,
                        frame.payload.len()
                    )))
                }
            }
        }
    }

    /// Gives up the socket, e.g. to drop it without a close frame (`drop(client.into_tcp())`
    /// or just `drop(client)`).
    pub fn into_tcp(self) -> TcpStream {
        self.stream.into_tcp()
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64: masks only need to vary, not to be secret, in a test client.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_be_bytes()
    }
}

fn data_message(opcode: OpCode, data: Vec<u8>) -> Result<RawMessage, RawError> {
    match opcode {
        OpCode::Text => String::from_utf8(data)
            .map(RawMessage::Text)
            .map_err(|_| RawError::Protocol("text message is not UTF-8".into())),
        _ => Ok(RawMessage::Binary(data)),
    }
}

fn seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Never zero: xorshift would stay at zero forever.
    (nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_server::{self, accept_all};
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
    use tokio_tungstenite::tungstenite::Message;

    const PHONE: &[(&str, &str)] = &[("X-Pyrycode-Server", "s"), ("User-Agent", "raw/1")];

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn encode_frame_matches_rfc6455_examples() {
        // RFC 6455 §5.7: a single-frame unmasked and masked "Hello".
        assert_eq!(
            encode_frame(true, OpCode::Text, b"Hello", None),
            b"\x81\x05Hello"
        );
        assert_eq!(
            encode_frame(true, OpCode::Text, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d])),
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        // Fragmented "Hel" + "lo", unmasked.
        assert_eq!(
            encode_frame(false, OpCode::Text, b"Hel", None),
            b"\x01\x03Hel"
        );
        assert_eq!(
            encode_frame(true, OpCode::Continuation, b"lo", None),
            b"\x80\x02lo"
        );
        // 256 bytes: 16-bit length; 65536 bytes: 64-bit length.
        assert_eq!(
            encode_frame(true, OpCode::Binary, &[0; 256], None)[..4],
            [0x82, 0x7e, 0x01, 0x00]
        );
        assert_eq!(
            encode_frame(true, OpCode::Binary, &[0; 65536], None)[..10],
            [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(
            encode_frame(true, OpCode::Ping, b"", Some([1, 2, 3, 4])),
            [0x89, 0x80, 1, 2, 3, 4]
        );
    }

    #[test]
    fn parse_frame_waits_for_a_whole_frame_and_unmasks() {
        let masked = encode_frame(true, OpCode::Text, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        for n in 0..masked.len() {
            assert_eq!(
                parse_frame(&masked[..n]).unwrap(),
                None,
                "prefix of {n} bytes"
            );
        }
        let mut two = masked.clone();
        two.extend_from_slice(b"\x88\x02\x03\xe8");
        let (frame, used) = parse_frame(&two).unwrap().unwrap();
        assert_eq!(used, masked.len());
        assert_eq!(frame.text(), Some("Hello"));
        assert_eq!(frame.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        let (close, _) = parse_frame(&two[used..]).unwrap().unwrap();
        assert_eq!(close.close(), Some((1000, String::new())));
        let (empty_close, _) = parse_frame(b"\x88\x00").unwrap().unwrap();
        assert_eq!(empty_close.close(), Some((1005, String::new())));
        let (rsv, _) = parse_frame(b"\xf1\x00").unwrap().unwrap();
        assert_eq!((rsv.rsv, rsv.opcode, rsv.fin), (0x7, OpCode::Text, true));
    }

    #[test]
    fn opcodes_round_trip() {
        for v in 0..16u8 {
            assert_eq!(OpCode::from_u8(v).as_u8(), v);
            assert_eq!(OpCode::from_u8(v).is_control(), v >= 8);
        }
    }

    #[test]
    fn upgrade_request_lets_headers_override_defaults() {
        let (req, key) =
            upgrade_request("h:1", "/v1/client", &[("host", b"other"), ("X-A", b"\xff")]);
        let text = String::from_utf8_lossy(&req);
        assert!(text.starts_with("GET /v1/client HTTP/1.1\r\n"), "{text}");
        assert!(!text.contains("Host: h:1"), "{text}");
        assert!(text.contains("host: other\r\n"), "{text}");
        assert!(text.contains(&format!("Sec-WebSocket-Key: {key}\r\n")));
        assert!(req.windows(7).any(|w| w == b"X-A: \xff\r"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn upgrade_and_messages_round_trip_through_a_tungstenite_server() {
        let addr = test_server::spawn_echo(None).await;
        let mut raw = RawClient::connect(addr, "/v1/client", PHONE).await.unwrap();
        assert_eq!(raw.response().status, 101);
        raw.send_text(r#"{"a": 1}"#).await.unwrap();
        assert_eq!(raw.read_text().await.unwrap(), r#"{"a": 1}"#);
        for len in [125, 126, 65535, 65536, 300_000] {
            let payload = vec![b'x'; len];
            raw.send_binary(&payload).await.unwrap();
            assert_eq!(
                raw.read_message().await.unwrap(),
                RawMessage::Binary(payload)
            );
        }
    }

    #[tokio::test]
    async fn the_server_sees_exactly_the_headers_given() {
        let (addr, mut rx) = test_server::spawn(accept_all, None).await;
        let headers: &[(&str, &[u8])] = &[("X-Pyrycode-Device-Name", "Zoë".as_bytes())];
        let options = RawOptions {
            host: Some("relay.example".into()),
            ..RawOptions::default()
        };
        let _raw = RawClient::connect_with(addr, "/v2/client", headers, options)
            .await
            .unwrap();
        let accepted = rx.recv().await.unwrap();
        assert_eq!(accepted.path, "/v2/client");
        assert_eq!(accepted.header("host"), vec![&b"relay.example"[..]]);
        assert_eq!(
            accepted.header("x-pyrycode-device-name"),
            vec!["Zoë".as_bytes()]
        );
    }

    #[tokio::test]
    async fn fragments_are_reassembled_by_the_server() {
        let (addr, mut rx) = test_server::spawn(accept_all, None).await;
        let mut raw = RawClient::connect(addr, "/v1/client", PHONE).await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        raw.send_fragments(OpCode::Text, &[b"[1,", b"2", b",3]"])
            .await
            .unwrap();
        // A ping between fragments is legal and must not break reassembly.
        raw.send_frame(false, OpCode::Binary, b"ab").await.unwrap();
        raw.send_ping(b"mid").await.unwrap();
        raw.send_frame(true, OpCode::Continuation, b"cd")
            .await
            .unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::text("[1,2,3]")
        );
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::Ping(b"mid"[..].into())
        );
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::binary(&b"abcd"[..])
        );
    }

    #[tokio::test]
    async fn fragments_count_as_one_message_against_the_size_limit() {
        let config = WebSocketConfig::default().max_message_size(Some(1000));
        let (addr, mut rx) = test_server::spawn(accept_all, Some(config)).await;
        let mut raw = RawClient::connect(addr, "/v1/client", PHONE).await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        let part = [b'a'; 600];
        raw.send_fragments(OpCode::Binary, &[&part, &part])
            .await
            .unwrap();
        match server.next().await {
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {}
            other => panic!("expected a capacity error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_partial_frame_stalls_until_the_rest_is_sent() {
        let (addr, mut rx) = test_server::spawn(accept_all, None).await;
        let mut raw = RawClient::connect(addr, "/v1/client", PHONE).await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        let rest = raw
            .send_partial_frame(true, OpCode::Text, b"{\"slow\":true}", 3)
            .await
            .unwrap();
        assert!(
            timeout(ms(200), server.next()).await.is_err(),
            "only 3 bytes were sent"
        );
        raw.send_bytes(&rest).await.unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::text("{\"slow\":true}")
        );
        assert!(raw
            .send_partial_frame(true, OpCode::Text, b"x", 100)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn ping_gets_a_pong_and_server_pings_are_never_answered() {
        let (addr, mut rx) = test_server::spawn(accept_all, None).await;
        let mut raw = RawClient::connect(addr, "/v1/client", PHONE).await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        let server_side = tokio::spawn(async move {
            server.send(Message::Ping(b"hb"[..].into())).await.unwrap();
            // Keep reading so tungstenite flushes its pong to our ping; collect what arrives.
            let mut got = Vec::new();
            while let Ok(Some(Ok(message))) = timeout(ms(300), server.next()).await {
                got.push(message);
            }
            got
        });
        raw.send_ping(b"hello").await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.push(raw.read_message().await.unwrap());
        }
        assert!(seen.contains(&RawMessage::Ping(b"hb".to_vec())), "{seen:?}");
        assert!(
            seen.contains(&RawMessage::Pong(b"hello".to_vec())),
            "{seen:?}"
        );
        // The server saw our ping and nothing else: the raw client never pongs.
        assert_eq!(
            server_side.await.unwrap(),
            vec![Message::Ping(b"hello"[..].into())]
        );
    }

    #[tokio::test]
    async fn read_until_close_returns_code_and_reason_after_a_backlog() {
        let (addr, mut rx) = test_server::spawn(accept_all, None).await;
        let mut raw = RawClient::connect(addr, "/v1/client", PHONE).await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        server.send(Message::text("queued")).await.unwrap();
        server
            .close(Some(CloseFrame {
                code: CloseCode::from(1008),
                reason: "message too slow".into(),
            }))
            .await
            .unwrap();
        assert_eq!(
            raw.read_until_close().await.unwrap(),
            (1008, "message too slow".to_owned())
        );
        raw.send_close(Some((1008, ""))).await.unwrap();
        drop(server);
        raw.expect_eof().await.unwrap();
    }

    #[tokio::test]
    async fn send_close_without_status_is_an_empty_close_frame() {
        let (addr, mut rx) = test_server::spawn(accept_all, None).await;
        let mut raw = RawClient::connect(addr, "/v1/client", PHONE).await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        raw.send_close(None).await.unwrap();
        assert_eq!(server.next().await.unwrap().unwrap(), Message::Close(None));
        raw.send_close(Some((4001, "bye"))).await.ok();
    }

    #[tokio::test]
    async fn read_text_reports_close_and_expect_silence_ignores_pings() {
        let (addr, mut rx) = test_server::spawn(accept_all, None).await;
        let mut raw = RawClient::connect(addr, "/v1/client", PHONE).await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        server.send(Message::Ping(b"hb"[..].into())).await.unwrap();
        raw.expect_silence(ms(100)).await.unwrap();
        server.send(Message::text("hi")).await.unwrap();
        assert!(matches!(
            raw.expect_silence(ms(500)).await,
            Err(RawError::Unexpected(_))
        ));
        server
            .close(Some(CloseFrame {
                code: CloseCode::from(4404),
                reason: "gone".into(),
            }))
            .await
            .unwrap();
        match raw.read_text().await {
            Err(RawError::Closed { code: 4404, reason }) => assert_eq!(reason, "gone"),
            other => panic!("{other:?}"),
        }
    }

    fn refuse(
        req: &tokio_tungstenite::tungstenite::handshake::server::Request,
    ) -> Option<(u16, &'static str)> {
        match req.uri().path() {
            "/v1/client" => None,
            "/busy" => Some((503, "")),
            _ => Some((404, "no such path")),
        }
    }

    #[tokio::test]
    async fn refused_upgrade_returns_status_line_and_body() {
        let (addr, _rx) = test_server::spawn(refuse, None).await;
        let err = RawClient::connect(addr, "/nope", PHONE).await.unwrap_err();
        assert_eq!(err.status(), Some(404));
        let RawError::Refused(response) = err else {
            unreachable!()
        };
        assert_eq!(response.status_line, "HTTP/1.1 404 Not Found");
        assert_eq!(response.body, b"no such path");
        assert_eq!(response.header("content-length"), Some("12"));

        let err = RawClient::connect(addr, "/busy", PHONE).await.unwrap_err();
        assert_eq!(err.status(), Some(503));
        let RawError::Refused(response) = err else {
            unreachable!()
        };
        assert_eq!(response.body_len(), 0);
    }

    /// A hand-written server: 101, then frames in the same write as the head, then more.
    async fn scripted_server(frames_with_head: Vec<u8>, later: Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            while find(&req, b"\r\n\r\n").is_none() {
                read_some(&mut stream, &mut req).await.unwrap();
            }
            let text = String::from_utf8_lossy(&req).into_owned();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_owned();
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
            .into_bytes();
            out.extend_from_slice(&frames_with_head);
            stream.write_all(&out).await.unwrap();
            tokio::time::sleep(ms(50)).await;
            stream.write_all(&later).await.unwrap();
            tokio::time::sleep(ms(500)).await;
        });
        addr
    }

    #[tokio::test]
    async fn bytes_right_after_the_101_are_kept_and_fragments_reassembled() {
        let mut first = encode_frame(false, OpCode::Text, b"he", None);
        first.extend(encode_frame(true, OpCode::Ping, b"p", None));
        let mut later = encode_frame(true, OpCode::Continuation, b"llo", None);
        later.extend(encode_frame(
            true,
            OpCode::Close,
            b"\x10\x04no server with that id",
            None,
        ));
        let addr = scripted_server(first, later).await;
        let mut raw = RawClient::connect(addr, "/v1/client", PHONE).await.unwrap();
        assert_eq!(
            raw.read_message().await.unwrap(),
            RawMessage::Ping(b"p".to_vec())
        );
        assert_eq!(raw.read_text().await.unwrap(), "hello");
        assert_eq!(
            raw.read_message().await.unwrap(),
            RawMessage::Close(4100, "no server with that id".into())
        );
        raw.expect_eof().await.unwrap();
    }

    #[tokio::test]
    async fn a_bad_accept_key_fails_the_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            while find(&req, b"\r\n\r\n").is_none() {
                read_some(&mut stream, &mut req).await.unwrap();
            }
            let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(ms(500)).await;
        });
        let err = RawClient::connect(addr, "/v1/client", PHONE)
            .await
            .unwrap_err();
        assert!(matches!(err, RawError::Handshake(_)), "{err}");
    }

    #[tokio::test]
    async fn reads_time_out() {
        let (addr, mut rx) = test_server::spawn(accept_all, None).await;
        let options = RawOptions {
            timeout: ms(100),
            ..RawOptions::default()
        };
        let mut raw = RawClient::connect_with(addr, "/v1/client", &[], options)
            .await
            .unwrap();
        let _server = rx.recv().await.unwrap();
        assert!(matches!(
            raw.read_frame().await,
            Err(RawError::Timeout { .. })
        ));
        raw.set_timeout(ms(50));
        assert!(matches!(
            raw.read_until_close().await,
            Err(RawError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_backs_up_the_server() {
        let (addr, mut rx) = test_server::spawn(accept_all, None).await;
        let options = RawOptions {
            recv_buffer_size: Some(4096),
            ..RawOptions::default()
        };
        let _raw = RawClient::connect_with(addr, "/v1/client", &[], options)
            .await
            .unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        let chunk = Message::binary(vec![0u8; 64 * 1024]);
        let mut sent = 0usize;
        let blocked = loop {
            match timeout(ms(300), server.send(chunk.clone())).await {
                Err(_) => break true,
                Ok(result) => result.unwrap(),
            }
            sent += 1;
            if sent > 1000 {
                break false;
            }
        };
        assert!(blocked, "64 MiB went out to a client that never reads");
    }
}

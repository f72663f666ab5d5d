//! Fake binaries and fake phones over a real WebSocket client, for end-to-end tests.
//!
//! The framing is tokio-tungstenite's: deliberately not the server's fastwebsockets, so a bug
//! shared by both ends of a test cannot hide. The HTTP upgrade is written by hand
//! ([`crate::raw::upgrade_request`]) so a test controls every header byte (UTF-8 device names,
//! duplicated or missing headers); the upgraded socket is then handed to tungstenite.
//!
//! - [`FakeBinary`]: `/v1/server`, speaks §4 envelopes ([`Envelope`], [`FakeBinary::send_to`]).
//! - [`FakePhone`]: `/v1/client`, sends and receives raw inner frames.
//! - [`ClientBuilder`]: path, headers, timeout; [`ClientBuilder::refused`] asserts a 4xx/5xx.
//!
//! Both share [`WsClient`] (through `Deref`). A client is one socket and a few buffers: no
//! task, no thread, so a test can hold a thousand of them.
//!
//! **Pings.** tungstenite answers a ping while the client is being read, i.e. during any
//! `recv_*`/`expect_*` call; nothing runs in the background. A client that no method touches
//! for longer than the relay's heartbeat interval + timeout is closed 1011 "heartbeat timeout".
//! To wait while staying alive use [`WsClient::expect_silence`]. To *not* answer pings either
//! never call a reading method until the relay has given up, or [`WsClient::set_muted`] and
//! keep reading (pings stay visible through [`WsClient::recv_raw`]).
//!
//! **Not reading** is just not calling a reading method: tungstenite reads only when polled,
//! so the relay's writes back up into the kernel buffers (phone backlog tests; make it fill
//! sooner with [`ClientBuilder::recv_buffer_size`]).

use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpSocket;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::raw::{self, HttpResponse, RawError};
use crate::tls::ClientStream;

/// How long any client call waits before failing with [`ClientError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// `X-Pyrycode-Version` a [`FakeBinary`] sends unless told otherwise (valid per §2).
pub const DEFAULT_BINARY_VERSION: &str = "0.0.1-test";
/// `User-Agent` of a [`FakeBinary`] unless told otherwise.
pub const DEFAULT_BINARY_USER_AGENT: &str = "pyrycode-testkit-binary/0.1";
/// `User-Agent` of a [`FakePhone`] unless told otherwise.
pub const DEFAULT_PHONE_USER_AGENT: &str = "pyrycode-testkit-phone/0.1";

/// What went wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The upgrade got an HTTP status instead of 101. The response has the status and body.
    #[error("upgrade refused: {}", .0.status_line)]
    Refused(HttpResponse),
    /// The upgrade failed otherwise: connection refused or dropped, bad 101, timeout.
    #[error("upgrade failed: {0}")]
    Upgrade(RawError),
    /// Nothing arrived (or a write stayed blocked) for `after`.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What the call was waiting for.
        what: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection ended without a close frame (TCP closed or reset).
    #[error("connection ended without a close frame")]
    Disconnected,
    /// A message was expected but the peer closed the WebSocket.
    #[error("closed by peer with {code} {reason:?}")]
    Closed {
        /// The close code (1005 for a close frame without one).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Something arrived that the call did not expect (described, payload truncated).
    #[error("unexpected: {0}")]
    Unexpected(String),
    /// The relay's message is not a §4 envelope (or has fields the contract does not allow).
    #[error("not a relay envelope ({error}): {raw}")]
    BadEnvelope {
        /// The whole text message.
        raw: String,
        /// Why it does not parse.
        error: String,
    },
    /// The WebSocket layer failed (invalid frame, invalid UTF-8, ...).
    #[error("websocket error: {0}")]
    Ws(#[from] tungstenite::Error),
}

impl ClientError {
    /// The HTTP status of a refused upgrade, e.g. `Some(400)`.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused(response) => Some(response.status),
            _ => None,
        }
    }
}

/// Returns a fresh server-id shaped like a lowercase UUIDv4, unique within the test process,
/// so parallel tests on one relay never collide.
pub fn fresh_server_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = splitmix(nanos ^ u64::from(std::process::id()).rotate_left(32));
    // The counter in the low half guarantees uniqueness within the process.
    let lo = splitmix(hi ^ count) & 0xffff_ffff_0000_0000 | (count & 0xffff_ffff);
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x4000; // version 4
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // RFC 4122 variant
    uuid_text(hi, lo)
}

/// 128 bits as lowercase `8-4-4-4-12` hex, the shape of real server-ids (§2).
pub(crate) fn uuid_text(hi: u64, lo: u64) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// SplitMix64: a tiny, well-mixed hash for test ids (not for anything secret).
pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A routing envelope the relay sent a binary (§4.1 data or §4.3 close notice).
///
/// Parsing is strict on purpose: fields outside the contract, duplicate keys or a non-string
/// `conn_id` are [`ClientError::BadEnvelope`], so a relay bug fails the test that sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The phone's conn_id (decoded from JSON).
    pub conn_id: String,
    /// The `frame` value's bytes exactly as the relay wrote them (`Some("null")` if it wrote
    /// `null`; `None` only if the key is absent, as in a close notice). §4.1 says these are the
    /// phone's bytes verbatim, which tests assert with `==`.
    pub frame: Option<String>,
    /// A `token` field, if the relay wrote one. §4.1 says it never does (the phone's
    /// `X-Pyrycode-Token` is not forwarded); parsed so tests can assert that it stays `None`.
    pub token: Option<String>,
    /// Present on a close notice: the phone's close code, 1001 if it vanished, or the relay's.
    pub close_code: Option<u16>,
    /// The whole text message.
    pub raw: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    conn_id: String,
    #[serde(default, deserialize_with = "present_raw")]
    frame: Option<Box<RawValue>>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    close_code: Option<u16>,
}

/// Keeps `"frame":null` distinct from an absent `frame`, which plain `Option` would merge.
fn present_raw<'de, D>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

impl Envelope {
    /// Parses one relay→binary text message. Errors describe why, with the raw text.
    pub fn parse(raw: String) -> Result<Envelope, ClientError> {
        // serde would also build the struct from a JSON array; the contract says object.
        if !raw.trim_start().starts_with('{') {
            return Err(ClientError::BadEnvelope {
                raw,
                error: "not a JSON object".into(),
            });
        }
        match serde_json::from_str::<WireEnvelope>(&raw) {
            Ok(wire) => Ok(Envelope {
                conn_id: wire.conn_id,
                frame: wire.frame.map(|f| f.get().to_owned()),
                token: wire.token,
                close_code: wire.close_code,
                raw,
            }),
            Err(e) => Err(ClientError::BadEnvelope {
                raw,
                error: e.to_string(),
            }),
        }
    }

    /// The frame bytes, if any, as `&str` (handy in `assert_eq!`).
    pub fn frame(&self) -> Option<&str> {
        self.frame.as_deref()
    }

    /// True for a §4.3 close notice: a close code and no `frame` key.
    pub fn is_close_notice(&self) -> bool {
        self.frame.is_none() && self.close_code.is_some()
    }
}

/// JSON-encodes a string (quotes and escapes) for building envelopes by hand.
fn json_string(s: &str) -> String {
    // Serializing a &str cannot fail; the fallback keeps the library path panic-free.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// The stream under tungstenite: passes bytes through, or swallows writes while muted.
#[derive(Debug)]
struct Tap<S> {
    inner: S,
    muted: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.muted {
            // Report success so tungstenite believes its pong went out; the relay never sees it.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.muted {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Builds a [`FakeBinary`] or [`FakePhone`] connection: path, headers, timeout.
///
/// Headers start as the role's required set (§2) and are sent in order. `header` replaces a
/// header of the same name (case-insensitive) or appends, `add_header` always appends (to test
/// duplicates), `without_header` removes (to test 400 on a missing one).
#[derive(Debug, Clone)]
pub struct ClientBuilder<C> {
    addr: SocketAddr,
    path: String,
    host: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    timeout: Duration,
    recv_buffer_size: Option<u32>,
    source: Option<std::net::IpAddr>,
    role: PhantomData<fn() -> C>,
}

impl<C> ClientBuilder<C> {
    fn new(addr: SocketAddr, path: &str, headers: Vec<(&str, &str)>) -> Self {
        ClientBuilder {
            addr,
            path: path.to_owned(),
            host: None,
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.as_bytes().to_vec()))
                .collect(),
            timeout: DEFAULT_TIMEOUT,
            recv_buffer_size: None,
            source: None,
            role: PhantomData,
        }
    }

    /// Request path, e.g. `/v2/server` (alias) or `/v1/nope` (404).
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    /// `Host` header value (default: the socket address), for the TLS modes' 421 check.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }

    /// Sets `X-Pyrycode-Server`.
    pub fn server_id(self, server_id: &str) -> Self {
        self.header("X-Pyrycode-Server", server_id)
    }

    /// Sets `User-Agent`.
    pub fn user_agent(self, user_agent: &str) -> Self {
        self.header("User-Agent", user_agent)
    }

    /// Sets a header, replacing every header of that name.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_bytes(name, value.as_bytes())
    }

    /// Sets a header from raw bytes (non-UTF-8, control characters), replacing that name.
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        match self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(i) => {
                self.headers[i].1 = value.to_vec();
                let mut seen = 0;
                self.headers.retain(|(n, _)| {
                    let same = n.eq_ignore_ascii_case(name);
                    seen += usize::from(same);
                    !same || seen == 1
                });
            }
            None => self.headers.push((name.to_owned(), value.to_vec())),
        }
        self
    }

    /// Appends a header even if one of that name exists.
    pub fn add_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }

    /// Removes every header of that name, e.g. `without_header("User-Agent")` for a 400.
    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Timeout for the upgrade and for every later call on the client (default 5 s).
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = after;
        self
    }

    /// Connects from this local address (e.g. `127.0.0.2`), for per-IP limit tests (§8).
    pub fn source(mut self, ip: std::net::IpAddr) -> Self {
        self.source = Some(ip);
        self
    }

    /// `SO_RCVBUF` before connecting: a client that then stops reading backs the relay up
    /// after a few KiB instead of megabytes.
    pub fn recv_buffer_size(mut self, bytes: u32) -> Self {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// Does the upgrade expecting a refusal and returns the HTTP response (status, body), so a
    /// test reads `assert_eq!(r.status, 400); assert_eq!(r.body_len(), 0)`. A 101 is an error.
    pub async fn refused(self) -> Result<HttpResponse, ClientError> {
        match self.upgrade_tcp().await {
            Err(ClientError::Refused(response)) => Ok(response),
            Err(e) => Err(e),
            Ok(_) => Err(ClientError::Unexpected(format!(
                "upgrade to {} succeeded; a refusal was expected",
                self.path
            ))),
        }
    }

    async fn upgrade_tcp(&self) -> Result<WsClient<ClientStream>, ClientError> {
        let after = self.timeout;
        let open = async {
            let socket = if self.addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            };
            let socket = socket.map_err(|e| ClientError::Upgrade(e.into()))?;
            if let Some(size) = self.recv_buffer_size {
                socket
                    .set_recv_buffer_size(size)
                    .map_err(|e| ClientError::Upgrade(e.into()))?;
            }
            if let Some(ip) = self.source {
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .map_err(|e| ClientError::Upgrade(e.into()))?;
            }
            let stream = socket
                .connect(self.addr)
                .await
                .map_err(|e| ClientError::Upgrade(e.into()))?;
            // Small test messages must not wait for Nagle.
            stream
                .set_nodelay(true)
                .map_err(|e| ClientError::Upgrade(e.into()))?;
            // TLS if the test registered this address as a TLS relay (crate::tls).
            let stream = crate::tls::wrap(stream, self.addr)
                .await
                .map_err(|e| ClientError::Upgrade(e.into()))?;
            self.upgrade_inner(stream).await
        };
        timeout(after, open)
            .await
            .map_err(|_| ClientError::Timeout {
                what: "the upgrade",
                after,
            })?
    }

    async fn upgrade_over<S>(&self, stream: S) -> Result<WsClient<S>, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let after = self.timeout;
        timeout(after, self.upgrade_inner(stream))
            .await
            .map_err(|_| ClientError::Timeout {
                what: "the upgrade",
                after,
            })?
    }

    async fn upgrade_inner<S>(&self, mut stream: S) -> Result<WsClient<S>, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let host = self.host.clone().unwrap_or_else(|| self.addr.to_string());
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let (request, key) = raw::upgrade_request(&host, &self.path, &headers);
        let (response, rest) = match raw::handshake(&mut stream, &request, &key).await {
            Ok(ok) => ok,
            Err(RawError::Refused(response)) => return Err(ClientError::Refused(response)),
            Err(e) => return Err(ClientError::Upgrade(e)),
        };
        // Small buffers keep a thousand idle clients cheap; eager writes keep order obvious.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let ws = WebSocketStream::from_partially_read(
            Tap {
                inner: stream,
                muted: false,
            },
            rest,
            Role::Client,
            Some(config),
        )
        .await;
        Ok(WsClient {
            ws,
            timeout: self.timeout,
            response,
            pings: 0,
            pongs: 0,
        })
    }
}

impl ClientBuilder<FakeBinary> {
    /// Sets `X-Pyrycode-Version`.
    pub fn version(self, version: &str) -> Self {
        self.header("X-Pyrycode-Version", version)
    }

    /// Connects over TCP (and TLS, for an address registered with [`crate::tls::speak_tls`])
    /// and upgrades; any status but 101 is [`ClientError::Refused`].
    pub async fn connect(self) -> Result<FakeBinary, ClientError> {
        Ok(FakeBinary {
            client: self.upgrade_tcp().await?,
        })
    }

    /// Upgrades over a stream the test opened itself (e.g. a tokio-rustls client stream for
    /// the TLS modes).
    pub async fn connect_over<S>(self, stream: S) -> Result<FakeBinary<S>, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Ok(FakeBinary {
            client: self.upgrade_over(stream).await?,
        })
    }
}

impl ClientBuilder<FakePhone> {
    /// Sets `X-Pyrycode-Token` (§2: validated; §4.1: never forwarded, never echoed).
    pub fn token(self, token: &str) -> Self {
        self.header("X-Pyrycode-Token", token)
    }

    /// Sets `X-Pyrycode-Device-Name` (UTF-8; use `header_bytes` for invalid bytes).
    pub fn device_name(self, name: &str) -> Self {
        self.header("X-Pyrycode-Device-Name", name)
    }

    /// Connects over TCP (and TLS, for an address registered with [`crate::tls::speak_tls`])
    /// and upgrades; any status but 101 is [`ClientError::Refused`].
    pub async fn connect(self) -> Result<FakePhone, ClientError> {
        Ok(FakePhone {
            client: self.upgrade_tcp().await?,
        })
    }

    /// Upgrades over a stream the test opened itself (e.g. TLS).
    pub async fn connect_over<S>(self, stream: S) -> Result<FakePhone<S>, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Ok(FakePhone {
            client: self.upgrade_over(stream).await?,
        })
    }
}

/// One upgraded WebSocket connection; the behaviour [`FakeBinary`] and [`FakePhone`] share.
///
/// Every method waits at most the client's timeout ([`WsClient::set_timeout`]).
#[derive(Debug)]
pub struct WsClient<S = ClientStream> {
    ws: WebSocketStream<Tap<S>>,
    timeout: Duration,
    response: HttpResponse,
    pings: u64,
    pongs: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    /// The 101 response, e.g. to assert there is no `Sec-WebSocket-Extensions` (§2).
    pub fn response(&self) -> &HttpResponse {
        &self.response
    }

    /// Changes the timeout of every later call.
    pub fn set_timeout(&mut self, after: Duration) {
        self.timeout = after;
    }

    /// The timeout every call uses.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// While muted, every byte this client writes is discarded: automatic pongs, close
    /// replies, and your own sends. Reads go on, so a heartbeat test can watch the pings
    /// arrive unanswered and then [`WsClient::expect_close`] the 1011. Flip it only between
    /// calls, not with a write in progress.
    pub fn set_muted(&mut self, muted: bool) {
        self.ws.get_mut().muted = muted;
    }

    /// How many pings this client has read so far (counted by every reading method).
    pub fn pings_received(&self) -> u64 {
        self.pings
    }

    /// How many pongs this client has read so far.
    pub fn pongs_received(&self) -> u64 {
        self.pongs
    }

    /// Sends any message (tungstenite's type), e.g. a `Message::Pong` nobody asked for.
    pub async fn send(&mut self, message: Message) -> Result<(), ClientError> {
        if let Message::Text(_) | Message::Binary(_) = &message {
            crate::secrets::payload(&message.clone().into_data());
        }
        let after = self.timeout;
        match timeout(after, self.ws.send(message)).await {
            Ok(result) => Ok(result?),
            // The relay applies back-pressure to phones by not reading (§7).
            Err(_) => Err(ClientError::Timeout {
                what: "a send to complete",
                after,
            }),
        }
    }

    /// Sends one text message exactly as given (any JSON, or not JSON for 1007 tests).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.send(Message::text(text)).await
    }

    /// Sends one binary message (the relay accepts either opcode, §4).
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.send(Message::binary(Bytes::copy_from_slice(data)))
            .await
    }

    /// Sends a ping; read the relay's pong with [`WsClient::recv_pong`].
    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        self.send(Message::Ping(Bytes::copy_from_slice(payload)))
            .await
    }

    /// The next message of any kind, pings, pongs and close included.
    pub async fn recv_raw(&mut self) -> Result<Message, ClientError> {
        let deadline = Instant::now() + self.timeout;
        self.next_until(deadline, "a message").await
    }

    async fn next_until(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Message, ClientError> {
        let message = match timeout_at(deadline, self.ws.next()).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    what,
                    after: self.timeout,
                })
            }
            Ok(None) => return Err(ClientError::Disconnected),
            Ok(Some(Err(e))) => return Err(map_ws_error(e)),
            Ok(Some(Ok(message))) => message,
        };
        match &message {
            Message::Ping(_) => {
                self.pings += 1;
                // tungstenite only queues the pong; push it out now rather than at the next
                // poll, which may be far away. Best effort: a failed write shows up on reads.
                let _ = timeout_at(deadline, self.ws.flush()).await;
            }
            Message::Pong(_) => self.pongs += 1,
            _ => {}
        }
        Ok(message)
    }

    /// The next data message, skipping pings and pongs. A close is [`ClientError::Closed`].
    async fn next_data(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Message, ClientError> {
        loop {
            match self.next_until(deadline, what).await? {
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(frame) => {
                    let (code, reason) = close_parts(frame);
                    self.flush_close_reply(deadline).await;
                    return Err(ClientError::Closed { code, reason });
                }
                data => return Ok(data),
            }
        }
    }

    /// The next text message, exactly as received (pings and pongs skipped). A binary message
    /// is [`ClientError::Unexpected`] (the relay always sends text, §4).
    pub async fn recv_text(&mut self) -> Result<String, ClientError> {
        let deadline = Instant::now() + self.timeout;
        match self.next_data(deadline, "a text message").await? {
            Message::Text(text) => Ok(text.as_str().to_owned()),
            other => Err(ClientError::Unexpected(describe(&other))),
        }
    }

    /// The payload of the next pong, skipping pings; a data message is an error.
    pub async fn recv_pong(&mut self) -> Result<Bytes, ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.next_until(deadline, "a pong").await? {
                Message::Pong(payload) => return Ok(payload),
                Message::Ping(_) => {}
                Message::Close(frame) => {
                    let (code, reason) = close_parts(frame);
                    return Err(ClientError::Closed { code, reason });
                }
                other => return Err(ClientError::Unexpected(describe(&other))),
            }
        }
    }

    /// Waits for the relay's close frame and returns `(code, reason)`, e.g.
    /// `(4404, "no server with that id")`. Pings and pongs are skipped; a data message first
    /// is [`ClientError::Unexpected`] (use [`WsClient::recv_until_close`] to allow one). The
    /// close reply goes out before this returns. A close frame without a code reads as 1005.
    /// Codes tungstenite deems illegal on the wire (1005, 1006, 1015, 1016–2999) read as 1002.
    pub async fn expect_close(&mut self) -> Result<(u16, String), ClientError> {
        let deadline = Instant::now() + self.timeout;
        match self.next_data(deadline, "a close frame").await {
            Err(ClientError::Closed { code, reason }) => Ok((code, reason)),
            Err(e) => Err(e),
            Ok(other) => Err(ClientError::Unexpected(format!(
                "{} while a close frame was expected",
                describe(&other)
            ))),
        }
    }

    /// Reads until the close frame, returning the data messages before it and the close code
    /// and reason. For a backlog that is cut off (1011 "phone backlog full"). One timeout for
    /// the lot.
    pub async fn recv_until_close(&mut self) -> Result<(Vec<Message>, u16, String), ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut before = Vec::new();
        loop {
            match self.next_data(deadline, "a close frame").await {
                Ok(message) => before.push(message),
                Err(ClientError::Closed { code, reason }) => return Ok((before, code, reason)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits `quiet` and fails if a data message or a close arrives; pings are answered
    /// (unless muted) and pongs ignored. This is also how a test idles a client while keeping
    /// it alive through heartbeats.
    pub async fn expect_silence(&mut self, quiet: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + quiet;
        loop {
            match self.next_until(deadline, "silence").await {
                Err(ClientError::Timeout { .. }) => return Ok(()),
                Err(e) => return Err(e),
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => {
                    return Err(ClientError::Unexpected(format!(
                        "{} during expected silence",
                        describe(&other)
                    )))
                }
            }
        }
    }

    /// Waits until the connection ends (the relay dropped TCP, or the close handshake is over).
    /// Messages before the end are discarded.
    pub async fn expect_disconnect(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.next_until(deadline, "the connection to end").await {
                Err(ClientError::Disconnected) => return Ok(()),
                Err(e @ ClientError::Timeout { .. }) => return Err(e),
                Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }

    /// Starts a close handshake with `code` and an empty reason, then reads until the relay's
    /// reply (returned, if it sent one) or the end of the connection. Data that arrives in
    /// between is discarded.
    pub async fn close(&mut self, code: u16) -> Result<Option<(u16, String)>, ClientError> {
        self.close_with(Some((code, ""))).await
    }

    /// Like [`WsClient::close`] with any reason, or `None` for a close frame with no status
    /// code (the relay reports it as 1001 in its close notice, §4.3).
    pub async fn close_with(
        &mut self,
        status: Option<(u16, &str)>,
    ) -> Result<Option<(u16, String)>, ClientError> {
        let frame = status.map(|(code, reason)| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        });
        self.send(Message::Close(frame)).await?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.next_until(deadline, "the close reply").await {
                Ok(Message::Close(frame)) => return Ok(Some(close_parts(frame))),
                Ok(_) => {}
                Err(ClientError::Disconnected) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    async fn flush_close_reply(&mut self, deadline: Instant) {
        // Best effort: the relay may already have dropped the socket, which is fine.
        let _ = timeout_at(deadline, self.ws.flush()).await;
    }

    /// The underlying stream, e.g. `stream().tcp().local_addr()`.
    pub fn stream(&self) -> &S {
        &self.ws.get_ref().inner
    }
}

fn close_parts(frame: Option<CloseFrame>) -> (u16, String) {
    match frame {
        Some(frame) => (u16::from(frame.code), frame.reason.as_str().to_owned()),
        None => (1005, String::new()),
    }
}

fn map_ws_error(error: tungstenite::Error) -> ClientError {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            ClientError::Disconnected
        }
        tungstenite::Error::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            ClientError::Disconnected
        }
        other => ClientError::Ws(other),
    }
}

/// A short description of a message for error texts (payload truncated).
fn describe(message: &Message) -> String {
    const MAX: usize = 200;
    match message {
        Message::Text(text) => {
            let text = text.as_str();
            let cut = text.char_indices().nth(MAX).map_or(text.len(), |(i, _)| i);
            format!(
                "text message {:?}{}",
                &text[..cut],
                if cut < text.len() { "..." } else { "" }
            )
        }
        Message::Binary(data) => format!("binary message of {} bytes", data.len()),
        Message::Ping(data) => format!("ping of {} bytes", data.len()),
        Message::Pong(data) => format!("pong of {} bytes", data.len()),
        Message::Close(frame) => {
            let (code, reason) = close_parts(frame.clone());
            format!("close {code} {reason:?}")
        }
        Message::Frame(_) => "raw frame".to_owned(),
    }
}

/// A fake desktop daemon on `/v1/server`: receives [`Envelope`]s, sends envelopes to phones.
///
/// Derefs to [`WsClient`] for sending text, closing, waiting for close or silence.
#[derive(Debug)]
pub struct FakeBinary<S = ClientStream> {
    client: WsClient<S>,
}

impl FakeBinary {
    /// A builder with the §2 headers for `server_id` (version [`DEFAULT_BINARY_VERSION`],
    /// user agent [`DEFAULT_BINARY_USER_AGENT`]) on `/v1/server`.
    pub fn builder(addr: SocketAddr, server_id: &str) -> ClientBuilder<FakeBinary> {
        ClientBuilder::new(
            addr,
            "/v1/server",
            vec![
                ("X-Pyrycode-Server", server_id),
                ("X-Pyrycode-Version", DEFAULT_BINARY_VERSION),
                ("User-Agent", DEFAULT_BINARY_USER_AGENT),
            ],
        )
    }

    /// Connects with the defaults and claims `server_id`.
    pub async fn connect(addr: SocketAddr, server_id: &str) -> Result<FakeBinary, ClientError> {
        FakeBinary::builder(addr, server_id).connect().await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FakeBinary<S> {
    /// The next envelope (pings skipped), parsed strictly; see [`Envelope`].
    pub async fn recv_envelope(&mut self) -> Result<Envelope, ClientError> {
        let text = self.client.recv_text().await?;
        Envelope::parse(text)
    }

    /// Sends `{"conn_id":<conn_id>,"frame":<frame_json>}`, with `frame_json` spliced verbatim
    /// (so the test decides its whitespace, and can send invalid JSON on purpose).
    pub async fn send_to(&mut self, conn_id: &str, frame_json: &str) -> Result<(), ClientError> {
        let text = format!(
            "{{\"conn_id\":{},\"frame\":{}}}",
            json_string(conn_id),
            frame_json
        );
        self.client.send_text(&text).await
    }

    /// Asks the relay to wake a phone through FCM (§4.4):
    /// `{"push_wake":{"platform":"fcm","token":<token>}}`. The relay never answers.
    pub async fn push_wake(&mut self, token: &str) -> Result<(), ClientError> {
        let text = format!(
            "{{\"push_wake\":{{\"platform\":\"fcm\",\"token\":{}}}}}",
            json_string(token)
        );
        self.client.send_text(&text).await
    }

    /// Asks the relay to close a phone with `code` (§4.2), after `frame` if one is given.
    pub async fn close_phone(
        &mut self,
        conn_id: &str,
        code: u16,
        frame: Option<&str>,
    ) -> Result<(), ClientError> {
        let frame = frame.map(|f| format!(",\"frame\":{f}")).unwrap_or_default();
        let text = format!(
            "{{\"conn_id\":{}{},\"close_code\":{}}}",
            json_string(conn_id),
            frame,
            code
        );
        self.client.send_text(&text).await
    }

    /// Drops the connection without a close frame (a crashed daemon, a dead network).
    pub fn abort(self) {
        drop(self);
    }

    /// The shared client, by value.
    pub fn into_client(self) -> WsClient<S> {
        self.client
    }
}

impl<S> Deref for FakeBinary<S> {
    type Target = WsClient<S>;
    fn deref(&self) -> &WsClient<S> {
        &self.client
    }
}

impl<S> DerefMut for FakeBinary<S> {
    fn deref_mut(&mut self) -> &mut WsClient<S> {
        &mut self.client
    }
}

/// A fake phone on `/v1/client`: sends and receives the inner frames as plain messages.
///
/// Derefs to [`WsClient`]: `send_text`, `send_binary`, `recv_text`, `expect_close`,
/// `expect_silence`, `close`. [`FakePhone::abort`] vanishes without a close frame.
#[derive(Debug)]
pub struct FakePhone<S = ClientStream> {
    client: WsClient<S>,
}

impl FakePhone {
    /// A builder with the §2 headers for `server_id` (user agent [`DEFAULT_PHONE_USER_AGENT`],
    /// no token, no device name) on `/v1/client`.
    pub fn builder(addr: SocketAddr, server_id: &str) -> ClientBuilder<FakePhone> {
        ClientBuilder::new(
            addr,
            "/v1/client",
            vec![
                ("X-Pyrycode-Server", server_id),
                ("User-Agent", DEFAULT_PHONE_USER_AGENT),
            ],
        )
    }

    /// Connects with the defaults to `server_id`.
    pub async fn connect(addr: SocketAddr, server_id: &str) -> Result<FakePhone, ClientError> {
        FakePhone::builder(addr, server_id).connect().await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FakePhone<S> {
    /// Vanishes without a close frame: the socket is dropped (FIN, or RST if unread data is
    /// pending). The relay's close notice then says 1001 (§4.3).
    pub fn abort(self) {
        drop(self);
    }

    /// The shared client, by value.
    pub fn into_client(self) -> WsClient<S> {
        self.client
    }
}

impl<S> Deref for FakePhone<S> {
    type Target = WsClient<S>;
    fn deref(&self) -> &WsClient<S> {
        &self.client
    }
}

impl<S> DerefMut for FakePhone<S> {
    fn deref_mut(&mut self) -> &mut WsClient<S> {
        &mut self.client
    }
}

/// A tiny tokio-tungstenite server for this crate's own tests: the test drives the accepted
/// server side directly, so every client behaviour can be checked from the other end.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::SocketAddr;

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::StatusCode;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// One accepted connection: what the client asked for and the server's end of it.
    pub(crate) struct Accepted {
        pub path: String,
        pub headers: Vec<(String, Vec<u8>)>,
        pub ws: WebSocketStream<TcpStream>,
    }

    impl Accepted {
        /// Every value of header `name`, in order.
        pub fn header(&self, name: &str) -> Vec<&[u8]> {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
                .collect()
        }
    }

    /// Decides from the request whether to refuse it: `Some((status, body))`.
    pub(crate) type Refuse = fn(&Request) -> Option<(u16, &'static str)>;

    pub(crate) fn accept_all(_: &Request) -> Option<(u16, &'static str)> {
        None
    }

    /// Listens on 127.0.0.1:0 and hands every accepted WebSocket to the returned channel.
    // The callback's error type is tungstenite's `ErrorResponse`; we cannot box it.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn spawn(
        refuse: Refuse,
        config: Option<WebSocketConfig>,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut seen = None;
                    let callback = |req: &Request, resp: Response| {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                            .collect::<Vec<_>>();
                        seen = Some((req.uri().path().to_owned(), headers));
                        match refuse(req) {
                            None => Ok(resp),
                            Some((status, body)) => {
                                let mut builder = Response::builder()
                                    .status(StatusCode::from_u16(status).unwrap());
                                // An empty body goes without Content-Length: exercises
                                // "body until EOF" in the client.
                                let body = if body.is_empty() {
                                    None
                                } else {
                                    builder = builder.header("Content-Length", body.len());
                                    Some(body.to_owned())
                                };
                                let refusal: ErrorResponse = builder.body(body).unwrap();
                                Err(refusal)
                            }
                        }
                    };
                    let accepted =
                        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, config)
                            .await;
                    if let (Ok(ws), Some((path, headers))) = (accepted, seen) {
                        let _ = tx.send(Accepted { path, headers, ws });
                    }
                });
            }
        });
        (addr, rx)
    }

    /// A server that echoes every data message back and answers pings (tungstenite does).
    pub(crate) async fn spawn_echo(config: Option<WebSocketConfig>) -> SocketAddr {
        let (addr, mut rx) = spawn(accept_all, config).await;
        tokio::spawn(async move {
            while let Some(mut accepted) = rx.recv().await {
                tokio::spawn(async move {
                    while let Some(Ok(message)) = accepted.ws.next().await {
                        if matches!(message, Message::Text(_) | Message::Binary(_))
                            && accepted.ws.send(message).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{self, accept_all};
    use super::*;
    use tokio_tungstenite::tungstenite::handshake::server::Request;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    async fn server() -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<test_server::Accepted>,
    ) {
        test_server::spawn(accept_all, None).await
    }

    #[tokio::test]
    async fn binary_sends_the_section_2_headers_on_v1_server() {
        let (addr, mut rx) = server().await;
        let binary = FakeBinary::connect(addr, "srv-1").await.unwrap();
        let accepted = rx.recv().await.unwrap();
        assert_eq!(accepted.path, "/v1/server");
        assert_eq!(accepted.header("x-pyrycode-server"), vec![&b"srv-1"[..]]);
        assert_eq!(
            accepted.header("x-pyrycode-version"),
            vec![DEFAULT_BINARY_VERSION.as_bytes()]
        );
        assert_eq!(
            accepted.header("user-agent"),
            vec![DEFAULT_BINARY_USER_AGENT.as_bytes()]
        );
        assert_eq!(accepted.header("host"), vec![addr.to_string().as_bytes()]);
        assert_eq!(binary.response().status, 101);
        assert!(binary
            .response()
            .header("Sec-WebSocket-Extensions")
            .is_none());
    }

    #[tokio::test]
    async fn phone_sends_the_section_2_headers_on_v1_client() {
        let (addr, mut rx) = server().await;
        let _phone = FakePhone::builder(addr, "srv-1")
            .token("tok-123")
            .device_name("Jürgen's phone")
            .connect()
            .await
            .unwrap();
        let accepted = rx.recv().await.unwrap();
        assert_eq!(accepted.path, "/v1/client");
        assert_eq!(accepted.header("x-pyrycode-server"), vec![&b"srv-1"[..]]);
        assert_eq!(
            accepted.header("user-agent"),
            vec![DEFAULT_PHONE_USER_AGENT.as_bytes()]
        );
        assert_eq!(accepted.header("x-pyrycode-token"), vec![&b"tok-123"[..]]);
        // UTF-8 goes out as raw bytes (the relay validates it, §2).
        assert_eq!(
            accepted.header("x-pyrycode-device-name"),
            vec!["Jürgen's phone".as_bytes()]
        );
        assert!(accepted.header("x-pyrycode-version").is_empty());
    }

    #[tokio::test]
    async fn builder_changes_path_host_and_headers() {
        let (addr, mut rx) = server().await;
        let _binary = FakeBinary::builder(addr, "srv-1")
            .path("/v2/server")
            .host("relay.example")
            .version("dev")
            .user_agent("ua/2")
            .server_id("srv-2")
            .without_header("X-Pyrycode-Version")
            .add_header("X-Extra", "a")
            .add_header("X-Extra", "b")
            .header_bytes("X-Pyrycode-Device-Name", &[0xff, 0xfe])
            .connect()
            .await
            .unwrap();
        let accepted = rx.recv().await.unwrap();
        assert_eq!(accepted.path, "/v2/server");
        assert_eq!(accepted.header("host"), vec![&b"relay.example"[..]]);
        assert_eq!(accepted.header("x-pyrycode-server"), vec![&b"srv-2"[..]]);
        assert!(accepted.header("x-pyrycode-version").is_empty());
        assert_eq!(accepted.header("user-agent"), vec![&b"ua/2"[..]]);
        assert_eq!(accepted.header("x-extra"), vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(
            accepted.header("x-pyrycode-device-name"),
            vec![&[0xff, 0xfe][..]]
        );

        // `header` replaces every duplicate with one value.
        let (addr, mut rx) = server().await;
        let _phone = FakePhone::builder(addr, "s")
            .add_header("X-Extra", "a")
            .add_header("x-extra", "b")
            .header("X-EXTRA", "c")
            .connect()
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().header("x-extra"), vec![&b"c"[..]]);
    }

    fn refuse_without_user_agent(req: &Request) -> Option<(u16, &'static str)> {
        match (req.uri().path(), req.headers().contains_key("user-agent")) {
            ("/v1/nope", _) => Some((404, "not found")),
            (_, false) => Some((400, "")),
            _ => None,
        }
    }

    #[tokio::test]
    async fn refused_upgrade_exposes_status_and_body_length() {
        let (addr, _rx) = test_server::spawn(refuse_without_user_agent, None).await;

        let refusal = FakePhone::builder(addr, "s")
            .without_header("User-Agent")
            .refused()
            .await
            .unwrap();
        assert_eq!(refusal.status, 400);
        assert_eq!(refusal.body_len(), 0);
        assert!(
            refusal.status_line.starts_with("HTTP/1.1 400"),
            "{}",
            refusal.status_line
        );

        let refusal = FakeBinary::builder(addr, "s")
            .path("/v1/nope")
            .refused()
            .await
            .unwrap();
        assert_eq!(refusal.status, 404);
        assert_eq!(refusal.body, b"not found");

        let err = FakeBinary::builder(addr, "s")
            .without_header("user-agent")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400));

        // A successful upgrade is an error for `refused`.
        let err = FakeBinary::builder(addr, "s").refused().await.unwrap_err();
        assert!(matches!(err, ClientError::Unexpected(_)), "{err}");
    }

    #[tokio::test]
    async fn connect_to_a_closed_port_is_an_upgrade_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = FakePhone::connect(addr, "s").await.unwrap_err();
        assert!(
            matches!(err, ClientError::Upgrade(RawError::Io(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn recv_envelope_keeps_frame_bytes_verbatim() {
        let (addr, mut rx) = server().await;
        let mut binary = FakeBinary::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;

        let sent = [
            r#"{"conn_id":"c-0a","frame": { "t" : [1, 2.50, "\u00e9"] } ,"token":"to\"k"}"#,
            r#"{"conn_id":"c-\u0030b","frame":null}"#,
            r#"{"conn_id":"c-0c","close_code":1001}"#,
            r#"{"conn_id":"c-0d","frame":1e400}"#,
        ];
        for text in sent {
            server.send(Message::text(text)).await.unwrap();
        }

        let env = binary.recv_envelope().await.unwrap();
        assert_eq!(env.conn_id, "c-0a");
        assert_eq!(env.frame(), Some(r#"{ "t" : [1, 2.50, "\u00e9"] }"#));
        assert_eq!(env.token.as_deref(), Some("to\"k"));
        assert_eq!(env.close_code, None);
        assert_eq!(env.raw, sent[0]);
        assert!(!env.is_close_notice());

        let env = binary.recv_envelope().await.unwrap();
        assert_eq!(env.conn_id, "c-0b");
        assert_eq!(env.frame(), Some("null"));
        assert_eq!(env.token, None);

        let env = binary.recv_envelope().await.unwrap();
        assert!(env.is_close_notice());
        assert_eq!(env.close_code, Some(1001));
        assert_eq!(env.frame, None);

        let env = binary.recv_envelope().await.unwrap();
        assert_eq!(env.frame(), Some("1e400"));
    }

    #[test]
    fn envelope_parse_is_strict() {
        for bad in [
            r#"{"conn_id":"c-1","frame":{},"extra":1}"#,
            r#"{"conn_id":1,"frame":{}}"#,
            r#"{"frame":{}}"#,
            r#"{"conn_id":"c-1","conn_id":"c-2","frame":{}}"#,
            r#"{"conn_id":"c-1","close_code":70000}"#,
            r#"["c-1"]"#,
            "not json",
        ] {
            let err = Envelope::parse(bad.to_owned()).unwrap_err();
            assert!(
                matches!(&err, ClientError::BadEnvelope { raw, .. } if raw == bad),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn send_to_and_close_phone_write_exact_envelopes() {
        let (addr, mut rx) = server().await;
        let mut binary = FakeBinary::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;

        binary.send_to("c-\"1", r#"{ "a" : 1 }"#).await.unwrap();
        binary.close_phone("c-2", 4401, None).await.unwrap();
        binary.close_phone("c-3", 1000, Some("[1]")).await.unwrap();
        binary.send_text("{not json").await.unwrap();
        binary.send_binary(b"\x00\x01").await.unwrap();

        let expected = [
            r#"{"conn_id":"c-\"1","frame":{ "a" : 1 }}"#,
            r#"{"conn_id":"c-2","close_code":4401}"#,
            r#"{"conn_id":"c-3","frame":[1],"close_code":1000}"#,
            "{not json",
        ];
        for want in expected {
            assert_eq!(server.next().await.unwrap().unwrap(), Message::text(want));
        }
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::binary(&b"\x00\x01"[..])
        );
    }

    #[tokio::test]
    async fn expect_close_returns_code_and_reason_and_replies() {
        let (addr, mut rx) = server().await;
        let mut binary = FakeBinary::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;

        server
            .send(Message::Ping(Bytes::from_static(b"hb")))
            .await
            .unwrap();
        server
            .close(Some(CloseFrame {
                code: CloseCode::from(4409),
                reason: "server-id already claimed".into(),
            }))
            .await
            .unwrap();
        assert_eq!(
            binary.expect_close().await.unwrap(),
            (4409, "server-id already claimed".to_owned())
        );
        assert_eq!(binary.pings_received(), 1);

        // The server sees the pong, then our close reply, then the end.
        assert!(matches!(server.next().await, Some(Ok(Message::Pong(_)))));
        match server.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4409),
            other => panic!("expected the close reply, got {other:?}"),
        }
        drop(server);
        binary.expect_disconnect().await.unwrap();
    }

    #[tokio::test]
    async fn data_before_an_expected_close_is_an_error_but_recv_until_close_collects_it() {
        let (addr, mut rx) = server().await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        server.send(Message::text("one")).await.unwrap();
        let err = phone.expect_close().await.unwrap_err();
        assert!(
            matches!(err, ClientError::Unexpected(ref d) if d.contains("one")),
            "{err}"
        );

        server.send(Message::text("two")).await.unwrap();
        server.send(Message::text("three")).await.unwrap();
        server
            .close(Some(CloseFrame {
                code: CloseCode::from(1011),
                reason: "phone backlog full".into(),
            }))
            .await
            .unwrap();
        let (before, code, reason) = phone.recv_until_close().await.unwrap();
        assert_eq!(before, vec![Message::text("two"), Message::text("three")]);
        assert_eq!((code, reason.as_str()), (1011, "phone backlog full"));
    }

    #[tokio::test]
    async fn recv_text_reports_a_close_as_closed() {
        let (addr, mut rx) = server().await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        server.send(Message::text(" [1,2] ")).await.unwrap();
        server
            .close(Some(CloseFrame {
                code: CloseCode::from(4404),
                reason: "no server with that id".into(),
            }))
            .await
            .unwrap();
        assert_eq!(phone.recv_text().await.unwrap(), " [1,2] ");
        let err = phone.recv_text().await.unwrap_err();
        assert!(
            matches!(err, ClientError::Closed { code: 4404, ref reason } if reason == "no server with that id")
        );
    }

    #[tokio::test]
    async fn recv_text_rejects_binary_messages() {
        let (addr, mut rx) = server().await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        server.send(Message::binary(&b"{}"[..])).await.unwrap();
        assert!(matches!(
            phone.recv_text().await,
            Err(ClientError::Unexpected(_))
        ));
    }

    #[tokio::test]
    async fn expect_silence_answers_pings_and_fails_on_data() {
        let (addr, mut rx) = server().await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;

        server
            .send(Message::Ping(Bytes::from_static(b"p1")))
            .await
            .unwrap();
        phone.expect_silence(ms(200)).await.unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"p1"))
        );

        server.send(Message::text("{}")).await.unwrap();
        let err = phone.expect_silence(ms(500)).await.unwrap_err();
        assert!(matches!(err, ClientError::Unexpected(_)), "{err}");
    }

    #[tokio::test]
    async fn ping_and_recv_pong() {
        let addr = test_server::spawn_echo(None).await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        phone.ping(b"are you there").await.unwrap();
        assert_eq!(
            phone.recv_pong().await.unwrap(),
            Bytes::from_static(b"are you there")
        );
        assert_eq!(phone.pongs_received(), 1);
        phone.send_text(r#"{"x": 1}"#).await.unwrap();
        assert_eq!(phone.recv_text().await.unwrap(), r#"{"x": 1}"#);
    }

    #[tokio::test]
    async fn muted_client_sees_pings_but_never_answers() {
        let (addr, mut rx) = server().await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;

        phone.set_muted(true);
        server
            .send(Message::Ping(Bytes::from_static(b"hb")))
            .await
            .unwrap();
        assert_eq!(
            phone.recv_raw().await.unwrap(),
            Message::Ping(Bytes::from_static(b"hb"))
        );
        phone.expect_silence(ms(100)).await.unwrap();
        assert!(
            timeout(ms(300), server.next()).await.is_err(),
            "a muted client must not pong"
        );

        server
            .close(Some(CloseFrame {
                code: CloseCode::from(1011),
                reason: "heartbeat timeout".into(),
            }))
            .await
            .unwrap();
        assert_eq!(
            phone.expect_close().await.unwrap(),
            (1011, "heartbeat timeout".to_owned())
        );
    }

    #[tokio::test]
    async fn unpolled_client_does_not_answer_pings_until_read() {
        let (addr, mut rx) = server().await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        server
            .send(Message::Ping(Bytes::from_static(b"hb")))
            .await
            .unwrap();
        assert!(
            timeout(ms(300), server.next()).await.is_err(),
            "nobody polled the phone"
        );
        phone.expect_silence(ms(50)).await.unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"hb"))
        );
    }

    #[tokio::test]
    async fn close_sends_the_code_and_returns_the_reply() {
        let addr = test_server::spawn_echo(None).await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        assert_eq!(
            phone.close(4000).await.unwrap(),
            Some((4000, String::new()))
        );

        let (addr, mut rx) = server().await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        let closing = tokio::spawn(async move {
            let reply = phone.close_with(None).await;
            (phone, reply)
        });
        assert_eq!(server.next().await.unwrap().unwrap(), Message::Close(None));
        drop(server);
        let (_phone, reply) = closing.await.unwrap();
        // tungstenite's server flushes the reply before we drop it; either outcome is legal.
        assert!(matches!(reply, Ok(None) | Ok(Some((1005, _)))), "{reply:?}");
    }

    #[tokio::test]
    async fn abort_vanishes_without_a_close_frame() {
        let (addr, mut rx) = server().await;
        let phone = FakePhone::connect(addr, "s").await.unwrap();
        let mut server = rx.recv().await.unwrap().ws;
        phone.abort();
        match server.next().await {
            None | Some(Err(_)) => {}
            Some(Ok(other)) => panic!("expected no close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn calls_time_out() {
        let (addr, mut rx) = server().await;
        let mut phone = FakePhone::builder(addr, "s")
            .timeout(ms(100))
            .connect()
            .await
            .unwrap();
        let _server = rx.recv().await.unwrap();
        assert_eq!(phone.timeout(), ms(100));
        let started = Instant::now();
        let err = phone.recv_text().await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            phone.expect_close().await,
            Err(ClientError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn disconnect_without_close_is_reported() {
        let (addr, mut rx) = server().await;
        let mut phone = FakePhone::connect(addr, "s").await.unwrap();
        drop(rx.recv().await.unwrap());
        assert!(matches!(
            phone.recv_text().await,
            Err(ClientError::Disconnected)
        ));
    }

    #[tokio::test]
    async fn a_thousand_phones_are_cheap() {
        let addr = test_server::spawn_echo(None).await;
        let mut phones = Vec::new();
        for i in 0..1000 {
            phones.push(FakePhone::connect(addr, &format!("s-{i}")).await.unwrap());
        }
        for (i, phone) in phones.iter_mut().enumerate().step_by(97) {
            phone.send_text(&i.to_string()).await.unwrap();
            assert_eq!(phone.recv_text().await.unwrap(), i.to_string());
        }
    }

    #[test]
    fn fresh_server_ids_are_unique_uuid_v4_shapes() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| fresh_server_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(id
                .chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
            assert!(parts[2].starts_with('4'), "{id}");
            assert!(
                matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "{id}"
            );
        }
    }
}

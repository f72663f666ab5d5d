//! The first request of a client connection in cluster mode, read before hyper sees it
//! (protocol.md §11: "the client's HTTP upgrade request exactly as received").
//!
//! Owns reading the request head off the socket (bounded in size and time), the few facts
//! the routing decision needs from it (endpoint, server-id, Host, `X-Forwarded-For`), and
//! [`Rewind`], which replays the bytes read in front of the stream so hyper parses exactly
//! what the client sent. It decides nothing and answers nothing: a head it cannot read
//! whole is handed to hyper as it is, which answers it as a single node would (431 over
//! [`MAX_HEAD`], 400 for garbage), and a connection that sends nothing in time is dropped
//! like hyper's own `--header-read-timeout` drops it. It never logs what it read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use relay_core::headers;
use relay_core::ServerId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest request head the edge reads before deciding; hyper is given the same limit in
/// cluster mode (`max_buf_size`), so a longer head gets hyper's 431. Real clients send a few
/// hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// hyper's own default limit on the number of headers: a head with more is hyper's 431.
const MAX_HEADERS: usize = 100;

/// Which upgrade endpoint a request asks for (§2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Server,
    Client,
}

/// What the routing decision needs from a request head.
#[derive(Debug)]
pub struct Routable {
    pub endpoint: Endpoint,
    pub server_id: ServerId,
    /// Every `Host` value (the Host check of the TLS modes wants exactly one).
    pub hosts: Vec<Bytes>,
    /// The first `X-Forwarded-For` value, for `--trust-x-forwarded-for`.
    pub forwarded_for: Option<Bytes>,
}

/// How reading the head ended.
pub enum Read {
    /// A whole head (plus whatever the client sent after it, in the same buffer).
    Head(BytesMut),
    /// The connection ended, or the head grew past [`MAX_HEAD`] or [`MAX_HEADERS`] or did not
    /// parse: hyper answers what was read (or sees the end).
    Other(BytesMut),
    /// Nothing whole arrived within the deadline: drop the connection (§8).
    TimedOut,
}

/// Reads until the request head is complete, the head is too big or malformed, or the
/// connection ends, within `deadline`.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S, deadline: Duration) -> Read {
    let mut buf = BytesMut::with_capacity(2048);
    let reading = async {
        loop {
            if buf.len() >= MAX_HEAD {
                return false;
            }
            buf.reserve(2048.min(MAX_HEAD - buf.len()));
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::Request::new(&mut headers).parse(&buf) {
                Ok(httparse::Status::Complete(_)) => return true,
                Ok(httparse::Status::Partial) => {}
                Err(_) => return false,
            }
        }
    };
    match tokio::time::timeout(deadline, reading).await {
        Ok(true) => Read::Head(buf),
        Ok(false) => Read::Other(buf),
        Err(_) => Read::TimedOut,
    }
}

/// The routing facts of a complete head, or `None` if it is not a `GET` of an upgrade
/// endpoint with exactly one valid `X-Pyrycode-Server` (then hyper answers it locally: 404,
/// 405, 400, `/healthz`, ...).
pub fn routable(head: &[u8]) -> Option<Routable> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    if req.method != Some("GET") {
        return None;
    }
    let path = req.path?;
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let endpoint = match path {
        "/v1/server" | "/v2/server" => Endpoint::Server,
        "/v1/client" | "/v2/client" => Endpoint::Client,
        _ => return None,
    };
    let mut server_id = None;
    let mut hosts = Vec::new();
    let mut forwarded_for = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case(headers::SERVER_ID) {
            if server_id.is_some() {
                return None;
            }
            server_id = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts.push(Bytes::copy_from_slice(h.value));
        } else if h.name.eq_ignore_ascii_case("x-forwarded-for") && forwarded_for.is_none() {
            forwarded_for = Some(Bytes::copy_from_slice(h.value));
        }
    }
    let server_id = headers::server_id(server_id).ok()?;
    Some(Routable {
        endpoint,
        server_id,
        hosts,
        forwarded_for,
    })
}

/// A stream with bytes already read from it put back in front: reads return `prefix` first,
/// then the stream's own bytes; writes go straight to the stream.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }

    /// What is left of the prefix (hyper may not have read all of it), and the stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const PHONE: &[u8] = b"GET /v1/client?x=1 HTTP/1.1\r\nHost: relay.example\r\n\
        X-Pyrycode-Server: abc-1\r\nUser-Agent: t\r\nX-Forwarded-For: 203.0.113.9, 10.0.0.1\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

    #[test]
    fn an_upgrade_with_one_valid_server_id_is_routable() {
        let r = routable(PHONE).expect("routable");
        assert_eq!(r.endpoint, Endpoint::Client);
        assert_eq!(r.server_id.as_str(), "abc-1");
        assert_eq!(r.hosts, vec![Bytes::from_static(b"relay.example")]);
        assert_eq!(
            r.forwarded_for.as_deref(),
            Some(&b"203.0.113.9, 10.0.0.1"[..])
        );
        let binary = b"GET /v2/server HTTP/1.1\r\nx-pyrycode-server: s\r\n\r\n";
        assert_eq!(routable(binary).unwrap().endpoint, Endpoint::Server);
    }

    #[test]
    fn anything_else_is_left_to_hyper() {
        for head in [
            &b"GET /healthz HTTP/1.1\r\nX-Pyrycode-Server: a\r\n\r\n"[..],
            b"POST /v1/client HTTP/1.1\r\nX-Pyrycode-Server: a\r\n\r\n",
            b"GET /v1/client HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/client HTTP/1.1\r\nX-Pyrycode-Server: a b\r\n\r\n",
            b"GET /v1/client HTTP/1.1\r\nX-Pyrycode-Server: a\r\nX-Pyrycode-Server: a\r\n\r\n",
            b"GET /v1/client HTTP/1.1\r\nX-Pyrycode-Server: a\r\n",
            b"\x16\x03\x01 not http",
        ] {
            assert!(
                routable(head).is_none(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[tokio::test]
    async fn the_head_and_what_follows_it_are_read_and_replayed_in_order() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            // In small pieces: the reader must keep going until the head is whole.
            for chunk in PHONE.chunks(7) {
                client.write_all(chunk).await.unwrap();
            }
            client.write_all(b"FRAME").await.unwrap();
            client
        });
        let Read::Head(buf) = read(&mut server, Duration::from_secs(5)).await else {
            panic!("a whole head");
        };
        assert!(buf.starts_with(PHONE));
        let mut client = writer.await.unwrap();
        client.write_all(b"-MORE").await.unwrap();
        drop(client);
        let mut rewound = Rewind::new(buf.freeze(), server);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.unwrap();
        let mut want = PHONE.to_vec();
        want.extend_from_slice(b"FRAME-MORE");
        assert_eq!(all, want);
    }

    #[tokio::test]
    async fn silence_times_out_and_an_over_long_head_is_handed_on() {
        let (_client, mut server) = tokio::io::duplex(64);
        assert!(matches!(
            read(&mut server, Duration::from_millis(50)).await,
            Read::TimedOut
        ));
        let (mut client, mut server) = tokio::io::duplex(MAX_HEAD * 2);
        let mut long = b"GET /v1/client HTTP/1.1\r\nX-Long: ".to_vec();
        long.resize(MAX_HEAD + 100, b'a');
        client.write_all(&long).await.unwrap();
        match read(&mut server, Duration::from_secs(5)).await {
            Read::Other(buf) => assert!(buf.len() >= MAX_HEAD),
            _ => panic!("an over-long head goes to hyper as it is"),
        }
    }
}

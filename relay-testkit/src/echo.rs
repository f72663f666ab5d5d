//! The direct-echo baseline: the relay's stack (hyper 1 HTTP/1.1 upgrades, fastwebsockets) with
//! one hop and no relay logic. Every message that arrives goes back, verbatim, as a text message
//! on the same connection, so `relay-load --direct` measures exactly what the relay adds.
//!
//! It accepts any path and any headers (the load generator's phones connect unchanged), answers
//! pings, reassembles fragments, and never limits, routes or validates anything.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::upgrade::{is_upgrade_request, upgrade};
use fastwebsockets::{FragmentCollector, Frame, OpCode, WebSocket, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Serves echo connections on `listener` until an unrecoverable accept error.
///
/// Running out of file descriptors is not one: it pauses accepting briefly and carries on, as the
/// relay must, so an `idle` load that overshoots the limit degrades instead of ending the server.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_transient_accept_error(&e) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        tokio::spawn(serve_connection(stream));
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) || matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Serves echo connections over TLS with `config` (rustls on the same provider as the relay).
/// The handshake runs in each connection's task, as in the relay.
pub async fn serve_tls(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_transient_accept_error(&e) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if let Ok(tls) = acceptor.accept(stream).await {
                serve_io(tls).await;
            }
        });
    }
}

/// The TLS configuration the relay uses, for the baseline: TLS 1.2+, ALPN `http/1.1`, no
/// session tickets, serving `cert`.
pub fn tls_config(cert: &crate::tls::TestCertificate) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der.clone()], cert.key_der())
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

async fn serve_connection(stream: TcpStream) {
    // Same reason as the relay: small messages, latency measured; Nagle would add delay.
    let _ = stream.set_nodelay(true);
    serve_io(stream).await;
}

async fn serve_io<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service_fn(handle))
        .with_upgrades();
    // A peer that goes away mid-request is not an error worth reporting for a baseline server.
    let _ = conn.await;
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    if !is_upgrade_request(&req) {
        return Ok(status(StatusCode::OK));
    }
    match upgrade(&mut req) {
        Ok((response, upgraded)) => {
            tokio::spawn(async move {
                if let Ok(ws) = upgraded.await {
                    let ws = WebSocket::after_handshake(
                        Flushed::new(ws.into_inner()),
                        fastwebsockets::Role::Server,
                    );
                    let _ = echo(ws).await;
                }
            });
            Ok(response)
        }
        Err(_) => Ok(status(StatusCode::BAD_REQUEST)),
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}

/// Echoes every (reassembled) data message back as text until the peer closes.
///
/// `FragmentCollector` writes each frame with `write_all` and never flushes; the [`Flushed`]
/// stream under it completes a flush with every write, so over TLS too a frame is on the wire
/// when `write_frame` returns (over TCP the flush is free).
async fn echo<S>(ws: WebSocket<S>) -> Result<(), WebSocketError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            // Pings and the close reply are answered inside read_frame (auto-pong, auto-close).
            OpCode::Text | OpCode::Binary => ws.write_frame(Frame::text(frame.payload)).await?,
            OpCode::Close => return Ok(()),
            _ => {}
        }
    }
}

/// A stream whose every write is flushed before it counts as done (rustls may otherwise keep
/// the last record of a frame until the next write).
struct Flushed<S> {
    inner: S,
    /// Bytes accepted by a write whose flush is still pending.
    accepted: Option<usize>,
}

impl<S> Flushed<S> {
    fn new(inner: S) -> Self {
        Flushed {
            inner,
            accepted: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Flushed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Flushed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = match self.accepted {
            Some(n) => n,
            None => {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
                self.accepted = Some(n);
                n
            }
        };
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.accepted = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An echo server running in the background of the current tokio runtime; stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    task: JoinHandle<io::Result<()>>,
}

impl EchoServer {
    /// Binds `addr` (port 0 for any free port) and starts serving.
    pub async fn start(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            addr,
            task: tokio::spawn(serve(listener)),
        })
    }

    /// The address it is listening on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Connections already upgraded live on in their own tasks until their peers close.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode as TOpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as TFrame;
    use tokio_tungstenite::tungstenite::Message;

    async fn start() -> EchoServer {
        EchoServer::start("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("echo server starts")
    }

    #[tokio::test]
    async fn echoes_text_and_binary_verbatim_as_text_on_any_path() {
        let server = start().await;
        let url = format!("ws://{}/any/path?x=1", server.addr());
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        ws.send(Message::text(r#"{"a": 1 }"#)).await.expect("send");
        let back = ws.next().await.expect("reply").expect("ok");
        assert_eq!(back, Message::text(r#"{"a": 1 }"#));
        ws.send(Message::binary(&b"[1,2]"[..])).await.expect("send");
        let back = ws.next().await.expect("reply").expect("ok");
        assert_eq!(back, Message::text("[1,2]"));
        ws.close(None).await.expect("close");
    }

    #[tokio::test]
    async fn answers_pings() {
        let server = start().await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", server.addr()))
            .await
            .expect("connect");
        ws.send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .expect("ping");
        let back = ws.next().await.expect("reply").expect("ok");
        assert_eq!(back, Message::Pong(Bytes::from_static(b"hi")));
    }

    #[tokio::test]
    async fn reassembles_fragments_into_one_message() {
        let server = start().await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", server.addr()))
            .await
            .expect("connect");
        let parts: [(TOpCode, &[u8], bool); 3] = [
            (TOpCode::Data(Data::Text), b"{\"frag", false),
            (TOpCode::Data(Data::Continue), b"mented\":", false),
            (TOpCode::Data(Data::Continue), b"true}", true),
        ];
        for (opcode, payload, fin) in parts {
            let frame = TFrame::message(payload.to_vec(), opcode, fin);
            ws.send(Message::Frame(frame)).await.expect("send fragment");
        }
        let back = ws.next().await.expect("reply").expect("ok");
        assert_eq!(back, Message::text(r#"{"fragmented":true}"#));
    }

    #[tokio::test]
    async fn plain_http_requests_get_200() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = start().await;
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut resp = Vec::new();
        stream.read_to_end(&mut resp).await.expect("read");
        assert!(
            resp.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&resp)
        );
    }
}

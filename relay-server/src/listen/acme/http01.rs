//! The `--http-listen` listener in ACME mode (protocol.md §9): answers
//! `GET /.well-known/acme-challenge/<token>` with the key authorization of a pending HTTP-01
//! challenge and 404 with an empty body for everything else.
//!
//! Owns that routing and the plain-HTTP connections it runs on. It never redirects (a
//! redirect to https would send the CA, or a phone, to a listener that may have no
//! certificate yet), never serves `/healthz` or the WebSocket endpoints, and never holds more
//! than [`MAX_CONNECTIONS`] sockets or any one for longer than [`CONNECTION_DEADLINE`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

use super::pending::Pending;

/// The path prefix of RFC 8555 §8.3.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Concurrent plain-HTTP connections; more are closed at accept. A CA validates from a few
/// addresses, so this only bounds what a scanner can hold.
pub const MAX_CONNECTIONS: usize = 256;

/// A connection's whole life, request headers included.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// The HTTP-01 responder. Cheap to clone; every clone answers from the same pending set.
#[derive(Clone)]
pub struct Http01Responder {
    pending: Arc<Pending>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Http01Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http01Responder").finish_non_exhaustive()
    }
}

impl Http01Responder {
    pub(crate) fn new(pending: Arc<Pending>) -> Self {
        Http01Responder {
            pending,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }

    /// The routing, without I/O: 200 with the key authorization for a pending token on GET or
    /// HEAD, 404 with an empty body for anything else (other paths, other methods, unknown or
    /// malformed tokens). Never a 3xx.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let key_authorization = (method == Method::GET || method == Method::HEAD)
            .then(|| path.strip_prefix(CHALLENGE_PREFIX))
            .flatten()
            .filter(|token| is_token(token))
            .and_then(|token| self.pending.http01(token));
        let mut response = match key_authorization {
            Some(body) => {
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                r
            }
            None => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// Serves one accepted connection (HTTP/1.1, no upgrades) for at most
    /// [`CONNECTION_DEADLINE`].
    pub async fn serve_connection<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let response = this.respond(req.method(), req.uri().path());
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(CONNECTION_DEADLINE)
            .max_buf_size(16 * 1024)
            .serve_connection(TokioIo::new(stream), service);
        match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(err = %e, "HTTP-01 connection ended with an error"),
            Err(_) => debug!("HTTP-01 connection cut at its deadline"),
        }
    }

    /// Accepts on `listener` until `shutdown` reads true (or its sender is dropped).
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = crate::shared::shutdown_signalled(&mut shutdown) => return,
            };
            match accepted {
                Ok((stream, remote)) => self.spawn(stream, remote),
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(err = %e, "HTTP-01 listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn spawn(&self, stream: tokio::net::TcpStream, remote: SocketAddr) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            debug!(remote = %remote, "HTTP-01 listener full: connection closed");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.serve_connection(stream).await;
            drop(permit);
        });
    }
}

/// An ACME token is base64url without padding (RFC 8555 §8.3); anything else cannot be ours.
fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn responder() -> (Http01Responder, Arc<Pending>) {
        let pending = Arc::new(Pending::default());
        (Http01Responder::new(pending.clone()), pending)
    }

    async fn body(r: Response<Full<Bytes>>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_pending_token_gets_its_key_authorization() {
        let (responder, pending) = responder();
        let _guard = pending.publish_http01("tok-EN_1".into(), "tok-EN_1.thumbprint".into());
        let r = responder.respond(&Method::GET, "/.well-known/acme-challenge/tok-EN_1");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(body(r).await, "tok-EN_1.thumbprint");
        let head = responder.respond(&Method::HEAD, "/.well-known/acme-challenge/tok-EN_1");
        assert_eq!(head.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn everything_else_is_an_empty_404_never_a_redirect() {
        let (responder, pending) = responder();
        let _guard = pending.publish_http01("tok".into(), "tok.thumbprint".into());
        for (method, path) in [
            (Method::GET, "/"),
            (Method::GET, "/healthz"),
            (Method::GET, "/server"),
            (Method::GET, "/client"),
            (Method::GET, "/.well-known/acme-challenge/"),
            (Method::GET, "/.well-known/acme-challenge/unknown"),
            (Method::GET, "/.well-known/acme-challenge/tok/extra"),
            (Method::GET, "/.well-known/acme-challenge/../tok"),
            (Method::GET, "/.well-known/acme-challenge/tok.thumbprint"),
            (Method::GET, "/.well-known/acme-challenge//tok"),
            (Method::GET, "/.WELL-KNOWN/acme-challenge/tok"),
            (Method::GET, "/prefix/.well-known/acme-challenge/tok"),
            (Method::POST, "/.well-known/acme-challenge/tok"),
            (Method::PUT, "/.well-known/acme-challenge/tok"),
            (Method::DELETE, "/.well-known/acme-challenge/tok"),
        ] {
            let r = responder.respond(&method, path);
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
            assert!(r.headers().get(hyper::header::LOCATION).is_none());
            assert!(body(r).await.is_empty(), "{method} {path}");
        }
    }

    #[tokio::test]
    async fn a_withdrawn_token_is_404() {
        let (responder, pending) = responder();
        let guard = pending.publish_http01("tok".into(), "tok.thumbprint".into());
        drop(guard);
        let r = responder.respond(&Method::GET, "/.well-known/acme-challenge/tok");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn over_a_socket_the_answer_is_the_same_and_healthz_is_404() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (responder, pending) = responder();
        let _guard = pending.publish_http01("tok".into(), "tok.thumbprint".into());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(responder.serve(listener, stop_rx));
        let fetch = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: relay.example.com\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = fetch("/.well-known/acme-challenge/tok").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\ntok.thumbprint"), "{ok}");
        for path in ["/healthz", "/", "/server"] {
            let r = fetch(path).await;
            assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{path}: {r}");
            assert!(r.contains("content-length: 0\r\n"), "{path}: {r}");
        }
        server.abort();
    }
}
